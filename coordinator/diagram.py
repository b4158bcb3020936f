"""The state diagram, rendered from the ``states`` table (never drawn by hand)."""

from __future__ import annotations

from pathlib import Path

from states import TERMINAL, TRANSITIONS, State

DEFAULT_PATH = Path("diagrams") / "state_machine.md"


def render_mermaid() -> str:
    """A Markdown page holding a Mermaid ``stateDiagram-v2`` of every transition."""
    lines = [
        "# Startup state machine",
        "",
        "Generated from `states/_table.py` by `prefill-startup diagram`; do not edit by hand.",
        "",
        "```mermaid",
        "stateDiagram-v2",
        f"    [*] --> {State.INIT.value}",
    ]
    for t in TRANSITIONS:
        label = t.trigger.value + (f" [{t.guard}]" if t.guard else "")
        lines.append(f"    {t.source.value} --> {t.dest.value}: {label}")
    lines += [f"    {s.value} --> [*]" for s in State if s in TERMINAL]
    lines += ["```", ""]
    return "\n".join(lines)


def write(path: Path = DEFAULT_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_mermaid(), encoding="utf-8")
    return path
