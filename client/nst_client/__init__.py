"""Client library for the neural style transfer gRPC service (nst.v1).

    from nst_client import StyleClient

    with StyleClient("localhost:50051") as client:
        image = client.stylize_image("photo.jpg", ["starry-night.jpg"], max_side_px=512)
        image.save("styled.png")

It imports neither onnxruntime nor torch: only grpcio, protobuf, numpy and Pillow.
"""

from __future__ import annotations

import logging

from nst.events import (
    Event,
    ImageFormat,
    Losses,
    Optimizer,
    Preview,
    Progress,
    Queued,
    Result,
    ScaleStarted,
    Started,
    StopReason,
    Timings,
)

from ._client import StyleCall, StyleClient
from ._types import ServerInfo, Style, StyleTransferError, StylizeOptions

__all__ = [
    "Event",
    "ImageFormat",
    "Losses",
    "Optimizer",
    "Preview",
    "Progress",
    "Queued",
    "Result",
    "ScaleStarted",
    "ServerInfo",
    "Started",
    "StopReason",
    "Style",
    "StyleCall",
    "StyleClient",
    "StyleTransferError",
    "StylizeOptions",
    "Timings",
]

# A library logs, the application decides where to: without this, Python's last-resort handler would print our
# warnings on stderr of every program that has not configured logging.
logging.getLogger(__name__).addHandler(logging.NullHandler())
