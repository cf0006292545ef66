"""Synthetic studies written as DICOM Part 10 files (PS3.10 §7), one builder per exam type.

Each builder fills the modules its IOD requires (PS3.3 Annex A): Patient, General Study, Patient Study,
General Series, General Equipment, (Frame of Reference), General Image, Image Plane / Pixel, the modality's
own modules, VOI LUT and SOP Common, with French descriptions as a French RIS would send them. Every study
also carries its report as an Encapsulated PDF instance (PS3.3 §A.45.1).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    MPEG4HP41,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from emage_cli import __version__
from emage_cli.synthetic import codecs, phantoms
from emage_cli.synthetic.identities import INS_TEST_OID, Facility, Patient, Professional
from emage_cli.synthetic.pdf import text_pdf
from emage_cli.synthetic.uids import UidFactory

# SOP classes (PS3.4 Annex B.5).
CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
US_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.6.1")
US_MULTIFRAME_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.3.1")
MG_FOR_PRESENTATION_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.2")
ENCAPSULATED_PDF_STORAGE = UID("1.2.840.10008.5.1.4.1.1.104.1")

#: Implementation Class UID of files written by this tool (PS3.7 §D.3.3.2), under the 2.25 root.
IMPLEMENTATION_CLASS_UID = UID("2.25.186279935063961838474651391946264932211")
IMPLEMENTATION_VERSION_NAME = f"EMAGE_CLI_{__version__.replace('.', '')}"

MANUFACTURER = "e-mage synthetic"

#: Coding Scheme Designator of RPPS numbers in a Person Identification Code Sequence, as the catalog reads
#: them (it also accepts the ANS's OID of the RPPS, 1.2.250.1.71.4.2.1).
RPPS_SCHEME = "RPPS"


@dataclass(frozen=True)
class WrittenInstance:
    """One file the generator wrote, with what a test or a summary needs to know of it."""

    path: Path
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size_bytes: int


@dataclass(frozen=True)
class StudyContext:
    """What every instance of one study shares: the patient, the order and the acquisition date."""

    patient: Patient
    modality: str
    study_instance_uid: str
    accession_number: str
    study_id: str
    started: datetime
    description: str
    referring_physician: Professional
    operator: Professional

    @property
    def patient_age(self) -> str:
        """Patient's Age (AS, PS3.5 §6.2): completed years at the study date, e.g. ``039Y``."""
        born = self.patient.birth_date
        day = self.started.date()
        years = day.year - born.year - ((day.month, day.day) < (born.month, born.day))
        return f"{years:03d}Y"


@dataclass(frozen=True)
class SeriesContext:
    series_instance_uid: str
    series_number: int
    modality: str
    description: str
    body_part: str
    started: datetime
    frame_of_reference_uid: str | None = None


@dataclass
class StudyWriter:
    """Writes the instances of one study under ``root``, one folder per series."""

    root: Path
    study: StudyContext
    uids: UidFactory
    written: list[WrittenInstance] = field(default_factory=list)

    def folder(self) -> Path:
        study = self.study
        return (
            self.root
            / study.patient.patient_id
            / f"{study.started:%Y%m%d}-{study.modality}-{study.accession_number}"
        )

    def series(
        self,
        number: int,
        modality: str,
        description: str,
        body_part: str,
        *,
        frame_of_reference_uid: str | None = None,
    ) -> SeriesContext:
        return SeriesContext(
            series_instance_uid=self.uids(),
            series_number=number,
            modality=modality,
            description=description,
            body_part=body_part,
            started=self.study.started + timedelta(minutes=2 * number),
            frame_of_reference_uid=frame_of_reference_uid,
        )

    def instance(self, series: SeriesContext, sop_class_uid: UID, instance_number: int) -> Dataset:
        """A dataset with the study-, series- and instance-level modules every IOD here shares."""
        study, patient = self.study, self.study.patient
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = sop_class_uid
        ds.SOPInstanceUID = self.uids()
        now = series.started + timedelta(seconds=instance_number)
        ds.InstanceCreationDate, ds.InstanceCreationTime = _da(now), _tm(now)
        # Patient (PS3.3 §C.7.1.1): the facility's ID, its FINESS as issuer, the INS as another ID.
        ds.PatientName = patient.patient_name
        ds.PatientID = patient.patient_id
        ds.IssuerOfPatientID = patient.issuer_of_patient_id
        ds.TypeOfPatientID = "TEXT"
        ds.PatientBirthDate = _da(patient.birth_date)
        ds.PatientSex = patient.sex
        if patient.ins is not None:
            ins = Dataset()
            ins.PatientID = patient.ins
            ins.IssuerOfPatientID = INS_TEST_OID
            ins.TypeOfPatientID = "TEXT"
            qualifiers = Dataset()
            qualifiers.UniversalEntityID = INS_TEST_OID
            qualifiers.UniversalEntityIDType = "ISO"
            ins.IssuerOfPatientIDQualifiersSequence = Sequence([qualifiers])
            ds.OtherPatientIDsSequence = Sequence([ins])
        # General Study and Patient Study (§C.7.2.1, §C.7.2.2).
        ds.StudyInstanceUID = study.study_instance_uid
        ds.StudyDate, ds.StudyTime = _da(study.started), _tm(study.started)
        ds.ReferringPhysicianName = study.referring_physician.name
        referrer = study.referring_physician
        if referrer.rpps is not None:
            # A single item (PS3.3 §C.7.2.1): the physician who ordered the exam.
            ds.ReferringPhysicianIdentificationSequence = Sequence(
                [_person(referrer, referrer.rpps, patient.facility)]
            )
        ds.StudyID = study.study_id
        ds.AccessionNumber = study.accession_number
        ds.StudyDescription = study.description
        ds.PatientAge = study.patient_age
        # General Series (§C.7.3.1).
        ds.Modality = series.modality
        ds.SeriesInstanceUID = series.series_instance_uid
        ds.SeriesNumber = series.series_number
        ds.SeriesDate, ds.SeriesTime = _da(series.started), _tm(series.started)
        ds.SeriesDescription = series.description
        ds.OperatorsName = study.operator.name
        operator = study.operator
        if operator.rpps is not None:
            # One item per Operators' Name value, in the same order (PS3.3 §C.7.3.1).
            ds.OperatorIdentificationSequence = Sequence([_person(operator, operator.rpps, patient.facility)])
        ds.BodyPartExamined = series.body_part
        # General Equipment (§C.7.5.1).
        ds.Manufacturer = MANUFACTURER
        ds.InstitutionName = patient.facility.name
        ds.StationName = f"{patient.facility.station}{series.modality}01"
        ds.ManufacturerModelName = f"Synthetic {series.modality}"
        ds.SoftwareVersions = f"emage-cli {__version__}"
        if series.frame_of_reference_uid is not None:
            ds.FrameOfReferenceUID = series.frame_of_reference_uid
            ds.PositionReferenceIndicator = ""
        # General Image / General Acquisition (§C.7.6.1, §C.7.10.1).
        ds.InstanceNumber = instance_number
        ds.ContentDate, ds.ContentTime = _da(now), _tm(now)
        ds.AcquisitionDate, ds.AcquisitionTime = _da(now), _tm(now)
        ds.AcquisitionNumber = 1
        return ds

    def write(self, series: SeriesContext, ds: Dataset, transfer_syntax: UID) -> WrittenInstance:
        """Save ``ds`` as a Part 10 file with its File Meta Information (PS3.10 §7.1)."""
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = transfer_syntax
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        ds.file_meta = meta
        folder = self.folder() / f"{series.series_number:02d}-{series.modality}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{int(ds.InstanceNumber):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        instance = WrittenInstance(
            path=path,
            study_instance_uid=self.study.study_instance_uid,
            series_instance_uid=series.series_instance_uid,
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            transfer_syntax_uid=str(transfer_syntax),
            size_bytes=path.stat().st_size,
        )
        self.written.append(instance)
        return instance


def _da(moment: date | datetime) -> str:
    return f"{moment:%Y%m%d}"


def _tm(moment: datetime | time) -> str:
    return f"{moment:%H%M%S}"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    """A Code Sequence item (PS3.3 §8.8), e.g. SNOMED CT (``SCT``) or DICOM (``DCM``)."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _person(professional: Professional, rpps: str, facility: Facility) -> Dataset:
    """A Person Identification Macro item (PS3.3 Table 10-1): the RPPS code and the institution."""
    family, _, given = professional.name.partition("^")
    item = Dataset()
    item.PersonIdentificationCodeSequence = Sequence([_code(rpps, RPPS_SCHEME, f"{given} {family}".strip())])
    item.InstitutionName = facility.name
    return item


def _monochrome(ds: Dataset, rows: int, columns: int, *, bits_allocated: int, bits_stored: int) -> None:
    # Image Pixel (§C.7.6.3) of an unsigned greyscale image where higher values are brighter.
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0


def _lossy(ds: Dataset, method: str, original_bytes: int, compressed_bytes: int) -> None:
    # Lossy Image Compression (§C.7.6.1.1.5): once lossy, always flagged, with the ratio and method.
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{original_bytes / max(compressed_bytes, 1):.2f}"
    ds.LossyImageCompressionMethod = method


# --- CR -------------------------------------------------------------------------------------------------


def write_cr(writer: StudyWriter, rng: np.random.Generator) -> None:
    """A PA chest radiograph (CR Image, PS3.3 §A.2), 2500x2048, 8-bit JPEG baseline."""
    series = writer.series(1, "CR", "Thorax de face (PA)", "CHEST")
    ds = writer.instance(series, CR_IMAGE_STORAGE, 1)
    rows, columns = 2500, 2048
    pixels = phantoms.chest_radiograph(rows, columns, rng)
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.PatientOrientation = ["L", "F"]
    ds.ViewPosition = "PA"
    ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.KVP = 125
    ds.ExposureTime = 8
    ds.XRayTubeCurrent = 320
    ds.DistanceSourceToDetector = 1800
    _monochrome(ds, rows, columns, bits_allocated=8, bits_stored=8)
    ds.WindowCenter, ds.WindowWidth = 128, 256
    frame = codecs.jpeg_baseline(pixels, quality=92)
    _lossy(ds, "ISO_10918_1", pixels.nbytes, len(frame))
    ds.PixelData = encapsulate([frame])
    writer.write(series, ds, JPEGBaseline8Bit)


# --- CT -------------------------------------------------------------------------------------------------

CT_SIZE = 512
CT_PIXEL_SPACING = 0.703125  # a 360 mm reconstruction diameter
CT_SLICE_THICKNESS = 1.25


def write_ct(writer: StudyWriter, rng: np.random.Generator, slices: int) -> None:
    """A contrast-enhanced chest-abdomen-pelvis (CT Image, PS3.3 §A.3): ``slices`` contiguous axial 512x512
    slices, 12 bits stored in 16, HU = stored - 1024, explicit VR little endian.

    Geometry (§C.7.6.2): head-first supine, rows along +X (patient's left), columns along +Y (posterior),
    slices stepping toward the feet (-Z) by the slice thickness, so viewers can build MPRs.
    """
    series = writer.series(2, "CT", "TAP injecté 1.25 mm", "CHEST", frame_of_reference_uid=writer.uids())
    origin = -CT_PIXEL_SPACING * CT_SIZE / 2.0 + CT_PIXEL_SPACING / 2.0
    for index, hounsfield in enumerate(phantoms.ct_volume(slices, CT_SIZE, rng)):
        ds = writer.instance(series, CT_IMAGE_STORAGE, index + 1)
        z = -index * CT_SLICE_THICKNESS
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientPosition = "HFS"
        ds.ImagePositionPatient = [round(origin, 4), round(origin, 4), round(z, 4)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [CT_PIXEL_SPACING, CT_PIXEL_SPACING]
        ds.SliceThickness = CT_SLICE_THICKNESS
        ds.SpacingBetweenSlices = CT_SLICE_THICKNESS
        ds.SliceLocation = round(z, 4)
        ds.KVP = 120
        ds.DataCollectionDiameter = 500
        ds.ReconstructionDiameter = CT_PIXEL_SPACING * CT_SIZE
        ds.GantryDetectorTilt = 0
        ds.TableHeight = 160
        ds.RotationDirection = "CW"
        ds.XRayTubeCurrent = 250
        ds.ExposureTime = 500
        ds.ConvolutionKernel = "STANDARD"
        ds.ContrastBolusAgent = "IOMERON 350"
        _monochrome(ds, CT_SIZE, CT_SIZE, bits_allocated=16, bits_stored=12)
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = [40, -600], [400, 1500]
        ds.WindowCenterWidthExplanation = ["ABDOMEN", "POUMON"]
        ds.PixelData = (hounsfield.astype(np.int32) + 1024).astype("<u2").tobytes()
        writer.write(series, ds, ExplicitVRLittleEndian)


# --- MR -------------------------------------------------------------------------------------------------

MR_SIZE = 256
MR_PIXEL_SPACING = 0.9375  # a 240 mm field of view
MR_SLICE_THICKNESS = 5.0


def write_mr(writer: StudyWriter, rng: np.random.Generator, slices: int) -> None:
    """A brain MRI (MR Image, PS3.3 §A.4): an axial T1 spin echo and an axial T2 turbo spin echo series of
    ``slices`` 256x256 slices each, 12 bits stored in 16, sharing one frame of reference."""
    frame_of_reference = writer.uids()
    sequences = (
        (3, "AX T1 SE", "T1", 500.0, 10.0, 1),
        (4, "AX T2 TSE", "T2", 4000.0, 100.0, 16),
    )
    origin = -MR_PIXEL_SPACING * MR_SIZE / 2.0 + MR_PIXEL_SPACING / 2.0
    for number, description, weighting, repetition, echo, train in sequences:
        series = writer.series(number, "MR", description, "HEAD", frame_of_reference_uid=frame_of_reference)
        for index, pixels in enumerate(phantoms.mr_brain(slices, MR_SIZE, weighting, rng)):
            ds = writer.instance(series, MR_IMAGE_STORAGE, index + 1)
            z = -60.0 + index * MR_SLICE_THICKNESS
            ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
            ds.PatientPosition = "HFS"
            ds.ImagePositionPatient = [round(origin, 4), round(origin, 4), z]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.PixelSpacing = [MR_PIXEL_SPACING, MR_PIXEL_SPACING]
            ds.SliceThickness = MR_SLICE_THICKNESS
            ds.SpacingBetweenSlices = MR_SLICE_THICKNESS
            ds.SliceLocation = z
            ds.ScanningSequence = "SE"
            ds.SequenceVariant = "NONE" if train == 1 else "SK"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.SequenceName = "se2d1" if train == 1 else "tse2d1_16"
            ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = repetition, echo, train
            ds.NumberOfAverages = 1
            ds.ImagingFrequency = 63.87
            ds.ImagedNucleus = "1H"
            ds.MagneticFieldStrength = 1.5
            ds.FlipAngle = 90
            _monochrome(ds, MR_SIZE, MR_SIZE, bits_allocated=16, bits_stored=12)
            ds.WindowCenter, ds.WindowWidth = (1200, 2400) if weighting == "T1" else (1300, 2800)
            ds.PixelData = pixels.astype("<u2").tobytes()
            writer.write(series, ds, ExplicitVRLittleEndian)


# --- US -------------------------------------------------------------------------------------------------

US_ROWS, US_COLUMNS = 480, 640
US_PHYSICAL_DELTA_CM = 0.03  # 480 rows ≈ 14.4 cm of depth


def _ultrasound(ds: Dataset, frames: int) -> None:
    # US Image (§C.8.5.6) of 8-bit colour pixels, and US Region Calibration (§C.8.5.5) of the sector.
    ds.ImageType = ["ORIGINAL", "PRIMARY", "CHEST", "0001"]  # transthoracic, 2D imaging
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 3
    ds.Rows, ds.Columns = US_ROWS, US_COLUMNS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    ds.PlanarConfiguration = 0
    region = Dataset()
    region.RegionSpatialFormat = 1  # 2D
    region.RegionDataType = 1  # tissue
    region.RegionFlags = 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 40, 20
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = US_COLUMNS - 40, US_ROWS - 10
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
    region.PhysicalDeltaX = region.PhysicalDeltaY = US_PHYSICAL_DELTA_CM
    region.ReferencePixelX0, region.ReferencePixelY0 = US_COLUMNS // 2, 0
    ds.SequenceOfUltrasoundRegions = Sequence([region])
    if frames > 1:
        # Multi-frame (§C.7.6.6) and Cine (§C.7.6.5): frames 1/30 s apart.
        ds.NumberOfFrames = frames
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
        ds.FrameTime = round(1000.0 / codecs.VIDEO_FRAME_RATE, 4)
        ds.CineRate = codecs.VIDEO_FRAME_RATE
        ds.RecommendedDisplayFrameRate = codecs.VIDEO_FRAME_RATE


def write_us(writer: StudyWriter, rng: np.random.Generator, frames: int) -> None:
    """A transthoracic echocardiogram (PS3.3 §A.6 and §A.7): a cine loop of ``frames`` 640x480 colour frames
    in JPEG baseline (YBR_FULL_422), a key image in RLE lossless (RGB), and the same loop as an MPEG-4
    AVC/H.264 video instance (YBR_PARTIAL_420), which a viewer can play as MP4 without transcoding."""
    loop = list(phantoms.echocardiogram(frames, US_ROWS, US_COLUMNS, rng))
    cine = writer.series(5, "US", "ETT boucle ciné", "HEART")
    ds = writer.instance(cine, US_MULTIFRAME_IMAGE_STORAGE, 1)
    _ultrasound(ds, frames)
    ds.PhotometricInterpretation = "YBR_FULL_422"
    encoded = [codecs.jpeg_baseline(frame, quality=85) for frame in loop]
    _lossy(ds, "ISO_10918_1", sum(frame.nbytes for frame in loop), sum(len(e) for e in encoded))
    ds.PixelData = encapsulate(encoded)
    writer.write(cine, ds, JPEGBaseline8Bit)

    key_image = writer.instance(cine, US_IMAGE_STORAGE, 2)
    _ultrasound(key_image, 1)
    key_image.PhotometricInterpretation = "RGB"
    key_image.ImageType = ["DERIVED", "PRIMARY", "CHEST", "0001"]
    key_image.PixelData = encapsulate([codecs.rle_lossless(loop[len(loop) // 2])])
    writer.write(cine, key_image, RLELossless)

    video = writer.series(6, "US", "ETT vidéo H.264", "HEART")
    ds = writer.instance(video, US_MULTIFRAME_IMAGE_STORAGE, 1)
    stream, count = codecs.h264_stream(loop, US_COLUMNS, US_ROWS)
    _ultrasound(ds, count)
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    _lossy(ds, "ISO_14496_10", sum(frame.nbytes for frame in loop), len(stream))
    # PS3.5 §8.2.8: the whole stream in the fragments of one item sequence, with an empty offset table.
    ds.PixelData = encapsulate([stream], has_bot=False)
    writer.write(video, ds, MPEG4HP41)


# --- MG -------------------------------------------------------------------------------------------------

MG_ROWS, MG_COLUMNS = 2294, 1914
MG_PIXEL_SPACING = 0.094

#: The four screening views: laterality, view, SNOMED CT view code, Patient Orientation (§C.8.11.7.1.1).
MG_VIEWS = (
    ("R", "CC", "399162004", "cranio-caudal", ["P", "L"]),
    ("L", "CC", "399162004", "cranio-caudal", ["A", "R"]),
    ("R", "MLO", "399368009", "medio-lateral oblique", ["P", "F"]),
    ("L", "MLO", "399368009", "medio-lateral oblique", ["A", "F"]),
)


def write_mg(writer: StudyWriter, rng: np.random.Generator) -> None:
    """A bilateral screening mammogram (Digital Mammography X-Ray Image For Presentation, PS3.3 §A.26):
    right and left CC and MLO views, 2294x1914, 12 bits, JPEG 2000 lossless."""
    series = writer.series(7, "MG", "Mammographie 4 incidences", "BREAST")
    for number, (laterality, view, code, meaning, orientation) in enumerate(MG_VIEWS, start=1):
        ds = writer.instance(series, MG_FOR_PRESENTATION_STORAGE, number)
        pixels = phantoms.mammogram(MG_ROWS, MG_COLUMNS, laterality=laterality, view=view, rng=rng)
        # DX Series/Image/Detector (§C.8.11.1-4), Mammography Series/Image (§C.8.11.6-7).
        ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PatientOrientation = orientation
        ds.ImageLaterality = laterality
        ds.ViewPosition = view
        view_code = _code(code, "SCT", meaning)
        view_code.ViewModifierCodeSequence = Sequence()  # no modifier: a standard view
        ds.ViewCodeSequence = Sequence([view_code])
        ds.AnatomicRegionSequence = Sequence([_code("76752008", "SCT", "Breast")])
        ds.PositionerType = "MAMMOGRAPHIC"
        ds.OrganExposed = "BREAST"
        ds.BreastImplantPresent = "NO"
        ds.PartialView = "NO"
        ds.DetectorType = "DIRECT"
        ds.ImagerPixelSpacing = [MG_PIXEL_SPACING, MG_PIXEL_SPACING]
        ds.PixelSpacing = [MG_PIXEL_SPACING, MG_PIXEL_SPACING]
        ds.KVP = 29
        ds.BodyPartThickness = 48
        ds.CompressionForce = 110
        ds.BurnedInAnnotation = "NO"
        ds.QualityControlImage = "NO"
        _monochrome(ds, MG_ROWS, MG_COLUMNS, bits_allocated=16, bits_stored=12)
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.PresentationLUTShape = "IDENTITY"
        ds.LossyImageCompression = "00"
        ds.WindowCenter, ds.WindowWidth = 2200, 3600
        ds.VOILUTFunction = "SIGMOID"
        ds.AcquisitionContextSequence = Sequence()
        ds.PixelData = encapsulate([codecs.jpeg2000_lossless(pixels, bits_stored=12)])
        writer.write(series, ds, JPEG2000Lossless)


# --- Report ---------------------------------------------------------------------------------------------

_REPORT_CONCLUSIONS = {
    "CR": "Pas d'anomalie pleuro-parenchymateuse décelable. Silhouette cardiaque normale.",
    "CT": "Lésion hépatique hypodense de 12 mm du segment VIII, probablement kystique. Contrôle à 6 mois.",
    "MR": "Petite hyperintensité T2 de la substance blanche pariétale droite, aspécifique.",
    "US": "Ventricule gauche non dilaté, fonction systolique globale conservée (FEVG estimée 60 %).",
    "MG": "Seins de densité de type C. Foyer de microcalcifications punctiformes du sein droit : ACR 3.",
}


def write_report(writer: StudyWriter, modality: str) -> None:
    """The radiologist's report as an Encapsulated PDF instance (PS3.3 §A.45.1) in its own series."""
    study, patient = writer.study, writer.study.patient
    series = writer.series(99, "DOC", "Compte rendu", "")
    ds = writer.instance(series, ENCAPSULATED_PDF_STORAGE, 1)
    # Image-only attributes the Encapsulated PDF IOD does not have.
    for keyword in (
        "AcquisitionDate",
        "AcquisitionTime",
        "AcquisitionNumber",
        "BodyPartExamined",
        "OperatorsName",
        "OperatorIdentificationSequence",
    ):
        if keyword in ds:
            delattr(ds, keyword)
    signed = study.started + timedelta(hours=2)
    pdf = text_pdf(
        f"{patient.facility.name} — Compte rendu d'imagerie",
        [
            f"Patient : {patient.family_name} {patient.given_name}, né(e) le {patient.birth_date:%d/%m/%Y}",
            f"IPP : {patient.patient_id} (FINESS {patient.facility.finess})",
            f"Examen : {study.description} du {study.started:%d/%m/%Y}",
            f"N° d'examen : {study.accession_number}",
            f"Médecin demandeur : {study.referring_physician.name.replace('^', ' ')}",
            "",
            f"Conclusion : {_REPORT_CONCLUSIONS[modality]}",
            "",
            "Document de démonstration e-mage : patient et examen fictifs.",
        ],
    )
    # SC Equipment (§C.8.6.1) and Encapsulated Document (§C.24.2).
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "YES"
    ds.AcquisitionDateTime = f"{signed:%Y%m%d%H%M%S}"
    ds.DocumentTitle = f"Compte rendu — {study.description}"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic imaging report")])
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\x00" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    writer.write(series, ds, ExplicitVRLittleEndian)


# --- Orders ---------------------------------------------------------------------------------------------

_DESCRIPTIONS = {
    "cr": ("CR", "Radiographie du thorax de face"),
    "ct": ("CT", "TDM thoraco-abdomino-pelvienne avec injection"),
    "mr": ("MR", "IRM cérébrale sans injection"),
    "us": ("US", "Échographie cardiaque transthoracique"),
    "mg": ("MG", "Mammographie bilatérale de dépistage"),
}


def study_context(
    patient: Patient, kind: str, sequence: int, uids: UidFactory, rng: random.Random
) -> StudyContext:
    """The order for one study of ``kind``: a date in the past two years, an accession number of the
    facility, its referring physician and the technologist who performs it."""
    modality, description = _DESCRIPTIONS[kind]
    facility = patient.facility
    day = date(2024, 12, 2) + timedelta(days=rng.randrange(0, 700))
    started = datetime.combine(day, time(rng.randrange(8, 18), rng.randrange(0, 60), rng.randrange(0, 60)))
    return StudyContext(
        patient=patient,
        modality=modality,
        study_instance_uid=uids(),
        accession_number=f"{facility.accession_prefix}{day:%y}{sequence:07d}",
        study_id=f"{sequence:04d}",
        started=started,
        description=description,
        referring_physician=rng.choice(facility.referring_physicians),
        operator=rng.choice(facility.operators),
    )


def kinds_for(patient: Patient, kinds: tuple[str, ...]) -> Iterator[str]:
    """The requested kinds this patient gets: screening mammography is for women only."""
    for kind in kinds:
        if kind != "mg" or patient.sex == "F":
            yield kind
