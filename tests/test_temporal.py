"""Optical flow, backward warping, the forward-backward consistency mask and the warping error: closed-form
answers on translated textures and synthetic flows."""

from __future__ import annotations

import numpy as np
import pytest

from rlreg.metrics.temporal import TemporalError, backward_warp, consistency_mask, optical_flow, warping_error

SIZE = 64
SHIFT = (3, 2)
"""Content motion between consecutive frames: the scene moves 3 px left and 2 px up."""


def _texture(side: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB texture in [0, 1] (blurred noise: trackable by optical flow)."""
    import cv2

    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.random((side, side, 3)).astype(np.float32), (0, 0), 2)
    return (texture - texture.min()) / (texture.max() - texture.min())


def _panning(frames: int) -> list[np.ndarray]:
    """Windows of a larger texture, moving by :data:`SHIFT` each frame: frame ``t`` at ``p`` shows frame ``t - 1``
    at ``p + SHIFT``."""
    texture = _texture(SIZE + 40)
    dx, dy = SHIFT
    return [texture[10 + dy * t:10 + dy * t + SIZE, 10 + dx * t:10 + dx * t + SIZE] for t in range(frames)]


def test_flow_of_a_translation_is_the_translation() -> None:
    previous, current = _panning(2)
    flow = optical_flow(current, previous)
    assert flow.shape == (SIZE, SIZE, 2) and flow.dtype == np.float32
    inner = flow[8:-8, 8:-8].reshape(-1, 2)
    np.testing.assert_allclose(np.median(inner, axis=0), SHIFT, atol=0.1)
    assert np.abs(inner - SHIFT).max() < 0.5
    back = optical_flow(previous, current)  # the reverse flow, also from uint8 frames
    np.testing.assert_allclose(np.median(back[8:-8, 8:-8].reshape(-1, 2), axis=0), (-3, -2), atol=0.1)
    uint8 = optical_flow((current * 255).round().astype(np.uint8), (previous * 255).round().astype(np.uint8))
    np.testing.assert_allclose(uint8, flow, atol=1e-4)


def test_backward_warp_golden_values() -> None:
    image = np.arange(5 * 6, dtype=np.float32).reshape(5, 6)  # value = 6 row + column
    np.testing.assert_array_equal(backward_warp(image, np.zeros((5, 6, 2), np.float32)), image)
    half = np.zeros((5, 6, 2), np.float32)
    half[..., 0], half[..., 1] = 0.5, 1.0
    warped = backward_warp(image, half)
    np.testing.assert_allclose(warped[:4, :5], image[:4, :5] + 6 + 0.5)  # bilinear between columns, next row
    np.testing.assert_allclose(warped[4, :5], image[4, :5] + 0.5)  # beyond the last row: replicated
    rgb = np.stack([image, 2 * image, 3 * image], -1).astype(np.uint8)
    assert backward_warp(rgb, half).dtype == np.uint8 and backward_warp(rgb, half).shape == (5, 6, 3)
    with pytest.raises(ValueError, match="flow must be"):
        backward_warp(image, np.zeros((5, 5, 2), np.float32))


def test_warping_the_previous_frame_along_the_flow_rebuilds_the_current_one() -> None:
    previous, current = _panning(2)
    rebuilt = backward_warp(previous, optical_flow(current, previous))
    assert np.abs(rebuilt - current)[4:-4, 4:-4].max() < 0.02


def test_consistency_mask_excludes_an_occluded_region() -> None:
    forward = np.zeros((32, 32, 2), np.float32)
    forward[..., 0] = 2.0
    backward = -forward
    assert consistency_mask(forward, backward).all()
    occluded = backward.copy()
    occluded[10:20, 12:22] = 0.0  # whatever lands here in frame b does not come back: occluded
    mask = consistency_mask(forward, occluded)
    assert not mask[10:20, 10:20].any()  # pixels p with p + (2, 0) inside the occluded block
    assert mask[:8].all() and mask[24:].all() and mask[10:20, :8].all() and mask[10:20, 24:].all()


def test_consistency_mask_excludes_motion_boundaries() -> None:
    forward = np.zeros((32, 32, 2), np.float32)
    forward[:, 16:, 0] = 4.0  # the right half moves, the left half stands still
    backward = np.zeros_like(forward)
    backward[:, 20:, 0] = -4.0
    mask = consistency_mask(forward, backward)
    assert not mask[:, 15:17].any()  # the flow's discontinuity
    assert mask[:, :14].all() and mask[:, 18:].all()


def test_warping_error_is_tiny_for_a_consistent_video_and_large_for_noise() -> None:
    content = _panning(4)
    steady = warping_error(content, content)
    assert isinstance(steady, TemporalError)
    assert len(steady.per_frame) == 3 and steady.mean == pytest.approx(np.mean(steady.per_frame))
    assert steady.mean < 0.005
    assert 0.0 <= steady.masked_fraction < 0.1
    stylised = [np.clip(frame ** 0.5 * 0.9, 0, 1) for frame in content]  # a per-pixel stylisation moves along
    assert warping_error(stylised, content).mean < 0.005
    rng = np.random.default_rng(1)
    noise = [rng.random((SIZE, SIZE, 3)).astype(np.float32) for _ in content]
    flicker = warping_error(noise, content)
    assert flicker.mean > 0.3  # independent uniform noise: 3 channels * 1/6
    assert flicker.mean > 50 * steady.mean
    uint8 = warping_error([(frame * 255).round().astype(np.uint8) for frame in noise], content)
    assert uint8.mean == pytest.approx(flicker.mean, rel=0.02)


def test_warping_error_checks_its_input() -> None:
    content = _panning(3)
    with pytest.raises(ValueError, match="at least 2 frames"):
        warping_error(content[:1], content[:1])
    with pytest.raises(ValueError, match="differ in length"):
        warping_error(content[:2], content)
    with pytest.raises(ValueError, match="differ in size"):
        warping_error([frame[:32] for frame in content], content)
