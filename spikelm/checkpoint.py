"""Spiking checkpoints: a directory that restores a converted model exactly.

    DIR/config.json         the source model's config (Hugging Face style)
    DIR/spikelm.json        format, version, SpikeConfig, the converted layers and their shapes,
                            and (version 2) which of them are fused layers of which members
    DIR/model.safetensors   every tensor: int8 weight codes, scales, divisors, thresholds, and the
                            layers kept dense (embeddings, norms, lm_head, recurrences)
    DIR/tokenizer*          the source tokenizer's files, when it had one

The directory is written beside its target and renamed into place (``spikelm.fileio``).

A model with fused layers (:mod:`spikelm.fusion`) is saved as version 2: each fused layer is one
entry of ``layers`` under its fused name (``<parent>.{a,b}``, its tensors under that name), and
``fused`` lists its members in order with their output widths:

    "fused": {"blocks.0.{a,b}": [{"name": "blocks.0.a", "out": 64}, {"name": "blocks.0.b", "out": 32}]}

A model without fused layers is saved as version 1, exactly as before; both versions load.

A layer whose neuron differs from the config (a recipe's per-layer ``k`` or steps ``T``,
``SpikingLinear.neuron_overrides``) records it in its ``layers`` entry, and the checkpoint is
then version 3, so that a reader of versions 1-2 refuses it instead of running the config's
neuron:

    "layers": {"blocks.0.a": {"in": 64, "out": 64, "bias": true, "neuron": {"k": 2.4, "steps": 10}}}

A checkpoint larger than one shard (:func:`spikelm.streaming.convert_streaming`) keeps its tensors
in ``model-00001-of-0000N.safetensors`` files listed by ``model.safetensors.index.json`` (Hugging
Face's ``weight_map``) instead of ``model.safetensors``; it is version 4, which readers of
versions 1-3 refuse.

A layer whose neuron records a decode gain (``"neuron": {"k": 2.4, "gain": 0.97}``, the
``spikelm`` recipe's, :mod:`spikelm.learn`) makes the checkpoint version 5 (sharded or not), which
readers of versions 1-4 refuse: they would decode its spikes at the wrong amplitude.

``spike_config`` leaves out the recipe fields at their defaults (``config.LATER_FIELDS``), so a
checkpoint of SpikingBrain's recipe reads in spikelm versions from before recipes.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file, save_model
from torch import nn

from spikelm.adapters import MODULE, Adapter, adapter_for, adapter_for_source
from spikelm.backends import get_backend
from spikelm.config import SpikeConfig
from spikelm.errors import CheckpointError, ConfigError, SpikelmError
from spikelm.fileio import atomic_directory, one_line, safetensors_header, tensor_files
from spikelm.fusion import FusedSpikingLinear, SharedInputSlice, fused_name, install
from spikelm.layers import SpikingLinear, checked_gain, spiking_layers
from spikelm.outputs import check_output
from spikelm.targets import set_submodule

FORMAT = "spikelm.checkpoint"
VERSION = 1
"""The version of a checkpoint without fused layers."""
FUSED_VERSION = 2
"""The version of a checkpoint with fused layers (a ``fused`` entry in the manifest)."""
NEURON_VERSION = 3
"""The version of a checkpoint in which some layer records its own neuron parameters."""
SHARDED_VERSION = 4
"""The version of a checkpoint whose tensors are in shards listed by :data:`INDEX`."""
GAIN_VERSION = 5
"""The version of a checkpoint in which some layer records a decode gain (sharded or not)."""
VERSIONS = (VERSION, FUSED_VERSION, NEURON_VERSION, SHARDED_VERSION, GAIN_VERSION)
MANIFEST = "spikelm.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
SHARD_BYTES = 1 << 30
"""Default most bytes of one shard a streaming conversion writes (a larger tensor gets its own)."""


def save(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    tokenizer: Any = None,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
    sources: Sequence[str | os.PathLike[str]] = (),
) -> Path:
    """Write the converted ``model`` (and its tokenizer) to ``directory``, atomically.

    An existing spiking checkpoint there is replaced only with ``overwrite``; anything else, and
    the ``sources`` the model came from, never (:func:`spikelm.outputs.check_output`).
    """
    check_output(directory, "checkpoint", overwrite=overwrite, sources=sources)
    config: SpikeConfig | None = getattr(model, "_spikelm_config", None)
    layers = spiking_layers(model)
    if config is None or not layers:
        raise ConfigError("save() needs a model converted by spikelm (no SpikingLinear found)")
    adapter = adapter_for(model)
    fused = _fused_entries(model, layers)
    entries = {}
    for name, m in layers.items():
        entries[name] = layer_entry(m, config)
    manifest = manifest_for(config, adapter, entries, fused, metadata=metadata)
    with staged_checkpoint(directory) as staging:
        save_model(model, str(staging / WEIGHTS), metadata={"format": "pt"})
        publish(staging, manifest, lambda d: adapter.save_config(model, d), tokenizer)
    return Path(directory)


def layer_entry(layer: SpikingLinear, config: SpikeConfig) -> dict[str, Any]:
    """A layer's entry in the manifest: its shape, its bias, and its own neuron parameters."""
    entry: dict[str, Any] = {
        "in": layer.in_features,
        "out": layer.out_features,
        "bias": layer.bias is not None,
    }
    neuron = layer.neuron_overrides(config)
    if neuron:
        entry["neuron"] = neuron
    return entry


def manifest_for(
    config: SpikeConfig,
    adapter: Adapter,
    layers: dict[str, dict[str, Any]],
    fused: dict[str, list],
    *,
    sharded: bool = False,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``spikelm.json`` of a checkpoint, at the lowest version that holds what it records."""
    if any("gain" in entry.get("neuron", {}) for entry in layers.values()):
        version = GAIN_VERSION
    elif sharded:
        version = SHARDED_VERSION
    elif any("neuron" in entry for entry in layers.values()):
        version = NEURON_VERSION
    else:
        version = FUSED_VERSION if fused else VERSION
    return {
        "format": FORMAT,
        "version": version,
        "source": adapter.checkpoint_source,
        "spike_config": config.to_dict(),
        "layers": layers,
        **({"fused": fused} if fused else {}),
        "metadata": metadata or {},
    }


def source_metadata(source: str | os.PathLike[str] | None) -> dict[str, str]:
    """The manifest metadata naming the converted model: a local path made absolute, a hub id
    or a built-in name as given."""
    if source is None:
        return {}
    path = Path(os.path.expanduser(source))
    return {"source": str(path.resolve()) if path.exists() else str(source)}


@contextlib.contextmanager
def staged_checkpoint(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """A staging directory published as ``directory`` when the block succeeds (nothing is left
    behind when it fails); an OS error while writing is one line naming the checkpoint."""
    target = Path(directory)
    try:
        with atomic_directory(target) as staging:
            yield staging
    except SpikelmError:
        raise
    except OSError as error:
        raise SpikelmError(f"{target}: cannot write spiking checkpoint ({error})") from error


def publish(
    staging: Path,
    manifest: dict[str, Any],
    save_config: Callable[[Path], None],
    tokenizer: Any = None,
) -> None:
    """Write the manifest, the model config and the tokenizer beside the staged weights."""
    save_config(staging)
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(staging)


class ShardWriter:
    """Tensors appended in order, written into ``staging`` as safetensors files of at most
    ``shard_bytes`` (a larger tensor gets a file of its own); :meth:`finish` names them
    ``model.safetensors``, or ``model-0000i-of-0000N.safetensors`` listed by :data:`INDEX`.
    Memory holds one shard's tensors at most."""

    def __init__(self, staging: Path, shard_bytes: int = SHARD_BYTES) -> None:
        if shard_bytes < 1:
            raise ConfigError(f"shard size must be positive, got {shard_bytes}")
        self.staging, self.shard_bytes = staging, shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.written: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.shard_bytes:
            self._flush()
        self.pending[name] = tensor.detach().contiguous()
        self.pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        file = self.staging / f".shard-{len(self.written):05d}.safetensors"
        try:
            save_file(self.pending, str(file), metadata={"format": "pt"})
        except OSError:
            raise
        except Exception as error:  # safetensors' own error type for a failed write
            raise OSError(one_line(error)) from error
        self.written.append((file, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> bool:
        """Write the last shard and name the files; returns whether the result is sharded."""
        if self.pending or not self.written:
            self._flush()
        if len(self.written) == 1:
            self.written[0][0].rename(self.staging / WEIGHTS)
            return False
        count = len(self.written)
        weight_map = {}
        for number, (file, names) in enumerate(self.written, start=1):
            shard = f"model-{number:05d}-of-{count:05d}.safetensors"
            file.rename(self.staging / shard)
            weight_map.update(dict.fromkeys(names, shard))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.staging / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return True


def _fused_entries(model: nn.Module, layers: dict[str, SpikingLinear]) -> dict[str, list]:
    """The manifest's ``fused`` entry: each fused layer's members and their output widths,
    checked against the model (every member a slice of that fused layer, in place)."""
    entries = {}
    for name, layer in layers.items():
        if not isinstance(layer, FusedSpikingLinear):
            continue
        members = layer.member_names(name)
        for index, member in enumerate(members):
            try:
                found = model.get_submodule(member)
            except AttributeError:
                found = None
            if not (
                isinstance(found, SharedInputSlice)
                and found.fused is layer
                and found.index == index
            ):
                raise ConfigError(
                    f"fused layer {name!r}: {member!r} is not its slice {index}; the model was "
                    "changed after fusion"
                )
        entries[name] = [
            {"name": member, "out": out} for member, out in zip(members, layer.splits, strict=True)
        ]
    return entries


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked ``spikelm.json`` of a spiking checkpoint directory."""
    path = Path(directory)
    if not path.is_dir():
        raise SpikelmError(f"{path}: no such checkpoint directory")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise SpikelmError(f"{path}: not a spiking checkpoint (no {MANIFEST}); convert it first")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SpikelmError(f"{manifest_path}: unreadable ({one_line(error)})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SpikelmError(f"{manifest_path}: not a spikelm checkpoint manifest")
    version = manifest.get("version")
    if isinstance(version, bool) or version not in VERSIONS:
        raise SpikelmError(
            f"{manifest_path}: checkpoint version {version!r}; "
            f"this spikelm reads versions {', '.join(map(str, VERSIONS))}"
        )
    if not isinstance(manifest.get("spike_config"), dict):
        raise CheckpointError(f"{manifest_path}: no spike_config object")
    layers = manifest.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise CheckpointError(f"{manifest_path}: no layers object naming the spiking layers")
    for name, shape in layers.items():
        if not (
            isinstance(shape, dict)
            and all(_positive_int(shape.get(key)) for key in ("in", "out"))
            and isinstance(shape.get("bias"), bool)
        ):
            raise CheckpointError(
                f"{manifest_path}: layer {name!r} needs positive integers 'in', 'out' and a "
                f"boolean 'bias', got {json.dumps(shape)[:80]}"
            )
        _check_neuron(manifest, name, manifest_path)
    _check_fused(manifest, manifest_path)
    return manifest


def _check_neuron(manifest: dict[str, Any], name: str, where: Path) -> None:
    """A layer's ``neuron`` entry: version 3 on (a gain: version 5 on), an object of known
    parameters whose values a ``SpikeConfig`` (a gain: :func:`checked_gain`) accepts."""
    neuron = manifest["layers"][name].get("neuron")
    if neuron is None:
        return
    if manifest["version"] < NEURON_VERSION:
        raise CheckpointError(
            f"{where}: layer {name!r} has a 'neuron' entry, which needs checkpoint version "
            f"{NEURON_VERSION}"
        )
    if not isinstance(neuron, dict) or not neuron or set(neuron) - set(SpikingLinear.NEURON):
        raise CheckpointError(
            f"{where}: layer {name!r}: 'neuron' must be an object of "
            f"{', '.join(SpikingLinear.NEURON)}, got {json.dumps(neuron)[:80]}"
        )
    if "gain" in neuron and manifest["version"] < GAIN_VERSION:
        raise CheckpointError(
            f"{where}: layer {name!r} records a decode gain, which needs checkpoint version "
            f"{GAIN_VERSION}"
        )
    try:
        if "gain" in neuron:
            checked_gain(neuron["gain"])
        config_fields = {key: value for key, value in neuron.items() if key != "gain"}
        SpikeConfig.from_dict({**manifest["spike_config"], **config_fields})
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"{where}: layer {name!r}: bad neuron parameters ({one_line(error)})"
        ) from error


def _check_fused(manifest: dict[str, Any], where: Path) -> None:
    """Refuse a malformed ``fused`` entry, in one line: it must name layers of ``layers`` by
    their canonical fused names, each with two or more sibling members (objects with a ``name``
    and a positive ``out``) whose widths add up to the layer's, no member twice."""
    if "fused" not in manifest:
        return
    fused = manifest["fused"]
    if manifest["version"] == VERSION:
        raise CheckpointError(
            f"{where}: a 'fused' entry needs checkpoint version {FUSED_VERSION} or later"
        )
    if not isinstance(fused, dict) or not fused:
        raise CheckpointError(f"{where}: 'fused' must be an object naming fused layers")
    layers = manifest["layers"]
    seen: set[str] = set()
    for name, members in fused.items():
        if name not in layers:
            raise CheckpointError(f"{where}: fused layer {name!r} is not in 'layers'")
        if not (
            isinstance(members, list)
            and len(members) >= 2
            and all(
                isinstance(m, dict)
                and set(m) == {"name", "out"}
                and isinstance(m["name"], str)
                and _positive_int(m["out"])
                for m in members
            )
        ):
            raise CheckpointError(
                f"{where}: fused layer {name!r} needs a list of two or more members "
                f"{{'name': str, 'out': positive int}}, got {json.dumps(members)[:80]}"
            )
        names = [m["name"] for m in members]
        try:
            expected = fused_name(names)
        except ConfigError:
            expected = None
        if expected != name:
            raise CheckpointError(
                f"{where}: fused layer {name!r} does not match its members {names}"[:300]
            )
        total = sum(m["out"] for m in members)
        if total != layers[name]["out"]:
            raise CheckpointError(
                f"{where}: fused layer {name!r} has {layers[name]['out']} outputs but its members "
                f"add up to {total}"
            )
        for member in names:
            if member in seen or member in layers:
                raise CheckpointError(f"{where}: layer {member!r} is listed twice")
            seen.add(member)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _adapter(path: Path, source: object) -> Adapter:
    """The adapter of a checkpoint: its manifest's ``source`` and ``config.json``'s model_type."""
    config_file = path / "config.json"
    model_type = None
    if config_file.is_file():
        try:
            model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
            raise CheckpointError(f"{config_file}: unreadable model config ({error})") from error
    elif source != MODULE.checkpoint_source:
        raise CheckpointError(f"{path}: no config.json: the model's architecture is unknown")
    return adapter_for_source(source, model_type, str(path))


def load(
    directory: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    backend: str = "torch",
    with_tokenizer: bool = False,
) -> nn.Module | tuple[nn.Module, Any]:
    """Restore a converted model from ``directory``; its outputs equal the saved model's.

    ``model`` supplies the architecture for checkpoints of plain modules. With
    ``with_tokenizer=True`` returns ``(model, tokenizer_or_None)``.
    """
    path = Path(directory)
    get_backend(backend)  # an unknown backend name fails here, before any loading
    manifest = read_manifest(path)
    try:
        config = SpikeConfig.from_dict(manifest["spike_config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path / MANIFEST}: bad spike_config ({one_line(error)})") from error
    files = _weight_files(path, manifest)
    stored = _stored_tensors(files)
    for name, shape in manifest["layers"].items():  # before any layer is allocated
        found = stored.get(f"{name}.weight_q")
        if found != ("I8", [shape["out"], shape["in"]]):
            raise CheckpointError(
                f"{_where(files, f'{name}.weight_q')}: layer {name!r} is "
                f"{shape['out']}x{shape['in']} in {MANIFEST} but its weight_q is "
                f"{found[1] if found else 'missing'} ({found[0] if found else '-'})"
            )
    tokenizer = None
    if model is None:
        adapter = _adapter(path, manifest.get("source"))
        _check_size(adapter, path, files)
        model, tokenizer = adapter.skeleton(path), adapter.tokenizer(path)
    fused = manifest.get("fused", {})
    for name, shape in manifest["layers"].items():
        members = fused.get(name)
        for target in [m["name"] for m in members] if members else [name]:
            try:
                module = model.get_submodule(target)
            except AttributeError:
                raise SpikelmError(
                    f"{path}: the model has no layer {target!r} recorded in {MANIFEST}"
                ) from None
            if members:
                _check_member(path, target, module, shape, members)
        with torch.device("meta"):  # its tensors are the mapped shards' (below), never copied
            if members:
                layer = FusedSpikingLinear(
                    shape["in"],
                    shape["out"],
                    config,
                    parts=[m["name"].rpartition(".")[2] for m in members],
                    splits=[m["out"] for m in members],
                    bias=shape["bias"],
                    backend=backend,
                    name=name,
                )
            else:
                layer = SpikingLinear(
                    shape["in"], shape["out"], config, bias=shape["bias"], backend=backend,
                    name=name,
                )  # fmt: skip
        if members:
            install(model, layer)
        else:
            set_submodule(model, name, layer)
        if "neuron" in shape:
            layer.set_neuron(**shape["neuron"])
    _check_against(model, stored, files)
    for file in dict.fromkeys(files.values()):  # every name checked above: one shard at a time
        try:
            tensors = load_file(file)  # mapped copy-on-write: pages are read when first used
            _assign_mapped(model, tensors)
            model.load_state_dict(tensors, strict=False)
        except SpikelmError:
            raise
        except Exception as error:  # safetensors' own errors for corrupt data
            raise CheckpointError(f"{file}: cannot load ({one_line(error)})") from error
    for name, tensor in model.state_dict().items():
        if tensor.is_meta:  # cannot happen after _check_against; never run on no storage
            raise CheckpointError(f"{_where(files, name)}: tensor {name} was not loaded")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{_where(files, name)}: tensor {name} holds NaN or infinite values"
            )
    model._spikelm_config = config
    model.eval()
    adapter_for(model).converted(model)
    return (model, tokenizer) if with_tokenizer else model


def _assign_mapped(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Make the spiking layers' tensors (built on ``meta``) the mapped ``tensors`` themselves,
    taking them out of ``tensors``: the int8 codes stay in the page cache, shared and
    reclaimable, until a backend reads them. A stored float of another width is widened."""
    for name in list(tensors):
        owner, _, key = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        held = module._buffers.get(key) if isinstance(module, SpikingLinear) else None
        if held is None or held.device.type != "meta":
            continue
        tensor = tensors.pop(name)
        if tensor.dtype != held.dtype:
            tensor = tensor.to(held.dtype)
        module._buffers[key] = tensor
        module.clear_derived()


def _check_member(
    path: Path, name: str, module: nn.Module, shape: dict[str, Any], members: list[dict]
) -> None:
    """A fused member must be a linear layer of the architecture with the width it records."""
    out = next(m["out"] for m in members if m["name"] == name)
    if not isinstance(module, nn.Linear):
        raise CheckpointError(
            f"{path}: fused member {name!r} is a {type(module).__name__} in the model, not a "
            "linear layer"
        )
    has_bias = module.bias is not None
    if (module.in_features, module.out_features, has_bias) != (shape["in"], out, shape["bias"]):
        raise CheckpointError(
            f"{path}: fused member {name!r} is {out}x{shape['in']} (bias {shape['bias']}) in "
            f"{MANIFEST} but {module.out_features}x{module.in_features} (bias {has_bias}) in "
            "the model"
        )


def _weight_files(path: Path, manifest: dict[str, Any]) -> dict[str, Path]:
    """Which file holds each stored tensor: ``model.safetensors``, or (version 4 on) the shards of
    :data:`INDEX`; every file checked complete (:func:`spikelm.fileio.tensor_files`)."""
    single, sharded = (path / WEIGHTS).is_file(), (path / INDEX).is_file()
    if not single and not sharded:
        raise CheckpointError(f"{path / WEIGHTS}: missing weights file")
    if not single and manifest["version"] < SHARDED_VERSION:
        raise CheckpointError(
            f"{path / MANIFEST}: a version {manifest['version']} checkpoint keeps its tensors in "
            f"{WEIGHTS}, which is missing"
        )
    files = tensor_files(path, WEIGHTS, INDEX)
    if not files:
        raise CheckpointError(f"{path}: the weights hold no tensors")
    return files


def _where(files: dict[str, Path], name: str | None = None) -> Path:
    """The file a message about tensor ``name`` names: its own, or the weights as a whole."""
    if name in files:
        return files[name]
    shards = set(files.values())
    return next(iter(shards)) if len(shards) == 1 else next(iter(shards)).parent / INDEX


def _check_size(adapter: Adapter, path: Path, files: dict[str, Path]) -> None:
    """Refuse a ``config.json`` describing a model far larger than the weights before any memory
    is allocated: the skeleton is first built on the ``meta`` device (shapes only), after a look
    at its numbers (no size past 2^31, no more layers than stored tensors)."""
    stored_count = len(files)
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    for key, value in config.items() if isinstance(config, dict) else ():
        layers = key in ("num_hidden_layers", "n_layers") and isinstance(value, int)
        if isinstance(value, int) and (abs(value) > 2**31 or (layers and value > stored_count)):
            raise CheckpointError(
                f"{path / 'config.json'}: {key} = {value} does not fit the {stored_count} "
                f"tensors of {_where(files).name}"
            )
    try:
        with torch.device("meta"):
            probe = adapter.skeleton(path)
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as error:
        raise CheckpointError(
            f"{path / 'config.json'}: bad model config ({one_line(error)})"
        ) from error
    tensors = {id(t): t for t in itertools.chain(probe.parameters(), probe.buffers())}
    needed = sum(t.numel() * t.element_size() for t in tensors.values())
    stored = sum(file.stat().st_size for file in set(files.values()))
    if needed > 4 * stored + (1 << 20):  # float layers that the file holds as int8: 4x at most
        raise CheckpointError(
            f"{path / 'config.json'}: describes a model of {needed / 2**20:,.0f} MiB in floats, "
            f"but {_where(files).name} holds {stored / 2**20:,.1f} MiB: config and weights do "
            "not match"
        )


def _stored_tensors(files: dict[str, Path]) -> dict[str, tuple[str, list[int]]]:
    """``name -> (dtype, shape)`` from the safetensors headers (nothing is read but them)."""
    stored = {}
    for file in dict.fromkeys(files.values()):
        for name, entry in safetensors_header(file).items():
            stored[name] = (entry["dtype"], list(entry["shape"]))
    return stored


FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


def _check_against(model: nn.Module, stored: dict, files: dict[str, Path]) -> None:
    """Every tensor of ``model`` stored with its shape and kind of dtype, and nothing else."""
    expected = model.state_dict()
    stored_storage = {
        tensor.untyped_storage().data_ptr()
        for name, tensor in expected.items()
        if name in stored and not tensor.is_meta
    }
    for name, tensor in expected.items():
        if name not in stored:
            if not tensor.is_meta and tensor.untyped_storage().data_ptr() in stored_storage:
                continue  # tied to a stored tensor (safetensors keeps one name of a tied pair)
            raise CheckpointError(f"{_where(files)}: tensor {name} is missing")
        dtype, shape = stored[name]
        fits = dtype == "I8" if tensor.dtype == torch.int8 else dtype in FLOAT_DTYPES
        if not fits or shape != list(tensor.shape):
            raise CheckpointError(
                f"{_where(files, name)}: tensor {name} is {dtype} {shape}; the model needs "
                f"{'I8' if tensor.dtype == torch.int8 else 'a float'} {list(tensor.shape)}"
            )
    unexpected = sorted(set(stored) - set(expected))
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(
            f"{_where(files, unexpected[0])}: tensor {unexpected[0]} is not in the model{more}"
        )


__all__ = ["load", "read_manifest", "save"]
