"""`nst-server`: flags to ServerConfig, load models, serve until a signal, exit 0."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import get_args

from .app import load_models, serve
from .config import (
    MAX_SIDE_TILED_PX,
    MAX_SIDE_WHOLE_PX,
    MIN_TILE_PX,
    ConvSearch,
    CudaSettings,
    Limits,
    Placement,
    ServerConfig,
)
from .domain.memory import DEFAULT_MEMORY_FRACTION, parse_size
from .runtime.graphs import AUTO_PLACEMENT
from .runtime.sessions import DeviceUnavailableError
from .transport import auth

log = logging.getLogger("nst_server")


# One --max-* flag per Limits field (config.Limits documents each), with what it limits; --max-side, whose default
# depends on --tile-size, has its own.
_LIMIT_FLAGS = {
    "max_concurrent": "jobs computing at once",
    "max_queue": "jobs waiting for a slot",
    "max_pixels": "pixels of any input image",
    "max_evaluations": "per job",
    "max_styles": "style images per request",
    "max_message_bytes": "request size",
    "max_jobs_per_caller": "running and queued jobs of one caller (its address) together; 0 = no limit",
}
_SECONDS_FLAGS = {  # ServerConfig field: (flag, what it times)
    "drain_s": ("--drain", "seconds NOT_SERVING before closing"),
    "grace_s": ("--grace", "seconds for running jobs on shutdown"),
    "max_connection_age_s": (
        "--max-connection-age",
        "seconds before a client connection is asked to reconnect, running calls unaffected; 0 = never",
    ),
    "stall_s": ("--stall-timeout", "seconds one response may wait for its reader before the call ends and its job is "
                "cancelled; 0 = never"),
    "max_queue_wait_s": ("--max-queue-wait", "seconds a job may wait for a slot (then RESOURCE_EXHAUSTED); 0 = no "
                         "limit"),
    "max_job_s": ("--max-job-duration", "seconds a job may run (then stopped, DEADLINE_EXCEEDED); 0 = no limit"),
    "keepalive_s": ("--keepalive", "seconds of silence before the server pings a connection (dropped after 20 s "
                    "without an answer); 0 = never"),
    "max_connection_idle_s": ("--max-connection-idle", "seconds a connection with no call stays open; 0 = never"),
}  # fmt: skip


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _flag(limit: str) -> str:
    """``max_side_px`` -> ``--max-side``: a limit's flag."""
    return "--" + limit.removesuffix("_px").replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """nst-server's flags, one group each; every default is ServerConfig's."""
    defaults = ServerConfig(model_dirs=())
    parser = argparse.ArgumentParser(
        prog="nst-server",
        description="Serve Gatys style transfer over gRPC (and, with --http-port, Connect, gRPC-Web and a page).",
    )
    _add_serving_flags(parser.add_argument_group("serving"), defaults)
    _add_runtime_flags(parser.add_argument_group("runtime (onnxruntime)"), defaults)
    _add_limit_flags(parser.add_argument_group("limits (per server unless said)"), defaults)
    _add_lifecycle_flags(parser.add_argument_group("connections and shutdown"), defaults)
    _add_access_flags(parser.add_argument_group("access (default: plaintext, no authentication)"))
    return parser


def _add_serving_flags(group: argparse._ArgumentGroup, d: ServerConfig) -> None:
    group.add_argument(
        "--model",
        dest="model_dirs",
        type=Path,
        action="append",
        required=True,
        help="model directory from nst-export; repeat to serve several (the first is the default)",
    )
    group.add_argument("--host", default=d.host, help=f"address to bind (default {d.host}; 0.0.0.0 for all)")
    group.add_argument("--port", type=int, default=d.port, help=f"default {d.port}; 0 picks a free port")
    group.add_argument(
        "--http-port",
        type=int,
        default=d.http_port,
        metavar="PORT",
        help="also serve the Connect protocol (JSON and binary) and gRPC-Web, and the page to paint with at "
        "http://HOST:PORT/, on this port (default: not served; 0 picks a free port); same jobs, limits and token",
    )
    group.add_argument(
        "--http-allow-origin",
        dest="http_allowed_origins",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let pages from ORIGIN (scheme://host[:port], or * for any) call the HTTP port (CORS); repeat for "
        "several (default: none, only the page the server itself serves)",
    )
    group.add_argument(
        "--metrics-port",
        type=int,
        default=d.metrics_port,
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: not served; 0 picks a free port)",
    )
    group.add_argument(
        "--metrics-host",
        default=d.metrics_host,
        help=f"address for the metrics, which have no authentication (default {d.metrics_host}, whatever --host is)",
    )


def _add_runtime_flags(group: argparse._ArgumentGroup, d: ServerConfig) -> None:
    group.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default=d.device,
        help="auto: CUDA when onnxruntime-gpu and a GPU are present, else CPU (default)",
    )
    group.add_argument("--threads", type=int, default=d.threads, help="onnxruntime threads per job (0 = all cores)")
    auto = "; ".join(
        f"on {device} " + ", ".join(f"{optimizer} {where}" for optimizer, where in placements.items())
        for device, placements in AUTO_PLACEMENT.items()
    )
    group.add_argument(
        "--optimizer-placement",
        choices=get_args(Placement),
        default=d.optimizer_placement,
        help=f"where the optimiser's step and state live: host (numpy; the image crosses each evaluation), device "
        f"(step graphs on the model's device; only loss scalars cross), or auto: per device, {auto} "
        f"(default {d.optimizer_placement})",
    )
    group.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="CUDA only: replay the device-placed Adam step as captured CUDA graphs (one per scale); the loss graph "
        "(not written yet) and L-BFGS's steps (scalars read each run) are not captured",
    )
    group.add_argument(
        "--cuda-tf32",
        choices=("on", "off"),
        default="on" if d.cuda.tf32 else "off",
        help="CUDA only: let convolutions and matrix products use TF32 (faster; about 1e-3 relative error, above "
        "the parity check's float32 tolerances); default %(default)s, chosen by reasoning until measured",
    )
    group.add_argument(
        "--cuda-conv-search",
        choices=get_args(ConvSearch),
        default=d.cuda.conv_search,
        help="CUDA only: how cuDNN picks each convolution's algorithm for every new image shape (each scale of a "
        "job is one): exhaustive times them all on the first evaluation, heuristic asks cuDNN (default %(default)s)",
    )
    group.add_argument(
        "--tile-size",
        dest="tile_px",
        type=int,
        default=d.tile_px,
        metavar="PX",
        help=f"evaluate images exactly in PX tiles, each with the model's halo (160 px) around it, when their longer "
        f"side exceeds one such tile (PX + 320 px), so memory follows PX, not the image; a multiple of 16 from "
        f"{MIN_TILE_PX}, or 0 for whole images only (default {d.tile_px})",
    )


def _add_limit_flags(group: argparse._ArgumentGroup, d: ServerConfig) -> None:
    for limit, what in _LIMIT_FLAGS.items():
        group.add_argument(
            _flag(limit), type=int, default=getattr(d.limits, limit), help=f"{what} (default %(default)s)"
        )
    group.add_argument(
        "--max-memory",
        dest="max_memory_bytes",
        type=_size,
        default=d.max_memory_bytes,
        metavar="SIZE",
        help="memory for the server, e.g. 6G or 512M: a job starts only when its estimated peak fits beside the "
        "running jobs' (less what the server holds itself), and one that could never fit is refused at once "
        f"(default {DEFAULT_MEMORY_FRACTION * 100:.0f}%% of the cgroup's memory limit, else of physical memory)",
    )
    group.add_argument(
        "--max-response-bytes",
        dest="max_response_bytes",
        type=int,
        default=d.max_response_bytes,
        metavar="N",
        help="largest response message (a preview or the result), apart from --max-message-bytes; a job whose "
        "result could exceed it is refused before it starts (default: what a --max-side square PNG may take)",
    )
    group.add_argument(
        "--max-side",
        dest="max_side_px",
        type=int,
        default=None,
        help=f"longest output side in px (default {MAX_SIDE_TILED_PX}, or {MAX_SIDE_WHOLE_PX} with --tile-size 0)",
    )


def _add_lifecycle_flags(group: argparse._ArgumentGroup, d: ServerConfig) -> None:
    for dest, (flag, what) in _SECONDS_FLAGS.items():
        group.add_argument(flag, dest=dest, type=float, default=getattr(d, dest), help=f"{what} (default %(default)g)")


def _add_access_flags(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--tls-cert", type=Path, metavar="PATH", help="PEM certificate chain: serve TLS only")
    group.add_argument("--tls-key", type=Path, metavar="PATH", help="PEM private key of --tls-cert (both or neither)")
    group.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help=f"require this bearer token (whitespace stripped) on every call but health; "
        f"default ${auth.TOKEN_ENV} when set",
    )


def _usage_problem(config: ServerConfig) -> str | None:
    """What makes these settings unusable, as one line; None when they are fine."""
    for limit in dataclasses.fields(Limits):
        least = 0 if limit.name in ("max_queue", "max_jobs_per_caller") else 1  # a server may refuse to queue at all
        if getattr(config.limits, limit.name) < least:
            return f"{_flag(limit.name)} must be at least {least}"
    if config.max_response_bytes is not None and config.max_response_bytes < 1:
        return "--max-response-bytes must be at least 1"
    if config.tile_px and (config.tile_px < MIN_TILE_PX or config.tile_px % 16):
        return (
            f"--tile-size {config.tile_px}: must be 0 (whole images only) or a multiple of 16 px (the pooling grid) "
            f"of at least {MIN_TILE_PX}"
        )
    if config.cuda_graphs and config.device == "cpu":
        return "--cuda-graphs needs CUDA: it captures GPU work as CUDA graphs, and --device cpu has none"
    if config.http_port is not None and not 0 <= config.http_port <= 65535:
        return f"--http-port {config.http_port}: a TCP port is 0 (a free one) to 65535"
    if config.http_allowed_origins and config.http_port is None:
        return "--http-allow-origin is for the HTTP port: give --http-port too"
    if (config.tls_cert is None) != (config.tls_key is None):
        return "--tls-cert and --tls-key go together: give both (TLS) or neither (plaintext)"
    return None


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> ServerConfig:
    """The settings from parsed flags and the environment (for $NST_TOKEN).

    Raises:
        auth.AccessError: the token is empty or unusable.
        OSError: --token-file cannot be read.
    """
    settings = dict(vars(args))
    token = auth.read_token(settings.pop("token_file"), environ)
    if settings["max_side_px"] is None:
        settings["max_side_px"] = MAX_SIDE_TILED_PX if args.tile_px else MAX_SIDE_WHOLE_PX
    limits = Limits(**{limit.name: settings.pop(limit.name) for limit in dataclasses.fields(Limits)})
    cuda = CudaSettings(tf32=settings.pop("cuda_tf32") == "on", conv_search=settings.pop("cuda_conv_search"))
    return ServerConfig(
        **{
            **settings,
            "model_dirs": tuple(args.model_dirs),
            "http_allowed_origins": tuple(args.http_allowed_origins),
            "limits": limits,
            "cuda": cuda,
            "token": token,
        }
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `nst-server`; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args, os.environ)
    except auth.AccessError as error:
        print(f"nst-server: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"nst-server: error: cannot read --token-file {error.filename}: {error.strerror}", file=sys.stderr)
        return 1
    if problem := _usage_problem(config):
        print(f"nst-server: error: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        models = load_models(config)
    except (OSError, ValueError, DeviceUnavailableError) as error:
        print(f"nst-server: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # onnxruntime's load errors have their own types
        print(f"nst-server: error: cannot load model: {error}", file=sys.stderr)
        return 1
    try:
        asyncio.run(serve(config, models))
    except OSError as error:  # cannot listen, or the TLS files cannot be read or do not match
        message = f"cannot read {error.filename}: {error.strerror}" if error.filename else str(error)
        print(f"nst-server: error: {message}", file=sys.stderr)
        return 1
    except ValueError as error:  # --max-memory below what the loaded models already take
        print(f"nst-server: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
