"""Bytes to arrays and back. Arrays are float32, NCHW with batch 1, RGB in [0, 1]: the server's one convention.

Decoding is guarded: the pixel count in the header is checked before any pixel is decoded, so a small
file that claims a huge image (a decompression bomb) costs nothing.
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
from collections.abc import Iterator

import numpy as np
from nst.events import ImageFormat
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvalidRequest
from .evaluation import FloatArray

_PIL_FORMATS = {ImageFormat.PNG: "PNG", ImageFormat.JPEG: "JPEG", ImageFormat.WEBP: "WEBP"}
# The formats photos and paintings come in (Pillow's JPEG opener also takes a phone's multi-picture MPO). Pillow
# would otherwise try every plugin it has on untrusted bytes, and some pass them on to an external program (EPS
# to Ghostscript).
DECODABLE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
# What Pillow's plugins raise on malformed bytes, beyond OSError: a garbage EXIF block in a PNG's eXIf chunk (valid
# CRC) reaches exif_transpose as a KeyError, TypeError or struct.error, a bad TIFF tag as an IndexError.
_PILLOW_ERRORS = (OSError, ValueError, SyntaxError, TypeError, KeyError, IndexError, AttributeError, EOFError,
                  struct.error, ZeroDivisionError, OverflowError, Image.DecompressionBombWarning)  # fmt: skip
MIN_SIDE_PX = 32  # four 2x2 poolings must leave at least 2 px for relu5_1


@contextlib.contextmanager
def _guarded(field: str, max_pixels: int) -> Iterator[None]:
    """Every failure of Pillow on untrusted bytes, from opening to the last conversion, as InvalidRequest naming
    ``field``: a plugin's own error type, or a garbage EXIF block met by ``exif_transpose``, is the caller's
    problem, not the server's (INTERNAL)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except InvalidRequest:
        raise
    except Image.DecompressionBombError as error:  # Pillow's own guard fires first for absurd sizes
        raise InvalidRequest(
            f"{field}: refused before decoding, {error}; this server's limit is {max_pixels} pixels"
        ) from error
    except UnidentifiedImageError as error:
        raise InvalidRequest(
            f"{field}: not an image in a format this server decodes ({', '.join(DECODABLE_FORMATS)})"
        ) from error
    except _PILLOW_ERRORS as error:
        raise InvalidRequest(f"{field}: not a decodable image ({type(error).__name__}: {error})") from error


def _open(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """The image's header, its pixel count checked against ``max_pixels``; call under ``_guarded``."""
    if not data:
        raise InvalidRequest(f"{field}: empty; expected an encoded image ({', '.join(DECODABLE_FORMATS)})")
    image: Image.Image = Image.open(io.BytesIO(data), formats=DECODABLE_FORMATS)
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidRequest(
            f"{field}: {width}x{height} is {width * height} pixels, more than the limit of {max_pixels}"
        )
    return image


def probe(data: bytes, field: str, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the header alone, the pixel limit checked: what a job's plan needs, before any pixel
    is decoded. EXIF orientation is not applied: it swaps the sides, which changes neither the longest side nor the
    pixel count."""
    with _guarded(field, max_pixels):
        size: tuple[int, int] = _open(data, field, max_pixels).size
    return size


def decode(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """An RGB image from encoded bytes, upright per EXIF; transparency is composited onto white.

    Samples wider than 8 bits are scaled explicitly: 16-bit integers (Pillow's I;16 and I modes up to 65535)
    by 1/257, floats as [0, 1] (the convention of float image files). Wider integers are refused: there is
    no one way to read them.
    """
    with _guarded(field, max_pixels):
        image = _open(data, field, max_pixels)
        image.seek(0)  # the first frame of an animation
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image, field)


def _to_rgb(image: Image.Image, field: str) -> Image.Image:
    if image.mode.startswith("I"):  # 16- or 32-bit integer grey: scale into 8 bits rather than clip
        grey = np.asarray(image, dtype=np.float64)
        if grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise InvalidRequest(
                f"{field}: 32-bit integer samples from {grey.min():g} to {grey.max():g}; only 8- and 16-bit "
                "integer or [0, 1] float images are read"
            )
        image = Image.fromarray(np.clip(grey / 257.0, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        grey = np.asarray(image, dtype=np.float64)
        if not np.isfinite(grey).all():
            raise InvalidRequest(f"{field}: a float image with NaN or infinite samples")
        image = Image.fromarray(np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def size_for_longest_side(width: int, height: int, longest: int) -> tuple[int, int]:
    """(width, height) scaled so the longer side is ``longest``, the aspect ratio kept."""
    scale = longest / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def to_array(image: Image.Image, size: tuple[int, int]) -> FloatArray:
    """Resize to ``size`` (width, height) and convert to the array convention."""
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[np.newaxis])


def mask_to_array(image: Image.Image, size: tuple[int, int]) -> FloatArray:
    """A greyscale mask as (H, W) in [0, 1] at ``size`` (width, height); bilinear, so no value overshoots."""
    grey = image.convert("L")
    if grey.size != size:
        grey = grey.convert("F").resize(size, Image.Resampling.BILINEAR)
    pixels = np.asarray(grey, dtype=np.float32) / np.float32(255.0)
    return np.ascontiguousarray(np.clip(pixels, 0.0, 1.0))


def resize(
    array: FloatArray,
    size: tuple[int, int],
    resample: Image.Resampling = Image.Resampling.LANCZOS,
    clip: bool = True,
) -> FloatArray:
    """Resample a (1, 3, H, W) array to ``size`` (width, height) without 8-bit rounding (between scales); ``clip``
    keeps pixels in [0, 1] (Lanczos overshoots at edges), off for what is not pixels (L-BFGS's steps)."""
    if (array.shape[3], array.shape[2]) == size:
        return array
    channels = np.stack([np.asarray(Image.fromarray(channel, "F").resize(size, resample)) for channel in array[0]])
    resized: FloatArray = (np.clip(channels, 0.0, 1.0) if clip else channels)[np.newaxis].astype(np.float32)
    return resized


def encode(array: FloatArray, image_format: ImageFormat) -> bytes:
    """Encode a (1, 3, H, W) array in [0, 1]; previews and results share this."""
    pixels = np.clip(array[0].transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    options = {"quality": 95} if image_format in (ImageFormat.JPEG, ImageFormat.WEBP) else {"compress_level": 3}
    Image.fromarray(pixels, "RGB").save(buffer, _PIL_FORMATS[image_format], **options)
    return buffer.getvalue()


def max_encoded_bytes(size: tuple[int, int]) -> int:
    """An upper bound of ``encode``'s output for a (width, height) image in any format: PNG's worst case (noise),
    zlib's stored blocks of the raw rows (a filter byte and 3 B per pixel; 5 B per 16 KiB block), 12 B per IDAT
    chunk of at least 64 KiB, and 1 KiB of signature and other chunks. JPEG and WebP at quality 95 stay under half
    of it (noise: 0.39 and 0.32 of the raw bytes, against PNG's 1.001)."""
    width, height = size
    raw = (3 * width + 1) * height
    return raw + 5 * (raw // 16383 + 1) + 12 * (raw // 65536 + 1) + 1024
