"""A dependency-free SVG line chart of a card's market value with its FMV band."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from xml.sax.saxutils import escape, quoteattr

from kuya_store.models import PriceSnapshot

__all__ = ["render_price_chart"]

_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 72, 24, 40, 48
_LINE = "#1f6feb"
_BAND = "#1f6feb"
_GRID = "#d0d7de"
_TEXT = "#24292f"


def _money(value: float) -> str:
    if value >= 1000:
        return f"${value:,.0f}"
    return f"${value:,.2f}"


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    step = (high - low) / (count - 1)
    return [low + i * step for i in range(count)]


def render_price_chart(
    snapshots: Sequence[PriceSnapshot],
    *,
    title: str | None = None,
    width: int = 720,
    height: int = 320,
) -> str:
    """An SVG document: market value over time, the ``fmv_low``..``fmv_high`` band, labelled axes.

    Readable with one point and with a thousand; an empty history renders a "no data"
    picture rather than failing.
    """
    width, height = max(width, 240), max(height, 160)
    points = sorted(
        (s for s in snapshots if s.market_value is not None), key=lambda s: s.snapshot_date
    )
    heading = title or (points[0].card_identifier if points else "price history")
    label = quoteattr(f"Price history: {heading}")
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label={label} '
        f'font-family="system-ui, sans-serif" font-size="12" data-points="{len(points)}">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{_MARGIN_LEFT}" y="24" font-size="15" font-weight="600" fill="{_TEXT}">'
        f"{escape(heading)}</text>",
    ]
    plot_w = width - _MARGIN_LEFT - _MARGIN_RIGHT
    plot_h = height - _MARGIN_TOP - _MARGIN_BOTTOM
    if not points:
        parts.append(
            f'<rect x="{_MARGIN_LEFT}" y="{_MARGIN_TOP}" width="{plot_w}" height="{plot_h}" '
            f'fill="#f6f8fa" stroke="{_GRID}"/>'
            f'<text class="no-data" x="{_MARGIN_LEFT + plot_w / 2:.1f}" '
            f'y="{_MARGIN_TOP + plot_h / 2:.1f}" text-anchor="middle" fill="#57606a" '
            f'font-size="14">No price data yet</text></svg>'
        )
        return "".join(parts)

    def value(amount: Decimal | None) -> float | None:
        return float(amount) if amount is not None else None

    values = [
        v
        for s in points
        for v in (value(s.market_value), value(s.fmv_low), value(s.fmv_high))
        if v is not None
    ]
    low, high = min(values), max(values)
    pad = (high - low) * 0.08 or max(high * 0.1, 1.0)
    low, high = max(low - pad, 0.0), high + pad
    first, last = points[0].snapshot_date, points[-1].snapshot_date
    span = max((last - first).days, 0)

    def x(day: date) -> float:
        if span == 0:
            return _MARGIN_LEFT + plot_w / 2
        return _MARGIN_LEFT + plot_w * (day - first).days / span

    def y(amount: float) -> float:
        return _MARGIN_TOP + plot_h * (1 - (amount - low) / (high - low))

    # Axes and horizontal grid with price labels.
    for tick in _ticks(low, high):
        ty = y(tick)
        parts.append(
            f'<line x1="{_MARGIN_LEFT}" y1="{ty:.1f}" x2="{width - _MARGIN_RIGHT}" y2="{ty:.1f}" '
            f'stroke="{_GRID}" stroke-width="1"/>'
            f'<text class="y-label" x="{_MARGIN_LEFT - 8}" y="{ty + 4:.1f}" text-anchor="end" '
            f'fill="{_TEXT}">{_money(tick)}</text>'
        )
    # Date labels: at most six, always the first and the last.
    label_days = (
        [first]
        if span == 0
        else sorted(
            {
                first,
                last,
                *(date.fromordinal(first.toordinal() + round(span * i / 5)) for i in range(1, 5)),
            }
        )
    )
    baseline = _MARGIN_TOP + plot_h
    for day in label_days:
        parts.append(
            f'<text class="x-label" x="{x(day):.1f}" y="{baseline + 18:.1f}" text-anchor="middle" '
            f'fill="{_TEXT}">{day.isoformat()}</text>'
        )
    parts.append(
        f'<line x1="{_MARGIN_LEFT}" y1="{baseline}" x2="{width - _MARGIN_RIGHT}" y2="{baseline}" '
        f'stroke="{_TEXT}"/><line x1="{_MARGIN_LEFT}" y1="{_MARGIN_TOP}" x2="{_MARGIN_LEFT}" '
        f'y2="{baseline}" stroke="{_TEXT}"/>'
        f'<text x="{_MARGIN_LEFT + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" '
        f'fill="#57606a">date</text>'
        f'<text x="14" y="{_MARGIN_TOP + plot_h / 2:.1f}" text-anchor="middle" fill="#57606a" '
        f'transform="rotate(-90 14 {_MARGIN_TOP + plot_h / 2:.1f})">market value (USD)</text>'
    )
    # The FMV band: fmv_high left to right, then fmv_low back.
    banded = [s for s in points if s.fmv_low is not None and s.fmv_high is not None]
    if banded:
        upper = [f"{x(s.snapshot_date):.1f},{y(float(s.fmv_high or 0)):.1f}" for s in banded]
        lower = [
            f"{x(s.snapshot_date):.1f},{y(float(s.fmv_low or 0)):.1f}" for s in reversed(banded)
        ]
        if len(banded) == 1:  # a single day: a visible bar rather than a zero-width polygon
            cx = x(banded[0].snapshot_date)
            upper = [
                f"{cx - 6:.1f},{upper[0].split(',')[1]}",
                f"{cx + 6:.1f},{upper[0].split(',')[1]}",
            ]
            lower = [
                f"{cx + 6:.1f},{lower[0].split(',')[1]}",
                f"{cx - 6:.1f},{lower[0].split(',')[1]}",
            ]
        parts.append(
            f'<polygon class="fmv-band" points="{" ".join(upper + lower)}" fill="{_BAND}" '
            f'fill-opacity="0.15" stroke="none"/>'
        )
    line = " ".join(f"{x(s.snapshot_date):.1f},{y(float(s.market_value or 0)):.1f}" for s in points)
    parts.append(
        f'<polyline class="market-value" points="{line}" fill="none" stroke="{_LINE}" '
        f'stroke-width="2" stroke-linejoin="round"/>'
    )
    if len(points) <= 60:
        for s in points:
            parts.append(
                f'<circle cx="{x(s.snapshot_date):.1f}" cy="{y(float(s.market_value or 0)):.1f}" '
                f'r="3" fill="{_LINE}"><title>{s.snapshot_date.isoformat()}: '
                f"{_money(float(s.market_value or 0))}</title></circle>"
            )
    parts.append("</svg>")
    return "".join(parts)
