"""Style images (paintings) that ship inside installed packages, and the style-transfer datasets built on them.

Nothing is downloaded. :func:`painting_catalogue` lists every painting found, each with its source and licence:

* Debian ``opencv-doc``: Van Gogh's *The Starry Night* (``examples/data/starry_night.jpg``);
* Debian ``darknet``: Munch's *The Scream* (``data/scream.jpg``);
* Debian ``visp-images-data``: Klimt's *The Kiss* (``ViSP-images/Klimt/Klimt.ppm``);
* Debian ``gcompris-qt-data``: the 22 paintings of GCompris' ``paintings`` jigsaw activity (Hokusai's *The Great
  Wave off Kanagawa*, Kandinsky's *Composition VIII*, ...; :data:`GCOMPRIS_NAMES`), WebMuseum scans of
  public-domain works released under GPL-3.0+. Each is stored as jigsaw pieces inside a Qt resource archive and
  reassembled by :func:`assemble_jigsaw` from the board's QML description.

The style-transfer dataset ``style-photos`` (:class:`StyleOptions`, registered in
:data:`rlreg.data.registry.DATASETS`) pairs random crops of the content photos of :mod:`rlreg.data.photos` (its
declared held-out split of whole photos: training crops never come from a held-out photo) with one painting,
resized so its shorter side is ``style_size`` pixels.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rlreg.data.photos import PhotoCrops, PhotoOptions, _decode, photo_split, read_qt_resources, system_data_root
from rlreg.io import InputError
from rlreg.tasks.image import ImageBatch

__all__ = ["GCOMPRIS_NAMES", "JigsawPiece", "Painting", "StyleCrops", "StyleOptions", "assemble_jigsaw",
           "load_painting", "painting_catalogue", "painting_tensor", "style_datasets"]


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

GCOMPRIS_PAINTINGS = "usr/share/gcompris-qt/rcc/paintings.rcc"
"""The Qt resource archive of GCompris' ``paintings`` activity, under the system data root."""
_GCOMPRIS_RESOURCES = "/gcompris/src/activities/paintings/resource/"
_BOARD = re.compile(r"board/board(\d+)_0\.qml")
GCOMPRIS_NAMES = {
    "Pierre-Auguste Renoir, Bal du moulin de la Galette - 1876": "moulin-de-la-galette",
    "Giuseppe Arcimboldo, Spring - 1573": "arcimboldo-spring",
    "Giuseppe Arcimboldo, The Librarian - 1566": "the-librarian",
    "Katsushika Hokusai, Oiran and Kamuro": "oiran-and-kamuro",
    "Katsushika Hokusai, Woman holding a fan": "woman-holding-a-fan",
    "Katsushika Hokusai, Ejiri in Suruga Province - 1830-1833": "ejiri",
    "Katsushika Hokusai, The Great Wave off Kanagawa - 1823-1829": "great-wave",
    "Utagawa Hiroshige, The Benzaiten Shrine at Inokashira in Snow - 1760-70": "inokashira-snow",
    "Utagawa Hiroshige, Horse-mackerel and Prawn - 1840": "horse-mackerel-and-prawn",
    "Katsushika Hokusai, Viewing Sunset over the Ryogoku Bridge from the Ommaya Embankment - 1830": "ryogoku-bridge",
    "Katsushika Hokusa, Poppies - 1833-1834": "poppies",
    "Katsushika Hokusai, Kazusa sea Route - 1830.": "kazusa-sea-route",
    "Michelangelo, Pieta - 1499": "pieta",
    "Leonardo da Vinci, Mona Lisa - 1503-19": "mona-lisa",
    "Giovanni Bellini, La Pala di Pesaro - 1475-85": "pala-di-pesaro",
    "Albrecht Dürer, Lion - 1494": "durer-lion",
    "Pieter Brugel, The Harvesters - 1565": "the-harvesters",
    "Pierre-Auguste Renoir, Girls At The Piano - 1892": "girls-at-the-piano",
    "Wassily Kandinsky, Composition VIII - 1923": "composition-viii",
    "Bazille, The Ramparts at Aigues-Mortes - 1867": "ramparts-aigues-mortes",
    "Mary Cassatt, Summertime - 1894": "summertime",
    "Vincent Van Gogh, Village Street in Auvers - 1890": "village-street-auvers",
}
"""Title of a GCompris board (its ``qsTr`` instruction, verbatim) -> the painting's name. Fixed so names stay the
same across package versions; a board with another title is named by :func:`_slug` of its title."""
_TITLE_FIXES = {"Katsushika Hokusa,": "Katsushika Hokusai,", "Pieter Brugel,": "Pieter Bruegel,",
                "Bazille,": "Frédéric Bazille,"}
"""Spelling fixes applied to the titles shown (the artists' names as the museums write them)."""


@dataclass(frozen=True)
class JigsawPiece:
    """One piece of a jigsaw board."""

    image: np.ndarray
    """``(h, w, 4)`` uint8 RGBA (transparent outside the piece's outline)."""
    x: float
    y: float
    """Position of the piece's CENTRE as fractions of the board's width and height."""


def assemble_jigsaw(pieces: Sequence[JigsawPiece], width: int, height: int) -> np.ndarray:
    """The pieces laid alpha-over (Porter-Duff "over", in order) on a transparent ``width x height`` board and
    cropped to the box of the non-transparent pixels: ``(H, W, 4)`` uint8 RGBA.

    A piece's top-left corner is ``round(x * width - w / 2), round(y * height - h / 2)`` (GCompris places each
    piece by its centre).
    """
    from PIL import Image

    board = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    for piece in pieces:
        image = Image.fromarray(np.ascontiguousarray(piece.image), "RGBA")
        corner = (round(piece.x * width - image.width / 2), round(piece.y * height - image.height / 2))
        layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        layer.paste(image, corner)  # pasting clips a piece that overhangs the board
        board.alpha_composite(layer)
    rgba = np.asarray(board)
    rows, columns = np.nonzero(rgba[..., 3])
    if rows.size == 0:
        raise ValueError("the jigsaw has no visible piece")
    return np.ascontiguousarray(rgba[rows.min():rows.max() + 1, columns.min():columns.max() + 1])


def _gcompris_board(archive: Path, board: str) -> tuple[str, list[tuple[str, float, float]], tuple[int, int]]:
    """``(title, [(piece file, x, y), ...], (width, height))`` of a GCompris board QML file: the ``qsTr`` title, the
    WebP pieces (``"pixmapfile"``, ``"x"``, ``"y"``) and the size of the ``SHAPE_BACKGROUND_IMAGE`` entry."""
    text = read_qt_resources(archive)[board].decode("utf-8")
    title = re.search(r'qsTr\("(.*?)"\)', text)
    entries = re.findall(r"\{([^{}]*)\}", text)
    size = None
    pieces = []
    for entry in entries:
        fields = dict(re.findall(r'"(\w+)"\s*:\s*"?([^",\n]*)"?', entry))
        if fields.get("type") == "SHAPE_BACKGROUND_IMAGE":
            size = (int(fields["width"]), int(fields["height"]))
        elif fields.get("pixmapfile", "").endswith(".webp"):
            pieces.append((fields["pixmapfile"], float(fields["x"]), float(fields["y"])))
    if title is None or size is None or not pieces:
        raise InputError(f"{archive}: board {board} is not a GCompris jigsaw; reinstall gcompris-qt-data")
    return title.group(1), pieces, size


def _gcompris_rgba(archive: Path, board: str) -> np.ndarray:
    """The reassembled board ``board`` of ``archive``: ``(H, W, 4)`` uint8 RGBA (see :func:`assemble_jigsaw`)."""
    from PIL import Image

    files = read_qt_resources(archive)
    _, entries, (width, height) = _gcompris_board(archive, board)
    pieces = []
    for file, x, y in entries:
        with Image.open(io.BytesIO(files[_GCOMPRIS_RESOURCES + file])) as image:
            pieces.append(JigsawPiece(np.asarray(image.convert("RGBA")), x, y))
    return assemble_jigsaw(pieces, width, height)


@lru_cache(maxsize=8)
def _gcompris_painting(archive: Path, board: str) -> np.ndarray:
    """The board as ``(H, W, 3)`` uint8 RGB (read-only, cached): the few pixels that the pieces leave uncovered
    along the outline (well under 1 %) are filled by OpenCV's Telea inpainting from their neighbours."""
    import cv2

    rgba = _gcompris_rgba(archive, board)
    rgb = np.ascontiguousarray(rgba[..., :3])
    holes = (rgba[..., 3] < 255).astype(np.uint8)
    if holes.any():
        rgb = cv2.inpaint(rgb, holes, 3, cv2.INPAINT_TELEA)
    rgb.flags.writeable = False
    return rgb


def _slug(title: str) -> str:
    """``"Artist, Some Title - 1900"`` -> ``"some-title"``."""
    work = title.split(",", 1)[-1].split(" - ", 1)[0]
    return re.sub(r"[^a-z0-9]+", "-", work.lower()).strip("-") or "painting"


def _shown_title(title: str) -> str:
    """``"Artist, Title - 1900"`` -> ``"Artist, Title (1900)"`` (the catalogue's form), spelling fixed."""
    for wrong, right in _TITLE_FIXES.items():
        title = title.replace(wrong, right)
    work, _, year = title.rstrip(". ").partition(" - ")
    return f"{work} ({year})" if year else work


def _readme_licence(files: dict[str, bytes]) -> str:
    """The ``License:`` and ``Copyright:`` lines of the paintings archive's README (continuation lines joined)."""
    text = files.get(_GCOMPRIS_RESOURCES + "image/README", b"").decode("utf-8", "replace")
    fields: dict[str, list[str]] = {}
    key = ""
    for line in text.splitlines():
        if line[:1].isspace() and key:
            fields[key].append(line.strip())
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = [value.strip()] if value.strip() else []
    licence = " ".join(fields.get("License", [])) or "GPLv3 or later"
    holders = "".join(f"{holder}; " for holder in fields.get("Copyright", []))
    return f"public domain work, scan {licence} ({holders}WebMuseum)"


def _gcompris_paintings(archive: Path) -> list[Painting]:
    """The paintings of GCompris' jigsaw archive (QML parsed, no WebP decoded)."""
    files = read_qt_resources(archive)
    licence = f"{_readme_licence(files)}; Debian gcompris-qt-data"
    numbered = {int(match.group(1)): path for path in files
                if (match := _BOARD.fullmatch(path.removeprefix(_GCOMPRIS_RESOURCES)))}
    boards = [numbered[number] for number in sorted(numbered)]
    paintings: list[Painting] = []
    for board in boards:
        try:
            title = _gcompris_board(archive, board)[0]
        except InputError:  # a board of another layout (a later GCompris): left out, the others stay usable
            continue
        name = GCOMPRIS_NAMES.get(title) or _slug(title)
        if any(painting.name == name for painting in paintings):
            name = f"{name}-{len(paintings) + 1}"
        paintings.append(Painting(name, _shown_title(title), licence, partial(_gcompris_copy, archive, board),
                                  "gcompris-qt-data"))
    return paintings


def _gcompris_copy(archive: Path, board: str) -> np.ndarray:
    return _gcompris_painting(archive, board).copy()


@lru_cache(maxsize=1)
def painting_catalogue() -> dict[str, Painting]:
    """Every painting found in the installed packages, name -> :class:`Painting` (nothing is decoded here)."""
    root = system_data_root()
    paintings = [Painting(name, title, f"{licence}; Debian {package}", partial(_decode, root / file), package)
                 for name, title, file, package, licence in _FILE_PAINTINGS if (root / file).exists()]
    archive = root / GCOMPRIS_PAINTINGS
    if archive.exists():
        paintings += [painting for painting in _gcompris_paintings(archive)
                      if painting.name not in {known.name for known in paintings}]
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
