"""Peer registration tools on rlreg's pairs, scored by rlreg's own evaluator: ``rlreg evaluate PAIRS.csv --fields OUT``.

Four peers, each run on the same pair list (:func:`rlreg.data.pairs.read_pairs`) by :func:`run_peer`:

* ``syn``: ANTs SyN through ANTsPy, ``ants.registration(fixed, moving, "SyN")`` with ANTsPy's defaults (affine
  initialisation, then symmetric normalisation; Avants et al., Med. Image Anal. 12(1), 2008).
* ``elastix``: elastix through itk-elastix, its default ``affine`` then ``bspline`` parameter maps (Klein et al.,
  IEEE TMI 29(1), 2010), the field from transformix.
* ``greedy``: Greedy (Yushkevich et al., "Fast deformable image registration on the GPU/CPU", the engine of ITK-SNAP;
  PyPI ``picsl-greedy``) with the brain recipe of its "Deformable registration" tutorial (greedy.readthedocs.io):
  ``greedy -d 3 -a -dof 12 -ia-image-centers -n 100x50x10 -m NCC 2x2x2`` (affine), then ``-it affine.mat -n
  100x50x10 -m NCC 2x2x2`` (deformable, Greedy's default smoothing ``-s 1.732vox 0.7071vox``), run in-process;
* ``voxelmorph``: a VoxelMorph 0.3.x network (``VxmPairwise``, diffeomorphic; Balakrishnan et al., IEEE TMI 38(8),
  2019; Dalca et al., MICCAI 2018) trained here by :func:`train_voxelmorph` on synthetic pairs, run after rlreg's
  own affine stage, its outputs written by rlreg's own writer (:func:`rlreg.pipelines.register.finish`).

What each peer writes in ``OUT/<pair-id>/``:

* ``warp.nii.gz``: the whole fixed -> moving map (affine and deformable) as rlreg writes it
  (:func:`rlreg.transforms.write_itk_warp`): an ITK displacement field on the **fixed** grid, LPS millimetres, fixed
  point ``x`` mapping to moving point ``x + d(x)`` (pull-back; :data:`rlreg.pipelines.register.CONVENTIONS`);
* ``warped.nii.gz``: the moving image resampled once through that field (rlreg's own resampling);
* ``native/`` (``keep_native=True``): the tool's own outputs (ANTs transforms and warped image; elastix's result
  image and chained ``TransformParameters`` files; Greedy's ``affine.mat``, ``warp.nii.gz``, resliced image and log);
* ``peer.json`` (:class:`PeerRecord`), written last: a folder holding it holds a finished registration. A failed
  pair gets ``error.json`` instead (as ``rlreg batch`` writes it), and :func:`run_peer` goes on with the others.

How the conventions were checked (``tests/benchmarks/test_peers.py``): resampling the moving image through
``warp.nii.gz`` with SimpleITK reproduces ``ants.apply_transforms(fixed, moving, fwdtransforms)``, elastix's own
result image (cubic B-spline, as elastix resamples it) and Greedy's own ``greedy -rf fixed -rm moving out -r
warp.nii.gz affine.mat`` (wherever the point falls inside the moving image) to float precision; a pure translation
``s`` of the moving image gives a field of mean ``s`` (sign included) over the object; VoxelMorph's
``SpatialTransformer`` equals :func:`rlreg.spatial.warp` (voxel units, channel ``c`` = tensor axis ``c``,
``align_corners=True``).

Threads and reproducibility (what was measured on this machine, ANTsPy 0.6.3, itk-elastix 0.25.4):

* ANTsPy's ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` **once per process**, at its first use of ITK
  (``ants.from_numpy`` and image reading included); later changes are ignored. :func:`register_syn` sets it (and
  ``ANTS_RANDOM_SEED``, which antsRegistration reads on every call) before it touches ANTs: in a fresh process, one
  thread and a fixed seed repeat bit-identically; two threads do not (repeats differed by up to 0.18 mm on a 24^3
  phantom, 0.4 mm on a 60^3 one). For a benchmark, run each method in a fresh process so the requested count is the
  one used. ANTsPy's own default ``outprefix`` leaves three transform files per call in the system temporary folder;
  here they go to a temporary folder that is removed.
* elastix's samplers use a fixed seed, so one thread repeats bit-identically. ``number_of_threads`` above one is
  unreliable with the default ``bspline`` map (a multi-metric registration): ITKElastix#160 (open); two of three
  two-thread runs tried here went wrong (fields off by up to 15 mm, Dice 0). It also sets ITK's global maximum
  thread count, restored here after the call. The default B-spline map is slow for its size (ASGD's parameter
  estimation with the bending-energy penalty, about 1.5 s per resolution on a 24^3 image; elastix#1382), and
  loading itk-elastix takes 15-20 s and about 1 GB per process (``seconds.setup``, outside ``seconds.total``).
* ``itk.transformix_deformation_field`` writes ``deformationField.nii`` into the *current directory*; the field is
  computed here with a ``TransformixFilter`` whose output directory is a temporary folder.
* torch and SimpleITK (rlreg's affine stage, the field composition) are held to ``threads`` during each call.

Greedy's conventions, as checked numerically (picsl-greedy 1.4.0.3, oblique flipped anisotropic phantoms, 2-D and
3-D): its warp is a displacement on the fixed grid in LPS mm (an ITK vector image, as ``warp.nii.gz``); its affine
``.mat`` is a homogeneous matrix on *RAS* physical points mapping fixed to moving, so on LPS points it is ``F M F``
with ``F = diag(-1, -1, 1, 1)``; ``-r warp.nii.gz affine.mat`` maps a fixed point ``p`` to ``A(p + w(p))``, which is
also what Greedy's ``-rc`` composition writes. With one thread and a fixed ``-seed`` (its default, 0, draws a random
seed) Greedy repeats bit-identically in a process. ``Greedy.execute(..., out=, err=)`` captures only its optimiser's
messages; the per-iteration log goes to the C standard output, so :func:`register_greedy` redirects the process's
file descriptors around each call (to ``native/greedy.log``, or away). Its command-line tool rounds saved warps to
0.1 voxel (``-wp``); here the warp is taken in memory, unrounded. Where a point maps outside the moving image, Greedy
and ITK's resamplers extrapolate differently (a few border voxels differ).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import importlib.metadata
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np
import SimpleITK as sitk
import torch
from torch import Tensor, nn

from rlreg.data.pairs import Pair
from rlreg.io import Geometry, Image, InputError, atomic_output, read_image, save_sitk, save_torch, write_image
from rlreg.pipelines.threads import cpu_threads
from rlreg.spatial import orientation_axes, reorient, reorient_field_back, resize, resize_displacement, warp
from rlreg.transforms import chain_from_world, write_itk_warp

__all__ = [
    "ERROR_RECORD",
    "METHODS",
    "PEER_RECORD",
    "PeerRecord",
    "VoxelMorphConfig",
    "greedy_affine_transform",
    "greedy_commands",
    "read_peer_record",
    "register_elastix",
    "register_greedy",
    "register_syn",
    "register_voxelmorph",
    "run_peer",
    "train_voxelmorph",
    "write_greedy_matrix",
]

METHODS = ("syn", "elastix", "greedy", "voxelmorph")
PEER_RECORD = "peer.json"
ERROR_RECORD = "error.json"
"""Written in a pair folder whose registration failed (never next to a ``peer.json``), as ``rlreg batch`` does."""
CHECKPOINT_FORMAT = 1
PeerProgress = Callable[[int, int, str, str], None]
"""``progress(finished, total, pair_id, status)`` after each pair, status ``done``, ``skipped`` or ``failed``."""
TrainProgress = Callable[[int, float, float], None]
"""``progress(step, seconds, loss)`` after each training step."""


# ---------------------------------------------------------------------------------------------------- record
@dataclass
class PeerRecord:
    """What ``peer.json`` says about one registration by a peer tool."""

    method: str
    """``syn``, ``elastix``, ``greedy`` or ``voxelmorph``."""
    tool: str
    """The package that ran it (``antspyx``, ``itk-elastix``, ``picsl-greedy``, ``voxelmorph``)."""
    version: str
    """That package's version."""
    fixed: str
    moving: str
    seconds: dict[str, float]
    """Wall seconds: ``registration`` (all alignment computation: for VoxelMorph rlreg's affine stage plus the
    network, also given apart as ``affine`` and ``deformable``), ``total`` (inputs read to outputs written, this
    record excepted), stages ``read``/``field``/``write``, and ``setup`` (loading the tool or the model once per
    process; not part of ``total``; 0 once loaded)."""
    peak_rss_gib: float
    """Peak resident memory of the *process* so far (``getrusage`` ``ru_maxrss``), GiB, after the registration."""
    peak_rss_gib_before: float
    """The same just before the registration: when equal to :attr:`peak_rss_gib`, this pair did not raise it."""
    cuda_peak_gib: float | None
    """``torch.cuda.max_memory_allocated`` during the call, GiB (VoxelMorph on CUDA only)."""
    threads: int
    """CPU threads the call was given (see the module docstring for how each tool honours it)."""
    parameters: int
    """Learned parameters (0 for the classical tools)."""
    settings: dict[str, Any]
    """Everything that defines the result: the tool's effective options, seed, model, notes on known issues."""
    outputs: dict[str, str]
    conventions: dict[str, str]
    created: str
    format_version: int = 1

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PeerRecord:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def read_peer_record(folder: Path) -> PeerRecord | None:
    """The record of a finished pair folder, or ``None`` (no ``peer.json``, or an unreadable one)."""
    try:
        return PeerRecord.from_json(json.loads((Path(folder) / PEER_RECORD).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _conventions() -> dict[str, str]:
    from rlreg.pipelines.register import CONVENTIONS

    return {"direction": CONVENTIONS["direction"], "warp.nii.gz": CONVENTIONS["warp.nii.gz"],
            "warped.nii.gz": "the moving image resampled once through warp.nii.gz (rlreg.spatial.warp, linear)"}


def _gib(value: float) -> float:
    return value / 1024**3


def _peak_rss_gib() -> float:
    """``ru_maxrss`` in GiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return _gib(peak if sys.platform == "darwin" else peak * 1024)


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _start(out: Path) -> None:
    """A folder with ``peer.json`` holds a finished run; this one is not (yet)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / PEER_RECORD).unlink(missing_ok=True)


def _load_tool(load: Callable[[], Any], started: float) -> tuple[Any, dict[str, float], float]:
    """Import a peer tool, timed as ``seconds["setup"]`` and kept out of the pair's total: returns the module, the
    seconds dict and the start time moved forward by the setup."""
    t0 = time.perf_counter()
    tool = load()
    setup = time.perf_counter() - t0
    return tool, {"setup": setup}, started + setup


def _finish_record(out: Path, record: PeerRecord) -> PeerRecord:
    (out / ERROR_RECORD).unlink(missing_ok=True)
    record.outputs["record"] = str(out / PEER_RECORD)
    with atomic_output(out / PEER_RECORD) as tmp:
        tmp.write_text(json.dumps(record.to_json(), indent=2))
    return record


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables for the block, then restore them."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---------------------------------------------------------------------------------------------------- shared steps
def _read_pair(fixed: Path, moving: Path) -> tuple[Image, Image]:
    """Both images as rlreg reads them (any SimpleITK format or DICOM folder), so every peer sees the same voxels."""
    fixed_image, moving_image = read_image(fixed), read_image(moving)
    if fixed_image.ndim != moving_image.ndim:
        raise InputError(f"{moving}: is {moving_image.ndim}-D but the fixed image {fixed} is {fixed_image.ndim}-D")
    return fixed_image, moving_image


def _xyz_array(image: Image) -> np.ndarray:
    """Voxels in ITK index order ``(x, y[, z])`` (tensor order reversed), float32."""
    return np.ascontiguousarray(image.data[0, 0].numpy().astype(np.float32).T)


def _world_field(transform: sitk.Transform, geometry: Geometry) -> Tensor:
    """``(1, ndim, *S)`` float64 LPS-mm displacement ``T(x) - x`` of a SimpleITK transform on ``geometry``'s grid."""
    image = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, geometry.size[::-1],
                                              geometry.origin, geometry.spacing[::-1], geometry.direction)
    return torch.from_numpy(np.moveaxis(sitk.GetArrayFromImage(image), -1, 0).copy())[None]


def _displacement_transform(array: np.ndarray, origin: Any, spacing: Any, direction: Any) -> sitk.Transform:
    """A SimpleITK displacement-field transform from a ``(*S, ndim)`` LPS-mm array (tensor axis order) and its grid."""
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float64), isVector=True)
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetDirection(tuple(float(v) for v in np.asarray(direction, dtype=np.float64).ravel()))
    return sitk.DisplacementFieldTransform(image)  # takes the image over (interop.md §1a)


def _write_outputs(out: Path, world: Tensor, fixed: Image, moving: Image) -> dict[str, str]:
    """``warp.nii.gz`` with rlreg's writer and ``warped.nii.gz`` resampled by rlreg through it."""
    warp_path = write_itk_warp(world.float(), fixed.geometry, out / "warp.nii.gz")
    chain = chain_from_world(world, fixed.geometry, moving.geometry).float()
    warped = write_image(warp(moving.data, chain), fixed.geometry, out / "warped.nii.gz", np.float32)
    return {"warp": str(warp_path), "warped": str(warped)}


def _copy_atomic(source: Path, target: Path) -> Path:
    with atomic_output(target) as tmp:
        shutil.copyfile(source, tmp)
    return target


# ---------------------------------------------------------------------------------------------------- ANTs SyN
@functools.cache
def _peer_package(module: str, needs: str) -> Any:
    """A peer tool's Python package, imported once per process; ``needs`` is the one-line :class:`InputError` saying
    how to install it when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(needs) from None


def _ants() -> Any:
    return _peer_package("ants", "the syn peer needs ANTsPy; pip install antspyx")


def _ants_image(ants: Any, image: Image) -> Any:
    g = image.geometry
    return ants.from_numpy(_xyz_array(image), origin=list(g.origin), spacing=list(g.spacing[::-1]),
                           direction=np.asarray(g.direction, dtype=np.float64).reshape(g.ndim, g.ndim))


def _read_ants_transform(path: str, ndim: int) -> sitk.Transform:
    """One ANTs output transform: a ``.mat`` (ITK affine) or a displacement-field image."""
    if path.endswith(".mat"):
        return sitk.ReadTransform(path)
    image = sitk.ReadImage(path)
    if image.GetNumberOfComponentsPerPixel() != ndim:
        raise RuntimeError(f"ANTs transform {path} is not a {ndim}-D displacement field")
    return sitk.DisplacementFieldTransform(sitk.Cast(image, sitk.sitkVectorFloat64))


def register_syn(fixed: Path, moving: Path, out: Path, threads: int = 1, seed: int = 1, keep_native: bool = False,
                 overrides: Mapping[str, Any] | None = None) -> PeerRecord:
    """ANTs SyN, ``ants.registration(fixed, moving, "SyN")`` with ANTsPy's defaults, written as rlreg writes a pair.

    ``fwdtransforms`` is ``[warp, affine]`` in ``antsApplyTransforms`` order: a fixed point ``p`` goes to
    ``A(p + w(p))``. SimpleITK's composite applies the transform added *last* first, so the files are added in
    reverse order, and the composite is sampled on the fixed grid as one LPS-mm displacement.

    Args:
        fixed, moving: images (any format rlreg reads; both are passed to ANTs with the geometry rlreg reads).
        out: the pair folder (``warp.nii.gz``, ``warped.nii.gz``, ``peer.json``; ``native/`` with ``keep_native``).
        threads: ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` for the call (honoured only if this is the process's first
            ANTs call, see the module docstring), and the torch/SimpleITK threads around it.
        seed: ``ANTS_RANDOM_SEED`` (the affine stage samples its metric points at random).
        keep_native: also keep ANTs' transform files and warped image in ``out/native/``.
        overrides: keyword arguments for ``ants.registration`` (default: none, ANTsPy's defaults).

    Returns:
        The record written to ``peer.json`` (times in seconds, memory in GiB).
    """
    started, out = time.perf_counter(), Path(out)
    _start(out)
    ants, seconds, started = _load_tool(_ants, started)
    # The environment is in place before ANTs touches ITK at all (ants.from_numpy included): ANTsPy's ITK fixes its
    # thread count at that first use.
    with cpu_threads(threads), tempfile.TemporaryDirectory(prefix="rlreg-syn-") as scratch, \
            _environment(ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads), ANTS_RANDOM_SEED=str(seed)):
        t0 = time.perf_counter()
        fixed_image, moving_image = _read_pair(Path(fixed), Path(moving))
        ndim = fixed_image.ndim
        ants_fixed, ants_moving = _ants_image(ants, fixed_image), _ants_image(ants, moving_image)
        seconds["read"] = time.perf_counter() - t0
        options = dict(overrides or {})
        rss_before = _peak_rss_gib()
        t0 = time.perf_counter()
        result = ants.registration(ants_fixed, ants_moving, "SyN", outprefix=str(Path(scratch) / "ants_"),
                                   **options)
        seconds["registration"] = time.perf_counter() - t0
        rss_after = _peak_rss_gib()
        t0 = time.perf_counter()
        transforms = list(result["fwdtransforms"])
        composite = sitk.CompositeTransform([_read_ants_transform(p, ndim) for p in reversed(transforms)])
        world = _world_field(composite, fixed_image.geometry)
        seconds["field"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        outputs = _write_outputs(out, world, fixed_image, moving_image)
        if keep_native:
            native = out / "native"
            for path in transforms:
                name = Path(path).name
                outputs[f"native_{name}"] = str(_copy_atomic(Path(path), native / name))
            with atomic_output(native / "ants_warped.nii.gz") as tmp:
                ants.image_write(result["warpedmovout"], str(tmp))
            outputs["native_warped"] = str(native / "ants_warped.nii.gz")
        seconds["write"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started
    settings = {"type_of_transform": "SyN",
                "defaults": "ANTsPy's own for 'SyN' (its code fixes the antsRegistration arguments per type; see "
                            "'version'), changed only by 'overrides'",
                "overrides": json.loads(json.dumps(options, default=str)), "random_seed": seed,
                "fwdtransforms": [Path(p).name for p in transforms],
                "composition": "p -> A(p + w(p)): fwdtransforms added to a SimpleITK CompositeTransform in reverse",
                "threads_note": "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS is read once per process by ANTsPy's ITK"}
    record = PeerRecord(method="syn", tool="antspyx", version=_version("antspyx"), fixed=str(fixed),
                        moving=str(moving), seconds=seconds, peak_rss_gib=rss_after, peak_rss_gib_before=rss_before,
                        cuda_peak_gib=None, threads=threads, parameters=0, settings=settings, outputs=outputs,
                        conventions=_conventions(), created=_now())
    return _finish_record(out, record)


# ---------------------------------------------------------------------------------------------------- elastix
ELASTIX_MAPS = ("affine", "bspline")


@functools.lru_cache(maxsize=1)
def _itk() -> Any:
    """itk with the elastix module loaded (15-20 s and ~1 GB the first time in a process)."""
    try:
        import itk

        itk.ParameterObject  # noqa: B018 - the attribute access loads the elastix wrapping
    except (ImportError, AttributeError):
        raise InputError("the elastix peer needs itk-elastix; pip install itk-elastix") from None
    return itk


def _elastix_value(value: Any) -> list[str]:
    values = value if isinstance(value, list | tuple) else [value]
    return [("true" if v else "false") if isinstance(v, bool) else str(v) for v in values]


def _elastix_maps(itk: Any, overrides: Mapping[str, Mapping[str, Any]] | None) -> tuple[Any, list[dict[str, list]]]:
    """The default ``affine`` and ``bspline`` maps with ``overrides`` (``{map name: {parameter: value}}``)."""
    unknown = set(overrides or {}) - set(ELASTIX_MAPS)
    if unknown:
        raise ValueError(f"elastix overrides for unknown map(s) {sorted(unknown)}; use {', '.join(ELASTIX_MAPS)}")
    parameters = itk.ParameterObject.New()
    effective = []
    for name in ELASTIX_MAPS:
        parameter_map = parameters.GetDefaultParameterMap(name)
        for key, value in (overrides or {}).get(name, {}).items():
            parameter_map[key] = _elastix_value(value)
        parameters.AddParameterMap(parameter_map)
        effective.append({k: list(v) for k, v in dict(parameter_map).items()})
    return parameters, effective


def _itk_image(itk: Any, image: Image) -> Any:
    g = image.geometry
    out = itk.image_from_array(np.ascontiguousarray(image.data[0, 0].numpy().astype(np.float32)))
    out.SetOrigin(tuple(float(v) for v in g.origin))
    out.SetSpacing(tuple(float(v) for v in g.spacing[::-1]))
    out.SetDirection(itk.matrix_from_array(np.asarray(g.direction, dtype=np.float64).reshape(g.ndim, g.ndim)))
    return out


def _write_parameter_files(itk: Any, transform_parameters: Any, folder: Path) -> dict[str, str]:
    """elastix's transform parameter files, chained as elastix writes them (each names the previous one)."""
    written: dict[str, str] = {}
    previous = "NoInitialTransform"
    for index in range(transform_parameters.GetNumberOfParameterMaps()):
        parameter_map = transform_parameters.GetParameterMap(index)
        parameter_map["InitialTransformParameterFileName"] = [previous]
        path = folder / f"TransformParameters.{index}.txt"
        single = itk.ParameterObject.New()
        single.SetParameterMap(parameter_map)
        with atomic_output(path) as tmp:
            single.WriteParameterFile(str(tmp))
        written[f"native_parameters_{index}"] = previous = str(path)
    return written


def register_elastix(fixed: Path, moving: Path, out: Path, threads: int = 1, keep_native: bool = False,
                     overrides: Mapping[str, Mapping[str, Any]] | None = None) -> PeerRecord:
    """elastix with its default ``affine`` then ``bspline`` parameter maps, written as rlreg writes a pair.

    elastix's transform maps fixed points to moving points (its own resampling convention), so transformix's
    deformation field on the fixed grid is ``T(x) - x`` = rlreg's ``d(x)`` as it stands, in LPS mm.

    Args:
        fixed, moving: images (any format rlreg reads; passed to elastix with the geometry rlreg reads).
        out: the pair folder (``warp.nii.gz``, ``warped.nii.gz``, ``peer.json``; ``native/`` with ``keep_native``).
        threads: elastix's ``number_of_threads`` (one is the reliable choice, see the module docstring).
        keep_native: also keep elastix's result image and transform parameter files in ``out/native/``.
        overrides: parameter changes per map, ``{"bspline": {"MaximumNumberOfIterations": 500}}`` (default: none).

    Returns:
        The record written to ``peer.json`` (times in seconds, memory in GiB).
    """
    started, out = time.perf_counter(), Path(out)
    _start(out)
    itk, seconds, started = _load_tool(_itk, started)
    parameters, effective = _elastix_maps(itk, overrides)
    threader = itk.MultiThreaderBase
    maximum, default = threader.GetGlobalMaximumNumberOfThreads(), threader.GetGlobalDefaultNumberOfThreads()
    with cpu_threads(threads):
        t0 = time.perf_counter()
        fixed_image, moving_image = _read_pair(Path(fixed), Path(moving))
        itk_fixed, itk_moving = _itk_image(itk, fixed_image), _itk_image(itk, moving_image)
        seconds["read"] = time.perf_counter() - t0
        rss_before = _peak_rss_gib()
        try:
            t0 = time.perf_counter()
            result, transform_parameters = itk.elastix_registration_method(
                itk_fixed, itk_moving, parameter_object=parameters, number_of_threads=threads, log_to_console=False)
            seconds["registration"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="rlreg-transformix-") as scratch:
                transformix = itk.TransformixFilter.New(itk_moving, transform_parameter_object=transform_parameters,
                                                        output_directory=scratch, log_to_console=False)
                transformix.SetComputeDeformationField(True)
                transformix.UpdateLargestPossibleRegion()
                deformation = transformix.GetOutputDeformationField()
            rss_after = _peak_rss_gib()
        finally:  # elastix's number_of_threads sets ITK's global maximum; leave the process as it was
            threader.SetGlobalMaximumNumberOfThreads(maximum)
            threader.SetGlobalDefaultNumberOfThreads(default)
        field_transform = _displacement_transform(
            itk.array_from_image(deformation), deformation.GetOrigin(), deformation.GetSpacing(),
            itk.array_from_matrix(deformation.GetDirection()))
        world = _world_field(field_transform, fixed_image.geometry)
        seconds["field"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        outputs = _write_outputs(out, world, fixed_image, moving_image)
        if keep_native:
            native = out / "native"
            native.mkdir(parents=True, exist_ok=True)
            with atomic_output(native / "elastix_warped.nii.gz") as tmp:
                itk.imwrite(result, str(tmp), compression=True)
            outputs["native_warped"] = str(native / "elastix_warped.nii.gz")
            outputs.update(_write_parameter_files(itk, transform_parameters, native))
        seconds["write"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started
    notes = ["elastix resamples its result image with a cubic B-spline (FinalBSplineInterpolationOrder 3)"]
    if threads > 1:
        notes.append("number_of_threads > 1 with the multi-metric bspline map is unreliable (ITKElastix#160)")
    settings = {"parameter_maps": effective, "overrides": json.loads(json.dumps(overrides or {}, default=str)),
                "notes": notes}
    record = PeerRecord(method="elastix", tool="itk-elastix", version=_version("itk-elastix"), fixed=str(fixed),
                        moving=str(moving), seconds=seconds, peak_rss_gib=rss_after, peak_rss_gib_before=rss_before,
                        cuda_peak_gib=None, threads=threads, parameters=0, settings=settings, outputs=outputs,
                        conventions=_conventions(), created=_now())
    return _finish_record(out, record)


# ---------------------------------------------------------------------------------------------------- Greedy
GREEDY_ITERATIONS = "100x50x10"
"""Iterations per level, coarse to fine (4x, 2x, 1x), of both of Greedy's stages in its documented brain recipe."""
GREEDY_NCC_RADIUS = 2
"""NCC window radius (voxels) of the recipe's ``-m NCC 2x2x2``."""


def _picsl_greedy() -> Any:
    return _peer_package("picsl_greedy", "the greedy peer needs Greedy's Python package; pip install picsl-greedy")


@contextlib.contextmanager
def _process_output(path: Path | None) -> Iterator[IO[str]]:
    """Everything the process writes to its standard output and error in the block, C and C++ code included, goes
    to ``path`` (appended; ``None``: discarded). Yields that file, for ``picsl_greedy``'s ``out=``/``err=``.

    ``Greedy.execute(..., out=, err=)`` takes only part of Greedy's log (its optimiser's messages); the per-level
    and per-iteration lines go to the C standard output, so the file descriptors themselves are redirected, and the
    C library's buffers flushed before they are restored.
    """
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path if path is not None else os.devnull, "a", buffering=1) as target:
        try:
            os.dup2(target.fileno(), 1)
            os.dup2(target.fileno(), 2)
            yield target
        finally:
            libc.fflush(None)
            target.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _sitk_image(image: Image) -> sitk.Image:
    """An rlreg image as a float32 SimpleITK image with its geometry."""
    return image.geometry.apply_to(sitk.GetImageFromArray(image.data[0, 0].numpy().astype(np.float32)))


def _ras_flip(ndim: int) -> np.ndarray:
    """``diag(-1, -1, 1[, 1])``: LPS <-> RAS on homogeneous ``(ndim+1)`` vectors (its own inverse)."""
    return np.diag([-1.0, -1.0, *[1.0] * (ndim - 1)])


def greedy_affine_transform(matrix_ras: np.ndarray) -> sitk.AffineTransform:
    """Greedy's affine matrix (a ``(ndim+1, ndim+1)`` homogeneous map of physical RAS points, fixed -> moving, as
    ``-o affine.mat`` writes it) as a SimpleITK affine on LPS points: ``F M F`` with ``F = diag(-1, -1, 1, 1)``."""
    matrix_ras = np.asarray(matrix_ras, dtype=np.float64)
    ndim = matrix_ras.shape[0] - 1
    flip = _ras_flip(ndim)
    lps = flip @ matrix_ras @ flip
    transform = sitk.AffineTransform(ndim)
    transform.SetMatrix(lps[:ndim, :ndim].ravel().tolist())
    transform.SetTranslation(lps[:ndim, ndim].tolist())
    return transform


def write_greedy_matrix(matrix_ras: np.ndarray, path: Path) -> Path:
    """A Greedy affine ``.mat`` (whitespace-separated rows of the homogeneous RAS matrix), full precision."""
    with atomic_output(path) as tmp:
        tmp.write_text("".join(" ".join(f"{v:.17g}" for v in row) + "\n" for row in np.asarray(matrix_ras)))
    return Path(path)


def greedy_commands(ndim: int, threads: int, seed: int, iterations: str = GREEDY_ITERATIONS,
                    ncc_radius: int = GREEDY_NCC_RADIUS) -> dict[str, str]:
    """Greedy's command lines for one pair, with ``fixed``/``moving``/``affine``/``warp``/``resliced`` standing for
    the images and outputs (files on a command line, cached objects in ``picsl_greedy``).

    ``affine`` and ``deformable`` are the recipe of Greedy's "Deformable registration" tutorial
    (greedy.readthedocs.io): ``-a -dof 12 -ia-image-centers -n 100x50x10 -m NCC 2x2x2``, then
    ``-it affine -n 100x50x10 -m NCC 2x2x2`` with Greedy's default smoothing (``-s 1.732vox 0.7071vox``) and step;
    ``reslice`` applies ``warp`` then ``affine`` (Greedy's ``-r`` chain: a fixed point ``p`` goes to
    ``A(p + w(p))``). ``-threads`` and ``-seed`` (Greedy's default seed 0 draws a random one) are added to each.
    """
    radius = "x".join([str(ncc_radius)] * ndim)
    common = f"-d {ndim} -threads {threads}"
    return {"affine": f"{common} -seed {seed} -a -dof 12 -i fixed moving -o affine -ia-image-centers "
                      f"-n {iterations} -m NCC {radius}",
            "deformable": f"{common} -seed {seed} -i fixed moving -it affine -o warp -n {iterations} -m NCC {radius}",
            "reslice": f"{common} -rf fixed -rm moving resliced -r warp affine"}


def register_greedy(fixed: Path, moving: Path, out: Path, threads: int = 1, seed: int = 1, keep_native: bool = False,
                    iterations: str = GREEDY_ITERATIONS, ncc_radius: int = GREEDY_NCC_RADIUS) -> PeerRecord:
    """Greedy (Yushkevich et al.; ITK-SNAP's registration engine) with its documented brain recipe, written as rlreg
    writes a pair.

    Runs in-process through ``picsl_greedy`` (``Greedy3D``/``Greedy2D``): the images go in as rlreg reads them and the
    affine matrix and warp come back in memory (double precision; Greedy's ``-wp`` rounding applies only to the
    files its command line writes). The warp is a fixed-grid LPS-mm displacement; the affine is a RAS matrix, fixed
    to moving; composed as Greedy's ``-r warp affine`` applies them, ``p -> A(p + w(p))``
    (:func:`greedy_affine_transform`), and sampled on the fixed grid as one LPS-mm displacement.

    Args:
        fixed, moving: 2-D or 3-D images (any format rlreg reads).
        out: the pair folder (``warp.nii.gz``, ``warped.nii.gz``, ``peer.json``; ``native/`` with ``keep_native``).
        threads: Greedy's ``-threads`` (its ITK's thread count in this process), and torch/SimpleITK around it.
        seed: Greedy's ``-seed`` (its affine stage jitters its sample points, its NCC adds noise, at random).
        keep_native: also keep Greedy's ``affine.mat``, ``warp.nii.gz`` (float32), its own resliced image
            ``greedy_warped.nii.gz`` and its log ``greedy.log`` in ``out/native/``.
        iterations, ncc_radius: the recipe's ``-n`` and ``-m NCC`` radius (voxels), both stages.

    Returns:
        The record written to ``peer.json`` (times in seconds, memory in GiB).
    """
    started, out = time.perf_counter(), Path(out)
    _start(out)
    greedy, seconds, started = _load_tool(_picsl_greedy, started)
    native = out / "native"
    log_path = native / "greedy.log" if keep_native else None
    if log_path is not None:
        native.mkdir(parents=True, exist_ok=True)
        log_path.unlink(missing_ok=True)
    with cpu_threads(threads):
        t0 = time.perf_counter()
        fixed_image, moving_image = _read_pair(Path(fixed), Path(moving))
        ndim = fixed_image.ndim
        if ndim not in (2, 3):
            raise InputError(f"{fixed}: Greedy registers 2-D or 3-D images, this one is {ndim}-D")
        engine = greedy.Greedy3D() if ndim == 3 else greedy.Greedy2D()
        images = {"fixed": _sitk_image(fixed_image), "moving": _sitk_image(moving_image)}
        seconds["read"] = time.perf_counter() - t0
        commands = greedy_commands(ndim, threads, seed, iterations, ncc_radius)
        rss_before = _peak_rss_gib()
        with _process_output(log_path) as log:
            t0 = time.perf_counter()
            engine.execute(commands["affine"], out=log, err=log, affine=None, **images)
            seconds["affine"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            engine.execute(commands["deformable"], out=log, err=log, warp=None)
            seconds["deformable"] = time.perf_counter() - t0
        seconds["registration"] = seconds["affine"] + seconds["deformable"]
        rss_after = _peak_rss_gib()
        t0 = time.perf_counter()
        matrix = np.asarray(engine["affine"], dtype=np.float64)
        warp_image = sitk.Cast(engine["warp"], sitk.sitkVectorFloat64)
        composite = sitk.CompositeTransform([greedy_affine_transform(matrix),  # the last added is applied first
                                             sitk.DisplacementFieldTransform(sitk.Image(warp_image))])
        world = _world_field(composite, fixed_image.geometry)
        seconds["field"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        outputs = _write_outputs(out, world, fixed_image, moving_image)
        if keep_native:
            with _process_output(log_path) as log:
                engine.execute(commands["reslice"], out=log, err=log, resliced=None)
            outputs["native_affine"] = str(write_greedy_matrix(matrix, native / "affine.mat"))
            outputs["native_warp"] = str(save_sitk(sitk.Cast(warp_image, sitk.sitkVectorFloat32),
                                                   native / "warp.nii.gz"))
            outputs["native_warped"] = str(save_sitk(engine["resliced"], native / "greedy_warped.nii.gz"))
            outputs["native_log"] = str(log_path)
        seconds["write"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started
    radius = "x".join([str(ncc_radius)] * ndim)
    settings = {"commands": commands,
                "command_line": [f"greedy -d {ndim} -a -dof 12 -i fixed moving -o affine.mat -ia-image-centers "
                                 f"-n {iterations} -m NCC {radius} -threads {threads} -seed {seed}",
                                 f"greedy -d {ndim} -i fixed moving -it affine.mat -o warp.nii.gz -n {iterations} "
                                 f"-m NCC {radius} -threads {threads} -seed {seed}",
                                 f"greedy -d {ndim} -rf fixed -rm moving resliced -r warp.nii.gz affine.mat"],
                "recipe": "greedy.readthedocs.io, 'Deformable registration' tutorial (affine, then deformable with "
                          "-it affine); Greedy's defaults otherwise (-s 1.732vox 0.7071vox, -e 1.0)",
                "random_seed": seed, "affine_matrix_ras": matrix.tolist(),
                "composition": "p -> A(p + w(p)): Greedy's -r warp affine; A = F M F (M: the RAS matrix, "
                               "F = diag(-1, -1, 1, 1)), w: the warp's LPS-mm vectors",
                "io": "in-process picsl_greedy: images in memory as rlreg reads them, affine and warp in memory "
                      "(double precision, no -wp rounding)"}
    record = PeerRecord(method="greedy", tool="picsl-greedy", version=_version("picsl-greedy"), fixed=str(fixed),
                        moving=str(moving), seconds=seconds, peak_rss_gib=rss_after, peak_rss_gib_before=rss_before,
                        cuda_peak_gib=None, threads=threads, parameters=0, settings=settings, outputs=outputs,
                        conventions=_conventions(), created=_now())
    return _finish_record(out, record)


# ---------------------------------------------------------------------------------------------------- VoxelMorph
@dataclass(frozen=True)
class VoxelMorphConfig:
    """The VoxelMorph network and its training losses (saved in every checkpoint)."""

    nb_features: tuple[int, ...] = (16, 16, 16, 16, 16)
    """Features per UNet level (``VxmPairwise``'s default). Inputs must be divisible by ``2 ** len(nb_features)``."""
    integration_steps: int = 5
    """Scaling-and-squaring steps of the stationary velocity field (``VxmPairwise``'s default; 0 = plain field)."""
    ncc_window: int = 9
    """Local NCC window (voxels), VoxelMorph's default."""
    image_weight: float = 1.0
    """Weight of the image term ``-NCC(fixed, moving o phi)``."""
    grad_weight: float = 1.0
    """Weight of the L2 gradient penalty on the velocity field: lambda = 1, the best value for cross-correlation in
    Balakrishnan et al. 2019 (their 0.01 is for MSE)."""
    dice_weight: float = 1.0
    """Weight of ``1 - soft Dice`` of the warped one-hot labels (VoxelMorph's auxiliary segmentation loss, as rlreg's
    agent also learns from labels); 0 trains the unsupervised VoxelMorph. VoxelMorph's semi-supervised script uses
    0.01 next to an MSE image term of order 1e-3; with NCC and Dice both in [0, 1], 1 keeps the label term at the
    image term's scale."""
    learning_rate: float = 1e-4
    """Adam learning rate, VoxelMorph's default."""
    batch_size: int = 1
    """Pairs per step, VoxelMorph's default."""

    @property
    def divisor(self) -> int:
        """Each spatial size the network accepts is a multiple of this (one 2x pooling per UNet level)."""
        return 2 ** len(self.nb_features)

    @property
    def variant(self) -> str:
        return "label-supervised (NCC + grad + Dice)" if self.dice_weight > 0 else "unsupervised (NCC + grad)"


def _voxelmorph() -> Any:
    return _peer_package("voxelmorph", "the voxelmorph peer needs VoxelMorph 0.3.x; pip install voxelmorph")


def _build_voxelmorph(config: VoxelMorphConfig, ndim: int) -> nn.Module:
    vxm = _voxelmorph()
    return vxm.nn.models.VxmPairwise(ndim=ndim, source_channels=1, target_channels=1,
                                     nb_features=list(config.nb_features),
                                     integration_steps=config.integration_steps)


def _displacement(model: nn.Module, fixed: Tensor, moving: Tensor) -> tuple[Tensor, Tensor]:
    """VoxelMorph's ``(velocity, displacement)`` for pairs ``(N, 1, *S)``, in voxels on the fixed grid.

    The displacement is VoxelMorph's pull-back field (``SpatialTransformer(moving, disp)`` = ``warp(moving, disp)``
    of :mod:`rlreg.spatial`, same channel order and voxel units).
    """
    velocity = model(moving, fixed, return_field_type="velocity")
    if model.integration_steps > 0:
        return velocity, model.velocity_field_integrator(velocity)
    return velocity, velocity


def _check_shape(shape: tuple[int, ...], config: VoxelMorphConfig) -> None:
    if len(shape) not in (2, 3):
        raise ValueError(f"VoxelMorph shape {shape}: give 2 or 3 spatial sizes")
    bad = [n for n in shape if n % config.divisor or n < config.divisor]
    if bad:
        raise ValueError(f"VoxelMorph shape {shape}: every size must be a positive multiple of {config.divisor} "
                         f"(2 ** {len(config.nb_features)} UNet levels); pad or resize to e.g. "
                         f"{tuple(max(config.divisor, round(n / config.divisor) * config.divisor) for n in shape)}")


def _voxelmorph_losses(config: VoxelMorphConfig) -> tuple[nn.Module, nn.Module, nn.Module]:
    """VoxelMorph's losses (from ``neurite``, its companion package): local NCC, L2 gradient, soft Dice."""
    import neurite as ne

    return (ne.nn.modules.NCC(window_size=config.ncc_window), ne.nn.modules.SpatialGradient("l2"),
            ne.nn.modules.Dice())


def _one_hot(seg: Tensor, labels: Tensor) -> Tensor:
    """``(N, 1, *S)`` label map -> ``(N, L, *S)`` float one-hot over ``labels``."""
    return (seg == labels.view(1, -1, *[1] * (seg.ndim - 2))).float()


def train_voxelmorph(sampler: Callable[[int, torch.Generator, torch.device | str], Any], shape: tuple[int, ...],
                     budget_seconds: float, output: Path, seed: int = 0, device: torch.device | str = "cpu",
                     config: VoxelMorphConfig | None = None, threads: int | None = None, max_steps: int | None = None,
                     progress: TrainProgress | None = None) -> Path:
    """Train a VoxelMorph ``VxmPairwise`` for ``budget_seconds`` of wall time on sampled pairs; save a checkpoint.

    Each step draws ``config.batch_size`` pairs and minimises ``image_weight * -NCC(fixed, moving o phi) +
    grad_weight * |grad v|^2 + dice_weight * (1 - Dice(fixed_seg, moving_seg o phi))`` with Adam (VoxelMorph's losses
    from ``neurite``; ``phi`` = exp(v), the labels warped one-hot and linearly, a soft Dice).

    Args:
        sampler: ``sampler(n, generator, device) -> (fixed, moving, fixed_seg, moving_seg)``, images ``(n, 1, *shape)``
            float in [0, 1], label maps the same shape int64 (e.g. ``rlreg.data.synth.SynthPairs(...).sample``).
        shape: the training grid; each size a multiple of ``config.divisor``.
        budget_seconds: wall time after which no new step starts (the last step may overrun it by one step).
        output: checkpoint path (written atomically; ``torch.load(output, weights_only=True)`` reads it).
        seed: seeds the weights (in a forked RNG, the global state is left alone) and the CPU generator handed
            to ``sampler``.
        device: where the network trains (resolved by the caller; ``"cpu"``, ``"cuda:0"``).
        config: network and losses (default :class:`VoxelMorphConfig`).
        threads: torch/SimpleITK CPU threads during training (default: leave as they are).
        max_steps: also stop after this many steps.
        progress: optional ``progress(step, seconds, loss)`` after each step.

    Returns:
        ``output``. The checkpoint holds ``state_dict``, ``config`` (rebuilds the network alone), ``shape``,
        ``seconds``, ``steps``, ``parameters``, the loss ``curve``, ``seed``, versions and the ``format_version``.
    """
    config = config or VoxelMorphConfig()
    shape = tuple(int(n) for n in shape)
    _check_shape(shape, config)
    if budget_seconds <= 0:
        raise ValueError(f"budget_seconds must be > 0, got {budget_seconds}")
    device = torch.device(device)
    ndim = len(shape)
    context = cpu_threads(threads) if threads is not None else contextlib.nullcontext()
    with context, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _build_voxelmorph(config, ndim).to(device)
        model.train()
        optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
        ncc, gradient, dice = (m.to(device) for m in _voxelmorph_losses(config))
        generator = torch.Generator().manual_seed(seed)
        curve: list[dict[str, float]] = []
        steps, started = 0, time.perf_counter()
        while time.perf_counter() - started < budget_seconds and (max_steps is None or steps < max_steps):
            fixed, moving, fixed_seg, moving_seg = sampler(config.batch_size, generator, device)
            if tuple(fixed.shape[2:]) != shape or tuple(moving.shape[2:]) != shape:
                raise ValueError(f"sampler returned pairs of size {tuple(fixed.shape[2:])}, expected {shape}")
            fixed, moving = fixed.float(), moving.float()
            velocity, disp = _displacement(model, fixed, moving)
            moved = model.spatial_transformer(moving, disp)
            image_term = -ncc(fixed, moved).mean()
            grad_term = gradient(velocity)
            loss = config.image_weight * image_term + config.grad_weight * grad_term
            dice_term = torch.zeros((), device=device)
            if config.dice_weight > 0:
                labels = torch.unique(torch.cat([fixed_seg.flatten(), moving_seg.flatten()]))
                labels = labels[labels != 0]
                if labels.numel():
                    moved_seg = model.spatial_transformer(_one_hot(moving_seg, labels), disp)
                    dice_term = 1 - dice(moved_seg, _one_hot(fixed_seg, labels)).mean()
                    loss = loss + config.dice_weight * dice_term
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            steps += 1
            elapsed = time.perf_counter() - started
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"VoxelMorph training diverged at step {steps} (loss {value})")
            curve.append({"step": steps, "seconds": elapsed, "loss": value, "ncc": -float(image_term.detach()),
                          "grad": float(grad_term.detach()), "dice_loss": float(dice_term.detach())})
            if progress is not None:
                progress(steps, elapsed, value)
        seconds = time.perf_counter() - started
    if len(curve) > 200:  # keep the checkpoint small: about 200 evenly spaced points, the last one included
        keep = sorted(set(np.linspace(0, len(curve) - 1, 200).round().astype(int).tolist()))
        curve = [curve[i] for i in keep]
    checkpoint = {
        "format_version": CHECKPOINT_FORMAT, "kind": "rlreg-peer-voxelmorph",
        "config": json.loads(json.dumps(asdict(config))), "variant": config.variant, "ndim": ndim,
        "shape": list(shape), "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "seconds": seconds, "steps": steps, "parameters": sum(p.numel() for p in model.parameters()),
        "curve": curve, "seed": seed, "device": str(device), "voxelmorph_version": str(_voxelmorph().__version__),
        "torch_version": str(torch.__version__),
    }
    output = Path(output)
    return save_torch(checkpoint, output)


@functools.lru_cache(maxsize=2)
def _load_voxelmorph(path: str, modified_ns: int, device: str) -> tuple[nn.Module, dict[str, Any]]:
    """A checkpoint's network in eval mode on ``device`` (cached: a batch of pairs loads it once)."""
    del modified_ns  # part of the cache key: a rewritten checkpoint is read again
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("kind") != "rlreg-peer-voxelmorph":
        raise InputError(f"{path}: not a VoxelMorph checkpoint written by rlreg (train_voxelmorph)")
    if checkpoint.get("format_version") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: checkpoint format {checkpoint.get('format_version')}, this rlreg reads "
                         f"{CHECKPOINT_FORMAT}; retrain it")
    config = VoxelMorphConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in checkpoint["config"].items()})
    model = _build_voxelmorph(config, int(checkpoint["ndim"]))
    model.load_state_dict(checkpoint["state_dict"])
    model.to(device).eval()
    info = {k: v for k, v in checkpoint.items() if k != "state_dict"}
    info["config_object"] = config
    return model, info


def register_voxelmorph(fixed: Path, moving: Path, out: Path, model: Path, device: torch.device | str = "cpu",
                        threads: int = 1, working_size: tuple[int, ...] | None = None,
                        affine: bool = True,
                        orientation: Sequence[float] | None = None) -> PeerRecord:
    """A trained VoxelMorph network after rlreg's own affine stage, written by rlreg's own writer.

    :func:`rlreg.pipelines.register.prepare` reads the pair, normalises intensities and fits rlreg's affine; the
    network runs on the affinely aligned working images resized (``align_corners=True``) to ``working_size``; its
    voxel field is resized back to the working grid and handed to :func:`rlreg.pipelines.register.finish` as a
    :class:`~rlreg.pipelines.register.Deformable` result. So ``warp.nii.gz`` (and ``warped.nii.gz``,
    ``transform.h5``, ``jacdet.nii.gz``, ``rlreg.json``) are exactly what ``rlreg register`` writes.

    Args:
        fixed, moving: images (any format rlreg reads).
        out: the pair folder.
        model: checkpoint from :func:`train_voxelmorph`.
        device: where the network runs (resolved by the caller).
        threads: torch/SimpleITK CPU threads (affine stage, network on CPU, writing).
        working_size: the network's input grid (default: its training grid); multiples of ``2 ** levels``.
        affine: run rlreg's affine stage first (``False``: the network alone, as trained on pre-aligned pairs).
        orientation: direction cosines (ITK row-major) of the training images: the working grid is permuted and
            flipped to them first (:func:`rlreg.spatial.orientation_axes`), exactly as rlreg's agents are run.

    Returns:
        The record written to ``peer.json`` (times in seconds, memory in GiB).
    """
    from rlreg.models import sha256
    from rlreg.pipelines.register import Deformable, RegisterOptions, RegisterSettings, finish, prepare

    started = time.perf_counter()
    out, model_path = Path(out), Path(model)
    _start(out)
    device = torch.device(device)
    if not model_path.is_file():
        raise InputError(f"{model_path}: VoxelMorph checkpoint not found; train one with train_voxelmorph")
    t0 = time.perf_counter()
    network, info = _load_voxelmorph(str(model_path.resolve()), model_path.stat().st_mtime_ns, str(device))
    seconds = {"setup": time.perf_counter() - t0}
    started += seconds["setup"]
    config: VoxelMorphConfig = info["config_object"]
    size = tuple(int(n) for n in (working_size or info["shape"]))
    _check_shape(size, config)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with cpu_threads(threads):
        options = RegisterOptions(fixed=Path(fixed), moving=Path(moving), output=out,
                                  settings=RegisterSettings(affine=affine, device=str(device), model="none"))
        prepared = prepare(options)
        if prepared.fixed.ndim != len(size):
            raise InputError(f"{fixed}: is {prepared.fixed.ndim}-D but the VoxelMorph model {model_path} is "
                             f"{len(size)}-D")
        seconds.update(read=prepared.seconds["read"], affine=prepared.seconds["affine"])
        rss_before = _peak_rss_gib()
        t0 = time.perf_counter()
        working = tuple(prepared.working_fixed.shape[2:])
        axes = (None if orientation is None
                else orientation_axes(prepared.fixed.geometry.direction, tuple(float(v) for v in orientation)))
        with torch.no_grad():
            fixed_w, moving_w = prepared.working_fixed.to(device), prepared.working_moving.to(device)
            if axes is not None:  # the network's training orientation, as rlreg's agents get it
                fixed_w, moving_w = reorient(fixed_w, *axes), reorient(moving_w, *axes)
            fixed_net = resize(fixed_w, size)
            moving_net = resize(moving_w, size)
            _, disp = _displacement(network, fixed_net, moving_net)
            field = resize_displacement(disp.float(), tuple(fixed_w.shape[2:]))
            field_working = (field if axes is None else reorient_field_back(field, *axes)).cpu()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds["deformable"] = time.perf_counter() - t0
        seconds["registration"] = seconds["affine"] + seconds["deformable"]
        rss_after = _peak_rss_gib()
        method = {"deformable": "voxelmorph", "model": str(model_path), "model_sha256": sha256(model_path),
                  "parameters": int(info["parameters"]), "variant": info["variant"], "network_grid": list(size),
                  "working_grid": list(working), "training_steps": int(info["steps"]),
                  "training_seconds": float(info["seconds"]),
                  "orientation": None if axes is None else {"perm": list(axes[0]), "flips": list(axes[1])}}
        t0 = time.perf_counter()
        report = finish(prepared, Deformable(field_working, [], [], method, seconds["deformable"]))
        seconds["write"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started
    cuda_peak = _gib(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    settings = {**method, "config": info["config"], "affine": report.method.affine,
                "affine_matrix_lps": report.method.affine_matrix_lps, "device": str(device),
                "intensity": "rlreg normalise_intensity: 0.5-99.5 percentiles -> [0, 1]",
                "resize": "working grid <-> network grid, linear, align_corners=True (field vectors rescaled)"}
    record = PeerRecord(method="voxelmorph", tool="voxelmorph", version=str(info["voxelmorph_version"]),
                        fixed=str(fixed), moving=str(moving), seconds=seconds, peak_rss_gib=rss_after,
                        peak_rss_gib_before=rss_before, cuda_peak_gib=cuda_peak, threads=threads,
                        parameters=int(info["parameters"]), settings=settings, outputs=dict(report.outputs),
                        conventions=_conventions(), created=_now())
    record.outputs.pop("report", None)
    record.outputs["rlreg_record"] = str(out / "rlreg.json")
    return _finish_record(out, record)


# ---------------------------------------------------------------------------------------------------- many pairs
_REGISTER: dict[str, Callable[..., PeerRecord]] = {
    "syn": register_syn, "elastix": register_elastix, "greedy": register_greedy, "voxelmorph": register_voxelmorph}


def _write_error(folder: Path, pair: Pair, method: str, error: BaseException) -> str:
    message = str(error) if isinstance(error, InputError) else f"{type(error).__name__}: {error}"
    message = " ".join(message.split()) or type(error).__name__
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PEER_RECORD).unlink(missing_ok=True)
    record = {"pair": pair.id, "method": method, "error": message, "type": type(error).__name__,
              "fixed": str(pair.fixed), "moving": str(pair.moving), "created": _now()}
    with atomic_output(folder / ERROR_RECORD) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    return message


def run_peer(method: str, pairs: list[Pair], output: Path, progress: PeerProgress | None = None,
             **kwargs: Any) -> list[PeerRecord]:
    """Register every pair with one peer into ``output/<pair-id>/``; resumable, one failure fails one pair.

    A pair whose ``peer.json`` is readable is skipped (its record is returned as it is); any other is (re)run, its
    stale temporary files removed first. A pair that raises gets ``error.json`` (the one-line error) and the loop
    goes on; a later call tries it again.

    Args:
        method: ``syn``, ``elastix``, ``greedy`` or ``voxelmorph``.
        pairs: from :func:`rlreg.data.pairs.read_pairs` (only ``fixed`` and ``moving`` are used: the label
            maps are for ``rlreg evaluate PAIRS --fields output``).
        output: the folder of pair folders.
        progress: optional ``progress(finished, total, pair_id, status)``.
        **kwargs: passed to the method's function (:func:`register_syn`, :func:`register_elastix`,
            :func:`register_greedy`, :func:`register_voxelmorph`; the last needs ``model=``).

    Returns:
        The records of the finished pairs (run now or before), in input order; failed pairs have none.
    """
    if method not in _REGISTER:
        raise InputError(f"peer method {method!r}: unknown; choose one of {', '.join(METHODS)}")
    register = _REGISTER[method]
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda *_: None)
    records: list[PeerRecord] = []
    for index, pair in enumerate(pairs, start=1):
        folder = output / pair.id
        record = read_peer_record(folder)
        if record is not None:
            records.append(record)
            say(index, len(pairs), pair.id, "skipped")
            continue
        for stale in folder.glob(".*.tmp*"):  # temporary files a killed run left behind
            stale.unlink(missing_ok=True)
        try:
            records.append(register(pair.fixed, pair.moving, folder, **kwargs))
            status = "done"
        except Exception as err:  # one pair's failure, whatever it is, must not stop the others
            _write_error(folder, pair, method, err)
            status = "failed"
        say(index, len(pairs), pair.id, status)
    return records
