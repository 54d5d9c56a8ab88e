"""The report as data (JSON, ``docs/report-schema.md``), as a terminal table and as Markdown."""

from __future__ import annotations

from typing import Any

from spikelm import __version__
from spikelm.estimators.counters import SpikeStats
from spikelm.report import GENERATOR, SCHEMA_VERSION, Report


def _stats(stats: SpikeStats | None) -> dict[str, Any]:
    if stats is None or not stats.slots:
        return {"slots": 0, "events": 0, "firing_rate": 0.0, "sparsity": 1.0,
                "silent_share": 0.0, "spikes_per_channel": 0.0, "clipped_share": 0.0,
                "steps_used": 0}  # fmt: skip
    return {
        "slots": stats.slots,
        "events": stats.events,
        "firing_rate": stats.firing_rate,
        "sparsity": stats.sparsity,
        "silent_share": stats.silent_share,
        "spikes_per_channel": stats.spikes_per_channel,
        "clipped_share": stats.clipped_share,
        "steps_used": stats.steps_used,
    }


def _work_totals(works) -> dict[str, Any]:
    spiking = [w for w in works if w.spiking]
    dense = [w for w in works if not w.spiking]
    slots = sum(w.tokens * w.in_features for w in spiking)
    return {
        "sops": sum(w.sops for w in spiking),
        "neuron_updates": sum(w.neuron_updates for w in spiking),
        "ann_macs": sum(w.macs for w in works),
        "spiking_layer_macs": sum(w.macs for w in spiking),
        "dense_macs": sum(w.macs for w in dense if not w.estimated),
        "dense_macs_estimated": sum(w.macs for w in dense if w.estimated),
        "spikes_per_synapse": sum(w.events for w in spiking) / slots if slots else 0.0,
    }


def _split(split) -> dict[str, float]:
    return {"compute_pj": split.compute, "memory_pj": split.memory, "total_pj": split.total}


def to_data(report: Report) -> dict[str, Any]:
    """Every figure of the report as plain JSON-ready data."""
    account = report.account
    merged = {w.name: w for w in account.all_works()}
    layers = []
    for name, work in merged.items():
        entry = {
            "name": name,
            "kind": work.kind,
            "in_features": work.in_features,
            "out_features": work.out_features,
            "tokens": work.tokens,
            "macs": work.macs,
            "estimated": work.estimated,
        }
        if work.spiking:
            pooled = [account.stats[p][name] for p in account.stats if name in account.stats[p]]
            stats = pooled[0]
            for extra in pooled[1:]:
                stats = stats.merge(extra)
                stats.tokens = sum(s.tokens for s in pooled)
            entry.update(_stats(stats), sops=work.sops, neuron_updates=work.neuron_updates,
                         steps=work.steps, weight_bits=work.weight_bits)  # fmt: skip
        layers.append(entry)
    pooled = account.pooled()
    phases = {
        phase: {
            "tokens": account.tokens[phase],
            **_stats(account.pooled(phase)),
            **_work_totals(account.works[phase]),
        }  # fmt: skip
        for phase in report.phases
    }
    total = {"tokens": sum(account.tokens.values()), **_stats(pooled),
             **_work_totals(account.all_works())}  # fmt: skip
    energy = []
    for item in report.energy:
        model = item.model
        figures = {}
        for phase, pricing in item.pricings.items():
            figures[phase] = {
                "tokens": pricing.tokens,
                "snn": _split(pricing.snn),
                "snn_dense": _split(pricing.snn_dense),
                "baselines": {key: _split(value) for key, value in pricing.baselines.items()},
                "ratios": pricing.ratios,
                "snn_pj_per_token": pricing.per_token(),
                "baselines_pj_per_token": {k: pricing.per_token(k) for k in pricing.baselines},
                "layers": [
                    {
                        "name": layer.name,
                        "snn": _split(layer.snn),
                        "baselines": {k: _split(v) for k, v in layer.baselines.items()},
                    }
                    for layer in pricing.layers
                ],  # fmt: skip
            }
        energy.append({
            "model": model.name, "title": model.title, "source": model.source,
            "node": model.node, "precision": model.precision, "scope": model.scope,
            "dense_pricing": model.dense_pricing, "constants_pj": model.constants,
            "qnn_bits": item.pricings["total"].qnn_bits, "phases": figures,
            "verdicts": item.verdicts, "notes": list(item.pricings["total"].notes),
        })  # fmt: skip
    histogram = pooled.histogram.tolist() if pooled is not None else []
    return {
        "generator": f"{GENERATOR} {__version__}",
        "schema": SCHEMA_VERSION,
        "source": report.source,
        "meta": report.meta,
        "levels": report.levels,
        "phases": phases,
        "total": total,
        "layers": layers,
        "histogram": {"bins": "|s_int| = 0..63, then 64 and above", "counts": histogram},
        "token_events": account.token_events,
        "energy": energy,
        "sweep": report.sweep,
        "notes": account.notes,
    }


def _pj(value: float) -> str:
    for unit, scale in (("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} pJ"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}x"


def _rows(report: Report) -> tuple[list[list[str]], list[str]]:
    data = to_data(report)
    header = ["layer", "tokens", "fire rate", "spk/ch", "silent", "clamped", "SOPs", "ANN MACs"]
    rows = []
    for layer in data["layers"]:
        if layer["kind"] == "spiking":
            rows.append([layer["name"], str(layer["tokens"]), f"{layer['firing_rate']:.4f}",
                         f"{layer['spikes_per_channel']:.3f}", f"{layer['silent_share']:.3f}",
                         f"{layer['clipped_share']:.3%}", f"{layer['sops']:,}",
                         f"{layer['macs']:,}"])  # fmt: skip
        else:
            label = layer["name"] + (" *" if layer["estimated"] else " (dense)")
            rows.append([label, str(layer["tokens"]), "-", "-", "-", "-", "-",
                         f"{layer['macs']:,}"])  # fmt: skip
    for phase in [*report.phases, "total"]:
        figures = data["phases"][phase] if phase != "total" else data["total"]
        rows.append([f"= {phase}", str(figures["tokens"]), f"{figures['firing_rate']:.4f}",
                     f"{figures['spikes_per_channel']:.3f}", f"{figures['silent_share']:.3f}",
                     f"{figures['clipped_share']:.3%}", f"{figures['sops']:,}",
                     f"{figures['ann_macs']:,}"])  # fmt: skip
    return [header, *rows], data["notes"]


def _energy_rows(report: Report) -> list[list[str]]:
    header = ["model", "phase", "SNN / token", "FP16 ANN", "INT8 ANN", "QNN", "x FP16",
              "x INT8", "x QNN"]  # fmt: skip
    rows = [header]
    for item in report.energy:
        for phase, pricing in item.pricings.items():
            rows.append([item.model.name, phase, _pj(pricing.per_token()),
                         _pj(pricing.per_token("ann_fp16")), _pj(pricing.per_token("ann_int8")),
                         _pj(pricing.per_token("qnn")), _ratio(pricing.ratio("ann_fp16")),
                         _ratio(pricing.ratio("ann_int8")), _ratio(pricing.ratio("qnn"))])  # fmt: skip
    return rows


def _aligned(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )  # fmt: skip
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _model_lines(report: Report) -> list[str]:
    lines = []
    for item in report.energy:
        model = item.model
        constants = ", ".join(f"{k} {v:g} pJ" for k, v in model.constants.items())
        lines.append(f"{model.name}: {model.title} ({model.node}, {model.precision}, "
                     f"{model.scope}); {constants}; source: {model.source}")  # fmt: skip
        lines += [f"  - {sentence}" for sentence in item.verdicts]
    return lines


def to_table(report: Report) -> str:
    """The terminal table: per layer and total, energy per model, verdicts."""
    rows, notes = _rows(report)
    parts = [f"spikelm report of {report.source}", _aligned(rows),
             "* estimated from the state's shapes (attention scores, recurrences)", "",
             _aligned(_energy_rows(report)), "", *_model_lines(report)]  # fmt: skip
    parts += [f"note: {note}" for note in notes]
    return "\n".join(parts) + "\n"


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += [
        "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows[1:]
    ]
    return "\n".join(lines)


def to_markdown(report: Report) -> str:
    rows, notes = _rows(report)
    parts = [f"<!-- {GENERATOR} {__version__} -->", f"# spikelm report of `{report.source}`", "",
             "## Counts", "", _markdown_table(rows), "",
             "`*` estimated from the state's shapes (attention scores, recurrences).", "",
             "## Energy per token", "", _markdown_table(_energy_rows(report)), "",
             "## Models and verdicts", "", *_model_lines(report)]  # fmt: skip
    parts += [f"\nNote: {note}" for note in notes]
    return "\n".join(parts) + "\n"
