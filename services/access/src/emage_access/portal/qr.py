"""QR codes of share links, made on the server so the link's secret never leaves the creation response."""

from __future__ import annotations

from typing import Final

import segno

_DARK: Final = "#000"
_LIGHT: Final = "#fff"


def qr_svg_data_uri(content: str) -> str:
    """An SVG ``data:`` URI of a QR code holding ``content`` (error correction M, a 4-module quiet zone).

    Black on white with the quiet zone the standard asks for (ISO/IEC 18004 §6.3.8), so phone cameras read
    it on any page background. A data URI keeps the code inside the JSON answer: no second request names
    the secret, and nothing about it is cached or logged.
    """
    code = segno.make(content, error="m", micro=False)
    return code.svg_data_uri(scale=4, border=4, dark=_DARK, light=_LIGHT, title="QR code")
