"""Calls to the HTTP port as a plain HTTP client makes them: Connect's JSON unary call and its streaming envelope."""

from __future__ import annotations

import http.client
import json
import struct
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from google.protobuf import json_format
from nst.v1 import style_transfer_pb2 as pb

SERVICE = "/nst.v1.StyleTransferService"
END_STREAM = 0x02  # Connect's envelope flag of the last frame: a JSON object with the error, if any


def connection(url: str, timeout_s: float = 300.0) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    assert parts.hostname is not None, url
    assert parts.port is not None, url
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)


def post(url: str, path: str, body: bytes, headers: dict[str, str]) -> http.client.HTTPResponse:
    """A POST whose response is left unread: the caller reads or abandons it."""
    conn = connection(url)
    conn.request("POST", path, body=body, headers=headers)
    return conn.getresponse()


def get(url: str, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    conn = connection(url)
    conn.request(method, path, headers=headers or {})
    return conn.getresponse()


def describe_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """(HTTP status, parsed JSON body) of DescribeModel in Connect's unary JSON, as curl would send it."""
    response = post(url, f"{SERVICE}/DescribeModel", b"{}", {"Content-Type": "application/json", **(headers or {})})
    return response.status, json.loads(response.read())


def envelope(payload: bytes, flags: int = 0) -> bytes:
    """One frame of Connect's streaming envelope: flags byte, big-endian 32-bit length, payload."""
    return struct.pack(">BI", flags, len(payload)) + payload


def frames(response: http.client.HTTPResponse) -> Iterator[tuple[int, bytes]]:
    """(flags, payload) of each frame of a streaming response, read as it arrives."""
    while header := response.read(5):
        flags, length = struct.unpack(">BI", header)
        yield flags, response.read(length)


def stylize_json(url: str, request: pb.StylizeRequest, headers: dict[str, str] | None = None) -> Iterator[Any]:
    """Stylize over Connect streaming JSON (application/connect+json): each event as JSON, then the end-of-stream
    object (``{}`` or ``{"error": {"code": ..., "message": ...}}``) as the last item."""
    body = envelope(json_format.MessageToJson(request, indent=None).encode())
    response = post(url, f"{SERVICE}/Stylize", body, {"Content-Type": "application/connect+json", **(headers or {})})
    assert response.status == 200, (response.status, response.read())
    for flags, payload in frames(response):
        yield json.loads(payload)
        if flags & END_STREAM:
            return
    raise AssertionError("the stream ended without an end-of-stream frame")


def from_json(event: Any) -> pb.StylizeResponse:
    return json_format.ParseDict(event, pb.StylizeResponse())
