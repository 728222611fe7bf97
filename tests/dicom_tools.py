"""Independent DICOM checkers for the written DSROs: ``dciodvfy`` (Debian dicom3tools, D. Clunie's IOD validator) and
``dcmdump`` (Debian dcmtk). Tests that use them skip when the tools are missing, unless
``RLREG_REQUIRE_DICOM_TOOLS=1`` (set by ``.ci/run``, which installs both packages) makes that a failure."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGES = {"dciodvfy": "dicom3tools", "dcmdump": "dcmtk"}


def dicom_tool(name: str) -> str:
    """The path of ``name`` (a key of :data:`PACKAGES`); skip, or fail under ``RLREG_REQUIRE_DICOM_TOOLS=1``."""
    path = shutil.which(name)
    if path is None:
        package = PACKAGES[name]
        if os.environ.get("RLREG_REQUIRE_DICOM_TOOLS") == "1":
            pytest.fail(f"RLREG_REQUIRE_DICOM_TOOLS=1 but no {name} on PATH (apt-get install {package})")
        pytest.skip(f"the DICOM validation needs Debian's {package} (apt-get install {package})")
    return path


def dciodvfy_findings(path: Path) -> list[str]:
    """Every ``Error``/``Warning`` line dciodvfy prints for ``path`` (it may exit 0 despite errors, so its text is
    what counts), after checking that it recognised the IOD (the validation ran at all)."""
    run = subprocess.run([dicom_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    text = run.stdout + run.stderr
    assert "DeformableSpatialRegistration" in text, text  # the IOD it validated against
    return [line for line in text.splitlines() if line.startswith(("Error", "Warning"))]


def dcmdump_text(path: Path) -> str:
    """``dcmdump``'s listing of ``path``; asserts it exits 0 and prints no ``E:`` (error) or ``W:`` line."""
    run = subprocess.run([dicom_tool("dcmdump"), str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    assert run.returncode == 0, run.stderr
    assert not [line for line in lines if line.startswith(("E:", "W:", "F:"))], run.stderr
    return run.stdout
