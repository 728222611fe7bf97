"""Stopping register and batch: exit codes, SIGTERM as a clean stop, no worker outliving a killed batch, threads."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch
from phantoms import phantom, rotation, write_pair
from typer.testing import CliRunner

from rlreg.affine import AffineConfig
from rlreg.cli.main import app
from rlreg.pipelines.batch import BatchOptions, default_workers, read_pair_record, run_batch
from rlreg.pipelines.register import RegisterOptions, RegisterSettings
from rlreg.pipelines.signals import Terminated, sigterm_as_interrupt
from rlreg.pipelines.threads import cpu_threads, default_threads, usable_cpus

LINUX_PROC = Path("/proc/self/stat").exists()
STEPS = 10
GOOD = ["d3/fixed.nii.gz", "d3/moving.nii.gz", "d3/fixed_seg.nii.gz", "d3/moving_seg.nii.gz"]
SWAPPED = ["d3/moving.nii.gz", "d3/fixed.nii.gz", "d3/moving_seg.nii.gz", "d3/fixed_seg.nii.gz"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stop_data")
    write_pair(folder / "d3", 3)
    _write_fine_pair(folder / "fine")
    return folder


def _write_fine_pair(folder: Path, scale: float = 4 / 3) -> None:
    """``write_pair``'s 3-D phantoms on grids ``scale`` times finer (40 x 37 x 29 voxels): large enough that torch
    splits the affine fit's sums over two threads (``write_pair``'s grids are not, and give the same affine on any
    thread count), small enough for a few seconds per registration."""
    folder.mkdir(parents=True, exist_ok=True)
    grids = {"fixed": ((30, 28, 22), (1.2, 0.9, 1.5), (17.0, -13.0, -15.0), rotation(3, 0.3, (-1, 1, 1)),
                       (0.0, 0.0, 0.0), (11.0, 9.0, 10.0)),
             "moving": ((30, 30, 24), (1.0, 1.1, 1.3), (-14.0, 17.0, -14.0), rotation(3, -0.2, (1, -1, 1)),
                        (1.5, -1.0, 1.0), (12.0, 8.5, 10.0))}
    for name, (size, spacing, origin, direction, centre, radii) in grids.items():
        image, seg = phantom(tuple(int(n * scale) for n in size), tuple(s / scale for s in spacing), origin,
                             direction, centre, radii)
        sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))
        sitk.WriteImage(seg, str(folder / f"{name}_seg.nii.gz"))


def _pair_list(folder: Path, name: str, rows: list[list[str]]) -> Path:
    """A pair list whose rows get their own ids, so a deliberately repeated pair is registered again, not merged."""
    path = folder / name
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "fixed", "moving", "fixed_seg", "moving_seg"])
        writer.writerows([f"pair{index}", *row] for index, row in enumerate(rows))
    return path


# ---------------------------------------------------------------------------------------------------- /proc helpers
def _stat(pid: int) -> tuple[str, int] | None:
    """``(state, ppid)`` of a process from ``/proc/<pid>/stat``; ``None`` once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[1])


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None and stat[1] == pid:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")  # a zombie has exited (nobody reaped it yet)


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether the process has a handler for ``sig`` (``SigCgt`` of ``/proc/<pid>/status``)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    caught = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(caught >> (sig - 1) & 1)


def _survivors(pids: set[int], within: float) -> set[int]:
    """The processes of ``pids`` still running after ``within`` seconds (polled, so it returns once all are gone)."""
    deadline = time.monotonic() + within
    while True:
        alive = {pid for pid in pids if _alive(pid)}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------------- kill tests
@pytest.mark.skipif(not LINUX_PROC, reason="walks /proc to find the worker processes")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killing_the_batch_pid_leaves_no_worker_and_a_rerun_computes_each_pair_once(
        data: Path, tmp_path: Path, sig: signal.Signals) -> None:
    """``kill PID`` (SIGTERM: Slurm, docker stop) and ``kill -9 PID`` (the OOM killer) of the main process only: its
    spawn workers and multiprocessing's resource tracker are gone within seconds, no pair is finished after the
    kill, and a re-run finishes each remaining pair once, leaving the finished ones untouched."""
    pairs_csv = _pair_list(data, f"kill-{sig.name}.csv", [GOOD, SWAPPED] * 2)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "rlreg.cli.main", "batch", str(pairs_csv), "-o", str(out), "--steps",
               str(STEPS), "--no-affine", "--workers", "2", "--device", "cpu", "--quiet"]
    log = tmp_path / "stderr.txt"  # a file, not a pipe: surviving workers would hold a pipe open for ever
    with log.open("wb") as stderr_file:
        process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr_file)
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 180
        while process.poll() is None and time.monotonic() < deadline:
            children |= _children(process.pid)
            if any(out.glob("*/rlreg.json")):  # a pair done, the other worker in the middle of one
                break
            time.sleep(0.05)
        children |= _children(process.pid)
        assert process.poll() is None, f"the batch ended before it could be killed: {log.read_text()!r}"
        os.kill(process.pid, sig)  # the main process only, as `kill PID` does
        code = process.wait(timeout=60)
        survivors = _survivors(children, within=10.0)
    finally:
        if process.poll() is None:
            process.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever survived, so a failure leaves nothing running
    stderr = log.read_text()
    assert len(children) >= 3, f"expected 2 workers and the resource tracker, found {sorted(children)}"
    assert not survivors, f"processes outlived the killed batch: {sorted(survivors)}"
    if sig == signal.SIGTERM:
        assert code == 143, stderr
        assert "interrupted; re-run the same command to resume" in stderr
        assert "Traceback" not in stderr
    else:
        assert code == -signal.SIGKILL

    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/rlreg.json")}
    assert 1 <= len(finished) < 4
    settings = RegisterSettings(steps=STEPS, affine=False)  # as the killed command
    result = run_batch(BatchOptions(str(pairs_csv), out, settings, workers=0))
    assert (result.skipped, result.done, result.failed) == (len(finished), 4 - len(finished), [])
    assert {name: (out / name / "rlreg.json").stat().st_mtime_ns for name in finished} == finished
    ids = [json.loads(line)["pair"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted({*ids}) and len(ids) == 4  # one line per pair: none computed twice
    assert all(read_pair_record(out / pair_id).status == "done" for pair_id in ids)
    assert not list(out.glob("*/.*.tmp*"))


@pytest.mark.skipif(not LINUX_PROC, reason="reads /proc")
def test_sigterm_stops_register_cleanly_with_143(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "rlreg.cli.main", "register", str(data / "d3" / "fixed.nii.gz"),
               str(data / "d3" / "moving.nii.gz"), "-o", str(out), "--model", "none", "--steps", "100000",
               "--device", "cpu", "--quiet"]
    log = tmp_path / "stderr.txt"
    with log.open("wb") as stderr_file:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr_file)
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline and not _catches(process.pid, signal.SIGTERM):
            time.sleep(0.05)
        time.sleep(0.5)  # into the registration proper
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = log.read_text()
    assert code == 143, stderr
    assert "interrupted;" in stderr and "Traceback" not in stderr
    assert not (out / "rlreg.json").exists()


# ---------------------------------------------------------------------------------------------------- exit codes
@pytest.mark.parametrize("stop, code", [(KeyboardInterrupt(), 130), (Terminated("signal SIGTERM"), 143)],
                         ids=["sigint", "sigterm"])
@pytest.mark.parametrize("command", ["register", "batch"])
def test_interrupts_exit_130_or_143_not_the_bad_input_code(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                           command: str, stop: BaseException, code: int) -> None:
    def interrupted(*_args, **_kwargs):
        raise stop

    monkeypatch.setattr(f"rlreg.pipelines.{command}.{'register' if command == 'register' else 'run_batch'}",
                        interrupted)
    args = (["register", "f.nii.gz", "m.nii.gz"] if command == "register" else ["batch", "pairs.csv"])
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == code, result.output
    assert "error: interrupted; " in result.output
    if command == "register":  # nothing was written: the message must not claim a folder that does not exist
        assert "nothing was written" in result.output
        (tmp_path / "out").mkdir()
        result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "out"), "--device", "cpu"])
        assert result.exit_code == code and "holds only complete files" in result.output


def test_sigterm_inside_the_block_raises_terminated_and_the_handler_is_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs at the next bytecode
    assert signal.getsignal(signal.SIGTERM) is before
    outcome: list[str] = []

    def in_a_thread() -> None:  # no handler can be set outside the main thread: the block just runs
        with sigterm_as_interrupt():
            outcome.append("ran")

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert outcome == ["ran"] and signal.getsignal(signal.SIGTERM) is before


# ---------------------------------------------------------------------------------------------------- threads
def test_threads_option_sets_the_registration_threads_and_the_default_follows_omp(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert 1 <= default_threads() <= usable_cpus()
    monkeypatch.setattr("rlreg.pipelines.threads.usable_cpus", lambda: 2)
    assert default_threads() == 1  # a 2-CPU machine: one thread, room for one busy neighbour
    monkeypatch.setattr("rlreg.pipelines.threads.usable_cpus", lambda: 64)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert default_threads() == 8  # never more than torch's own default (the physical cores)
    monkeypatch.undo()
    assert default_workers("cpu", threads=usable_cpus()) == 1
    d3 = data / "d3"
    args = ["register", str(d3 / "fixed.nii.gz"), str(d3 / "moving.nii.gz"), "--steps", "4", "--device", "cpu",
            "--json"]
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "one"), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["method"]["cpu_threads"] == 1
    assert torch.get_num_threads() == before  # the process's setting is left as it was
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "zero"), "--threads", "0"])
    assert result.exit_code == 2 and "--threads" in result.output


def test_register_and_batch_workers_give_the_same_affine_and_qc(data: Path, tmp_path: Path) -> None:
    """The same pair through ``register()`` (this process) and ``run_batch`` (spawned worker processes, one thread
    each): the affine stage runs on one thread in both, so the affine matrix is bit-identical whatever ``threads``
    register runs with; with equal ``threads`` every QC number is too; with 2 threads the QC numbers differ only by
    float32 rounding (stated tolerances: 2e-3, and 0.05 for the Jacobian's extremes, docs/register.md "Threads")."""
    fine = data / "fine"
    row = ["fine/fixed.nii.gz", "fine/moving.nii.gz", "fine/fixed_seg.nii.gz", "fine/moving_seg.nii.gz"]
    pairs_csv = _pair_list(data, "same.csv", [row, row])
    affine = AffineConfig(steps=(40, 20))  # fewer Adam steps than the default: seconds, not tens of seconds
    batch = run_batch(BatchOptions(str(pairs_csv), tmp_path / "batch",
                                   RegisterSettings(steps=STEPS, affine_config=affine), workers=1))
    assert batch.done == 2
    from_batch = json.loads((tmp_path / "batch" / "pair0" / "rlreg.json").read_text())
    assert from_batch["method"]["cpu_threads"] == 1
    from rlreg.pipelines.register import register

    def alone(threads: int) -> dict:
        options = RegisterOptions(fine / "fixed.nii.gz", fine / "moving.nii.gz", tmp_path / f"t{threads}",
                                  fine / "fixed_seg.nii.gz", fine / "moving_seg.nii.gz",
                                  settings=RegisterSettings(steps=STEPS, threads=threads, affine_config=affine))
        return json.loads(json.dumps(register(options).to_json(), default=str))

    same = alone(1)
    assert same["method"]["affine_matrix_lps"] == from_batch["method"]["affine_matrix_lps"]
    assert same["qc"] == from_batch["qc"]
    other = alone(2)
    assert other["method"]["cpu_threads"] == 2
    assert other["method"]["affine_matrix_lps"] == from_batch["method"]["affine_matrix_lps"]
    assert other["qc"].keys() == from_batch["qc"].keys()
    for key, value in from_batch["qc"].items():  # a Jacobian extreme is one voxel's value: looser
        assert other["qc"][key] == pytest.approx(value, abs=0.05 if key.startswith("jacobian") else 2e-3), key
