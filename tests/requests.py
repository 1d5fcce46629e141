"""Stylize requests as the server tests make them, and the streams they get back."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
from nst.v1 import style_transfer_pb2 as pb
from nst.v1 import style_transfer_pb2_grpc as pb_grpc
from PIL import Image

from tests.images import encoded, png

# The cheapest job worth the name: 64 px, two evaluations of Adam (one per iteration, no line search).
CHEAP = {"max_side_px": 64, "max_evaluations": 2, "optimizer": pb.OPTIMIZER_ADAM}


def stylize_request(width: int = 64, height: int = 48, **options: object) -> pb.StylizeRequest:
    """A valid request at (by default) the content's own small size, so that tests stay fast."""
    options.setdefault("max_side_px", max(width, height))
    return pb.StylizeRequest(
        content_image=png(width, height, seed=1),
        style_images=[pb.StyleImage(image=png(64, 64, seed=2))],
        options=pb.StylizeOptions(**options),
    )


def events(responses: Iterator[pb.StylizeResponse]) -> list[tuple[str, object]]:
    """(kind, message) of every event of a stream, read to its end."""
    return [(r.WhichOneof("event"), getattr(r, r.WhichOneof("event"))) for r in responses]


def assert_serves(stub: pb_grpc.StyleTransferServiceStub, timeout_s: float = 60.0) -> None:
    """A cheap good job runs to its result: whatever came before left the server able to work."""
    kinds = [kind for kind, _ in events(stub.Stylize(stylize_request(**CHEAP), timeout=timeout_s))]
    assert kinds[-1] == "result", kinds


def status_of(call: Iterator[pb.StylizeResponse]) -> tuple[grpc.StatusCode, str]:
    """Read a Stylize stream to its end: (OK, "") after a result, else the status code and message it ended with."""
    try:
        kinds = [response.WhichOneof("event") for response in call]
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    assert kinds[-1:] == ["result"], f"stream ended OK without a result: {kinds}"
    return grpc.StatusCode.OK, ""


def worst_small_request(styles: int = 8, side: int = 4096) -> pb.StylizeRequest:
    """The issue's 1,639-byte request: solid 64x64 PNGs as content, 8 styles and init image, max_side_px 4096.

    Decoded at its working sizes it is 10 float32 images of 4096x4096, 1,920 MiB.
    """
    image = encoded(Image.fromarray(np.full((64, 64, 3), 128, np.uint8)))
    return pb.StylizeRequest(
        content_image=image,
        style_images=[pb.StyleImage(image=image) for _ in range(styles)],
        options=pb.StylizeOptions(max_side_px=side, init=pb.INIT_IMAGE, init_image=image),
    )
