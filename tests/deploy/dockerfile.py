"""Just enough of a Dockerfile reader to run what an image would run: stages, their commands and health check."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"

_FROM = re.compile(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", re.IGNORECASE)
_BIND = re.compile(r"--mount=type=bind,source=([^,\s]+)(?:,target=\S+)?(?=\s)")
_HEALTHCHECK = re.compile(r"((?:--\S+\s+)*)CMD\s+(\[.*\])", re.DOTALL)


@dataclass(frozen=True)
class Stage:
    """What a build stage ends with: its runtime settings, as inherited from the stage it is built FROM."""

    name: str
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    user: str = ""
    expose: tuple[str, ...] = ()
    healthcheck: tuple[str, ...] = ()
    healthcheck_options: dict[str, str] = field(default_factory=dict)
    copies: tuple[str, ...] = ()  # COPY sources and RUN bind-mount sources from the build context

    @property
    def command(self) -> list[str]:
        """ENTRYPOINT followed by CMD: the container's process."""
        return [*self.entrypoint, *self.cmd]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    logical, pending = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            logical.append(pending.strip())
        pending = ""
    return [(keyword.upper(), rest.strip()) for keyword, _, rest in (item.partition(" ") for item in logical)]


def stages(path: Path = DOCKERFILE) -> dict[str, Stage]:
    """Every named stage; exec-form (JSON) ENTRYPOINT, CMD and HEALTHCHECK only, as the image must use."""
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, args in instructions(path.read_text()):
        if keyword == "FROM":
            match = _FROM.fullmatch(args)
            assert match, args
            base, name = match.groups()
            parent = found.get(base)
            current = replace(parent, name=name, copies=()) if parent else Stage(name or base)
            found[current.name] = current
            continue
        if current is None:  # ARG before the first FROM
            continue
        if keyword == "ENTRYPOINT":  # Docker resets CMD when a stage sets its ENTRYPOINT
            current = replace(current, entrypoint=tuple(json.loads(args)), cmd=())
        elif keyword == "CMD":
            current = replace(current, cmd=tuple(json.loads(args)))
        elif keyword == "USER":
            current = replace(current, user=args)
        elif keyword == "EXPOSE":
            current = replace(current, expose=current.expose + tuple(args.split()))
        elif keyword == "HEALTHCHECK":
            match = _HEALTHCHECK.fullmatch(args)
            assert match, f"HEALTHCHECK must use exec form: {args}"
            options = dict(option.removeprefix("--").split("=", 1) for option in match.group(1).split())
            current = replace(current, healthcheck=tuple(json.loads(match.group(2))), healthcheck_options=options)
        elif keyword == "COPY" and not args.startswith("--from"):
            current = replace(current, copies=current.copies + tuple(args.split()[:-1]))
        elif keyword == "RUN":  # RUN --mount=type=bind,source=PATH reads PATH from the context, like COPY
            binds = _BIND.findall(args)
            current = replace(current, copies=current.copies + tuple(source for source in binds))
        found[current.name] = current
    return found
