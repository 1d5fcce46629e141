"""Images the tests make themselves: seeded, smooth enough to look like something, any size and format."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def picture(width: int, height: int, seed: int) -> Image.Image:
    """A seeded RGB image with structure at several scales (gradients, blobs and noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(2, 12), rng.uniform(2, 12), rng.uniform(0, 6)
        channels.append(
            0.5 + 0.35 * np.sin(fx * x * 6.28 + phase) * np.cos(fy * y * 6.28) + 0.15 * rng.random((height, width))
        )
    pixels = np.clip(np.stack(channels, axis=-1), 0, 1)
    return Image.fromarray((pixels * 255).astype(np.uint8), "RGB")


def encoded(image: Image.Image, image_format: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def png(width: int, height: int, seed: int = 0) -> bytes:
    return encoded(picture(width, height, seed))


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb's signature)."""
    data = png(8, 8)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return data[:8] + ihdr + data[8 + len(ihdr) :]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its length and a correct CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_chunk(kind: bytes, data: bytes, width: int = 40, height: int = 40) -> bytes:
    """A valid PNG with one more chunk right after IHDR (valid CRC): where an eXIf chunk goes."""
    image = png(width, height)
    after_ihdr = 8 + 25  # the signature, then IHDR's 13 bytes with length, type and CRC
    return image[:after_ihdr] + png_chunk(kind, data) + image[after_ihdr:]
