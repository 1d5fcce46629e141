"""A structure-aware fuzz: chunk- and segment-aware image mutations, every proto field, and the wire itself.

- The decoder alone (in process, DECODE_EXAMPLES examples): images from a seed corpus per format, mutated by
  tests/fuzz/mutators.py (PNG chunks and JPEG segments with their CRCs and lengths fixed), end as an RGB image or
  InvalidRequest, never another exception (which the servicer would report as INTERNAL).
- A real server (SERVER_EXAMPLES examples): hypothesis over every StylizeRequest field, masks and extreme doubles
  included, with mutated images in every image field; and wire-level mutations of valid requests (bit flips,
  truncation, a wrong wire type, invalid UTF-8). Every call ends OK (with finite losses), INVALID_ARGUMENT or
  RESOURCE_EXHAUSTED with a message; the log has no traceback; the server keeps serving; every call is counted.
- The regression corpus (tests/fuzz/corpus): inputs that once ended INTERNAL or UNKNOWN, replayed every run. With
  $NST_FUZZ_FAILURES set, an input that breaks a property is written there, to be added to the corpus.

Derandomised (no example database), so CI runs the same examples every time; NST_FUZZ_EXAMPLES scales the budget
for a longer run (RELIABILITY.md).
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from nst.v1 import style_transfer_pb2 as pb
from nst.v1 import style_transfer_pb2_grpc as pb_grpc
from nst_server.domain import images
from nst_server.domain.errors import InvalidRequest
from nst_server.testing import ServerProcess, start_server

from tests.fuzz import mutators
from tests.images import png
from tests.reliability.support import report
from tests.requests import assert_serves

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

SCALE = float(os.environ.get("NST_FUZZ_EXAMPLES_SCALE", "1"))
DECODE_EXAMPLES = int(2000 * SCALE)
SERVER_EXAMPLES = int(300 * SCALE)
WIRE_EXAMPLES = int(300 * SCALE)
CORPUS = Path(__file__).parent / "corpus"
SEEDS = mutators.seed_corpus()
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
LIMIT = 4096 * 4096
SETTINGS = {
    "deadline": None, "derandomize": True, "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}  # fmt: skip


def _keep(kind: str, data: bytes) -> None:
    """An input that broke a property, written to $NST_FUZZ_FAILURES (if set) for the regression corpus."""
    if folder := os.environ.get("NST_FUZZ_FAILURES"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{kind}-{hashlib.sha256(data).hexdigest()[:16]}.bin").write_bytes(data)


def _mutated() -> st.SearchStrategy[bytes]:
    """A seed image with one to three structure-aware mutations."""

    def build(name: str, seed: int, rounds: int) -> bytes:
        rng, data = random.Random(seed), SEEDS[name]
        for _ in range(rounds):
            data = mutators.mutate(data, rng)
        return data

    return st.builds(build, st.sampled_from(sorted(SEEDS)), st.integers(0, 2**32 - 1), st.integers(1, 3))


def test_mutated_images_decode_or_are_refused() -> None:
    seen: Counter[str] = Counter()

    @settings(max_examples=DECODE_EXAMPLES, **SETTINGS)  # type: ignore[arg-type]
    @given(data=_mutated())
    def check(data: bytes) -> None:
        try:
            decoded = images.decode(data, "content_image", LIMIT)
            images.probe(data, "content_image", LIMIT)
            assert decoded.mode == "RGB"
            seen["decoded"] += 1
        except InvalidRequest as error:
            seen["refused" if str(error).startswith("content_image: ") else "refused without the field"] += 1
        except BaseException:
            _keep("image", data)
            raise

    check()
    report("fuzz_decode", {"examples": DECODE_EXAMPLES, "outcomes": dict(seen)})
    assert seen["refused without the field"] == 0
    assert seen["decoded"]  # both sides of the decoder were reached
    assert seen["refused"]


@pytest.fixture(name="server", scope="module")
def _server(model_dir: Path) -> Iterator[ServerProcess]:
    limits = ("--max-side", "64", "--max-evaluations", "2", "--max-styles", "3", "--tile-size", "0")
    server = start_server([model_dir], *limits, "--drain", "0")
    yield server
    assert server.terminate() == 0


@pytest.fixture(name="channel", scope="module")
def _channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as channel:
        yield channel


def _ending(responses: Iterator[pb.StylizeResponse]) -> tuple[grpc.StatusCode, str, pb.Result | None]:
    try:
        results = [response.result for response in responses if response.WhichOneof("event") == "result"]
    except grpc.RpcError as error:
        return error.code(), error.details() or "", None
    return grpc.StatusCode.OK, "", results[-1] if results else None


def _check_ending(code: grpc.StatusCode, details: str, result: pb.Result | None) -> None:
    assert code in ALLOWED, details
    if code == grpc.StatusCode.OK:
        assert result is not None, "OK without a result"
        losses = (result.losses.total, result.losses.content, result.losses.style, result.losses.tv)
        assert all(map(math.isfinite, losses)), losses
    else:
        assert details.strip(), "a refusal without a message"
    assert "Traceback" not in details


def _doubles() -> st.SearchStrategy[float | None]:
    """Unset, ordinary, or extreme: NaN, the infinities, the largest and smallest doubles, negatives."""
    extremes = st.sampled_from([0.0, -0.0, 1e-320, 1e-12, 1e12, 1.0000001e12, 1e300, 1.7976931348623157e308])
    return st.one_of(st.none(), st.floats(0, 4), extremes, st.floats())


def _image_field() -> st.SearchStrategy[bytes]:
    return st.one_of(_mutated(), st.sampled_from([png(48, 40, seed=1), png(40, 40, seed=2), b""]))


def _requests() -> st.SearchStrategy[pb.StylizeRequest]:
    style = st.builds(
        pb.StyleImage, image=_image_field(), blend_weight=_doubles(), scale=_doubles(),
        mask=st.sampled_from([b""]) | _image_field(), source_mask=st.sampled_from([b""]) | _image_field(),
    )  # fmt: skip
    counts = st.one_of(st.integers(0, 70), st.integers(0, 2**32 - 1))
    enums = st.one_of(st.integers(0, 4), st.integers(-(2**31), 2**31 - 1))
    options = st.builds(
        pb.StylizeOptions, max_side_px=counts, max_evaluations=st.integers(0, 3) | counts, optimizer=enums,
        learning_rate=_doubles(), content_weight=_doubles(), style_weight=_doubles(), tv_weight=_doubles(),
        init=enums, seed=st.integers(0, 2**64 - 1), preview_every=st.integers(0, 2) | counts, output_format=enums,
        lbfgs_history=counts, colour_preservation=enums, scales=st.integers(0, 3) | counts,
        coarse_evaluations=counts, min_improvement=_doubles(), init_image=st.sampled_from([b""]) | _image_field(),
        content_only_mask=st.sampled_from([b""]) | _image_field(), tileable=st.booleans(),
        style_layer_weights=st.lists(_doubles().filter(lambda value: value is not None), max_size=6),
        width_px=counts, height_px=counts,
    )  # fmt: skip
    everything = st.builds(
        pb.StylizeRequest, content_image=st.sampled_from([b""]) | _image_field(),
        style_images=st.lists(style, max_size=3), options=options,
    )  # fmt: skip
    return st.one_of(everything, _near_valid(options))


def _is_set(message: pb.StylizeOptions, name: str) -> bool:
    try:
        return message.HasField(name)
    except ValueError:  # no presence (a plain proto3 scalar): its value is what it is
        return True


def _near_valid(options: st.SearchStrategy[pb.StylizeOptions]) -> st.SearchStrategy[pb.StylizeRequest]:
    """A cheap valid request with one thing fuzzed: a mutated image in one image field, a pair of masks, or one
    option's field taken from a fuzzed set of options."""

    def build(change: int, image: bytes, fuzzed: pb.StylizeOptions, field: int) -> pb.StylizeRequest:
        request = pb.StylizeRequest(
            content_image=png(48, 48, seed=1), style_images=[pb.StyleImage(image=png(40, 40, seed=2))],
            options=pb.StylizeOptions(max_evaluations=1, optimizer=pb.OPTIMIZER_ADAM),
        )  # fmt: skip
        if change == 0:
            request.content_image = image
        elif change == 1:
            request.style_images[0].image = image
        elif change == 2:  # two masked styles, one mask fuzzed
            request.style_images.append(pb.StyleImage(image=png(40, 40, seed=3), mask=image))
            request.style_images[0].mask = image
        elif change == 3:
            request.options.content_only_mask = image
        else:
            fields = [descriptor.name for descriptor in pb.StylizeOptions.DESCRIPTOR.fields]
            name = fields[field % len(fields)]
            request.options.ClearField(name)
            value = getattr(fuzzed, name)
            if hasattr(value, "extend"):  # a repeated field
                getattr(request.options, name).extend(value)
            elif _is_set(fuzzed, name):
                setattr(request.options, name, value)
        return request

    return st.builds(build, st.integers(0, 4), _image_field(), options, st.integers(0, 100))


def _run_counted(server: ServerProcess, calls: Callable[[], int]) -> int:
    before = server.outcomes()
    made = calls()
    assert server.wait_outcomes(made, since=before).total() == made  # every call counted, none twice
    return made


def test_fuzzed_requests_end_in_a_result_or_a_clear_refusal(server: ServerProcess, channel: grpc.Channel) -> None:
    stub = pb_grpc.StyleTransferServiceStub(channel)
    seen: Counter[str] = Counter()

    def calls() -> int:
        @settings(max_examples=SERVER_EXAMPLES, **SETTINGS)  # type: ignore[arg-type]
        @given(request=_requests())
        def check(request: pb.StylizeRequest) -> None:
            code, details, result = _ending(stub.Stylize(request, timeout=120))
            note(f"{code.name}: {details}")
            seen[code.name] += 1
            try:
                _check_ending(code, details, result)
            except AssertionError:
                _keep("request", request.SerializeToString())
                raise

        check()
        return seen.total()

    _run_counted(server, calls)
    assert_serves(stub)
    assert "Traceback" not in server.log()
    report("fuzz_requests", {"examples": seen.total(), "statuses": dict(seen)})


def test_wire_mutations_end_in_a_result_or_a_clear_refusal(server: ServerProcess, channel: grpc.Channel) -> None:
    valid = pb.StylizeRequest(
        content_image=png(48, 40, seed=1), style_images=[pb.StyleImage(image=png(40, 40, seed=2))],
        options=pb.StylizeOptions(max_evaluations=1, optimizer=pb.OPTIMIZER_ADAM, style_layers=["relu1_1"]),
        model="",
    ).SerializeToString()  # fmt: skip
    wire = channel.unary_stream(
        "/nst.v1.StyleTransferService/Stylize", response_deserializer=pb.StylizeResponse.FromString
    )
    seen: Counter[str] = Counter()

    def calls() -> int:
        @settings(max_examples=WIRE_EXAMPLES, **SETTINGS)  # type: ignore[arg-type]
        @given(seed=st.integers(0, 2**32 - 1), rounds=st.integers(1, 3))
        def check(seed: int, rounds: int) -> None:
            rng, data = random.Random(seed), valid
            for _ in range(rounds):
                data = mutators.mutate_wire(data, rng)
            code, details, result = _ending(wire(data, timeout=120))
            note(f"{code.name}: {details}")
            seen[code.name] += 1
            try:
                _check_ending(code, details, result)
            except AssertionError:
                _keep("wire", data)
                raise

        check()
        return seen.total()

    _run_counted(server, calls)
    assert_serves(pb_grpc.StyleTransferServiceStub(channel))
    assert "Traceback" not in server.log()
    report("fuzz_wire", {"examples": seen.total(), "statuses": dict(seen)})


@pytest.mark.parametrize("path", sorted(CORPUS.iterdir()), ids=lambda path: path.name)
def test_the_regression_corpus(server: ServerProcess, channel: grpc.Channel, path: Path) -> None:
    """Each input that once ended INTERNAL or UNKNOWN: an image (as the content) or raw request bytes."""
    data = path.read_bytes()
    if path.name.startswith("wire-") or path.name.startswith("request-"):
        responses = channel.unary_stream(
            "/nst.v1.StyleTransferService/Stylize", response_deserializer=pb.StylizeResponse.FromString
        )(data, timeout=120)
    else:
        request = pb.StylizeRequest(content_image=data, style_images=[pb.StyleImage(image=png(40, 40, seed=2))])
        responses = pb_grpc.StyleTransferServiceStub(channel).Stylize(request, timeout=120)
    _check_ending(*_ending(responses))
