"""The rendering pipeline of PS3.18 §9.5 with known values: window math, LUTs, inversion, viewport."""

from __future__ import annotations

import dataclasses
import io
from datetime import UTC, datetime

import numpy as np
import pytest
from PIL import Image
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import RLELossless

from emage_ingest.domain.model import ArchivedInstance, FrameLocation, PixelAttributes
from emage_ingest.domain.rendering import (
    RenderingParameterError,
    RenderingParameters,
    UndecodableFrameError,
    Viewport,
    Window,
    apply_viewport,
    apply_window,
    can_decode,
    decode_frame,
    encode_image,
    full_range_window,
    modality_values,
    parse_quality,
    parse_viewport,
    parse_window,
    render_frame,
    render_pixels,
    rendering_parameters,
    thumbnail_viewport,
)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


_PIXELS = PixelAttributes(
    rows=4,
    columns=4,
    samples_per_pixel=1,
    photometric_interpretation="MONOCHROME2",
    planar_configuration=None,
    bits_allocated=16,
    bits_stored=16,
    high_bit=None,
    pixel_representation=1,
    rescale_slope=None,
    rescale_intercept=None,
    window_center=None,
    window_width=None,
)


def _instance(**pixel: object) -> ArchivedInstance:
    """A CT instance whose pixel description is :data:`_PIXELS` with ``pixel`` changes (rows=None: none)."""
    pixels = None if pixel.get("rows", 4) is None else dataclasses.replace(_PIXELS, **pixel)  # type: ignore[arg-type]
    return ArchivedInstance(
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        sop_instance_uid="1.2.3.4.5",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid=EXPLICIT_LE,
        object_key="studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5",
        size_bytes=0,
        sha256="0" * 64,
        stored_at=datetime(2025, 1, 1, tzinfo=UTC),
        facility_finess="750000001",
        modality="CT",
        instance_number=1,
        number_of_frames=1,
        frames=(FrameLocation(0, 0),),
        pixels=pixels,
    )


def _values(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


# --- parameters (PS3.18 §8.3.5.1) -----------------------------------------------------------------------


def test_window_parameter() -> None:
    assert parse_window("40,400") == Window(40, 400, "linear")
    assert parse_window("-600, 1500, SIGMOID") == Window(-600, 1500, "sigmoid")
    assert parse_window("0.5,0.25,linear-exact") == Window(0.5, 0.25, "linear-exact")


@pytest.mark.parametrize(
    "text", ["40", "40,0", "40,0.5", "40,400,gamma", "a,b", "40,400,linear,1", "nan,1", "1,-3,sigmoid"]
)
def test_invalid_window_parameter(text: str) -> None:
    with pytest.raises(RenderingParameterError):
        parse_window(text)


def test_viewport_parameter() -> None:
    assert parse_viewport("256,128") == Viewport(256, 128)
    assert parse_viewport("100,100,10,20,-30,40") == Viewport(100, 100, 10, 20, -30, 40)
    assert parse_viewport("100,100,,,50,") == Viewport(100, 100, 0, 0, 50, None)


@pytest.mark.parametrize(
    "text", ["0,10", "10", "10,10,1,2,3", "5000,10", "10,10,-1,0,5,5", "10,10,0,0,0,5", "a,b"]
)
def test_invalid_viewport_parameter(text: str) -> None:
    with pytest.raises(RenderingParameterError):
        parse_viewport(text)


def test_quality_parameter() -> None:
    assert parse_quality("75") == 75
    for text in ("0", "101", "high", "7.5"):
        with pytest.raises(RenderingParameterError):
            parse_quality(text)
    assert rendering_parameters() == RenderingParameters()


# --- VOI LUT functions (PS3.3 §C.11.2.1.2-3) ------------------------------------------------------------


def test_linear_window_known_values() -> None:
    # Center 40, width 400 (soft tissue): below -160 black, above 239 white, center mid-gray.
    out = apply_window(_values(-1000, -160, -159, 40, 239, 240, 3000), Window(40, 400))
    expected_mid = round(((40 - 39.5) / 399 + 0.5) * 255)
    assert out.tolist() == [0, 0, round(((-159 - 39.5) / 399 + 0.5) * 255), expected_mid, 255, 255, 255]


def test_linear_window_of_width_one_is_a_threshold() -> None:
    assert apply_window(_values(9, 9.5, 10, 11), Window(10, 1)).tolist() == [0, 0, 255, 255]


def test_linear_exact_window_known_values() -> None:
    out = apply_window(_values(-50, -25, 0, 25, 50, 51), Window(0, 100, "linear-exact"))
    assert out.tolist() == [0, 64, 128, 191, 255, 255]


def test_sigmoid_window_known_values() -> None:
    out = apply_window(_values(-1e6, 0, 1e6, 50), Window(0, 100, "sigmoid"))
    assert out.tolist()[:3] == [0, 128, 255]
    assert out[3] == round(255 / (1 + np.exp(-2)))


def test_modality_lut_rescales_to_hounsfield_units() -> None:
    assert modality_values(np.array([0, 1024, 2000]), 1.0, -1024).tolist() == [-1024, 0, 976]
    assert modality_values(np.array([10]), 2.5, 1.0).tolist() == [26.0]
    assert modality_values(np.array([7]), None, None).tolist() == [7.0]


# --- the pipeline -----------------------------------------------------------------------------------------


def test_dataset_window_applies_after_modality_lut() -> None:
    instance = _instance(rescale_slope=1.0, rescale_intercept=-1024.0, window_center=40.0, window_width=400.0)
    stored = np.array([[0, 864], [1064, 1264]], dtype=np.int16)  # -1024, -160, 40, 240 HU
    assert render_pixels(stored, instance).tolist() == [[0, 0], [128, 255]]


def test_request_window_overrides_the_dataset_window() -> None:
    instance = _instance(window_center=40.0, window_width=400.0)
    stored = np.array([[0, 100]], dtype=np.int16)
    assert render_pixels(stored, instance, Window(50, 100, "linear-exact")).tolist() == [[0, 255]]


def test_full_range_when_no_window_is_known() -> None:
    stored = np.array([[100, 150, 200]], dtype=np.uint16)
    assert render_pixels(stored, _instance(pixel_representation=0)).tolist() == [[0, 128, 255]]
    assert full_range_window(_values(5, 5)).width > 0


def test_monochrome1_is_inverted_after_the_window() -> None:
    stored = np.array([[100, 150, 200]], dtype=np.uint16)
    rendered = render_pixels(stored, _instance(photometric_interpretation="MONOCHROME1"))
    assert rendered.tolist() == [[255, 127, 0]]


def test_color_images_skip_windows_and_scale_to_8_bits() -> None:
    rgb8 = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb8[0, 0] = (255, 0, 0)
    assert render_pixels(rgb8, _instance(photometric_interpretation="RGB"), Window(0, 1)) is rgb8
    rgb16 = np.full((1, 1, 3), 4095, dtype=np.uint16)
    assert render_pixels(rgb16, _instance(bits_stored=12)).tolist() == [[[255, 255, 255]]]


# --- viewport (PS3.18 §8.3.5.1.3) -----------------------------------------------------------------------


def test_viewport_scales_to_fit_keeping_aspect_ratio() -> None:
    image = np.zeros((256, 512), dtype=np.uint8)
    assert apply_viewport(image, Viewport(128, 128)).shape == (64, 128)
    assert apply_viewport(image, Viewport(1024, 1024)).shape == (512, 1024)
    assert apply_viewport(image, Viewport(512, 256)) is not image


def test_viewport_source_region_and_flips() -> None:
    image = np.arange(16, dtype=np.uint8).reshape(4, 4)
    assert apply_viewport(image, Viewport(2, 2, 1, 1, 2, 2)).tolist() == [[5, 6], [9, 10]]
    assert apply_viewport(image, Viewport(2, 1, 3, 0, -2, 1)).tolist() == [[2, 1]]
    assert apply_viewport(image, Viewport(1, 2, 0, 2, 1, -2)).tolist() == [[4], [0]]
    with pytest.raises(RenderingParameterError):
        apply_viewport(image, Viewport(2, 2, 10, 10))


def test_thumbnail_viewport_never_enlarges() -> None:
    assert thumbnail_viewport(512, 512) == Viewport(128, 128)
    assert thumbnail_viewport(64, 40) == Viewport(40, 64)


# --- decoding and encoding ------------------------------------------------------------------------------


def test_decode_native_signed_frame() -> None:
    stored = np.array([[-1000, 0], [1, 2000]], dtype="<i2")
    pixels = decode_frame(stored.tobytes(), _instance(rows=2, columns=2), EXPLICIT_LE)
    assert pixels.tolist() == stored.tolist()
    pixels = decode_frame(stored.tobytes(), _instance(rows=2, columns=2), "1.2.840.10008.1.2")
    assert pixels.tolist() == stored.tolist()


def test_decode_jpeg_baseline_frame() -> None:
    gradient = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    buffer = io.BytesIO()
    Image.fromarray(gradient).save(buffer, format="JPEG", quality=95)
    instance = _instance(rows=64, columns=64, bits_allocated=8, bits_stored=8, pixel_representation=0)
    pixels = decode_frame(buffer.getvalue(), instance, JPEG_BASELINE)
    assert pixels.shape == (64, 64)
    assert np.abs(pixels.astype(int) - gradient.astype(int)).max() < 8


def test_decode_rle_frame() -> None:
    stored = (np.arange(64, dtype=np.uint16) * 50).reshape(8, 8)
    instance = _instance(rows=8, columns=8, pixel_representation=0)
    encoded = get_encoder(RLELossless).encode(
        stored.tobytes(),
        rows=8,
        columns=8,
        samples_per_pixel=1,
        bits_allocated=16,
        bits_stored=16,
        pixel_representation=0,
        photometric_interpretation="MONOCHROME2",
        number_of_frames=1,
    )
    assert decode_frame(encoded, instance, RLELossless).tolist() == stored.tolist()


def test_undecodable_frames() -> None:
    assert not can_decode("1.2.840.10008.1.2.4.102")
    assert not can_decode("1.2.3.4")
    assert can_decode(JPEG_BASELINE)
    with pytest.raises(UndecodableFrameError):
        decode_frame(b"\x00\x01", _instance(), "1.2.840.10008.1.2.4.102")
    with pytest.raises(UndecodableFrameError):
        decode_frame(b"not a jpeg", _instance(bits_allocated=8), JPEG_BASELINE)
    with pytest.raises(UndecodableFrameError):
        decode_frame(b"", _instance(rows=None), EXPLICIT_LE)


@pytest.mark.parametrize(
    ("media_type", "pil_format"), [("image/jpeg", "JPEG"), ("image/png", "PNG"), ("image/gif", "GIF")]
)
def test_render_frame_encodes_each_media_type(media_type: str, pil_format: str) -> None:
    stored = (np.arange(64 * 32, dtype=np.int16) - 1000).reshape(32, 64)
    instance = _instance(rows=32, columns=64)
    parameters = RenderingParameters(viewport=Viewport(32, 32), quality=80)
    encoded = render_frame(stored.tobytes(), instance, EXPLICIT_LE, media_type, parameters)
    decoded = Image.open(io.BytesIO(encoded))
    assert decoded.format == pil_format
    assert decoded.size == (32, 16)
    assert np.asarray(decoded.convert("L")).std() > 10


def test_encode_color_gif_and_reject_unknown_types() -> None:
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[:, :2] = (200, 10, 10)
    assert Image.open(io.BytesIO(encode_image(rgb, "image/gif"))).size == (4, 4)
    with pytest.raises(ValueError, match="not a rendered image"):
        encode_image(rgb, "image/webp")
