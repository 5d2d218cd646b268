"""Inline SVG charts for the status page (no script, no external files, a few kB).

Presentation attributes (fill, stroke) rather than ``style=``: the page's CSP allows no
inline styles. Every number is formatted here; no caller string reaches the markup
unescaped.
"""

from __future__ import annotations

from html import escape

__all__ = ["history_chart", "BUCKET_S"]

# 1440 per-minute points drawn as 144 ten-minute buckets: a phone screen has no more pixels
# than that across, and the SVG stays ~3 kB.
BUCKET_S = 600
_W, _H, _PAD = 600, 140, 24


def _buckets(history: list[dict], key: str, start: int, n: int) -> list[int]:
    out = [0] * n
    for h in history:
        try:
            i = (int(h.get("t", 0)) - start) // BUCKET_S
            v = int(h.get(key, 0))
        except (TypeError, ValueError):
            continue
        if 0 <= i < n:
            out[i] += max(v, 0)
    return out


def history_chart(history: list[dict], now_s: int, title: str) -> str:
    """Queries and blocked queries over the last 24 h as one SVG with two polylines."""
    n = 86400 // BUCKET_S
    start = now_s - 86400
    q = _buckets(history, "queries", start, n)
    b = _buckets(history, "blocked", start, n)
    top = max(q + b + [1])
    dx = (_W - 2 * _PAD) / (n - 1)

    def points(vals: list[int]) -> str:
        return " ".join(f"{_PAD + i * dx:.1f},{_H - _PAD - v * (_H - 2 * _PAD) / top:.1f}"
                        for i, v in enumerate(vals))

    per_min = top / (BUCKET_S / 60)
    return (f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-label="{escape(title)}" '
            f'xmlns="http://www.w3.org/2000/svg">'
            f'<title>{escape(title)}</title>'
            f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" stroke="#999"/>'
            f'<line x1="{_PAD}" y1="{_PAD}" x2="{_W - _PAD}" y2="{_PAD}" stroke="#ddd"/>'
            f'<polyline fill="none" stroke="#2a6fdb" stroke-width="1.5" points="{points(q)}"/>'
            f'<polyline fill="none" stroke="#c0392b" stroke-width="1.5" points="{points(b)}"/>'
            f'<text x="{_PAD}" y="{_PAD - 6}" font-size="11" fill="#555">'
            f'{per_min:,.0f} queries/min</text>'
            f'<text x="{_PAD}" y="{_H - 6}" font-size="11" fill="#555">24 h ago</text>'
            f'<text x="{_W - _PAD}" y="{_H - 6}" font-size="11" fill="#555" text-anchor="end">now</text>'
            f'<text x="{_W - _PAD}" y="{_PAD - 6}" font-size="11" text-anchor="end">'
            f'<tspan fill="#2a6fdb">queries</tspan> <tspan fill="#c0392b">blocked</tspan></text>'
            f'</svg>')
