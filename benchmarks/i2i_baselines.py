"""Baselines of the inpainting and translation benchmarks: classical inpainting and one-step networks.

Images are ``(B, C, H, W)`` float tensors in ``[0, 1]``, masks ``(B, 1, H, W)`` in ``{0, 1}`` (1 = the hole), as in
:mod:`rlreg.tasks.image`. Every inpainting method returns the input outside the hole exactly.

* Classical inpainting (:data:`CLASSICAL`): OpenCV's Telea (fast marching, Telea, J. Graphics Tools 2004) and
  Navier-Stokes (Bertalmio et al., CVPR 2001) ``cv2.inpaint`` with a :data:`CV2_RADIUS` of 9 pixels, scikit-image's
  biharmonic inpainting (Damelin & Hoang 2018), a per-channel mean of the known pixels, and the push-pull
  (pyramid) fill the inpainting task starts its episodes from.
* One-step networks (the paper's argument against single-step models): a U-Net (:class:`UNet`, pix2pix-style 4x4
  stride-2 encoder, Isola et al., CVPR 2017) whose width is matched to a parameter count (:func:`match_unet`: the
  step-wise agent's planner + actor), trained for a wall-clock budget (:func:`train_onestep`) with an L1 loss plus
  the SNGAN hinge adversarial loss of the image tasks' spectrally normalised PatchGAN (Miyato et al., ICLR 2018;
  :mod:`rlreg.tasks.adversarial`), the agent's auxiliary loss:
  for inpainting the L1 is taken in the hole and the prediction is pasted into it; for translation (pix2pix) the
  discriminator is conditioned on the source map.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlreg.io import save_torch
from rlreg.tasks.adversarial import Adversary
from rlreg.tasks.image import ImageBatch

__all__ = [
    "CLASSICAL",
    "CV2_RADIUS",
    "OneStepSettings",
    "TrainedOneStep",
    "UNet",
    "UNetConfig",
    "count_parameters",
    "inpaint_biharmonic",
    "inpaint_mean",
    "inpaint_navier_stokes",
    "inpaint_pushpull",
    "inpaint_telea",
    "load_onestep",
    "match_unet",
    "predict_onestep",
    "train_onestep",
]

Kind = Literal["inpainting", "translation"]

CV2_RADIUS = 9
"""``inpaintRadius`` of ``cv2.inpaint`` (pixels): the neighbourhood each filled pixel is estimated from. OpenCV's
sample uses 3; a 64^2 centre hole fills better with a wider one, at a cost in time (docs/decisions.md, "cv2.inpaint
radius 9 in the inpainting benchmark")."""


# ---------------------------------------------------------------------------------------------------- classical
def _per_item(image: Tensor, mask: Tensor, fill: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Tensor:
    """Run ``fill(image (H, W, C) float64, hole (H, W) bool) -> (H, W, C)`` per item; paste its hole back."""
    if image.ndim != 4 or mask.shape != (image.shape[0], 1, *image.shape[2:]):
        raise ValueError(f"need image (B, C, H, W) and mask (B, 1, H, W), got {tuple(image.shape)}, "
                         f"{tuple(mask.shape)}")
    out = []
    for item, hole in zip(image.detach().cpu().double().numpy(), mask.detach().cpu().numpy() > 0.5, strict=True):
        filled = fill(np.ascontiguousarray(item.transpose(1, 2, 0)), hole[0])
        out.append(torch.from_numpy(np.asarray(filled, dtype=np.float64).reshape(item.shape[1:] + item.shape[:1])))
    result = torch.stack(out).permute(0, 3, 1, 2).to(image).clamp(0, 1)
    return torch.where(mask.bool().expand_as(image), result, image)


def _cv2_inpaint(method: int) -> Callable[[Tensor, Tensor], Tensor]:
    def run(image: Tensor, mask: Tensor) -> Tensor:
        import cv2

        def fill(item: np.ndarray, hole: np.ndarray) -> np.ndarray:
            # 8 bits for grey as well: OpenCV 5's 32-bit float path returns values far outside [0, 1] for [0, 1]
            # inputs, and 8 bits score within 0.2 dB of its 16-bit path
            levels = np.round(item * 255).astype(np.uint8)
            return cv2.inpaint(levels, hole.astype(np.uint8), CV2_RADIUS, method) / 255.0

        return _per_item(image, mask, fill)

    return run


def inpaint_telea(image: Tensor, mask: Tensor) -> Tensor:
    """OpenCV's fast-marching inpainting (Telea 2004), radius :data:`CV2_RADIUS`, through 8 bits."""
    return _cv2_inpaint(1)(image, mask)  # cv2.INPAINT_TELEA


def inpaint_navier_stokes(image: Tensor, mask: Tensor) -> Tensor:
    """OpenCV's Navier-Stokes inpainting (Bertalmio et al. 2001), radius :data:`CV2_RADIUS`, through 8 bits."""
    return _cv2_inpaint(0)(image, mask)  # cv2.INPAINT_NS


def inpaint_biharmonic(image: Tensor, mask: Tensor) -> Tensor:
    """scikit-image's biharmonic inpainting, every channel with the same hole (``channel_axis=-1``)."""
    from skimage.restoration import inpaint_biharmonic as biharmonic

    return _per_item(image, mask, lambda item, hole: biharmonic(item, hole, channel_axis=-1))


def inpaint_mean(image: Tensor, mask: Tensor) -> Tensor:
    """Fill the hole with each item's per-channel mean of the known pixels."""
    known = 1.0 - mask.float()
    mean = (image * known).sum((2, 3), keepdim=True) / known.sum((2, 3), keepdim=True).clamp_min(1.0)
    return torch.where(mask.bool().expand_as(image), mean.expand_as(image), image)


def inpaint_pushpull(image: Tensor, mask: Tensor) -> Tensor:
    """The push-pull fill that starts the inpainting task's episodes (:func:`rlreg.tasks.inpainting.pushpull_fill`)."""
    from rlreg.tasks.inpainting import pushpull_fill

    return torch.where(mask.bool().expand_as(image), pushpull_fill(image, mask), image)


CLASSICAL: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mean fill": inpaint_mean,
    "push-pull": inpaint_pushpull,
    "Telea (OpenCV)": inpaint_telea,
    "Navier-Stokes (OpenCV)": inpaint_navier_stokes,
    "biharmonic (scikit-image)": inpaint_biharmonic,
}
"""Row name -> classical inpainting ``(image, mask) -> image``."""


# ---------------------------------------------------------------------------------------------------- networks
@dataclass(frozen=True)
class UNetConfig:
    """A U-Net's sizes; saved in its checkpoint."""

    in_channels: int
    """Input channels (inpainting: image + mask; translation: the source map's)."""
    out_channels: int
    """Image channels predicted."""
    base_width: float = 32.0
    """Channels of level 1; level ``k`` has ``round(base_width * 2**(k-1))``, capped at 8x (pix2pix's 64-512)."""
    depth: int = 4
    """Stride-2 downsamplings; inputs are padded to a multiple of ``2**depth``."""

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(max(1, round(self.base_width * 2 ** min(level, 3))) for level in range(self.depth))


class UNet(nn.Module):
    """One-step image-to-image U-Net ``(N, in_channels, H, W) -> (N, out_channels, H, W)`` in ``[0, 1]``.

    Encoder: 4x4 stride-2 convolutions (pix2pix, and RL-I2IT's planner), instance norm, LeakyReLU 0.2. Decoder:
    nearest upsampling, concatenation of the encoder feature of the same size, 3x3 convolution, instance norm,
    ReLU; a last 3x3 convolution and a sigmoid. Any ``H, W``: reflect-padded to a multiple of ``2**depth``,
    cropped back.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.widths
        self.down = nn.ModuleList()
        channels = config.in_channels
        for level, width in enumerate(widths):
            layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, stride=2, padding=1)]
            if level > 0:
                layers.append(nn.InstanceNorm2d(width, affine=True))
            layers.append(nn.LeakyReLU(0.2))
            self.down.append(nn.Sequential(*layers))
            channels = width
        self.up = nn.ModuleList()
        skips = [config.in_channels, *widths[:-1]]
        for skip in reversed(skips):
            width = max(skip, widths[0])
            self.up.append(nn.Sequential(nn.Conv2d(channels + skip, width, 3, padding=1),
                                         nn.InstanceNorm2d(width, affine=True), nn.ReLU()))
            channels = width
        self.head = nn.Conv2d(channels, config.out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_channels, H, W)`` -> ``(N, out_channels, H, W)`` in ``[0, 1]``."""
        height, width = x.shape[2:]
        multiple = 2**self.config.depth
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        mode = "reflect" if min(height, width) > max(pad_h, pad_w) else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        features = [x]
        for block in self.down:
            features.append(block(features[-1]))
        y = features.pop()
        for block in self.up:
            skip = features.pop()
            y = block(torch.cat([F.interpolate(y, size=skip.shape[2:], mode="nearest"), skip], 1))
        return torch.sigmoid(self.head(y))[..., :height, :width]


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def match_unet(parameters: int, in_channels: int, out_channels: int, depth: int = 4,
               tolerance: float = 0.05) -> UNetConfig:
    """The :class:`UNetConfig` whose parameter count is closest to ``parameters`` (the step-wise agent's planner +
    actor), searching ``base_width`` in quarter-channel steps.

    Raises:
        ValueError: no width comes within ``tolerance`` (relative) of ``parameters``.
    """
    def size(base: float) -> int:
        return count_parameters(UNet(UNetConfig(in_channels, out_channels, base, depth)))

    low, high = 1.0, 1.0
    while size(high) < parameters:
        low, high = high, high * 2
        if high > 4096:
            raise ValueError(f"no U-Net of depth {depth} reaches {parameters:,} parameters")
    while high - low > 0.25:
        middle = (low + high) / 2
        low, high = (middle, high) if size(middle) < parameters else (low, middle)
    best = min((low, high), key=lambda base: abs(size(base) - parameters))
    found = size(best)
    if abs(found - parameters) > tolerance * parameters:
        raise ValueError(f"the closest U-Net of depth {depth} has {found:,} parameters, more than "
                         f"{tolerance:.0%} away from {parameters:,}; change its depth")
    return UNetConfig(in_channels, out_channels, best, depth)


# ---------------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class OneStepSettings:
    """Losses and optimisers of a one-step network; saved in its checkpoint. The loss fields mirror the image
    tasks' :class:`~rlreg.tasks.image.ImageTaskConfig`, so the baseline is trained with the agent's auxiliary loss."""

    l1_weight: float = 1.0
    """Weight of the L1 reconstruction loss (inpainting: inside the hole; translation: whole image)."""
    adv_weight: float = 0.01
    """Weight of the SNGAN hinge generator loss ``-mean D(fake)``."""
    disc_widths: tuple[int, ...] = (32, 64, 128)
    """Channels per 4x4 stride-2 level of the PatchGAN discriminator."""
    disc_lr: float = 2e-4
    """Adam step of the discriminator."""
    lr: float = 2e-4
    """Adam step of the U-Net, betas (0.5, 0.999) (pix2pix)."""
    batch_size: int = 16
    checkpoint_seconds: float = 120.0
    """Wall time between checkpoints, so an interrupted run resumes."""

    def __post_init__(self) -> None:
        if isinstance(self.disc_widths, list):
            object.__setattr__(self, "disc_widths", tuple(self.disc_widths))


@dataclass
class TrainedOneStep:
    """A one-step network and its training record."""

    kind: Kind
    net: UNet
    settings: OneStepSettings
    seconds: float
    """Training wall time, all resumed chunks together."""
    updates: int
    seed: int

    @property
    def parameters(self) -> int:
        return count_parameters(self.net)


def _network_input(kind: Kind, batch: ImageBatch) -> Tensor:
    """Inpainting: ``[image with its hole push-pull filled, mask]``, the start the step-wise agent gets too
    (:func:`rlreg.tasks.inpainting.pushpull_fill`), so both see the same information; translation: the source map."""
    if kind == "inpainting":
        from rlreg.tasks.inpainting import pushpull_fill

        assert batch.mask is not None
        mask = (batch.mask > 0.5).to(batch.source.dtype)
        return torch.cat([pushpull_fill(batch.source * (1 - mask), mask), mask], 1)
    return batch.source


def predict_onestep(kind: Kind, net: UNet, batch: ImageBatch) -> Tensor:
    """The one-step output ``(B, C, H, W)``: translation, the network's image; inpainting, the input with the
    network's prediction pasted into the hole (outside it, the input exactly)."""
    out = net(_network_input(kind, batch))
    if kind == "inpainting":
        assert batch.mask is not None
        return torch.where(batch.mask.bool().expand_as(out), out, batch.source)
    return out


def _checkpoint(trained: TrainedOneStep, adversary: Adversary, optimiser: torch.optim.Optimizer,
                generator: torch.Generator) -> dict[str, Any]:
    return {"format": 1, "kind": trained.kind, "unet": asdict(trained.net.config), "settings": asdict(trained.settings),
            "net": trained.net.state_dict(), "adversary": adversary.state_dict(), "optimiser": optimiser.state_dict(),
            "seconds": trained.seconds, "updates": trained.updates, "seed": trained.seed,
            "rng": {"torch": torch.get_rng_state(), "data": generator.get_state()}}


def load_onestep(path: str | Path) -> TrainedOneStep:
    """Rebuild a one-step network saved by :func:`train_onestep` (``weights_only=True``)."""
    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    net = UNet(UNetConfig(**data["unet"]))
    net.load_state_dict(data["net"])
    return TrainedOneStep(data["kind"], net.eval(), OneStepSettings(**data["settings"]), data["seconds"],
                          data["updates"], data["seed"])


def train_onestep(kind: Kind, train_source: Any, budget_seconds: float, seed: int, threads: int | None,
                  checkpoint: str | Path, unet: UNetConfig, settings: OneStepSettings = OneStepSettings()
                  ) -> TrainedOneStep:
    """Train a one-step U-Net for ``budget_seconds`` of wall time (all resumed calls together), on the CPU.

    Each update draws ``settings.batch_size`` items from ``train_source`` (``sample(count, generator, device)``
    -> :class:`ImageBatch`), takes one discriminator step of the image tasks' :class:`~rlreg.tasks.adversarial.
    Adversary` (SNGAN PatchGAN, hinge loss) and one U-Net step on ``l1_weight * L1 + adv_weight * (-mean D(fake))``,
    as the tasks' auxiliary loss does. The discriminator sees ``[image, mask]`` (inpainting) or ``[source, image]``
    (translation, conditional as in pix2pix), as the tasks' does.

    ``checkpoint`` is written every ``settings.checkpoint_seconds`` and at the end (a ``weights_only``-safe dict:
    configs, weights, optimiser and random states, seconds used). If it exists, training resumes from it, and a
    finished one is returned as it is.

    Args:
        kind: ``inpainting`` or ``translation``.
        train_source: the training data source.
        budget_seconds: wall-clock training budget.
        seed: seeds the weights, the data draws and the discriminator.
        threads: torch intra-op threads during training (``None``: leave as is).
        checkpoint: the checkpoint file.
        unet: the network's sizes (:func:`match_unet`).
        settings: losses and optimiser.
    """
    checkpoint = Path(checkpoint)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        net = UNet(unet)
        condition = 1 if kind == "inpainting" else unet.in_channels
        adversary = Adversary(unet.out_channels + condition, settings.disc_widths, settings.disc_lr)
        optimiser = torch.optim.Adam(net.parameters(), lr=settings.lr, betas=(0.5, 0.999))
        generator = torch.Generator().manual_seed(seed + 1)
        trained = TrainedOneStep(kind, net, settings, 0.0, 0, seed)
        if checkpoint.exists():
            data = torch.load(checkpoint, map_location="cpu", weights_only=True)
            if data["unet"] != asdict(unet) or data["kind"] != kind or data["seed"] != seed:
                raise ValueError(f"{checkpoint}: another network, task or seed; delete it or pass another path")
            net.load_state_dict(data["net"])
            adversary.load_state_dict(data["adversary"])
            optimiser.load_state_dict(data["optimiser"])
            torch.set_rng_state(data["rng"]["torch"])
            generator.set_state(data["rng"]["data"])
            trained.seconds, trained.updates = data["seconds"], data["updates"]
        net.train()
        start, saved = time.perf_counter() - trained.seconds, time.perf_counter()
        while trained.seconds < budget_seconds:
            batch = train_source.sample(settings.batch_size, generator, "cpu")
            condition_map = batch.mask if kind == "inpainting" else batch.source
            assert condition_map is not None
            fake = predict_onestep(kind, net, batch)

            def critic_input(image: Tensor, batch: ImageBatch = batch) -> Tensor:
                if kind == "inpainting":
                    assert batch.mask is not None
                    return torch.cat([image, batch.mask], 1)
                return torch.cat([batch.source, image], 1)

            adversarial = torch.zeros(())
            if settings.adv_weight > 0:
                adversary.update(critic_input(batch.target), critic_input(fake))
                adversarial = adversary.generator_loss(critic_input(fake))
            if kind == "inpainting":
                assert batch.mask is not None
                hole = batch.mask.expand_as(fake)
                l1 = ((fake - batch.target).abs() * hole).sum() / hole.sum().clamp_min(1.0)
            else:
                l1 = (fake - batch.target).abs().mean()
            g_loss = settings.l1_weight * l1 + settings.adv_weight * adversarial
            optimiser.zero_grad(set_to_none=True)
            g_loss.backward()
            optimiser.step()
            trained.updates += 1
            trained.seconds = time.perf_counter() - start
            if not math.isfinite(g_loss.item()):
                raise FloatingPointError(f"one-step training diverged at update {trained.updates}")
            if time.perf_counter() - saved >= settings.checkpoint_seconds:
                save_torch(_checkpoint(trained, adversary, optimiser, generator), checkpoint)
                saved = time.perf_counter()
        save_torch(_checkpoint(trained, adversary, optimiser, generator), checkpoint)
        net.eval()
        return trained
    finally:
        torch.set_num_threads(previous_threads)
