"""``spikelm eval``: lm-evaluation-harness tasks on a spiking checkpoint and on its baselines.

The baselines are rebuilt from the source model the checkpoint was converted from (the path its
manifest records, or ``source=``): the ANN itself and its W8A8 fake-quant form
(:func:`spikelm.convert.w8a8`, int8 weights in the checkpoint's groups, int8 activations per
token). Before anything runs, the source is held to the checkpoint: every spiking layer's int8
weights must be the source layer's (or fused layers' members') quantized weights, unless outlier
migration (``smooth_alpha``) rescaled them. All three models share the checkpoint's tokenizer.

Each task runs once per model (lm-eval's ``simple_evaluate``, fixed seeds); the spiking model's
firing statistics are kept per task.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikelm.errors import ConfigError, SpikelmError, require_extra
from spikelm.estimators import SpikeStats

TASKS_DIR = Path(__file__).resolve().with_name("tasks")
"""spikelm's own offline tasks (``spikelm_choice``, ``spikelm_text``), always on the task path."""
BASELINES = ("ann", "w8a8")
SPIKING = "spiking"


@dataclass
class Row:
    """One (task, metric) line of the table: each model's score and the spiking model's firing."""

    task: str
    metric: str
    scores: dict[str, float]
    stderr: dict[str, float] = field(default_factory=dict)
    spikes_per_channel: float | None = None
    clamped_share: float | None = None

    @property
    def delta(self) -> float | None:
        """Spiking minus ANN (``None`` without the ANN baseline)."""
        if "ann" not in self.scores:
            return None
        return self.scores[SPIKING] - self.scores["ann"]


@dataclass
class Evaluation:
    """What ``spikelm eval`` measured."""

    checkpoint: str
    source: str | None
    models: list[str]
    tasks: list[str]
    limit: float | None
    num_fewshot: int | None
    backend: str
    rows: list[Row]
    firing: dict[str, SpikeStats]

    def to_data(self) -> dict[str, Any]:
        """A JSON-ready dict (the first key names spikelm as the writer)."""
        return {
            "generator": "spikelm eval",
            "checkpoint": self.checkpoint,
            "source": self.source,
            "models": self.models,
            "tasks": self.tasks,
            "limit": self.limit,
            "num_fewshot": self.num_fewshot,
            "backend": self.backend,
            "rows": [
                {"task": r.task, "metric": r.metric, "scores": r.scores, "stderr": r.stderr,
                 "delta": r.delta, "spikes_per_channel": r.spikes_per_channel,
                 "clamped_share": r.clamped_share}
                for r in self.rows
            ],
            "firing": {
                task: {"spikes_per_channel": f.spikes_per_channel, "firing_rate": f.firing_rate,
                       "silent_share": f.silent_share, "clamped_share": f.clipped_share,
                       "steps_used": f.steps_used, "steps": f.steps, "events": f.events,
                       "token_channels": f.slots}
                for task, f in self.firing.items()
            },
        }  # fmt: skip


def evaluate(
    checkpoint: str | os.PathLike[str],
    tasks: Sequence[str],
    *,
    include_path: str | os.PathLike[str] | None = None,
    limit: float | None = None,
    num_fewshot: int | None = None,
    baselines: Sequence[str] = BASELINES,
    source: str | None = None,
    backend: str = "auto",
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = True,
) -> Evaluation:
    """Run lm-eval ``tasks`` on the spiking ``checkpoint`` and the named ``baselines``
    (``num_fewshot``: examples before each question, default each task's own)."""
    require_extra("eval", "lm_eval", "spikelm eval")
    from spikelm.backends import resolve_device
    from spikelm.checkpoint import read_manifest
    from spikelm.config import SpikeConfig

    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ConfigError(f"unknown baseline {unknown[0]!r} (known: {', '.join(BASELINES)})")
    if not tasks:
        raise ConfigError("no tasks given")
    if limit is not None and not (0 < limit < float("inf")):
        raise ConfigError(f"--limit must be a positive number of documents, got {limit:g}")
    resolve_device(device)  # refuses cuda without a GPU
    manifest = read_manifest(checkpoint)  # a one-line error for anything but a checkpoint
    manager = _task_manager(include_path, tasks)
    for name in tasks:
        _check_task(manager, name)
    from spikelm.harness.lm import SpikelmLM

    spiking = SpikelmLM(
        str(checkpoint), backend=backend, batch_size=batch_size, device=device, name=SPIKING,
        progress=progress,
    )  # fmt: skip
    models: dict[str, SpikelmLM] = {}
    recorded = (manifest.get("metadata") or {}).get("source")
    source = source or recorded
    if baselines:
        if source is None:
            raise ConfigError(
                f"{checkpoint}: the checkpoint does not record the model it was converted from; "
                "pass --source SRC for the baselines, or --baseline none"
            )
        config = SpikeConfig.from_dict(manifest["spike_config"])
        ann = _source_model(source)
        _check_same_weights(ann, spiking.model, manifest, config, source, str(checkpoint))
        if "ann" in baselines:
            models["ann"] = ann
        if "w8a8" in baselines:
            from spikelm.convert import w8a8

            models["w8a8"] = w8a8(copy.deepcopy(ann), config)
    lms = {
        name: SpikelmLM(model=m, tokenizer=spiking.tokenizer, batch_size=batch_size,
                        max_length=spiking.max_length, device=device, name=name,
                        progress=progress)
        for name, m in models.items()
    }  # fmt: skip
    lms[SPIKING] = spiking
    rows: list[Row] = []
    firing: dict[str, SpikeStats] = {}
    for task in tasks:
        results = {}
        for name, lm in lms.items():
            lm.stats = {}  # firing per task
            results[name] = _run(lm, task, manager, limit, num_fewshot)
        stats = spiking.firing()
        if stats is not None:
            firing[task] = stats
        rows += _rows(results, stats)
    return Evaluation(
        str(checkpoint), source, [*lms], list(tasks), limit, num_fewshot, backend, rows, firing
    )


def _task_manager(include_path: str | os.PathLike[str] | None, tasks: Sequence[str]) -> Any:
    """lm-eval's task index over spikelm's tasks and the user's; over lm-eval's own ~15,000 as
    well (seconds to build) only when a task is not found locally."""
    from lm_eval.tasks import TaskManager

    paths = [str(TASKS_DIR)]
    if include_path is not None:
        user = Path(include_path)
        if not user.is_dir():
            raise ConfigError(f"--include-path {user}: no such directory of task files")
        paths.append(str(user))
    local = TaskManager(include_path=paths, include_defaults=False)
    if all(task in local.all_tasks for task in tasks):
        return local
    return TaskManager(include_path=paths)


def _check_task(manager: Any, name: str) -> None:
    """A one-line error for an unknown task, or one whose data cannot be loaded (offline...)."""
    if name not in manager.all_tasks:
        raise ConfigError(
            f"unknown task {name!r} (lm-eval knows {len(manager.all_tasks)} tasks and groups: "
            "`lm-eval ls tasks`; local task files go in --include-path DIR)"
        )
    try:
        manager.load([name])
    except Exception as error:  # lm-eval and datasets raise many kinds
        from spikelm.fileio import one_line

        if _offline(error):
            raise ConfigError(
                f"task {name!r} needs a download from the Hugging Face hub and the machine is "
                "offline (or HF_DATASETS_OFFLINE is set); run it once online, or use local "
                f"tasks (--include-path) [{one_line(error)}]"
            ) from error
        raise ConfigError(f"task {name!r} cannot be loaded ({one_line(error)})") from error


def _offline(error: BaseException) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ConnectionError) or type(seen).__name__ in _NETWORK_ERRORS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


_NETWORK_ERRORS = {"OfflineModeIsEnabled", "ConnectionError", "ConnectTimeout", "ReadTimeout"}


def _source_model(source: str) -> nn.Module:
    """The float source model: the demo's, or one :func:`spikelm.workflow.load_source` loads."""
    from spikelm.models.demo import DEMO_SOURCE

    if source == DEMO_SOURCE:
        from spikelm.models import load_demo_model

        return load_demo_model()
    from spikelm.workflow import load_source

    return load_source(source)[0].eval()


@torch.no_grad()
def _check_same_weights(
    ann: nn.Module, spiking: nn.Module, manifest: dict, config: Any, source: str, ckpt: str
) -> None:
    """Refuse a source whose weights are not the ones the checkpoint was converted from."""
    if config.smooth_alpha is not None:
        return  # outlier migration rescaled the weights: nothing left to compare exactly
    from spikelm.layers import spiking_layers
    from spikelm.quant import quantize_weight

    fused = {name: [m["name"] for m in members] for name, members in
             (manifest.get("fused") or {}).items()}  # fmt: skip
    linears = {n: m for n, m in ann.named_modules() if isinstance(m, nn.Linear)}
    compared = 0
    for name, layer in spiking_layers(spiking).items():
        members = fused.get(name, [name])
        if not all(m in linears for m in members):
            raise ConfigError(
                f"{source}: has no linear layer {members[0]!r} of {ckpt}; pass the source the "
                "checkpoint was converted from (--source)"
            )
        codes = [
            quantize_weight(linears[m].weight.float(), config.weight_bits, config.group_size)[0]
            for m in members
        ]
        if not torch.equal(torch.cat(codes), layer.weight_q):
            raise ConfigError(
                f"{source}: the weights of {members[0]!r} are not those {ckpt} was converted "
                "from; pass the source the checkpoint was converted from (--source)"
            )
        compared += 1
    if not compared:
        raise SpikelmError(f"{ckpt}: no spiking layer to compare with {source}")


def _run(
    lm: Any, task: str, manager: Any, limit: float | None, num_fewshot: int | None
) -> dict[str, Any]:
    import lm_eval

    out = lm_eval.simple_evaluate(
        model=lm, tasks=[task], task_manager=manager, limit=limit, num_fewshot=num_fewshot,
        log_samples=False, bootstrap_iters=1000,
    )  # fmt: skip
    return out["results"]


def _rows(results: dict[str, dict[str, Any]], stats: SpikeStats | None) -> list[Row]:
    rows: dict[tuple[str, str], Row] = {}
    for model, by_task in results.items():
        for task, metrics in by_task.items():
            for key, value in metrics.items():
                metric, _, _filter = key.partition(",")
                if metric.endswith("_stderr") or isinstance(value, bool):
                    continue
                if not isinstance(value, (int, float)) or metric == "sample_len":
                    continue
                row = rows.setdefault((task, metric), Row(task, metric, {}))
                row.scores[model] = float(value)
                err = metrics.get(f"{metric}_stderr,{_filter}")
                if isinstance(err, (int, float)):
                    row.stderr[model] = float(err)
    for row in rows.values():
        if stats is not None:
            row.spikes_per_channel = stats.spikes_per_channel
            row.clamped_share = stats.clipped_share
    return [row for row in rows.values() if SPIKING in row.scores]
