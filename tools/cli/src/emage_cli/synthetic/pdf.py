"""A minimal one-page PDF (ISO 32000-1) of plain text lines: the report encapsulated with each study."""

from __future__ import annotations

from collections.abc import Sequence


def _pdf_string(text: str) -> bytes:
    # A literal string in WinAnsiEncoding (the standard 14 fonts' encoding): cp1252 covers French text.
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return b"(" + escaped.encode("cp1252", errors="replace") + b")"


def text_pdf(title: str, lines: Sequence[str]) -> bytes:
    """A PDF 1.4 file showing ``title`` in bold then ``lines`` in Helvetica on an A4 page."""
    content = [b"BT /F2 16 Tf 56 780 Td " + _pdf_string(title) + b" Tj ET"]
    y = 744
    for line in lines:
        content.append(b"BT /F1 11 Tf 56 " + str(y).encode() + b" Td " + _pdf_string(line) + b" Tj ET")
        y -= 16
    stream = b"\n".join(content)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R /F2 6 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>",
    ]
    document = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(document))
        document += str(number).encode() + b" 0 obj\n" + body + b"\nendobj\n"
    xref = len(document)
    document += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        document += f"{offset:010d} 00000 n \n".encode()
    document += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(document)
