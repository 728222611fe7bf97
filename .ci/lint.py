"""``make lint``: ruff, the import contracts (import-linter) and the type checker (mypy), in that order.

The installed package maps import names to source folders (``[tool.setuptools] package-dir`` in pyproject.toml:
``rlreg.cli`` is ``cli/``, ``rlreg.pipelines`` is ``pipelines/``). An editable install serves that mapping through an
import hook, which neither mypy nor import-linter's graph builder (grimp) follows. So both run on a throw-away tree laid
out by import name: real folders, one symlink per source file, built from package-dir in a temporary folder. Their
reports are rewritten back to the repository's paths. Both read their settings from pyproject.toml
(``[tool.mypy]``, ``[tool.importlinter]``).

Usage: ``python .ci/lint.py`` from any folder, with the Python of the project's environment (its ``bin`` folder holds
ruff, lint-imports and mypy). Exits non-zero when any of the three fails; all three always run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: mypy's own dependency provides the same parser
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SOURCE_SUFFIXES = (".py", ".pyi")


def package_folders(pyproject: Path) -> dict[str, Path]:
    """Import name -> source folder, from ``[tool.setuptools] package-dir``; a listed top-level package that is not
    mapped there lives in the folder of its own name. Subpackages come with their parent's folder."""
    setuptools = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]
    mapping = {name: ROOT / folder for name, folder in setuptools.get("package-dir", {}).items() if name}
    for name in setuptools.get("packages", []):
        if not any(name == mapped or name.startswith(f"{mapped}.") for mapped in mapping):
            mapping[name.split(".")[0]] = ROOT / name.split(".")[0]
    return mapping


def build_tree(tree: Path, mapping: dict[str, Path]) -> dict[str, str]:
    """Mirror every source file under ``tree`` at its import path; return tree path -> repository path (relative)."""
    mirrored: dict[str, str] = {}
    for name, folder in sorted(mapping.items()):
        nested = [other for other in mapping.values() if other != folder and folder in other.parents]
        for source in sorted(folder.rglob("*")):
            if source.suffix not in SOURCE_SUFFIXES and source.name != "py.typed":
                continue
            if "__pycache__" in source.parts or any(source.is_relative_to(other) for other in nested):
                continue
            relative = Path(*name.split(".")) / source.relative_to(folder)
            if str(relative) in mirrored:
                continue
            target = tree / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)
            mirrored[str(relative)] = str(source.relative_to(ROOT))
    return mirrored


def run(step: str, command: list[str], cwd: Path, mirrored: dict[str, str] | None = None) -> int:
    """Run one checker, print its report (tree paths turned back into repository paths) and return its exit code."""
    print(f"== {step}: {' '.join(command[:1] + command[1:3])} ...", flush=True)
    env = {**os.environ, "PYTHONPATH": str(cwd)} if mirrored is not None else None
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    report = done.stdout + done.stderr
    if mirrored:
        paths = re.compile("|".join(re.escape(path) for path in sorted(mirrored, key=len, reverse=True)))
        report = paths.sub(lambda match: mirrored[match.group(0)], report.replace(f"{cwd}{os.sep}", ""))
    print(report, end="" if report.endswith("\n") or not report else "\n", flush=True)
    return done.returncode


def main() -> int:
    pyproject = ROOT / "pyproject.toml"
    failures = []
    if run("ruff", [str(BIN / "ruff"), "check", str(ROOT)], cwd=ROOT):
        failures.append("ruff")
    with tempfile.TemporaryDirectory(prefix="rlreg-lint-") as folder:
        tree = Path(folder)
        mirrored = build_tree(tree, package_folders(pyproject))
        contracts = [str(BIN / "lint-imports"), str(pyproject), "--no-cache", "--no-logo"]
        if run("import contracts", contracts, tree, mirrored):
            failures.append("lint-imports")
        mypy = [str(BIN / "mypy"), "--config-file", str(pyproject), "--cache-dir", str(ROOT / ".mypy_cache")]
        if run("types", [*mypy, "-p", "rlreg"], tree, mirrored):
            failures.append("mypy")
    if failures:
        print(f"lint failed: {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
