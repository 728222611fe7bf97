"""``rlreg translate INPUT -o OUT``: turn a source map into an image with a translation agent (RL-I2IT's realistic
photo translation: the state is the source and the current image, the action the next image).

INPUT is the map the model reads, as its card's ``source`` says (``docs/inpaint.md``, "rlreg translate"):

* ``labels``: an integer label map (PNG, or a 2-D / 3-D NIfTI), coloured by
  :func:`rlreg.data.maps.label_colour_map` as in training;
* ``edges`` / ``superpixels``: the map as a picture, or with ``from_photo`` a photo the map is computed from
  (:func:`rlreg.data.maps.edge_map`, :func:`rlreg.data.maps.superpixel_map`);
* ``tissue`` and checkpoints without a card: a picture or NIfTI with the model's source channels, in ``[0, 1]``
  (8-bit pictures divided by 255, NIfTI values clipped).

The output has the input's format and size: a picture (8-bit) for a picture, a float32 NIfTI in ``[0, 1]`` on the
input's grid for a NIfTI (3-D volumes are translated slice by slice in one anatomical plane, oriented as in
training: :class:`~rlreg.pipelines.i2i.SliceLayout`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlreg.data import maps
from rlreg.data.maps import label_colour_map
from rlreg.io import InputError, read_label_map
from rlreg.pipelines.i2i import (
    ChosenModel,
    ImageToImageResult,
    InputImage,
    Progress,
    RunSettings,
    choose_model,
    image_kind,
    image_quality,
    output_path,
    read_input,
    read_picture,
    run_agent,
    slice_layout,
    step_reporter,
    write_output,
    write_steps,
)
from rlreg.pipelines.threads import cpu_threads

__all__ = ["TranslateOptions", "source_map", "translate"]

TASK = "translation"
PHOTO_MAPS = ("edges", "superpixels")
"""Maps ``--from-photo`` computes from a photo."""


@dataclass(frozen=True, kw_only=True)
class TranslateOptions(RunSettings):
    """What ``rlreg translate`` was asked to do: the files, and the shared :class:`~rlreg.pipelines.i2i.RunSettings`
    (``model``: a shipped translation model or checkpoint; ``None``: the only shipped translation model)."""

    input: Path
    """The source map (or, with ``from_photo``, a photo)."""
    output: Path
    """Output file, or a folder for ``<stem>_translated<ext>``."""
    from_photo: bool = False
    """INPUT is an RGB photo: compute the model's edge or superpixel map from it."""


def source_map(path: Path, model: ChosenModel, from_photo: bool = False) -> tuple[np.ndarray, InputImage]:
    """The ``(Cs, *S)`` float32 map in ``[0, 1]`` the model reads, built from ``path``, and the image whose format,
    size and grid the output takes (its window maps ``[0, 1]`` to 8-bit pixels, or leaves NIfTI values in ``[0, 1]``).

    Raises:
        InputError: a channel count other than the model's source channels (saying how to get the right map), a
            non-integer label map, or ``from_photo`` for a model that does not read a photo's map.
    """
    path = Path(path)
    kind = image_kind(path, "input")
    if from_photo:
        if model.source not in PHOTO_MAPS:
            raise InputError(f"{path}: --from-photo computes edge or superpixel maps, but model {model.name} reads "
                             f"{model.source or 'its own'} maps; give the map itself")
        if kind != "picture":
            raise InputError(f"{path}: --from-photo reads an RGB photo (PNG, JPEG, TIFF)")
        values, bits = read_picture(path, "photo")
        if bits != 8:
            raise InputError(f"{path}: --from-photo reads 8-bit photos; convert it to 8-bit RGB first")
        rgb = np.repeat(values, 3, axis=0) if values.shape[0] == 1 else values
        compute = maps.edge_map if model.source == "edges" else maps.superpixel_map
        source = np.asarray(compute(np.moveaxis(rgb, 0, -1).astype(np.uint8)), dtype=np.float32)
        return source, InputImage(values, path, "picture", bits=8)
    if model.source == "labels":
        if kind == "picture":
            labels, _ = read_picture(path, "label map", labels=True)
            if labels.shape[0] != 1:
                raise InputError(f"{path}: is a colour picture; model {model.name} reads integer label maps: give "
                                 "the labels as a grey or palette PNG, or a NIfTI label map")
            like = InputImage(labels, path, "picture", bits=8)
        else:
            label_image = read_label_map(path)
            grid = label_image.volume or label_image.geometry
            labels = label_image.data[0].numpy().astype(np.float64).reshape(1, *grid.size)
            like = InputImage(labels, path, "nifti", geometry=grid, window=(0.0, 1.0))
        if labels.min() < 0:
            raise InputError(f"{path}: holds negative labels (e.g. {labels.min():g}); label maps hold ids 0, 1, 2, ...")
        flat = labels[0].reshape(-1, *labels.shape[-2:]).astype(np.int64)
        source = np.stack([np.asarray(label_colour_map(item), dtype=np.float32) for item in flat], axis=1)
        return source.reshape(source.shape[0], *labels.shape[1:]), like
    image = read_input(path, "input")
    if image.kind == "nifti":
        image.window = (0.0, 1.0)  # probability and label-colour maps live in [0, 1] already
    if image.channels != model.source_channels:
        hint = (f"; give the {model.source} map, or the photo with --from-photo" if model.source in PHOTO_MAPS
                else f"; give a {model.source_channels}-channel {model.source or 'source'} map")
        raise InputError(f"{path}: has {image.channels} channel(s) but model {model.name} reads "
                         f"{model.source_channels}-channel {model.source or 'source'} maps{hint}")
    return image.to_unit(), image


def translate(options: TranslateOptions, progress: Progress | None = None) -> ImageToImageResult:
    """Translate ``options.input`` into an image and write it (see the module docstring).

    Raises:
        InputError: any bad input or model, before anything is written (one line naming the file and the fix).
    """
    start = time.perf_counter()
    say = progress or (lambda stage, done, total: None)
    if options.steps is not None and options.steps < 0:
        raise InputError(f"--steps {options.steps}: give 0 or more steps")
    image_kind(Path(options.input), "input")
    with cpu_threads(options.threads):
        model = choose_model(options.model, TASK, None, Path(options.input), options.device)
        source, like = source_map(Path(options.input), model, options.from_photo)
        if source.shape[0] != model.source_channels:
            raise InputError(f"{options.input}: gives a {source.shape[0]}-channel map but model {model.name} reads "
                             f"{model.source_channels} channels; give a model trained on {model.source} maps")
        output = output_path(options.output, like, "translated", model.channels)
        reference = None
        if options.reference is not None:
            reference = read_input(options.reference, "reference")
            if reference.spatial != source.shape[1:] or reference.channels != model.channels:
                raise InputError(f"{options.reference}: is {reference.size_text()} with {reference.channels} "
                                 f"channel(s); give the true image: {'x'.join(map(str, source.shape[1:][::-1]))} "
                                 f"with {model.channels}")
        layout = None
        if len(like.spatial) == 3:
            assert like.geometry is not None
            layout = slice_layout(like.geometry, options.plane, like.path)
        steps = model.steps if options.steps is None else options.steps
        read_seconds = time.perf_counter() - start
        stack = source[None] if layout is None else layout.cut(source)
        images, frames = _run(model, stack, steps, options, say)
    run_seconds = time.perf_counter() - start - read_seconds
    image = images[0] if layout is None else layout.join(images)
    write_output(output, like.from_unit(image), like)
    outputs = {"output": str(output)}
    truth = None if reference is None else reference.to_unit()
    truths = None if truth is None else truth[None] if layout is None else layout.cut(truth)
    metrics = {} if truths is None else image_quality(images, truths)
    if options.save_steps:
        shown = len(stack) // 2
        if stack.shape[1] in (1, 3):
            frames = [torch.from_numpy(stack[shown]), *frames[1:]]
        outputs |= write_steps(output, frames, None if truths is None else truths[shown])
    total = time.perf_counter() - start
    return ImageToImageResult(
        command="translate", model=model.name, task=TASK, steps=steps, device=str(options.device),
        inputs={"input": str(options.input)} | ({"reference": str(options.reference)} if options.reference else {}),
        outputs=outputs, size=list(source.shape[1:][::-1]), channels=model.channels,
        seconds={"read": read_seconds, "run": run_seconds, "write": total - read_seconds - run_seconds,
                 "total": total},
        slices=None if layout is None else len(stack), plane=None if layout is None else layout.plane,
        metrics=metrics)


def _run(model: ChosenModel, items: np.ndarray, steps: int, options: TranslateOptions, say: Progress
         ) -> tuple[np.ndarray, list[torch.Tensor]]:
    """The agent's images ``(N, C, H, W)`` in ``[0, 1]`` for ``(N, Cs, H, W)`` source maps, and the frames of the
    middle item."""
    device = torch.device(options.device)
    shown = len(items) // 2
    size = max(1, options.batch_size)
    batches = [range(i, min(i + size, len(items))) for i in range(0, len(items), size)]
    total = max(1, len(batches) * steps)
    stage = "translate"
    say(stage, 0, total)
    results: list[np.ndarray] = []
    frames: list[torch.Tensor] = []
    for number, chosen in enumerate(batches):
        batch = torch.from_numpy(np.ascontiguousarray(items[chosen.start:chosen.stop])).to(device)
        target = torch.zeros(len(chosen), model.channels, *batch.shape[2:], device=device)
        keep = shown - chosen.start if chosen.start <= shown < chosen.stop else None
        done, got = run_agent(model, TASK, batch, target, None, steps, frame_item=keep,
                              on_step=step_reporter(say, stage, number * steps, total))
        results.append(done.numpy())
        frames = got or frames
    say(stage, total, total)
    return np.concatenate(results), frames
