"""The benchmark's data: a CT series of 512x512x16-bit slices, copied under new UIDs for every upload,
and a catalog of header-only instances for the QIDO-RS searches.

The CT slices come from the ``emage`` command line's generator (``emage_cli.synthetic``: a contrast CT
phantom, explicit VR little endian, ~0.5 MB a slice), generated once and cached under ``.local/bench``.
Every upload of the series (each repetition, each system) gets fresh Study, Series and SOP Instance UIDs and a
fresh accession number, so that no store is ever a duplicate that an archive could skip.
"""

from __future__ import annotations

import io
import random
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

BOUNDARY = "emage-bench-boundary-7d41"
STOW_CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


# --- The CT series ---------------------------------------------------------------------------------------


def ct_template(slices: int, cache: Path) -> list[Path]:
    """``slices`` CT slices written by ``emage_cli``'s generator, cached by slice count."""
    from emage_cli.synthetic import studies
    from emage_cli.synthetic.identities import patient_roster
    from emage_cli.synthetic.studies import StudyWriter
    from emage_cli.synthetic.uids import UidFactory

    folder = cache / f"ct-{slices}"
    done = folder / ".complete"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        # Patient 4 of the roster is a CHU Alpha patient: ordered by referrer-a, acquired by technician-a.
        patient = patient_roster(4, random.Random(0))[3]  # noqa: S311 - reproducible synthetic data
        rng = random.Random(f"bench:{slices}")  # noqa: S311
        uids = UidFactory(rng)
        writer = StudyWriter(folder, studies.study_context(patient, "ct", 4, uids, rng), uids)
        studies.write_ct(writer, np.random.default_rng(slices), slices)
        done.touch()
    files = sorted(path for path in folder.rglob("*.dcm"))
    if len(files) != slices:
        raise RuntimeError(f"{folder} holds {len(files)} slices, not {slices}: delete it and run again")
    return files


@dataclass(frozen=True)
class UploadedSeries:
    """One copy of the CT series under new UIDs, as Part 10 bytes ready to send."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uids: tuple[str, ...]
    instances: tuple[bytes, ...]

    @property
    def size_bytes(self) -> int:
        return sum(len(part) for part in self.instances)


class SeriesFactory:
    """Copies of the template series, each under new UIDs: one per upload."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)
        self._datasets = [dcmread(path) for path in files]
        self._copies = 0

    @property
    def slices(self) -> int:
        return len(self._datasets)

    def fresh(self, slices: int | None = None) -> UploadedSeries:
        """The first ``slices`` slices (all by default; more repeats the volume) under new UIDs."""
        study, series, accession = self._new_study()
        sop_uids: list[str] = []
        parts: list[bytes] = []
        for index in range(slices if slices is not None else len(self._datasets)):
            ds = self._restamped(index, study, series, accession)
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            sop_uids.append(str(ds.SOPInstanceUID))
            parts.append(buffer.getvalue())
        return UploadedSeries(study, series, tuple(sop_uids), tuple(parts))

    def fresh_files(self, folder: Path, slices: int) -> tuple[UploadedSeries, list[Path]]:
        """Like :meth:`fresh`, written as files under ``folder`` (bytes are not kept in memory)."""
        folder.mkdir(parents=True, exist_ok=True)
        study, series, accession = self._new_study()
        sop_uids: list[str] = []
        files: list[Path] = []
        for index in range(slices):
            ds = self._restamped(index, study, series, accession)
            path = folder / f"{index + 1:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            sop_uids.append(str(ds.SOPInstanceUID))
            files.append(path)
        return UploadedSeries(study, series, tuple(sop_uids), ()), files

    def _new_study(self) -> tuple[str, str, str]:
        self._copies += 1
        accession = f"BENCH{self._copies:05d}{random.randrange(10**6):06d}"  # noqa: S311
        return generate_uid(), generate_uid(), accession

    def _restamped(self, index: int, study: str, series: str, accession: str) -> Dataset:
        """Slice ``index`` (the volume repeats past its end) re-identified for a new upload."""
        ds = self._datasets[index % len(self._datasets)]
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.AccessionNumber = accession
        ds.InstanceNumber = index + 1
        return ds


def multipart(parts: Sequence[bytes]) -> bytes:
    """A STOW-RS request body (PS3.18 §10.5.1.2): one ``application/dicom`` part per instance."""
    body = bytearray()
    for part in parts:
        body += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += part
        body += b"\r\n"
    body += f"--{BOUNDARY}--\r\n".encode()
    return bytes(body)


def multipart_from_files(files: Sequence[Path], chunk: int = 1024 * 1024) -> Iterator[bytes]:
    """The same body streamed from files, for uploads larger than the client should hold in memory."""
    for path in files:
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        with path.open("rb") as source:
            while block := source.read(chunk):
                yield block
        yield b"\r\n"
    yield f"--{BOUNDARY}--\r\n".encode()


def small_ct(patient_id: str, issuer: str, *, study: str | None = None) -> bytes:
    """A one-instance CT study (64x64, 16-bit) of ``patient_id``: the freshness probes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = issuer
    ds.PatientName = "FRESHNESS^PROBE"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = date.today().strftime("%Y%m%d")
    ds.StudyTime = "120000"
    ds.AccessionNumber = f"FRESH{random.randrange(10**9):09d}"  # noqa: S311
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    ds.PixelData = bytes(range(256)) * 32
    ds["PixelData"].VR = "OW"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --- The QIDO-RS catalog ---------------------------------------------------------------------------------

CATALOG_FACILITY = "750000001"
"""Every catalog study is CHU Alpha's: radiologist-a's search scope then covers all of them, and both
systems hold the same searchable set (Orthanc has no scope)."""
CATALOG_PATIENT_PREFIX = "IPP-A-Q"
CATALOG_FIRST_DAY = date(2021, 1, 1)
CATALOG_DAYS = 1826
_FAMILY_NAMES = (
    "MARTIN", "BERNARD", "THOMAS", "PETIT", "ROBERT", "RICHARD", "DURAND", "DUBOIS", "MOREAU", "LAURENT",
    "SIMON", "MICHEL", "LEFEBVRE", "LEROY", "ROUX", "DAVID", "BERTRAND", "MOREL", "FOURNIER", "GIRARD",
    "BONNET", "DUPONT", "LAMBERT", "FONTAINE", "ROUSSEAU", "VINCENT", "MULLER", "LEFEVRE", "FAURE", "ANDRE",
    "MERCIER", "BLANC", "GUERIN", "BOYER", "GARNIER", "CHEVALIER", "FRANCOIS", "LEGRAND", "GAUTHIER",
    "GARCIA",
)  # fmt: skip
_GIVEN_NAMES = (
    "MARIE", "JEAN", "PIERRE", "MICHEL", "ANNE", "PHILIPPE", "NATHALIE", "ISABELLE", "CATHERINE", "ALAIN",
    "SYLVIE", "PATRICK", "NICOLAS", "CHRISTINE", "FRANCOISE", "LAURENT", "SANDRINE", "ERIC", "VALERIE",
    "DAVID",
    "CELINE", "JULIEN", "STEPHANE", "SOPHIE", "THIERRY", "CAMILLE", "LUCAS", "EMMA", "HUGO", "LEA",
)  # fmt: skip
#: Modality → (SOP Class UID, study description, body part).
_MODALITIES = {
    "CT": ("1.2.840.10008.5.1.4.1.1.2", "TDM THORAX", "CHEST"),
    "MR": ("1.2.840.10008.5.1.4.1.1.4", "IRM CEREBRALE", "HEAD"),
    "CR": ("1.2.840.10008.5.1.4.1.1.1", "RADIO THORAX", "CHEST"),
    "US": ("1.2.840.10008.5.1.4.1.1.6.1", "ECHO ABDOMINALE", "ABDOMEN"),
    "MG": ("1.2.840.10008.5.1.4.1.1.1.2", "MAMMOGRAPHIE", "BREAST"),
}
CATALOG_MODALITIES = tuple(_MODALITIES)


@dataclass(frozen=True)
class CatalogStudy:
    """One synthetic study of the catalog: what the searches match on."""

    index: int
    study_instance_uid: str
    patient_id: str
    family_name: str
    given_name: str
    birth_date: str
    sex: str
    study_date: str
    study_time: str
    modality: str
    accession_number: str


def catalog_plan(studies: int, seed: int = 8) -> list[CatalogStudy]:
    """``studies`` studies of ``studies // 4`` patients (4 studies each, on average), spread over five years
    and the five modalities; deterministic for a seed (UIDs included)."""
    rng = random.Random(f"catalog:{seed}:{studies}")  # noqa: S311 - reproducible synthetic data
    patients: list[tuple[str, str, str, str, str]] = []
    for number in range(max(1, studies // 4)):
        sex = rng.choice("FM")
        born = date(1930, 1, 1) + timedelta(days=rng.randrange(0, 85 * 365))
        patients.append(
            (
                f"{CATALOG_PATIENT_PREFIX}{number + 1:07d}",
                rng.choice(_FAMILY_NAMES),
                rng.choice(_GIVEN_NAMES),
                born.strftime("%Y%m%d"),
                sex,
            )
        )
    plan = []
    for index in range(studies):
        patient_id, family, given, birth_date, sex = patients[rng.randrange(len(patients))]
        day = CATALOG_FIRST_DAY + timedelta(days=rng.randrange(CATALOG_DAYS))
        plan.append(
            CatalogStudy(
                index=index,
                study_instance_uid=f"2.25.{rng.getrandbits(120)}",
                patient_id=patient_id,
                family_name=family,
                given_name=given,
                birth_date=birth_date,
                sex=sex,
                study_date=day.strftime("%Y%m%d"),
                study_time=f"{rng.randrange(7, 20):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}",
                modality=CATALOG_MODALITIES[index % len(CATALOG_MODALITIES)],
                accession_number=f"Q{index + 1:09d}",
            )
        )
    return plan


def catalog_instances(study: CatalogStudy, instances: int) -> Iterator[bytes]:
    """The header-only Part 10 instances of ``study``: two series, no Pixel Data (metadata is what QIDO-RS
    searches). The same bytes go to both systems."""
    sop_class, description, body_part = _MODALITIES[study.modality]
    rng = random.Random(study.study_instance_uid)  # noqa: S311
    series_sizes = (instances - instances // 2, instances // 2)
    for series_number, size in enumerate(series_sizes, start=1):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = ""
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = study.study_date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = study.study_time
        ds.AccessionNumber = study.accession_number
        ds.Modality = study.modality
        ds.Manufacturer = "e-mage bench"
        ds.InstitutionName = "CHU Alpha"
        ds.ReferringPhysicianName = "LEFEVRE^Marc"
        ds.StudyDescription = description
        ds.SeriesDescription = f"{description} {series_number}"
        ds.PatientName = f"{study.family_name}^{study.given_name}"
        ds.PatientID = study.patient_id
        ds.IssuerOfPatientID = CATALOG_FACILITY
        ds.PatientBirthDate = study.birth_date
        ds.PatientSex = study.sex
        ds.BodyPartExamined = body_part
        ds.StudyInstanceUID = study.study_instance_uid
        ds.SeriesInstanceUID = f"2.25.{rng.getrandbits(120)}"
        ds.StudyID = str(study.index + 1)
        ds.SeriesNumber = series_number
        ds.InstanceNumber = 0
        for number in range(1, size + 1):
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID = UID(f"2.25.{rng.getrandbits(120)}")
            ds.InstanceNumber = number
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            yield buffer.getvalue()


def instance_stored_record(part10: bytes) -> tuple[bytes, bytes]:
    """(key, value) of the ``emage.instance.stored.v1`` record ingest would publish for ``part10``.

    Built by ingest's own code (:func:`emage_ingest.domain.instance.read_instance_header`, its object key
    and the :class:`~emage_common.events.InstanceStored` model), so the catalog consumes exactly what a STOW
    would have produced, less the S3 object (QIDO-RS never reads it).
    """
    import hashlib
    from datetime import UTC, datetime

    from emage_common.events import InstanceStored, PatientIdentity, make_event
    from emage_ingest.domain.instance import read_instance_header
    from emage_ingest.domain.keys import instance_object_key

    header = read_instance_header(io.BytesIO(part10), len(part10))
    stored = InstanceStored(
        study_instance_uid=header.study_instance_uid,
        series_instance_uid=header.series_instance_uid,
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        transfer_syntax_uid=header.transfer_syntax_uid,
        object_key=instance_object_key(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        ),
        size_bytes=len(part10),
        sha256=hashlib.sha256(part10).hexdigest(),
        facility_finess=CATALOG_FACILITY,
        patient=PatientIdentity(
            patient_id=header.patient_id, issuer_of_patient_id=header.issuer_of_patient_id or CATALOG_FACILITY
        ),
        modality=header.modality,
        stored_at=datetime.now(UTC),
        dicom_json=header.dicom_json,
    )
    event = make_event(stored, "/emage/bench/bulk-load", subject=header.sop_instance_uid)
    return header.study_instance_uid.encode(), event.to_bytes()
