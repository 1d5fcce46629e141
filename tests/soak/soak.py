"""A soak of a real `nst-server`: a long, seeded, mixed stream of jobs, checked at idle checkpoints.

The mix: L-BFGS and Adam at 32-256 px, tiled strips, masked and tileable jobs, previews, cancels, expiring deadlines,
slow and stalled readers, invalid requests (bad fields, bad images, malformed wire bytes) and bursts over the queue.
Every `--every` jobs the driver waits until the server is idle and reads its resident memory, threads and open file
descriptors from /proc. It passes when, after the warm-up:

- the idle anonymous RSS (RssAnon, read after the same reference job each time) grows by at most
  SLOPE_MIB_PER_1000 MiB per 1,000 jobs (least squares over the checkpoints; a slope that adds up to less than
  NOISE_MIB over the jobs measured is noise) and by at most GROWTH_MIB in all;
- threads stay within THREADS_BAND and file descriptors within FDS_BAND of the first checkpoint after warm-up;
- no call ends UNKNOWN or INTERNAL;
- the client's tally of statuses equals the server's `nst_jobs_finished_total` by code, exactly (a call whose
  deadline expired is DEADLINE_EXCEEDED to its caller and CANCELLED to the server: the tally maps one to the other).

`--leak` runs a deliberately leaking server (one output-sized float32 array kept per job): the positive control,
which must fail. Usage (the full form, RELIABILITY.md):

    python -m tests.soak.soak --model DIR --jobs 2000 [--every 100] [--seed 0] [--leak] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import grpc
import numpy as np
from nst.v1 import style_transfer_pb2 as pb
from nst.v1 import style_transfer_pb2_grpc as pb_grpc
from nst_server.testing import ServerProcess, poll_until, server_env
from PIL import Image

from tests.images import encoded, png

SLOPE_MIB_PER_1000 = 4.0
GROWTH_MIB = 64.0
# RssAnon moved by up to 2 MiB between idle checkpoints of a server that does not leak (301 jobs, after its warm-up:
# 526.6, 527.1, 525.8, 526.3, 526.4, 526.2, 526.2 MiB). A slope fails only when what it adds up to over the measured
# span is also beyond this: in a short run, noise alone must not read as a slope of tens of MiB per 1000 jobs.
NOISE_MIB = 4.0
THREADS_BAND = 2
FDS_BAND = 4
SERVER_FLAGS = (
    "--max-concurrent", "1", "--max-queue", "3", "--max-side", "512", "--tile-size", "64", "--max-evaluations", "10",
    "--stall-timeout", "5", "--drain", "0", "--metrics-port", "0",
)  # fmt: skip
DEADLINE_S = 120.0
REFERENCE = pb.StylizeRequest(
    content_image=png(128, 96, seed=1), style_images=[pb.StyleImage(image=png(64, 64, seed=2))],
    options=pb.StylizeOptions(max_side_px=128, max_evaluations=3),
)  # fmt: skip
# The positive control: the real server with pipeline.stylize wrapped to keep one output-sized array per job.
_LEAKING = """
import sys
import numpy as np
from nst_server.domain import pipeline
kept = []
real = pipeline.stylize
def stylize(job, *args, **kwargs):
    kept.append(np.ones((3, job.size[1], job.size[0]), np.float32))
    return real(job, *args, **kwargs)
pipeline.stylize = stylize
from nst_server.__main__ import main
sys.exit(main())
"""
_PLAIN = "import sys\nfrom nst_server.__main__ import main\nsys.exit(main())\n"


# glibc's malloc raises its mmap threshold each time a large block is freed, after which image-sized arrays come from
# the heap, whose free memory is returned only when the top of it is free: the idle RSS then moved by hundreds of MiB
# from one checkpoint to the next with no leak (1135 -> 654 MiB). A fixed threshold keeps large arrays mmapped, so
# that what the process holds at idle is what it keeps, which is what a leak grows.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "2"}


def start(model_dir: Path, leak: bool = False, timeout_s: float = 60.0) -> ServerProcess:
    """The server under soak, as a process on a free port (leaking when asked)."""
    command = [sys.executable, "-c", _LEAKING if leak else _PLAIN, "--port", "0", "--model", str(model_dir)]
    process = subprocess.Popen(
        [*command, *SERVER_FLAGS], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env=server_env(ALLOCATOR_ENV),
    )  # fmt: skip
    server = ServerProcess(process)
    threading.Thread(target=server.drain_log, daemon=True).start()
    poll_until(lambda: server.address or process.poll() is not None, timeout_s, "the server to listen")
    if not server.address:
        raise AssertionError(f"server did not start; log:\n{server.log()}")
    return server


@dataclass(frozen=True)
class Checkpoint:
    jobs: int
    rss_mib: float
    threads: int
    fds: int


@dataclass
class Soak:
    jobs: int = 0
    tally: Counter[str] = field(default_factory=Counter)  # status code names as the callers saw them
    kinds: Counter[str] = field(default_factory=Counter)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    seconds: float = 0.0


def _process(pid: int) -> tuple[float, int, int]:
    """Anonymous resident memory in MiB (RssAnon: what a leak grows; the model files' pages, RssFile, come and go
    with the machine's page cache), threads and open file descriptors of ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = {line.split(":")[0]: line.split(":")[1].split() for line in status if ":" in line}
    return int(fields["RssAnon"][0]) / 1024, int(fields["Threads"][0]), len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _solid(width: int, height: int, value: int) -> bytes:
    return encoded(Image.fromarray(np.full((height, width), value, np.uint8), "L"))


class Driver:
    """One seeded stream of calls; each ``kind`` method makes one (or, for a burst, several) and tallies them."""

    def __init__(self, server: ServerProcess, seed: int) -> None:
        self.server = server
        self.rng = random.Random(seed)
        self.channel = grpc.insecure_channel(server.address)
        self.stub = pb_grpc.StyleTransferServiceStub(self.channel)
        self.soak = Soak()

    # -- requests

    def _request(self, side: int | None = None, **options: object) -> pb.StylizeRequest:
        rng = self.rng
        side = side or rng.randrange(32, 257)
        width, height = side, max(32, round(side * rng.uniform(0.6, 1.0)))
        options.setdefault("max_side_px", side)
        options.setdefault("max_evaluations", rng.randrange(2, 6))
        options.setdefault("optimizer", rng.choice((pb.OPTIMIZER_LBFGS, pb.OPTIMIZER_ADAM)))
        return pb.StylizeRequest(
            content_image=png(width, height, seed=rng.randrange(1000)),
            style_images=[pb.StyleImage(image=png(64, 64, seed=rng.randrange(1000)))],
            options=pb.StylizeOptions(**options),
        )

    # -- ways a call can go

    def _finish(self, call: Iterator[pb.StylizeResponse], pause_s: float = 0.0) -> str:
        try:
            kinds = []
            for response in call:
                kinds.append(response.WhichOneof("event"))
                if pause_s:
                    time.sleep(pause_s)
        except grpc.RpcError as error:
            return error.code().name
        assert kinds[-1:] == ["result"], kinds
        return "OK"

    def plain(self) -> list[str]:
        return [self._finish(self.stub.Stylize(self._request(), timeout=DEADLINE_S))]

    def previews(self) -> list[str]:
        return [self._finish(self.stub.Stylize(self._request(preview_every=1), timeout=DEADLINE_S))]

    def tiled(self) -> list[str]:  # longer than one 64 px tile with its halo (384 px): evaluated in tiles
        request = self._request(400, max_evaluations=1)
        request.content_image = png(400, 48, seed=self.rng.randrange(1000))
        return [self._finish(self.stub.Stylize(request, timeout=DEADLINE_S))]

    def masked(self) -> list[str]:
        request = self._request(64)
        request.content_image = png(64, 64, seed=1)
        left = np.zeros((64, 64), np.uint8)
        left[:, :32] = 255
        request.style_images[0].mask = encoded(Image.fromarray(left, "L"))
        request.style_images.append(pb.StyleImage(image=png(64, 64, seed=3), mask=encoded(Image.fromarray(255 - left))))
        return [self._finish(self.stub.Stylize(request, timeout=DEADLINE_S))]

    def tileable(self) -> list[str]:
        return [self._finish(self.stub.Stylize(self._request(tileable=True), timeout=DEADLINE_S))]

    def cancel(self) -> list[str]:
        call = self.stub.Stylize(self._request(max_evaluations=10, optimizer=pb.OPTIMIZER_LBFGS), timeout=DEADLINE_S)
        for response in call:
            if response.WhichOneof("event") == "progress":
                call.cancel()
                break
        return [self._finish(call)]

    def deadline(self) -> list[str]:  # expires mid-job: 10 L-BFGS evaluations at 192 px take longer
        request = self._request(192, max_evaluations=10, optimizer=pb.OPTIMIZER_LBFGS)
        return [self._finish(self.stub.Stylize(request, timeout=0.3))]

    def slow_reader(self) -> list[str]:
        return [self._finish(self.stub.Stylize(self._request(preview_every=1), timeout=DEADLINE_S), pause_s=0.05)]

    def stalled_reader(self) -> list[str]:  # takes its first event, reads nothing for a while, then leaves
        request = self._request(256, max_evaluations=10, preview_every=1, optimizer=pb.OPTIMIZER_LBFGS)
        call = self.stub.Stylize(request, timeout=DEADLINE_S)
        next(call, None)
        time.sleep(0.3)
        call.cancel()
        return [self._finish(call)]

    def invalid(self) -> list[str]:
        choice = self.rng.randrange(4)
        if choice == 3:  # bytes that are no StylizeRequest at all
            wire = self.channel.unary_stream("/nst.v1.StyleTransferService/Stylize")
            return [self._finish(wire(b"\x0a\x10abc", timeout=DEADLINE_S))]
        request = self._request()
        if choice == 0:
            request.options.style_weight = float("nan")
        elif choice == 1:
            request.content_image = b"\x89PNG\r\n\x1a\n" + bytes(self.rng.randrange(256) for _ in range(64))
        else:
            request.options.content_only_mask = _solid(64, 48, 0)  # all black: selects nothing
        return [self._finish(self.stub.Stylize(request, timeout=DEADLINE_S))]

    def burst(self) -> list[str]:  # more calls at once than a slot and the queue hold
        calls = [self.stub.Stylize(self._request(64, max_evaluations=2), timeout=DEADLINE_S) for _ in range(6)]
        results: list[str] = [""] * len(calls)
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, self._finish(calls[i])))
                   for i in range(len(calls))]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE_S + 10)
        return results

    KINDS: ClassVar[dict[str, float]] = {
        "plain": 30, "previews": 8, "tiled": 2, "masked": 5, "tileable": 5, "cancel": 8, "deadline": 6,
        "slow_reader": 5, "stalled_reader": 2, "invalid": 15, "burst": 3,
    }  # fmt: skip

    def run(self, jobs: int, every: int, on_checkpoint: Callable[[Checkpoint], None] = lambda _: None) -> Soak:
        started = time.monotonic()
        names, weights = list(self.KINDS), list(self.KINDS.values())
        next_checkpoint = every
        while self.soak.jobs < jobs:
            kind = self.rng.choices(names, weights)[0]
            statuses = getattr(self, kind)()
            self.soak.kinds[kind] += 1
            self.soak.tally.update(statuses)
            self.soak.jobs += len(statuses)
            if self.soak.jobs >= next_checkpoint:
                next_checkpoint += every
                self.soak.checkpoints.append(self.checkpoint())
                on_checkpoint(self.soak.checkpoints[-1])
        self.soak.seconds = time.monotonic() - started
        self.channel.close()
        return self.soak

    def checkpoint(self) -> Checkpoint:
        """The server's figures at idle, each time after the same reference job, so that what the allocators hold
        is compared in the same state (the last job of the mix would otherwise decide it)."""
        self.soak.tally[self._finish(self.stub.Stylize(REFERENCE, timeout=DEADLINE_S))] += 1
        self.soak.jobs += 1

        def idle() -> bool:
            samples = self.server.scrape()
            names = ("nst_jobs_running", "nst_jobs_queued", "nst_jobs_held")
            return all(samples[(name, frozenset())] == 0 for name in names)

        poll_until(idle, 120, "the server to be idle")
        # Every call has ended from the server's side too (counted) before anything is measured.
        poll_until(lambda: self.server.outcomes().total() >= self.soak.jobs, 60, "every call to be counted")
        rss, threads, fds = _process(self.server.process.pid)
        return Checkpoint(self.soak.jobs, rss, threads, fds)


def server_tally(server: ServerProcess) -> Counter[str]:
    """``nst_jobs_finished_total`` by status code."""
    counts: Counter[str] = Counter()
    for (name, labels), value in server.scrape().items():
        if name == "nst_jobs_finished_total":
            counts[dict(labels)["code"]] += int(value)
    return counts


def verdict(soak: Soak, server: Counter[str], warmup_jobs: int) -> tuple[dict[str, object], list[str]]:
    """The soak's figures, and what fails the pass criteria (empty: it passes)."""
    after = [point for point in soak.checkpoints if point.jobs >= warmup_jobs]
    problems: list[str] = []
    figures: dict[str, object] = {"jobs": soak.jobs, "minutes": round(soak.seconds / 60, 1), "tally": dict(soak.tally),
                                  "server": dict(server), "kinds": dict(soak.kinds)}  # fmt: skip
    if len(after) < 3:
        return figures, [f"only {len(after)} checkpoints after the warm-up of {warmup_jobs} jobs; need 3"]
    jobs = np.array([point.jobs for point in after], np.float64)
    rss = np.array([point.rss_mib for point in after], np.float64)
    slope = float(np.polyfit(jobs, rss, 1)[0]) * 1000
    growth = float(rss.max() - rss[0])
    threads = [point.threads - after[0].threads for point in after]
    fds = [point.fds - after[0].fds for point in after]
    figures |= {
        "rss_slope_mib_per_1000_jobs": round(slope, 2), "rss_growth_mib": round(growth, 1),
        "rss_mib": [round(point.rss_mib, 1) for point in soak.checkpoints],
        "threads": [point.threads for point in soak.checkpoints], "fds": [point.fds for point in soak.checkpoints],
        "checkpoint_jobs": [point.jobs for point in soak.checkpoints], "warmup_jobs": warmup_jobs,
    }  # fmt: skip
    span = float(jobs[-1] - jobs[0])
    if slope > SLOPE_MIB_PER_1000 and slope * span / 1000 > NOISE_MIB:
        problems.append(
            f"idle RSS slope {slope:.1f} MiB per 1000 jobs > {SLOPE_MIB_PER_1000} ({slope * span / 1000:.1f} MiB "
            f"over the {span:.0f} jobs measured, beyond the {NOISE_MIB:g} MiB of noise)"
        )
    if growth > GROWTH_MIB:
        problems.append(f"idle RSS grew {growth:.1f} MiB after the warm-up > {GROWTH_MIB}")
    if max(map(abs, threads)) > THREADS_BAND:
        problems.append(f"threads moved by {threads} > ±{THREADS_BAND}")
    if max(map(abs, fds)) > FDS_BAND:
        problems.append(f"file descriptors moved by {fds} > ±{FDS_BAND}")
    bad = {code: soak.tally[code] for code in ("UNKNOWN", "INTERNAL") if soak.tally[code]}
    if bad:
        problems.append(f"calls ended {bad}")
    heard: Counter[str] = Counter()
    for code, count in soak.tally.items():
        heard["CANCELLED" if code == "DEADLINE_EXCEEDED" else code] += count
    if heard != server:
        problems.append(f"the callers heard {dict(heard)} but the server counted {dict(server)}")
    return figures, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--every", type=int, default=100, help="jobs between idle checkpoints")
    parser.add_argument("--warmup", type=int, default=None, help="jobs before the baseline (default: a fifth)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--leak", action="store_true", help="the positive control: a deliberately leaking server")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    server = start(args.model, leak=args.leak)
    try:
        soak = Driver(server, args.seed).run(
            args.jobs, args.every, lambda point: print(json.dumps(asdict(point)), flush=True)
        )
        figures, problems = verdict(soak, server_tally(server), args.warmup or args.jobs // 5)
    finally:
        server.terminate()
    figures["problems"] = problems
    text = json.dumps(figures, indent=2, sort_keys=True)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
