"""DICOM Deformable Spatial Registration objects (DSRO): writer, header reader of the registered
series, and field reader.

A DSRO stores the field as a deformation grid in LPS mm (DICOM's patient frame is ITK's), referencing the fixed and
moving series by their UIDs. pydicom is imported only inside these functions, so the other formats work without it.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rlreg import __version__
from rlreg.formats.common import check_field
from rlreg.io import Geometry, InputError, atomic_output

if TYPE_CHECKING:  # pydicom is imported only by the DICOM functions, so the other formats work without it
    from pydicom.dataset import Dataset

__all__ = ["DSRO_SOP_CLASS_UID", "DicomSeriesRef", "check_body_part", "dicom_series_ref", "read_dicom_field",
           "write_dicom"]

DSRO_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.3"
"""Deformable Spatial Registration Storage (DICOM PS3.4; ``pydicom.uid.DeformableSpatialRegistrationStorage``)."""


@dataclass
class DicomSeriesRef:
    """What a DSRO needs to know about an image series it registers (read by :func:`dicom_series_ref`).

    Attributes:
        patient_id, patient_name: Patient module values (``PatientName`` as its ``^``-separated string).
        study_instance_uid, series_instance_uid, frame_of_reference_uid: the series' identifying UIDs.
        sop_class_uid: SOP class of the series' images (e.g. CT Image Storage).
        sop_instance_uids: the images' SOP instance UIDs, in ``InstanceNumber`` order.
        patient_birth_date ... referring_physician_name: the rest of the Patient / General Study attributes, copied
            into the DSRO when this is the fixed series so that it joins the fixed study consistently.
        series_number: the series' ``SeriesNumber`` (``None`` when absent or empty).
        body_part_examined: ``BodyPartExamined`` (PS3.16 Annex L defined term, e.g. ``BRAIN``; ``""`` when absent).
        laterality: ``R`` or ``L``: the series' ``Laterality``, else its images' ``ImageLaterality`` when that is
            ``R`` or ``L``; ``""`` otherwise (absent, empty, or ``B``/``U`` image laterality).
    """

    patient_id: str
    patient_name: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    sop_instance_uids: list[str] = field(default_factory=list)
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_date: str = ""
    study_time: str = ""
    study_id: str = ""
    accession_number: str = ""
    referring_physician_name: str = ""
    series_number: int | None = None
    body_part_examined: str = ""
    laterality: str = ""


_CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")
"""A non-empty DICOM Code String value (PS3.5 Table 6.2-1): upper-case letters, digits, space and underscore, at most
16 characters."""


def check_body_part(body_part: str | None, laterality: str | None = None) -> None:
    """Refuse a ``BodyPartExamined`` / ``Laterality`` pair that a DSRO cannot carry (one-line :class:`InputError`).

    ``body_part`` must be a DICOM Code String (PS3.5 Table 6.2-1), normally a defined term of PS3.16 Annex L such as
    ``BRAIN``, ``HEAD``, ``CHEST``, ``ABDOMEN`` or ``KNEE``; ``laterality`` is ``R`` or ``L`` (the enumerated values of
    the General Series Module's ``Laterality``, PS3.3 C.7.3.1) and only makes sense beside a body part.
    """
    if body_part is not None and not _CODE_STRING.fullmatch(body_part):
        raise InputError(f"--body-part {body_part!r}: not a DICOM body part term; give upper-case letters, digits or "
                         "underscores, at most 16 (e.g. BRAIN, HEAD, CHEST, ABDOMEN, PELVIS, KNEE)")
    if laterality is not None and laterality not in ("R", "L"):
        raise InputError(f"--laterality {laterality!r}: give R or L (the side of a paired body part)")


def dicom_series_ref(directory: str | os.PathLike[str], series_instance_uid: str | None = None) -> DicomSeriesRef:
    """Read the identifiers of one DICOM series from the headers of the files in ``directory`` (pixels skipped).

    Files that are not DICOM, or have no SOP/series UIDs (e.g. a DICOMDIR), are ignored. Instances are listed in
    ``InstanceNumber`` order, then by file name.

    Args:
        directory: a folder holding the series (not searched recursively), or one file of the series.
        series_instance_uid: which series to take when the folder holds several.

    Raises:
        InputError: no DICOM series, several series and no ``series_instance_uid``, the requested series is
            absent, or the series has no Frame of Reference UID (a DSRO needs it).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    directory = Path(directory)
    if directory.is_file():
        try:
            header = pydicom.dcmread(directory, stop_before_pixels=True)
        except (InvalidDicomError, OSError) as err:
            raise InputError(f"{directory}: not a DICOM file ({err}); give a DICOM series folder") from None
        series_instance_uid = series_instance_uid or header.get("SeriesInstanceUID")
        directory = directory.parent
    if not directory.is_dir():
        raise InputError(f"{directory}: not a folder; give the folder that holds the DICOM series")
    series: dict[str, list[tuple[int, str, pydicom.Dataset]]] = {}
    for file in sorted(p for p in directory.iterdir() if p.is_file()):
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue
        if "SOPInstanceUID" not in header or "SeriesInstanceUID" not in header:
            continue
        number = int(header.get("InstanceNumber") or 0)
        series.setdefault(str(header.SeriesInstanceUID), []).append((number, file.name, header))
    if not series:
        raise InputError(f"{directory}: no DICOM image files found; give the folder of one DICOM series")
    if series_instance_uid is None:
        if len(series) > 1:
            raise InputError(f"{directory}: holds {len(series)} DICOM series ({', '.join(sorted(series))}); "
                             "pass series_instance_uid or put one series per folder")
        series_instance_uid = next(iter(series))
    if series_instance_uid not in series:
        raise InputError(f"{directory}: has no series {series_instance_uid} (found {', '.join(sorted(series))})")
    instances = sorted(series[series_instance_uid], key=lambda item: (item[0], item[1]))
    first = instances[0][2]
    frame_of_reference = str(first.get("FrameOfReferenceUID", ""))
    if not frame_of_reference:
        raise InputError(f"{directory}: series {series_instance_uid} has no FrameOfReferenceUID, so a spatial "
                         "registration cannot refer to it; use images with a patient frame of reference")

    def text(keyword: str) -> str:
        value = first.get(keyword)
        return "" if value is None else str(value).strip()

    laterality = text("Laterality") or text("ImageLaterality")
    series_number = text("SeriesNumber")

    return DicomSeriesRef(
        patient_id=text("PatientID"), patient_name=text("PatientName"),
        study_instance_uid=text("StudyInstanceUID"), series_instance_uid=series_instance_uid,
        frame_of_reference_uid=frame_of_reference, sop_class_uid=text("SOPClassUID"),
        sop_instance_uids=[str(header.SOPInstanceUID) for _, _, header in instances],
        patient_birth_date=text("PatientBirthDate"), patient_sex=text("PatientSex"),
        study_date=text("StudyDate"), study_time=text("StudyTime"), study_id=text("StudyID"),
        accession_number=text("AccessionNumber"), referring_physician_name=text("ReferringPhysicianName"),
        series_number=int(series_number) if series_number.lstrip("+-").isdigit() else None,
        body_part_examined=text("BodyPartExamined"), laterality=laterality if laterality in ("R", "L") else "")


def _right_handed(u: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Geometry]:
    """The same field on a right-handed grid: if ``det(R) < 0``, reverse tensor axis 0 (ITK ``k``).

    The DSRO grid has only row/column cosines; its slice axis is their cross product. Reversing ``k`` moves the
    origin to the last slice, ``o + R[:, 2] s_k (n_k - 1)``, and negates ``R[:, 2]``; the vectors are physical LPS
    and do not change.

    Raises:
        ValueError: the direction matrix is not orthonormal (a sheared grid has no DICOM orientation).
    """
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-5):
        raise ValueError("the fixed grid is sheared (direction matrix not orthonormal); a DICOM registration grid "
                         "needs orthogonal axes: resample the fixed image onto an orthogonal grid first")
    if np.linalg.det(direction) > 0:
        return u, geometry
    slices, slice_spacing = geometry.size[0], geometry.spacing[0]
    origin = np.asarray(geometry.origin) + direction[:, 2] * slice_spacing * (slices - 1)
    direction[:, 2] *= -1
    flipped = Geometry(size=geometry.size, spacing=geometry.spacing, origin=tuple(float(v) for v in origin),
                       direction=tuple(float(v) for v in direction.ravel()))
    return u[::-1], flipped


def _ds(values: np.ndarray | Sequence[float]) -> list[str]:
    """Numbers as DICOM Decimal Strings (at most 16 characters each)."""
    from pydicom.valuerep import format_number_as_ds

    return [format_number_as_ds(float(v)) for v in np.ravel(values)]


def _identity_matrix_item() -> Dataset:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.FrameOfReferenceTransformationMatrix = _ds(np.eye(4))
    item.FrameOfReferenceTransformationMatrixType = "RIGID"
    return item


def _referenced_series_item(ref: DicomSeriesRef) -> Dataset:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.SeriesInstanceUID = ref.series_instance_uid
    item.ReferencedInstanceSequence = _instance_references(ref)
    return item


def _instance_references(ref: DicomSeriesRef) -> list:
    """One ``(ReferencedSOPClassUID, ReferencedSOPInstanceUID)`` item per instance of a series."""
    from pydicom.dataset import Dataset

    items = []
    for uid in ref.sop_instance_uids:
        item = Dataset()
        item.ReferencedSOPClassUID = ref.sop_class_uid
        item.ReferencedSOPInstanceUID = uid
        items.append(item)
    return items


def _anatomy(body_part: str | None, laterality: str | None, refs: Sequence[DicomSeriesRef | None]) -> tuple[str, str]:
    """``(BodyPartExamined, Laterality)`` of the DSRO: the given body part, else the first referenced series' that has
    one (the fixed series before the moving one); the laterality goes with where the body part came from, unless
    given. ``("", "")`` when no body part is known."""
    if body_part is None:
        source = next((ref for ref in refs if ref is not None and ref.body_part_examined), None)
        if source is not None:
            return source.body_part_examined, laterality or source.laterality
        return "", laterality or ""
    return body_part, laterality or ""


def write_dicom(u: np.ndarray, geometry: Geometry, path: str | os.PathLike[str],
                fixed_ref: DicomSeriesRef | None = None, moving_ref: DicomSeriesRef | None = None, *,
                body_part: str | None = None, laterality: str | None = None) -> Path:
    """Write a DICOM Deformable Spatial Registration object (DSRO, PS3.3 A.39.2 / C.20.3) with pydicom.

    The DSRO's own Frame of Reference (the Registered RCS) is the fixed one and ``SourceFrameOfReferenceUID`` the
    moving one: a fixed point ``p`` (DICOM patient coordinates = LPS mm) samples the moving image at
    ``M_post(M_pre p + D(M_pre p))`` with identity ``M_pre``/``M_post`` here, i.e. exactly rlreg's ``p + u(p)``
    (C.20.3.1.1). The grid is ``geometry``'s, made right-handed (see below); ``VectorGridData`` holds ``u`` as
    little-endian float32, ``(x, y, z)`` interleaved, x fastest, then y, then z (C.20.3.1.3).

    DSRO grids only carry row and column cosines, the slice axis being their cross product, so a left-handed
    ``geometry`` (``det(direction) < 0``) is stored with its slowest axis (tensor axis 0) reversed; the grid points
    and vectors are the same physical ones.

    Identification, so that the object validates (``dciodvfy`` of dicom3tools: no error, no warning) and joins the
    right study:

    * Patient and study: the fixed series' (``PatientID`` and ``StudyID`` as it has them, even empty, so that every
      instance of the study agrees). Without a fixed series the DSRO opens a new study: ``StudyID`` ``"1"``, an
      empty ``PatientName`` and a generated ``PatientID`` ``RLREG-<16 hex digits>`` (Type 2 values that the
      patient, study and series records of a DICOMDIR need, PS3.3 Annex F; empty ones are valid but incomplete).
    * ``SeriesNumber``: one more than the largest of the referenced series of the DSRO's study, else 1.
    * ``BodyPartExamined`` and ``Laterality`` (General Series Module, PS3.3 C.7.3.1): ``body_part`` (a PS3.16 Annex L
      term), else the fixed series', else the moving series'; ``laterality`` (``R``/``L``), else the side of the
      series the body part came from. ``Laterality`` is Type 2C, required when the body part is paired (``KNEE``,
      ``BREAST``, ``EYE``, ``LUNG``, ``KIDNEY``...) and ``ImageLaterality`` is not sent, which a DSRO cannot send;
      it is written only when known, since dciodvfy refuses it beside an unpaired part (``BRAIN``, ``CHEST``).
      With no body part at all, the standard's encoding of "unknown" is written: no ``BodyPartExamined``, an empty
      ``Laterality`` (PS3.5 7.4.3-7.4.4: an empty Type 2 or 2C value is unknown), which is valid but draws a
      dciodvfy warning; ``rlreg register`` therefore asks for ``--body-part`` when the inputs do not name one.

    Args:
        u: ``(*S, 3)`` LPS mm pull-back displacements on ``geometry``.
        geometry: the fixed grid; 3D with an orthonormal direction.
        path: output file (``.dcm``).
        fixed_ref: the fixed series (from :func:`dicom_series_ref`): its FoR, patient and study are used, and its
            instances are referenced. Without it a new FoR, study and placeholder patient are written.
        moving_ref: the moving series: its FoR is the source FoR and its instances are the registered images.
            Without it a new source FoR is generated.
        body_part: ``BodyPartExamined`` replacing the series' (see above); checked by :func:`check_body_part`.
        laterality: ``R`` or ``L``, the side of a paired ``body_part``.

    Returns:
        The written path.

    Raises:
        ValueError: for a 2D field, a sheared grid, or a field that does not match the grid.
        InputError: a ``body_part`` or ``laterality`` that :func:`check_body_part` refuses.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    if geometry.ndim != 3:
        raise ValueError(f"DICOM deformable registration grids are 3D; got a {geometry.ndim}-D grid of size "
                         f"{geometry.size} (use --format l2r or the default warp.nii.gz for 2D images)")
    check_body_part(body_part, laterality)
    u, geometry = _right_handed(check_field(u, geometry), geometry)
    direction = np.asarray(geometry.direction).reshape(3, 3)
    now = datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    sop_instance_uid = generate_uid()

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = DSRO_SOP_CLASS_UID
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    # Patient and General Study: join the fixed study (the registration is expressed in the fixed FoR).
    ds.PatientName = fixed_ref.patient_name if fixed_ref else ""
    ds.PatientID = fixed_ref.patient_id if fixed_ref else f"RLREG-{uuid.uuid4().hex[:16].upper()}"
    ds.PatientBirthDate = fixed_ref.patient_birth_date if fixed_ref else ""
    ds.PatientSex = fixed_ref.patient_sex if fixed_ref else ""
    ds.StudyInstanceUID = fixed_ref.study_instance_uid if fixed_ref else generate_uid()
    ds.StudyDate = fixed_ref.study_date if fixed_ref else date
    ds.StudyTime = fixed_ref.study_time if fixed_ref else time
    ds.ReferringPhysicianName = fixed_ref.referring_physician_name if fixed_ref else ""
    ds.StudyID = fixed_ref.study_id if fixed_ref else "1"
    ds.AccessionNumber = fixed_ref.accession_number if fixed_ref else ""
    # General Series + Spatial Registration Series.
    ds.Modality = "REG"
    ds.SeriesInstanceUID = generate_uid()
    numbers = [ref.series_number for ref in (fixed_ref, moving_ref) if ref is not None and ref.series_number
               is not None and ref.study_instance_uid == ds.StudyInstanceUID]
    ds.SeriesNumber = max(numbers, default=0) + 1
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = "rlreg deformable registration"
    part, side = _anatomy(body_part, laterality, (fixed_ref, moving_ref))
    if part:
        ds.BodyPartExamined = part
    if side or not part:
        ds.Laterality = side
    # Frame of Reference: the Registered RCS is the fixed image's.
    ds.FrameOfReferenceUID = fixed_ref.frame_of_reference_uid if fixed_ref else generate_uid()
    ds.PositionReferenceIndicator = ""
    # General + Enhanced General Equipment.
    ds.Manufacturer = "rlreg"
    ds.ManufacturerModelName = "rlreg"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = __version__
    # Deformable Spatial Registration module with the Content Identification macro.
    ds.ContentDate, ds.ContentTime = date, time
    ds.InstanceNumber = 1
    ds.ContentLabel = "RLREG"
    ds.ContentDescription = "Dense pull-back displacement field (fixed -> moving), LPS mm"
    ds.ContentCreatorName = ""

    grid = Dataset()
    grid.ImagePositionPatient = _ds(geometry.origin)
    grid.ImageOrientationPatient = _ds(np.concatenate([direction[:, 0], direction[:, 1]]))
    grid.GridDimensions = [int(n) for n in geometry.size[::-1]]
    grid.GridResolution = [float(s) for s in geometry.spacing[::-1]]
    grid.VectorGridData = np.ascontiguousarray(u, dtype="<f4").tobytes()

    method = Dataset()
    method.CodeValue = "125024"
    method.CodingSchemeDesignator = "DCM"
    method.CodeMeaning = "Image Content-based Alignment"

    item = Dataset()
    item.SourceFrameOfReferenceUID = moving_ref.frame_of_reference_uid if moving_ref else generate_uid()
    if moving_ref is not None and moving_ref.sop_instance_uids:
        item.ReferencedImageSequence = _instance_references(moving_ref)
    item.RegistrationTypeCodeSequence = [method]
    item.PreDeformationMatrixRegistrationSequence = [_identity_matrix_item()]
    item.PostDeformationMatrixRegistrationSequence = [_identity_matrix_item()]
    item.DeformableRegistrationGridSequence = [grid]
    ds.DeformableRegistrationSequence = [item]

    # Common Instance Reference: series of this study directly, series of other studies grouped by study.
    same_study: list[Dataset] = []
    other_studies: dict[str, list[Dataset]] = {}
    seen = set()
    for ref in (fixed_ref, moving_ref):
        if ref is None or (ref.study_instance_uid, ref.series_instance_uid) in seen:
            continue
        seen.add((ref.study_instance_uid, ref.series_instance_uid))
        if ref.study_instance_uid == ds.StudyInstanceUID:
            same_study.append(_referenced_series_item(ref))
        else:
            other_studies.setdefault(ref.study_instance_uid, []).append(_referenced_series_item(ref))
    if same_study:
        ds.ReferencedSeriesSequence = same_study
    if other_studies:
        studies = []
        for study_uid, series_items in other_studies.items():
            study = Dataset()
            study.StudyInstanceUID = study_uid
            study.ReferencedSeriesSequence = series_items
            studies.append(study)
        ds.StudiesContainingOtherReferencedInstancesSequence = studies

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(DSRO_SOP_CLASS_UID)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with atomic_output(path) as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return Path(path)


def read_dicom_field(path: str | os.PathLike[str]) -> tuple[np.ndarray, Geometry]:
    """Read a DSRO's deformation grid back as ``(u, geometry)`` in rlreg's conventions.

    ``u`` is ``(*geometry.size, 3)`` float32 LPS mm (the stored precision) and ``geometry`` the grid: ``size`` and
    ``spacing`` in tensor order ``(k, j, i)``, direction columns = row cosines, column cosines, their cross product
    (always right-handed, so a field written from a left-handed grid comes back with axis 0 reversed: the same
    points and vectors).

    Raises:
        InputError: not a DSRO, no deformation grid, a non-identity pre/post matrix (not representable as a
            displacement on the grid alone), or vector data of the wrong length.
    """
    import pydicom

    ds = pydicom.dcmread(path)
    if str(ds.get("SOPClassUID", "")) != DSRO_SOP_CLASS_UID:
        raise InputError(f"{path}: not a DICOM Deformable Spatial Registration (SOP class "
                         f"{ds.get('SOPClassUID', 'missing')}, expected {DSRO_SOP_CLASS_UID})")
    items = [item for item in ds.get("DeformableRegistrationSequence", []) if "DeformableRegistrationGridSequence"
             in item]
    if not items:
        raise InputError(f"{path}: has no DeformableRegistrationGridSequence; only grid-based DSROs can be read")
    item = items[0]
    for keyword in ("PreDeformationMatrixRegistrationSequence", "PostDeformationMatrixRegistrationSequence"):
        for matrix_item in item.get(keyword, []):
            matrix = np.array([float(v) for v in matrix_item.FrameOfReferenceTransformationMatrix]).reshape(4, 4)
            if not np.allclose(matrix, np.eye(4), atol=1e-6):
                raise InputError(f"{path}: {keyword} is not the identity; only pure deformation grids are supported")
    grid = item.DeformableRegistrationGridSequence[0]
    orientation = np.array([float(v) for v in grid.ImageOrientationPatient])
    row, column = orientation[:3], orientation[3:]
    direction = np.column_stack([row, column, np.cross(row, column)])
    size_ijk = [int(n) for n in grid.GridDimensions]
    spacing_ijk = [float(s) for s in grid.GridResolution]
    values = np.frombuffer(grid.VectorGridData, dtype="<f4")
    if values.size != 3 * int(np.prod(size_ijk)):
        raise InputError(f"{path}: VectorGridData holds {values.size} numbers, expected 3 x {size_ijk}")
    size = tuple(size_ijk[::-1])
    u = values.reshape(*size, 3).astype(np.float32)
    geometry = Geometry(size=size, spacing=tuple(spacing_ijk[::-1]),
                        origin=tuple(float(v) for v in grid.ImagePositionPatient),
                        direction=tuple(float(v) for v in direction.ravel()))
    return u, geometry
