"""A time series drawn as inline SVG on the server: no JavaScript, no CDN."""

from __future__ import annotations

from typing import Any

from markupsafe import Markup, escape

SERIES = (("sent", "#4062bb"), ("displayed", "#2a9d5c"), ("clicked", "#e07a1f"))


def series_svg(points: list[dict[str, Any]], width: int = 640, height: int = 180) -> Markup:
    """Lines of sent, displayed and clicked per bucket, with a legend and a title per point."""
    if not points:
        return Markup('<p class="webpush-empty">Nothing sent yet.</p>')
    pad_left, pad_bottom, pad_top = 36, 22, 10
    plot_w, plot_h = width - pad_left - 8, height - pad_bottom - pad_top
    top = max(max(p[k] for k, _ in SERIES) for p in points) or 1
    step = plot_w / max(len(points) - 1, 1)

    def xy(i: int, value: int) -> tuple[float, float]:
        return pad_left + i * step, pad_top + plot_h - value / top * plot_h

    parts = [f'<svg class="webpush-chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Sent, displayed and clicked over time" '
             f'xmlns="http://www.w3.org/2000/svg" width="100%">',
             f'<line x1="{pad_left}" y1="{pad_top + plot_h}" x2="{width - 8}" '
             f'y2="{pad_top + plot_h}" stroke="#999"/>',
             f'<text x="{pad_left - 4}" y="{pad_top + 8}" font-size="10" text-anchor="end">'
             f'{top}</text>',
             f'<text x="{pad_left - 4}" y="{pad_top + plot_h}" font-size="10" '
             f'text-anchor="end">0</text>']
    for key, colour in SERIES:
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in
                          (xy(i, p[key]) for i, p in enumerate(points)))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                     f'points="{coords}"/>')
        for i, p in enumerate(points):
            x, y = xy(i, p[key])
            label = escape(f"{p['at']} ({p['unit']}): {p[key]} {key}")
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}">'
                         f'<title>{label}</title></circle>')
    first, last = escape(points[0]["at"]), escape(points[-1]["at"])
    parts.append(f'<text x="{pad_left}" y="{height - 6}" font-size="10">{first}</text>')
    parts.append(f'<text x="{width - 8}" y="{height - 6}" font-size="10" '
                 f'text-anchor="end">{last}</text>')
    for i, (key, colour) in enumerate(SERIES):
        parts.append(f'<text x="{pad_left + 8 + i * 80}" y="{pad_top + 10}" font-size="11" '
                     f'fill="{colour}">■ {key}</text>')
    parts.append("</svg>")
    # Every interpolated text is escaped above; numbers are formatted by us.
    return Markup("".join(parts))  # noqa: S704
