"""Art direction through the real server: blends, style scale, colour, scales, canvases, layers, models, determinism."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from nst.v1 import style_transfer_pb2 as pb
from nst.v1 import style_transfer_pb2_grpc as pb_grpc
from nst_server.domain.colour import to_ycbcr
from nst_server.testing import InProcessServer, running_server
from PIL import Image

from tests.images import encoded, picture
from tests.reference_losses import first_losses, tensor

pytestmark = pytest.mark.slow

CONTENT = picture(64, 48, seed=4)
STYLE_A = picture(64, 40, seed=5)
STYLE_B = picture(48, 64, seed=6)


@pytest.fixture(name="server", scope="module")
def _server(model_dir: Path, caffe_avg_model_dir: Path) -> Iterator[InProcessServer]:
    with running_server([model_dir, caffe_avg_model_dir], "--max-concurrent", "1", "--drain", "0") as server:
        yield server


@pytest.fixture(name="stub")
def _stub(server: InProcessServer) -> Iterator[pb_grpc.StyleTransferServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.StyleTransferServiceStub(channel)


def _styles(*images: Image.Image, **fields: object) -> list[pb.StyleImage]:
    return [pb.StyleImage(image=encoded(image), **fields) for image in images]


def _run(stub: pb_grpc.StyleTransferServiceStub, request: pb.StylizeRequest) -> list[pb.StylizeResponse]:
    return list(stub.Stylize(request, timeout=300))


def _of(responses: list[pb.StylizeResponse], kind: str) -> list:  # type: ignore[type-arg]
    return [getattr(r, kind) for r in responses if r.WhichOneof("event") == kind]


def _image(responses: list[pb.StylizeResponse]) -> Image.Image:
    return Image.open(io.BytesIO(_of(responses, "result")[0].image)).convert("RGB")


def _adam(**options: object) -> pb.StylizeOptions:
    """Few, cheap, deterministic iterations at the content's own 64 px."""
    return pb.StylizeOptions(**{"max_side_px": 64, "max_evaluations": 6, "optimizer": pb.OPTIMIZER_ADAM, **options})


def test_blend_weights_one_and_zero_reproduce_a_single_style(stub: pb_grpc.StyleTransferServiceStub) -> None:
    """Styles A and B blended (1, 0) give exactly A's image, and (0, 1) exactly B's."""
    content = encoded(CONTENT)

    def run(styles: list[pb.StyleImage]) -> bytes:
        responses = _run(stub, pb.StylizeRequest(content_image=content, style_images=styles, options=_adam()))
        return _of(responses, "result")[0].image

    only_a, only_b = run(_styles(STYLE_A)), run(_styles(STYLE_B))
    assert only_a != only_b
    blend = _styles(STYLE_A, STYLE_B)
    blend[0].blend_weight, blend[1].blend_weight = 1.0, 0.0
    assert run(blend) == only_a
    blend[0].blend_weight, blend[1].blend_weight = 0.0, 2.5
    assert run(blend) == only_b


def test_equal_blend_matches_the_reference(stub: pb_grpc.StyleTransferServiceStub) -> None:
    """Two styles without weights blend their Gram matrices equally, as the PyTorch reference computes."""
    style_b = STYLE_B.resize((48, 64))  # already at its working size (longest side 64)
    request = pb.StylizeRequest(
        content_image=encoded(CONTENT), style_images=_styles(STYLE_A, style_b), options=_adam(init=pb.INIT_GRAY)
    )
    got = _of(_run(stub, request), "progress")[0].losses
    want = first_losses(CONTENT, [STYLE_A, style_b], (1.0, 1e6, 10.0))
    assert got.style == pytest.approx(float(want.style), rel=2e-5)


def test_style_scale_resizes_the_style_before_its_targets(stub: pb_grpc.StyleTransferServiceStub) -> None:
    """scale 0.75 takes the style's targets at 0.75 of the output's longest side (48 px), as the reference does."""
    style = picture(96, 64, seed=7)
    request = pb.StylizeRequest(
        content_image=encoded(CONTENT), style_images=_styles(style, scale=0.75), options=_adam(init=pb.INIT_GRAY)
    )
    got = _of(_run(stub, request), "progress")[0].losses
    want = first_losses(CONTENT, [style.resize((48, 32), Image.Resampling.LANCZOS)], (1.0, 1e6, 10.0))
    assert got.style == pytest.approx(float(want.style), rel=2e-5)
    unscaled = first_losses(CONTENT, [style.resize((64, 43), Image.Resampling.LANCZOS)], (1.0, 1e6, 10.0))
    assert got.style != pytest.approx(float(unscaled.style), rel=1e-3)


def test_layer_choice_and_per_layer_weights(stub: pb_grpc.StyleTransferServiceStub) -> None:
    """style_layers relu1_1, relu3_1 weighted 3:1 give the reference's loss with weights (0.75, 0, 0.25, 0, 0)."""
    options = _adam(init=pb.INIT_GRAY, style_layers=["relu1_1", "relu3_1"], style_layer_weights=[3, 1])
    request = pb.StylizeRequest(content_image=encoded(CONTENT), style_images=_styles(STYLE_A), options=options)
    got = _of(_run(stub, request), "progress")[0].losses
    want = first_losses(CONTENT, [STYLE_A], (1.0, 1e6, 10.0), (0.75, 0.0, 0.25, 0.0, 0.0))
    assert got.style == pytest.approx(float(want.style), rel=2e-5)
    assert got.content == pytest.approx(float(want.content), rel=2e-5)


def _chroma(image: Image.Image) -> np.ndarray:
    return to_ycbcr(tensor(image).numpy())[0, 1:]


@pytest.mark.parametrize("mode", [pb.COLOUR_PRESERVATION_LUMINANCE, pb.COLOUR_PRESERVATION_HISTOGRAM])
def test_colour_preservation_keeps_the_photos_chroma(stub: pb_grpc.StyleTransferServiceStub, mode: int) -> None:
    """With colour preservation the result's mean chroma is the photo's, far from a red style's; luminance-only
    transfer also keeps every pixel's chroma."""
    red = Image.fromarray(np.clip(np.asarray(STYLE_A, np.int16) * [1, 0.2, 0.2] + [120, 0, 0], 0, 255).astype("uint8"))
    options = _adam(max_evaluations=30, init=pb.INIT_NOISE, colour_preservation=mode, learning_rate=0.05)
    request = pb.StylizeRequest(content_image=encoded(CONTENT), style_images=_styles(red), options=options)
    chroma, photo = _chroma(_image(_run(stub, request))), _chroma(CONTENT)
    to_photo = np.abs(chroma.mean(axis=(1, 2)) - photo.mean(axis=(1, 2))).max()
    to_style = np.abs(chroma.mean(axis=(1, 2)) - _chroma(red).mean(axis=(1, 2))).max()
    assert to_style > 5 * to_photo
    if mode == pb.COLOUR_PRESERVATION_LUMINANCE:  # exact but for 8-bit rounding and colours clipped to the gamut
        assert np.abs(chroma - photo).mean() < 0.005


def test_multi_scale_walks_the_sizes_coarse_to_fine(stub: pb_grpc.StyleTransferServiceStub) -> None:
    """Three scales run at 1/2, 1/sqrt(2) and 1 of 90 px, in order, and the result has the requested size."""
    options = _adam(max_side_px=90, scales=3, coarse_evaluations=2, max_evaluations=3, preview_every=1)
    request = pb.StylizeRequest(content_image=encoded(CONTENT), style_images=_styles(STYLE_B), options=options)
    responses = _run(stub, request)
    scales = _of(responses, "scale_started")
    assert [(s.scale, s.scales, s.width, s.height, s.max_evaluations) for s in scales] == [
        (1, 3, 45, 34, 2), (2, 3, 64, 48, 2), (3, 3, 90, 68, 3),
    ]  # fmt: skip
    assert _of(responses, "started")[0].scales == 3
    assert [p.iteration for p in _of(responses, "progress")] == list(range(1, 8))
    assert [Image.open(io.BytesIO(p.image)).size for p in _of(responses, "preview")][1:3] == [(45, 34), (64, 48)]
    result = _of(responses, "result")[0]
    assert (result.width, result.height, result.evaluations) == (90, 68, 7)
    assert _image(responses).size == (90, 68)


def test_texture_synthesis_lowers_the_style_loss_tenfold(stub: pb_grpc.StyleTransferServiceStub) -> None:
    """No content image: a 48x40 texture from noise reaches a style loss 10x below its start; content is off."""
    options = pb.StylizeOptions(max_side_px=64, width_px=48, height_px=40, max_evaluations=40, seed=1, tv_weight=0)
    responses = _run(stub, pb.StylizeRequest(style_images=_styles(picture(40, 40, seed=8)), options=options))
    progress = _of(responses, "progress")
    assert progress[-1].losses.style < progress[0].losses.style / 10
    assert {p.losses.content for p in progress} == {0.0}
    assert _image(responses).size == (48, 40)


def test_content_reconstruction_lowers_the_content_loss_tenfold(stub: pb_grpc.StyleTransferServiceStub) -> None:
    """No style image: from noise, the content loss falls 10x and there is no style loss."""
    options = pb.StylizeOptions(max_side_px=64, max_evaluations=40, tv_weight=0)
    progress = _of(_run(stub, pb.StylizeRequest(content_image=encoded(CONTENT), options=options)), "progress")
    assert progress[-1].losses.content < progress[0].losses.content / 10
    assert {p.losses.style for p in progress} == {0.0}


def test_caller_supplied_canvas(stub: pb_grpc.StyleTransferServiceStub) -> None:
    """INIT_IMAGE starts from the caller's image: the photo itself gives a first content loss of exactly 0."""
    photo = encoded(CONTENT)
    options = _adam(init=pb.INIT_IMAGE, init_image=photo, max_evaluations=1)
    request = pb.StylizeRequest(content_image=photo, style_images=_styles(STYLE_A), options=options)
    assert _of(_run(stub, request), "progress")[0].losses.content == 0.0
    options = _adam(init=pb.INIT_IMAGE, init_image=encoded(STYLE_B), max_evaluations=1)
    request = pb.StylizeRequest(content_image=photo, style_images=_styles(STYLE_A), options=options)
    assert _of(_run(stub, request), "progress")[0].losses.content > 0.0


def test_the_request_picks_the_model(stub: pb_grpc.StyleTransferServiceStub, caffe_avg_model_dir: Path) -> None:
    """A server with two models runs the one the request names, and describes both, the default first."""
    names = [model.name for model in stub.DescribeModel(pb.DescribeModelRequest()).models]
    assert names[1] == caffe_avg_model_dir.name
    request = pb.StylizeRequest(
        content_image=encoded(CONTENT), style_images=_styles(STYLE_A), options=_adam(), model=names[1]
    )
    assert _of(_run(stub, request), "started")[0].model == names[1]


def test_same_request_same_bytes(stub: pb_grpc.StyleTransferServiceStub) -> None:
    """The same request with the same seed gives a byte-identical image (L-BFGS from noise, two scales)."""
    options = pb.StylizeOptions(max_side_px=64, max_evaluations=8, init=pb.INIT_NOISE, seed=42, scales=2)
    request = pb.StylizeRequest(content_image=encoded(CONTENT), style_images=_styles(STYLE_B), options=options)
    first, second = _of(_run(stub, request), "result")[0], _of(_run(stub, request), "result")[0]
    assert first.image == second.image
    request.options.seed = 43
    assert _of(_run(stub, request), "result")[0].image != first.image
