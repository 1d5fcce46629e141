"""`nst`: stylize images, describe the server and check its health from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO, get_args

import grpc
from nst.events import Event, Preview, Progress, Queued, Result, ScaleStarted, Started

from ._client import SERVICE_NAME, StyleClient
from ._types import InitName, Style, StyleTransferError, StylizeOptions

DEFAULT_SERVER = "localhost:50051"
_INFO_TIMEOUT_S = 10.0  # info and health are quick questions: do not hang on a dead server without --timeout
_OUTPUT_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
_EPILOG = """\
exit status: 0 done; 1 failed (server unreachable or refused the job, an input file missing or unreadable,
the output not writable); 2 usage error (bad flag, unsupported OUT extension); 130 interrupted (the job is
cancelled on the server). Environment: NST_SERVER (default --server), NST_TOKEN (default bearer token)."""


class _Failure(Exception):
    """An expected failure: its message is the one line the user sees."""


def _number(kind: Callable[[str], Any], low: float, *, strict: bool = False) -> Callable[[str], Any]:
    """An argparse type: ``kind`` parsed and at least ``low`` (above it when ``strict``)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value != value or value < low or (strict and value == low):  # value != value: NaN
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low:g}, got {text}")
        return value

    return parse


def _comma_list(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """An argparse type: comma-separated values, each parsed by ``kind`` (a number must be finite and >= 0)."""

    def parse(text: str) -> list[Any]:
        items = [item.strip() for item in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"expected comma-separated values, got {text!r}")
        return [kind(item) if kind is str else _number(kind, 0)(item) for item in items]

    return parse


def _path_list(optional: bool) -> Callable[[str], list[Path | None]]:
    """An argparse type: comma-separated paths; with ``optional`` an empty entry is None (no file for that one)."""

    def parse(text: str) -> list[Path | None]:
        items = [item.strip() for item in text.split(",")]
        if not optional and not all(items):
            raise argparse.ArgumentTypeError(f"expected comma-separated paths, got {text!r}")
        if not any(items):
            raise argparse.ArgumentTypeError(f"expected at least one path, got {text!r}")
        return [Path(item) if item else None for item in items]

    return parse


def _connection_flags() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--server",
        default=os.environ.get("NST_SERVER", DEFAULT_SERVER),
        metavar="HOST:PORT",
        help=f"server address (default: $NST_SERVER or {DEFAULT_SERVER})",
    )
    group.add_argument("--timeout", type=_number(float, 0, strict=True), metavar="SECONDS", help="deadline of the call")
    group.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --ca-cert)")
    group.add_argument("--ca-cert", type=Path, metavar="PATH", help="PEM root certificates for TLS (implies --tls)")
    group.add_argument("--token-file", type=Path, metavar="PATH", help="bearer token file (default: $NST_TOKEN)")
    return parent


def build_parser() -> argparse.ArgumentParser:
    """nst's commands; a stylize flag left unset leaves the server's default (the proto documents each)."""
    parser = argparse.ArgumentParser(prog="nst", description="Neural style transfer client.", epilog=_EPILOG)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    connection = _connection_flags()
    _add_stylize_command(commands, connection)
    info = commands.add_parser("info", parents=[connection], help="describe the server's models and limits")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=_info)
    health = commands.add_parser("health", parents=[connection], help="print the serving status; exit 0 if SERVING")
    health.add_argument("--service", default=SERVICE_NAME, help='"" for the whole server')
    health.set_defaults(handler=_health)
    return parser


def _add_stylize_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], connection: argparse.ArgumentParser
) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    run = commands.add_parser(
        "stylize", parents=[connection], help="render CONTENT in the style of STYLE", epilog=_EPILOG,
        description="Render CONTENT in the style of STYLE(s); unset flags leave the server's defaults.\n"
        "No STYLE: content reconstruction. --texture: no content, every image is a style (texture synthesis).",
        formatter_class=formatter,
    )  # fmt: skip
    run.add_argument("content", type=Path, metavar="CONTENT", help="content image file (a style with --texture)")
    run.add_argument("styles", type=Path, nargs="*", metavar="STYLE", help="style image file(s); none: reconstruction")
    run.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="output: .png, .jpg or .webp")
    run.add_argument("--size", dest="max_side_px", type=_number(int, 1), metavar="PX", help="longest output side in px")
    _add_optimisation_flags(run)
    _add_art_flags(run.add_argument_group("art direction (unset: the server's default)"))
    _add_spatial_flags(
        run.add_argument_group(
            "spatial control and seamless output (masks: greyscale images, white = applies; unset: none)"
        )
    )
    _add_output_flags(run)
    run.set_defaults(handler=_stylize, parser=run)


def _add_optimisation_flags(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--max-evaluations", "--iterations", dest="max_evaluations", type=_number(int, 1), metavar="N",
        help="budget of loss+gradient evaluations (--iterations: the old name, still accepted)",
    )  # fmt: skip
    run.add_argument("--optimizer", choices=("lbfgs", "adam"))
    run.add_argument("--learning-rate", type=_number(float, 0, strict=True), metavar="RATE", help="Adam's step size")
    run.add_argument("--content-weight", type=_number(float, 0), metavar="ALPHA", help="content loss weight")
    run.add_argument("--style-weight", type=_number(float, 0), metavar="BETA", help="style loss weight")
    run.add_argument("--tv-weight", type=_number(float, 0), metavar="GAMMA", help="total variation weight")
    run.add_argument(
        "--init", choices=get_args(InitName),
        help="start image (default: matched, the photo in the styles' colours; noise without a photo or a style)",
    )  # fmt: skip
    run.add_argument("--init-image", type=Path, metavar="PATH", help="start image file for --init image")
    run.add_argument("--seed", type=_number(int, 0), help="seed of --init noise")
    run.add_argument("--lbfgs-history", type=_number(int, 1), metavar="M", help="L-BFGS memory (default: 10)")
    run.add_argument(
        "--min-improvement", type=_number(float, 0), metavar="FRACTION",
        help="stop a scale once the loss falls by less than this fraction over 10 iterations (default: off)",
    )  # fmt: skip


def _add_art_flags(art: argparse._ArgumentGroup) -> None:
    art.add_argument(
        "--texture", action="store_true", help="no content image: CONTENT is a style too (texture synthesis)"
    )
    art.add_argument(
        "--width", dest="width_px", type=_number(int, 1), metavar="PX", help="texture width (default: --size)"
    )
    art.add_argument(
        "--height", dest="height_px", type=_number(int, 1), metavar="PX", help="texture height (default: --size)"
    )
    art.add_argument(
        "--preserve-colour", dest="colour_preservation", choices=("none", "luminance", "histogram"),
        help="keep the content's colours (default: none)",
    )  # fmt: skip
    art.add_argument(
        "--scales", type=_number(int, 1), metavar="N",
        help="coarse-to-fine scales, from the coarsest to the output's size (default: 1); N scales: the first at "
        "1/sqrt(2)^(N-1) of the size, as the proto's options.scales says",
    )  # fmt: skip
    art.add_argument(
        "--coarse-to-fine", action="store_true", default=None,
        help="the server's coarse-to-fine schedule (sizes halving from the output's; --max-evaluations counts "
        "full-size equivalents), not with --scales",
    )  # fmt: skip
    art.add_argument(
        "--coarse-evaluations", "--coarse-iterations", dest="coarse_evaluations", type=_number(int, 1), metavar="N",
        help="evaluation budget of each scale but the last (default: --max-evaluations; --coarse-iterations: the "
        "old name)",
    )  # fmt: skip
    art.add_argument(
        "--content-layers", type=_comma_list(str), metavar="L,...", help="e.g. relu4_2 (default: all of the model's)"
    )
    art.add_argument(
        "--style-layers", type=_comma_list(str), metavar="L,...", help="e.g. relu1_1,relu2_1 (default: all)"
    )
    art.add_argument(
        "--style-layer-weights", type=_comma_list(float), metavar="W,...",
        help="one weight per style layer (default: equal)",
    )  # fmt: skip
    art.add_argument(
        "--blend-weights", dest="blend_weights", type=_comma_list(float), metavar="W,...",
        help="blend weight of each STYLE, in order (default: equal)",
    )  # fmt: skip
    art.add_argument(
        "--style-scale", type=_number(float, 0, strict=True), metavar="S",
        help="size of every style relative to the output (default: 1)",
    )  # fmt: skip


def _add_spatial_flags(spatial: argparse._ArgumentGroup) -> None:
    spatial.add_argument(
        "--style-masks", type=_path_list(optional=False), metavar="PATH,...",
        help="one mask per STYLE, in order, at the output's aspect ratio: where that style applies (soft masks "
        "that add up to 1 blend the styles; at every pixel the masks and --content-only-mask add up to at most 1; "
        "at most 4)",
    )  # fmt: skip
    spatial.add_argument(
        "--source-masks", type=_path_list(optional=True), metavar="PATH,...",
        help="one mask per STYLE, at that style image's aspect ratio: the part of the painting to take the style "
        "from; an empty entry (e.g. ',part.png') takes all of that style",
    )  # fmt: skip
    spatial.add_argument(
        "--content-only-mask", type=Path, metavar="PATH",
        help="at the output's aspect ratio: where no style applies and the photo is kept (e.g. a face)",
    )  # fmt: skip
    spatial.add_argument(
        "--tileable", action="store_true", default=None,
        help="circular padding: the output tiles without a seam (textures, repeating patterns)",
    )  # fmt: skip


def _add_output_flags(run: argparse.ArgumentParser) -> None:
    run.add_argument("--model", metavar="NAME", help="model name (nst info lists them)")
    run.add_argument(
        "--save-every",
        dest="preview_every",
        type=_number(int, 1),
        metavar="N",
        help="write a preview every N iterations as OUT.iterNNNN.EXT",
    )
    run.add_argument(
        "--progress",
        choices=("bar", "json", "none"),
        default="bar" if sys.stderr.isatty() else "none",
        help="bar on stderr (default on a terminal), JSON lines on stdout, or nothing",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (never raises for an expected failure)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except KeyboardInterrupt:
        # The with-blocks have cancelled the call by now: the server stops the job.
        print("nst: interrupted; job cancelled" if args.command == "stylize" else "nst: interrupted", file=sys.stderr)
        return 130
    except StyleTransferError as error:
        return _fail(_explain(error, args))
    except _Failure as failure:
        return _fail(str(failure))
    except BrokenPipeError:  # stdout closed early (`nst ... | head`): nobody is left to tell
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as error:  # a bug: still one line, unless asked for the trace
        if os.environ.get("NST_DEBUG"):
            raise
        return _fail(f"unexpected {type(error).__name__}: {error} (set NST_DEBUG=1 for a traceback)")


def _fail(message: str) -> int:
    print(f"nst: error: {' '.join(message.split())}", file=sys.stderr)
    return 1


def _explain(error: StyleTransferError, args: argparse.Namespace) -> str:
    """One line for a failed call, naming the server where that helps."""
    code, address = error.code, args.server
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"server {address} unavailable: {error.message}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from {address} within the {args.timeout or _INFO_TIMEOUT_S:g}s deadline (--timeout)"
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return f"server refused the job: {error.message}"
    return f"{error.message} ({code.name} from {address})"


def _connect(args: argparse.Namespace) -> StyleClient:
    token = os.environ.get("NST_TOKEN") or None
    try:
        if args.token_file is not None:
            token = args.token_file.read_text().strip()
        roots = args.ca_cert.read_bytes() if args.ca_cert is not None else None
    except OSError as error:
        raise _Failure(f"cannot read {error.filename}: {error.strerror}") from None
    try:
        return StyleClient(args.server, tls=args.tls or roots is not None, root_certificates=roots, token=token)
    except ValueError as error:
        raise _Failure(str(error)) from None


def _stylize(args: argparse.Namespace) -> int:
    out: Path = args.output
    parser: argparse.ArgumentParser = args.parser
    output_format = _OUTPUT_FORMATS.get(out.suffix.lower())
    if output_format is None:
        parser.error(f"OUT must end in {', '.join(_OUTPUT_FORMATS)} (the output format follows it), not {out.name!r}")
    if not out.parent.is_dir():  # fail now, not after the whole job
        raise _Failure(f"cannot write {out}: no directory {out.parent}")
    content: Path | None = None if args.texture else args.content
    style_paths: list[Path] = [args.content, *args.styles] if args.texture else args.styles
    if args.blend_weights is not None and len(args.blend_weights) != len(style_paths):
        args.parser.error(f"--blend-weights: {len(args.blend_weights)} weights for {len(style_paths)} style(s)")
    if (args.init_image is None) != (args.init != "image"):
        args.parser.error("--init image and --init-image PATH go together")
    for flag, given in (("--style-masks", args.style_masks), ("--source-masks", args.source_masks)):
        if given is not None and len(given) != len(style_paths):
            args.parser.error(f"{flag}: {len(given)} masks for {len(style_paths)} style(s); give one per STYLE")
    weights = args.blend_weights or [None] * len(style_paths)
    masks = args.style_masks or [None] * len(style_paths)
    sources = args.source_masks or [None] * len(style_paths)
    styles = [
        Style(path, blend_weight=w, scale=args.style_scale, mask=mask, source_mask=source)
        for path, w, mask, source in zip(style_paths, weights, masks, sources, strict=True)
    ]
    options = options_from_args(args, output_format)
    with _connect(args) as client:
        try:
            call = client.stylize(content, styles, options, timeout_s=args.timeout, model=args.model)
        except OSError as error:
            raise _Failure(f"cannot read {error.filename}: {error.strerror}") from None
        with call, _Reporter(args.progress, out, sys.stdout, sys.stderr) as reporter:
            for event in call:
                reporter.handle(event)
    return 0


def options_from_args(args: argparse.Namespace, output_format: str) -> StylizeOptions:
    """The job's options from the parsed flags: each flag's dest is its option's name; the output format comes from
    OUT's extension. A flag left out is None: the server's default."""
    chosen = {
        field.name: getattr(args, field.name) for field in dataclasses.fields(StylizeOptions) if field.name in args
    }
    return StylizeOptions(**{**chosen, "output_format": output_format})


def preview_path(out: Path, iteration: int) -> Path:
    """Where the preview of ``iteration`` goes: next to OUT, as OUT_STEM.iter0010.EXT."""
    return out.with_name(f"{out.stem}.iter{iteration:04d}{out.suffix}")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same directory, so an interrupted run leaves no half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # os.open with 0o666 lets the umask decide the mode, as for any file the user writes.
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    except OSError as error:
        raise _Failure(f"cannot write {path}: {error.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)  # gone after the rename; left only by a failure or an interrupt


class _Reporter:
    """Shows a job's events (bar, JSON lines or nothing) and writes previews and the result to disk."""

    def __init__(self, mode: str, out: Path, stdout: TextIO, stderr: TextIO) -> None:
        self.mode, self.out, self.stdout, self.stderr = mode, out, stdout, stderr
        self._bar: Any = None

    def __enter__(self) -> _Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()

    def handle(self, event: Event) -> None:
        name = "scale_started" if isinstance(event, ScaleStarted) else type(event).__name__.lower()
        line: dict[str, Any] = {"event": name}
        match event:
            case Queued():
                line |= {"job_id": event.job_id, "position": event.position}
                if self.mode == "bar":
                    print(f"nst: queued, position {event.position}", file=self.stderr)
            case Started():
                line |= dataclasses.asdict(event)
                if self.mode == "bar":
                    self._bar = _progress_bar(event.max_evaluations, self.stderr)
            case ScaleStarted():
                line |= dataclasses.asdict(event)
                if self._bar is not None:
                    # Evaluations count across scales: this scale's budget extends the total from where we are.
                    self._bar.total = self._bar.n + event.max_evaluations
                    if event.scales > 1:
                        self._bar.set_description(f"scale {event.scale}/{event.scales}", refresh=False)
                    self._bar.refresh()
            case Progress():
                line |= {"iteration": event.iteration, "evaluations": event.evaluations}
                line |= dataclasses.asdict(event.losses) | {"elapsed_s": event.elapsed_s}
                if self._bar is not None:
                    self._bar.set_postfix(iteration=event.iteration, loss=f"{event.losses.total:.4g}", refresh=False)
                    self._bar.update(event.evaluations - self._bar.n)
            case Preview():
                path = preview_path(self.out, event.iteration)
                _write_atomic(path, event.image)
                line |= {"iteration": event.iteration, "path": str(path)}
            case Result():
                _write_atomic(self.out, event.image)
                line |= {"path": str(self.out), "format": event.format, "width": event.width, "height": event.height}
                line |= {"iterations": event.iterations, "evaluations": event.evaluations}
                line |= {"full_size_evaluations": event.full_size_evaluations, "stop_reason": event.stop_reason}
                line |= {"losses": dataclasses.asdict(event.losses), "timings": dataclasses.asdict(event.timings)}
                if self._bar is not None:
                    self._bar.close()
                    print(
                        f"nst: wrote {self.out} ({event.width}x{event.height}; stopped: {event.stop_reason})",
                        file=self.stderr,
                    )
        if self.mode == "json":
            print(json.dumps(line), file=self.stdout, flush=True)


def _progress_bar(total: int, stream: TextIO) -> Any:
    from tqdm import tqdm  # only the bar needs it: `--progress json` and `nst info` start faster without

    return tqdm(total=total, unit="eval", desc="stylize", file=stream, dynamic_ncols=True)


def _info(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        info = client.describe(timeout_s=args.timeout or _INFO_TIMEOUT_S)
    if args.json:
        print(json.dumps({"server": args.server, **dataclasses.asdict(info)}, indent=2))
        return 0
    print(f"server {args.server}")
    for index, m in enumerate(info.models):
        print(f"model {m.name}{' (default)' if index == 0 else ''}")
        print(f"  weights        {m.weights} (sha256 {m.weights_sha256[:16]}...)")
        if m.recipe:
            print(f"  generated      {m.recipe}")
        if m.seed is not None:
            print(f"  seed           {m.seed}")
        print(f"  network        VGG19, {m.pooling} pooling, {m.preprocessing} preprocessing, opset {m.opset}")
        print(f"  content layers {', '.join(m.content_layers)}")
        print(f"  style layers   {', '.join(m.style_layers)}")
        print(f"  defaults       content {m.default_content_weight:g}, style {m.default_style_weight:g}, "
              f"tv {m.default_tv_weight:g}")  # fmt: skip
        print(f"  device         {m.device}")
        print(f"  exporter       {m.exporter}")
    li = info.limits
    print(f"limits: {li.max_pixels} pixels, {li.max_evaluations} evaluations, {li.max_styles} styles, "
          f"{li.max_message_bytes} bytes a message, {li.max_concurrent} concurrent, {li.max_queue} queued, "
          f"{li.max_regions} masked styles")  # fmt: skip
    return 0


def _health(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        status = client.health(args.service, timeout_s=args.timeout or _INFO_TIMEOUT_S)
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
