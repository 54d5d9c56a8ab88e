"""Streaming conversion: a safetensors checkpoint to a spiking one, one tensor at a time.

SpikingBrain's dynamic threshold (``V = k * mean|x| / T`` per token) needs no calibration
forward, so a linear layer converts from its weight alone: read it (memory-mapped, any float
dtype), quantize it, append the layer's tensors to the output shard, drop it. The model itself is
built on the ``meta`` device (names and shapes only), so memory holds one source tensor, its
quantized form and the shard being filled, whatever the model's size. Tensors that stay dense
(embeddings, norms, the output head) are copied in their source dtype: the loader widens them
into the float32 model exactly as a float32 load would.

Calibrated thresholds (static rules, ``smooth_alpha``) go block by block
(:mod:`spikelm.blockwise`): the calibration batches pass through one decoder block at a time,
each block loaded in float32 when the writer reaches its first layer and freed when it moves on,
so memory holds one block and the calibration activations. The ``spikelm`` recipe learns block
by block too, each block against its error carried to the output head (the outer modules and the
head loaded as well). ``fisher_power`` (gradients of the whole model's loss) is refused.

The output is the checkpoint :func:`spikelm.checkpoint.save` writes for the same weights and
calibration batches with ``fuse=False`` (same tensors and values; for the ``spikelm`` recipe the
same weights, its neurons learned block by block instead of against the whole model), sharded
when larger than ``shard_bytes``. Families whose stored tensors are not the inference weights as the model holds
them (load-time fix-ups or renamed keys) are refused by name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from tqdm.auto import tqdm

from spikelm.adapters import adapter_for
from spikelm.blockwise import BlockwiseCalibration
from spikelm.checkpoint import (
    INDEX,
    SHARD_BYTES,
    WEIGHTS,
    ShardWriter,
    layer_entry,
    manifest_for,
    publish,
    source_metadata,
    staged_checkpoint,
)
from spikelm.config import SpikeConfig
from spikelm.convert import spiking_layer
from spikelm.errors import CheckpointError, ConfigError, UnsupportedModelError, require_extra
from spikelm.fileio import one_line, tensor_files
from spikelm.outputs import check_output
from spikelm.saturation import warn_saturation
from spikelm.targets import check_patterns, check_targets, target_linears


def convert_streaming(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: SpikeConfig | None = None,
    *,
    calibration: Sequence[torch.Tensor] | None = None,
    shard_bytes: int = SHARD_BYTES,
    overwrite: bool = False,
    progress: bool = True,
    keep_dense_patterns: tuple[str, ...] = (),
) -> Path:
    """Convert the local Hugging Face checkpoint ``source`` to ``out_dir`` tensor by tensor.

    ``calibration``: token-id batches ``[B, L]`` for a config that needs them (calibrated
    thresholds, ``smooth_alpha``), run through the model block by block; none for SpikingBrain's
    dynamic rule. Returns the checkpoint directory, written atomically.
    """
    require_extra("hf", "transformers", f"{source}: streaming conversion")
    from spikelm.hf import load_tokenizer, meta_model, supported_model_types

    config = config or SpikeConfig()
    path = Path(os.path.expanduser(source))
    check_output(out_dir, "checkpoint", overwrite=overwrite, sources=[path])
    _check_calibration(config, calibration)
    if not path.is_dir():
        raise CheckpointError(
            f"{path}: no such model directory (streaming reads a local checkpoint; download a hub "
            "model first)"
        )
    model = meta_model(path)
    files = tensor_files(path, WEIGHTS, INDEX)  # the same names as a source checkpoint's
    adapter = adapter_for(model)
    if not adapter.streams:
        raise UnsupportedModelError(
            f"{path}: {adapter.name} checkpoints are changed when they load (the stored tensors "
            "are not the inference weights), so they cannot be converted tensor by tensor; "
            f"convert without streaming (streams: {', '.join(_streaming_types(supported_model_types()))})"
        )
    check_patterns(model, keep_dense_patterns, "--keep-dense")
    targets = target_linears(model, config)
    check_targets(targets, config)
    sources = _stored_sources(model, files, path)
    blocks = None
    if calibration is not None:
        blocks = BlockwiseCalibration(
            model, adapter, config, list(targets), calibration, lambda n: _read(files, sources[n])
        )
    tokenizer = load_tokenizer(path)
    entries = {}
    with staged_checkpoint(out_dir) as staging:
        writer = ShardWriter(staging, shard_bytes)
        names = list(dict.fromkeys(sources.values()))
        bar = tqdm(names, desc="streaming", unit="tensor", disable=None if progress else True)
        for name in bar:
            layer_name, _, kind = name.rpartition(".")
            if layer_name in targets and kind == "weight":
                linear = targets[layer_name]
                bias = f"{layer_name}.bias" if linear.bias is not None else None
                if blocks:
                    layer = blocks.layer(layer_name)
                else:
                    layer = spiking_layer(_linear(files, name, bias), config, layer_name)
                for key, tensor in layer.state_dict().items():
                    writer.add(f"{layer_name}.{key}", tensor)
                entries[layer_name] = layer_entry(layer, config)
            elif not (layer_name in targets and kind == "bias"):
                writer.add(name, _read(files, name))
        manifest = manifest_for(
            config, adapter, entries, {}, sharded=writer.finish(),
            metadata=source_metadata(source),
        )  # fmt: skip
        publish(staging, manifest, lambda d: adapter.save_config(model, d), tokenizer)
    if blocks and blocks.saturation:
        warn_saturation(blocks.saturation, "on the calibration data")
    return Path(out_dir)


def _streaming_types(model_types: tuple[str, ...]) -> list[str]:
    from spikelm.adapters import adapter_for_type

    return [t for t in model_types if adapter_for_type(t, t).streams]


def _check_calibration(config: SpikeConfig, calibration: Sequence[torch.Tensor] | None) -> None:
    """Calibration data exactly when the config needs it, for a rule that works block by block."""
    if config.fisher_power is not None:
        raise ConfigError(
            "streaming calibrates one block at a time, and fisher_power needs the gradients of "
            "the whole model's next-token loss; convert without --stream"
        )
    if config.needs_calibration and calibration is None:
        needs = (
            f"recipe={config.recipe} learns from"
            if config.recipe != "spikingbrain"
            else f"threshold={config.threshold} / smooth_alpha={config.smooth_alpha} need"
        )
        raise ConfigError(f"{needs} calibration data: pass --calib FILE or --calib-ids FILE")
    if calibration is not None and not config.needs_calibration:
        raise ConfigError(
            "the dynamic threshold rule uses no calibration data: drop --calib/--calib-ids, or "
            "choose calibrated thresholds (--threshold static_tensor or static_channel, "
            "--smooth-alpha)"
        )


def _stored_sources(model: nn.Module, files: dict[str, Path], path: Path) -> dict[str, str]:
    """Each of the model's state-dict names (in order) and the stored name it reads, the same for
    a tied group (the one the source holds); every group must be stored, and the source may hold
    nothing else."""
    tied: dict[int, list[str]] = {}
    for name, tensor in [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]:
        tied.setdefault(id(tensor), []).append(name)
    group_of = {name: names for names in tied.values() for name in names}
    sources: dict[str, str] = {}
    seen: set[str] = set()
    for name in model.state_dict():
        group = group_of.get(name, [name])
        seen.update(group)
        stored = [n for n in group if n in files]
        if not stored:
            raise CheckpointError(
                f"{path}: tensor {name} of the model is not in the checkpoint (a family that "
                "renames its tensors when it loads cannot stream; convert without streaming)"
            )
        sources[name] = stored[0]
    unused = sorted(set(files) - seen)
    if unused:
        more = f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""
        raise CheckpointError(f"{path}: tensor {unused[0]} is not used by the model{more}")
    return sources


def _linear(files: dict[str, Path], weight: str, bias: str | None) -> nn.Linear:
    """An ``nn.Linear`` holding the stored float32 weight (and bias), for :func:`spiking_layer`."""
    w = _read(files, weight).to(torch.float32)
    linear = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(w, requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(_read(files, bias).to(torch.float32), requires_grad=False)
    return linear


def _read(files: dict[str, Path], name: str) -> torch.Tensor:
    """Tensor ``name``, checked finite. Its file is mapped only while the tensor is copied out: a
    file kept mapped would keep every page read so far resident, the whole source by the end."""
    file = files[name]
    try:
        with safe_open(file, framework="pt") as handle:
            tensor = handle.get_tensor(name).clone()
    except Exception as error:  # safetensors' own errors for corrupt data
        raise CheckpointError(f"{file}: cannot read tensor {name} ({one_line(error)})") from error
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise CheckpointError(f"{file}: tensor {name} holds NaN or infinite values")
    return tensor


__all__ = ["convert_streaming"]
