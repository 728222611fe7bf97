"""Field formats (Slicer 1006, NiftyReg, FSL, Learn2Reg, DICOM DSRO): writers checked through independent readers,
and each format's own reader checked by a round trip.

Every geometry here is oblique, anisotropic and axis-flipped, with both handedness signs, so a missing spacing,
direction, LPS/RAS flip or axis reversal changes the numbers the tests compare.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from dicom_tools import dciodvfy_findings, dcmdump_text, dicom_tool
from scipy.ndimage import map_coordinates

from rlreg.formats import (
    DSRO_SOP_CLASS_UID,
    DicomSeriesRef,
    dicom_series_ref,
    l2r_name,
    read_dicom_field,
    read_fsl,
    read_keypoints,
    read_l2r,
    read_niftyreg,
    read_slicer,
    write_dicom,
    write_fsl,
    write_l2r,
    write_niftyreg,
    write_slicer,
)
from rlreg.formats.dicom import check_body_part
from rlreg.io import Geometry, InputError

try:
    import pydicom
except ImportError:  # pydicom is needed only for the DICOM export
    pydicom = None
needs_pydicom = pytest.mark.skipif(pydicom is None, reason="pydicom is not installed")

SPACING = (1.2, 0.9, 1.5)  # ITK (i, j, k) order
SIZE = (5, 6, 7)  # ITK (i, j, k) order; tensor size is (7, 6, 5)


def rotation(angle: float = 0.4, axis: tuple[float, ...] = (1.0, 2.0, 3.0)) -> np.ndarray:
    """Rodrigues rotation about ``axis``."""
    a = np.asarray(axis) / np.linalg.norm(axis)
    cross = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def oblique_image(handedness: int, ndim: int = 3) -> sitk.Image:
    """A SimpleITK image on an oblique, anisotropic grid with x flipped; ``det(direction) == handedness``."""
    if ndim == 3:
        flips = np.diag([-1.0, -1.0, 1.0]) if handedness > 0 else np.diag([-1.0, 1.0, 1.0])
        direction = rotation() @ flips
        image = sitk.Image(list(SIZE), sitk.sitkFloat32)
        image.SetOrigin((10.0, -20.0, 5.0))
    else:
        c, s = np.cos(0.4), np.sin(0.4)
        direction = np.array([[c, -s], [s, c]]) @ np.diag([-1.0, float(handedness)]) @ np.diag([-1.0, 1.0])
        image = sitk.Image(list(SIZE[:2]), sitk.sitkFloat32)
        image.SetOrigin((10.0, -20.0))
    image.SetSpacing(SPACING[:ndim])
    image.SetDirection(direction.ravel().tolist())
    assert np.isclose(np.linalg.det(direction), handedness)
    return image


def random_field(geometry: Geometry, seed: int = 0) -> np.ndarray:
    """``(*S, ndim)`` LPS mm displacements of a few mm."""
    return np.random.default_rng(seed).normal(scale=2.0, size=(*geometry.size, geometry.ndim))


def ras_world(image: sitk.Image, index: tuple[int, ...]) -> np.ndarray:
    """RAS mm position of an ITK index, from SimpleITK itself (independent of rlreg's affine code)."""
    lps = np.array(image.TransformIndexToPhysicalPoint(index))
    lps[:2] *= -1
    return lps


def assert_nifti_geometry(img: nib.Nifti1Image, image: sitk.Image) -> None:
    """sform = qform (codes 1, mm) = the fixed image's RAS affine; a 2D image is the slice z = 0."""
    header = img.header
    assert int(header["sform_code"]) == 1 and int(header["qform_code"]) == 1
    assert np.allclose(img.get_sform(), img.get_qform(), atol=1e-5)
    assert header.get_xyzt_units()[0] == "mm"
    ndim = image.GetDimension()
    index = (1, 2, 3)[:ndim]
    expected = np.append(ras_world(image, index), [0.0] * (3 - ndim))
    voxel = np.array([*index, *[0] * (3 - ndim), 1.0])
    assert np.allclose((img.affine @ voxel)[:3], expected, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Slicer (intent 1006, RAS)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("handedness", "ndim"), [(1, 3), (-1, 3), (1, 2), (-1, 2)])
def test_slicer_field_reads_back_in_simpleitk_as_lps(tmp_path: Path, handedness: int, ndim: int) -> None:
    image = oblique_image(handedness, ndim)
    geometry = Geometry.from_sitk(image)
    u = random_field(geometry)
    path = write_slicer(u, geometry, tmp_path / "slicer.nii.gz")
    assert path == tmp_path / "slicer.nii.gz" and not list(tmp_path.glob(".*tmp*"))

    # ITK >= 5.4 converts intent-1006 RAS vectors to LPS on read, so SimpleITK must give back u and the grid.
    read = sitk.ReadImage(str(path))
    assert read.GetNumberOfComponentsPerPixel() == 3
    array = sitk.GetArrayFromImage(read).reshape(*geometry.size, 3)
    assert np.allclose(array[..., :ndim], u, atol=1e-5)
    assert np.allclose(array[..., ndim:], 0.0)
    back = Geometry.from_sitk(read)
    assert back.size == geometry.size
    assert np.allclose(back.spacing, geometry.spacing, atol=1e-5)
    assert np.allclose(back.origin, geometry.origin, atol=1e-4)
    assert np.allclose(back.direction, geometry.direction, atol=1e-5)

    img = nib.load(path)
    assert int(img.header["intent_code"]) == 1006
    assert img.shape == (*SIZE[:ndim], *(() if ndim == 3 else (1,)), 1, 3)
    assert img.get_data_dtype() == np.float32
    data = img.get_fdata()
    if ndim == 3:
        assert np.allclose(data[1, 2, 3, 0], u[3, 2, 1] * [-1, -1, 1], atol=1e-5)
    else:
        assert np.allclose(data[1, 2, 0, 0], [-u[2, 1, 0], -u[2, 1, 1], 0.0], atol=1e-5)
    assert_nifti_geometry(img, image)


# ---------------------------------------------------------------------------------------------------------------
# NiftyReg (intent 1007 + NREG_TRANS, RAS)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("handedness", [1, -1])
def test_niftyreg_header_and_ras_vectors(tmp_path: Path, handedness: int) -> None:
    image = oblique_image(handedness)
    geometry = Geometry.from_sitk(image)
    u = random_field(geometry, seed=1)
    img = nib.load(write_niftyreg(u, geometry, tmp_path / "nreg.nii.gz"))
    header = img.header
    assert int(header["intent_code"]) == 1007
    assert header["intent_name"].item() == b"NREG_TRANS"
    assert float(header["intent_p1"]) == 1.0
    assert img.shape == (*SIZE, 1, 3)
    data = img.get_fdata()[:, :, :, 0, :]
    assert np.allclose(data, np.transpose(u, (2, 1, 0, 3)) * [-1, -1, 1], atol=1e-5)
    assert_nifti_geometry(img, image)


def test_niftyreg_2d_has_two_components(tmp_path: Path) -> None:
    geometry = Geometry.from_sitk(oblique_image(-1, ndim=2))
    u = random_field(geometry)
    data = nib.load(write_niftyreg(u, geometry, tmp_path / "nreg2d.nii.gz")).get_fdata()
    assert data.shape == (5, 6, 1, 1, 2)
    assert np.allclose(data[3, 4, 0, 0], -u[4, 3], atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# FSL (relative warp, scaled-voxel mm)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("handedness", "expected"), [(1, (-1.2, -1.8, 0.75)), (-1, (1.2, -1.8, 0.75))])
def test_fsl_translation_in_scaled_voxel_mm(tmp_path: Path, handedness: int, expected: tuple[float, ...]) -> None:
    # A shift of (1, -2, 0.5) voxels along ITK (i, j, k) is, in FSL's scaled-voxel frame, that shift times the
    # spacing (1.2, 0.9, 1.5), with x mirrored when the RAS sform has a positive determinant.
    image = oblique_image(handedness)
    geometry = Geometry.from_sitk(image)
    shift_lps = np.subtract(image.TransformContinuousIndexToPhysicalPoint((1.0, -2.0, 0.5)), image.GetOrigin())
    u = np.broadcast_to(shift_lps, (*geometry.size, 3))
    img = nib.load(write_fsl(u, geometry, tmp_path / "fsl_warp.nii.gz"))
    assert np.sign(np.linalg.det(img.affine[:3, :3])) == handedness
    assert int(img.header["intent_code"]) == 2006
    assert img.shape == (*SIZE, 3)
    data = img.get_fdata()
    assert np.allclose(data, expected, atol=1e-5)
    assert_nifti_geometry(img, image)


def test_fsl_rejects_2d(tmp_path: Path) -> None:
    geometry = Geometry.from_sitk(oblique_image(1, ndim=2))
    with pytest.raises(ValueError, match="3D"):
        write_fsl(random_field(geometry), geometry, tmp_path / "fsl.nii.gz")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------------------
# Learn2Reg (voxel units, nibabel order, map_coordinates)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [3, 2])
def test_l2r_field_reproduces_warp_with_map_coordinates(tmp_path: Path, ndim: int) -> None:
    image = oblique_image(-1, ndim)
    geometry = Geometry.from_sitk(image)
    rng = np.random.default_rng(2)
    chain = rng.uniform(-1.5, 1.5, size=(ndim, *geometry.size)).astype(np.float32)
    moving = rng.normal(size=geometry.size)

    # Reference: warp the tensor-order array with the tensor-order voxel field.
    identity_t = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.size], indexing="ij"))
    expected = map_coordinates(moving, identity_t + chain, order=1)

    img = nib.load(write_l2r(chain, geometry, tmp_path / "disp.nii.gz"))
    disp = img.get_fdata()
    assert img.get_data_dtype() == np.float32
    assert disp.shape == (*SIZE[:ndim], ndim)
    moving_nib = moving.T  # what nibabel returns for the same image: ITK index order (i, j[, k])
    identity_ijk = np.stack(np.meshgrid(*[np.arange(n) for n in moving_nib.shape], indexing="ij"))
    warped = map_coordinates(moving_nib, identity_ijk + np.moveaxis(disp, -1, 0), order=1)
    assert np.allclose(warped, expected.T, atol=1e-5)
    assert np.abs(warped - moving_nib).max() > 0.1  # the field really moves things
    assert_nifti_geometry(img, image)


def test_l2r_rejects_wrong_layout(tmp_path: Path) -> None:
    geometry = Geometry.from_sitk(oblique_image(1))
    with pytest.raises(ValueError, match="does not match"):
        write_l2r(np.zeros((*geometry.size, 3)), geometry, tmp_path / "disp.nii.gz")


@pytest.mark.parametrize(("fixed", "moving", "name"), [
    ("data/NLST_0101_0000.nii.gz", "data/NLST_0101_0001.nii.gz", "disp_0101_0101.nii.gz"),
    ("/x/OASIS_0395_0000.nii.gz", "OASIS_0396_0000.nii", "disp_0395_0396.nii.gz"),
    ("fixed.nii.gz", "/y/moving.nrrd", "disp_fixed_moving.nii.gz"),
    ("sub-1.v2.nii.gz", "NLST_0007_0000.nii.gz", "disp_sub-1.v2_0007.nii.gz"),
    ("ct_series", "atlas.mha", "disp_ct_series_atlas.nii.gz"),
    ("png/three_0.png", "three_1.PNG", "disp_three_0_three_1.nii.gz"),
    ("slice.tiff", "slice2.jpg", "disp_slice_slice2.nii.gz"),
    ("Task_12_0000.nii.gz", "Task_0012_00001.nii.gz", "disp_Task_12_0000_Task_0012_00001.nii.gz"),
])
def test_l2r_name(fixed: str, moving: str, name: str) -> None:
    assert l2r_name(fixed, moving) == name
    assert l2r_name(Path(fixed), Path(moving)) == name


# ---------------------------------------------------------------------------------------------------------------
# DICOM Deformable Spatial Registration
# ---------------------------------------------------------------------------------------------------------------


def assert_same_field_in_world(u_a: np.ndarray, geo_a: Geometry, u_b: np.ndarray, geo_b: Geometry) -> None:
    """Every grid point of ``b`` is a grid point of ``a`` (same world position) carrying the same vector."""
    assert sorted(geo_a.size) == sorted(geo_b.size)
    index_b = np.stack(np.meshgrid(*[np.arange(n) for n in geo_b.size], indexing="ij"), axis=-1).reshape(-1, 3)
    world = index_b @ geo_b.index_to_world()[:3, :3].T + geo_b.index_to_world()[:3, 3]
    to_a = np.linalg.inv(geo_a.index_to_world())
    index_a = world @ to_a[:3, :3].T + to_a[:3, 3]
    assert np.allclose(index_a, np.round(index_a), atol=1e-6)
    index_a = np.round(index_a).astype(int)
    assert (index_a >= 0).all() and (index_a < np.array(geo_a.size)).all()
    assert np.allclose(u_b[tuple(index_b.T)], u_a[tuple(index_a.T)], atol=1e-5)


def sitk_transform(u: np.ndarray, geometry: Geometry) -> sitk.DisplacementFieldTransform:
    field = geometry.apply_to(sitk.GetImageFromArray(u.astype(np.float64), isVector=True))
    return sitk.DisplacementFieldTransform(field)


@needs_pydicom
def test_dicom_header_grid_and_frames(tmp_path: Path) -> None:
    image = oblique_image(1)
    geometry = Geometry.from_sitk(image)
    u = random_field(geometry, seed=3)
    path = write_dicom(u, geometry, tmp_path / "reg.dcm")
    ds = pydicom.dcmread(path)  # no force: needs the preamble and file meta
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == DSRO_SOP_CLASS_UID == pydicom.uid.DeformableSpatialRegistrationStorage
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.Modality == "REG" and ds.Manufacturer == "rlreg"
    assert ds.ContentDate and ds.ContentTime
    item = ds.DeformableRegistrationSequence[0]
    assert len(ds.DeformableRegistrationSequence) == 1
    assert ds.FrameOfReferenceUID != item.SourceFrameOfReferenceUID
    for uid in (ds.FrameOfReferenceUID, item.SourceFrameOfReferenceUID, ds.StudyInstanceUID):
        assert pydicom.uid.UID(uid).is_valid
    assert item.RegistrationTypeCodeSequence[0].CodingSchemeDesignator == "DCM"
    for keyword in ("PreDeformationMatrixRegistrationSequence", "PostDeformationMatrixRegistrationSequence"):
        matrix_item = item[keyword][0]
        assert matrix_item.FrameOfReferenceTransformationMatrixType == "RIGID"
        assert np.allclose(np.array(matrix_item.FrameOfReferenceTransformationMatrix, float), np.eye(4).ravel())
    assert "ReferencedImageSequence" not in item and "ReferencedSeriesSequence" not in ds

    grid = item.DeformableRegistrationGridSequence[0]
    assert list(grid.GridDimensions) == list(SIZE)
    assert np.allclose(grid.GridResolution, SPACING)
    assert np.allclose(np.array(grid.ImagePositionPatient, float), image.GetOrigin())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    assert np.allclose(np.array(grid.ImageOrientationPatient, float), [*direction[:, 0], *direction[:, 1]], atol=1e-9)
    vectors = np.frombuffer(grid.VectorGridData, dtype="<f4")
    assert vectors.size == 3 * np.prod(SIZE)
    assert np.allclose(vectors[:6], [*u[0, 0, 0], *u[0, 0, 1]], atol=1e-6)  # x (ITK i) fastest, interleaved

    again = pydicom.dcmread(write_dicom(u, geometry, tmp_path / "reg2.dcm"))
    assert again.SOPInstanceUID != ds.SOPInstanceUID


@needs_pydicom
@pytest.mark.parametrize("handedness", [1, -1])
def test_dicom_round_trip_same_points_and_resampling(tmp_path: Path, handedness: int) -> None:
    geometry = Geometry.from_sitk(oblique_image(handedness))
    u = random_field(geometry, seed=4).astype(np.float32)
    u_back, geo_back = read_dicom_field(write_dicom(u, geometry, tmp_path / "reg.dcm"))
    assert u_back.shape == u.shape and u_back.dtype == np.float32
    assert np.isclose(np.linalg.det(np.reshape(geo_back.direction, (3, 3))), 1.0)
    assert np.allclose(geo_back.spacing, geometry.spacing)
    assert_same_field_in_world(u, geometry, u_back, geo_back)
    if handedness < 0:  # stored with the slowest axis reversed, then nothing else changed
        assert not np.allclose(geo_back.origin, geometry.origin)
        assert np.allclose(u_back[::-1], u)
    else:
        assert np.allclose(geo_back.origin, geometry.origin) and np.array_equal(u_back, u)

    # The same transform for ITK: identical mapped points inside the grid.
    original, restored = sitk_transform(u, geometry), sitk_transform(u_back, geo_back)
    points = np.random.default_rng(5).uniform(0.5, np.array(geometry.size) - 1.5, size=(20, 3))
    to_world = geometry.index_to_world()
    for point in points @ to_world[:3, :3].T + to_world[:3, 3]:
        assert np.allclose(original.TransformPoint(point.tolist()), restored.TransformPoint(point.tolist()),
                           atol=1e-5)


def write_series(directory: Path, patient_id: str, study_uid: str, reverse_files: bool = False,
                 **attributes: object) -> dict[str, object]:
    """Three CT slices copied from pydicom's CT_small.dcm with new UIDs and positions, and ``attributes`` (keyword:
    value) set on each; returns what was written."""
    from pydicom.data import get_testdata_file

    directory.mkdir()
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series_uid, for_uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    sop_uids = []
    for number in (1, 2, 3):
        ds = template.copy()
        sop_uid = pydicom.uid.generate_uid()
        sop_uids.append(sop_uid)
        ds.PatientID, ds.PatientName = patient_id, f"RLREG^{patient_id}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, for_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [-158.1, -179.0, -75.7 + 5.0 * number]
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        name = f"slice{4 - number if reverse_files else number}.dcm"
        ds.save_as(directory / name, enforce_file_format=True)
    (directory / "notes.txt").write_text("not DICOM")
    return {"series": series_uid, "for": for_uid, "sops": sop_uids, "study": study_uid,
            "sop_class": str(template.SOPClassUID)}


@needs_pydicom
def test_dicom_series_ref_and_references_in_dsro(tmp_path: Path) -> None:
    fixed_study, moving_study = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    fixed = write_series(tmp_path / "fixed", "P1", fixed_study, reverse_files=True)
    moving = write_series(tmp_path / "moving", "P2", moving_study)

    fixed_ref = dicom_series_ref(tmp_path / "fixed")
    assert isinstance(fixed_ref, DicomSeriesRef)
    assert fixed_ref.series_instance_uid == fixed["series"] and fixed_ref.frame_of_reference_uid == fixed["for"]
    assert fixed_ref.sop_instance_uids == fixed["sops"]  # InstanceNumber order, not file-name order
    assert fixed_ref.patient_id == "P1" and fixed_ref.patient_name == "RLREG^P1"
    assert fixed_ref.study_instance_uid == fixed_study and fixed_ref.sop_class_uid == fixed["sop_class"]
    moving_ref = dicom_series_ref(tmp_path / "moving" / "slice2.dcm")
    assert moving_ref.sop_instance_uids == moving["sops"]

    geometry = Geometry.from_sitk(oblique_image(-1))
    u = random_field(geometry, seed=6)
    path = write_dicom(u, geometry, tmp_path / "reg.dcm", fixed_ref=fixed_ref, moving_ref=moving_ref)
    ds = pydicom.dcmread(path)
    assert ds.StudyInstanceUID == fixed_study and ds.PatientID == "P1" and ds.PatientName == "RLREG^P1"
    assert ds.SeriesInstanceUID not in (fixed["series"], moving["series"])
    assert ds.FrameOfReferenceUID == fixed["for"]
    item = ds.DeformableRegistrationSequence[0]
    assert item.SourceFrameOfReferenceUID == moving["for"]
    assert [r.ReferencedSOPInstanceUID for r in item.ReferencedImageSequence] == moving["sops"]
    assert {r.ReferencedSOPClassUID for r in item.ReferencedImageSequence} == {moving["sop_class"]}
    # Common Instance Reference: the fixed series in this study, the moving one under its own study.
    (same_study,) = ds.ReferencedSeriesSequence
    assert same_study.SeriesInstanceUID == fixed["series"]
    assert [r.ReferencedSOPInstanceUID for r in same_study.ReferencedInstanceSequence] == fixed["sops"]
    (other_study,) = ds.StudiesContainingOtherReferencedInstancesSequence
    assert other_study.StudyInstanceUID == moving_study
    (other_series,) = other_study.ReferencedSeriesSequence
    assert other_series.SeriesInstanceUID == moving["series"]
    assert [r.ReferencedSOPInstanceUID for r in other_series.ReferencedInstanceSequence] == moving["sops"]
    u_back, geo_back = read_dicom_field(path)
    assert_same_field_in_world(u, geometry, u_back, geo_back)


@needs_pydicom
def test_dicom_series_ref_errors(tmp_path: Path) -> None:
    study = pydicom.uid.generate_uid()
    first = write_series(tmp_path / "mixed", "P1", study)
    for file in (tmp_path / "mixed").glob("slice*.dcm"):  # a second series in the same folder
        ds = pydicom.dcmread(file)
        ds.SeriesInstanceUID = "1.2.3.4"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(file.with_name(f"other_{file.name}"), enforce_file_format=True)
    with pytest.raises(InputError, match="2 DICOM series"):
        dicom_series_ref(tmp_path / "mixed")
    assert dicom_series_ref(tmp_path / "mixed", series_instance_uid=first["series"]).sop_instance_uids == first["sops"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM"):
        dicom_series_ref(tmp_path / "empty")
    with pytest.raises(InputError, match="not a DICOM file"):
        dicom_series_ref(tmp_path / "mixed" / "notes.txt")


@needs_pydicom
@pytest.mark.parametrize(("body_part", "laterality"), [("BRAIN", None), ("KNEE", "R")])
def test_dicom_from_nifti_inputs_validates(tmp_path: Path, body_part: str, laterality: str | None) -> None:
    """No source series: a new study with a placeholder patient, and the body part given; dciodvfy finds nothing."""
    geometry = Geometry.from_sitk(oblique_image(-1))
    path = write_dicom(random_field(geometry, seed=7), geometry, tmp_path / "reg.dcm", body_part=body_part,
                       laterality=laterality)
    assert dciodvfy_findings(path) == []
    listing = dcmdump_text(path)
    assert "(0064,0009) OF" in listing and "DeformableSpatialRegistrationStorage" in listing
    ds = pydicom.dcmread(path)
    assert ds.PatientID.startswith("RLREG-") and len(ds.PatientID) == 22 and ds.PatientName == ""
    assert ds.StudyID == "1" and ds.SeriesNumber == 1 and ds.BodyPartExamined == body_part
    assert ds.get("Laterality") == laterality  # absent beside an unpaired part: dciodvfy refuses it there
    assert pydicom.dcmread(write_dicom(random_field(geometry), geometry, tmp_path / "again.dcm",
                                       body_part=body_part)).PatientID != ds.PatientID  # a new study, a new patient


@needs_pydicom
def test_dicom_without_body_part_writes_unknown_laterality(tmp_path: Path) -> None:
    """No body part anywhere: the standard's "unknown" (empty Type 2C Laterality), which dciodvfy only warns about."""
    geometry = Geometry.from_sitk(oblique_image(1))
    path = write_dicom(random_field(geometry), geometry, tmp_path / "reg.dcm")
    ds = pydicom.dcmread(path)
    assert "BodyPartExamined" not in ds and ds["Laterality"].is_empty
    findings = dciodvfy_findings(path)
    assert len(findings) == 1 and findings[0].startswith("Warning") and "<Laterality>" in findings[0]


@needs_pydicom
@pytest.mark.parametrize(("series_attributes", "expected"), [
    ({"BodyPartExamined": "CHEST"}, ("CHEST", None)),
    ({"BodyPartExamined": "KNEE", "Laterality": "L"}, ("KNEE", "L")),
    ({"BodyPartExamined": "BREAST", "ImageLaterality": "R"}, ("BREAST", "R")),  # image level stands for the series
])
def test_dicom_from_series_inputs_validates(tmp_path: Path, series_attributes: dict[str, str],
                                            expected: tuple[str, str | None]) -> None:
    """Source series (CT_small's empty Laterality beside the attributes): patient, study, body part and side come
    from the fixed series; the DSRO is the next series of its study; dciodvfy finds nothing."""
    study = pydicom.uid.generate_uid()
    write_series(tmp_path / "fixed", "P1", study, SeriesNumber=4, **series_attributes)
    write_series(tmp_path / "moving", "P1", pydicom.uid.generate_uid(), SeriesNumber=9, BodyPartExamined="PELVIS")
    fixed_ref, moving_ref = dicom_series_ref(tmp_path / "fixed"), dicom_series_ref(tmp_path / "moving")
    assert fixed_ref.series_number == 4 and (fixed_ref.body_part_examined, fixed_ref.laterality or None) == expected
    geometry = Geometry.from_sitk(oblique_image(1))
    path = write_dicom(random_field(geometry), geometry, tmp_path / "reg.dcm", fixed_ref, moving_ref)
    assert dciodvfy_findings(path) == []
    dcmdump_text(path)
    ds = pydicom.dcmread(path)
    assert ds.PatientID == "P1" and ds.StudyID == "1CT1" and ds.StudyInstanceUID == study
    assert ds.SeriesNumber == 5  # the moving series is in another study: its number does not count
    assert (ds.BodyPartExamined, ds.get("Laterality")) == expected
    # An explicit body part replaces the series' and drops its side; no fixed body part falls back on the moving's.
    again = pydicom.dcmread(write_dicom(random_field(geometry), geometry, tmp_path / "brain.dcm", fixed_ref,
                                        moving_ref, body_part="BRAIN"))
    assert again.BodyPartExamined == "BRAIN" and "Laterality" not in again
    fixed_ref.body_part_examined = ""
    moving_first = pydicom.dcmread(write_dicom(random_field(geometry), geometry, tmp_path / "m.dcm", fixed_ref,
                                               moving_ref))
    assert moving_first.BodyPartExamined == "PELVIS" and "Laterality" not in moving_first


@pytest.mark.parametrize(("body_part", "laterality", "message"), [
    ("brain", None, "not a DICOM body part"), ("A" * 17, None, "at most 16"), ("HEAD-NECK", None, "underscores"),
    ("", None, "not a DICOM body part"), ("KNEE", "left", "give R or L")])
def test_check_body_part_refuses(body_part: str, laterality: str | None, message: str) -> None:
    with pytest.raises(InputError, match=message):
        check_body_part(body_part, laterality)
    check_body_part("HEADNECK", None)
    check_body_part("KNEE", "R")
    check_body_part(None, None)


def test_dicom_tools_requirement(monkeypatch) -> None:
    """No dciodvfy: the validation tests skip, unless RLREG_REQUIRE_DICOM_TOOLS=1 makes them fail."""
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    monkeypatch.delenv("RLREG_REQUIRE_DICOM_TOOLS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="dicom3tools"):
        dicom_tool("dciodvfy")
    monkeypatch.setenv("RLREG_REQUIRE_DICOM_TOOLS", "1")
    with pytest.raises(pytest.fail.Exception, match="RLREG_REQUIRE_DICOM_TOOLS=1 but no dcmdump"):
        dicom_tool("dcmdump")


@needs_pydicom
def test_dicom_rejects_2d_and_sheared_grids(tmp_path: Path) -> None:
    geometry = Geometry.from_sitk(oblique_image(1, ndim=2))
    with pytest.raises(ValueError, match="3D"):
        write_dicom(random_field(geometry), geometry, tmp_path / "reg.dcm")
    sheared = Geometry(size=(7, 6, 5), spacing=(1.5, 0.9, 1.2), origin=(0.0, 0.0, 0.0),
                       direction=(1.0, 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="sheared"):
        write_dicom(random_field(sheared), sheared, tmp_path / "reg.dcm")
    assert not list(tmp_path.iterdir())


@needs_pydicom
def test_read_dicom_field_rejects_other_objects(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    with pytest.raises(InputError, match="not a DICOM Deformable"):
        read_dicom_field(get_testdata_file("CT_small.dcm"))


# ---------------------------------------------------------------------------------------------------------------
# Readers: write then read gives the same field
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "ndim"), [("slicer", 3), ("slicer", 2), ("niftyreg", 3), ("niftyreg", 2),
                                           ("fsl", 3)])
@pytest.mark.parametrize("handedness", [1, -1])
def test_nifti_formats_round_trip(tmp_path: Path, fmt: str, ndim: int, handedness: int) -> None:
    geometry = Geometry.from_sitk(oblique_image(handedness, ndim))
    u = random_field(geometry, seed=3)
    write, read = {"slicer": (write_slicer, read_slicer), "niftyreg": (write_niftyreg, read_niftyreg),
                   "fsl": (write_fsl, read_fsl)}[fmt]
    back = read(write(u, geometry, tmp_path / f"{fmt}.nii.gz"), geometry)
    assert back.shape == u.shape
    np.testing.assert_allclose(back, u, atol=1e-5)  # float32 on disk


def test_nifti_readers_reject_another_grid(tmp_path: Path) -> None:
    geometry = Geometry.from_sitk(oblique_image(1))
    path = write_slicer(random_field(geometry), geometry, tmp_path / "slicer.nii.gz")
    other = Geometry.from_sitk(oblique_image(1, 2))
    with pytest.raises(InputError, match=r"slicer\.nii\.gz: Slicer field of shape .* give the field written for"):
        read_slicer(path, other)
    with pytest.raises(InputError, match="not a readable NiftyReg field"):
        read_niftyreg(tmp_path / "missing.nii.gz", geometry)
    with pytest.raises(InputError, match="FSL warps are 3D"):
        read_fsl(path, other)


@pytest.mark.parametrize("ndim", [3, 2])
def test_l2r_round_trip_nifti_and_npz(tmp_path: Path, ndim: int) -> None:
    geometry = Geometry.from_sitk(oblique_image(-1, ndim))
    chain = np.random.default_rng(4).uniform(-1.5, 1.5, size=(ndim, *geometry.size)).astype(np.float32)
    back = read_l2r(write_l2r(chain, geometry, tmp_path / "disp.nii.gz"), geometry)
    assert back.shape == (1, ndim, *geometry.size) and back.dtype == torch.float64
    np.testing.assert_array_equal(back[0].numpy(), chain)
    np.savez(tmp_path / "disp.npz", nib.load(tmp_path / "disp.nii.gz").get_fdata())
    np.testing.assert_array_equal(read_l2r(tmp_path / "disp.npz", geometry)[0].numpy(), chain)
    np.savez(tmp_path / "two.npz", a=np.zeros(1), b=np.zeros(1))
    with pytest.raises(InputError, match="holds 2 arrays"):
        read_l2r(tmp_path / "two.npz", geometry)
    with pytest.raises(InputError, match="expected"):
        read_l2r(tmp_path / "disp.nii.gz", Geometry.from_sitk(oblique_image(-1, 5 - ndim)))


def test_read_keypoints(tmp_path: Path) -> None:
    path = tmp_path / "kp.csv"
    path.write_text("1,2,3\n4.5,5,6\n")
    np.testing.assert_array_equal(read_keypoints(path, 3), [[1, 2, 3], [4.5, 5, 6]])
    with pytest.raises(InputError, match="has 3 columns; give 2"):
        read_keypoints(path, 2)
    with pytest.raises(InputError, match="keypoint file not found"):
        read_keypoints(tmp_path / "none.csv", 3)
    (tmp_path / "bad.csv").write_text("x,y,z\n")
    with pytest.raises(InputError, match="not a keypoint CSV"):
        read_keypoints(tmp_path / "bad.csv", 3)
