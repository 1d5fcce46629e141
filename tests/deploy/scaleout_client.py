"""The client container of the scale-out test (tests/deploy/scaleout.py): runs inside the image, on the compose network.

One StyleClient on ``dns:///nst:50051`` (one channel, round-robin over every replica the name resolves to), driven
by the host through stdin, reporting JSON lines on stdout:

1. ``spread``: SPREAD short calls one after another -> ``{"phase": "spread", "outcomes": [...]}``.
2. on the line ``long``: LONG calls with a budget far beyond the test's time, at once, each in its own thread ->
   ``{"phase": "long"}`` once every one has had its first event. The host then stops a replica.
3. on the line ``after`` (sent as the stop begins): AFTER short calls one after another, which must all succeed on
   the other replicas; then the long calls still running are cancelled ->
   ``{"phase": "done", "long": [...], "after": [...]}``.

An outcome is ``"OK"`` or ``"CODE: message"``. Every call has a deadline, so none can hang the test.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time

import numpy as np
from nst_client import Result, StyleCall, StyleClient, StyleTransferError
from PIL import Image

TARGET = "dns:///nst:50051"
SPREAD, LONG, AFTER = 9, 3, 6
DEADLINE_S = 240.0


def _png(width: int, height: int, seed: int) -> bytes:
    pixels = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


CONTENT, STYLE = _png(64, 48, 1), _png(48, 48, 2)


def _say(**line: object) -> None:
    print(json.dumps(line), flush=True)


def _call(client: StyleClient, evaluations: int, calls: list[StyleCall] | None = None) -> str:
    try:
        with client.stylize(
            CONTENT, [STYLE], max_side_px=48, max_evaluations=evaluations, timeout_s=DEADLINE_S
        ) as call:
            if calls is not None:
                calls.append(call)
            # To the end of the stream: leaving the `with` block early would cancel the call, and the server
            # could then count a job whose result was already sent as cancelled.
            results = sum(isinstance(event, Result) for event in call)
        return "OK" if results == 1 else f"RESULTS: {results} results in the stream"
    except StyleTransferError as error:
        return f"{error.code.name}: {error.message}"


def main() -> None:
    with StyleClient(TARGET) as client:
        _say(phase="spread", outcomes=[_call(client, 4) for _ in range(SPREAD)])

        assert sys.stdin.readline().strip() == "long"
        outcomes: list[str] = [""] * LONG
        calls: list[StyleCall] = []

        def run(index: int) -> None:
            outcomes[index] = _call(client, 5000, calls)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(LONG)]
        for thread in threads:
            thread.start()
        while len(calls) < LONG:
            time.sleep(0.05)
        _say(phase="long")

        assert sys.stdin.readline().strip() == "after"
        after = [_call(client, 4) for _ in range(AFTER)]
        for call in calls:
            call.cancel()
        for thread in threads:
            thread.join(DEADLINE_S)
        _say(phase="done", long=outcomes, after=after)


if __name__ == "__main__":
    main()
