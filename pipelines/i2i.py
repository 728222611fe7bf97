"""What ``rlreg inpaint`` and ``rlreg translate`` share: reading 2-D pictures and NIfTI images, choosing the model,
running the agent in batches, the step strip, the result record and atomic writing.

Images are held as :class:`InputImage`: the stored values ``(C, *S)`` (float64, exact for 8- and 16-bit pictures
and for integer or float32 NIfTI voxels) and the intensity *window* ``(lo, hi)`` that maps them to the networks'
``[0, 1]`` (``docs/inpaint.md``, "Formats"):

* 8-bit pictures (PNG, JPEG, TIFF; grey ``L`` -> 1 channel, ``RGB`` -> 3 channels): ``(0, 255)``;
* 16-bit grey PNG / TIFF and NIfTI: the 0.5 and 99.5 percentiles of the known voxels
  (:func:`rlreg.intensity.intensity_window`, as ``rlreg register`` normalises), mapped back on output
  (``lo + y (hi - lo)``), so the output has the input's units.

Every check runs before the first file is written, and each file is written through a temporary sibling
(:func:`rlreg.io.atomic_output`): a failed run leaves nothing behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from rlreg.intensity import intensity_window
from rlreg.io import Geometry, InputError, atomic_output, read_image, split_image_name, write_image

__all__ = [
    "NIFTI_SUFFIXES",
    "PICTURE_SUFFIXES",
    "PLANES",
    "VIDEO_SUFFIXES",
    "ChosenModel",
    "ImageToImageResult",
    "InputImage",
    "Progress",
    "SliceLayout",
    "choose_model",
    "fitting_models",
    "image_kind",
    "image_quality",
    "output_path",
    "read_input",
    "read_picture",
    "run_agent",
    "slice_layout",
    "step_paths",
    "step_reporter",
    "write_output",
    "write_steps",
]

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
VIDEO_SUFFIXES = (".mp4", ".avi")
Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: called as the work advances (the CLI draws a bar per stage)."""


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """How ``rlreg inpaint`` and ``rlreg translate`` run their agent (the options both commands share)."""

    model: str | None = None
    """Shipped model of the command's task, or a checkpoint file; ``None``: the shipped one that fits the input."""
    steps: int | None = None
    """Agent steps; ``None``: the card's ``recommended_steps`` (else the task's ``max_steps``). 0 = the start."""
    reference: Path | None = None
    """The true image, for PSNR / SSIM (whole image, and inside the hole when inpainting)."""
    save_steps: bool = False
    """Also write ``<stem>_steps.png`` (input, step 1..T, reference) and ``<stem>_steps.gif``."""
    plane: str | None = None
    """3-D NIfTI: the plane slices are cut in, axial, coronal or sagittal (:class:`SliceLayout`); ``None``: axial,
    or a one-slice volume's own plane."""
    batch_size: int = 16
    """Slices per agent batch (3-D NIfTI)."""
    device: str = "cpu"
    """A resolved torch device."""
    threads: int | None = None
    """CPU threads (torch, SimpleITK); ``None``: as they are."""


@dataclass
class InputImage:
    """An input image: its stored values, where they came from, and how they map to the networks' ``[0, 1]``."""

    values: np.ndarray
    """``(C, *S)`` float64 stored values; ``S = (H, W)`` or, for a 3-D NIfTI, ``(D, H, W)`` in SimpleITK order."""
    path: Path
    kind: Literal["picture", "nifti"]
    bits: int | None = None
    """8 or 16 for a picture (its stored integer type), ``None`` for NIfTI."""
    geometry: Geometry | None = None
    """NIfTI: the grid outputs are written on (a one-slice volume's 3-D grid: its output stays 3-D)."""
    window: tuple[float, float] = (0.0, 255.0)
    """Stored values mapped to 0 and 1."""

    @property
    def channels(self) -> int:
        return int(self.values.shape[0])

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.values.shape[1:])

    def size_text(self) -> str:
        """Size as people read it: width x height (x depth)."""
        return "x".join(str(n) for n in self.spatial[::-1])

    def to_unit(self) -> np.ndarray:
        """``(C, *S)`` float32 values in ``[0, 1]`` (the window, clipped)."""
        lo, hi = self.window
        return np.clip((self.values - lo) / max(hi - lo, 1e-12), 0.0, 1.0).astype(np.float32)

    def from_unit(self, unit: np.ndarray) -> np.ndarray:
        """``[0, 1]`` values back in stored units (rounded and clipped to the picture's integer type)."""
        lo, hi = self.window
        stored = lo + unit.astype(np.float64) * (hi - lo)
        if self.kind == "picture":
            stored = np.clip(np.rint(stored), 0, 2 ** (self.bits or 8) - 1)
        return stored


def image_kind(path: Path, role: str) -> Literal["picture", "nifti"]:
    """Whether ``path`` names a picture or a NIfTI file, by its extension.

    Raises:
        InputError: another extension; the message lists the ones read.
    """
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(PICTURE_SUFFIXES):
        return "picture"
    raise InputError(f"{path}: the {role} must be a PNG, JPEG or TIFF picture or a NIfTI image (.nii, .nii.gz); "
                     "convert it first, e.g. with SimpleITK or PIL")


def _png_depth(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR chunk, or ``None`` for another format."""
    with path.open("rb") as handle:
        head = handle.read(26)
    if len(head) < 26 or not head.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    return head[24], head[25]


def read_picture(path: Path, role: str = "image", labels: bool = False) -> tuple[np.ndarray, int]:
    """A PNG/JPEG/TIFF picture as ``(C, H, W)`` float64 stored values and its bit depth (8 or 16), with PIL.

    Grey (``L``, ``1``) pictures give 1 channel, colour ones 3; an alpha channel that is fully opaque is dropped (one
    with transparent pixels is refused: what they hide is unknown); 16-bit grey pictures keep their 16 bits.
    With ``labels`` a palette picture gives its palette indices (a label map), else its colours.

    Raises:
        InputError: missing or unreadable file, transparent pixels, a 16-bit colour PNG (PIL would cut it to 8 bits)
            or a 32-bit float picture; one line naming the file and the fix.
    """
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise InputError(f"{path}: file not found; check the path (relative paths are taken from {Path.cwd()})")
    depth = _png_depth(path)
    if depth is not None and depth[0] == 16 and depth[1] in (2, 6):
        raise InputError(f"{path}: is a 16-bit colour PNG, which rlreg reads as 8-bit colour only; convert it, "
                         f"e.g. python -c \"import cv2; i=cv2.imread('{path.name}', -1); "
                         f"cv2.imwrite('{path.stem}_8bit.png', (i // 257).astype('uint8'))\"")
    try:
        with Image.open(path) as opened:
            picture = opened.copy()
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"{path}: not a readable picture ({err}); give a PNG, JPEG or TIFF file") from None
    mode = picture.mode
    if mode == "P" and labels:
        return np.asarray(picture, dtype=np.float64)[None], 8
    if mode == "P":
        picture = picture.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA"):
        alpha = np.asarray(picture.getchannel("A"))
        if alpha.min() < 255:
            raise InputError(f"{path}: has {int((alpha < 255).sum())} transparent pixels; rlreg reads opaque "
                             f"pictures: convert it to RGB (or L), e.g. python -c \"from PIL import Image; "
                             f"Image.open('{path.name}').convert('RGB').save('{path.stem}_rgb.png')\""
                             + (", and give what is missing as the mask" if role == "image" else ""))
        picture = picture.convert("RGB" if mode != "LA" else "L")
        mode = picture.mode
    if mode == "1":
        picture, mode = picture.convert("L"), "L"
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        picture, mode = picture.convert("RGB"), "RGB"
    array = np.asarray(picture)
    if mode in ("L", "RGB"):
        bits = 8
    elif mode.startswith("I;16") or (mode == "I" and array.min() >= 0 and array.max() <= 65535):
        bits = 16
    else:
        raise InputError(f"{path}: holds {mode} pixels (e.g. 32-bit floats); give an 8- or 16-bit PNG/TIFF, or the "
                         "image as NIfTI (.nii.gz)")
    array = array.astype(np.float64)
    return (array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)), bits


def read_input(path: Path, role: str = "image") -> InputImage:
    """Read an image to inpaint or translate (or a reference): a picture (:func:`read_picture`) or a 2-D / 3-D NIfTI
    with its geometry (:func:`rlreg.io.read_image`: a singleton 4th axis is dropped, a 4-D series refused). The
    window is ``(0, 255)`` for 8-bit pictures, else the 0.5 and 99.5 percentiles of all voxels.

    Raises:
        InputError: unreadable, 4-D, NaN/Inf or constant images, unknown extensions (one line each).
    """
    path = Path(path)
    if image_kind(path, role) == "picture":
        values, bits = read_picture(path, role)
        if values.min() == values.max():
            raise InputError(f"{path}: every pixel is {values.flat[0]:g}; check that it is the right {role}")
        window = (0.0, 255.0) if bits == 8 else intensity_window(torch.from_numpy(values))
        return InputImage(values, path, "picture", bits=bits, window=window)
    image = read_image(path, dtype=torch.float64)
    grid = image.volume or image.geometry  # a one-slice volume stays 3-D: its plane orients the slice
    values = image.data[0].numpy().reshape(1, *grid.size)
    return InputImage(values, path, "nifti", geometry=grid, window=intensity_window(image.data[0]))


def output_path(output: Path, source: InputImage, word: str, channels: int) -> Path:
    """The output file: ``output`` itself, or ``<output>/<stem>_<word><ext>`` when ``output`` is a folder (an existing
    one, or a name ending in ``/``); ``<ext>`` is the input's (a JPEG input gives a PNG: lossless).

    Raises:
        InputError: an extension of another kind than the input's (picture <-> NIfTI), a multi-channel NIfTI
            output, or the input file itself.
    """
    text = str(output)
    if output.is_dir() or text.endswith(("/", os.sep)):
        stem, suffix = split_image_name(source.path.name, NIFTI_SUFFIXES + PICTURE_SUFFIXES)
        suffix = ".png" if suffix.lower() in (".jpg", ".jpeg") else suffix
        output = Path(text) / f"{stem}_{word}{suffix}"
    name = output.name.lower()
    if source.kind == "picture" and not name.endswith(PICTURE_SUFFIXES):
        raise InputError(f"{output}: a picture input gives a picture output; give a .png (or .tif, .jpg) name, "
                         f"e.g. {split_image_name(output.name, NIFTI_SUFFIXES)[0]}.png")
    if source.kind == "nifti" and not name.endswith(NIFTI_SUFFIXES):
        raise InputError(f"{output}: a NIfTI input gives a NIfTI output (its geometry and float values); give a "
                         f".nii.gz name, e.g. {Path(output.name).stem}.nii.gz")
    if source.kind == "nifti" and channels != 1:
        raise InputError(f"{output}: the model makes {channels}-channel images, which rlreg writes as pictures only; "
                         "give the input as a PNG")
    if output.exists() and output.resolve() == source.path.resolve():
        raise InputError(f"{output}: is the input file; give another output name (the input is never overwritten)")
    return output


def step_paths(output: Path) -> tuple[Path, Path]:
    """Where ``--save-steps`` writes beside ``output``: ``<stem>_steps.png`` (the strip) and ``<stem>_steps.gif``."""
    stem = split_image_name(output.name, NIFTI_SUFFIXES + PICTURE_SUFFIXES + VIDEO_SUFFIXES)[0]
    return output.with_name(f"{stem}_steps.png"), output.with_name(f"{stem}_steps.gif")


PLANES = ("axial", "coronal", "sagittal")
"""The planes a volume can be cut in; each is the plane normal to one RAS axis (S, A, R)."""
RAS_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
"""ITK direction (LPS world) of a grid whose index axes i, j, k run towards right, anterior, superior."""


@dataclass(frozen=True)
class SliceLayout:
    """How a 3-D volume is cut into the 2-D slices a model sees, and put back together.

    The volume's axes are permuted and flipped (exact, no resampling: :func:`rlreg.spatial.orientation_axes`) into
    RAS order, as the training slices of the MRI datasets were cut from the MNI152 template (``rlreg.data
    .brain_slices``: nibabel's RAS voxel order). Each slice is then laid out as in training: rows from anterior
    (axial) or superior (coronal, sagittal) down, columns along the other axis in increasing RAS order.
    """

    perm: tuple[int, ...]
    flips: tuple[bool, ...]
    axis: int
    """The RAS-ordered tensor axis (0 = S, 1 = A, 2 = R) the slices are cut along."""
    plane: str

    def cut(self, array: np.ndarray) -> np.ndarray:
        """``(C, *S)`` on the input's grid -> ``(N, C, H, W)`` slices."""
        canonical = np.transpose(array, (0, *(1 + a for a in self.perm)))
        flipped = tuple(1 + b for b, flip in enumerate(self.flips) if flip)
        canonical = np.flip(canonical, axis=flipped) if flipped else canonical
        return np.ascontiguousarray(np.flip(np.moveaxis(canonical, 1 + self.axis, 0), axis=-2))

    def join(self, slices: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`cut`: ``(N, C, H, W)`` slices -> ``(C, *S)`` on the input's grid."""
        canonical = np.moveaxis(np.flip(slices, axis=-2), 0, 1 + self.axis)
        flipped = tuple(1 + b for b, flip in enumerate(self.flips) if flip)
        canonical = np.flip(canonical, axis=flipped) if flipped else canonical
        inverse = [self.perm.index(a) for a in range(len(self.perm))]
        return np.ascontiguousarray(np.transpose(canonical, (0, *(1 + b for b in inverse))))


def slice_layout(geometry: Geometry, plane: str | None, path: Path) -> SliceLayout:
    """The :class:`SliceLayout` of a 3-D grid cut in ``plane`` (``None``: axial, or for a volume one voxel thick
    the plane of that slice).

    Raises:
        InputError: an unknown plane, or a one-slice volume asked for another plane than its own.
    """
    from rlreg.spatial import orientation_axes

    if plane is not None and plane not in PLANES:
        raise InputError(f"{path}: --plane {plane}: give axial, coronal or sagittal")
    perm, flips = orientation_axes(geometry.direction, RAS_DIRECTION)
    sizes = [geometry.size[a] for a in perm]  # per RAS-ordered axis (S, A, R)
    thin = [b for b, n in enumerate(sizes) if n == 1]
    if thin:
        own = PLANES[thin[0]]
        if plane is not None and plane != own:
            raise InputError(f"{path}: is a single {own} slice; drop --plane {plane} (or give --plane {own})")
        plane = own
    chosen = plane or "axial"
    return SliceLayout(perm, flips, PLANES.index(chosen), chosen)


@dataclass
class ChosenModel:
    """The agent a command runs, and what its card says about it."""

    agent: Any
    """The :class:`rlreg.sac.Agent`, in eval mode on the run's device."""
    name: str
    """The shipped model's name, or the checkpoint's path."""
    card: dict[str, Any]
    """The shipped card (empty for a checkpoint file)."""
    steps: int
    """Default step count: the card's ``recommended_steps``, else the task config's ``max_steps``."""
    channels: int
    """Channels of the images the agent produces."""
    source_channels: int | None
    """Translation: channels of the map it reads."""
    source: str | None
    """Translation: the kind of map, from the card (``edges``, ``superpixels``, ``labels``, ``tissue``)."""


def _listing(cards: dict[str, dict[str, Any]]) -> str:
    """``name (3-channel, edges), ...`` for messages."""
    def describe(item: dict[str, Any]) -> str:
        facts = [f"{item['channels']}-channel" if "channels" in item else "", str(item.get("source", "")),
                 str(item.get("style", ""))]
        return ", ".join(fact for fact in facts if fact)

    return ", ".join(f"{name} ({describe(item)})" if describe(item) else name for name, item in sorted(cards.items())
                     ) or "none ships"


def _card_channels(item: dict[str, Any]) -> int | None:
    """The image channels of a shipped model: its card's ``channels``, else its checkpoint's task config."""
    if "channels" in item:
        return int(item["channels"])
    from rlreg import models

    try:
        config = torch.load(models.MODELS_DIR / item["file"], map_location="cpu", weights_only=True)["config"]
        return int(config["task"]["channels"])
    except (OSError, KeyError, TypeError, RuntimeError):
        return None


def choose_model(spec: str | None, task: str, channels: int | None, path: Path, device: torch.device | str,
                 also: tuple[str, ...] = ()) -> ChosenModel:
    """Load the model ``spec`` names for ``task`` (``"inpainting"``, ``"translation"``, ``"style"``) or one of the
    tasks in ``also`` (the same command runs them: ``"video-style"`` beside ``"style"``).

    ``spec`` is a shipped model's name (``rlreg models list``) or a checkpoint file (``rlreg train``'s
    ``model.pt``); ``None`` picks the shipped model of ``task`` whose card's ``channels`` equal ``channels`` (the
    one marked default when several do; ``channels=None``: the only one of the task).

    Raises:
        InputError: unknown name, missing file, a model of another task, or no single model that fits; one line
            naming the models that do.
    """
    from rlreg import models
    from rlreg.sac import load_checkpoint

    article, command = models.TASK_WORDS[task]
    tasks = (task, *also)
    try:
        shipped = {name: item for each in tasks for name, item in models.for_task(each).items()}
    except ValueError as err:
        raise InputError(str(err)) from None
    if spec is None:
        fits = {n: c for n, c in shipped.items() if channels is None or _card_channels(c) == channels}
        defaults = [n for n, c in fits.items() if c.get("default")]
        chosen = defaults if len(fits) > 1 and len(defaults) == 1 else list(fits)
        if len(chosen) != 1:
            what = f" for {channels}-channel images" if channels is not None else ""
            raise InputError(f"{path}: {'no' if not fits else 'more than one'} shipped {task} model fits{what}; "
                             f"give --model NAME ({_listing(shipped)}) or --model a checkpoint file (.pt)")
        spec = chosen[0]
    card: dict[str, Any] = {}
    if spec.endswith(".pt") or os.sep in spec or Path(spec).is_file():
        checkpoint = Path(spec)
        if not checkpoint.is_file():
            raise InputError(f"{checkpoint}: model file not found; give a checkpoint written by rlreg train, or a "
                             f"shipped {task} model: {_listing(shipped)}")
        try:
            agent, _ = load_checkpoint(checkpoint, device=device, task=None if also else task)
        except ValueError as err:
            raise InputError(str(err)) from None
        if agent.config.task_name not in tasks:
            raise InputError(f"{checkpoint}: is a {agent.config.task_name!r} checkpoint, not {article} one; give a "
                             f"model trained on the {' or '.join(map(repr, tasks))} task (its recipe's "
                             "agent.task_name)")
        agent.eval()
    else:
        try:
            card = models.card(spec)
        except ValueError:
            raise InputError(f"--model {spec}: no shipped model of that name; {task} models: {_listing(shipped)} "
                             "(or give a checkpoint file .pt)") from None
        other = models.task_of(card)
        if other not in tasks:
            theirs, their_command = models.TASK_WORDS.get(other, (f"a {other}", "its own command"))
            raise InputError(f"--model {spec}: is {theirs} model (run it with {their_command}), not {article} "
                             f"model; {command} runs: {_listing(shipped)}")
        try:
            agent = models.load(spec, device=device)
        except ValueError as err:
            raise InputError(str(err)) from None
    config = agent.config.task
    recommended = card.get("recommended_steps")
    steps = config.max_steps if recommended is None else recommended  # 0 is a recommendation too
    return ChosenModel(agent=agent, name=spec, card=card, steps=int(steps), channels=int(config.channels),
                       source_channels=getattr(config, "source_channels", None), source=card.get("source"))


def fitting_models(task: str, channels: int) -> str:
    """The shipped models of ``task`` that make ``channels``-channel images, for messages."""
    from rlreg import models

    fits = {n: c for n, c in models.for_task(task).items() if _card_channels(c) == channels}
    return f"use --model {' or '.join(sorted(fits))}" if fits else f"no shipped {task} model makes them"


def step_reporter(say: Progress, stage: str, before: int, total: int) -> Callable[[int], None]:
    """``on_step`` for :func:`run_agent`: step ``t`` of a batch reports ``before + t`` of ``total`` to ``say``."""
    def report(step: int) -> None:
        say(stage, before + step, total)

    return report


def run_agent(model: ChosenModel, task: str, source: Tensor, target: Tensor, mask: Tensor | None, steps: int,
              frame_item: int | None = None, on_step: Callable[[int], None] | None = None
              ) -> tuple[Tensor, list[Tensor]]:
    """Run the agent's deterministic policy ``steps`` steps on one batch (:func:`rlreg.rollout.rollout`).

    Args:
        model: the chosen agent.
        task: its task's name; the task is built from the agent's own task config.
        source, target, mask: the :class:`rlreg.tasks.image.ImageBatch` fields, ``(B, *, H, W)`` on the agent's
            device.
        steps: ``T >= 0``.
        frame_item: keep this item's image after reset and after every step (``--save-steps``).
        on_step: called with ``t`` after step ``t``.

    Returns:
        ``(B, C, H, W)`` float32 final images on the CPU, and the kept frames (``T + 1`` of ``(C, H, W)``).
    """
    from rlreg.rollout import rollout
    from rlreg.tasks import task_spec
    from rlreg.tasks.image import ImageBatch

    episodes = task_spec(task).task(model.agent.config.task)
    episodes.reset(ImageBatch(source, target, mask))
    frames: list[Tensor] = []

    def keep(t: int, _result: object = None) -> None:
        if frame_item is not None:
            frames.append(episodes.image[frame_item].detach().float().cpu())
        if on_step is not None and t:
            on_step(t)

    keep(0)
    rollout(model.agent, episodes, steps, on_step=keep)
    return episodes.image.detach().float().cpu(), frames


def _frame(unit: Tensor | np.ndarray, channels: int):
    """A ``(C, H, W)`` ``[0, 1]`` image as a PIL picture with ``channels`` channels (grey repeated for RGB)."""
    from PIL import Image

    array = unit.numpy() if isinstance(unit, Tensor) else np.asarray(unit)
    array = np.repeat(array, 3, axis=0) if array.shape[0] == 1 and channels == 3 else array
    pixels = np.rint(np.clip(array, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(pixels[0] if channels == 1 else np.moveaxis(pixels, 0, -1))


def write_steps(output: Path, frames: Sequence[Tensor | np.ndarray], reference: np.ndarray | None = None,
                gap: int = 2) -> dict[str, str]:
    """``--save-steps``: a PNG strip (input, step 1..T, then the reference when given), ``gap`` white pixels apart,
    and an animated GIF of input and steps (0.4 s a frame, looping), beside ``output`` (:func:`step_paths`).

    Args:
        frames: ``(C, H, W)`` images in ``[0, 1]``, the input first.
        reference: ``(C, H, W)`` in ``[0, 1]``, or ``None``.

    Returns:
        ``{"steps_strip": path, "steps_gif": path}``.
    """
    from PIL import Image

    channels = 3 if any(f.shape[0] == 3 for f in frames) or (reference is not None and reference.shape[0] == 3) else 1
    pictures = [_frame(f, channels) for f in frames]
    tiles = pictures + ([_frame(reference, channels)] if reference is not None else [])
    width, height = tiles[0].size
    strip = Image.new("L" if channels == 1 else "RGB", (len(tiles) * width + (len(tiles) - 1) * gap, height),
                      255 if channels == 1 else (255, 255, 255))
    for index, tile in enumerate(tiles):
        strip.paste(tile, (index * (width + gap), 0))
    strip_path, gif_path = step_paths(output)
    with atomic_output(strip_path) as tmp:
        strip.save(tmp, format="PNG")
    with atomic_output(gif_path) as tmp:
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=400, loop=0)
    return {"steps_strip": str(strip_path), "steps_gif": str(gif_path)}


def write_output(path: Path, stored: np.ndarray, like: InputImage, bits: int = 8) -> None:
    """Write ``(C, *S)`` stored values in ``like``'s format: a picture of ``bits`` bits (PNG/TIFF/JPEG by the name),
    or a float32 NIfTI on ``like``'s grid (origin, spacing and direction kept)."""
    from PIL import Image

    if like.kind == "nifti":
        assert like.geometry is not None
        write_image(stored[0], like.geometry, path, dtype=np.float32)
        return
    pixels = stored.astype(np.uint16 if bits == 16 else np.uint8)
    picture = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1))
    name = path.name.lower()
    kind = "JPEG" if name.endswith((".jpg", ".jpeg")) else "TIFF" if name.endswith((".tif", ".tiff")) else "PNG"
    with atomic_output(path) as tmp:
        picture.save(tmp, format=kind, **({"quality": 95} if kind == "JPEG" else {}))


def image_quality(output: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """PSNR (dB, peak 1; :func:`rlreg.tasks.image.masked_psnr`) and SSIM (scikit-image, data range 1) of ``output``
    against ``reference``, over the whole image and, given a mask, inside it (SSIM there: the mean of the SSIM map
    over the mask).

    Args:
        output, reference: ``(C, H, W)`` images, or ``(N, C, H, W)`` slices of a volume, in ``[0, 1]``; slices get
            the 2-D SSIM of each slice (maps averaged over the volume), as the model saw them.
        mask: ``(H, W)`` or ``(N, H, W)``, or ``None``.

    SSIM is left out for images under 7 pixels a side (scikit-image's window).
    """
    from skimage.metrics import structural_similarity

    from rlreg.tasks.image import masked_psnr

    if output.ndim == 3:
        output, reference = output[None], reference[None]
        mask = None if mask is None else mask[None]
    out, ref = (torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, 0, 1)))[None].float() for a in (output, reference))
    metrics = {"psnr": float(masked_psnr(out, ref)[0])}
    if mask is not None:
        metrics["psnr_hole"] = float(masked_psnr(out, ref, torch.from_numpy(mask[None, None].astype(np.float32)))[0])
    if min(output.shape[2:]) < 7:
        return metrics
    maps = np.stack([structural_similarity(r, o, data_range=1.0, channel_axis=0, full=True)[1].mean(axis=0)
                     for r, o in zip(reference.astype(np.float64), output.astype(np.float64), strict=True)])
    metrics["ssim"] = float(maps.mean())
    if mask is not None:
        metrics["ssim_hole"] = float(maps[mask.astype(bool)].mean())
    return metrics


@dataclass
class ImageToImageResult:
    """What ``rlreg inpaint`` / ``rlreg translate`` / ``rlreg stylize`` did (``--json`` prints :meth:`to_dict`)."""

    command: Literal["inpaint", "translate", "stylize"]
    model: str
    """Shipped model name or checkpoint path."""
    task: str
    steps: int
    device: str
    inputs: dict[str, str]
    outputs: dict[str, str]
    """``output``, and with ``--save-steps`` ``steps_strip`` and ``steps_gif``."""
    size: list[int]
    """Width, height (and depth) in pixels/voxels."""
    channels: int
    """Channels of the output image."""
    seconds: dict[str, float]
    """``read``, ``run`` (the agent), ``write`` and ``total``, wall-clock."""
    hole_fraction: float | None = None
    """Inpainting: the fraction of pixels/voxels the mask marks missing."""
    slices: int | None = None
    """3-D NIfTI: the number of 2-D slices the agent ran on."""
    plane: str | None = None
    """3-D NIfTI: the plane the slices were cut in (axial, coronal, sagittal)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """With ``--reference``: ``psnr``, ``ssim`` and for inpainting ``psnr_hole``, ``ssim_hole``, on ``[0, 1]``
    intensities (the input's window)."""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
