"""Server settings: one frozen value built from the command line, passed everywhere it is needed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Device = Literal["auto", "cpu", "cuda"]
# Where the optimiser's step and state live: "host" (numpy, the image crossing to the device and back each
# evaluation), "device" (step graphs on the loss graph's provider, only scalars crossing), "auto" (per provider,
# whichever measured faster: graphs.AUTO_PLACEMENT).
Placement = Literal["auto", "host", "device"]
# How cuDNN picks each convolution's algorithm, per new input shape (onnxruntime's cudnn_conv_algo_search): exhaustive
# times every algorithm (onnxruntime's default), heuristic asks cuDNN's heuristics, default takes the fixed default.
ConvSearch = Literal["exhaustive", "heuristic", "default"]


@dataclass(frozen=True, slots=True)
class CudaSettings:
    """How onnxruntime's CUDA provider computes, for the loss, tile and step sessions; no effect on the CPU.

    TF32 is off by default, unlike onnxruntime's provider (use_tf32=1): TF32 convolutions and matrix products keep
    10 bits of mantissa, errors of about 1e-4 to 1e-3, above the float32 tolerances the parity check with PyTorch
    holds (gradient 5e-5, losses 2e-5), and L-BFGS's line search compares losses and gradients that would then no
    longer agree to float32 precision. Chosen by that reasoning, not measured: no GPU has been lent yet;
    `bash bench/gpu.sh` measures the parity error, the time per evaluation and the loss L-BFGS reaches with both.
    """

    tf32: bool = False
    # onnxruntime's default. Each new shape is searched again, and every scale of a job is a new shape: the cost is
    # the first (cold) evaluation per shape, which bench/gpu.sh records beside the warm ones for both searches.
    conv_search: ConvSearch = "exhaustive"


@dataclass(frozen=True, slots=True)
class Limits:
    """What the server refuses beyond: each is a `--max-*` flag. Per-job defaults live in ``job.Options``."""

    max_concurrent: int = 1  # jobs computing at once; one job already uses every core of a CPU
    max_queue: int = 8  # jobs waiting for a slot
    max_pixels: int = 16_777_216  # of any input image, checked before decoding (4096 x 4096)
    max_side_px: int = 4096  # longest side of the output; `nst-server` makes it 1024 with --tile-size 0
    max_evaluations: int = 5000  # per job
    max_styles: int = 8  # style images per request
    max_message_bytes: int = 64 * 1024 * 1024  # of a request
    max_jobs_per_caller: int = 0  # running and queued jobs of one caller (its address) together; 0 = no limit


# BENCHMARKS.md, "Large images": one tile's gradient run peaks at 1.59 GB in a fresh process with 256 px tiles (576 px
# with the halo), 1.83 GB at 320 and 2.05 GB at 384 (`python -m bench.tile_memory`); a 2048x1536 job adds about
# 0.6 GB of whole-image arrays and L-BFGS pairs, and reached 2.75 GB with 384 px tiles, over the 2.5 GB it must keep
# to. 256 px costs arithmetic instead: 5.7x the whole image's per pixel at 2048x1536, against 3.8x at 384.
DEFAULT_TILE_PX = 256
MAX_SIDE_TILED_PX = 4096  # default --max-side when tiling is on
MAX_SIDE_WHOLE_PX = 1024  # default --max-side with --tile-size 0: a whole 1024x768 job peaked at 3.4 GB
MIN_TILE_PX = 64


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything `nst-server` can be told; defaults are the documented ones."""

    model_dirs: tuple[Path, ...]
    host: str = "127.0.0.1"  # the container passes 0.0.0.0
    port: int = 50051
    device: Device = "auto"
    threads: int = 0  # onnxruntime intra-op threads; 0 = one per core
    optimizer_placement: Placement = "auto"
    # Capture the device-placed Adam step as CUDA graphs (onnxruntime's enable_cuda_graph), one per scale and buffer
    # parity, in a session of the job's own; CUDA only. See graphs.LossGraphs for what is and is not captured.
    cuda_graphs: bool = False
    cuda: CudaSettings = field(default_factory=CudaSettings)
    limits: Limits = field(default_factory=Limits)
    # Jobs start only while their estimated peaks (memory.peak_bytes) fit, together, in this less what the server
    # holds once its models are loaded; None = memory.default_max_memory (a share of the cgroup limit or of RAM).
    max_memory_bytes: int | None = None
    # Of one response message (a preview or the result), apart from --max-message-bytes, the request's limit. None =
    # what the largest output the server allows (--max-side squared) may take encoded (codec.send_limit), so no
    # result is ever computed that cannot be sent; set lower, jobs whose result could exceed it are refused.
    max_response_bytes: int | None = None
    # Images whose longer side exceeds one tile with its halo (this + 2 x 160 px, TileGraphs.whole_max_side_px) are
    # evaluated exactly in tiles of this size, so memory follows the tile size, not the image's; 0 = whole images
    # only. A multiple of 16, the pooling grid.
    tile_px: int = DEFAULT_TILE_PX
    drain_s: float = 5.0  # after SIGTERM, health answers NOT_SERVING this long before the listener closes
    grace_s: float = 30.0  # then running jobs get this long to finish before they are cancelled
    max_connection_age_s: float = 0.0  # then GOAWAY, so clients re-resolve DNS and find new replicas; 0 = never
    # Connect (JSON and binary), gRPC-Web and the page at / on this port (transport.connect); None = not served,
    # 0 = a free port.
    http_port: int | None = None
    # Origins whose pages may call the HTTP port from a browser (CORS); empty = same-origin only (the page at /).
    http_allowed_origins: tuple[str, ...] = ()
    # A stream whose one message has not been taken by its reader for this long is ended and its job cancelled: a
    # client that stopped reading would otherwise hold a slot, its memory and its buffered events for ever. Long
    # enough for a 50 MB result over a slow link.
    stall_s: float = 300.0
    # A job that waits this long in the queue ends RESOURCE_EXHAUSTED; one that runs this long is stopped and ends
    # DEADLINE_EXCEEDED (a 4096 px job of 300 evaluations would otherwise run for days on a CPU). 0 = no limit.
    max_queue_wait_s: float = 1800.0
    max_job_s: float = 86400.0
    keepalive_s: float = 60.0  # the server pings a connection quiet this long, and drops it if no answer in 20 s
    max_connection_idle_s: float = 900.0  # a connection with no call for this long is closed (GOAWAY); 0 = never
    metrics_port: int | None = None  # Prometheus /metrics; None = not served, 0 = a free port
    metrics_host: str = "127.0.0.1"  # unauthenticated: loopback unless told otherwise (the container says 0.0.0.0)
    tls_cert: Path | None = None  # PEM certificate chain; with tls_key the listener speaks TLS only
    tls_key: Path | None = None  # PEM private key of tls_cert
    # Every call but health must carry `authorization: Bearer <token>`; None = no authentication. Kept out of
    # repr so that logging a config can never leak it.
    token: str | None = field(default=None, repr=False)
