"""Turning a load run's raw numbers into a summary, a table, JSON and a one-file HTML report."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def latency_summary(samples_ns: list[int], max_ns: int) -> dict[str, float]:
    values = sorted(samples_ns)
    ms = {
        f"p{label}": percentile(values, q) / 1e6
        for label, q in (("50", 0.5), ("90", 0.9), ("99", 0.99), ("99.9", 0.999))
    }
    ms["max"] = max_ns / 1e6
    return ms


def format_table(rows: list[tuple[str, str]], title: str) -> str:
    width = max(len(name) for name, _ in rows)
    lines = [title, "-" * len(title)]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def _svg_polyline(points: list[tuple[float, float]], color: str) -> str:
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{coords}"/>'


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round values (1, 2 or 5 times a power of ten apart) from `low` (rounded
    down) to the first at or above `high`, for axis labels."""
    if high <= low:
        return [low]
    raw = (high - low) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    ticks = [math.floor(low / step) * step]
    while ticks[-1] < high - step * 1e-9:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def axis_label(value: float) -> str:
    """A tick's text: 250,000 / 1.5 / 0.25, never 2.5e+05."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:g}"


def _svg_chart(
    series: dict[str, list[tuple[float, float]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    log_x: bool = False,
) -> str:
    """A small line chart as inline SVG: no plotting library, opens anywhere."""
    width, height, pad, left = 640, 320, 48, 72
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    xs = [x for points in series.values() for x, _ in points if not log_x or x > 0]
    ys = [y for points in series.values() for _, y in points]
    if not xs or not ys:
        return f"<p>{html.escape(title)}: no data</p>"
    x_lo, x_hi = min(xs), max(xs)
    if log_x:
        x_ticks = [
            10.0**k for k in range(math.floor(math.log10(x_lo)), 1 + math.ceil(math.log10(x_hi)))
        ]
        x_lo, x_hi = x_ticks[0], x_ticks[-1]
    else:
        x_lo = max(0.0, x_lo)  # time from the start: a bucket begun just before it is at 0
        x_ticks = nice_ticks(x_lo, x_hi)
        x_lo, x_hi = x_ticks[0], x_ticks[-1]
    y_ticks = nice_ticks(0.0, max(ys) or 1)
    y_hi = y_ticks[-1]

    def fx(x: float) -> float:
        if log_x:
            lo, hi, value = math.log10(x_lo), math.log10(x_hi), math.log10(max(x, x_lo))
        else:
            lo, hi, value = x_lo, x_hi, max(x, x_lo)
        return left + (value - lo) / ((hi - lo) or 1) * (width - left - pad)

    def fy(y: float) -> float:
        return height - pad - y / y_hi * (height - 2 * pad)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">'
    ]
    parts.append(
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">'
        f"{html.escape(title)}</text>"
    )
    parts.append(
        f'<line x1="{left}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        'stroke="#444"/>'
    )
    parts.append(f'<line x1="{left}" y1="{pad}" x2="{left}" y2="{height - pad}" stroke="#444"/>')
    for xv in x_ticks:
        parts.append(
            f'<text x="{fx(xv):.1f}" y="{height - pad + 14}" text-anchor="middle">'
            f"{axis_label(xv)}</text>"
        )
    for yv in y_ticks:
        parts.append(
            f'<text x="{left - 4}" y="{fy(yv) + 4:.1f}" text-anchor="end">{axis_label(yv)}</text>'
        )
    parts.append(
        f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle">{html.escape(x_label)}</text>'
    )
    parts.append(
        f'<text x="12" y="{height / 2}" transform="rotate(-90 12 {height / 2})" '
        f'text-anchor="middle">{html.escape(y_label)}</text>'
    )
    for i, (name, points) in enumerate(series.items()):
        color = colors[i % len(colors)]
        parts.append(_svg_polyline([(fx(x), fy(y)) for x, y in points], color))
        parts.append(
            f'<text x="{width - pad}" y="{pad + 14 * i}" text-anchor="end" fill="{color}">'
            f"{html.escape(name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def cdf_points(samples_ms: list[float], steps: int = 200) -> list[tuple[float, float]]:
    values = sorted(samples_ms)
    if not values:
        return []
    picks = sorted(
        {min(len(values) - 1, int(i * len(values) / steps)) for i in range(steps)}
        | {len(values) - 1}
    )
    return [(values[i], (i + 1) / len(values)) for i in picks]


def html_report(title: str, summary_rows: list[tuple[str, str]], charts: list[str]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary_rows
    )
    return (
        "<!doctype html><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}th{text-align:left;padding-right:2em}"
        "td{font-family:monospace}svg{display:block;margin:1em 0}</style>"
        f"<h1>{html.escape(title)}</h1><table>{rows}</table>{''.join(charts)}"
    )


def throughput_points(
    buckets: dict[int, int], start_ns: int, bucket_ns: int
) -> list[tuple[float, float]]:
    """Events per second over time, from 100 ms buckets, relative to `start_ns`."""
    if not buckets:
        return []
    first, last = min(buckets), max(buckets)
    scale = 1e9 / bucket_ns
    return [
        ((b * bucket_ns - start_ns) / 1e9, buckets.get(b, 0) * scale)
        for b in range(first, last + 1)
    ]


def chart_latency_cdf(series: dict[str, list[float]]) -> str:
    return _svg_chart(
        {name: cdf_points(values) for name, values in series.items()},
        title="Publish → receive latency (CDF)",
        x_label="milliseconds (log)",
        y_label="fraction of events",
        log_x=True,
    )


def chart_throughput(series: dict[str, list[tuple[float, float]]]) -> str:
    return _svg_chart(
        series, title="Delivered events per second", x_label="seconds", y_label="events/s"
    )


def merge_buckets(results: list[dict[str, Any]]) -> dict[int, int]:
    merged: dict[int, int] = {}
    for result in results:
        for bucket, count in result["buckets"].items():
            merged[int(bucket)] = merged.get(int(bucket), 0) + count
    return merged
