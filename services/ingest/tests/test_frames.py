"""Frame lists, Accept negotiation and multipart framing of WADO-RS (PS3.18 §8.7, §10.4), pure rules."""

from __future__ import annotations

import pytest

from emage_ingest.domain.frames import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    FrameOutOfRangeError,
    InvalidFrameListError,
    MalformedAcceptError,
    NotAcceptableError,
    RangeNotSatisfiableError,
    close_delimiter,
    is_iso_bmff,
    multipart_content_type,
    negotiate_instances,
    negotiate_pixel_data,
    negotiate_rendered,
    parse_accept,
    parse_byte_range,
    parse_frame_list,
    part_preamble,
    stream_slices,
)

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_2000 = "1.2.840.10008.1.2.4.90"
H264 = "1.2.840.10008.1.2.4.102"


def _decodable(stored: str, wanted: str) -> bool:
    return wanted == EXPLICIT_VR_LITTLE_ENDIAN and stored != H264


# --- Accept parsing (RFC 9110 §12.5.1) ------------------------------------------------------------------


def test_absent_accept_means_anything() -> None:
    (only,) = parse_accept([])
    assert only.media_type == "*/*"


def test_accept_is_ordered_by_weight_keeping_ties_in_order() -> None:
    ranges = parse_accept(["image/png;q=0.5, image/jpeg, image/gif;q=0, */*;q=0.1, image/webp"])
    assert [r.media_type for r in ranges] == ["image/jpeg", "image/webp", "image/png", "*/*"]


def test_multipart_parameters_quoted_and_unquoted() -> None:
    quoted, unquoted = parse_accept(
        [
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1',
            "multipart/related; type=application/octet-stream; transfer-syntax=*",
        ]
    )
    assert quoted.parameters == {"type": "application/dicom", "transfer-syntax": EXPLICIT_VR_LITTLE_ENDIAN}
    assert unquoted.parameters["type"] == "application/octet-stream"
    assert unquoted.transfer_syntax == "*"


@pytest.mark.parametrize(
    "value", ["image", "image/jpeg;q=2", "*/jpeg", "image/jpeg junk", "image/jpeg;q=abc"]
)
def test_malformed_accept_is_rejected(value: str) -> None:
    with pytest.raises(MalformedAcceptError):
        parse_accept([value])


# --- DICOM instances (Table 8.7.3-2) --------------------------------------------------------------------


def _instances(accept: str, stored: tuple[str, ...] = (JPEG_BASELINE,), *, single: bool = False):  # type: ignore[no-untyped-def]
    return negotiate_instances(
        parse_accept([accept]), stored, can_transcode=_decodable, single_instance=single
    )


def test_wildcard_and_plain_multipart_return_stored_transfer_syntax() -> None:
    for accept in ("*/*", 'multipart/related; type="application/dicom"', "multipart/related"):
        chosen = _instances(accept)
        assert chosen.multipart
        assert chosen.transfer_syntax is None


def test_transfer_syntax_star_means_as_stored() -> None:
    assert (
        _instances('multipart/related; type="application/dicom"; transfer-syntax=*').transfer_syntax is None
    )


def test_explicit_vr_little_endian_when_every_instance_can_be_decompressed() -> None:
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}'
    chosen = _instances(accept, (JPEG_BASELINE, IMPLICIT_VR_LITTLE_ENDIAN))
    assert chosen.transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN
    with pytest.raises(NotAcceptableError):
        _instances(accept, (JPEG_BASELINE, H264))


def test_a_less_preferred_range_is_used_when_the_first_cannot_be_met() -> None:
    accept = (
        f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}, '
        'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5'
    )
    assert _instances(accept, (H264,)).transfer_syntax is None


def test_single_part_application_dicom_only_for_one_instance() -> None:
    assert not _instances("application/dicom", single=True).multipart
    with pytest.raises(NotAcceptableError):
        _instances("application/dicom")


@pytest.mark.parametrize("accept", ["image/jpeg", 'multipart/related; type="image/jpeg"', "multipart/mixed"])
def test_non_dicom_media_types_are_not_acceptable_for_instances(accept: str) -> None:
    with pytest.raises(NotAcceptableError):
        _instances(accept)


# --- Pixel data (Tables 8.7.3-4, 8.7.3-5) -----------------------------------------------------------------


def _pixels(accept: str, stored: str, *, can_decode: bool = True, single: bool = False):  # type: ignore[no-untyped-def]
    return negotiate_pixel_data(
        parse_accept([accept]), stored, can_decode=can_decode, allow_single_part=single
    )


def test_native_frames_are_explicit_little_endian_octets() -> None:
    for accept in (
        "*/*",
        'multipart/related; type="application/octet-stream"',
        'multipart/related; type="*/*"',
    ):
        chosen = _pixels(accept, IMPLICIT_VR_LITTLE_ENDIAN)
        assert (chosen.media_type, chosen.transfer_syntax, chosen.decode) == (
            "application/octet-stream",
            EXPLICIT_VR_LITTLE_ENDIAN,
            False,
        )
        assert (
            chosen.part_content_type
            == f"application/octet-stream; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}"
        )


def test_compressed_frames_as_stored_by_default() -> None:
    chosen = _pixels("*/*", JPEG_BASELINE)
    assert (chosen.media_type, chosen.transfer_syntax, chosen.decode) == ("image/jpeg", JPEG_BASELINE, False)
    assert _pixels('multipart/related; type="image/jp2"', JPEG_2000).media_type == "image/jp2"
    assert _pixels('multipart/related; type="image/*"', JPEG_2000).media_type == "image/jp2"


def test_octet_stream_with_any_transfer_syntax_is_the_stored_bit_stream() -> None:
    chosen = _pixels('multipart/related; type="application/octet-stream"; transfer-syntax=*', JPEG_BASELINE)
    assert (chosen.media_type, chosen.transfer_syntax, chosen.decode) == (
        "application/octet-stream",
        JPEG_BASELINE,
        False,
    )


def test_octet_stream_of_compressed_data_decompresses_when_possible() -> None:
    chosen = _pixels('multipart/related; type="application/octet-stream"', JPEG_BASELINE)
    assert (chosen.transfer_syntax, chosen.decode) == (EXPLICIT_VR_LITTLE_ENDIAN, True)
    with pytest.raises(NotAcceptableError):
        _pixels('multipart/related; type="application/octet-stream"', JPEG_BASELINE, can_decode=False)


def test_another_compressed_type_is_never_transcoded() -> None:
    with pytest.raises(NotAcceptableError):
        _pixels('multipart/related; type="image/jp2"', JPEG_BASELINE)
    with pytest.raises(NotAcceptableError):
        _pixels(
            f'multipart/related; type="image/jpeg"; transfer-syntax={"1.2.840.10008.1.2.4.70"}', JPEG_BASELINE
        )


def test_single_part_pixel_data_only_where_allowed() -> None:
    with pytest.raises(NotAcceptableError):
        _pixels("video/mp4", H264)
    chosen = _pixels("video/mp4", H264, single=True)
    assert (chosen.media_type, chosen.multipart) == ("video/mp4", False)


# --- Rendered (§8.7.4) ----------------------------------------------------------------------------------


def test_rendered_defaults_to_the_first_offer_and_honours_preferences() -> None:
    offered = ("image/jpeg", "image/png", "image/gif")
    assert negotiate_rendered(parse_accept(["*/*"]), offered) == "image/jpeg"
    assert negotiate_rendered(parse_accept(["image/png"]), offered) == "image/png"
    assert negotiate_rendered(parse_accept(["image/webp, image/*;q=0.8"]), offered) == "image/jpeg"
    assert negotiate_rendered(parse_accept(["*/*"]), ("video/mp4", *offered)) == "video/mp4"
    with pytest.raises(NotAcceptableError):
        negotiate_rendered(parse_accept(["text/html"]), offered)


# --- Frame list (§10.4.1.1.2) ---------------------------------------------------------------------------


def test_frame_list_keeps_the_requested_order() -> None:
    assert parse_frame_list("3,1,2", 3) == (3, 1, 2)
    assert parse_frame_list("1", 1) == (1,)


@pytest.mark.parametrize("frame_list", ["", "0", "1,,2", "a", "-1", "1.5", "2,2", "1;2", "0001x"])
def test_malformed_frame_lists(frame_list: str) -> None:
    with pytest.raises(InvalidFrameListError):
        parse_frame_list(frame_list, 4)


def test_frame_beyond_number_of_frames_does_not_exist() -> None:
    with pytest.raises(FrameOutOfRangeError):
        parse_frame_list("1,5", 4)
    with pytest.raises(FrameOutOfRangeError):
        parse_frame_list("1", 0)


# --- Multipart framing (RFC 2046 §5.1) ------------------------------------------------------------------


def test_multipart_framing_round_trips_binary_parts() -> None:
    boundary = "b0undary"
    parts = [b"\r\n--not-the-boundary\r\n", b"", b"\x00\xff" * 10]
    body = b"".join(
        part_preamble(boundary, "application/octet-stream", first=index == 0) + content
        for index, content in enumerate(parts)
    ) + close_delimiter(boundary)
    assert body.startswith(b"--b0undary\r\nContent-Type: application/octet-stream\r\n\r\n")
    assert body.endswith(b"\r\n--b0undary--\r\n")
    pieces = body[: -len(b"\r\n--b0undary--\r\n")].split(b"\r\n--b0undary\r\n")
    pieces[0] = pieces[0].removeprefix(b"--b0undary\r\n")
    assert [piece.split(b"\r\n\r\n", 1)[1] for piece in pieces] == parts
    assert multipart_content_type("application/dicom", boundary) == (
        'multipart/related; type="application/dicom"; boundary=b0undary'
    )


def test_iso_bmff_is_recognised_by_its_ftyp_box() -> None:
    assert is_iso_bmff(b"\x00\x00\x00\x20ftypisom")
    assert not is_iso_bmff(b"\x47\x40\x00\x10" + b"\x00" * 8)


# --- HTTP ranges over a fragmented stream (RFC 9110 §14) ------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-", (0, 1000)),
        ("bytes=0-99", (0, 100)),
        ("bytes=900-5000", (900, 1000)),
        ("bytes=-100", (900, 1000)),
        ("bytes=-5000", (0, 1000)),
        ("bytes=0-1,5-9", None),
        ("items=0-1", None),
        ("bytes=9-1", None),
    ],
)
def test_byte_ranges(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_byte_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=2000-3000", "bytes=-0"])
def test_unsatisfiable_byte_ranges(header: str) -> None:
    with pytest.raises(RangeNotSatisfiableError):
        parse_byte_range(header, 1000)


def test_stream_slices_skip_item_headers_between_fragments() -> None:
    pieces = [(100, 10), (118, 10), (136, 5)]  # fragment values, 8-byte item headers between them
    assert stream_slices(pieces, 0, 25) == [(100, 110), (118, 128), (136, 141)]
    assert stream_slices(pieces, 5, 12) == [(105, 110), (118, 120)]
    assert stream_slices(pieces, 20, 25) == [(136, 141)]
    assert stream_slices(pieces, 25, 25) == []
