"""Metric plots over steps as inline SVG: no plotting library, crisp at any zoom, and the same
markup in a notebook and in the report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from unirl.viz.html import View, esc, read_jsonl, table

# Plotted first when present: the signals people judge a post-training run by.
PREFERRED = ("reward", "reward_std", "exact_accuracy", "accuracy", "format_valid", "kl", "entropy",
             "distinct_fraction", "accepted_fraction", "loss", "grad_norm", "frac_reward_zero_std")
NOT_PLOTTED = ("step", "time", "skipped", "learning_rate")
SMOOTH_FROM = 40  # points; longer series get a running mean over a twentieth of them


def read_metric_rows(source: str | Path | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl (a run directory, the file, or rows already read). A line still
    being written by a running job is skipped rather than failing the view."""
    if isinstance(source, list):
        return source
    path = Path(source)
    return read_jsonl(path / "metrics.jsonl" if path.is_dir() else path)


def plotted_keys(rows: list[dict[str, Any]], limit: int = 12) -> list[str]:
    numeric = [k for r in rows for k, v in r.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_PLOTTED
               and not k.startswith("time/")]
    present = list(dict.fromkeys(numeric))
    return ([k for k in PREFERRED if k in present] + [k for k in present if k not in PREFERRED])[:limit]


def line_plot(steps: list[float], values: list[float], title: str, width: int = 300, height: int = 170) -> str:
    """One series as an SVG polyline with its range and last value; non-finite points are gaps."""
    points = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
    left, right, top, bottom = 46, 10, 22, 24
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="10">',
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff" stroke="#ddd"/>',
           f'<text x="{left}" y="14" font-size="12" font-weight="600">{esc(title)}</text>']
    if points:
        x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
        y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
        if y1 - y0 < 1e-12:
            y0, y1 = y0 - 0.5, y1 + 0.5
        if x1 == x0:
            x0, x1 = x0 - 1, x1 + 1
        inner_w, inner_h = width - left - right, height - top - bottom

        def xy(s: float, v: float) -> str:
            return f"{left + (s - x0) / (x1 - x0) * inner_w:.1f},{top + (y1 - v) / (y1 - y0) * inner_h:.1f}"

        svg += [f'<line x1="{left}" y1="{top + inner_h}" x2="{left + inner_w}" y2="{top + inner_h}" stroke="#999"/>',
                f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + inner_h}" stroke="#999"/>',
                f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{y1:.3g}</text>',
                f'<text x="{left - 4}" y="{top + inner_h}" text-anchor="end">{y0:.3g}</text>',
                f'<text x="{left}" y="{height - 8}">{x0:g}</text>',
                f'<text x="{left + inner_w}" y="{height - 8}" text-anchor="end">step {x1:g}</text>',
                f'<text x="{width - right}" y="14" text-anchor="end" fill="#555">last {points[-1][1]:.4g}</text>']
        if len(points) == 1:
            x, y = xy(*points[0]).split(",")
            svg.append(f'<circle cx="{x}" cy="{y}" r="3" fill="#1f6fb4"/>')
        elif len(points) <= SMOOTH_FROM:
            svg.append(f'<polyline fill="none" stroke="#1f6fb4" stroke-width="1.5" '
                       f'points="{" ".join(xy(s, v) for s, v in points)}"/>')
        else:  # long noisy runs: the raw series faint, its running mean on top
            window = max(2, len(points) // 20)
            values_ = [v for _, v in points]
            mean = [sum(values_[max(0, i - window + 1):i + 1]) / (i + 1 - max(0, i - window + 1))
                    for i in range(len(values_))]
            svg += [f'<polyline fill="none" stroke="#a9c8e6" stroke-width="1" '
                    f'points="{" ".join(xy(s, v) for s, v in points)}"/>',
                    f'<polyline fill="none" stroke="#1f6fb4" stroke-width="1.8" '
                    f'points="{" ".join(xy(s, m) for (s, _), m in zip(points, mean))}"/>']
    else:
        svg.append(f'<text x="{left}" y="{height // 2}" fill="#777">no finite values yet</text>')
    svg.append("</svg>")
    return "".join(svg)


def metric_plots(source: str | Path | list[dict[str, Any]], keys: list[str] | None = None) -> View:
    """Plots of metrics over steps from a run directory, its metrics.jsonl or rows: by default
    reward, accuracy, KL, entropy, diversity and the rest that were logged (up to 12). Metrics
    logged once (a recipe's set-up, such as OSPO's pair counts) are a table instead."""
    rows = read_metric_rows(source)
    keys = plotted_keys(rows) if keys is None else keys
    if not rows or not keys:
        return View('<p class="ur-muted">no metrics logged yet</p>', "metrics")
    plots, once = [], []
    for key in keys:
        series = [(float(r["step"]), float(r[key])) for r in rows
                  if "step" in r and isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        if len(series) == 1:
            once.append([key, series[0][1]])
        else:
            plots.append(line_plot([s for s, _ in series], [v for _, v in series], key))
    table_html = table(["logged once", "value"], once) if once else ""
    return View(f'{table_html}<div class="ur-plots">{"".join(plots)}</div>', "metrics")
