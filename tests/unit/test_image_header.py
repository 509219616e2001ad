"""Image type and size from headers, without an imaging library."""

from __future__ import annotations

import struct
import zlib

from creep.domain.image_header import ImageInfo, sniff_image


def png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)))


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00;"


def jpeg(width: int, height: int, exif: int = 0) -> bytes:
    app1 = b"\xff\xe1" + struct.pack(">H", exif + 2) + b"E" * exif if exif else b""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + app1 + b"\xff\xdb\x00\x04\x00\x00" + sof + b"\xff\xda\x00\x02"


def test_png_gif_jpeg_sizes() -> None:
    assert sniff_image(png(640, 480)) == ImageInfo("image/png", 640, 480)
    assert sniff_image(gif(3, 70000 % 65536)) == ImageInfo("image/gif", 3, 4464)
    assert sniff_image(jpeg(1920, 1080)) == ImageInfo("image/jpeg", 1920, 1080)
    # The frame header may come after a large EXIF block.
    assert sniff_image(jpeg(17, 9, exif=60_000)) == ImageInfo("image/jpeg", 17, 9)


def test_not_images_or_broken_headers() -> None:
    assert sniff_image(b"") is None
    assert sniff_image(b"hello world") is None
    assert sniff_image(png(0, 10)) is None  # a zero dimension is a broken header
    assert sniff_image(png(10, 10)[:20]) is None  # truncated
    assert sniff_image(b"\xff\xd8\xff\xda\x00\x02") is None  # scan before any frame
    assert sniff_image(jpeg(5, 5)[:-20]) is None  # cut before the frame header
    assert sniff_image(b"\xff\xd8\x00\x00") is None
