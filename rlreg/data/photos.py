"""Real photos that ship inside installed packages, their held-out split, and the photo datasets built on them.

Nothing is downloaded. The catalogue (:func:`photo_catalogue`) lists every photo found, each with its licence:

* pip: scikit-image's ``astronaut``, ``chelsea``, ``coffee``, ``rocket``, ``hubble_deep_field``,
  ``immunohistochemistry``, ``retina``; scikit-learn's ``china.jpg`` and ``flower.jpg``; matplotlib's
  ``grace_hopper.jpg``;
* Debian (listed only when installed, see ``.ci/system-packages.sh``): ``opencv-doc`` sample data (the natural
  photos of :data:`OPENCV_PHOTOS`, curated by hand: no charts, text, logos, synthetic renders, video frames,
  second views of a stereo pair or tiny images), ``darknet`` (:data:`DARKNET_PHOTOS`) and the ``gcompris-qt-data``
  "explore" activities (:data:`GCOMPRIS_ARCHIVES`: monuments, world animals, farm animals; WebP photos inside Qt
  resource archives, read by :func:`read_qt_resources`, with the per-file licence of each archive's README).

The held-out split (:func:`photo_split`) holds out WHOLE photos, so no crop of a training photo is ever evaluated:
within each source group (pip, opencv-doc, darknet, each GCompris archive) the photos are ordered by the SHA-256
of their name and the first ``max(1, round(n / 5))`` of a group of ``n >= 2`` are held out (about 20 %; a photo's
side never depends on which other packages are installed).

Datasets (registered in :data:`rlreg.data.registry.DATASETS`, options in :class:`PhotoOptions` /
:class:`FaceOptions`): ``inpaint-photos``, ``translate-edges-photo``, ``translate-superpixels-photo``,
``inpaint-faces``. A Debian package tree unpacked elsewhere (``dpkg -x``) is found through the environment variable
``RLREG_SYSTEM_DATA_ROOT`` (default ``/``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rlreg.io import InputError
from rlreg.tasks.image import ImageBatch

__all__ = ["DARKNET_PHOTOS", "DEBIAN_PACKAGES", "GCOMPRIS_ARCHIVES", "OPENCV_PHOTOS", "FaceOptions", "Faces",
           "Photo", "PhotoCrops", "PhotoOptions", "face_datasets", "load_face_images", "load_photo", "photo_catalogue",
           "photo_datasets", "photo_split", "random_masks", "read_qt_resources", "system_data_root"]

OPENCV_PHOTOS = ("aero1.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "board.jpg", "building.jpg", "butterfly.jpg",
                 "chicky_512.png", "ela_original.jpg", "fruits.jpg", "graf1.png", "home.jpg", "left.jpg",
                 "leuvenA.jpg", "messi5.jpg", "orange.jpg", "smarties.png", "squirrel_cls.jpg", "stuff.jpg")
"""The natural photos among ``opencv-doc``'s ``examples/data`` (one view of each stereo pair or image pair)."""
DARKNET_PHOTOS = ("dog.jpg", "eagle.jpg", "giraffe.jpg", "horses.jpg", "kite.jpg", "person.jpg")
"""The photos of ``darknet``'s ``data`` folder (its painting ``scream.jpg`` is left out)."""
GCOMPRIS_ARCHIVES = ("explore_monuments", "explore_world_animals", "explore_farm_animals")
"""``gcompris-qt-data`` resource archives (``usr/share/gcompris-qt/rcc/NAME.rcc``) whose WebP files are photos."""
DEBIAN_PACKAGES = ("opencv-doc", "darknet", "gcompris-qt-data", "visp-images-data")
"""The Debian packages that add photos and faces (``apt-get install --no-install-recommends ...``)."""
SKIMAGE_PHOTOS = {
    "astronaut": "public domain (NASA, Eileen Collins)",
    "chelsea": "CC0 (Stefan van der Walt)",
    "coffee": "CC0 (Rachel Michetti)",
    "rocket": "public domain (SpaceX)",
    "hubble_deep_field": "public domain (NASA, HubbleSite)",
    "immunohistochemistry": "no known copyright restrictions (CMMI)",
    "retina": "CC0 (Mikael Haggstrom, Wikimedia Commons)",
}
"""scikit-image's colour photos and their licences (the loaders' docstrings)."""
HELD_OUT_FRACTION = 0.2


def system_data_root() -> Path:
    """Root of the Debian package files: ``$RLREG_SYSTEM_DATA_ROOT`` or ``/``."""
    return Path(os.environ.get("RLREG_SYSTEM_DATA_ROOT", "/"))


@dataclass(frozen=True)
class Photo:
    """One catalogued photo: where it comes from and how to decode it."""

    name: str
    """Unique name, ``group/stem`` (e.g. ``skimage/astronaut``, ``opencv/baboon``, ``gcompris-monuments/...``)."""
    group: str
    """Source group of the held-out split (``pip``, ``opencv``, ``darknet``, ``gcompris-<archive>``)."""
    licence: str
    """Licence and source, from the package's copyright file or README."""
    load: Callable[[], np.ndarray]
    """Decodes the photo: ``(H, W, 3)`` uint8 RGB."""


# ---------------------------------------------------------------------------------------------------- decoding
def _rgb(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return np.ascontiguousarray(array[..., :3].astype(np.uint8))


def _decode(data: bytes | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        return _rgb(np.asarray(image.convert("RGB")))


def _skimage_photo(name: str) -> np.ndarray:
    from skimage import data

    return _rgb(getattr(data, name)())


@lru_cache(maxsize=8)
def read_qt_resources(path: Path) -> dict[str, bytes]:
    """The files of a Qt resource archive (``.rcc``), path inside the archive -> content.

    Format (Qt's ``rcc`` binary output): magic ``qres``, then big-endian uint32 version, tree, data and names
    offsets. A tree node (14 bytes, 22 from version 2) is ``name offset (4), flags (2)``, then for a directory
    (flag 2) ``child count (4), first child (4)``, else ``country, language (2 + 2), data offset (4)``. Names are a
    uint16 length, a uint32 hash and UTF-16-BE text; data entries a uint32 size and the payload, zlib-compressed
    behind a 4-byte length when flag 1 is set.

    Raises:
        InputError: the file is not a Qt resource archive.
    """
    blob = Path(path).read_bytes()
    if blob[:4] != b"qres":
        raise InputError(f"{path}: not a Qt resource archive (no 'qres' magic); reinstall the package it came from")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    node_size = 22 if version >= 2 else 14

    def name_at(offset: int) -> str:
        length = struct.unpack(">H", blob[names + offset:names + offset + 2])[0]
        return blob[names + offset + 6:names + offset + 6 + 2 * length].decode("utf-16-be")

    files: dict[str, bytes] = {}
    pending = [(0, "")]
    while pending:
        index, prefix = pending.pop()
        node = tree + index * node_size
        name_offset, flags = struct.unpack(">IH", blob[node:node + 6])
        name = name_at(name_offset) if index else ""
        if flags & 2:
            count, first = struct.unpack(">II", blob[node + 6:node + 14])
            pending.extend((child, f"{prefix}{name}/") for child in range(first, first + count))
            continue
        offset = data + struct.unpack(">I", blob[node + 10:node + 14])[0]
        size = struct.unpack(">I", blob[offset:offset + 4])[0]
        payload = blob[offset + 4:offset + 4 + size]
        files[f"{prefix}{name}"] = zlib.decompress(payload[4:]) if flags & 1 else payload
    return files


def _readme_licences(files: dict[str, bytes]) -> dict[str, str]:
    """Archive path -> ``"licence, copyright (source)"`` from the ``Copyright:/License:/Source:/Files:`` blocks of
    the archive's README files (GCompris' per-file licence records)."""
    licences: dict[str, str] = {}
    for path, content in files.items():
        if not path.endswith("/README"):
            continue
        folder = path.rsplit("/", 1)[0]
        for block in re.split(r"\n\s*\n", content.decode("utf-8", "replace")):
            fields: dict[str, str] = {}
            listed: list[str] = []
            in_files = False
            for line in block.splitlines():
                if in_files and line.strip() and ":" not in line:
                    listed.append(line.strip())
                    continue
                key, _, value = line.partition(":")
                in_files = key.strip() == "Files"
                fields[key.strip()] = value.strip()
            text = f"{fields.get('License', '?')}, {fields.get('Copyright', '?')}"
            if fields.get("Source"):
                text += f" ({fields['Source']})"
            for name in listed:
                licences[f"{folder}/{name}"] = text
    return licences


def _archived_photo(archive: Path, inner: str) -> np.ndarray:
    return _decode(read_qt_resources(archive)[inner])


def _gcompris_photos(archive: str, path: Path) -> list[Photo]:
    files = read_qt_resources(path)
    licences = _readme_licences(files)
    group = "gcompris-" + archive.removeprefix("explore_").replace("_", "-")
    photos = []
    for inner in sorted(files):
        if not inner.endswith(".webp"):
            continue
        stem = inner.split("/resource/", 1)[-1].removesuffix(".webp")
        licence = licences.get(inner, "see the archive's README (GCompris, gcompris-qt-data)")
        photos.append(Photo(f"{group}/{stem}", group, f"{licence}; Debian gcompris-qt-data",
                            partial(_archived_photo, path, inner)))
    return photos


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.exists() else None


@lru_cache(maxsize=1)
def photo_catalogue() -> dict[str, Photo]:
    """Every photo found in the installed packages, name -> :class:`Photo` (nothing is decoded here)."""
    photos: list[Photo] = [Photo(f"skimage/{name}", "pip", f"{licence}; scikit-image data",
                                 partial(_skimage_photo, name)) for name, licence in SKIMAGE_PHOTOS.items()]
    for name, author in (("china", "danielbuechele"), ("flower", "vultilion")):
        path = _package_file("sklearn", "datasets", "images", f"{name}.jpg")
        if path is not None:
            photos.append(Photo(f"sklearn/{name}", "pip", f"CC BY 2.0 ({author}, Flickr); scikit-learn sample image",
                                partial(_decode, path)))
    hopper = _package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg")
    if hopper is not None:
        photos.append(Photo("matplotlib/grace_hopper", "pip", "matplotlib sample data (public domain, US Navy)",
                            partial(_decode, hopper)))
    root = system_data_root()
    opencv = root / "usr/share/doc/opencv-doc/examples/data"
    photos += [Photo(f"opencv/{Path(name).stem}", "opencv", "OpenCV sample data (Apache-2.0); Debian opencv-doc",
                     partial(_decode, opencv / name)) for name in OPENCV_PHOTOS if (opencv / name).exists()]
    darknet = root / "usr/share/darknet/data"
    photos += [Photo(f"darknet/{Path(name).stem}", "darknet", "Darknet sample data (GPL-3.0+ or MIT); Debian darknet",
                     partial(_decode, darknet / name)) for name in DARKNET_PHOTOS if (darknet / name).exists()]
    for archive in GCOMPRIS_ARCHIVES:
        path = root / "usr/share/gcompris-qt/rcc" / f"{archive}.rcc"
        if path.exists():
            photos += _gcompris_photos(archive, path)
    return {photo.name: photo for photo in photos}


def _name_hash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def photo_split() -> dict[str, list[str]]:
    """The declared split of whole photos: ``{"train": names, "test": names}`` (sorted, disjoint).

    Per source group the photos are ordered by the SHA-256 of their name and the first ``max(1, round(0.2 n))``
    of ``n >= 2`` are held out; a group of one photo trains.
    """
    groups: dict[str, list[str]] = {}
    for photo in photo_catalogue().values():
        groups.setdefault(photo.group, []).append(photo.name)
    train: list[str] = []
    test: list[str] = []
    for names in groups.values():
        ordered = sorted(names, key=_name_hash)
        held = max(1, round(HELD_OUT_FRACTION * len(ordered))) if len(ordered) >= 2 else 0
        test += ordered[:held]
        train += ordered[held:]
    return {"train": sorted(train), "test": sorted(test)}


def load_photo(name: str) -> np.ndarray:
    """Decode the catalogued photo ``name``: ``(H, W, 3)`` uint8 RGB.

    Raises:
        InputError: ``name`` is not in the catalogue (the message says which packages add photos).
    """
    catalogue = photo_catalogue()
    if name not in catalogue:
        raise InputError(f"photo {name!r} is not installed; known: {len(catalogue)} photos "
                         f"(the Debian packages {' '.join(DEBIAN_PACKAGES)} add more)")
    return catalogue[name].load()


# ---------------------------------------------------------------------------------------------------- masks
MaskKind = Literal["centre", "free_form", "mixed"]


def random_masks(kind: MaskKind, count: int, size: int, hole: int, generator: torch.Generator) -> Tensor:
    """``(count, 1, size, size)`` hole masks: the centre ``hole^2`` square, free-form strokes, or either (a fair
    coin per item) for ``mixed``."""
    from rlreg.data.masks import centre_mask, free_form_mask

    if kind not in ("centre", "free_form", "mixed"):
        raise ValueError(f"mask must be 'centre', 'free_form' or 'mixed', got {kind!r}")
    masks = []
    for _ in range(count):
        pick = kind if kind != "mixed" else ("centre" if float(torch.rand((), generator=generator)) < 0.5
                                             else "free_form")
        masks.append(centre_mask(size, hole) if pick == "centre" else free_form_mask(size, generator))
    return torch.stack(masks)


# ---------------------------------------------------------------------------------------------------- photo crops
@dataclass(frozen=True)
class PhotoOptions:
    """Options of the photo datasets (``data.options`` of a recipe)."""

    size: int = 128
    """Side of the square crops (pixels)."""
    min_scale: float = 1.0
    max_scale: float = 2.0
    """Before cropping, the photo is scaled so its shorter side is ``s * size`` pixels, ``s`` uniform in
    ``[min_scale, max_scale]``: a crop shows between the whole shorter side and half of it, so it holds objects
    rather than texture."""
    flip: bool = True
    """Random horizontal flips (training only)."""
    mask: MaskKind = "centre"
    """Inpainting holes: ``centre`` (the paper's centre square), ``free_form`` (brush strokes) or ``mixed``."""
    hole: int = 0
    """Side of the centre hole; 0 means ``size // 2`` (the paper's 64^2 hole in 128^2)."""

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"size must be at least 8, got {self.size}")
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {self.min_scale}, {self.max_scale}")
        if self.hole < 0 or self.hole > self.size:
            raise ValueError(f"hole must be in [0, size], got {self.hole}")

    @property
    def hole_size(self) -> int:
        return self.hole or self.size // 2


@lru_cache(maxsize=4)
def _stored_photos(names: tuple[str, ...], shorter: int) -> tuple[Tensor, ...]:
    """The photos ``names`` decoded once, their shorter side reduced to at most ``shorter`` pixels (antialiased):
    ``(3, H, W)`` uint8 tensors. Crops never need more resolution than that."""
    stored = []
    for name in names:
        image = torch.from_numpy(load_photo(name)).permute(2, 0, 1).contiguous()
        factor = shorter / min(image.shape[1:])
        if factor < 1:
            size = (max(1, round(image.shape[1] * factor)), max(1, round(image.shape[2] * factor)))
            image = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True,
                                  align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
        stored.append(image)
    return tuple(stored)


class PhotoCrops:
    """Random square crops of a fixed list of photos, as inpainting or translation items.

    ``kind``: ``inpaint`` (source = crop with the hole zeroed, mask = hole), ``edges`` (source =
    :func:`~rlreg.data.maps.edge_map` of the crop) or ``superpixels`` (source =
    :func:`~rlreg.data.maps.superpixel_map`); the target is always the crop, ``(B, 3, size, size)`` in [0, 1].
    """

    def __init__(self, names: list[str], options: PhotoOptions, kind: Literal["inpaint", "edges", "superpixels"],
                 training: bool) -> None:
        if not names:
            raise InputError(f"no photos for this split; install the Debian data packages: "
                             f"apt-get install --no-install-recommends {' '.join(DEBIAN_PACKAGES)} "
                             "(or run .ci/system-packages.sh as root)")
        if kind not in ("inpaint", "edges", "superpixels"):
            raise ValueError(f"kind must be 'inpaint', 'edges' or 'superpixels', got {kind!r}")
        self.names = list(names)
        self.options = options
        self.kind = kind
        self.training = training

    def crops(self, count: int, generator: torch.Generator) -> Tensor:
        """``(count, 3, size, size)`` float32 crops in ``[0, 1]`` (random photo, scale, position, flip)."""
        options = self.options
        photos = _stored_photos(tuple(self.names), round(options.max_scale * options.size))
        crops = []
        for _ in range(count):
            photo = photos[int(torch.randint(len(photos), (), generator=generator))]
            height, width = photo.shape[1:]
            scale = options.min_scale + (options.max_scale - options.min_scale) * float(
                torch.rand((), generator=generator))
            side = min(height, width, max(1, round(min(height, width) / scale)))
            top = int(torch.randint(height - side + 1, (), generator=generator))
            left = int(torch.randint(width - side + 1, (), generator=generator))
            crop = photo[None, :, top:top + side, left:left + side].float() / 255.0
            crop = F.interpolate(crop, size=(options.size, options.size), mode="bilinear",
                                 antialias=side > options.size, align_corners=False)[0].clamp(0.0, 1.0)
            coin = float(torch.rand((), generator=generator))  # drawn always: the same seed, the same crops
            if self.training and options.flip and coin < 0.5:
                crop = crop.flip(-1)
            crops.append(crop)
        return torch.stack(crops)

    def sample(self, count: int, generator: torch.Generator, device: torch.device | str = "cpu") -> ImageBatch:
        from rlreg.data.maps import edge_map, superpixel_map

        target = self.crops(count, generator)
        if self.kind == "inpaint":
            mask = random_masks(self.options.mask, count, self.options.size, self.options.hole_size, generator)
            return ImageBatch((target * (1 - mask)).to(device), target.to(device), mask.to(device))
        build = edge_map if self.kind == "edges" else superpixel_map
        source = torch.stack([build(crop) for crop in target])
        return ImageBatch(source.to(device), target.to(device), None)


def photo_datasets(options: dict[str, Any], kind: Literal["inpaint", "edges", "superpixels"]
                   ) -> tuple[PhotoCrops, PhotoCrops]:
    """``(training, held-out)`` :class:`PhotoCrops` of :func:`photo_split`'s photos, options from a recipe's
    ``data.options`` (keys of :class:`PhotoOptions`)."""
    from rlreg.config import from_dict

    parsed = from_dict(PhotoOptions, options, "data.options.")
    split = photo_split()
    return PhotoCrops(split["train"], parsed, kind, True), PhotoCrops(split["test"], parsed, kind, False)


# ---------------------------------------------------------------------------------------------------- faces
SOLVAY_FACES = "usr/share/visp-images-data/ViSP-images/faces"
LFW_TRAIN = 80
"""scikit-image's ``lfw_subset`` faces 0..79 train, 80..99 are held out."""


def _solvay_faces() -> list[np.ndarray]:
    """The 30 annotated faces of the 1927 Solvay conference photo (public domain; ViSP's
    ``ground_truth_detection.txt``: a ``detection_i`` line, then the box's four corners ``row column``), grey float in
    [0, 1]; empty when ``visp-images-data`` is not installed."""
    folder = system_data_root() / SOLVAY_FACES
    photo, boxes = folder / "1280px-Solvay_conference_1927.png", folder / "ground_truth_detection.txt"
    if not (photo.exists() and boxes.exists()):
        return []
    from PIL import Image

    with Image.open(photo) as image:
        grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    lines = [line.split() for line in boxes.read_text().splitlines() if line.strip()]
    faces = []
    for start in range(0, len(lines), 5):
        corners = np.array([[float(v) for v in line] for line in lines[start + 1:start + 5]])
        (top, left), (bottom, right) = corners.min(0).astype(int), corners.max(0).astype(int)
        faces.append(grey[top:bottom, left:right])
    return faces


@lru_cache(maxsize=4)
def load_face_images(size: int) -> dict[str, Tensor]:
    """The faces demo set, grey ``(N, 1, size, size)`` float32 in [0, 1]: ``{"train": ..., "test": ...}``.

    Training: scikit-image's ``data.lfw_subset()`` faces 0..79 (25x25, Labeled Faces in the Wild), upscaled
    (bicubic). Held out: its faces 80..99 and, when ``visp-images-data`` is installed, the 30 face boxes of the
    Solvay 1927 photo (40-80 px, resized): faces from another source than training. Grey because both sources are.
    """
    from skimage import data

    def resized(face: np.ndarray) -> Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(face, dtype=np.float32))[None, None]
        return F.interpolate(tensor, size=(size, size), mode="bicubic", align_corners=False,
                             antialias=min(face.shape) > size)[0].clamp(0.0, 1.0)

    lfw = data.lfw_subset()[:100]  # the first 100 are faces, the next 100 are not
    train = [resized(face) for face in lfw[:LFW_TRAIN]]
    test = [resized(face) for face in lfw[LFW_TRAIN:]] + [resized(face) for face in _solvay_faces()]
    return {"train": torch.stack(train), "test": torch.stack(test)}


@dataclass(frozen=True)
class FaceOptions:
    """Options of ``inpaint-faces`` (``data.options``)."""

    size: int = 64
    """Side of the face images (pixels)."""
    mask: MaskKind = "centre"
    hole: int = 0
    """Side of the centre hole; 0 means ``size // 2``."""
    flip: bool = True
    """Random horizontal flips (training only)."""

    def __post_init__(self) -> None:
        if self.size < 8 or self.hole < 0 or self.hole > self.size:
            raise ValueError(f"need size >= 8 and 0 <= hole <= size, got size {self.size}, hole {self.hole}")


class Faces:
    """Random faces of :func:`load_face_images` with inpainting holes, ``(B, 1, size, size)`` items."""

    def __init__(self, images: Tensor, options: FaceOptions, training: bool) -> None:
        self.images = images
        self.options = options
        self.training = training

    def sample(self, count: int, generator: torch.Generator, device: torch.device | str = "cpu") -> ImageBatch:
        target = self.images[torch.randint(len(self.images), (count,), generator=generator)]
        if self.training and self.options.flip:
            flip = torch.rand(count, generator=generator) < 0.5
            target = torch.where(flip[:, None, None, None], target.flip(-1), target)
        hole = self.options.hole or self.options.size // 2
        mask = random_masks(self.options.mask, count, self.options.size, hole, generator)
        return ImageBatch((target * (1 - mask)).to(device), target.to(device), mask.to(device))


def face_datasets(options: dict[str, Any]) -> tuple[Faces, Faces]:
    """``(training, held-out)`` :class:`Faces`, options from ``data.options`` (keys of :class:`FaceOptions`)."""
    from rlreg.config import from_dict

    parsed = from_dict(FaceOptions, options, "data.options.")
    faces = load_face_images(parsed.size)
    return Faces(faces["train"], parsed, True), Faces(faces["test"], parsed, False)
