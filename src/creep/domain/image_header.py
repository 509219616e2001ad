"""Image type and size from the first bytes of a file: PNG, GIF and JPEG, no dependency."""

from __future__ import annotations

import struct
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class ImageInfo:
    mime_type: str
    width: int
    height: int


#: JPEG start-of-frame markers carrying the frame size (not DHT C4, JPG C8, DAC CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def sniff_image(head: bytes) -> ImageInfo | None:
    """Read the image header in `head`; None when it is not a (complete enough) image."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24 and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return _info("image/png", width, height)
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        width, height = struct.unpack("<HH", head[6:10])
        return _info("image/gif", width, height)
    if head.startswith(b"\xff\xd8"):
        return _jpeg(head)
    return None


def _jpeg(data: bytes) -> ImageInfo | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if length < 2:
            return None
        if marker in _SOF_MARKERS:
            if i + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return _info("image/jpeg", width, height)
        if marker == 0xDA:  # start of scan before any frame header: not a usable JPEG
            return None
        i += 2 + length
    return None


#: PNG caps a dimension at 2**31 - 1 (and the artifact columns are 32-bit integers).
_MAX_DIMENSION = 2**31 - 1


def _info(mime: str, width: int, height: int) -> ImageInfo | None:
    # A zero dimension (or one past the format's limit) is a broken header, not an image we
    # can describe.
    if 0 < width <= _MAX_DIMENSION and 0 < height <= _MAX_DIMENSION:
        return ImageInfo(mime, width, height)
    return None
