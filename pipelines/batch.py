"""Register many pairs: ``rlreg batch INPUT -o OUTDIR``, resumable, shardable, on one machine or a Ray cluster.

Each pair goes through the three stages of :mod:`rlreg.pipelines.register`:

* ``prepare`` (read, decode, normalise, affine) and ``finish`` (resample, QC, write) run in **worker processes**, so
  disk and decoding overlap with the device;
* ``deform`` runs in the main process on the device, **batched** over pairs whose working grids (and settings)
  agree; the model is loaded once (cached per device).

Nothing is lost when the batch is killed: every file is written atomically, and a pair counts as done only once
its ``rlreg.json`` (written last) exists, so a re-run skips finished pairs and redoes half-finished ones. A failing
pair leaves ``<pair-id>/error.json`` and the batch goes on; a re-run tries it again.

Batch files: ``batch.json`` (input, settings, every pair), ``metrics.jsonl`` (one line per pair, appended as pairs
end, rewritten in input order at the end of a run) and ``summary.csv`` (one row per pair, then mean, sd, median).
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from itertools import chain
from pathlib import Path
from typing import Any

import torch

from rlreg import __version__, models
from rlreg.affine import AffineConfig
from rlreg.data.pairs import Pair, read_pairs, shard
from rlreg.instance import InstanceConfig
from rlreg.io import InputError, atomic_output, read_image
from rlreg.pipelines.memory import keep_freed_memory, memory_kept, release_freed_memory
from rlreg.pipelines.register import ERROR_RECORD, SIDECAR, RegisterOptions, RegisterSettings, remove_temporary_files
from rlreg.pipelines.register.outputs import PairRecord, read_pair_record
from rlreg.pipelines.register.preparation import read_companion
from rlreg.pipelines.signals import die_with_parent
from rlreg.pipelines.threads import cpu_threads, default_threads, usable_cpus

__all__ = ["BATCH_RECORD", "QC_KEYS", "STAGES", "BatchOptions", "BatchResult", "PairRecord", "pair_status",
           "read_pair_record", "run_batch"]

BATCH_RECORD = "batch.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.csv"
QC_KEYS = ("dice_before", "dice_affine", "dice_after", "lncc_before", "lncc_affine", "lncc_after", "folding_percent",
           "sdlogj", "jacobian_min", "jacobian_max")
STAGES = ("read", "affine", "deformable", "write")
ENGINES = ("local", "ray")
PairProgress = Callable[[int, int, str, str], None]
"""``progress(finished, total, pair_id, status)`` after each pair of this run."""


def default_workers(device: str, threads: int = 1) -> int:
    """Worker processes: on CPU one per ``threads`` usable cores (each runs whole pairs on ``threads`` threads);
    with a GPU, one core is left to the main process, which runs the device loop. Usable cores are those of the
    process's affinity and CPU quota (:func:`rlreg.pipelines.threads.usable_cpus`), not the machine's."""
    cores = usable_cpus()
    return max(1, cores // threads if device == "cpu" else min(8, cores - 1))


@dataclass
class BatchOptions:
    """What ``rlreg batch`` was asked to do."""

    source: str
    """A CSV/TSV pair list, a Learn2Reg dataset.json, or (with ``atlas``) the subjects: a folder, a glob, or a CSV/TSV
    with one image a row (:func:`rlreg.data.pairs.read_pairs`)."""
    output: Path
    settings: RegisterSettings = field(default_factory=RegisterSettings)
    """How every pair is registered."""
    atlas: Path | None = None
    """Atlas label propagation: the moving image of every pair, registered to each subject of ``source`` (fixed)."""
    atlas_seg: Path | None = None
    """The atlas' label map, on the atlas' grid: warped onto each subject's grid
    (``<subject-id>/warped_seg.nii.gz``)."""
    subset: str | None = None
    shard: str | None = None
    """``i/N``: run every N-th pair starting at the i-th (0-based)."""
    workers: int | None = None
    """Worker processes (default :func:`default_workers`); 0 runs everything in this process, one pair at a time."""
    batch_size: int = 4
    """Pairs per device batch, when their working grids agree."""
    device_loop: bool | None = None
    """Workers prepare and finish pairs while this process runs device batches (``None``: on for a GPU). Off, each
    worker registers whole pairs (the better layout on CPU)."""
    engine: str = "local"
    address: str | None = None
    """Ray cluster address (``auto``, ``HOST:PORT``); ``None`` starts a local Ray instance."""
    ray_cpus: int | None = None
    """CPUs of a local Ray instance (default: all)."""

    def __post_init__(self) -> None:
        """Range-check the numeric settings (one-line :class:`InputError`); the per-pair ones are checked by
        :class:`RegisterSettings`."""
        for name, value, lowest in (("--batch-size", self.batch_size, 1), ("--workers", self.workers, 0),
                                    ("ray_cpus", self.ray_cpus, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < lowest):
                raise InputError(f"{name} {value}: must be a whole number >= {lowest}")


@dataclass
class BatchResult:
    """How a run went (also printed by ``rlreg batch --json``)."""

    output: str
    total: int
    """Pairs in this shard."""
    skipped: int
    """Already finished before this run."""
    done: int
    """Finished by this run."""
    failed: list[dict[str, str]]
    """``{"pair", "error"}`` of every pair that failed in this run."""
    seconds: float
    pairs_per_hour: float
    stage_seconds: dict[str, float]
    """Sum over this run's finished pairs of each stage's seconds (read, affine, deformable, write)."""
    files: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    """One line each about the pair list (e.g. repeated rows, registered once); the CLI prints them on stderr."""


# ---------------------------------------------------------------------------------------------------- records
def pair_status(outdir: Path, pair_id: str) -> str:
    """``done``, ``failed``, ``unfinished`` or ``todo``: see :class:`PairRecord`."""
    return read_pair_record(outdir / pair_id).status


def _metrics_row(outdir: Path, pair: Pair) -> dict[str, Any]:
    state = read_pair_record(outdir / pair.id)
    row: dict[str, Any] = {"pair": pair.id, "status": state.status, "fixed": str(pair.fixed),
                           "moving": str(pair.moving), "error": state.message, "seconds_total": None,
                           "warnings": []}
    row.update({f"seconds_{k}": None for k in STAGES})
    row.update({k: None for k in QC_KEYS})
    if state.record is not None:
        seconds, qc = state.record.get("seconds", {}), state.record.get("qc", {})
        row["seconds_total"] = seconds.get("total")
        row.update({f"seconds_{k}": seconds.get(k) for k in STAGES})
        row.update({k: qc.get(k) for k in QC_KEYS})
        row["warnings"] = list(state.record.get("warnings", []))
    return row


def _write_error(outdir: Path, pair: Pair, error: BaseException | str) -> str:
    message = str(error) if isinstance(error, InputError) else (
        f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error)
    message = " ".join(message.split()) or "unknown error"
    folder = outdir / pair.id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SIDECAR).unlink(missing_ok=True)
    record = {"pair": pair.id, "error": message,
              "type": type(error).__name__ if isinstance(error, BaseException) else "Error",
              "fixed": str(pair.fixed), "moving": str(pair.moving),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with atomic_output(folder / ERROR_RECORD) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    return message


def _settings_record(settings: RegisterSettings) -> dict[str, Any]:
    """The settings that change results (the device does not), as saved in ``batch.json``.

    ``models_used`` is what ``model`` resolves to for 2-D and 3-D pairs (name and checksum, or the instance
    optimisation): a default model shipped or re-shipped since the run started changes the results too.
    """
    keep = ("model", "steps", "refine", "refine_factor", "affine", "formats", "save_inverse", "save_steps",
            "instance", "smoothness", "bending", "diffeomorphic", "affine_config", "max_working_voxels")
    data = asdict(settings)
    record = {k: data[k] for k in keep}
    # The DICOM object's body part and laterality: recorded only when given, so runs from before they existed resume.
    record |= {k: data[k] for k in ("body_part", "laterality") if data.get(k) is not None}
    # What the instance optimisation resolves to for 2-D and 3-D pairs: a tuned default changed since the run
    # started changes the results too.
    record["instances_used"] = {f"{ndim}-D": asdict(settings.instance_for(ndim)) for ndim in (2, 3)}
    cards = models.available()
    used = {f"{ndim}-D": models.resolve(settings.model, ndim) for ndim in (2, 3)}
    record["models_used"] = {key: "instance-optimisation" if name is None else
                             f"{name} sha256:{cards[name]['sha256']}" if name in cards else name
                             for key, name in used.items()}
    return json.loads(json.dumps(record, default=str))


def _with_new_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored settings record with options added to rlreg since it was written filled in at their defaults.

    A run started by an older rlreg then resumes as long as each new option has the value that reproduces the old
    behaviour: its dataclass default (e.g. ``gradient_sigma`` 0, no gradient smoothing), not the tuned default
    ``rlreg register`` now uses, so a run of the old defaults is refused rather than silently continued with new
    ones. (``AffineConfig.max_voxels`` is the exception: it changes nothing below 200,000 voxels at the finest
    affine level, i.e. on 2 mm brains.) Only options inside the nested configs (``instance``, ``affine_config``)
    are filled (at any depth, e.g. ``instances_used``'s per-dimensionality configs): a missing top-level entry such as
    ``models_used`` cannot be assumed and still refuses the resume.
    """
    defaults = _settings_record(RegisterSettings(instance=InstanceConfig(), affine_config=AffineConfig()))
    def fill(record: dict[str, Any], default: dict[str, Any], top: bool) -> dict[str, Any]:
        out = dict(record) if top else {**{k: v for k, v in default.items() if k not in record}, **record}
        for key, value in default.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = fill(out[key], value, False)
        return out

    return fill(stored, defaults, True)


def _write_batch_record(options: BatchOptions, pairs: list[Pair]) -> Path:
    path = options.output / BATCH_RECORD
    settings = _settings_record(options.settings)
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            previous = {}
        if previous.get("settings") is not None:
            previous["settings"] = _with_new_defaults(previous["settings"])
        atlas = _atlas_record(options)
        if previous.get("pairs") is not None and _atlas_record(previous) != atlas:
            raise InputError(f"{options.output}: holds a batch run with another atlas ({previous.get('atlas')}, "
                             f"labels {previous.get('atlas_seg')}); resume it with the same --atlas and --atlas-seg "
                             "or choose a new -o")
        if previous.get("settings") not in (None, settings):
            changed = sorted(k for k in settings if previous["settings"].get(k) != settings[k])
            raise InputError(f"{options.output}: holds a batch run with other settings ({', '.join(changed)}); "
                             "resume it with the same options or choose a new -o")
    record = {"tool": "rlreg", "version": __version__,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "input": str(options.source),
              **_atlas_record(options), "subset": options.subset,
              "settings": settings, "pairs": [p.to_json() for p in pairs]}
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    return path


def _atlas_record(source: BatchOptions | dict[str, Any]) -> dict[str, str | None]:
    """``batch.json``'s ``atlas`` and ``atlas_seg``: absolute paths, or ``None``. A run recorded before atlas mode
    made the atlas the moving image (its pairs' fixed image is the atlas) reads as another atlas, so it is never
    resumed the other way round."""
    if isinstance(source, BatchOptions):
        return {key: None if path is None else str(path.expanduser().resolve())
                for key, path in (("atlas", source.atlas), ("atlas_seg", source.atlas_seg))}
    atlas, seg = source.get("atlas"), source.get("atlas_seg")
    pairs = source.get("pairs") or []
    if atlas is not None and any(isinstance(pair, dict) and pair.get("fixed") == atlas for pair in pairs):
        return {"atlas": f"{atlas} as the fixed image", "atlas_seg": seg}
    return {"atlas": atlas, "atlas_seg": seg}


def _check_atlas(options: BatchOptions) -> None:
    """Refuse an atlas whose label map is not on its grid, or holds non-integer values, before anything is written.

    Raises:
        InputError: one line naming the file and the fix (an unreadable atlas too).
    """
    if options.atlas is None or options.atlas_seg is None:
        return
    atlas = read_image(options.atlas.expanduser())
    read_companion(options.atlas_seg.expanduser(), atlas, role="segmentation", dtype=torch.int64)


def _write_tables(outdir: Path, pairs: list[Pair]) -> tuple[Path, Path]:
    """Rewrite ``metrics.jsonl`` and ``summary.csv`` from the pair records, in input order."""
    rows = [row for row in (_metrics_row(outdir, p) for p in pairs) if row["status"] in ("done", "failed")]
    with atomic_output(outdir / METRICS) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    columns = ["pair", "status", *QC_KEYS, "seconds_total", *[f"seconds_{k}" for k in STAGES], "fixed", "moving",
               "error"]
    with atomic_output(outdir / SUMMARY) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in columns})
        numeric = [k for k in columns if k not in ("pair", "status", "fixed", "moving", "error")]
        done = [r for r in rows if r["status"] == "done"]
        for name, reduce in (("mean", statistics.fmean), ("sd", statistics.stdev), ("median", statistics.median)):
            out: dict[str, Any] = {"pair": name, "status": f"n={len(done)}"}
            for key in numeric:
                values = [float(r[key]) for r in done if r.get(key) is not None and math.isfinite(float(r[key]))]
                out[key] = _cell(reduce(values)) if len(values) >= (2 if name == "sd" else 1) else ""
            writer.writerow(out)
    return outdir / METRICS, outdir / SUMMARY


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


def _append_metrics(outdir: Path, row: dict[str, Any]) -> None:
    with (outdir / METRICS).open("a") as handle:
        handle.write(json.dumps(row) + "\n")  # one write of one line: a kill never leaves half a record
        handle.flush()


# ---------------------------------------------------------------------------------------------------- engines
def _pair_options(settings: RegisterSettings, pair: Pair, outdir: Path) -> RegisterOptions:
    return RegisterOptions(fixed=pair.fixed, moving=pair.moving, output=outdir / pair.id, fixed_seg=pair.fixed_seg,
                           moving_seg=pair.moving_seg, fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask,
                           settings=settings)


def _missing_file(pair: Pair, options: BatchOptions) -> InputError | None:
    """A file of ``pair`` that does not exist, as the pair's error: checked here, where the list is known, so the
    message names the folder its relative paths were taken from."""
    for key in ("fixed", "moving", "fixed_seg", "moving_seg", "fixed_mask", "moving_mask"):
        path = getattr(pair, key)
        if path is not None and not path.exists():
            source = Path(options.source).expanduser()
            if options.atlas is not None and not source.is_file():
                base = f"relative paths are taken from {Path.cwd()}"
            else:
                base = f"relative paths in {source.name} are taken from its folder, {source.parent.resolve()}"
            return InputError(f"{path}: file not found; check the path ({base})")
    return None


def _init_worker(keep_memory: bool = False, threads: int = 1, parent: tuple[int, bool] | None = None) -> None:
    """Set up a worker process: ``threads`` torch and SimpleITK threads (default one: the processes are the
    parallelism). ``keep_memory``: the allocator setting of the command that started the batch
    (:func:`rlreg.pipelines.memory.keep_freed_memory`), which spawned workers do not inherit. ``parent``: the pid of
    the process that started this one and whether its main thread did; the worker then dies with it
    (:func:`rlreg.pipelines.signals.die_with_parent`) instead of registering on, orphaned."""
    if parent is not None:
        die_with_parent(*parent)
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    if keep_memory:
        keep_freed_memory()


def _prepare_job(options: RegisterOptions):
    from rlreg.pipelines.register import prepare

    return prepare(options)


def _finish_job(prepared, result) -> None:
    from rlreg.pipelines.register import finish

    finish(prepared, result)


def _register_job(options: RegisterOptions) -> None:
    """One pair end to end in one process (the engine with no workers, and each Ray task)."""
    from rlreg.pipelines.register import deform, finish, prepare

    prepared = prepare(options)
    finish(prepared, deform([prepared], options.settings.device)[0])
    release_freed_memory()  # what this pair freed goes back to the system before the next pair


Outcome = tuple[Pair, BaseException | None]
"""A pair and the error it failed with (``None``: done)."""


def _run_inline(todo: list[Pair], options: BatchOptions) -> Generator[Outcome, None, None]:
    for pair in todo:
        try:
            with cpu_threads(options.settings.threads):
                _register_job(_pair_options(options.settings, pair, options.output))
            yield pair, None
        except Exception as err:
            yield pair, err


def _workers(options: BatchOptions) -> int:
    """``options.workers``, which :func:`run_batch` resolves before any engine runs.

    Raises:
        ValueError: it is still ``None`` (the default, to be resolved).
    """
    if options.workers is None:
        raise ValueError("BatchOptions.workers is unresolved; run_batch() sets it before the engines run")
    return options.workers


def _settle(future: Future) -> tuple[Any, BaseException | None]:
    """A finished job's ``(value, None)`` or ``(None, error)``; a dead worker pool is raised, not returned."""
    try:
        return future.result(), None
    except BrokenProcessPool:
        raise
    except Exception as err:
        return None, err


def _worker_pool(options: BatchOptions) -> ProcessPoolExecutor:
    """``options.workers`` spawned worker processes, each on ``options.settings.threads`` threads and bound to die
    with this process. Spawn, not fork: forking after torch has started threads can deadlock."""
    parent = (os.getpid(), threading.current_thread() is threading.main_thread())
    return ProcessPoolExecutor(options.workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker,
                               initargs=(memory_kept(), options.settings.threads or 1, parent))


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Stop now (Ctrl-C, SIGTERM): cancel the jobs not started and terminate the workers, whose pairs stay
    unfinished (no ``rlreg.json``) and are redone by a re-run, instead of waiting for them to finish."""
    processes = list((pool._processes or {}).values())  # no public handle on the workers before Python 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)


def _run_pairs_in_workers(todo: list[Pair], options: BatchOptions) -> Generator[Outcome, None, None]:
    """CPU: each worker process registers whole pairs, one thread each by default (pairs in parallel beat threads
    within a pair and the device-loop layout on CPU: docs/batch.md, docs/benchmarks.md)."""
    queue = deque(todo)
    workers = _workers(options)
    while queue:
        pool = _worker_pool(options)
        running: dict[Future, Pair] = {}
        try:
            while queue or running:
                while queue and len(running) < 2 * workers:
                    pair = queue.popleft()
                    running[pool.submit(_register_job, _pair_options(options.settings, pair, options.output))] = pair
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield running.pop(future), _settle(future)[1]
        except BrokenProcessPool:
            for pair in running.values():
                yield pair, RuntimeError(WORKER_DIED)
        except BaseException:  # interrupted, or the consumer stopped early (GeneratorExit)
            _stop_workers(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


WORKER_DIED = ("a worker process died while handling this pair (out of memory?); re-run the batch to retry it, with "
               "fewer --workers if memory is short")


def _run_local(todo: list[Pair], options: BatchOptions) -> Generator[Outcome, None, None]:
    """Worker processes prepare and finish pairs while this process runs ``deform`` batches on the device."""
    from rlreg.pipelines.register import deform

    if not (options.device_loop if options.device_loop is not None else options.settings.device != "cpu"):
        yield from _run_pairs_in_workers(todo, options)
        return

    queue = deque(todo)
    workers = _workers(options)
    prefetch = workers + options.batch_size
    max_finishing = 2 * workers
    while queue:
        pool = _worker_pool(options)
        preparing: dict[Future, Pair] = {}
        finishing: dict[Future, Pair] = {}
        ready: dict[Any, list[tuple[Pair, Any]]] = {}
        try:
            while queue or preparing or finishing or ready:
                waiting = sum(len(group) for group in ready.values())
                while queue and len(preparing) + waiting < prefetch:
                    pair = queue.popleft()
                    preparing[pool.submit(_prepare_job, _pair_options(options.settings, pair, options.output))] = pair
                full = [key for key, group in ready.items() if len(group) >= options.batch_size]
                if ready and len(finishing) < max_finishing and (full or not preparing):
                    key = full[0] if full else max(ready, key=lambda k: len(ready[k]))
                    group = ready.pop(key)[: options.batch_size]
                    try:
                        results = deform([prepared for _, prepared in group], options.settings.device)
                    except Exception as err:
                        for pair, _ in group:
                            yield pair, err
                        continue
                    for (pair, prepared), result in zip(group, results, strict=True):
                        finishing[pool.submit(_finish_job, prepared, result)] = pair
                    continue
                if not preparing and not finishing:
                    continue
                finished, _ = wait([*preparing, *finishing], return_when=FIRST_COMPLETED)
                for future in finished:
                    if future in preparing:
                        pair = preparing.pop(future)
                        prepared, error = _settle(future)
                        if error is None:
                            ready.setdefault(prepared.batch_key, []).append((pair, prepared))
                        else:
                            yield pair, error
                    else:
                        yield finishing.pop(future), _settle(future)[1]
        except BrokenProcessPool:
            # A worker died (killed, out of memory): fail the pairs it could have been holding, carry on.
            lost = [*preparing.values(), *finishing.values()]
            for pair in lost:
                yield pair, RuntimeError(WORKER_DIED)
            for group in ready.values():
                queue.extendleft(pair for pair, _ in reversed(group))
        except BaseException:  # interrupted, or the consumer stopped early (GeneratorExit)
            _stop_workers(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _run_ray(todo: list[Pair], options: BatchOptions) -> Generator[Outcome, None, None]:
    """One Ray task per pair (``num_gpus=1`` on CUDA, else ``num_cpus=1``), results written by the tasks."""
    try:
        import ray
    except ImportError:
        raise InputError("--engine ray: Ray is not installed; pip install 'rlreg[distributed]' (or use the "
                         "default --engine local)") from None
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if options.address:
            kwargs["address"] = options.address
        else:
            kwargs.update(num_cpus=options.ray_cpus, num_gpus=0 if options.settings.device == "cpu" else None)
        ray.init(**kwargs)
    try:
        on_gpu = options.settings.device.startswith("cuda")
        task = ray.remote(num_gpus=1 if on_gpu else 0, num_cpus=options.settings.threads or 1,
                          max_retries=0)(_ray_pair)
        pending = {task.remote(_pair_options(options.settings, pair, options.output)): pair for pair in todo}
        while pending:
            finished, _ = ray.wait(list(pending), num_returns=1)
            for ref in finished:
                pair = pending.pop(ref)
                try:
                    error = ray.get(ref)
                except Exception as err:
                    error = f"the Ray task failed: {type(err).__name__}: {err}"
                yield pair, None if error is None else (error if isinstance(error, BaseException) else
                                                        RuntimeError(error))
    finally:
        if started_here:
            ray.shutdown()


def _ray_pair(options: RegisterOptions) -> BaseException | None:
    """Ray task body: register one pair; return its error instead of raising (so its message arrives intact)."""
    _init_worker(threads=options.settings.threads or 1)
    try:
        _register_job(options)
        return None
    except Exception as err:
        return err if isinstance(err, InputError) else RuntimeError(f"{type(err).__name__}: {err}")


# ---------------------------------------------------------------------------------------------------- the batch
def run_batch(options: BatchOptions, progress: PairProgress | None = None) -> BatchResult:
    """Register every pair of ``options.source`` (of this shard) that is not finished yet.

    Raises:
        InputError: the pair list, the options or the output folder are unusable (nothing is run).
    """
    say = progress or (lambda *_: None)
    if options.engine not in ENGINES:
        raise InputError(f"--engine {options.engine}: unknown; choose local or ray")
    # replace() re-runs both option classes' range checks (--threads among them), also on fields assigned after
    # construction
    workers = (default_workers(options.settings.device, options.settings.threads or 1) if options.workers is None
               else options.workers)
    options = replace(options, settings=replace(options.settings), workers=workers)
    if options.settings.threads is None:  # one per worker; a whole machine's share when this process runs the pairs
        threads = 1 if workers > 0 or options.engine == "ray" else default_threads()
        options = replace(options, settings=replace(options.settings, threads=threads))
    started = time.perf_counter()
    list_warnings: list[str] = []
    pairs = read_pairs(options.source, options.atlas, options.atlas_seg, options.subset, list_warnings)
    _check_atlas(options)
    mine = shard(pairs, options.shard)
    out = options.output
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory; give a new or existing batch directory with -o")
    if out.exists() and any(out.iterdir()) and not (out / BATCH_RECORD).exists():
        raise InputError(f"{out}: is not empty and holds no {BATCH_RECORD}; choose a new or empty directory with -o")
    out.mkdir(parents=True, exist_ok=True)
    _write_batch_record(options, pairs)
    _write_tables(out, pairs)

    todo = [p for p in mine if pair_status(out, p.id) != "done"]
    for pair in todo:  # temporary files a killed run left behind (never renamed into place)
        remove_temporary_files(out / pair.id)
    skipped = len(mine) - len(todo)
    missing = {pair.id: problem for pair in todo if (problem := _missing_file(pair, options)) is not None}
    runnable = [pair for pair in todo if pair.id not in missing]
    engine = (_run_ray if options.engine == "ray" else
              _run_local if workers > 0 and len(runnable) > 1 else _run_inline)
    done, failed = 0, []
    stage_seconds = dict.fromkeys(STAGES, 0.0)
    engine_outcomes = engine(runnable, options)
    outcomes = chain(((pair, missing[pair.id]) for pair in todo if pair.id in missing), engine_outcomes)
    try:  # closed at once on an interrupt between two outcomes: the workers stop now, not at garbage collection
        for index, (pair, error) in enumerate(outcomes, start=1):
            row = _metrics_row(out, pair)
            if error is None and row["status"] == "done":
                done += 1
                for stage in STAGES:
                    stage_seconds[stage] += float(row[f"seconds_{stage}"] or 0.0)
            else:
                message = _write_error(out, pair, error or "the registration ended without its record")
                failed.append({"pair": pair.id, "error": message})
                row = _metrics_row(out, pair)
            _append_metrics(out, row)
            say(index, len(todo), pair.id, row["status"])
    finally:
        engine_outcomes.close()
    metrics, summary = _write_tables(out, pairs)
    seconds = time.perf_counter() - started
    return BatchResult(output=str(out), total=len(mine), skipped=skipped, done=done, failed=failed,
                       seconds=seconds, pairs_per_hour=3600.0 * done / seconds if done else 0.0,
                       stage_seconds=stage_seconds,
                       files={"batch": str(out / BATCH_RECORD), "metrics": str(metrics), "summary": str(summary)},
                       warnings=list_warnings)
