"""bench.schedules --render: BENCHMARKS' lever table comes from the JSON lines, and nothing else in the file moves."""

from __future__ import annotations

import json
from pathlib import Path

from bench.schedules import LEVERS_BEGIN, LEVERS_END, render_levers

ROW = {
    "variant": "one:scales=1", "plans": [[256, 192, 200]], "final_loss": None, "seconds": 158.8,
    "reached_equivalent": 161.0, "loadavg": [2.06, 1.8, 1.0], "side": 256, "target": {"loss": 5.692e-05},
    "loss": "balanced", "pair": "tubingen.jpg + starry_night_google.jpg", "machine": "AMD EPYC (1)",
}  # fmt: skip


def test_render_rewrites_only_the_lever_block(tmp_path: Path) -> None:
    missed = ROW | {"variant": "default", "plans": [[128, 96, 126], [256, 192, 168]], "reached_equivalent": None}
    missed["final_loss"] = 6.071e-05
    lines = tmp_path / "levers.jsonl"
    lines.write_text("".join(json.dumps(row) + "\n" for row in (ROW, missed)))
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"before\n{LEVERS_BEGIN}\nold table\n{LEVERS_END}\nafter\n")
    render_levers([lines], doc)
    text = doc.read_text()
    assert text.startswith(f"before\n{LEVERS_BEGIN}\n| loss |")
    assert text.endswith(f"{LEVERS_END}\nafter\n")
    assert "old table" not in text
    assert "| `one:scales=1` | 256x192 (200) | **161.0** | - | 158.8 | AMD EPYC (1), 2.06 |" in text
    assert "| `default` | 128x96 (126), 256x192 (168) | not reached | 6.071e-05 (5.692e-05) |" in text
