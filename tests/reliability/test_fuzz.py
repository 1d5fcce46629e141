"""Property-based fuzzing of every Stylize request field (hypothesis) against a real server, on a fixed budget.

Derandomised: CI runs the same examples every time. The server's limits keep every valid example cheap (64 px,
4 evaluations), so the budget is the number of examples, not their size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from nst.v1 import style_transfer_pb2 as pb
from nst.v1 import style_transfer_pb2_grpc as pb_grpc
from nst_server.testing import ServerProcess, start_server

from tests.images import png, png_claiming_size
from tests.reliability.support import report
from tests.requests import assert_serves, status_of

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

MAX_EXAMPLES = 200
# The only endings allowed: a result, or a refusal that names the problem. UNKNOWN or INTERNAL would be a bug.
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1", "relu9_9", "")
IMAGES = {
    "photo": png(48, 40, seed=1),
    "square": png(40, 40, seed=2),
    "tiny": png(8, 8, seed=3),
    "empty": b"",
    "junk": b"\x00\x01 not an image",
    "truncated": png(48, 40, seed=4)[:120],
    "bomb": png_claiming_size(50000, 50000),
}


@pytest.fixture(name="server", scope="module")
def _server(model_dir: Path) -> Iterator[ServerProcess]:
    limits = ("--max-side", "64", "--max-evaluations", "4", "--max-styles", "3")
    server = start_server([model_dir], *limits, "--drain", "0")
    yield server
    assert server.terminate() == 0


@pytest.fixture(name="stub", scope="module")
def _stub(server: ServerProcess) -> Iterator[pb_grpc.StyleTransferServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.StyleTransferServiceStub(channel)


def _counts() -> st.SearchStrategy[int]:
    """uint32 values: mostly small, to land in the valid ranges, sometimes anything at all."""
    return st.one_of(st.integers(0, 80), st.integers(0, 2**32 - 1))


def _reals() -> st.SearchStrategy[float | None]:
    """Unset, an ordinary value, or any double (NaN, infinities, negatives, subnormals)."""
    return st.one_of(st.none(), st.floats(0, 4), st.floats())


def _enums() -> st.SearchStrategy[int]:
    """A known value of any of the enums, or any int32 (proto3 enums are open: unknown values reach the server)."""
    return st.one_of(st.integers(0, 4), st.integers(-(2**31), 2**31 - 1))


def _images() -> st.SearchStrategy[bytes]:
    return st.sampled_from(list(IMAGES.values()))


def _styles() -> st.SearchStrategy[list[pb.StyleImage]]:
    return st.lists(st.builds(pb.StyleImage, image=_images(), blend_weight=_reals(), scale=_reals()), max_size=4)


LAYER_LISTS = st.lists(st.sampled_from(LAYERS), max_size=3)
OPTION_FIELDS: dict[str, st.SearchStrategy[object]] = {
    "max_side_px": _counts(), "max_evaluations": st.integers(0, 6) | _counts(), "optimizer": _enums(),
    "learning_rate": _reals(), "content_weight": _reals(), "style_weight": _reals(), "tv_weight": _reals(),
    "init": _enums(), "seed": st.integers(0, 2**64 - 1), "preview_every": _counts(), "output_format": _enums(),
    "lbfgs_history": _counts(), "colour_preservation": _enums(), "scales": st.integers(0, 3) | _counts(),
    "coarse_evaluations": _counts(), "init_image": st.sampled_from([b"", IMAGES["photo"], IMAGES["junk"]]),
    "content_layers": LAYER_LISTS, "style_layers": LAYER_LISTS,
    "style_layer_weights": st.lists(st.floats(0, 4) | st.floats(), max_size=6), "width_px": _counts(),
    "height_px": _counts(),
}  # fmt: skip
REQUEST_FIELDS: dict[str, st.SearchStrategy[object]] = {
    "content_image": _images(),
    "style_images": _styles(),
    "model": st.sampled_from(["", "random-max", "picasso", "\x00"]),
}


def _request(fields: dict[str, object]) -> pb.StylizeRequest:
    """A cheap valid request (the server's defaults within its small limits) with ``fields`` replacing its own."""
    request = pb.StylizeRequest(content_image=IMAGES["photo"], style_images=[pb.StyleImage(image=IMAGES["square"])])
    options = {name: value for name, value in fields.items() if name in OPTION_FIELDS}
    request.options.CopyFrom(pb.StylizeOptions(**options))
    for name, value in fields.items():
        if name == "style_images":
            del request.style_images[:]
            request.style_images.extend(value)  # type: ignore[arg-type]
        elif name in REQUEST_FIELDS:
            setattr(request, name, value)
    return request


def _field() -> st.SearchStrategy[tuple[str, object]]:
    fields = OPTION_FIELDS | REQUEST_FIELDS
    return st.sampled_from(sorted(fields)).flatmap(lambda name: fields[name].map(lambda value: (name, value)))


def _requests() -> st.SearchStrategy[pb.StylizeRequest]:
    """Half near-valid (one or two fields fuzzed: the edges of each range), half every field fuzzed at once."""
    near_valid = st.lists(_field(), min_size=1, max_size=2).map(dict)
    everything = st.fixed_dictionaries(OPTION_FIELDS | REQUEST_FIELDS)
    return st.one_of(near_valid, everything).map(_request)


def test_fuzzed_requests_end_in_a_result_or_a_clear_refusal(
    stub: pb_grpc.StyleTransferServiceStub, server: ServerProcess
) -> None:
    """Every request ends in a result or INVALID_ARGUMENT/RESOURCE_EXHAUSTED with a message; never UNKNOWN/INTERNAL."""
    seen: Counter[str] = Counter()

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(request=_requests())
    def check(request: pb.StylizeRequest) -> None:
        code, details = status_of(stub.Stylize(request, timeout=60))
        note(f"{code.name}: {details}")
        seen[code.name] += 1
        assert code in ALLOWED, details
        assert code == grpc.StatusCode.OK or details.strip(), "a refusal without a message"
        assert "Traceback" not in details

    check()
    assert_serves(stub)
    assert "Traceback" not in server.log()
    report("fuzz", {"examples": sum(seen.values()), "statuses": dict(seen), "max_examples": MAX_EXAMPLES})
