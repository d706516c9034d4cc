"""Small SVG charts drawn on the server for the stats page: bars and a line, no script, no library.

Labels are escaped and their hidden characters made visible like every other text
(``render.safe_text``); numbers are formatted here. Colours come from the stylesheet
(classes ``bar``, ``bar-alt``, ``line``, ``dot``, ``axis``), so the charts follow the page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup

from orchestrator.serve.render import safe_text

WIDTH = 560
ROW = 22
LABEL_WIDTH = 170
HEIGHT = 180
PAD = 28


@dataclass(frozen=True)
class Bar:
    """One bar: its label, value and an optional second kind (drawn in the other colour)."""

    label: str
    value: float
    alt: bool = False


def _number(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def bars(title: str, items: Sequence[Bar], unit: str = "") -> Markup:
    """A horizontal bar chart; an empty ``items`` gives a short note instead."""
    if not items:
        return Markup('<p class="muted">{}: nothing recorded yet</p>').format(safe_text(title))
    top = max(item.value for item in items) or 1.0
    span = WIDTH - LABEL_WIDTH - 60
    height = ROW * len(items) + 8
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{safe_text(title)}</title>'
    ]
    for i, item in enumerate(items):
        y = 4 + i * ROW
        length = max(1.0, span * item.value / top) if item.value else 0.0
        kind = "bar-alt" if item.alt else "bar"
        parts.append(
            f'<text class="label" x="{LABEL_WIDTH - 6}" y="{y + 14}" text-anchor="end">{safe_text(item.label)}</text>'
            f'<rect class="{kind}" x="{LABEL_WIDTH}" y="{y + 2}" width="{length:.1f}" height="{ROW - 6}"/>'
            f'<text class="value" x="{LABEL_WIDTH + length + 4:.1f}" y="{y + 14}">'
            f"{_number(item.value)}{safe_text(unit)}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def line(title: str, points: Sequence[tuple[str, float]], unit: str = "s") -> Markup:
    """A line through ``points`` (label, value), left to right, with the value at each dot."""
    if not points:
        return Markup('<p class="muted">{}: nothing recorded yet</p>').format(safe_text(title))
    top = max(v for _, v in points) or 1.0
    step = (WIDTH - 2 * PAD) / max(1, len(points) - 1)
    coords = [
        (PAD + i * step if len(points) > 1 else WIDTH / 2, HEIGHT - PAD - (HEIGHT - 2 * PAD) * v / top)
        for i, (_, v) in enumerate(points)
    ]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{safe_text(title)}</title>'
        f'<line class="axis" x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}"/>'
        f'<polyline class="line" fill="none" points="{path}"/>'
    ]
    for (label, value), (x, y) in zip(points, coords, strict=True):
        parts.append(
            f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="3.5"/>'
            f'<text class="value" x="{x:.1f}" y="{y - 8:.1f}" text-anchor="middle">'
            f"{_number(value)}{safe_text(unit)}</text>"
            f'<text class="label" x="{x:.1f}" y="{HEIGHT - PAD + 16}" text-anchor="middle">{safe_text(label)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
