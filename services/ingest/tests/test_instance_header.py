"""Parsing and validating received Part 10 objects (domain, no I/O besides in-memory streams)."""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from emage_ingest.domain.instance import InstanceHeader, read_instance_header
from emage_ingest.domain.status import FailureReason, StoreRejectedError

_SAMPLES: dict[str, bytes] = {}


def _sample(dicom: Any, kind: str) -> bytes:
    """One valid object of each kind, built once for all the examples of a property test."""
    if kind not in _SAMPLES:
        _SAMPLES[kind] = {
            "ct": lambda: dicom.ct_slice(size=16),
            "multiframe": lambda: dicom.native_multiframe(3, size=8),
            "encapsulated": lambda: dicom.encapsulated(
                [[b"\xff\xd8" + bytes(10)], [b"\xff\xd8" + bytes(12)]]
            ),
        }[kind]()
    return _SAMPLES[kind]


def parse(data: bytes) -> InstanceHeader:
    return read_instance_header(io.BytesIO(data), len(data))


def rejection(data: bytes) -> StoreRejectedError:
    with pytest.raises(StoreRejectedError) as raised:
        parse(data)
    return raised.value


def test_a_ct_slice_yields_identifiers_pixels_one_frame_and_dicom_json(dicom: Any) -> None:
    data = dicom.ct_slice(size=32, SOPInstanceUID="1.2.3.4")
    header = parse(data)
    assert header.sop_instance_uid == "1.2.3.4"
    assert header.modality == "CT"
    assert header.number_of_frames == 1
    assert header.pixels is not None
    assert (header.pixels.rows, header.pixels.bits_allocated) == (32, 16)
    assert (header.pixels.window_center, header.pixels.window_width) == (40.0, 400.0)
    assert header.pixels.rescale_intercept == -1024.0
    (frame,) = header.frames
    assert frame.length == 32 * 32 * 2
    assert frame.end == len(data)  # Pixel Data is the last element
    bulk = header.dicom_json["7FE00010"]
    assert bulk["vr"] == "OW"
    assert bulk["BulkDataURI"] == (
        f"studies/{header.study_instance_uid}/series/{header.series_instance_uid}/instances/1.2.3.4/bulk/7FE00010"
    )
    assert header.dicom_json["00100020"] == {"vr": "LO", "Value": ["IPP-0001"]}


def test_implicit_vr_little_endian_pixel_data_is_located(dicom: Any) -> None:
    data = dicom.ct_slice(size=16, transfer_syntax="1.2.840.10008.1.2")
    (frame,) = parse(data).frames
    assert frame.length == 16 * 16 * 2
    assert frame.end == len(data)


def test_native_multiframe_frames_are_contiguous(dicom: Any) -> None:
    data = dicom.native_multiframe(5, size=8)
    header = parse(data)
    assert header.number_of_frames == 5
    for index, frame in enumerate(header.frames):
        assert data[frame.offset : frame.end] == bytes([index]) * 64


@pytest.mark.parametrize("offset_table", ["basic", "empty", "extended"])
def test_encapsulated_one_fragment_per_frame(dicom: Any, offset_table: str) -> None:
    frames = [[b"\xff\xd8" + os.urandom(20 + i) + b"\xff\xd9"] for i in range(4)]
    data = dicom.encapsulated(frames, offset_table=offset_table)
    header = parse(data)
    assert [frame.extract(data[frame.offset : frame.end]) for frame in header.frames] == [
        f[0] for f in frames
    ]


def test_encapsulated_frames_of_several_fragments_by_offset_table_and_by_markers(dicom: Any) -> None:
    frames = [[b"\xff\xd8" + os.urandom(10), os.urandom(7) + b"\xff\xd9"] for _ in range(3)]
    for offset_table in ("basic", "empty"):
        data = dicom.encapsulated(frames, offset_table=offset_table)
        header = parse(data)
        assert len(header.frames) == 3
        for frame, fragments in zip(header.frames, frames, strict=True):
            assert len(frame.fragments) == 2
            assert frame.extract(data[frame.offset : frame.end]) == b"".join(fragments)


def test_a_single_frame_owns_all_fragments(dicom: Any) -> None:
    frames = [[b"\xff\xd8" + os.urandom(10), os.urandom(9), os.urandom(3) + b"\xff\xd9"]]
    data = dicom.encapsulated(frames, offset_table="empty")
    (frame,) = parse(data).frames
    assert frame.extract(data[frame.offset : frame.end]) == b"".join(frames[0])


def test_fragments_without_boundaries_are_cannot_understand(dicom: Any) -> None:
    frames = [[os.urandom(10), os.urandom(10)], [os.urandom(10), os.urandom(10)]]
    data = dicom.encapsulated(frames, offset_table="empty", transfer_syntax="1.2.840.10008.1.2.5")
    assert rejection(data).reason is FailureReason.CANNOT_UNDERSTAND


def test_a_video_bitstream_is_one_location(dicom: Any) -> None:
    stream = os.urandom(1000)
    data = dicom.video(stream)
    header = parse(data)
    (location,) = header.frames
    assert location.extract(data[location.offset : location.end]) == stream
    assert header.number_of_frames == 30


def test_not_dicom_is_cannot_understand() -> None:
    assert rejection(b"hello world" * 100).reason is FailureReason.CANNOT_UNDERSTAND
    assert rejection(b"").reason is FailureReason.CANNOT_UNDERSTAND
    assert rejection(bytes(128) + b"DICM" + os.urandom(300)).reason is FailureReason.CANNOT_UNDERSTAND


def test_a_data_set_without_preamble_is_not_part10(dicom: Any) -> None:
    assert rejection(dicom.ct_slice()[132:]).reason is FailureReason.CANNOT_UNDERSTAND


@pytest.mark.parametrize(
    ("attributes", "reason", "words"),
    [
        ({"StudyInstanceUID": None}, FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS, "StudyInstanceUID"),
        ({"SeriesInstanceUID": "1.2.03"}, FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS, "leading zero"),
        ({"StudyInstanceUID": "1.2.abc"}, FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS, "not a valid UID"),
        ({"Modality": None}, FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS, "Modality"),
        ({"PatientID": ""}, FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS, "Patient ID"),
        (
            {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.66"},
            FailureReason.SOP_CLASS_NOT_SUPPORTED,
            "1.2.840.10008.5.1.4.1.1.66",
        ),
    ],
)
def test_invalid_instances_get_the_failure_reason(
    dicom: Any, attributes: dict[str, Any], reason: FailureReason, words: str
) -> None:
    rejected = rejection(dicom.ct_slice(**attributes))
    assert rejected.reason is reason
    assert words in rejected.detail


def test_meta_information_contradicting_the_data_set(dicom: Any) -> None:
    dataset = dicom.dataset()
    dataset.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    assert rejection(dicom.part10_as_is(dataset)).reason is FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS


@pytest.mark.parametrize("transfer_syntax", ["1.2.840.10008.1.2.1.99", "1.2.3.4.5"])
def test_unsupported_transfer_syntaxes(dicom: Any, transfer_syntax: str) -> None:
    dataset = dicom.dataset()
    dataset.file_meta.TransferSyntaxUID = transfer_syntax
    assert rejection(dicom.part10_as_is(dataset)).reason is FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED


def test_big_endian_is_not_accepted(dicom: Any) -> None:
    data = dicom.ct_slice().replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.2\x00", 1)
    assert rejection(data).reason is FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED


def test_truncated_pixel_data_is_cannot_understand(dicom: Any) -> None:
    data = dicom.ct_slice(size=32)
    assert rejection(data[:-100]).reason is FailureReason.CANNOT_UNDERSTAND


def test_pixel_data_shorter_than_the_image_is_a_mismatch(dicom: Any) -> None:
    data = dicom.ct_slice(size=32, Rows=64)
    assert rejection(data).reason is FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS


def test_ins_from_other_patient_ids_and_issuer(dicom: Any) -> None:
    item = Dataset()
    item.PatientID = "279035121518989"
    qualifiers = Dataset()
    qualifiers.UniversalEntityID = "1.2.250.1.213.1.4.8"
    qualifiers.UniversalEntityIDType = "ISO"
    item.IssuerOfPatientIDQualifiersSequence = Sequence([qualifiers])
    header = parse(dicom.ct_slice(OtherPatientIDsSequence=Sequence([item]), IssuerOfPatientID="CHU-NANTES"))
    assert header.ins is not None
    assert header.ins.matricule == "279035121518989"
    assert header.issuer_of_patient_id == "CHU-NANTES"


def test_large_binary_values_become_bulk_data_uris_small_ones_stay_inline(dicom: Any) -> None:
    header = parse(
        dicom.ct_slice(
            EncapsulatedDocument=os.urandom(200_000),  # deferred by the reader, never read
            RedPaletteColorLookupTableData=os.urandom(2048),
            IconImageSequence=None,
            ImagerPixelSpacing=[0.5, 0.5],
        )
    )
    root = header.dicom_json["7FE00010"]["BulkDataURI"].removesuffix("/7FE00010")
    assert header.dicom_json["00420011"] == {"vr": "OB", "BulkDataURI": f"{root}/00420011"}
    assert header.dicom_json["00281201"] == {"vr": "OW", "BulkDataURI": f"{root}/00281201"}


def test_enhanced_objects_take_window_and_rescale_from_functional_groups(dicom: Any) -> None:
    transformation = Dataset()
    transformation.RescaleSlope = 2
    transformation.RescaleIntercept = -1000
    voi = Dataset()
    voi.WindowCenter = 50
    voi.WindowWidth = 350
    shared = Dataset()
    shared.PixelValueTransformationSequence = Sequence([transformation])
    shared.FrameVOILUTSequence = Sequence([voi])
    data = dicom.ct_slice(
        SOPClassUID="1.2.840.10008.5.1.4.1.1.2.1",
        SharedFunctionalGroupsSequence=Sequence([shared]),
        WindowCenter=None,
        WindowWidth=None,
        RescaleSlope=None,
        RescaleIntercept=None,
    )
    pixels = parse(data).pixels
    assert pixels is not None
    assert (pixels.rescale_slope, pixels.rescale_intercept) == (2.0, -1000.0)
    assert (pixels.window_center, pixels.window_width) == (50.0, 350.0)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    flips=st.lists(st.tuples(st.integers(min_value=0, max_value=1200), st.integers(0, 255)), max_size=6),
    cut=st.one_of(st.none(), st.integers(min_value=0, max_value=3000)),
)
def test_corrupted_objects_are_rejected_never_crash(
    dicom: Any, data: Any, flips: list[Any], cut: int | None
) -> None:
    base = _sample(dicom, data.draw(st.sampled_from(["ct", "multiframe", "encapsulated"])))
    mutated = bytearray(base)
    for position, value in flips:
        if position < len(mutated):
            mutated[position] = value
    if cut is not None:
        mutated = mutated[:cut]
    with contextlib.suppress(StoreRejectedError):
        parse(bytes(mutated))
