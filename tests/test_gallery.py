"""The README's pictures and docs/gallery/make.sh agree: each picture the script makes is committed, small, and shown
in the README with its exact `nst` command, what made it, and tubingen's attribution where the photo was used."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GALLERY = ROOT / "docs" / "gallery"
RANVGG_WORDS = "made with random ranVGG weights, not ImageNet"
RANDOM_WORDS = "made with `--weights random`, not ImageNet"
# ../shared/images/SOURCES.md: tubingen.jpg is CC BY 3.0 and needs this line wherever a picture made from it is shown.
TUBINGEN_ATTRIBUTION = "Photo: Andreas Praefcke, CC BY 3.0, via Wikimedia Commons"
MAX_TOTAL_BYTES = 1_500_000


def _pictures() -> dict[str, str]:
    """NAME -> the `nst stylize ...` command that ``picture NAME nst stylize ...`` in make.sh runs."""
    script = (GALLERY / "make.sh").read_text().replace("\\\n", " ")
    found = {}
    for line in script.splitlines():
        match = re.match(r"\s*picture (\S+) (nst stylize .*)$", line)
        if match:
            found[match[1]] = " ".join(match[2].split())
    return found


def _cell(readme: str, command: str) -> str:
    """The README table cell (or paragraph line) that quotes ``command``."""
    lines = [line for line in readme.splitlines() if f"`{command}`" in line]
    assert len(lines) == 1, f"{command!r} is quoted {len(lines)} times in README.md, expected once"
    return next(cell for cell in lines[0].split("|") if f"`{command}`" in cell)


def test_every_picture_is_committed_and_shown_with_its_command() -> None:
    """Each picture make.sh makes is in docs/gallery and the README; its caption is its command and what made it."""
    readme = (ROOT / "README.md").read_text()
    pictures = _pictures()
    assert len(pictures) >= 8, pictures
    for name, command in pictures.items():
        shown = f"{name}-2x2" if "--tileable" in command else name  # a tileable texture is shown tiled 2x2
        assert (GALLERY / f"{shown}.png").is_file(), f"{shown}.png: run bash docs/gallery/make.sh {name}"
        assert f"(docs/gallery/{shown}.png)" in readme, f"{shown}.png is not shown in README.md"
        assert f"-o {name}.png" in command
        cell = _cell(readme, command)
        assert (RANDOM_WORDS if "--model random" in command else RANVGG_WORDS) in cell, cell
        if "tubingen.jpg" in command:
            assert TUBINGEN_ATTRIBUTION in cell, cell


def test_nothing_else_is_committed_and_it_is_small() -> None:
    """docs/gallery holds the script's pictures only (a tileable texture also tiled 2x2), under 1.5 MB together."""
    pictures = _pictures()
    made = set(pictures) | {f"{name}-2x2" for name, command in pictures.items() if "--tileable" in command}
    pngs = sorted(GALLERY.glob("*.png"))
    assert {path.stem for path in pngs} == made
    assert sum(path.stat().st_size for path in pngs) < MAX_TOTAL_BYTES
