"""WADO-RS on the real ingest process: instances stored by STOW-RS come back byte-identical (PS3.18 §10.4).

Instances of four kinds are stored through ``POST /studies`` of the running ingest service (archive encrypted
in SeaweedFS, index in MongoDB): CT slices in native 16-bit, a CR in JPEG Baseline, an ultrasound multi-frame
in JPEG Baseline and an ultrasound clip in MPEG-4 AVC/H.264 (an MP4 file made with PyAV). They are then read
back with the ``dicomweb-client`` library, the conformance client of the issue, and with raw HTTP where the
exact bytes or headers matter.
"""

from __future__ import annotations

import hashlib
import io
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import generate_uid

from emage_devstack.stack import Stack

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
H264 = "1.2.840.10008.1.2.4.102"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"


def _dataset(sop_class: str, transfer_syntax: str, modality: str, study: str, number: int = 1) -> Dataset:
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = transfer_syntax
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID = sop_class
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID = generate_uid()
    dataset.StudyInstanceUID = study
    dataset.SeriesInstanceUID = generate_uid()
    dataset.Modality = modality
    dataset.PatientID = "WADO-0001"
    dataset.PatientName = "MARTIN^LUCIE"
    dataset.InstanceNumber = number
    return dataset


def _image(dataset: Dataset, rows: int, columns: int, *, bits: int = 8, samples: int = 1) -> None:
    dataset.Rows, dataset.Columns, dataset.SamplesPerPixel = rows, columns, samples
    dataset.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    dataset.BitsAllocated = bits
    dataset.BitsStored = 12 if bits == 16 else 8
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 0


def _part10(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _phantom(rows: int, columns: int) -> np.ndarray:
    """A disc on a gradient: something a viewer (and a test) can tell from a constant image."""
    y, x = np.mgrid[0:rows, 0:columns]
    disc = (y - rows / 2) ** 2 + (x - columns / 2) ** 2 < (min(rows, columns) / 3) ** 2
    return (x * 1000 // columns + disc * 1200).astype(np.uint16)


def ct_slices(study: str, count: int = 3, size: int = 512) -> list[bytes]:
    series = generate_uid()
    slices = []
    for number in range(1, count + 1):
        dataset = _dataset(CT_STORAGE, EXPLICIT_LE, "CT", study, number)
        dataset.SeriesInstanceUID = series
        _image(dataset, size, size, bits=16)
        dataset.RescaleSlope, dataset.RescaleIntercept = 1, -1024
        dataset.WindowCenter, dataset.WindowWidth = 40, 400
        dataset.PixelData = (_phantom(size, size) + number).astype("<u2").tobytes()
        dataset["PixelData"].VR = "OW"
        slices.append(_part10(dataset))
    return slices


def cr_jpeg(study: str) -> bytes:
    dataset = _dataset(CR_STORAGE, JPEG_BASELINE, "CR", study)
    _image(dataset, 600, 480)
    pixels = (_phantom(600, 480) // 9).astype(np.uint8)
    dataset.PixelData = encapsulate([_jpeg(pixels)])
    dataset["PixelData"].VR = "OB"
    return _part10(dataset)


def us_multiframe(study: str, frames: int = 8) -> bytes:
    dataset = _dataset(US_MULTIFRAME_STORAGE, JPEG_BASELINE, "US", study)
    _image(dataset, 120, 160)
    dataset.NumberOfFrames = frames
    base = (_phantom(120, 160) // 9).astype(np.uint8)
    dataset.PixelData = encapsulate([_jpeg(np.roll(base, 6 * index, axis=1)) for index in range(frames)])
    dataset["PixelData"].VR = "OB"
    return _part10(dataset)


def mp4_clip(frames: int = 50, width: int = 160, height: int = 120) -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "clip.mp4"
        with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
            stream = container.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for index in range(frames):
                image = np.zeros((height, width, 3), dtype=np.uint8)
                image[:, (index * 3) % width : (index * 3) % width + 10] = (255, 200, 100)
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return path.read_bytes()


def us_video(study: str, clip: bytes) -> bytes:
    dataset = _dataset(US_MULTIFRAME_STORAGE, H264, "US", study)
    _image(dataset, 120, 160, samples=3)
    dataset.PhotometricInterpretation = "YBR_PARTIAL_420"
    dataset.NumberOfFrames = 50
    dataset.FrameTime = 40
    step = (len(clip) // 3) & ~1  # even fragments but the last (PS3.5 §A.4)
    dataset.PixelData = encapsulate([clip[start : start + step] for start in range(0, len(clip), step)])
    dataset["PixelData"].VR = "OB"
    return _part10(dataset)


def multipart_parts(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
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


@dataclass
class StoredStudy:
    study: str
    ct: list[bytes]
    cr: bytes
    us: bytes
    video: bytes
    clip: bytes

    @property
    def all(self) -> list[bytes]:
        return [*self.ct, self.cr, self.us, self.video]


def _uids(part10: bytes) -> tuple[str, str, str]:
    dataset = dcmread(io.BytesIO(part10), stop_before_pixels=True)
    return dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID


@pytest.fixture(scope="module")
def ingest_url(services: Stack) -> str:
    return services.service_url("ingest")


@pytest.fixture(scope="module")
def http(ingest_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ingest_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def dicomweb(ingest_url: str) -> DICOMwebClient:
    return DICOMwebClient(url=ingest_url)


@pytest.fixture(scope="module")
def stored(http: httpx.Client) -> StoredStudy:
    """One study of every kind, stored through STOW-RS exactly as these bytes."""
    study = generate_uid()
    clip = mp4_clip()
    sent = StoredStudy(
        study, ct_slices(study), cr_jpeg(study), us_multiframe(study), us_video(study, clip), clip
    )
    boundary = secrets.token_hex(12)
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
        for part in sent.all
    )
    body += f"--{boundary}--\r\n".encode()
    response = http.post(
        "/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
    )
    assert response.status_code == 200, response.text
    return sent


def _path(part10: bytes) -> str:
    study, series, instance = _uids(part10)
    return f"/studies/{study}/series/{series}/instances/{instance}"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_study_retrieve_is_byte_identical(http: httpx.Client, stored: StoredStudy) -> None:
    response = http.get(f"/studies/{stored.study}")
    assert response.status_code == 200
    received = [content for _, content in multipart_parts(response.headers["content-type"], response.content)]
    assert sorted(map(_sha, received)) == sorted(map(_sha, stored.all))


def test_series_and_instance_retrieve_are_byte_identical(http: httpx.Client, stored: StoredStudy) -> None:
    study, series, _ = _uids(stored.ct[0])
    response = http.get(f"/studies/{study}/series/{series}")
    received = [content for _, content in multipart_parts(response.headers["content-type"], response.content)]
    assert [_sha(data) for data in received] == [_sha(data) for data in stored.ct]
    for part10 in stored.all:
        response = http.get(_path(part10))
        ((content_type, content),) = multipart_parts(response.headers["content-type"], response.content)
        assert _sha(content) == _sha(part10)
        assert content_type.startswith("application/dicom; transfer-syntax=")


def test_dicomweb_client_retrieves_study_and_instance(dicomweb: DICOMwebClient, stored: StoredStudy) -> None:
    datasets = dicomweb.retrieve_study(stored.study)
    assert {dataset.SOPInstanceUID for dataset in datasets} == {_uids(data)[2] for data in stored.all}
    study, series, instance = _uids(stored.cr)
    dataset = dicomweb.retrieve_instance(study, series, instance)
    assert dataset.file_meta.TransferSyntaxUID == JPEG_BASELINE
    assert dataset.PixelData == dcmread(io.BytesIO(stored.cr)).PixelData


def test_explicit_little_endian_on_request(dicomweb: DICOMwebClient, stored: StoredStudy) -> None:
    study, series, instance = _uids(stored.cr)
    dataset = dicomweb.retrieve_instance(
        study, series, instance, media_types=(("application/dicom", EXPLICIT_LE),)
    )
    assert dataset.file_meta.TransferSyntaxUID == EXPLICIT_LE
    original = dcmread(io.BytesIO(stored.cr)).pixel_array
    assert np.abs(dataset.pixel_array.astype(int) - original.astype(int)).max() <= 1


def test_frames_equal_pydicoms_frame_bytes(dicomweb: DICOMwebClient, stored: StoredStudy) -> None:
    study, series, instance = _uids(stored.ct[1])
    (frame,) = dicomweb.retrieve_instance_frames(study, series, instance, [1])
    assert frame == dcmread(io.BytesIO(stored.ct[1])).PixelData
    study, series, instance = _uids(stored.us)
    frames = dicomweb.retrieve_instance_frames(study, series, instance, [3, 1])
    original = dcmread(io.BytesIO(stored.us))
    expected = list(generate_frames(original.PixelData, number_of_frames=original.NumberOfFrames))
    # Stored fragments have even lengths (PS3.5 §A.4): a frame may carry its one pad byte.
    assert [frame.removesuffix(b"\x00") for frame in frames] == [
        expected[2].removesuffix(b"\x00"),
        expected[0].removesuffix(b"\x00"),
    ]


def test_frames_decompressed_to_octet_stream(dicomweb: DICOMwebClient, stored: StoredStudy) -> None:
    study, series, instance = _uids(stored.us)
    (frame,) = dicomweb.retrieve_instance_frames(
        study, series, instance, [2], media_types=(("application/octet-stream", EXPLICIT_LE),)
    )
    assert len(frame) == 120 * 160


def test_rendered_jpeg_and_png(dicomweb: DICOMwebClient, http: httpx.Client, stored: StoredStudy) -> None:
    study, series, instance = _uids(stored.ct[0])
    jpeg = dicomweb.retrieve_instance_rendered(study, series, instance, media_types=("image/jpeg",))
    picture = Image.open(io.BytesIO(jpeg))
    assert (picture.format, picture.size) == ("JPEG", (512, 512))
    assert np.asarray(picture).std() > 10
    png = http.get(
        _path(stored.cr) + "/rendered",
        params={"viewport": "240,300", "window": "60,120"},
        headers={"Accept": "image/png"},
    )
    picture = Image.open(io.BytesIO(png.content))
    assert (picture.format, picture.size) == ("PNG", (240, 300))
    assert np.asarray(picture).std() > 10


def test_thumbnails(http: httpx.Client, stored: StoredStudy) -> None:
    study, series, _ = _uids(stored.ct[0])
    for path in (
        f"/studies/{study}",
        f"/studies/{study}/series/{series}",
        _path(stored.cr),
        _path(stored.us),
    ):
        response = http.get(path + "/thumbnail")
        assert response.status_code == 200, path
        picture = Image.open(io.BytesIO(response.content))
        assert picture.format == "JPEG"
        assert max(picture.size) <= 128


def test_video_as_mp4_with_ranges(http: httpx.Client, stored: StoredStudy) -> None:
    whole = http.get(_path(stored.video) + "/rendered", headers={"Accept": "video/mp4"})
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "video/mp4"
    assert whole.content == stored.clip
    assert len(list(av.open(io.BytesIO(whole.content)).decode(video=0))) == 50
    middle = http.get(_path(stored.video) + "/rendered", headers={"Range": "bytes=1000-2999"})
    assert middle.status_code == 206
    assert middle.headers["content-range"] == f"bytes 1000-2999/{len(stored.clip)}"
    assert middle.content == stored.clip[1000:3000]


def test_errors(http: httpx.Client, stored: StoredStudy) -> None:
    assert http.get(f"/studies/{generate_uid()}").status_code == 404
    assert http.get("/studies/1.2.03").status_code == 400
    assert http.get(_path(stored.us) + "/frames/99").status_code == 404
    assert http.get(_path(stored.us) + "/frames/0").status_code == 400
    assert http.get(_path(stored.us) + "/rendered", headers={"Accept": "text/html"}).status_code == 406
    assert http.get(_path(stored.cr) + "/rendered", params={"window": "1,0"}).status_code == 400
