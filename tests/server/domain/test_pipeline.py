"""The pipeline in-process against a small stand-in model: events, scales, budgets, timings, weights, stopping.

The stand-in is a ``model.LossModel`` whose loss is mean((x - 0.25)^2) with its exact gradient: cheap, smooth and
known, so these tests check the pipeline's own logic (the real graphs: tests/server/runtime, the export).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
import pytest
from nst.events import Event, ImageFormat, Optimizer, Preview, Progress, Result, ScaleStarted, Started
from nst.manifest import LossWeights, Manifest, content_target_name, gram_target_name
from nst_server.domain import colour, optimise, pipeline
from nst_server.domain.errors import Cancelled, NonFiniteLoss
from nst_server.domain.evaluation import Evaluation, FloatArray, ShouldStop
from nst_server.domain.job import Init, Job, Options, Style
from nst_server.domain.model import Regions, Targets
from nst_server.domain.schedule import scale_sizes
from PIL import Image

STYLE_LAYERS = ("relu1_1", "relu2_1")
MANIFEST = Manifest("random", "0" * 64, "max", "imagenet", ("relu4_2",), STYLE_LAYERS, 17, "test")
TARGET = 0.25


@dataclass
class _Evaluator:
    size: tuple[int, int]  # (height, width)
    calls: list[FloatArray] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (1, 3, *self.size)

    def __call__(self, image: npt.NDArray[np.floating]) -> Evaluation:
        x = image.reshape(self.shape).astype(np.float32)
        self.calls.append(x.copy())
        self.seconds += 0.001  # a stand-in's bookkeeping, so that evaluate_s has something to add up
        diff = x - TARGET
        loss = float(np.mean(diff**2))
        return Evaluation(loss, loss, 0.0, 0.0, (2 * diff / diff.size).astype(np.float32))


@dataclass
class _Model:
    """A LossModel that records what the pipeline asks of it."""

    name: str = "stand-in"
    device: str = "cpu"
    manifest: Manifest = MANIFEST
    evaluators: list[_Evaluator] = field(default_factory=list)
    weights: list[tuple[tuple[float, ...] | None, tuple[float, ...] | None]] = field(default_factory=list)
    warmed: set[tuple[int, ...]] = field(default_factory=set)
    regions: list[Regions | None] = field(default_factory=list)  # per evaluator
    circular: list[bool] = field(default_factory=list)  # per targets call, then per evaluator
    guides: list[FloatArray | None] = field(default_factory=list)  # per targets call

    def targets(self, image: FloatArray, guide: FloatArray | None, circular: bool, should_stop: ShouldStop) -> Targets:
        self.guides.append(guide)
        self.circular.append(circular)
        level = np.float32(image.mean())
        feeds = {content_target_name(layer): np.full((1, 2, 2, 2), level) for layer in MANIFEST.content_layers}
        return feeds | {gram_target_name(layer): np.eye(2, dtype=np.float32) * level for layer in STYLE_LAYERS}

    def evaluator(
        self,
        shape: tuple[int, int],
        targets: Targets,
        loss_weights: LossWeights,
        *layer_weights: object,
        regions: Regions | None,
        circular: bool,
        should_stop: ShouldStop,
    ) -> _Evaluator:
        """Records the per-layer weights the pipeline passes (content, style), its regions and padding."""
        assert set(targets) == {content_target_name("relu4_2"), *map(gram_target_name, STYLE_LAYERS)}
        self.weights.append(layer_weights)  # type: ignore[arg-type]
        self.regions.append(regions)
        self.circular.append(circular)
        self.evaluators.append(_Evaluator(shape))
        return self.evaluators[-1]

    def warm_up(self, evaluator: _Evaluator, image: FloatArray) -> None:
        if evaluator.shape not in self.warmed:
            evaluator(image)
            self.warmed.add(evaluator.shape)

    def optimiser(self, evaluator: _Evaluator, optimizer: object = None) -> optimise.HostOptimiser:
        return optimise.HostOptimiser(evaluator)

    def release_memory(self) -> None:
        pass


def _image(width: int, height: int, value: float | None = None, seed: int = 0) -> FloatArray:
    if value is not None:
        return np.full((1, 3, height, width), value, np.float32)
    return np.random.default_rng(seed).random((1, 3, height, width), dtype=np.float32)


def _job(size: tuple[int, int] = (64, 48), content: bool = True, styles: int = 1, **options: object) -> Job:
    width, height = size
    return Job(
        "job1",
        "stand-in",
        size,
        _image(width, height, seed=1) if content else None,
        tuple(Style(_image(64, 64, seed=2 + k)) for k in range(styles)),
        Options(**{"max_evaluations": 6, "optimizer": Optimizer.ADAM, "learning_rate": 0.1, **options}),  # type: ignore[arg-type]
    )


def _run(job: Job, model: _Model | None = None, queued_s: float = 0.0) -> tuple[list[Event], Result, _Model]:
    model = model or _Model()
    events: list[Event] = []
    result = pipeline.stylize(job, model, events.append, lambda: False, queued_s)  # type: ignore[arg-type]
    return events, result, model


def test_stream_order_and_previews() -> None:
    events, result, _ = _run(_job(preview_every=2))
    kinds = [type(event).__name__ for event in events]
    assert kinds[:2] == ["Started", "ScaleStarted"]
    assert kinds[-1] == "Result"
    assert events[-1] is result
    progress = [event for event in events if isinstance(event, Progress)]
    assert [p.iteration for p in progress] == [1, 2, 3, 4, 5, 6]  # Adam: one evaluation per iteration
    assert [p.evaluations for p in progress] == [1, 2, 3, 4, 5, 6]
    assert progress[-1].losses.total < progress[0].losses.total
    previews = [event for event in events if isinstance(event, Preview)]
    assert [p.iteration for p in previews] == [2, 4, 6]
    assert all(p.format is ImageFormat.PNG and p.image.startswith(b"\x89PNG") for p in previews)
    started = events[0]
    assert isinstance(started, Started)
    assert (started.width, started.height, started.max_evaluations, started.scales) == (64, 48, 6, 1)
    assert (result.width, result.height, result.iterations, result.evaluations) == (64, 48, 6, 6)


def test_scales_walk_the_sizes_with_their_budgets() -> None:
    events, result, model = _run(_job((96, 64), scales=3, coarse_evaluations=2, max_evaluations=5))
    scales = [event for event in events if isinstance(event, ScaleStarted)]
    sizes = scale_sizes((96, 64), 3)
    assert [(s.scale, s.scales, (s.width, s.height), s.max_evaluations) for s in scales] == [
        (1, 3, sizes[0], 2),
        (2, 3, sizes[1], 2),
        (3, 3, sizes[2], 5),
    ]
    assert [e.size for e in model.evaluators] == [(h, w) for w, h in sizes]
    progress = [event for event in events if isinstance(event, Progress)]
    assert [p.iteration for p in progress] == list(range(1, 10))  # numbered on across scales
    assert (result.evaluations, result.iterations) == (9, 9)
    first_of_second_scale = model.evaluators[1].calls[1]  # calls[0] is the warm-up
    assert first_of_second_scale.shape == (1, 3, sizes[1][1], sizes[1][0])  # the last scale's result, resized


def test_timings_add_up() -> None:
    _, result, model = _run(_job(), queued_s=1.5)
    timings = result.timings
    assert timings.queued_s == 1.5
    assert min(timings.warmup_s, timings.optimise_s, timings.evaluate_s) >= 0.0
    assert timings.total_s >= timings.queued_s + timings.warmup_s + timings.optimise_s
    # evaluate_s counts the optimiser's evaluations, not the warm-up's (the stand-in adds 1 ms a call).
    assert timings.evaluate_s == pytest.approx(0.001 * (len(model.evaluators[0].calls) - 1))
    assert timings.step_s == 0.0  # the host placement: the step is host work
    # The rest, never negative (the stand-in's evaluations count 1 ms however long they took).
    assert timings.host_s == pytest.approx(max(0.0, timings.optimise_s - timings.evaluate_s))


def test_init_sets_the_first_canvas() -> None:
    _, _, gray = _run(_job(init=Init.GRAY))
    assert np.all(gray.evaluators[0].calls[0] == pipeline.GRAY)
    job = _job(init=Init.CONTENT)
    _, _, photo = _run(job)
    assert job.content is not None
    np.testing.assert_array_equal(photo.evaluators[0].calls[0], job.content)
    _, _, noise_a = _run(_job(init=Init.NOISE, seed=3))
    _, _, noise_b = _run(_job(init=Init.NOISE, seed=3))
    np.testing.assert_array_equal(noise_a.evaluators[0].calls[0], noise_b.evaluators[0].calls[0])
    image = _job(init=Init.IMAGE)
    image = replace(image, init_image=_image(64, 48, value=0.75))
    _, _, own = _run(image)
    assert np.allclose(own.evaluators[0].calls[0], 0.75)


def test_init_matched_starts_from_the_photo_in_the_styles_palette() -> None:
    """The first canvas is the photo with its colours mapped onto the styles' pooled mean and covariance."""
    job = _job(init=Init.MATCHED, styles=2, scales=1)
    assert job.content is not None
    expected = colour.match_moments(
        job.content, *colour.blended_moments([s.image for s in job.styles], [s.blend_weight for s in job.styles])
    )
    _, _, model = _run(job)
    np.testing.assert_allclose(model.evaluators[0].calls[0], expected, atol=1e-6)


@pytest.mark.parametrize(
    ("content", "styles", "weights"),
    [
        (True, 1, ((1.0,), (0.5, 0.5))),
        (False, 1, ((0.0,), (0.5, 0.5))),  # texture synthesis: no content term
        (True, 0, ((1.0,), (0.0, 0.0))),  # content reconstruction: no style term
    ],
)
def test_missing_images_turn_their_terms_off(content: bool, styles: int, weights: tuple[object, object]) -> None:
    _, _, model = _run(_job(content=content, styles=styles, init=Init.NOISE))
    assert model.weights == [weights]


def test_chosen_layers_and_weights_reach_the_model() -> None:
    _, _, model = _run(_job(style_layers=("relu2_1",), style_layer_weights=(3.0,)))
    assert model.weights == [((1.0,), (0.0, 1.0))]


def test_lbfgs_runs_within_its_budget() -> None:
    events, result, _ = _run(_job(optimizer=Optimizer.LBFGS, max_evaluations=8))
    assert result.evaluations <= 8
    assert result.losses.total < next(e for e in events if isinstance(e, Progress)).losses.total


def test_a_stop_request_ends_the_job_within_one_evaluation() -> None:
    model = _Model()
    calls = 0

    def should_stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > 3

    with pytest.raises(Cancelled):
        pipeline.stylize(_job(max_evaluations=100), model, lambda _: None, should_stop)  # type: ignore[arg-type]
    assert len(model.evaluators[0].calls) == 1 + 3  # the warm-up, then the three evaluations allowed


def _halves(width: int, height: int) -> tuple[FloatArray, FloatArray]:
    left = np.zeros((height, width), np.float32)
    left[:, : width // 2] = 1.0
    return left, 1.0 - left


def test_masks_reach_the_model_resized_to_each_scale() -> None:
    """Style masks become regions at every scale's size, source masks guide each style's targets at its scaled
    size, and tileable selects circular padding for the targets and the loss; a job without masks passes none."""
    left, right = _halves(64, 48)
    source = np.ones((64, 64), np.float32)
    plain = _job(styles=2, scales=2)
    masked = replace(plain, styles=(Style(plain.styles[0].image, 1.0, left, source), Style(plain.styles[1].image,
                     1.0, right)), options=replace(plain.options, tileable=True))  # fmt: skip
    _, _, model = _run(masked)
    sizes = [(h, w) for w, h in scale_sizes((64, 48), 2)]
    assert [r.guides.shape[1:] if r is not None else None for r in model.regions] == sizes
    for regions, (height, width) in zip(model.regions, sizes, strict=True):
        assert regions is not None
        np.testing.assert_array_equal(regions.guides[0] + regions.guides[1], np.ones((height, width)))
        assert 0.95 < regions.weights.sum() <= 1.0  # the halves' shares; where they blend, T^2 adds up to less
    assert [g is not None for g in model.guides] == [False, True, False] * 2  # photo, style 0, style 1; per scale
    style_guides = [g for g in model.guides if g is not None]
    assert [g.shape for g in style_guides] == [(45, 45), (64, 64)]  # styles scale with the canvas
    assert all(model.circular)
    _, _, unmasked = _run(plain)
    assert unmasked.regions == [None, None]
    assert all(guide is None for guide in unmasked.guides)
    assert not any(unmasked.circular)


def test_the_content_only_region_comes_back_as_the_photo() -> None:
    """With the stand-in pulling every pixel to 0.25, the content-only region still returns the photo, and the
    evaluator (the pinned one) never sees anything else there; previews are composed the same way."""
    held = np.zeros((48, 64), np.float32)
    held[:, :16] = 1.0
    job = replace(_job(init=Init.NOISE, preview_every=3), content_only=held)
    events, result, model = _run(job)
    assert job.content is not None
    for call in model.evaluators[0].calls[1:]:  # calls[0] is the warm-up, whose values nothing uses
        np.testing.assert_allclose(call[..., :16], job.content[..., :16], atol=1e-6)
    decoded = np.asarray(Image.open(io.BytesIO(result.image)), np.float32).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(decoded[..., :16], job.content[0, :, :, :16], atol=0.5 / 255 + 1e-6)
    assert np.abs(decoded[..., 20:] - job.content[0, :, :, 20:]).mean() > 0.05
    preview = next(e for e in events if isinstance(e, Preview))
    shown = np.asarray(Image.open(io.BytesIO(preview.image)), np.float32).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(shown[..., :16], job.content[0, :, :, :16], atol=0.5 / 255 + 1e-6)


@pytest.mark.parametrize("optimizer", [Optimizer.ADAM, Optimizer.LBFGS])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_loss_stops_the_job_naming_it(optimizer: Optimizer, bad: float) -> None:
    """An evaluator whose loss turns non-finite after two evaluations (what an overflowing weight did): the job ends
    with NonFiniteLoss naming the term, never a Result with NaN losses."""

    @dataclass
    class _Overflowing(_Evaluator):
        def __call__(self, image: npt.NDArray[np.floating]) -> Evaluation:
            good = super().__call__(image)
            if len(self.calls) <= 3:  # the warm-up and two evaluations
                return good
            return Evaluation(bad, good.content, bad, good.tv, np.full_like(good.grad, bad))

    class _Model2(_Model):
        def evaluator(self, shape: tuple[int, int], *args: object, **kwargs: object) -> _Evaluator:  # type: ignore[override]
            self.evaluators.append(_Overflowing(shape))
            return self.evaluators[-1]

    events: list[Event] = []
    with pytest.raises(NonFiniteLoss, match=rf"style {bad}.*lower content_weight, style_weight or tv_weight"):
        pipeline.stylize(_job(optimizer=optimizer, max_evaluations=20), _Model2(), events.append, lambda: False)  # type: ignore[arg-type]
    assert not any(isinstance(event, Result) for event in events)
    assert all(np.isfinite(event.losses.total) for event in events if isinstance(event, Progress))
