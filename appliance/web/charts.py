"""The status page's 24-hour chart: one inline SVG, no script, no external files, a few kB.

The numbers come first (:func:`history_series`), the drawing second (:func:`history_chart`),
and the page's "last 24 hours" counters are read from the *same* :class:`Series`: what the
legend and the axis say and what the counters say cannot disagree. The window is exactly the
minutes the shared stats keep (``SharedStats.history``: the current minute and the 1439
before it), cut into ten-minute buckets; the axis is in queries per bucket, as drawn.

Every text (legend, axis labels) is HTML beside the SVG, so it stays readable on a phone
where the drawing is scaled down; the SVG has no text of its own but its title. Presentation
attributes (fill, stroke) rather than ``style=``: the page's CSP allows no inline styles.
Every number is formatted here; no caller string reaches the markup unescaped.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

__all__ = ["history_chart", "history_series", "axis_top", "Series", "BUCKET_S", "WINDOW_S", "N_BUCKETS"]

# 1440 per-minute points drawn as 144 ten-minute buckets: a phone screen has no more pixels
# than that across, and the SVG stays ~3 kB.
BUCKET_S = 600
WINDOW_S = 86400
N_BUCKETS = WINDOW_S // BUCKET_S
_H = 100  # the drawing's height in viewBox units (it is stretched to the CSS box)


@dataclass(frozen=True)
class Series:
    """Queries and blocked queries per bucket over the window [start, end)."""

    start: int  # epoch seconds, the first bucket's start
    end: int  # epoch seconds, exclusive: the end of the current minute
    queries: tuple[int, ...]
    blocked: tuple[int, ...]

    @property
    def total_queries(self) -> int:
        return sum(self.queries)

    @property
    def total_blocked(self) -> int:
        return sum(self.blocked)

    @property
    def peak(self) -> int:
        """The largest bucket (queries or blocked): what the axis must reach."""
        return max(self.queries + self.blocked + (0,))

    @property
    def top(self) -> int:
        return axis_top(self.peak)


_STEPS = (1, 2, 3, 4, 5, 6, 8)


def axis_top(peak: int) -> int:
    """The smallest of 1, 2, 3, 4, 5, 6, 8 × 10^k that is at least ``peak`` (1 for an empty
    chart): the axis labels (top, half, 0) are round numbers and the busiest bucket fills more
    than half of the height."""
    if peak <= 1:
        return 1
    scale = 1
    while True:
        for step in _STEPS:
            if step * scale >= peak:
                return step * scale
        scale *= 10


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return None


def history_series(history: list[dict], now_s: int) -> Series:
    """The minute history (``[{"t": epoch s, "queries": n, "blocked": n}]``) summed into
    N_BUCKETS buckets ending with the current minute; rows outside the window, or malformed,
    are left out (and so counted nowhere)."""
    end = (int(now_s) // 60 + 1) * 60
    start = end - WINDOW_S
    q, b = [0] * N_BUCKETS, [0] * N_BUCKETS
    for h in history:
        if not isinstance(h, dict):
            continue
        t, nq, nb = _int(h.get("t")), _int(h.get("queries", 0)), _int(h.get("blocked", 0))
        if t is None or nq is None or nb is None or not start <= t < end:
            continue
        i = (t - start) // BUCKET_S
        q[i] += max(nq, 0)
        b[i] += max(nb, 0)
    return Series(start, end, tuple(q), tuple(b))


def _points(vals: tuple[int, ...], top: int) -> str:
    return " ".join(f"{i + 0.5:g},{_H - v * _H / top:.2f}" for i, v in enumerate(vals))


def _area(vals: tuple[int, ...], top: int) -> str:
    return f"0.5,{_H} {_points(vals, top)} {len(vals) - 0.5:g},{_H}"


def history_chart(series: Series, title: str) -> str:
    """The series as a figure: legend (totals over the window), a y axis in queries per
    bucket (0, half, top), the SVG, and an x axis (24 h ago, 12 h ago, now)."""
    top = series.top
    q, b = series.total_queries, series.total_blocked
    summary = (f"{title}: {q:,} {'query' if q == 1 else 'queries'}, {b:,} blocked; the busiest "
               f"10 minutes had {series.peak:,}")
    grid = "".join(f'<line x1="0" y1="{y}" x2="{N_BUCKETS}" y2="{y}" stroke="{c}" stroke-width="1" '
                   f'vector-effect="non-scaling-stroke"/>' for y, c in ((0, "#e4e7eb"), (_H / 2, "#e4e7eb"),
                                                                          (_H, "#9aa3ad")))
    svg = (f'<svg class="plot" viewBox="0 0 {N_BUCKETS} {_H}" preserveAspectRatio="none" role="img" '
           f'aria-label="{escape(summary)}" xmlns="http://www.w3.org/2000/svg"><title>{escape(summary)}</title>'
           f'{grid}'
           f'<polygon fill="#2563eb" fill-opacity="0.12" points="{_area(series.queries, top)}"/>'
           f'<polyline fill="none" stroke="#2563eb" stroke-width="2" vector-effect="non-scaling-stroke" '
           f'stroke-linejoin="round" points="{_points(series.queries, top)}"/>'
           f'<polygon fill="#c0392b" fill-opacity="0.15" points="{_area(series.blocked, top)}"/>'
           f'<polyline fill="none" stroke="#c0392b" stroke-width="2" vector-effect="non-scaling-stroke" '
           f'stroke-linejoin="round" points="{_points(series.blocked, top)}"/>'
           '</svg>')
    half = f"{top // 2:,}" if top % 2 == 0 else f"{top / 2:,.1f}"
    return (f'<figure class="chart" id="chart"><figcaption><span class="chart-title">{escape(title)}</span>'
            f'<span class="legend"><span class="key key-q"></span>Queries '
            f'<strong id="chart-queries">{q:,}</strong></span>'
            f'<span class="legend"><span class="key key-b"></span>Blocked '
            f'<strong id="chart-blocked">{b:,}</strong></span></figcaption>'
            f'<div class="chart-body"><div class="y-axis" aria-hidden="true"><span id="chart-top">{top:,}</span>'
            f'<span>{half}</span><span>0</span></div>{svg}<span></span>'
            '<div class="x-axis" aria-hidden="true"><span>24 h ago</span><span>12 h ago</span><span>now</span></div>'
            '</div>'
            f'<p class="chart-note">Queries per 10 minutes; the axis tops at <span id="chart-scale">{top:,}</span>'
            f' (busiest 10 minutes: {series.peak:,}).</p></figure>')
