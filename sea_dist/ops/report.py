"""``report.html``: a run's health at a glance, with no plotting dependency.

Inline SVG line charts (loss terms, validation and test metrics per epoch) and the summary's
key figures. Self-contained: it opens from object storage or a laptop without network.
"""
from __future__ import annotations

import html
import math

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
WIDTH, HEIGHT, PAD = 560, 240, 40


def _chart(title: str, epochs: list[int], series: dict[str, list[float]]) -> str:
    values = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    if not epochs or not values:
        return f"<h3>{html.escape(title)}</h3><p>no data</p>"
    lo, hi = min(values), max(values)
    if hi == lo:
        hi, lo = hi + 0.5, lo - 0.5
    e_lo, e_hi = min(epochs), max(epochs)
    span = max(e_hi - e_lo, 1)

    def xy(epoch: int, value: float) -> str:
        x = PAD + (epoch - e_lo) / span * (WIDTH - 2 * PAD)
        y = HEIGHT - PAD - (value - lo) / (hi - lo) * (HEIGHT - 2 * PAD)
        return f"{x:.1f},{y:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{html.escape(title)}">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white" stroke="#ccc"/>',
        f'<text x="{PAD}" y="{PAD - 12}" font-size="11">{hi:.4g}</text>',
        f'<text x="{PAD}" y="{HEIGHT - PAD + 14}" font-size="11">{lo:.4g} (epoch {e_lo})</text>',
        f'<text x="{WIDTH - PAD - 60}" y="{HEIGHT - PAD + 14}" font-size="11">epoch {e_hi}</text>',
    ]
    for index, (name, vs) in enumerate(series.items()):
        color = PALETTE[index % len(PALETTE)]
        points = " ".join(xy(e, v) for e, v in zip(epochs, vs) if v is not None and math.isfinite(v))
        parts.append(
            f'<polyline data-series="{html.escape(name)}" fill="none" stroke="{color}" '
            f'stroke-width="2" points="{points}"/>'
        )
        parts.append(
            f'<text x="{WIDTH - PAD - 110}" y="{PAD + 14 * index}" font-size="11" fill="{color}">'
            f"{html.escape(name)} {vs[-1]:.4g}</text>"
        )
    parts.append("</svg>")
    return f"<h3>{html.escape(title)}</h3>" + "".join(parts)


def render_report(summary: dict, history: list[dict]) -> str:
    epochs = [int(r["epoch"]) for r in history]
    losses = {t: [r["loss"].get(t) for r in history] for t in ("total", "bpr", "club", "align")}
    metric_names = sorted(history[-1]["valid"]) if history else []
    shown = [m for m in metric_names if m.startswith(("recall", "ndcg"))]
    valid = {m: [r["valid"].get(m) for r in history] for m in shown}
    test = {m: [r["test"].get(m) for r in history] for m in shown}
    timing = {
        name: [r.get(name) for r in history]
        for name in ("train_s", "sampling_s", "feature_fetch_s", "model_s", "club_fit_s", "eval_s")
    }
    rows = "".join(
        f"<tr><td>{html.escape(split)}</td>"
        + "".join(f"<td>{summary.get(split, {}).get(m, float('nan')):.4f}</td>" for m in shown)
        + "</tr>"
        for split in ("valid", "test", "popularity_test")
    )
    healthy = all(
        v is not None and math.isfinite(v) for r in history for v in r["loss"].values()
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>sea_dist run report</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 10px;text-align:right}}</style>
</head><body>
<h1>sea_dist run report</h1>
<p>mode <b>{html.escape(str(summary.get("mode")))}</b>, {summary.get("world_size")} worker(s),
dataset {html.escape(str(summary.get("dataset", {}).get("name")))}
{html.escape(str(summary.get("dataset", {}).get("version")))}, best epoch {summary.get("best_epoch")}
of {summary.get("epochs_run")}; losses finite: <b>{"yes" if healthy else "NO"}</b></p>
<table><tr><th>split</th>{"".join(f"<th>{html.escape(m)}</th>" for m in shown)}</tr>{rows}</table>
{_chart("Loss terms (epoch mean)", epochs, losses)}
{_chart("Validation metrics", epochs, valid)}
{_chart("Test metrics", epochs, test)}
{_chart("Seconds per epoch", epochs, timing)}
</body></html>
"""
