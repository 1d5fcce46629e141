"""Bytes to arrays and back. Arrays are float32, NCHW with batch 1, RGB in [0, 1]: the server's one convention.

Decoding is guarded: the pixel count in the header is checked before any pixel is decoded, so a small
file that claims a huge image (a decompression bomb) costs nothing.
"""

from __future__ import annotations

import io
import warnings

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
MIN_SIDE_PX = 32  # four 2x2 poolings must leave at least 2 px for relu5_1


def decode(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """An RGB image from encoded bytes, upright per EXIF; transparency is composited onto white."""
    if not data:
        raise InvalidRequest(f"{field}: empty; expected an encoded image ({', '.join(DECODABLE_FORMATS)})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=DECODABLE_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidRequest(
                    f"{field}: {width}x{height} is {width * height} pixels, more than the limit of {max_pixels}"
                )
            image.seek(0)  # the first frame of an animation
            image.load()
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
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning) as error:
        raise InvalidRequest(f"{field}: not a decodable image ({error})") from error
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):  # 16- or 32-bit integer grey: scale into 8 bits rather than clip
        grey = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(grey / 257.0, 0, 255).astype(np.uint8), "L")
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


def resize(array: FloatArray, size: tuple[int, int]) -> FloatArray:
    """Resample a (1, 3, H, W) array to ``size`` (width, height) without 8-bit rounding (between scales)."""
    if (array.shape[3], array.shape[2]) == size:
        return array
    channels = [
        np.asarray(Image.fromarray(channel, "F").resize(size, Image.Resampling.LANCZOS)) for channel in array[0]
    ]
    resized: FloatArray = np.clip(np.stack(channels)[np.newaxis], 0.0, 1.0).astype(np.float32)
    return resized


def encode(array: FloatArray, image_format: ImageFormat) -> bytes:
    """Encode a (1, 3, H, W) array in [0, 1]; previews and results share this."""
    pixels = np.clip(array[0].transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    options = {"quality": 95} if image_format in (ImageFormat.JPEG, ImageFormat.WEBP) else {"compress_level": 3}
    Image.fromarray(pixels, "RGB").save(buffer, _PIL_FORMATS[image_format], **options)
    return buffer.getvalue()
