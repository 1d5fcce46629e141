"""Bytes to arrays and back: every input mode ends as RGB in [0, 1], upright, and bombs are refused unread."""

from __future__ import annotations

import io

import numpy as np
import pytest
from nst.events import ImageFormat
from nst_server.domain.errors import InvalidRequest
from nst_server.domain.images import decode, encode, max_encoded_bytes, size_for_longest_side, to_array
from PIL import Image

from tests.images import encoded, picture, png_claiming_size, png_with_chunk

LIMIT = 4096 * 4096


def _decoded(data: bytes) -> Image.Image:
    return decode(data, "content_image", LIMIT)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "I;16"])
def test_other_modes_become_rgb(mode: str) -> None:
    """Grayscale, palette, CMYK and 16-bit images decode to RGB of the same size."""
    source = picture(40, 30, seed=1).convert("L" if mode == "I;16" else mode)
    if mode == "I;16":  # a 16-bit grayscale PNG, the full range in use
        source = Image.fromarray(np.asarray(source, np.uint16) * 257)
    rv = _decoded(encoded(source, "JPEG" if mode == "CMYK" else "PNG"))
    assert (rv.mode, rv.size) == ("RGB", (40, 30))


def test_sixteen_bit_keeps_its_brightness() -> None:
    """A 16-bit mid-gray is scaled into 8 bits (about 128), not clipped to white."""
    source = Image.fromarray(np.full((32, 32), 32768, np.uint16))
    rv = np.asarray(_decoded(encoded(source)))
    assert np.all(np.abs(rv.astype(int) - 128) <= 1)


def test_transparency_is_composited_onto_white() -> None:
    """A fully transparent RGBA pixel becomes white; an opaque one keeps its colour."""
    pixels = np.zeros((32, 32, 4), np.uint8)
    pixels[:, :16] = (200, 10, 10, 255)
    rv = np.asarray(_decoded(encoded(Image.fromarray(pixels, "RGBA"))))
    assert tuple(rv[0, 0]) == (200, 10, 10)
    assert tuple(rv[0, 31]) == (255, 255, 255)


def test_exif_orientation_is_applied() -> None:
    """A JPEG stored landscape with EXIF orientation 6 (rotate 90) decodes as portrait."""
    exif = Image.Exif()
    exif[0x0112] = 6
    rv = _decoded(encoded(picture(60, 40, seed=2), "JPEG", exif=exif.tobytes()))
    assert rv.size == (40, 60)


def test_animation_gives_its_first_frame() -> None:
    """An animated GIF decodes to its first frame."""
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50)
    rv = np.asarray(_decoded(buffer.getvalue()))
    assert rv[0, 0, 0] > 200
    assert rv[0, 0, 2] < 50


@pytest.mark.parametrize("side", [5000, 50000], ids=["over-our-limit", "over-pillows-limit"])
def test_a_bomb_is_refused_from_its_header(side: int) -> None:
    """A small file claiming side x side pixels is refused, naming the pixel count and this server's limit."""
    with pytest.raises(InvalidRequest, match=rf"^content_image: .*{side * side} pixels.*limit.* 16777216"):
        _decoded(png_claiming_size(side, side))


@pytest.mark.parametrize("data", [b"", b"\x00" * 100, encoded(picture(64, 64, 3), "PNG")[:120]])
def test_garbage_is_invalid_argument(data: bytes) -> None:
    """Empty, random and truncated bytes raise InvalidRequest naming the field."""
    with pytest.raises(InvalidRequest, match=r"^content_image: "):
        _decoded(data)


@pytest.mark.parametrize(
    ("size", "longest", "expected"),
    [((1024, 768), 512, (512, 384)), ((768, 1024), 512, (384, 512)), ((67, 45), 67, (67, 45)), ((100, 1), 50, (50, 1))],
)
def test_size_for_longest_side(size: tuple[int, int], longest: int, expected: tuple[int, int]) -> None:
    """The longer side becomes ``longest`` and the aspect ratio is kept (rounded, at least 1 px)."""
    assert size_for_longest_side(*size, longest) == expected


@pytest.mark.parametrize("image_format", list(ImageFormat))
def test_encode_round_trips(image_format: ImageFormat) -> None:
    """An array encodes to the requested format and decodes back to nearly the same pixels."""
    array = to_array(picture(48, 32, seed=3), (48, 32))
    assert array.shape == (1, 3, 32, 48)
    assert array.dtype == np.float32
    data = encode(array, image_format)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == image_format.name
    back = to_array(decoded.convert("RGB"), (48, 32))
    tolerance = 0.5 / 255 if image_format is ImageFormat.PNG else 0.08
    assert np.abs(back - array).mean() <= tolerance


def test_garbage_exif_in_a_png_is_invalid_argument() -> None:
    """A PNG whose eXIf chunk (valid CRC) holds garbage: InvalidRequest naming the field, not an escaping Pillow
    error (which the servicer turned into INTERNAL): exif_transpose runs under the same guard as Image.open."""
    with pytest.raises(InvalidRequest, match="content_image: not a decodable image"):
        _decoded(png_with_chunk(b"eXIf", b"garbage that is no TIFF header"))


def test_a_float_image_is_read_as_zero_to_one() -> None:
    """A float TIFF in [0, 1] keeps its brightness (0.5 is about 128), rather than decoding almost black."""
    source = Image.fromarray(np.full((32, 32), 0.5, np.float32), "F")
    rv = np.asarray(_decoded(encoded(source, "TIFF")))
    assert np.all(np.abs(rv.astype(int) - 128) <= 1)


def test_a_float_image_with_nan_is_refused() -> None:
    source = Image.fromarray(np.full((32, 32), np.nan, np.float32), "F")
    with pytest.raises(InvalidRequest, match="NaN or infinite"):
        _decoded(encoded(source, "TIFF"))


def test_thirty_two_bit_integers_beyond_sixteen_bits_are_refused() -> None:
    """A 32-bit integer TIFF using more than 16 bits has no one reading: refused, naming its range."""
    source = Image.fromarray(np.full((32, 32), 1 << 20, np.int32), "I")
    with pytest.raises(InvalidRequest, match="32-bit integer samples"):
        _decoded(encoded(source, "TIFF"))


@pytest.mark.parametrize("size", [(32, 32), (640, 480), (1000, 7)])
def test_the_encoded_bound_holds_for_noise_in_every_format(size: tuple[int, int]) -> None:
    """max_encoded_bytes is above what encode makes of noise, the worst case, in PNG, JPEG and WebP: the send limit
    and the refusal of results that could not be sent rest on it."""
    noise = np.random.default_rng(0).random((1, 3, size[1], size[0]), dtype=np.float32)
    for image_format in ImageFormat:
        assert len(encode(noise, image_format)) <= max_encoded_bytes(size)
