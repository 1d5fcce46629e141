"""What spatial control and tileable output do to a picture, through the real graphs and an in-process server.

Small images (64x48) and few Adam evaluations keep each job to a few seconds; the effects are measured, not
looked at: each half's colours move towards its own style, a content-only region keeps the photo, a tileable
texture has no seam, and a job without masks gives exactly the plain (pre-spatial-control) graphs' result.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from nst import manifest as mf
from nst.v1 import style_transfer_pb2 as pb
from nst.v1 import style_transfer_pb2_grpc as pb_grpc
from nst_export.onnx_graphs import build_loss_graph, build_targets_graph
from nst_export.vgg import VGG19Features
from nst_export.weights import init_random
from nst_server.config import ServerConfig
from nst_server.domain import pipeline
from nst_server.domain.colour import to_ycbcr
from nst_server.domain.evaluation import Evaluator, FloatArray, ShouldStop, never_stop
from nst_server.domain.model import Regions, Targets
from nst_server.domain.optimise import HostOptimiser
from nst_server.domain.targets import layer_weights
from nst_server.runtime.graphs import LossGraphs
from nst_server.runtime.sessions import SessionEvaluator, session_options
from nst_server.testing import InProcessServer, running_server
from nst_server.transport import codec
from PIL import Image

from tests.images import encoded, picture

WIDTH, HEIGHT = 64, 48
CONTENT = picture(WIDTH, HEIGHT, seed=4)
PHOTO = np.asarray(CONTENT, np.float32) / 255


def _tinted(seed: int, rgb: tuple[int, int, int]) -> Image.Image:
    """A style that is mostly one colour, with some structure."""
    pixels = np.asarray(picture(64, 64, seed), np.float32) * 0.3 + np.array(rgb, np.float32) * 0.7
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


RED, BLUE = _tinted(5, (230, 30, 30)), _tinted(6, (30, 30, 230))


def _mask(white: np.ndarray) -> bytes:
    """A greyscale PNG, white where ``white`` (HxW bool) holds."""
    return encoded(Image.fromarray(np.where(white, 255, 0).astype(np.uint8), "L"))


COLUMNS = np.broadcast_to(np.arange(WIDTH), (HEIGHT, WIDTH))
LEFT, RIGHT = _mask(COLUMNS < WIDTH // 2), _mask(COLUMNS >= WIDTH // 2)


@pytest.fixture(name="server", scope="module")
def _server(model_dir: Path) -> Iterator[InProcessServer]:
    with running_server([model_dir], "--max-concurrent", "1", "--drain", "0") as server:
        yield server


@pytest.fixture(name="stub")
def _stub(server: InProcessServer) -> Iterator[pb_grpc.StyleTransferServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.StyleTransferServiceStub(channel)


def _options(**options: object) -> pb.StylizeOptions:
    """Adam at the content's own 64 px: cheap, deterministic, one evaluation per iteration."""
    defaults = {"max_side_px": WIDTH, "max_evaluations": 15, "optimizer": pb.OPTIMIZER_ADAM, "learning_rate": 0.05}
    return pb.StylizeOptions(**{**defaults, **options})


def _result(stub: pb_grpc.StyleTransferServiceStub, request: pb.StylizeRequest) -> pb.Result:
    results = [r.result for r in stub.Stylize(request, timeout=300) if r.WhichOneof("event") == "result"]
    return results[0]


def _pixels(result: pb.Result) -> np.ndarray:
    """The result as (H, W, 3) floats in [0, 1]."""
    return np.asarray(Image.open(io.BytesIO(result.image)).convert("RGB"), np.float32) / 255


def _styled(stub: pb_grpc.StyleTransferServiceStub, styles: list[pb.StyleImage], **options: object) -> np.ndarray:
    request = pb.StylizeRequest(content_image=encoded(CONTENT), style_images=styles, options=_options(**options))
    return _pixels(_result(stub, request))


def _red_minus_blue(pixels: np.ndarray) -> float:
    return float(np.mean(pixels[..., 0] - pixels[..., 2]))


@pytest.mark.slow
def test_each_half_moves_towards_its_own_style(stub: pb_grpc.StyleTransferServiceStub) -> None:
    """Red masked to the left, blue to the right, blended 3:2 and coarse to fine (two scales): the left half turns
    red and the right half blue, while the same styles unmasked colour both halves alike."""
    half = WIDTH // 2
    masked = _styled(
        stub,
        [pb.StyleImage(image=encoded(RED), mask=LEFT, blend_weight=1.5),
         pb.StyleImage(image=encoded(BLUE), mask=RIGHT, blend_weight=1.0)],
        scales=2, coarse_evaluations=10,
    )  # fmt: skip
    left, right = masked[:, :half], masked[:, half:]
    assert _red_minus_blue(left) - _red_minus_blue(PHOTO[:, :half]) > 0.05, _red_minus_blue(left)
    assert _red_minus_blue(PHOTO[:, half:]) - _red_minus_blue(right) > 0.05, _red_minus_blue(right)
    unmasked = _styled(stub, [pb.StyleImage(image=encoded(RED)), pb.StyleImage(image=encoded(BLUE))], scales=2,
                       coarse_evaluations=10)  # fmt: skip
    apart = _red_minus_blue(left) - _red_minus_blue(right)
    assert abs(_red_minus_blue(unmasked[:, :half]) - _red_minus_blue(unmasked[:, half:])) < apart / 4


@pytest.mark.slow
def test_content_only_region_keeps_the_photo(stub: pb_grpc.StyleTransferServiceStub) -> None:
    """A content-only region on the left third stays the photo (to 8-bit rounding) through two scales; without it
    the same job restyles it as much as the rest."""
    third = WIDTH // 3
    styles = [pb.StyleImage(image=encoded(RED))]
    kept = _styled(stub, styles, scales=2, coarse_evaluations=10, content_only_mask=_mask(third > COLUMNS))
    assert np.abs(kept[:, :third] - PHOTO[:, :third]).mean() < 1.0 / 255
    assert np.abs(kept[:, third + 4 :] - PHOTO[:, third + 4 :]).mean() > 0.05
    free = _styled(stub, styles, scales=2, coarse_evaluations=10)
    assert np.abs(free[:, :third] - PHOTO[:, :third]).mean() > 0.05


@pytest.mark.slow
def test_masks_with_luminance_transfer(stub: pb_grpc.StyleTransferServiceStub) -> None:
    """Masks under luminance-only transfer: every pixel keeps the photo's chroma, the content-only strip keeps the
    photo altogether, and the masked halves are restyled (their luminance moves away from the photo's)."""
    strip, columns = WIDTH // 8, COLUMNS
    left = _mask((columns >= strip) & (columns < WIDTH // 2))
    styles = [pb.StyleImage(image=encoded(RED), mask=left), pb.StyleImage(image=encoded(BLUE), mask=RIGHT)]
    pixels = _styled(stub, styles, colour_preservation=pb.COLOUR_PRESERVATION_LUMINANCE,
                     content_only_mask=_mask(columns < strip))  # fmt: skip
    ycbcr, photo = to_ycbcr(pixels.transpose(2, 0, 1)[np.newaxis]), to_ycbcr(PHOTO.transpose(2, 0, 1)[np.newaxis])
    assert np.abs(ycbcr[0, 1:] - photo[0, 1:]).mean() < 0.01
    assert np.abs(pixels[:, :strip] - PHOTO[:, :strip]).mean() < 1.0 / 255
    assert np.abs(ycbcr[0, 0, :, strip + 4 :] - photo[0, 0, :, strip + 4 :]).mean() > 0.03


def _seam(pixels: np.ndarray) -> tuple[float, float]:
    """(mean |difference| across the wrap, mean |difference| between neighbours inside), rows and columns alike."""
    inside = (np.abs(np.diff(pixels, axis=1)).mean() + np.abs(np.diff(pixels, axis=0)).mean()) / 2
    wrap = (np.abs(pixels[:, -1] - pixels[:, 0]).mean() + np.abs(pixels[-1] - pixels[0]).mean()) / 2
    return float(wrap), float(inside)


@pytest.mark.slow
@pytest.mark.parametrize("content", [False, True], ids=["texture", "stylisation"])
def test_tileable_output_has_no_seam(stub: pb_grpc.StyleTransferServiceStub, content: bool) -> None:
    """A tileable 64x64 texture, or stylisation of a photo that does not wrap itself: the last column against the
    first and the last row against the first differ no more than 1.5x the neighbours inside do. The same job
    without ``tileable`` fails that by far."""
    photo = picture(64, 64, seed=4)
    photo_wrap, photo_inside = _seam(np.asarray(photo, np.float32) / 255)
    assert photo_wrap > 1.5 * photo_inside  # the photo fails the criterion itself

    def run(tileable: bool) -> np.ndarray:
        options = pb.StylizeOptions(max_side_px=64, max_evaluations=20, scales=1, seed=1, tileable=tileable)
        if not content:
            options.width_px, options.height_px = 64, 64
        request = pb.StylizeRequest(content_image=encoded(photo) if content else b"", options=options,
                                    style_images=[pb.StyleImage(image=encoded(picture(64, 64, seed=5)))])  # fmt: skip
        return _pixels(_result(stub, request))

    wrap, inside = _seam(run(True))
    assert wrap <= 1.5 * inside, (wrap, inside)
    plain_wrap, plain_inside = _seam(run(False))
    assert plain_wrap > 3 * plain_inside, (plain_wrap, plain_inside)
    assert plain_wrap > 3 * wrap


def test_white_masks_change_nothing(stub: pb_grpc.StyleTransferServiceStub) -> None:
    """One style with an all-white mask and an all-white source mask is exactly the unmasked job: one region
    weighing 1 and guides of ones are the plain loss, bit for bit."""
    white = _mask(np.ones((HEIGHT, WIDTH), bool))
    source = _mask(np.ones((64, 64), bool))
    styles = [pb.StyleImage(image=encoded(RED))]
    plain = pb.StylizeRequest(content_image=encoded(CONTENT), style_images=styles, options=_options(max_evaluations=4))
    masked = pb.StylizeRequest()
    masked.CopyFrom(plain)
    masked.style_images[0].mask, masked.style_images[0].source_mask = white, source
    assert _result(stub, masked).image == _result(stub, plain).image


class _PlainGraphs:
    """A ``LossModel`` on the plain Gatys graphs (``guided=False``: no guide inputs, (N, N) Gram targets), the
    formulation from before spatial control, with the same weights as ``LossGraphs``."""

    def __init__(self, graphs: LossGraphs, directory: Path) -> None:
        self.name, self.device, self.manifest = graphs.name, graphs.device, graphs.manifest
        model = VGG19Features("relu5_1", self.manifest.pooling)
        assert self.manifest.seed is not None
        init_random(model, self.manifest.seed)
        onnx.save(build_targets_graph(model, self.manifest, guided=False), directory / "targets.onnx")
        onnx.save(build_loss_graph(model, self.manifest, guided=False), directory / "loss.onnx")
        self._targets, self._loss = (
            ort.InferenceSession(str(directory / name), session_options(0), providers=["CPUExecutionProvider"])
            for name in ("targets.onnx", "loss.onnx")
        )

    def targets(self, image: FloatArray, guide: FloatArray | None = None, circular: bool = False,
                should_stop: ShouldStop = never_stop) -> Targets:  # fmt: skip
        assert guide is None
        assert not circular
        names = [output.name for output in self._targets.get_outputs()]
        return dict(zip(names, self._targets.run(names, {mf.IMAGE_INPUT: image}), strict=True))

    def evaluator(self, shape: tuple[int, int], targets: Targets, loss_weights: mf.LossWeights,
                  content_layer_weights: tuple[float, ...] | None = None,
                  style_layer_weights: tuple[float, ...] | None = None, regions: Regions | None = None,
                  circular: bool = False, should_stop: ShouldStop = never_stop,
                  ) -> SessionEvaluator:  # fmt: skip
        assert regions is None
        assert not circular
        default_content, default_style = layer_weights(self.manifest)
        feeds = dict(targets)
        feeds[mf.CONTENT_WEIGHT_INPUT] = np.array(loss_weights.content, np.float32)
        feeds[mf.STYLE_WEIGHT_INPUT] = np.array(loss_weights.style, np.float32)
        feeds[mf.TV_WEIGHT_INPUT] = np.array(loss_weights.tv, np.float32)
        feeds[mf.CONTENT_LAYER_WEIGHTS_INPUT] = np.array(content_layer_weights or default_content, np.float32)
        feeds[mf.STYLE_LAYER_WEIGHTS_INPUT] = np.array(style_layer_weights or default_style, np.float32)
        return SessionEvaluator(self._loss, "cpu", shape, feeds)

    def warm_up(self, evaluator: Evaluator, image: FloatArray) -> None:
        evaluator(image)

    def optimiser(self, evaluator: Evaluator, optimizer: object = None) -> HostOptimiser:
        return HostOptimiser(evaluator)

    def release_memory(self) -> None:
        pass


@pytest.mark.slow
def test_no_masks_give_the_plain_graphs_result(model_dir: Path, tmp_path: Path) -> None:
    """A job without masks (two styles blended 3:1, luminance transfer, two scales, L-BFGS) gives the same result
    bytes on the server's guided graphs as on the plain graphs that came before spatial control."""
    graphs = LossGraphs(model_dir, device="cpu", placement="host")  # bytes compared: one placement for both runs
    styles = [pb.StyleImage(image=encoded(RED), blend_weight=3.0), pb.StyleImage(image=encoded(BLUE))]
    options = pb.StylizeOptions(max_side_px=WIDTH, max_evaluations=6, scales=2, coarse_evaluations=4,
                                colour_preservation=pb.COLOUR_PRESERVATION_LUMINANCE)  # fmt: skip
    request = pb.StylizeRequest(content_image=encoded(CONTENT), style_images=styles, options=options)
    job = codec.job_from_request(request, "j", [graphs], ServerConfig(model_dirs=()))

    def run(model: LossGraphs | _PlainGraphs) -> bytes:
        return pipeline.stylize(job, model, lambda event: None, lambda: False).image  # type: ignore[arg-type]

    guided = run(graphs)
    assert guided == run(_PlainGraphs(graphs, tmp_path))
    assert guided == run(graphs)  # and the guided graphs rerun to the same bytes


@pytest.mark.slow
def test_masks_and_tileable_with_the_optimiser_on_the_device(model_dir: Path) -> None:
    """Regions and circular padding are bound into the loss session, so the device-placed optimiser (issue 18) runs
    them as the host's does: Adam gives the same bytes on either placement (CPU provider)."""
    styles = [pb.StyleImage(image=encoded(RED), mask=LEFT), pb.StyleImage(image=encoded(BLUE), mask=RIGHT)]
    request = pb.StylizeRequest(content_image=encoded(CONTENT), style_images=styles,
                                options=_options(max_evaluations=5, scales=1, tileable=True))  # fmt: skip

    def run(placement: str) -> bytes:
        graphs = LossGraphs(model_dir, device="cpu", placement=placement)  # type: ignore[arg-type]
        job = codec.job_from_request(request, "j", [graphs], ServerConfig(model_dirs=()))
        return pipeline.stylize(job, graphs, lambda event: None, lambda: False).image

    assert run("device") == run("host")
