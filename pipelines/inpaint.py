"""``rlreg inpaint IMAGE MASK -o OUT``: fill the masked region of a picture or a NIfTI image with an inpainting agent.

The agent (RL-I2IT's inpainting task, :mod:`rlreg.tasks.inpainting`) pastes each step's prediction into the hole
only; the pipeline pastes the result into the input once more, in the input's own stored values, so every known
pixel or voxel of the output equals the input's **exactly** (PNG, TIFF and NIfTI; not JPEG, which is lossy). The
networks are fully convolutional, so images run at their full resolution (no resizing, no tiles). A 3-D NIfTI is
inpainted slice by slice in one anatomical plane, each slice oriented as the training slices were
(:class:`~rlreg.pipelines.i2i.SliceLayout`), in batches, and only the slices the mask touches (``docs/inpaint.md``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlreg.intensity import intensity_window
from rlreg.io import InputError, check_same_grid, read_image
from rlreg.pipelines.i2i import (
    NIFTI_SUFFIXES,
    ChosenModel,
    ImageToImageResult,
    InputImage,
    Progress,
    RunSettings,
    SliceLayout,
    choose_model,
    fitting_models,
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

__all__ = ["InpaintOptions", "inpaint", "read_mask"]

TASK = "inpainting"


@dataclass(frozen=True, kw_only=True)
class InpaintOptions(RunSettings):
    """What ``rlreg inpaint`` was asked to do: the files, and the shared :class:`~rlreg.pipelines.i2i.RunSettings`
    (``model``: a shipped inpainting model or checkpoint; ``None``: the shipped one for the image's channels)."""

    image: Path
    """Picture (PNG/JPEG/TIFF) or 2-D / 3-D NIfTI to inpaint."""
    mask: Path
    """The hole: same size as ``image``, values {0, 1}, {0, 255} or bool, 1 (255) = missing."""
    output: Path
    """Output file, or a folder for ``<stem>_inpainted<ext>``."""


def _mask_values(path: Path, values: np.ndarray) -> np.ndarray:
    """A mask's stored values as a bool array (True = missing), refusing anything but {0, 1}, {0, 255} or bool."""
    present = np.unique(values)
    if not (set(present.tolist()) <= {0.0, 1.0} or set(present.tolist()) <= {0.0, 255.0}):
        odd = next((v for v in present.tolist() if v not in (0.0, 1.0, 255.0)), float(present[-1]))
        how = (f"fslmaths {path.name} -thr 0.5 -bin {path.name.split('.')[0]}_bin.nii.gz"
               if path.name.lower().endswith(NIFTI_SUFFIXES) else
               f"python -c \"from PIL import Image; Image.open('{path.name}').convert('L').point(lambda v: 255 * "
               f"(v >= 128)).save('{path.stem}_bin.png')\"")
        raise InputError(f"{path}: is not a binary mask ({present.size} distinct values, e.g. {odd:g}); give 0 "
                         f"(known) and 1 or 255 (missing): threshold it first, e.g. {how}")
    return values > 0


def read_mask(path: Path, image: InputImage) -> np.ndarray:
    """The hole of ``image``: a ``(*S)`` bool array, True where pixels are missing.

    A picture mask may be grey, bilevel or colour with equal channels; a NIfTI mask of a NIfTI image must lie on
    its grid (:func:`rlreg.io.check_same_grid`).

    Raises:
        InputError: a size other than the image's, a non-binary mask, an empty mask or one that covers everything.
    """
    path = Path(path)
    if image_kind(path, "mask") == "picture":
        if image.kind == "nifti" and len(image.spatial) == 3:
            raise InputError(f"{path}: the image {image.path.name} is a 3-D NIfTI; give the mask as a NIfTI on its "
                             "grid")
        values, _ = read_picture(path, "mask")
        if values.shape[0] == 3 and not (np.array_equal(values[0], values[1]) and np.array_equal(values[0], values[2])):
            raise InputError(f"{path}: is a colour picture; give the mask as a grey (L) or bilevel picture, 0 = "
                             "known and 255 = missing")
        values = values[0]
    else:
        mask_image = read_image(path, dtype=torch.float64, check_values=False)
        own = mask_image.volume or mask_image.geometry
        values = mask_image.data[0, 0].numpy().reshape(own.size)
        if image.kind == "nifti" and image.geometry is not None and own.size == image.geometry.size:
            check_same_grid(path, own, image.path, image.geometry, what="mask")
    if values.shape != image.spatial:
        raise InputError(f"{path}: is {'x'.join(map(str, values.shape[::-1]))} but the image {image.path.name} is "
                         f"{image.size_text()}; give a mask of the image's size (resize it with nearest-neighbour "
                         "interpolation)")
    hole = _mask_values(path, values)
    if not hole.any():
        raise InputError(f"{path}: marks no pixel as missing (all 0); nothing to inpaint: set the missing region to "
                         "1 (or 255)")
    if hole.all():
        raise InputError(f"{path}: marks every pixel as missing; nothing is known to inpaint from: set only the "
                         "missing region to 1 (or 255), the rest to 0")
    return hole


def inpaint(options: InpaintOptions, progress: Progress | None = None) -> ImageToImageResult:
    """Inpaint ``options.image`` where ``options.mask`` is set and write the result (see the module docstring).

    Raises:
        InputError: any bad input or model, before anything is written (one line naming the file and the fix).
    """
    start = time.perf_counter()
    say = progress or (lambda stage, done, total: None)
    image = read_input(options.image)
    hole = read_mask(options.mask, image)
    if options.steps is not None and options.steps < 0:
        raise InputError(f"--steps {options.steps}: give 0 or more steps (0 returns the input)")
    if image.kind == "nifti" or image.bits == 16:  # the known voxels' percentiles, as rlreg register normalises
        image.window = intensity_window(torch.from_numpy(image.values), torch.from_numpy(~hole[None]))
    reference = None
    if options.reference is not None:
        reference = read_input(options.reference, "reference")
        if reference.values.shape != image.values.shape:
            raise InputError(f"{options.reference}: is {reference.size_text()} with {reference.channels} channels, "
                             f"but the image is {image.size_text()} with {image.channels}; give the complete image "
                             "of the same size")
        reference.window = image.window
    with cpu_threads(options.threads):
        model = choose_model(options.model, TASK, image.channels, options.image, options.device)
        if model.channels != image.channels:
            raise InputError(f"{options.image}: has {image.channels} channel(s) but model {model.name} inpaints "
                             f"{model.channels}-channel images; {fitting_models(TASK, image.channels)}")
        output = output_path(options.output, image, "inpainted", model.channels)
        layout = None
        if len(image.spatial) == 3:
            assert image.geometry is not None
            layout = slice_layout(image.geometry, options.plane, image.path)
        steps = model.steps if options.steps is None else options.steps
        read_seconds = time.perf_counter() - start
        unit = image.to_unit()
        filled, frames, count, shown = _run(model, unit, hole, layout, steps, options, say)
    run_seconds = time.perf_counter() - start - read_seconds
    stored = np.where(hole[None], image.from_unit(filled), image.values)  # known voxels: the input's, bit for bit
    write_output(output, stored, image, bits=image.bits or 8)
    outputs = {"output": str(output)}
    metrics = {}
    if reference is not None:
        result, truth = np.where(hole[None], filled, unit), reference.to_unit()
        metrics = (image_quality(result, truth, hole) if layout is None else
                   image_quality(layout.cut(result), layout.cut(truth), layout.cut(hole[None])[:, 0]))
    if options.save_steps:
        truth_frame = None
        if reference is not None:
            truth_frame = reference.to_unit() if layout is None else layout.cut(reference.to_unit())[shown]
        outputs |= write_steps(output, frames, truth_frame)
    total = time.perf_counter() - start
    warnings = [f"{output}: JPEG is lossy: the known pixels are close to the input's, not equal (write a .png for "
                "exact ones)"] if output.name.lower().endswith((".jpg", ".jpeg")) else []
    return ImageToImageResult(
        command="inpaint", model=model.name, task=TASK, steps=steps, device=str(options.device),
        inputs={"image": str(options.image), "mask": str(options.mask)}
        | ({"reference": str(options.reference)} if options.reference else {}),
        outputs=outputs, size=list(image.spatial[::-1]), channels=image.channels,
        seconds={"read": read_seconds, "run": run_seconds, "write": total - read_seconds - run_seconds,
                 "total": total},
        hole_fraction=float(hole.mean()), slices=count, plane=None if layout is None else layout.plane,
        metrics=metrics, warnings=warnings)


def _run(model: ChosenModel, unit: np.ndarray, hole: np.ndarray, layout: SliceLayout | None, steps: int,
         options: InpaintOptions, say: Progress) -> tuple[np.ndarray, list[torch.Tensor], int | None, int]:
    """The agent's output ``(C, *S)`` in ``[0, 1]`` (outside the hole: ``unit``), the frames of the shown item (a
    volume's slice with the most missing voxels), the number of slices run (volumes) and the shown slice's index."""
    device = torch.device(options.device)
    if layout is None:  # one 2-D image
        stack, masks = unit[None], hole[None, None]
    else:
        stack, masks = layout.cut(unit), layout.cut(hole[None])
    area = masks.reshape(len(masks), -1).sum(1)
    indices = [int(i) for i in np.flatnonzero(area)]
    shown = int(np.argmax(area))
    items, holes = stack[indices], masks[indices].astype(np.float32)
    size = max(1, options.batch_size)
    batches = [range(i, min(i + size, len(items))) for i in range(0, len(items), size)]
    total = max(1, len(batches) * steps)
    stage = "inpaint"
    say(stage, 0, total)
    results: list[np.ndarray] = []
    frames: list[torch.Tensor] = []
    for number, chosen in enumerate(batches):
        target = torch.from_numpy(np.ascontiguousarray(items[chosen.start:chosen.stop])).to(device)
        mask = torch.from_numpy(holes[chosen.start:chosen.stop]).to(device)
        position = indices.index(shown)
        keep = position - chosen.start if chosen.start <= position < chosen.stop else None
        done, got = run_agent(model, TASK, target * (1 - mask), target, mask, steps, frame_item=keep,
                              on_step=step_reporter(say, stage, number * steps, total))
        results.append(done.numpy())
        frames = got or frames
    say(stage, total, total)
    stack = stack.copy()
    stack[indices] = np.concatenate(results)
    filled = stack[0] if layout is None else layout.join(stack)
    return filled, frames, None if layout is None else len(indices), shown
