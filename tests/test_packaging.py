"""The wheel's package list (pyproject.toml ``[tool.setuptools]``) covers every folder that ships.

Setuptools installs only the listed packages: a folder left out is missing from the wheel (and from a non-editable
install) while an editable install still finds it, so only this check catches it before users do.
"""

from __future__ import annotations

import sys
from fnmatch import fnmatch
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def package_folder(name: str) -> Path:
    """The source folder of an import name under ``package-dir`` (the longest mapped prefix wins)."""
    mapping: dict[str, str] = SETUPTOOLS["package-dir"]
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in mapping:
            return ROOT / mapping[prefix] / Path(*parts[cut:])
    return ROOT / Path(*parts)


def shipped_folders() -> set[str]:
    """Import names of the folders under each package-dir root that hold a tracked kind of file."""
    names = set()
    for name, folder in SETUPTOOLS["package-dir"].items():
        root = ROOT / folder
        for path in [root, *root.rglob("*")]:
            skipped = any(part == "__pycache__" or part.startswith(".") for part in path.relative_to(root).parts)
            if path.is_dir() and not skipped and any(child.is_file() for child in path.iterdir()):
                names.add(".".join([name, *path.relative_to(root).parts]))
    return names


def test_every_source_folder_is_a_listed_package() -> None:
    listed = set(SETUPTOOLS["packages"])
    assert shipped_folders() - listed == set(), "add these folders to [tool.setuptools] packages"
    assert listed - shipped_folders() == set(), "these listed packages have no folder"


def test_package_data_patterns_match_files() -> None:
    """Each package-data pattern names files that exist (the models, their cards and the training recipes)."""
    data: dict[str, list[str]] = SETUPTOOLS["package-data"]
    assert {"rlreg.models", "rlreg.pipelines.recipes"} <= set(data)
    for package, patterns in data.items():
        assert package in SETUPTOOLS["packages"], package
        files = [path.name for path in package_folder(package).iterdir() if path.is_file()]
        for pattern in patterns:
            assert any(fnmatch(file, pattern) for file in files), (package, pattern)
