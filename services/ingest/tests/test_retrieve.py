"""WADO-RS routes over in-memory stand-ins for the instance index and the archive (PS3.18 §10.4)."""

from __future__ import annotations

import asyncio
import io
import os
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

from emage_common.web import create_service_app
from emage_ingest import retrieve
from emage_ingest.domain.instance import read_instance_header
from emage_ingest.domain.keys import instance_object_key
from emage_ingest.domain.model import ArchivedInstance
from emage_ingest.retrieve import router
from emage_ingest.settings import Settings

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
H264 = "1.2.840.10008.1.2.4.102"
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def _dataset(
    sop_class: str,
    transfer_syntax: str,
    modality: str,
    *,
    study: str | None = None,
    series: str | None = None,
) -> Dataset:
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = transfer_syntax
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID = sop_class
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID = generate_uid()
    dataset.StudyInstanceUID = study or generate_uid()
    dataset.SeriesInstanceUID = series or generate_uid()
    dataset.Modality = modality
    dataset.PatientID = "IPP-0001"
    dataset.InstanceNumber = 1
    return dataset


def _image(dataset: Dataset, rows: int, columns: int, *, samples: int = 1, bits: int = 8) -> None:
    dataset.Rows, dataset.Columns, dataset.SamplesPerPixel = rows, columns, samples
    dataset.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    dataset.BitsAllocated = bits
    dataset.BitsStored = bits if bits == 8 else 12
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 0


def _part10(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    implicit = dataset.file_meta.TransferSyntaxUID == IMPLICIT_LE
    dataset.save_as(buffer, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    return buffer.getvalue()


def _even_fragments(stream: bytes, count: int) -> list[bytes]:
    """``stream`` cut into ``count`` fragments of even length but maybe the last (PS3.5 §A.4)."""
    step = max(2, (len(stream) // count) & ~1)
    return [stream[start : start + step] for start in range(0, len(stream), step)]


class MemoryIndex:
    def __init__(self) -> None:
        self.records: dict[str, ArchivedInstance] = {}

    async def get(self, sop_instance_uid: str) -> ArchivedInstance | None:
        return self.records.get(sop_instance_uid)

    async def list(self, study_uid: str, series_uid: str | None = None) -> list[ArchivedInstance]:
        return [
            record
            for record in self.records.values()
            if record.study_instance_uid == study_uid and series_uid in (None, record.series_instance_uid)
        ]


class MemoryArchive:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.range_reads: list[tuple[int, int]] = []
        self.reading = 0
        """Objects being read at this moment."""
        self.most_read_at_once = 0

    async def stream(self, record: ArchivedInstance, chunk_size: int = 1000) -> AsyncIterator[bytes]:
        data = self.objects[record.object_key]
        self.reading += 1
        self.most_read_at_once = max(self.most_read_at_once, self.reading)
        try:
            for start in range(0, len(data), chunk_size):
                await asyncio.sleep(0.001)  # an S3 GET's round trip, for reads ahead to overlap
                yield data[start : start + chunk_size]
        finally:
            self.reading -= 1

    async def read_range(self, record: ArchivedInstance, start: int, end: int) -> bytes:
        self.range_reads.append((start, end))
        return self.objects[record.object_key][start:end]


class Archive:
    """The stand-ins and a client of the WADO-RS router over them."""

    def __init__(self) -> None:
        self.index = MemoryIndex()
        self.archive = MemoryArchive()
        app = create_service_app(Settings(), title="wado", version="0", readiness={}, routers=[router])
        app.state.ingest = SimpleNamespace(index=self.index, archive=self.archive)
        self.client = TestClient(app)

    def store(self, part10: bytes) -> ArchivedInstance:
        header = read_instance_header(io.BytesIO(part10), len(part10))
        pixels = header.pixels
        key = instance_object_key(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )
        record = ArchivedInstance(
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            transfer_syntax_uid=header.transfer_syntax_uid,
            object_key=key,
            size_bytes=len(part10),
            sha256="ab" * 32,
            stored_at=datetime(2025, 1, 1, tzinfo=UTC),
            facility_finess="750000001",
            modality=header.modality,
            instance_number=header.instance_number,
            number_of_frames=header.number_of_frames,
            frames=header.frames,
            pixels=pixels,
        )
        self.index.records[record.sop_instance_uid] = record
        self.archive.objects[key] = part10
        return record


def path_of(record: ArchivedInstance, *, level: str = "instance") -> str:
    study = f"/studies/{record.study_instance_uid}"
    series = f"{study}/series/{record.series_instance_uid}"
    return {"study": study, "series": series, "instance": f"{series}/instances/{record.sop_instance_uid}"}[
        level
    ]


def multipart_parts(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """(part Content-Type, part content) of a multipart/related body, per RFC 2046 §5.1."""
    assert content_type.startswith("multipart/related")
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    assert body.startswith(b"--" + boundary + b"\r\n")
    assert body.endswith(b"\r\n--" + boundary + b"--\r\n")
    inner = body[len(boundary) + 4 : -(len(boundary) + 8)]
    parts = []
    for piece in inner.split(b"\r\n--" + boundary + b"\r\n"):
        head, content = piece.split(b"\r\n\r\n", 1)
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        parts.append((headers["Content-Type"], content))
    return parts


def _gradient(rows: int, columns: int) -> np.ndarray:
    return (np.add.outer(np.arange(rows), np.arange(columns)) * 255 // (rows + columns)).astype(np.uint8)


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def cr_jpeg(study: str | None = None, rows: int = 48, columns: int = 64) -> bytes:
    dataset = _dataset(CR_STORAGE, JPEG_BASELINE, "CR", study=study)
    _image(dataset, rows, columns)
    dataset.PhotometricInterpretation = "MONOCHROME1"
    dataset.PixelData = encapsulate([_jpeg(_gradient(rows, columns))])
    dataset["PixelData"].VR = "OB"
    dataset.add_new(0x60003000, "OW", os.urandom(2048))  # Overlay Data, bulk data in the metadata
    return _part10(dataset)


def ct_series(count: int, size: int = 32) -> list[bytes]:
    study, series = generate_uid(), generate_uid()
    instances = []
    for number in range(1, count + 1):
        dataset = _dataset("1.2.840.10008.5.1.4.1.1.2", IMPLICIT_LE, "CT", study=study, series=series)
        dataset.InstanceNumber = number
        _image(dataset, size, size, bits=16)
        dataset.PixelRepresentation = 1
        dataset.RescaleSlope, dataset.RescaleIntercept = 1, -1024
        dataset.WindowCenter, dataset.WindowWidth = 40, 400
        dataset.PixelData = (np.arange(size * size, dtype="<i2").reshape(size, size) * number).tobytes()
        dataset["PixelData"].VR = "OW"
        instances.append(_part10(dataset))
    return instances


def us_multiframe(frames: int = 3) -> bytes:
    dataset = _dataset(US_MULTIFRAME, JPEG_BASELINE, "US")
    _image(dataset, 32, 32)
    dataset.NumberOfFrames = frames
    dataset.PixelData = encapsulate(
        [_jpeg(np.roll(_gradient(32, 32), 5 * index, axis=1)) for index in range(frames)]
    )
    dataset["PixelData"].VR = "OB"
    return _part10(dataset)


def video(stream: bytes, frames: int = 20) -> bytes:
    """An ultrasound multi-frame instance whose Pixel Data is an H.264 MP4 file in three fragments."""
    dataset = _dataset(US_MULTIFRAME, H264, "US")
    _image(dataset, 64, 64, samples=3)
    dataset.PhotometricInterpretation = "YBR_PARTIAL_420"
    dataset.NumberOfFrames = frames
    dataset.PixelData = encapsulate(_even_fragments(stream, 3))
    dataset["PixelData"].VR = "OB"
    return _part10(dataset)


def native_multiframe(frames: int, size: int) -> bytes:
    dataset = _dataset(US_MULTIFRAME, EXPLICIT_LE, "US")
    _image(dataset, size, size)
    dataset.NumberOfFrames = frames
    dataset.PixelData = b"".join(bytes([index]) * size * size for index in range(frames))
    dataset["PixelData"].VR = "OB"
    return _part10(dataset)


def mp4_stream(frames: int = 20, size: int = 64) -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "clip.mp4"
        with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
            stream = container.add_stream("libx264", rate=25)
            stream.width = stream.height = size
            stream.pix_fmt = "yuv420p"
            for index in range(frames):
                image = np.zeros((size, size, 3), dtype=np.uint8)
                image[:, (index * 3) % size : (index * 3) % size + 8] = 255
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return path.read_bytes()


@pytest.fixture
def wado() -> Archive:
    return Archive()


# --- instances ----------------------------------------------------------------------------------------------


def test_study_is_streamed_as_stored_one_part_per_instance(wado: Archive) -> None:
    sent = ct_series(3)
    records = [wado.store(data) for data in sent]
    response = wado.client.get(path_of(records[0], level="study"))
    assert response.status_code == 200
    parts = multipart_parts(response.headers["content-type"], response.content)
    assert [content for _, content in parts] == sent
    assert {content_type for content_type, _ in parts} == {
        f"application/dicom; transfer-syntax={IMPLICIT_LE}"
    }
    assert 'type="application/dicom"' in response.headers["content-type"]


def test_a_study_is_read_ahead_a_few_instances_at_once_and_sent_in_order(wado: Archive) -> None:
    sent = ct_series(12)
    records = [wado.store(data) for data in sent]
    response = wado.client.get(path_of(records[0], level="study"))
    parts = multipart_parts(response.headers["content-type"], response.content)
    assert [content for _, content in parts] == sent
    assert 1 < wado.archive.most_read_at_once <= retrieve.READ_AHEAD_INSTANCES
    assert wado.archive.reading == 0


def test_instances_too_large_to_hold_are_streamed_one_at_a_time(
    wado: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retrieve, "READ_AHEAD_MAX_BYTES", 1000)
    sent = ct_series(6)
    records = [wado.store(data) for data in sent]
    response = wado.client.get(path_of(records[0], level="series"))
    parts = multipart_parts(response.headers["content-type"], response.content)
    assert sorted(content for _, content in parts) == sorted(sent)
    assert wado.archive.most_read_at_once == 1


def test_series_and_instance_retrieve(wado: Archive) -> None:
    sent = ct_series(2)
    records = [wado.store(data) for data in sent]
    series = wado.client.get(path_of(records[0], level="series"))
    assert [content for _, content in multipart_parts(series.headers["content-type"], series.content)] == sent
    instance = wado.client.get(
        path_of(records[1]), headers={"Accept": 'multipart/related; type="application/dicom"'}
    )
    assert multipart_parts(instance.headers["content-type"], instance.content)[0][1] == sent[1]
    single = wado.client.get(path_of(records[1]), headers={"Accept": "application/dicom"})
    assert single.headers["content-type"].startswith("application/dicom")
    assert single.content == sent[1]


def test_explicit_little_endian_on_request_decompresses(wado: Archive) -> None:
    record = wado.store(cr_jpeg())
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}'
    response = wado.client.get(path_of(record), headers={"Accept": accept})
    assert response.status_code == 200
    ((content_type, content),) = multipart_parts(response.headers["content-type"], response.content)
    assert content_type == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    dataset = dcmread(io.BytesIO(content))
    assert dataset.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert dataset.pixel_array.shape == (48, 64)
    assert np.abs(dataset.pixel_array.astype(int) - _gradient(48, 64)).max() < 8


def test_implicit_little_endian_is_re_encoded_explicit(wado: Archive) -> None:
    (data,) = ct_series(1)
    record = wado.store(data)
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}'
    response = wado.client.get(path_of(record), headers={"Accept": accept})
    dataset = dcmread(io.BytesIO(multipart_parts(response.headers["content-type"], response.content)[0][1]))
    assert dataset.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert dataset.PixelData == dcmread(io.BytesIO(data)).PixelData


def test_video_cannot_be_decompressed_so_explicit_little_endian_is_406(wado: Archive) -> None:
    record = wado.store(video(mp4_stream()))
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}'
    response = wado.client.get(path_of(record), headers={"Accept": accept})
    assert response.status_code == 406
    assert response.headers["content-type"] == "application/problem+json"


def test_accept_query_parameter_replaces_the_header(wado: Archive) -> None:
    record = wado.store(cr_jpeg())
    response = wado.client.get(path_of(record), params={"accept": "image/png"}, headers={"Accept": "*/*"})
    assert response.status_code == 406


@pytest.mark.parametrize("accept", ["image/jpeg", 'multipart/related; type="image/jpeg"', "text/html"])
def test_unsupported_media_types_are_406(wado: Archive, accept: str) -> None:
    record = wado.store(cr_jpeg())
    assert wado.client.get(path_of(record, level="study"), headers={"Accept": accept}).status_code == 406


def test_malformed_accept_is_400(wado: Archive) -> None:
    record = wado.store(cr_jpeg())
    assert wado.client.get(path_of(record), headers={"Accept": "image/jpeg;q=7"}).status_code == 400


def test_unknown_and_invalid_uids(wado: Archive) -> None:
    record = wado.store(cr_jpeg())
    unknown = generate_uid()
    assert wado.client.get(f"/studies/{unknown}").status_code == 404
    assert wado.client.get(f"/studies/{unknown}/series/{record.series_instance_uid}").status_code == 404
    wrong_study = (
        f"/studies/{unknown}/series/{record.series_instance_uid}/instances/{record.sop_instance_uid}"
    )
    assert wado.client.get(wrong_study).status_code == 404
    for bad in ("1.02.3", "abc", "1..2", "9" * 65):
        response = wado.client.get(f"/studies/{bad}")
        assert response.status_code == 400
        assert response.json()["status"] == 400


# --- frames and bulk data -----------------------------------------------------------------------------------


def test_native_frames_are_the_pixel_bytes_of_each_frame(wado: Archive) -> None:
    data = native_multiframe(5, size=16)
    record = wado.store(data)
    response = wado.client.get(path_of(record) + "/frames/4,2")
    assert response.status_code == 200
    assert 'type="application/octet-stream"' in response.headers["content-type"]
    parts = multipart_parts(response.headers["content-type"], response.content)
    assert [content for _, content in parts] == [bytes([3]) * 256, bytes([1]) * 256]
    assert parts[0][0] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    # Only the frames' bytes were read, each with one ranged read.
    assert wado.archive.range_reads == [
        (record.frames[3].offset, record.frames[3].end),
        (record.frames[1].offset, record.frames[1].end),
    ]


def test_compressed_frames_as_stored_or_decompressed(wado: Archive) -> None:
    data = us_multiframe(3)
    record = wado.store(data)
    stored = wado.client.get(path_of(record) + "/frames/2")
    ((content_type, content),) = multipart_parts(stored.headers["content-type"], stored.content)
    assert content_type == f"image/jpeg; transfer-syntax={JPEG_BASELINE}"
    # A fragment has an even length (PS3.5 §A.4): the stored bit stream may end with one pad byte.
    assert content.removesuffix(b"\x00") == _jpeg(np.roll(_gradient(32, 32), 5, axis=1))
    labelled = wado.client.get(
        path_of(record) + "/frames/1",
        headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"},
    )
    ((content_type, content),) = multipart_parts(labelled.headers["content-type"], labelled.content)
    assert content_type == f"application/octet-stream; transfer-syntax={JPEG_BASELINE}"
    assert content.startswith(b"\xff\xd8")
    decompressed = wado.client.get(
        path_of(record) + "/frames/3",
        headers={"Accept": 'multipart/related; type="application/octet-stream"'},
    )
    ((content_type, content),) = multipart_parts(decompressed.headers["content-type"], decompressed.content)
    assert content_type == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    assert len(content) == 32 * 32


@pytest.mark.parametrize(
    ("frame_list", "status"), [("0", 400), ("1,1", 400), ("x", 400), ("4", 404), ("1,9", 404)]
)
def test_bad_frame_lists(wado: Archive, frame_list: str, status: int) -> None:
    record = wado.store(us_multiframe(3))
    assert wado.client.get(path_of(record) + f"/frames/{frame_list}").status_code == status


def test_frames_of_a_video_are_decoded_to_explicit_little_endian(wado: Archive) -> None:
    """A video's frames are not separable in storage: each one asked for is decoded (what Cornerstone gets
    when OHIF prefetches the frames of a video viewport, with ``transfer-syntax=*``)."""
    record = wado.store(video(mp4_stream()))
    accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    response = wado.client.get(path_of(record) + "/frames/1,5", headers={"Accept": accept})
    assert response.status_code == 200
    parts = multipart_parts(response.headers["content-type"], response.content)
    assert [content_type for content_type, _ in parts] == [
        f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    ] * 2
    first, fifth = (np.frombuffer(content, dtype=np.uint8).reshape(64, 64, 3) for _, content in parts)
    # The white bar of frame n starts at column 3 (n - 1): decoded, give or take the lossy coding.
    assert first[:, 0:8].mean() > 200 > first[:, 20:].mean()
    assert fifth[:, 12:20].mean() > 200 > fifth[:, 0:8].mean()
    default = wado.client.get(path_of(record) + "/frames/20")
    ((content_type, content),) = multipart_parts(default.headers["content-type"], default.content)
    assert content_type == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    assert len(content) == 64 * 64 * 3


def test_frames_of_a_video_are_never_the_bit_stream(wado: Archive) -> None:
    record = wado.store(video(mp4_stream()))
    as_stored = wado.client.get(
        path_of(record) + "/frames/1", headers={"Accept": 'multipart/related; type="video/mp4"'}
    )
    assert as_stored.status_code == 406
    assert "video/mp4" in as_stored.json()["detail"]
    assert wado.client.get(path_of(record) + "/frames/21").status_code == 404


def test_a_video_has_thumbnails_and_rendered_frames(wado: Archive) -> None:
    record = wado.store(video(mp4_stream()))
    for path in ("/thumbnail", "/frames/3/rendered", "/frames/3/thumbnail"):
        response = wado.client.get(path_of(record) + path, headers={"Accept": "image/jpeg"})
        assert response.status_code == 200, path
        assert response.headers["content-type"] == "image/jpeg"
        assert _image_of(response.content).size[0] > 0
    series = wado.client.get(path_of(record).rsplit("/instances/", 1)[0] + "/thumbnail")
    assert series.status_code == 200
    assert series.headers["content-type"] == "image/jpeg"


def test_bulk_data_of_pixel_data_and_of_another_attribute(wado: Archive) -> None:
    data = us_multiframe(2)
    record = wado.store(data)
    pixel = wado.client.get(path_of(record) + "/bulk/7FE00010")
    assert len(multipart_parts(pixel.headers["content-type"], pixel.content)) == 2
    cr = cr_jpeg()
    cr_record = wado.store(cr)
    overlay = wado.client.get(path_of(cr_record) + "/bulk/60003000")
    ((content_type, content),) = multipart_parts(overlay.headers["content-type"], overlay.content)
    assert content_type == "application/octet-stream"
    assert content == dcmread(io.BytesIO(cr))[0x60003000].value
    assert wado.client.get(path_of(cr_record) + "/bulk/00100010").status_code == 404
    assert wado.client.get(path_of(cr_record) + "/bulk/xyz").status_code == 400


# --- rendered and thumbnails --------------------------------------------------------------------------------


def _image_of(content: bytes) -> Image.Image:
    return Image.open(io.BytesIO(content))


def test_rendered_jpeg_by_default_png_on_request(wado: Archive) -> None:
    (data,) = ct_series(1, size=40)
    record = wado.store(data)
    jpeg = wado.client.get(path_of(record) + "/rendered")
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert _image_of(jpeg.content).size == (40, 40)
    png = wado.client.get(path_of(record) + "/rendered", headers={"Accept": "image/png"})
    assert png.headers["content-type"] == "image/png"
    picture = np.asarray(_image_of(png.content))
    assert picture.std() > 10


def test_rendered_window_and_viewport(wado: Archive) -> None:
    record = wado.store(cr_jpeg(rows=48, columns=64))
    response = wado.client.get(
        path_of(record) + "/rendered",
        params={"viewport": "32,32", "window": "128,256,linear", "quality": "80"},
        headers={"Accept": "image/png"},
    )
    assert response.status_code == 200
    picture = np.asarray(_image_of(response.content))
    assert picture.shape == (24, 32)
    # MONOCHROME1: the gradient's dark corner renders bright.
    assert picture[0, 0] > picture[-1, -1]


@pytest.mark.parametrize("params", [{"window": "1,0"}, {"viewport": "0,10"}, {"quality": "101"}])
def test_bad_rendering_parameters_are_400(wado: Archive, params: dict[str, str]) -> None:
    record = wado.store(cr_jpeg())
    assert wado.client.get(path_of(record) + "/rendered", params=params).status_code == 400


def test_rendered_frame_of_a_multiframe(wado: Archive) -> None:
    record = wado.store(us_multiframe(3))
    response = wado.client.get(path_of(record) + "/frames/2/rendered", headers={"Accept": "image/gif"})
    assert response.headers["content-type"] == "image/gif"
    assert _image_of(response.content).size == (32, 32)
    assert wado.client.get(path_of(record) + "/frames/1,2/rendered").status_code == 400
    assert wado.client.get(path_of(record) + "/rendered", headers={"Accept": "text/html"}).status_code == 406


def test_thumbnails_fit_in_128_pixels(wado: Archive) -> None:
    series = [wado.store(data) for data in ct_series(3, size=256)]
    cr = wado.store(cr_jpeg(study=series[0].study_instance_uid, rows=300, columns=200))
    for path in (
        path_of(series[0], level="study"),
        path_of(series[0], level="series"),
        path_of(series[2]),
        path_of(series[1]) + "/frames/1",
    ):
        response = wado.client.get(path + "/thumbnail")
        assert response.status_code == 200, path
        assert response.headers["content-type"] == "image/jpeg"
        assert _image_of(response.content).size == (128, 128)
    assert _image_of(wado.client.get(path_of(cr) + "/thumbnail").content).size == (85, 128)


# --- video --------------------------------------------------------------------------------------------------


def test_video_is_served_as_mp4_with_ranges(wado: Archive) -> None:
    stream = mp4_stream()
    record = wado.store(video(stream))
    whole = wado.client.get(path_of(record) + "/rendered")
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "video/mp4"
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.content == stream
    part = wado.client.get(
        path_of(record) + "/rendered", headers={"Range": "bytes=100-1099", "Accept": "video/mp4"}
    )
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-1099/{len(stream)}"
    assert part.content == stream[100:1100]
    tail = wado.client.get(path_of(record) + "/rendered", headers={"Range": "bytes=-10"})
    assert tail.content == stream[-10:]
    beyond = wado.client.get(path_of(record) + "/rendered", headers={"Range": f"bytes={len(stream)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(stream)}"
    stale = wado.client.get(
        path_of(record) + "/rendered", headers={"Range": "bytes=0-9", "If-Range": '"other"'}
    )
    assert stale.status_code == 200
    assert wado.client.get(path_of(record) + "/rendered", headers={"Accept": "image/jpeg"}).status_code == 406


def test_video_bulk_data_single_part_for_ohif(wado: Archive) -> None:
    stream = mp4_stream()
    record = wado.store(video(stream))
    single = wado.client.get(path_of(record) + "/bulk/7FE00010", params={"accept": "video/mp4"})
    assert single.headers["content-type"] == "video/mp4"
    assert single.content == stream
    multipart = wado.client.get(path_of(record) + "/bulk/7FE00010")
    ((content_type, content),) = multipart_parts(multipart.headers["content-type"], multipart.content)
    assert content_type == f"video/mp4; transfer-syntax={H264}"
    assert content == stream
