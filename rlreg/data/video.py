"""Reading and writing video files with OpenCV (FFmpeg backend), one RGB frame at a time.

* :func:`probe_video` -> :class:`VideoInfo` (frame count, frame rate, size), refusing unreadable or empty files;
* :func:`read_frames` yields ``(H, W, 3)`` uint8 RGB frames, optionally downscaled;
* :class:`VideoWriter` writes frames to ``.mp4`` (MPEG-4 Part 2, ``mp4v``) or ``.avi`` (Motion JPEG) through a
  temporary sibling renamed into place only when the writer closes without error.

OpenCV is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from rlreg.io import InputError, atomic_path

__all__ = ["CODECS", "VideoInfo", "VideoWriter", "probe_video", "read_frames"]

CODECS = {".mp4": "mp4v", ".avi": "MJPG"}
"""Output suffix -> FourCC of the codec :class:`VideoWriter` uses (both ship with OpenCV's FFmpeg backend)."""


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found in a video file."""

    path: Path
    frames: int
    """Number of frames (decoded and counted when the container does not say)."""
    fps: float
    """Frames per second (25 when the container does not say)."""
    width: int
    height: int


def _open(path: Path) -> Any:
    import cv2

    if not path.is_file():
        raise InputError(f"{path}: file not found; check the path (relative paths are taken from {Path.cwd()})")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise InputError(f"{path}: not a readable video; give an .mp4 or .avi file (re-encode it, e.g. ffmpeg -i "
                         f"{path.name} -c:v mpeg4 {path.stem}_fixed.mp4)")
    return capture


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Frame count, frame rate and size of a video file.

    Raises:
        InputError: a missing or unreadable file, or one without a decodable frame; one line naming the file.
    """
    import cv2

    path = Path(path)
    capture = _open(path)
    try:
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        ok, first = capture.read()
        if not ok or first is None:
            raise InputError(f"{path}: holds no readable frame (empty or damaged video); give a video with frames, "
                             f"e.g. check it with ffprobe {path.name}")
        if frames <= 0:  # the container does not say: count by decoding
            frames = 1
            while capture.grab():
                frames += 1
        height, width = first.shape[:2]
    finally:
        capture.release()
    return VideoInfo(path, frames, fps if fps > 0 else 25.0, int(width), int(height))


def _scaled(frame: np.ndarray, max_side: int | None) -> np.ndarray:
    import cv2

    longest = max(frame.shape[:2])
    if max_side is None or longest <= max_side:
        return frame
    factor = max_side / longest
    size = (max(1, round(frame.shape[1] * factor)), max(1, round(frame.shape[0] * factor)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def read_frames(path: str | os.PathLike[str], start: int = 0, count: int | None = None,
                max_side: int | None = None) -> Iterator[np.ndarray]:
    """The frames ``start, start + 1, ...`` (at most ``count``) of a video as ``(H, W, 3)`` uint8 RGB arrays, each
    downscaled (area interpolation) so its longer side is at most ``max_side`` pixels when given.

    Raises:
        InputError: a missing or unreadable file.
    """
    import cv2

    path = Path(path)
    capture = _open(path)
    try:
        for _ in range(start):
            if not capture.grab():
                return
        done = 0
        while count is None or done < count:
            ok, frame = capture.read()
            if not ok or frame is None:
                return
            yield _scaled(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), max_side)
            done += 1
    finally:
        capture.release()


class VideoWriter:
    """Write ``(H, W, 3)`` uint8 RGB frames of ``size = (width, height)`` at ``fps`` to ``path`` (codec by suffix:
    :data:`CODECS`). Use as a context manager: the file appears only when the block ends without error."""

    def __init__(self, path: str | os.PathLike[str], fps: float, size: tuple[int, int]) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in CODECS:
            raise InputError(f"{self.path}: rlreg writes .mp4 or .avi videos; give one of those names")
        self.fps, self.size = float(fps), (int(size[0]), int(size[1]))
        self.frames = 0
        self._tmp: Path | None = None
        self._writer: Any = None

    def __enter__(self) -> VideoWriter:
        import cv2

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = atomic_path(self.path)
        self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter.fourcc(*CODECS[self.path.suffix.lower()]),
                                       self.fps, self.size)
        if not self._writer.isOpened():
            self._tmp.unlink(missing_ok=True)
            raise InputError(f"{self.path}: OpenCV cannot write this video (codec {CODECS[self.path.suffix.lower()]}); "
                             "give an .avi name")
        return self

    def write(self, frame: np.ndarray) -> None:
        """Append one ``(height, width, 3)`` uint8 RGB frame."""
        import cv2

        if frame.shape != (self.size[1], self.size[0], 3) or frame.dtype != np.uint8:
            raise ValueError(f"frames must be ({self.size[1]}, {self.size[0]}, 3) uint8, got {frame.shape} "
                             f"{frame.dtype}")
        self._writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
        self.frames += 1

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        assert self._tmp is not None
        self._writer.release()
        try:
            if kind is None:
                os.replace(self._tmp, self.path)
        finally:
            self._tmp.unlink(missing_ok=True)
