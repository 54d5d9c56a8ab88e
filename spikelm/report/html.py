"""The report as one self-contained HTML page: tables, verdicts and plots embedded as PNG data.

Plots: per-layer firing rate; the |s_int| histogram (as SpikingBrain's Figure 9); the energy
breakdown per model (SNN and ANN baselines, compute and memory stacked); energy per token over
the run (each token's spiking energy in proportion to its spike events, plus the run's dense
energy per token); and, when a sweep is given, perplexity, sparsity and energy over k.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from spikelm import __version__
from spikelm.report import GENERATOR, Report
from spikelm.report.formats import _energy_rows, _rows, to_data


def _png(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float = 9, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def _firing_rates(data: dict[str, Any]) -> str:
    layers = [layer for layer in data["layers"] if layer["kind"] == "spiking"]
    figure, axes = _figure()
    axes.bar(range(len(layers)), [layer["firing_rate"] for layer in layers], color="#3b6ea8")
    axes.set_xticks(
        range(len(layers)), [layer["name"] for layer in layers], rotation=90, fontsize=6
    )
    axes.set_ylabel("firing rate")
    axes.set_title("Firing rate per spiking layer")
    return _png(figure)


def _histogram(data: dict[str, Any]) -> str:
    counts = data["histogram"]["counts"]
    total = sum(counts) or 1
    figure, axes = _figure(7, 3)
    axes.bar(range(len(counts)), [100 * c / total for c in counts], color="#c0504d")
    axes.set_xlabel("|s_int| (last bar: 64 and above)")
    axes.set_ylabel("% of token-channels")
    axes.set_title("Distribution of integer spike counts")
    return _png(figure)


def _breakdown(report: Report) -> str:
    figure, axes = _figure(9, 3.6)
    labels, compute, memory = [], [], []
    for item in report.energy:
        pricing = item.pricings["total"]
        for key, split in [("SNN", pricing.snn), *pricing.baselines.items()]:
            labels.append(f"{item.model.name}\n{key}")
            compute.append(split.compute / max(pricing.tokens, 1))
            memory.append(split.memory / max(pricing.tokens, 1))
    positions = range(len(labels))
    axes.bar(positions, compute, label="compute", color="#4f81bd")
    axes.bar(positions, memory, bottom=compute, label="memory", color="#9bbb59")
    axes.set_xticks(positions, labels, rotation=90, fontsize=6)
    axes.set_yscale("log")
    heights = [c + m for c, m in zip(compute, memory, strict=True) if c + m > 0]
    if heights:
        axes.set_ylim(bottom=min(heights) / 2)
    axes.set_ylabel("pJ per token")
    axes.set_title("Energy per token: SNN against the ANN baselines, per model")
    axes.legend()
    return _png(figure)


def _per_token(report: Report) -> str:
    events = report.account.token_events
    figure, axes = _figure()
    total_events = sum(events)
    for item in report.energy:
        pricing = item.pricings["total"]
        tokens = max(len(events), 1)
        spiking = pricing.snn.total - pricing.snn_dense.total
        dense = pricing.snn_dense.total / tokens
        per = [dense + (spiking * e / total_events if total_events else 0.0) for e in events]
        axes.plot(range(len(per)), per, label=item.model.name)
    prefill = report.account.tokens.get("prefill", 0)
    if 0 < prefill < len(events):
        axes.axvline(prefill - 0.5, color="grey", linestyle="--", label="prefill | decode")
    axes.set_xlabel("token")
    axes.set_ylabel("SNN pJ per token")
    axes.set_yscale("log")
    axes.set_title("Energy per token over the run")
    axes.legend(fontsize=7)
    return _png(figure)


def _sweep(sweep: list[dict[str, float]]) -> str:
    figure, axes = _figure(8, 3.2)
    ks = [row["k"] for row in sweep]
    axes.plot(ks, [row["perplexity"] for row in sweep], "o-", color="#c0504d")
    axes.set_xlabel("k")
    axes.set_ylabel("perplexity", color="#c0504d")
    twin = axes.twinx()
    twin.plot(ks, [row["sparsity"] for row in sweep], "s--", color="#3b6ea8", label="sparsity")
    twin.plot(ks, [row["energy_ratio"] for row in sweep], "^:", color="#9bbb59",
              label="energy / FP16 ANN")  # fmt: skip
    twin.set_ylabel("sparsity, energy ratio")
    twin.legend(fontsize=7)
    axes.set_title("Accuracy, sparsity and energy over k")
    return _png(figure)


def _table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in rows[1:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(report: Report) -> str:
    """The whole report as one HTML document with its plots inlined."""
    data = to_data(report)
    rows, notes = _rows(report)
    plots = [("Firing rate per layer", _firing_rates(data)),
             ("|s_int| histogram", _histogram(data)),
             ("Energy breakdown", _breakdown(report)),
             ("Energy per token", _per_token(report))]  # fmt: skip
    if report.sweep:
        plots.append(("Trade-off over k", _sweep(report.sweep)))
    models = "".join(
        f"<h3>{html.escape(item.model.name)}: {html.escape(item.model.title)}</h3>"
        f"<p>{html.escape(item.model.node)}, {html.escape(item.model.precision)}, "
        f"{html.escape(item.model.scope)}; source: {html.escape(item.model.source)}</p>"
        f"<p>constants: {html.escape(', '.join(f'{k} {v:g} pJ' for k, v in item.model.constants.items()))}</p>"
        "<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in item.verdicts) + "</ul>"
        for item in report.energy
    )
    figures = "".join(
        f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{png}">'
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
        for title, png in plots
    )
    note_html = "".join(f"<p class=note>{html.escape(n)}</p>" for n in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="generator" content="{GENERATOR} {__version__}">
<title>spikelm report: {html.escape(report.source)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 70em; }}
table {{ border-collapse: collapse; font-size: 0.8em; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; }}
.note {{ color: #a33; }}
</style></head><body>
<h1>spikelm report of <code>{html.escape(report.source)}</code></h1>
{note_html}
<h2>Plots</h2>{figures}
<h2>Energy per token</h2>{_table(_energy_rows(report))}
<h2>Models and verdicts</h2>{models}
<h2>Counts per layer</h2>{_table(rows)}
<p>* estimated from the state's shapes (attention scores, recurrences).</p>
</body></html>
"""
