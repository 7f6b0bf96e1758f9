"""Read a byte stream as JSONL lines in bounded memory, and recognise files that are not UTF-8 text.

Only bytes in, bytes out: this module does not decode, parse JSON or judge examples
(``training.datasets`` does). It reads fixed-size chunks with ``stream.read(n)`` (so an S3 body or an upload
spool works as well as a file), never holds more than one chunk plus one line, and reports a line longer
than the limit by its length instead of keeping it.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator
from typing import BinaryIO

CHUNK_BYTES = 1 << 20
SNIFF_BYTES = 4096
# Control bytes never appear raw in JSON text (whitespace aside); this share of them means binary data.
_CONTROL_BYTES = bytes(c for c in range(32) if c not in b"\t\n\r\x0c")
_BINARY_SHARE = 0.02

# Checked longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
_TEXT_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)
_BINARY_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "a gzip archive; upload the uncompressed .jsonl file"),
    (b"PK\x03\x04", "a ZIP archive (or an .xlsx/.docx file); upload the .jsonl file itself"),
    (b"PAR1", "a Parquet file; convert it to JSONL (one JSON object per line)"),
    (b"%PDF", "a PDF document, not JSONL"),
    (b"\x89PNG", "a PNG image, not JSONL (Tunery's base models are text-only)"),
    (b"\xff\xd8\xff", "a JPEG image, not JSONL (Tunery's base models are text-only)"),
    (b"SQLite format 3\x00", "an SQLite database, not JSONL"),
)


def read_chunks(stream: BinaryIO, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Yield the stream's bytes ``size`` at a time until it is exhausted."""
    while chunk := stream.read(size):
        yield chunk


def read_head(chunks: Iterator[bytes], at_least: int = SNIFF_BYTES) -> bytes:
    """Take chunks until there are ``at_least`` bytes (or the stream ends), for ``sniff_not_text``.

    Streams may return short reads; this makes the first bytes judged the same however the stream reads.
    """
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= at_least:
            break
    return head


def split_lines(chunks: Iterable[bytes], max_line_bytes: int) -> Iterator[bytes | int]:
    """Yield each line without its ``\\n``; for a line longer than ``max_line_bytes``, yield its length instead.

    A ``\\r`` before the ``\\n`` is kept (JSON parsing ignores it). A last line without a newline is yielded;
    the empty string after a final newline is not.
    """
    carry = b""  # the start of the current line, when it began in an earlier chunk
    dropped = 0  # bytes of the current line not kept because it is already known to be too long
    for chunk in chunks:
        pieces = chunk.split(b"\n")
        tail = pieces.pop()
        for piece in pieces:
            if carry or dropped:
                yield _join(carry, piece, dropped, max_line_bytes)
                carry, dropped = b"", 0
            elif len(piece) > max_line_bytes:
                yield len(piece)
            else:
                yield piece
        if dropped:
            dropped += len(tail)
        elif len(carry) + len(tail) > max_line_bytes:
            dropped, carry = len(carry) + len(tail), b""
        elif tail:
            carry += tail
    if carry or dropped:
        yield _join(carry, b"", dropped, max_line_bytes)


def _join(carry: bytes, piece: bytes, dropped: int, max_line_bytes: int) -> bytes | int:
    length = len(carry) + len(piece) + dropped
    if dropped or length > max_line_bytes:
        return length
    return carry + piece


def sniff_not_text(first_chunk: bytes) -> str | None:
    """Say why a file is not UTF-8 JSONL text, judging by its first bytes; ``None`` when it may be.

    Catches other Unicode encodings (by byte-order mark, or by the NUL bytes UTF-16 puts in ASCII text),
    well-known binary formats, NUL bytes on the first line, and a start with more than a few percent of
    control bytes. A stray NUL further down is left for the per-line checks, which name its line.
    """
    for bom, encoding in _TEXT_BOMS:
        if first_chunk.startswith(bom):
            return f"File is {encoding} encoded (it starts with a {encoding} byte-order mark); save it as UTF-8"
    for magic, what in _BINARY_MAGIC:
        if first_chunk.startswith(magic):
            return f"File is {what}"
    head = first_chunk[:SNIFF_BYTES]
    first_line = head.split(b"\n", 1)[0]
    nuls = first_line.count(0)
    if nuls * 3 >= len(first_line) > 0 and nuls in (first_line[0::2].count(0), first_line[1::2].count(0)):
        return "File looks UTF-16 encoded (every other byte is NUL) without a byte-order mark; save it as UTF-8"
    controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
    if nuls or controls > _BINARY_SHARE * len(head):
        return (
            "File looks binary: it starts with control bytes such as NUL (0x00), which UTF-8 JSONL text "
            "never has; upload a .jsonl text file with one JSON object per line"
        )
    return None
