"""The client's one definition of the options (StylizeOptions) against the API contract and the CLI."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from nst.v1 import style_transfer_pb2 as pb
from nst_client import Style, StyleClient, StylizeOptions
from nst_client._convert import options_to_pb, stylize_request
from nst_client.cli import build_parser, options_from_args
from PIL import Image

from tests.images import png


def test_every_field_of_the_contract_is_an_option() -> None:
    """A StylizeOptions field added to the proto without its client option (or the reverse) fails here."""
    assert [field.name for field in dataclasses.fields(StylizeOptions)] == [
        field.name for field in pb.StylizeOptions.DESCRIPTOR.fields
    ]
    style_fields = {field.name for field in pb.StyleImage.DESCRIPTOR.fields}
    assert {field.name for field in dataclasses.fields(Style)} == style_fields


def test_every_option_set_reaches_the_message_and_none_leaves_it_unset() -> None:
    every = StylizeOptions(
        max_side_px=64, max_evaluations=5, optimizer="adam", learning_rate=0.1, content_weight=2, style_weight=3,
        tv_weight=0, init="image", seed=4, preview_every=2, output_format="webp", lbfgs_history=7,
        colour_preservation="histogram", scales=2, coarse_evaluations=3, init_image=png(8, 8),
        content_layers=["relu4_2"], style_layers=["relu1_1", "relu2_1"], style_layer_weights=[1, 2], width_px=40,
        height_px=30, min_improvement=0.001, tileable=True, content_only_mask=np.zeros((8, 8), np.uint8),
        coarse_to_fine=True,  # the server refuses it with scales; the client builds what it is given
    )  # fmt: skip
    message = options_to_pb(every)
    for field in pb.StylizeOptions.DESCRIPTOR.fields:
        if field.is_repeated:
            assert len(getattr(message, field.name)) > 0, field.name
        else:
            assert message.HasField(field.name) if field.has_presence else getattr(message, field.name), field.name
    assert message.optimizer == pb.OPTIMIZER_ADAM
    assert message.colour_preservation == pb.COLOUR_PRESERVATION_HISTOGRAM
    assert message.output_format == pb.IMAGE_FORMAT_WEBP
    assert list(message.style_layer_weights) == [1.0, 2.0]
    assert options_to_pb(StylizeOptions()) == pb.StylizeOptions()


def test_masks_are_sent_as_images_and_may_be_greyscale_arrays(tmp_path: Path) -> None:
    """Masks take what images take (paths, bytes, PIL, arrays) and also HxW arrays, sent as greyscale PNGs."""
    source = tmp_path / "source.png"
    source.write_bytes(png(8, 8, seed=3))
    soft = np.linspace(0.0, 1.0, 12 * 16, dtype=np.float32).reshape(12, 16)
    styles = [Style(png(8, 8), mask=soft, source_mask=source), Style(png(8, 8), mask=np.full((12, 16), 255, np.uint8))]
    request = stylize_request(png(16, 12), styles, None, StylizeOptions(content_only_mask=soft[::-1].copy()))
    with Image.open(io.BytesIO(request.style_images[0].mask)) as mask:
        assert (mask.mode, mask.size) == ("L", (16, 12))
        np.testing.assert_array_equal(np.asarray(mask), np.round(soft * 255).astype(np.uint8))
    assert request.style_images[0].source_mask == source.read_bytes()
    assert np.asarray(Image.open(io.BytesIO(request.style_images[1].mask))).min() == 255
    assert request.options.content_only_mask
    assert not request.options.tileable
    with pytest.raises(ValueError, match=r"styles\[0\]\.mask: a float array must hold finite values in \[0, 1\]"):
        stylize_request(png(16, 12), [Style(png(8, 8), mask=soft * 2)], None, StylizeOptions())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"optimizer": "sgd"}, "optimizer: 'sgd' is not allowed; allowed: 'lbfgs', 'adam'"),
        ({"init": "photo"}, "init: 'photo' is not allowed; allowed: 'content', 'gray', 'noise', 'image', 'matched'"),
        ({"seed": -1}, "seed: expected an integer >= 0"),
        ({"max_side_px": True}, "max_side_px: expected an integer >= 0"),
        ({"learning_rate": float("nan")}, "learning_rate: expected a number"),
        ({"style_layers": "relu1_1"}, "style_layers: expected a sequence"),
        ({"content_layers": [""]}, "content_layers: expected non-empty strings"),
        ({"style_layer_weights": [1, float("inf")]}, "style_layer_weights: expected finite numbers"),
        ({"tileable": 1}, "tileable: expected True or False"),
        ({"content_only_mask": np.zeros((4, 4, 2))}, "content_only_mask: expected an HxW greyscale or HxWx3 RGB array"),
    ],
)
def test_bad_values_are_refused_before_any_call(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        options_to_pb(StylizeOptions(**change))  # type: ignore[arg-type]  # deliberately ill-typed values


def test_an_unknown_keyword_is_a_type_error() -> None:
    with StyleClient("127.0.0.1:1") as client, pytest.raises(TypeError, match="iterations"):
        client.stylize(png(8, 8), png(8, 8), iterations=3)


def test_every_option_has_a_cli_flag() -> None:
    """Each option but the output format (OUT's extension) is a flag whose dest is the option's name."""
    parser = build_parser()
    args = parser.parse_args(["stylize", "c.png", "s.png", "-o", "out.png"])
    names = {field.name for field in dataclasses.fields(StylizeOptions)} - {"output_format"}
    assert names <= set(vars(args)), names - set(vars(args))
    assert options_from_args(args, "png") == StylizeOptions(output_format="png")
    renamed = parser.parse_args(["stylize", "c.png", "-o", "o.png", "--iterations", "7", "--coarse-iterations", "2"])
    assert (renamed.max_evaluations, renamed.coarse_evaluations) == (7, 2)  # the old names still work


def test_enum_names_are_the_literal_types() -> None:
    """The names the client derives from the protobuf enums are exactly its Literal types' values."""
    import typing

    from nst_client import _types
    from nst_client._convert import enum_values

    for option, literal in (
        ("optimizer", _types.OptimizerName),
        ("init", _types.InitName),
        ("output_format", _types.ImageFormatName),
        ("colour_preservation", _types.ColourPreservationName),
    ):
        assert tuple(enum_values(option)) == typing.get_args(literal), option


def test_event_enums_are_the_protobuf_enums() -> None:
    """nst.events' StrEnums hold exactly the protobuf enums' values, by the same names (UNSPECIFIED aside, except
    for StopReason, whose unspecified is what an older server reports)."""
    from nst import events
    from nst_client._convert import enum_values

    assert [member.value for member in events.Optimizer] == list(enum_values("optimizer"))
    assert [member.value for member in events.ImageFormat] == list(enum_values("output_format"))
    stop_reasons = {name.removeprefix("STOP_REASON_").lower() for name in pb.StopReason.DESCRIPTOR.values_by_name}
    assert {member.value for member in events.StopReason} == stop_reasons
