"""Style images (paintings) that ship inside installed packages, and the style-transfer datasets built on them.

Nothing is downloaded. :func:`painting_catalogue` lists every painting found, each with its source and licence:

* Debian ``opencv-doc``: Van Gogh's *The Starry Night* (``examples/data/starry_night.jpg``);
* Debian ``darknet``: Munch's *The Scream* (``data/scream.jpg``);
* Debian ``visp-images-data``: Klimt's *The Kiss* (``ViSP-images/Klimt/Klimt.ppm``).

The style-transfer dataset ``style-photos`` (:class:`StyleOptions`, registered in
:data:`rlreg.data.registry.DATASETS`) pairs random crops of the content photos of :mod:`rlreg.data.photos` (its
declared held-out split of whole photos: training crops never come from a held-out photo) with one painting,
resized so its shorter side is ``style_size`` pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rlreg.data.photos import PhotoCrops, PhotoOptions, _decode, photo_split, system_data_root
from rlreg.io import InputError
from rlreg.tasks.image import ImageBatch

__all__ = ["Painting", "StyleCrops", "StyleOptions", "load_painting", "painting_catalogue", "painting_tensor",
           "style_datasets"]


@dataclass(frozen=True)
class Painting:
    """One painting of the catalogue (decoded on demand)."""

    name: str
    """Short name used on the command line (``starry-night``)."""
    title: str
    """Artist, title and year."""
    licence: str
    """Licence and the package it comes from."""
    load: Callable[[], np.ndarray]
    """Returns the ``(H, W, 3)`` uint8 RGB picture."""
    package: str
    """The Debian package that carries it."""


_FILE_PAINTINGS = (
    ("starry-night", "Vincent van Gogh, The Starry Night (1889)",
     "usr/share/doc/opencv-doc/examples/data/starry_night.jpg", "opencv-doc",
     "public domain painting; OpenCV sample data (Apache-2.0)"),
    ("scream", "Edvard Munch, The Scream (1893)", "usr/share/darknet/data/scream.jpg", "darknet",
     "public domain painting; Darknet sample data"),
    ("the-kiss", "Gustav Klimt, The Kiss (1907-1908)", "usr/share/visp-images-data/ViSP-images/Klimt/Klimt.ppm",
     "visp-images-data", "public domain painting; ViSP images (GPL-2.0+)"),
)
"""``(name, title, file under the system data root, Debian package, licence)`` of the paintings stored as files."""


@lru_cache(maxsize=1)
def painting_catalogue() -> dict[str, Painting]:
    """Every painting found in the installed packages, name -> :class:`Painting` (nothing is decoded here)."""
    root = system_data_root()
    paintings = [Painting(name, title, f"{licence}; Debian {package}", partial(_decode, root / file), package)
                 for name, title, file, package, licence in _FILE_PAINTINGS if (root / file).exists()]
    return {painting.name: painting for painting in paintings}


def load_painting(name: str) -> np.ndarray:
    """The painting ``name`` as an ``(H, W, 3)`` uint8 RGB array.

    Raises:
        InputError: an unknown or uninstalled painting; one line listing the installed ones.
    """
    catalogue = painting_catalogue()
    if name not in catalogue:
        known = ", ".join(sorted(catalogue)) or "none"
        raise InputError(f"unknown style {name!r}; installed styles: {known} (the Debian packages opencv-doc darknet "
                         "gcompris-qt-data visp-images-data add them)")
    return catalogue[name].load()


@lru_cache(maxsize=8)
def painting_tensor(name: str, shorter: int) -> Tensor:
    """The painting ``name`` as a ``(1, 3, h, w)`` float32 tensor in ``[0, 1]``, its shorter side resized to
    ``shorter`` pixels (antialiased)."""
    image = torch.from_numpy(np.ascontiguousarray(load_painting(name))).permute(2, 0, 1)[None].float() / 255.0
    factor = shorter / min(image.shape[2:])
    size = (max(1, round(image.shape[2] * factor)), max(1, round(image.shape[3] * factor)))
    return F.interpolate(image, size=size, mode="bilinear", antialias=factor < 1, align_corners=False).clamp(0, 1)


@dataclass(frozen=True)
class StyleOptions:
    """Options of the ``style-photos`` dataset (``data.options`` of a recipe)."""

    style: str = "starry-night"
    """The painting (:func:`painting_catalogue`)."""
    style_size: int = 256
    """Shorter side of the style image (pixels): the scale of its brush strokes relative to the content crops."""
    size: int = 128
    """Side of the square content crops (pixels)."""
    min_scale: float = 1.0
    max_scale: float = 2.0
    """Content photos are scaled so the shorter side is ``s * size``, ``s`` uniform in ``[min_scale, max_scale]``."""
    flip: bool = True
    """Random horizontal flips of training crops."""

    def __post_init__(self) -> None:
        if self.style_size < 16:
            raise ValueError(f"style_size must be at least 16, got {self.style_size}")


class StyleCrops:
    """Content crops of a list of photos, each paired with the same painting: :class:`ImageBatch` items with
    ``source`` the ``(B, 3, size, size)`` crops and ``target`` the ``(B, 3, h, w)`` painting (one image expanded)."""

    def __init__(self, names: list[str], options: StyleOptions, training: bool) -> None:
        self.options = options
        photo = PhotoOptions(size=options.size, min_scale=options.min_scale, max_scale=options.max_scale,
                             flip=options.flip)
        self.crops = PhotoCrops(names, photo, "edges", training)
        self.style = painting_tensor(options.style, options.style_size)

    def sample(self, count: int, generator: torch.Generator, device: torch.device | str = "cpu") -> ImageBatch:
        """``count`` content crops and the painting, on ``device``."""
        content = self.crops.crops(count, generator)
        return ImageBatch(content.to(device), self.style.to(device).expand(count, -1, -1, -1), None)


def style_datasets(options: dict[str, Any]) -> tuple[StyleCrops, StyleCrops]:
    """``(training, held-out)`` :class:`StyleCrops` of :func:`rlreg.data.photos.photo_split`'s photos, options from a
    recipe's ``data.options`` (keys of :class:`StyleOptions`)."""
    from rlreg.config import from_dict

    parsed = from_dict(StyleOptions, options, "data.options.")
    split = photo_split()
    return StyleCrops(split["train"], parsed, True), StyleCrops(split["test"], parsed, False)
