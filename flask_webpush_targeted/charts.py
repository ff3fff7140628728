"""A time series drawn as inline SVG on the server: no JavaScript, no CDN."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from markupsafe import Markup, escape

from .i18n import gettext
from .i18n import lazy_gettext as _l

SERIES = (("sent", "#4062bb"), ("displayed", "#2a9d5c"), ("clicked", "#e07a1f"))
#: the series' names in the legend and the bars' titles
SERIES_WORDS = {"sent": _l("sent"), "displayed": _l("displayed"), "clicked": _l("clicked")}
#: a bucket's unit in a bar's title
UNIT_WORDS = {"minute": _l("per minute"), "hour": _l("per hour"), "day": _l("per day")}
#: the months' short names, January first
MONTHS = (_l("Jan"), _l("Feb"), _l("Mar"), _l("Apr"), _l("May"), _l("Jun"), _l("Jul"),
          _l("Aug"), _l("Sep"), _l("Oct"), _l("Nov"), _l("Dec"))


def readable_time(at: str, since: str | None = None) -> str:
    """A bucket's start as staff read it: "1 Dec 14:00 UTC", or "14:05 UTC" on the same day
    as ``since`` (buckets are UTC ISO strings; anything else is shown as it is)."""
    try:
        moment = datetime.fromisoformat(at)
        same_day = since is not None and datetime.fromisoformat(since).date() == moment.date()
    except ValueError:
        return at
    if same_day:
        return f"{moment:%H:%M} UTC"
    return f"{moment.day} {MONTHS[moment.month - 1]} {moment:%H:%M} UTC"


def series_svg(points: list[dict[str, Any]], width: int = 640, height: int = 180) -> Markup:
    """Grouped bars of sent, displayed and clicked per bucket, with a legend and a title each."""
    if not points:
        return Markup('<p class="webpush-empty">%s</p>') % gettext("Nothing sent yet.")
    pad_left, pad_bottom, pad_top = 36, 22, 16
    plot_w, plot_h = width - pad_left - 8, height - pad_bottom - pad_top
    top = max(max(p[k] for k, _ in SERIES) for p in points) or 1
    title = escape(gettext("Sent, displayed and clicked over time"))
    parts = [f'<svg class="webpush-chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{title}" '
             f'xmlns="http://www.w3.org/2000/svg" width="100%">',
             f'<line x1="{pad_left}" y1="{pad_top + plot_h}" x2="{width - 8}" '
             f'y2="{pad_top + plot_h}" stroke="#999"/>',
             f'<text x="{pad_left - 4}" y="{pad_top + 8}" font-size="10" text-anchor="end">'
             f'{top}</text>',
             f'<text x="{pad_left - 4}" y="{pad_top + plot_h}" font-size="10" '
             f'text-anchor="end">0</text>']
    slot = plot_w / len(points)
    bar = max(min(slot / (len(SERIES) + 1), 24.0), 1.0)
    for i, p in enumerate(points):
        for j, (key, colour) in enumerate(SERIES):
            h = p[key] / top * plot_h
            x = pad_left + i * slot + (slot - bar * len(SERIES)) / 2 + j * bar
            when = readable_time(p["at"])
            unit = UNIT_WORDS.get(p["unit"], p["unit"])
            label = escape(f"{when} ({unit}): {p[key]} {SERIES_WORDS[key]}")
            parts.append(f'<rect x="{x:.1f}" y="{pad_top + plot_h - h:.1f}" width="{bar:.1f}" '
                         f'height="{h:.1f}" fill="{colour}"><title>{label}</title></rect>')
    first = escape(readable_time(points[0]["at"]))
    last = escape(readable_time(points[-1]["at"], since=points[0]["at"]))
    parts.append(f'<text x="{pad_left}" y="{height - 6}" font-size="10">{first}</text>')
    if len(points) > 1:
        parts.append(f'<text x="{width - 8}" y="{height - 6}" font-size="10" '
                     f'text-anchor="end">{last}</text>')
    # The legend ends at the right edge; each entry as wide as its words in the page's
    # language (about 7 px a character at 11 px), so longer words never overlap.
    names = [f"■ {SERIES_WORDS[key]}" for key, _ in SERIES]
    x = width - 8 - sum(7 * len(name) + 16 for name in names)
    for name, (_, colour) in zip(names, SERIES, strict=True):
        parts.append(f'<text x="{x}" y="{pad_top - 4}" font-size="11" '
                     f'fill="{colour}">{escape(name)}</text>')
        x += 7 * len(name) + 16
    parts.append("</svg>")
    # Every interpolated text is escaped above; numbers are formatted by us.
    return Markup("".join(parts))  # noqa: S704
