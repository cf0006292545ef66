"""Reading and validating a received DICOM Part 10 object, header only (PS3.10 §7, PS3.5 §7).

:func:`read_instance_header` parses the File Meta Information and the data set up to Pixel Data with
pydicom, leaving large values unread, then locates the frames (:mod:`emage_ingest.domain.pixel_data`).
It checks what the archive relies on, and otherwise raises :class:`StoreRejectedError` with the DICOM
failure reason:

* a Part 10 file: 128-byte preamble, ``DICM``, File Meta Information with Transfer Syntax, Media Storage
  SOP Class and Instance UIDs that agree with the data set (PS3.10 §7.1) → else 0xC000 / 0xA900;
* SOP Class, SOP Instance, Study and Series Instance UIDs present and valid (PS3.5 §9.1) → else 0xA900;
* a SOP Class (0x0122) and Transfer Syntax (0xC122) the archive accepts;
* Modality and Patient ID present, since every instance is filed under a patient and an exam type → 0xA900;
* pixel data consistent with the Image Pixel Module (PS3.3 §C.7.6.3) → 0xA900 / 0xC000.

The caller opens the file; nothing here does other I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

from pydantic import ValidationError
from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_preamble
from pydicom.tag import BaseTag

from emage_common.events import Ins, uid_defect
from emage_ingest.domain.model import FrameLocation, PixelAttributes
from emage_ingest.domain.pixel_data import (
    encapsulated_frames,
    native_frames,
    read_pixel_data_element,
)
from emage_ingest.domain.sop_classes import (
    ACCEPTED_STORAGE_SOP_CLASSES,
    ACCEPTED_TRANSFER_SYNTAXES,
    IMPLICIT_VR_LITTLE_ENDIAN,
    NATIVE_TRANSFER_SYNTAXES,
    VIDEO_TRANSFER_SYNTAXES,
)
from emage_ingest.domain.status import FailureReason, StoreRejectedError

logger = logging.getLogger(__name__)

BULK_DATA_THRESHOLD: Final = 1024
"""Binary values longer than this are referenced by BulkDataURI in the DICOM JSON, not inlined."""
# Values longer than this are left unread by pydicom (read on access, if ever).
_DEFER_SIZE: Final = 64 * 1024
_BINARY_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_PIXEL_DATA_TAG: Final = 0x7FE00010
_EXTENDED_OFFSET_TABLE_TAG: Final = 0x7FE00001
_INS_OIDS: Final = frozenset(
    {"1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.9", "1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.11"}
)


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """What the archive records of a valid instance, and its metadata as DICOM JSON (PS3.18 Annex F)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str
    instance_number: int | None
    patient_id: str
    issuer_of_patient_id: str | None
    ins: Ins | None
    number_of_frames: int
    pixels: PixelAttributes | None
    frames: tuple[FrameLocation, ...]
    dicom_json: dict[str, dict[str, Any]]


def _mismatch(detail: str) -> StoreRejectedError:
    return StoreRejectedError(FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS, detail)


def _text(dataset: Dataset, keyword: str) -> str | None:
    value = dataset.get(keyword)
    if value is None:
        return None
    text = str(value).strip(" \0")
    return text or None


def _uid(dataset: Dataset, keyword: str, tag: str) -> str:
    value = _text(dataset, keyword)
    if value is None:
        raise _mismatch(f"{keyword} {tag} is missing or empty")
    defect = uid_defect(value)
    if defect is not None:
        raise _mismatch(f"{keyword} {tag} is not a valid UID (PS3.5 §9.1): {defect}")
    return value


def _int(dataset: Dataset, keyword: str) -> int | None:
    try:
        value = dataset.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _first_float(dataset: Dataset | None, keyword: str) -> float | None:
    if dataset is None:
        return None
    try:
        value = dataset.get(keyword)
        if value is None or value == "":
            return None
        if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
            return float(value)
        return float(next(iter(value)))
    except (TypeError, ValueError, StopIteration):
        return None


def _functional_group(dataset: Dataset, macro: str) -> Dataset | None:
    """The item of ``macro`` in the Shared, else the first Per-Frame, Functional Groups (PS3.3 §C.7.6.16)."""
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        sequence = dataset.get(groups)
        if sequence:
            inner = sequence[0].get(macro)
            if inner:
                item: Dataset = inner[0]
                return item
    return None


def _pixel_attributes(dataset: Dataset) -> PixelAttributes:
    rows, columns = _int(dataset, "Rows"), _int(dataset, "Columns")
    bits_allocated = _int(dataset, "BitsAllocated")
    samples = _int(dataset, "SamplesPerPixel")
    photometric = _text(dataset, "PhotometricInterpretation")
    if not rows or not columns or not bits_allocated or not samples or photometric is None:
        raise _mismatch(
            "an image needs Rows, Columns, Samples per Pixel, Photometric Interpretation and Bits Allocated "
            "(PS3.3 §C.7.6.3)"
        )
    transformation = _functional_group(dataset, "PixelValueTransformationSequence")
    voi = _functional_group(dataset, "FrameVOILUTSequence")
    slope = _first_float(dataset, "RescaleSlope")
    intercept = _first_float(dataset, "RescaleIntercept")
    center = _first_float(dataset, "WindowCenter")
    width = _first_float(dataset, "WindowWidth")
    return PixelAttributes(
        rows=rows,
        columns=columns,
        samples_per_pixel=samples,
        photometric_interpretation=photometric,
        planar_configuration=_int(dataset, "PlanarConfiguration"),
        bits_allocated=bits_allocated,
        bits_stored=_int(dataset, "BitsStored"),
        high_bit=_int(dataset, "HighBit"),
        pixel_representation=_int(dataset, "PixelRepresentation"),
        rescale_slope=slope if slope is not None else _first_float(transformation, "RescaleSlope"),
        rescale_intercept=intercept
        if intercept is not None
        else _first_float(transformation, "RescaleIntercept"),
        window_center=center if center is not None else _first_float(voi, "WindowCenter"),
        window_width=width if width is not None else _first_float(voi, "WindowWidth"),
    )


def _ins(dataset: Dataset) -> Ins | None:
    """The INS among Other Patient IDs (0010,1002), recognised by its assigning authority's OID."""
    for item in dataset.get("OtherPatientIDsSequence") or ():
        matricule = _text(item, "PatientID")
        issuers = {_text(item, "IssuerOfPatientID")}
        for qualifiers in item.get("IssuerOfPatientIDQualifiersSequence") or ():
            issuers.add(_text(qualifiers, "UniversalEntityID"))
        oid = next((issuer for issuer in issuers if issuer in _INS_OIDS), None)
        if matricule is None or oid is None:
            continue
        try:
            return Ins.model_validate({"matricule": matricule, "oid": oid})
        except ValidationError:
            logger.warning("an INS with an invalid matricule was ignored")
    return None


def _read_datasets(fp: BinaryIO) -> tuple[Dataset, str]:
    try:
        read_preamble(fp, False)
        # PS3.10 §7.1: the File Meta Information is group 0002 in Explicit VR Little Endian.
        meta = read_dataset(fp, False, True, stop_when=lambda tag, _vr, _length: tag.group != 0x0002)
    except InvalidDicomError:
        raise StoreRejectedError(
            FailureReason.CANNOT_UNDERSTAND,
            "not a DICOM Part 10 file: no 'DICM' prefix after the 128-byte preamble (PS3.10 §7.1)",
        ) from None
    except Exception as exc:
        raise StoreRejectedError(
            FailureReason.CANNOT_UNDERSTAND, f"the File Meta Information cannot be read: {exc}"
        ) from None
    transfer_syntax = _text(meta, "TransferSyntaxUID")
    if transfer_syntax is None:
        raise StoreRejectedError(
            FailureReason.CANNOT_UNDERSTAND,
            "the File Meta Information has no Transfer Syntax UID (0002,0010)",
        )
    if transfer_syntax not in ACCEPTED_TRANSFER_SYNTAXES:
        raise StoreRejectedError(
            FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED, f"Transfer Syntax {transfer_syntax} is not accepted"
        )
    fp.seek(0)
    try:
        dataset = dcmread(fp, stop_before_pixels=True, defer_size=_DEFER_SIZE)
    except Exception as exc:
        raise StoreRejectedError(
            FailureReason.CANNOT_UNDERSTAND, f"the data set cannot be parsed: {exc}"
        ) from None
    return dataset, transfer_syntax


def read_instance_header(fp: BinaryIO, file_size: int) -> InstanceHeader:
    """Parse and validate the Part 10 object in ``fp`` (seekable, ``file_size`` bytes long).

    Raises :class:`StoreRejectedError` with the DICOM failure reason when the object cannot be archived.
    pydicom decodes values lazily, on first access, so a malformed element can surface as almost any
    exception anywhere below: each becomes 0xC000 (cannot understand).
    """
    try:
        return _read_instance_header(fp, file_size)
    except StoreRejectedError:
        raise
    except Exception as exc:
        raise StoreRejectedError(
            FailureReason.CANNOT_UNDERSTAND, f"the data set cannot be decoded: {str(exc)[:200]}"
        ) from None


def _read_instance_header(fp: BinaryIO, file_size: int) -> InstanceHeader:
    dataset, transfer_syntax = _read_datasets(fp)
    pixel_position = fp.tell()
    meta = dataset.file_meta
    sop_class = _uid(dataset, "SOPClassUID", "(0008,0016)")
    sop_instance = _uid(dataset, "SOPInstanceUID", "(0008,0018)")
    study = _uid(dataset, "StudyInstanceUID", "(0020,000D)")
    series = _uid(dataset, "SeriesInstanceUID", "(0020,000E)")
    if _text(meta, "MediaStorageSOPClassUID") != sop_class:
        raise _mismatch("Media Storage SOP Class UID (0002,0002) differs from SOP Class UID (PS3.10 §7.1)")
    if _text(meta, "MediaStorageSOPInstanceUID") != sop_instance:
        raise _mismatch(
            "Media Storage SOP Instance UID (0002,0003) differs from SOP Instance UID (PS3.10 §7.1)"
        )
    if sop_class not in ACCEPTED_STORAGE_SOP_CLASSES:
        raise StoreRejectedError(
            FailureReason.SOP_CLASS_NOT_SUPPORTED, f"SOP Class {sop_class} is not one this archive stores"
        )
    modality = _text(dataset, "Modality")
    if modality is None:
        raise _mismatch("Modality (0008,0060) is missing or empty")
    patient_id = _text(dataset, "PatientID")
    if patient_id is None:
        raise _mismatch("Patient ID (0010,0020) is missing or empty: every instance is filed under a patient")

    pixel_element = read_pixel_data_element(
        fp,
        pixel_position,
        file_size,
        implicit_vr=transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN,
        little_endian=True,
    )
    pixels: PixelAttributes | None = None
    frames: tuple[FrameLocation, ...] = ()
    number_of_frames = 0
    if pixel_element is not None:
        pixels = _pixel_attributes(dataset)
        number_of_frames = _int(dataset, "NumberOfFrames") or 1
        if number_of_frames < 1:
            raise _mismatch("Number of Frames (0028,0008) is not a positive integer")
        if pixel_element.encapsulated == (transfer_syntax in NATIVE_TRANSFER_SYNTAXES):
            raise StoreRejectedError(
                FailureReason.CANNOT_UNDERSTAND,
                "Pixel Data encoding (native or encapsulated) contradicts the Transfer Syntax (PS3.5 §A.4)",
            )
        if pixel_element.encapsulated:
            frames = encapsulated_frames(
                fp,
                pixel_element,
                file_size,
                number_of_frames=number_of_frames,
                transfer_syntax_uid=transfer_syntax,
                video=transfer_syntax in VIDEO_TRANSFER_SYNTAXES,
                extended_offsets=_extended_offsets(dataset),
            )
        else:
            frames = native_frames(
                pixel_element,
                number_of_frames=number_of_frames,
                rows=pixels.rows,
                columns=pixels.columns,
                samples_per_pixel=pixels.samples_per_pixel,
                bits_allocated=pixels.bits_allocated,
            )

    bulk_root = f"studies/{study}/series/{series}/instances/{sop_instance}/bulk"
    metadata = dataset_to_dicom_json(dataset, bulk_root)
    if pixel_element is not None:
        metadata[f"{_PIXEL_DATA_TAG:08X}"] = {
            "vr": "OB" if pixel_element.encapsulated else pixel_element.vr,
            "BulkDataURI": f"{bulk_root}/{_PIXEL_DATA_TAG:08X}",
        }
    return InstanceHeader(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=study,
        series_instance_uid=series,
        transfer_syntax_uid=transfer_syntax,
        modality=modality,
        instance_number=_int(dataset, "InstanceNumber"),
        patient_id=patient_id,
        issuer_of_patient_id=_text(dataset, "IssuerOfPatientID"),
        ins=_ins(dataset),
        number_of_frames=number_of_frames,
        pixels=pixels,
        frames=frames,
        dicom_json=metadata,
    )


def _extended_offsets(dataset: Dataset) -> list[int] | None:
    value = dataset.get(_EXTENDED_OFFSET_TABLE_TAG)
    if value is None or not value.value:
        return None
    raw = bytes(value.value)
    if len(raw) % 8:
        raise StoreRejectedError(
            FailureReason.CANNOT_UNDERSTAND,
            "the Extended Offset Table (7FE0,0001) is not a list of 64-bit offsets",
        )
    return [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)]


def dataset_to_dicom_json(dataset: Dataset, bulk_root: str) -> dict[str, dict[str, Any]]:
    """``dataset`` in the DICOM JSON Model (PS3.18 §F.2), binary values over 1 KiB as BulkDataURI.

    The URI of a top-level value is ``{bulk_root}/{tag}``; of a value nested in a sequence,
    ``{bulk_root}/{sequence tag}/{item index}/{tag}`` (relative to the DICOMweb root). Large values pydicom
    left unread are referenced without being read. An element pydicom cannot decode is left out (the
    stored object keeps it; the metadata is a view of it).
    """
    result: dict[str, dict[str, Any]] = {}
    for tag in tuple(dataset.keys()):
        name = f"{int(tag):08X}"
        if tag == _PIXEL_DATA_TAG or BaseTag(tag).group == 0x0002:
            continue
        raw = dataset.get_item(tag, keep_deferred=True)
        vr = _vr_of(raw, BaseTag(tag))
        uri = f"{bulk_root}/{name}"
        if vr in _BINARY_VRS and isinstance(raw, RawDataElement) and raw.value is None and raw.length:
            result[name] = {"vr": vr, "BulkDataURI": uri}
            continue
        try:
            element = dataset[tag]
            result[name] = _element_to_json(element, uri)
        except Exception:
            logger.warning("DICOM JSON: element %s cannot be decoded and is left out", name, exc_info=True)
    return result


def _vr_of(raw: DataElement | RawDataElement | None, tag: BaseTag) -> str:
    if raw is not None and raw.VR:
        return str(raw.VR)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _element_to_json(element: DataElement, uri: str) -> dict[str, Any]:
    if element.VR == "SQ":
        items = [dataset_to_dicom_json(item, f"{uri}/{index}") for index, item in enumerate(element.value)]
        return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
    if element.VR in _BINARY_VRS and element.value is not None and len(element.value) > BULK_DATA_THRESHOLD:
        return {"vr": str(element.VR), "BulkDataURI": uri}
    handler: Callable[[DataElement], str] = lambda _element: uri  # noqa: E731
    json_element: dict[str, Any] = element.to_json_dict(handler, BULK_DATA_THRESHOLD)
    return json_element
