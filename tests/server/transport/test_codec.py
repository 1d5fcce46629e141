"""Request validation in codec, in-process: every rule, the message it gives, and the defaults of what is left unset.

No gRPC and no onnxruntime: codec only reads a model's name, manifest and whole-image size, so a stand-in carries a
real Manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest
from nst.events import ImageFormat, Optimizer
from nst.manifest import Manifest
from nst.v1 import style_transfer_pb2 as pb
from nst_server.config import Limits, ServerConfig
from nst_server.domain import memory, spatial
from nst_server.domain.errors import InvalidRequest
from nst_server.domain.job import ColourPreservation, Init, Job
from nst_server.domain.schedule import scale_sizes
from nst_server.transport import codec

from tests.images import png
from tests.requests import worst_small_request

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
MANIFEST = Manifest("random", "0" * 64, "max", "imagenet", ("relu4_2",), STYLE_LAYERS, 17, "test")
CONFIG = ServerConfig(
    model_dirs=(), limits=Limits(max_pixels=200_000, max_side_px=256, max_evaluations=50, max_styles=2)
)


@dataclass(frozen=True)
class _Model:
    """What codec reads of a loaded model."""

    name: str
    manifest: Manifest = MANIFEST
    device: str = "cpu"
    whole_max_side_px: int | None = None  # never tiles


MODELS = [_Model("first"), _Model("second", replace(MANIFEST, preprocessing="caffe"))]


def _request(content: bytes | None = None, styles: int = 1, **options: object) -> pb.StylizeRequest:
    return pb.StylizeRequest(
        content_image=png(80, 60, seed=1) if content is None else content,
        style_images=[pb.StyleImage(image=png(64, 64, seed=2)) for _ in range(styles)],
        options=pb.StylizeOptions(**options),
    )


def _job(request: pb.StylizeRequest, config: ServerConfig = CONFIG) -> Job:
    return codec.job_from_request(request, "job1", MODELS, config)


def _refused(request: pb.StylizeRequest, config: ServerConfig = CONFIG) -> str:
    with pytest.raises(InvalidRequest) as error:
        _job(request, config)
    return str(error.value)


def test_unset_options_are_the_documented_defaults() -> None:
    job = _job(_request())
    options = job.options
    assert (options.max_side_px, options.max_evaluations) == (256, 50)  # 512 and 300, each capped by the limit
    assert (options.optimizer, options.learning_rate, options.lbfgs_history) == (Optimizer.LBFGS, 0.02, 10)
    assert options.loss_weights == MANIFEST.default_loss_weights
    assert (options.init, options.seed, options.preview_every) == (Init.MATCHED, 0, 0)
    assert (options.output_format, options.colour_preservation) == (ImageFormat.PNG, ColourPreservation.NONE)
    assert (options.scales, options.coarse_evaluations, options.coarse_to_fine) == (0, 0, False)  # one scale
    assert (options.content_layers, options.style_layers, options.style_layer_weights) == ((), (), ())
    assert (job.model, job.size) == ("first", (256, 192))
    assert job.content is not None
    assert job.content.shape == (1, 3, 192, 256)
    assert [style.blend_weight for style in job.styles] == [1.0]
    assert job.styles[0].image.shape == (1, 3, 256, 256)  # scale 1: the output's longest side


def test_defaults_below_the_limits_are_the_jobs_own() -> None:
    roomy = ServerConfig(model_dirs=())
    assert (_job(_request(), roomy).options.max_side_px, _job(_request(), roomy).options.max_evaluations) == (512, 300)


@pytest.mark.parametrize(
    ("content", "styles", "init"), [(True, True, Init.MATCHED), (False, True, Init.NOISE), (True, False, Init.NOISE)]
)
def test_unset_init_is_the_matched_photo_only_with_a_photo_and_a_style(content: bool, styles: bool, init: Init) -> None:
    assert _job(_request(b"" if not content else None, styles=int(styles))).options.init is init


def test_model_defaults_follow_the_chosen_model() -> None:
    request = _request()
    request.model = "second"
    job = _job(request)
    assert (job.model, job.options.loss_weights) == ("second", MODELS[1].manifest.default_loss_weights)


def test_texture_size_is_as_asked_or_max_side_square() -> None:
    assert _job(_request(b"", width_px=64, height_px=40)).size == (64, 40)
    assert _job(_request(b"", max_side_px=96)).size == (96, 96)
    assert _job(_request(b"")).content is None


# (request, message start or fragment) for every rule codec enforces; each message names the field.
BAD: dict[str, tuple[pb.StylizeRequest, str]] = {
    "unknown-model": (pb.StylizeRequest(content_image=png(64, 64), model="third"),
                      "model: 'third' is not loaded; available: first, second"),
    "no-images": (_request(b"", styles=0), "content_image, style_images: both empty"),
    "too-many-styles": (_request(styles=3), "style_images: 3 given, at most 2 allowed"),
    "unknown-optimizer": (_request(optimizer=9), "options.optimizer: unknown value 9; allowed: OPTIMIZER_UNSPECIFIED"),
    "unknown-init": (_request(init=9), "options.init: unknown value 9"),
    "unknown-format": (_request(output_format=9), "options.output_format: unknown value 9"),
    "unknown-colour": (_request(colour_preservation=9), "options.colour_preservation: unknown value 9"),
    "negative-content-weight": (_request(content_weight=-1), "options.content_weight: -1.0 is not allowed"),
    "nan-style-weight": (_request(style_weight=float("nan")), "options.style_weight: nan is not allowed"),
    "inf-tv-weight": (_request(tv_weight=float("inf")), "options.tv_weight: inf is not allowed"),
    "zero-learning-rate": (_request(learning_rate=0), "options.learning_rate: 0.0 is not allowed; expected 0 < rate"),
    "big-learning-rate": (_request(learning_rate=1.5), "options.learning_rate: 1.5 is not allowed"),
    "tiny-side": (_request(max_side_px=8), "options.max_side_px: 8 is out of range; allowed 32 to 256"),
    "side-over-limit": (_request(max_side_px=257), "options.max_side_px: 257 is out of range"),
    "evaluations-over-limit": (_request(max_evaluations=51), "options.max_evaluations: 51 is out of range; allowed 1"),
    "history-over-100": (_request(lbfgs_history=101), "options.lbfgs_history: 101 is out of range; allowed 1 to 100"),
    "scales-over-8": (_request(scales=9), "options.scales: 9 is out of range; allowed 1 to 8"),
    "coarse-over-limit": (_request(coarse_evaluations=51), "options.coarse_evaluations: 51 is out of range"),
    "unknown-style-layer": (_request(style_layers=["relu9_1"]), "options.style_layers: 'relu9_1' not exported"),
    "unknown-content-layer": (_request(content_layers=["conv1"]), "options.content_layers: 'conv1' not exported"),
    "layer-twice": (_request(style_layers=["relu1_1", "relu1_1"]), "options.style_layers: a layer named twice"),
    "layer-weight-count": (_request(style_layers=["relu1_1"], style_layer_weights=[1, 2]),
                           "options.style_layer_weights: 2 given for 1 style layers (relu1_1)"),
    "layer-weight-count-all": (_request(style_layer_weights=[1]), "options.style_layer_weights: 1 given for 5"),
    "layer-weights-zero": (_request(style_layers=["relu1_1"], style_layer_weights=[0]),
                           "options.style_layer_weights: all are 0"),
    "layer-weight-negative": (_request(style_layers=["relu1_1"], style_layer_weights=[-1]),
                              "options.style_layer_weights: -1.0 is not allowed"),
    "texture-size-with-content": (_request(width_px=64), "options.width_px/height_px: only for texture synthesis"),
    "texture-too-small": (_request(b"", width_px=16), "options.width_px: 16 is out of range; allowed 32 to 256"),
    "texture-too-tall": (_request(b"", height_px=300), "options.height_px: 300 is out of range"),
    "init-content-without-content": (_request(b"", init=pb.INIT_CONTENT), "options.init: INIT_CONTENT needs a content"),
    "coarse-to-fine-with-scales": (_request(coarse_to_fine=True, scales=2), "options.coarse_to_fine: the server's own"),
    "init-matched-without-content": (_request(b"", init=pb.INIT_MATCHED), "options.init: INIT_MATCHED needs a content"),
    "init-matched-without-style": (_request(styles=0, init=pb.INIT_MATCHED), "options.init: INIT_MATCHED needs a"),
    "init-image-missing": (_request(init=pb.INIT_IMAGE), "options.init_image: give it exactly when"),
    "init-image-unasked": (_request(init_image=png(32, 32)), "options.init_image: give it exactly when"),
    "colour-without-content": (_request(b"", colour_preservation=pb.COLOUR_PRESERVATION_LUMINANCE),
                               "options.colour_preservation: keeps the content image's colours"),
    "content-not-an-image": (_request(b"not an image"), "content_image: not an image in a format"),
    "content-too-thin": (_request(png(400, 20)), "content_image: 400x20 at max_side_px 256 is 256x13; both sides"),
    "content-too-many-pixels": (_request(png(600, 400)), "content_image: 600x400 is 240000 pixels, more than"),
    "init-image-not-an-image": (_request(init=pb.INIT_IMAGE, init_image=b"x"), "options.init_image: not an image"),
    "coarsest-scale-too-small": (_request(max_side_px=64, scales=4), "options.scales: the coarsest of 4 scales is"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_each_rule_refuses_with_a_message_naming_the_field(case: str) -> None:
    request, message = BAD[case]
    assert message in _refused(request)


def _with_style(**style: object) -> pb.StylizeRequest:
    request = _request()
    for name, value in style.items():
        setattr(request.style_images[0], name, value)
    return request


@pytest.mark.parametrize(
    ("style", "message"),
    [
        ({"blend_weight": -1}, "style_images[0].blend_weight: -1.0 is not allowed"),
        ({"scale": 0}, "style_images[0].scale: 0.0 is not allowed; expected 0 < scale <= 4"),
        ({"scale": 4.5}, "style_images[0].scale: 4.5 is not allowed"),
        ({"scale": float("nan")}, "style_images[0].scale: nan is not allowed"),
        ({"scale": 2.0}, "style_images[0].scale: 2 makes the style 512x512, over 200000 pixels"),
        ({"image": b""}, "style_images[0].image: empty"),
    ],
)
def test_style_rules(style: dict[str, object], message: str) -> None:
    assert message in _refused(_with_style(**style))


def test_blend_weights_all_zero_are_refused() -> None:
    request = _request(styles=2)
    for style in request.style_images:
        style.blend_weight = 0
    assert _refused(request).startswith("style_images[].blend_weight: all are 0")


def test_a_style_too_small_at_the_coarsest_scale_is_refused() -> None:
    request = _with_style(scale=0.15)  # 38 px at one scale: fine; 27 px at the coarser of two: too small
    assert _job(request).styles[0].image.shape[2:] == (38, 38)
    request.options.scales = 2
    assert "style_images[0]: at the coarsest scale, after its scale is 27x27" in _refused(request)


def test_the_scale_check_uses_the_pipelines_sizes() -> None:
    """The coarsest size codec checks is the one the pipeline will run: one definition of the scale sizes."""
    job = _job(_request(max_side_px=128, scales=3))
    assert scale_sizes(job.size, 3) == [(64, 48), (91, 68), (128, 96)]


def test_events_become_their_stream_messages() -> None:
    from nst.events import Losses, Progress, Queued, Result, Timings

    losses = Losses(4.0, 1.0, 2.0, 1.0)
    assert codec.to_response(Queued("j", 2)).queued.position == 2
    progress = codec.to_response(Progress(3, 4, losses, 0.5)).progress
    assert (progress.iteration, progress.evaluations, progress.losses.style, progress.elapsed_s) == (3, 4, 2.0, 0.5)
    timings = Timings(evaluate_s=0.25, step_s=0.125, host_s=0.0625)
    result = codec.to_response(Result(b"png", ImageFormat.JPEG, 8, 6, losses, 2, 3, timings)).result
    assert (result.format, result.width, result.timings.evaluate_s) == (pb.IMAGE_FORMAT_JPEG, 8, 0.25)
    assert (result.timings.step_s, result.timings.host_s) == (0.125, 0.0625)
    with pytest.raises(TypeError):
        codec.to_response("not an event")  # type: ignore[arg-type]


def test_describe_reports_models_and_limits() -> None:
    generated = _Model("generated", replace(MANIFEST, weights="ranvgg", seed=0, recipe="ranvgg: scaled"))
    response = codec.describe([*MODELS, generated], CONFIG)
    assert [model.name for model in response.models] == ["first", "second", "generated"]
    assert response.models[0].style_layers == list(STYLE_LAYERS)
    assert (response.limits.max_pixels, response.limits.max_styles, response.limits.max_evaluations) == (
        200_000,
        2,
        50,
    )
    assert response.limits.max_regions == spatial.MAX_REGIONS
    loaded = response.models[0]
    assert (loaded.recipe, loaded.HasField("seed")) == ("", False)  # weights from a file: nothing to say
    assert (response.models[2].recipe, response.models[2].seed) == ("ranvgg: scaled", 0)  # seed 0 is still said


def test_arrays_are_the_server_convention() -> None:
    job = _job(_request())
    assert job.content is not None
    assert job.content.dtype == np.float32
    assert 0.0 <= job.content.min() <= job.content.max() <= 1.0


def test_the_worst_small_request_is_planned_at_its_working_sizes_without_decoding() -> None:
    """1.6 kB of PNGs plan as a 4096x4096 output with eight 4096x4096 styles and an init image: their decoded
    float32 copies alone are the 1,920 MiB the issue measured, and the estimate is above that."""
    request = worst_small_request()
    assert request.ByteSize() < 2000
    tiled = [_Model("tiled", whole_max_side_px=576)]  # the default 256 px tiles with the 160 px halo
    plan = codec.plan_request(request, tiled, ServerConfig(model_dirs=())).plan
    assert plan.output == (4096, 4096)
    assert plan.styles == ((4096, 4096),) * 8
    assert plan.has_init_image
    assert memory.parts(plan)["inputs"] == 12 * 4096 * 4096 * 10  # content, init and 8 styles: 1,920 MiB
    assert memory.peak_bytes(plan) > 1920 << 20
    assert codec.plan_request(request, tiled, ServerConfig(model_dirs=())).peak_bytes == memory.peak_bytes(plan)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (_request(content_weight=1e300), "options.content_weight: 1e+300 is not allowed; expected a finite number "
         "from 0 to 1e+12"),
        (_request(style_weight=1.5e12), "options.style_weight: 1500000000000.0 is not allowed"),
        (_request(style_layer_weights=[1, 1, 1, 1, 1e13]),
         "options.style_layer_weights: 10000000000000.0 is not allowed"),
        (pb.StylizeRequest(content_image=png(80, 60),
                           style_images=[pb.StyleImage(image=png(64, 64), blend_weight=1e20)]),
         "style_images[0].blend_weight: 1e+20 is not allowed"),
    ],
)  # fmt: skip
def test_weights_are_bounded(request_: pb.StylizeRequest, message: str) -> None:
    """content_weight 1e300 returned OK with NaN losses and a black image (Adam) or the untouched photo (L-BFGS):
    weights above 1e12 are refused before anything is decoded."""
    assert message in _refused(request_)


def test_the_largest_weight_is_allowed() -> None:
    assert _job(_request(content_weight=1e12)).options.loss_weights.content == 1e12  # type: ignore[union-attr]
