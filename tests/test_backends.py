"""Every backend against the integer reference: accumulators, outputs, a converted model, errors.

Integer backends (``reference``, ``torch_events``, ``numba``) must produce the same accumulators
exactly and, through the one epilogue, bit-identical outputs on one device. The dense ``torch``
backend sums in float32 in another order, so it is held to the reference within
``rtol = 1e-5`` and ``atol = 1e-5 * max|y|`` (measured: ~4e-7 of max|y|).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import spikelm
from spikelm import ConfigError, CountRangeError, SpikeConfig
from spikelm.backends import (
    accumulator_backend,
    auto_backend_name,
    backend,
    counting_paths,
    exact_backends,
    get_backend,
    numba_available,
    resolve_device,
)
from spikelm.backends.epilogue import epilogue
from spikelm.backends.events import accumulator_dtype, count_events
from spikelm.encoders import get_coder
from spikelm.layers import SpikingLinear, spiking_layers
from spikelm.quant import quantize_weight

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
needs_numba = pytest.mark.skipif(not numba_available(), reason="needs numba")

CODINGS = {  # coding -> T (counts up to 255 for the bitwise ones, short unary trains)
    "binary": 6,
    "ternary": 6,
    "bitwise": 8,
    "bitwise_bidirectional": 8,
    "bitwise_twos_complement": 8,
}
INT_BACKENDS = list(exact_backends())
ALL_BACKENDS = [*INT_BACKENDS, "torch", "auto"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(params=["counts", "events"])
def numba_path(request, monkeypatch) -> str:
    """Each numba test runs once per exact path: count-domain and event-driven."""
    from spikelm.backends.numba import driver

    monkeypatch.setattr(driver, "PATH", request.param)
    return request.param


def _layer(coding: str, steps: int, group_size: int | None, n_in=48, n_out=40, seed=0):
    config = SpikeConfig(coding=coding, steps=steps, group_size=group_size)
    layer = SpikingLinear(n_in, n_out, config, name="test")
    g = torch.Generator().manual_seed(seed)
    weight_q, scale = quantize_weight(torch.randn(n_out, n_in, generator=g), 8, group_size)
    weight_q[0, :4] = torch.tensor([127, -127, 127, -127], dtype=torch.int8)  # extreme codes
    layer.weight_q.copy_(weight_q)
    layer.weight_scale.copy_(scale)
    return layer


def _counts(layer: SpikingLinear, rows: int, seed: int = 1) -> torch.Tensor:
    """Random counts over the coding's full range, extremes included, a silent row when rows > 1."""
    lo, hi = layer.count_range
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(lo, hi + 1, (rows, layer.in_features), generator=g)
    counts[torch.rand(counts.shape, generator=g) < 0.3] = 0
    counts[0, :3] = torch.tensor([lo, hi, 0])
    if rows > 1:
        counts[-1] = 0
    return counts.to(torch.float32)  # what spike_counts returns: floats with integer values


def _thresholds(rows: int) -> torch.Tensor:
    return torch.rand(rows, 1, generator=torch.Generator().manual_seed(2)) + 0.1


def _close_to(y: torch.Tensor, reference: torch.Tensor) -> bool:
    atol = 1e-5 * float(reference.abs().max().clamp_min(1e-30))
    return torch.allclose(y, reference, rtol=1e-5, atol=atol)


# --- events -----------------------------------------------------------------------------------


@pytest.mark.parametrize("coding", CODINGS)
def test_events_are_the_coded_train_in_channel_major_csr(coding: str) -> None:
    layer = _layer(coding, CODINGS[coding], None)
    counts = _counts(layer, 5)
    events = count_events(counts, coding, layer.steps)
    coder = get_coder(coding)
    assert torch.equal(events.to_dense(layer.in_features), coder.encode(counts, layer.steps))
    assert events.row_ptr[0] == 0 and events.row_ptr[-1] == len(events)
    for m in range(events.rows):
        part = slice(int(events.row_ptr[m]), int(events.row_ptr[m + 1]))
        assert bool((events.row[part] == m).all())
        key = events.channel[part] * layer.steps + events.step[part]
        assert bool((key[1:] > key[:-1]).all())  # channel-major, steps ascending
    assert len(events) == int(coder.events(counts, layer.steps).sum())
    train = events.to_spike_train(layer.in_features, layer="test", token_offset=10)
    assert len(train.token) == len(events) and train.tokens == range(10, 15)


def test_events_of_silent_counts_and_out_of_range_counts() -> None:
    events = count_events(torch.zeros(3, 16), "bitwise_bidirectional", 8)
    assert len(events) == 0 and events.row_ptr.tolist() == [0, 0, 0, 0]
    with pytest.raises(CountRangeError):
        count_events(torch.full((1, 4), 300.0), "bitwise_bidirectional", 8)


# --- one layer, every backend ------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 7])
@pytest.mark.parametrize("group_size", [None, 16])
@pytest.mark.parametrize("coding", CODINGS)
def test_backends_agree_with_the_reference(coding: str, group_size: int | None, rows: int) -> None:
    layer = _layer(coding, CODINGS[coding], group_size)
    counts, v_th = _counts(layer, rows), _thresholds(rows)
    reference_acc = accumulator_backend("reference")(layer, counts)
    assert reference_acc.shape == (rows, layer.weight_scale.shape[1], layer.out_features)
    for name in INT_BACKENDS:
        acc = accumulator_backend(name)(layer, counts)
        assert acc.dtype in (torch.int32, torch.int64)
        assert torch.equal(acc.to(torch.int64), reference_acc), name
    reference = get_backend("reference")(layer, counts, v_th)
    assert torch.equal(reference, epilogue(reference_acc, layer.weight_scale, v_th))
    for name in INT_BACKENDS:
        assert torch.equal(get_backend(name)(layer, counts, v_th), reference), name
    assert _close_to(get_backend("torch")(layer, counts, v_th), reference)
    assert _close_to(get_backend("auto")(layer, counts, v_th), reference)
    # The accumulators decode to W_q x_int per group: the spike train carries the counts exactly.
    width = layer.in_features // layer.weight_scale.shape[1]
    w = layer.weight_q.to(torch.int64).reshape(layer.out_features, -1, width)
    direct = torch.einsum("mgi,ogi->mgo", counts.to(torch.int64).reshape(rows, -1, width), w)
    assert torch.equal(direct, reference_acc)


@pytest.mark.parametrize("threshold", ["dynamic", "static_tensor"])
@pytest.mark.parametrize("spike_cost", [0.0, 0.3])
def test_a_decode_gain_scales_every_backend_the_same(threshold: str, spike_cost: float) -> None:
    """``V_out = g V_th`` (one float32 product): the exact backends and numba's one-call path agree
    bit for bit, the same spikes fire as without the gain, and the outputs scale by ``g``."""
    config = SpikeConfig(threshold=threshold, spike_cost=spike_cost, group_size=16)
    layer = SpikingLinear(48, 40, config, name="test")
    weight_q, scale = quantize_weight(torch.randn(40, 48), 8, 16)
    layer.weight_q.copy_(weight_q)
    layer.weight_scale.copy_(scale)
    layer.bias.normal_(generator=torch.Generator().manual_seed(5))
    if threshold != "dynamic":
        layer.threshold.fill_(0.3)
    x = torch.randn(6, 48, generator=torch.Generator().manual_seed(6))
    spikes = []
    layer.probe = lambda _layer, counts: spikes.append(counts)
    with torch.no_grad():
        before = layer(x) - layer.bias
        layer.set_neuron(gain=1.25)
        outputs = {}
        for name in [*INT_BACKENDS, "torch"]:
            layer.backend = name
            outputs[name] = layer(x)
    reference = outputs["reference"]
    for name in INT_BACKENDS:
        assert torch.equal(outputs[name], reference), name
    assert _close_to(outputs["torch"], reference)
    assert all(torch.equal(counts, spikes[0]) for counts in spikes)  # the gain fires nothing
    assert _close_to(1.25 * before, reference - layer.bias)  # before: the torch backend's
    with pytest.raises(ConfigError, match="decode gain must be a positive finite"):
        layer.set_neuron(gain=0.0)
    assert layer.gain == 1.25


@pytest.mark.parametrize("name", ALL_BACKENDS)
def test_silent_layer_gives_the_bias(name: str) -> None:
    layer = _layer("bitwise_bidirectional", 8, 16)
    layer.bias.copy_(torch.linspace(-1, 1, layer.out_features))
    counts, v_th = torch.zeros(3, layer.in_features), _thresholds(3)
    y = get_backend(name)(layer, counts, v_th)
    assert y.shape == (3, layer.out_features) and bool((y == 0).all())
    if name in INT_BACKENDS:
        assert not bool(accumulator_backend(name)(layer, counts).any())
    layer.backend = name
    with torch.no_grad():
        assert torch.equal(layer(torch.zeros(2, 3, layer.in_features))[0, 0], layer.bias)


@pytest.mark.parametrize("name", INT_BACKENDS)
def test_counts_the_coding_cannot_hold_are_refused(name: str) -> None:
    layer = _layer("bitwise_bidirectional", 8, None)
    counts = torch.zeros(2, layer.in_features)
    counts[1, 3] = 256.0
    with pytest.raises(CountRangeError):
        accumulator_backend(name)(layer, counts)
    counts[1, 3] = 2.5
    with pytest.raises(CountRangeError):
        get_backend(name)(layer, counts, torch.ones(2, 1))


@pytest.mark.parametrize("name", INT_BACKENDS)
def test_negative_ternary_spikes_subtract_the_column(name: str) -> None:
    layer = _layer("ternary", 6, None)
    counts = torch.zeros(1, layer.in_features)
    counts[0, 5], counts[0, 9] = -3, 2
    acc = accumulator_backend(name)(layer, counts)[0, 0].to(torch.int64)
    w = layer.weight_q.to(torch.int64)
    assert torch.equal(acc, -3 * w[:, 5] + 2 * w[:, 9])


@pytest.mark.parametrize("name", INT_BACKENDS)
def test_twos_complement_top_step_subtracts(name: str) -> None:
    layer = _layer("bitwise_twos_complement", 8, None)
    counts = torch.zeros(1, layer.in_features)
    counts[0, 3], counts[0, 4] = -128, -1  # patterns 1000_0000 and 1111_1111
    acc = accumulator_backend(name)(layer, counts)[0, 0].to(torch.int64)
    w = layer.weight_q.to(torch.int64)
    assert torch.equal(acc, -128 * w[:, 3] - w[:, 4])


@pytest.mark.parametrize("name", INT_BACKENDS)
def test_int64_accumulators_where_int32_could_overflow(name: str) -> None:
    layer = _layer("bitwise_bidirectional", 22, None, n_in=64, n_out=8)
    assert accumulator_dtype(layer) == torch.int64  # (2^22 - 1) * 128 * 64 > 2^31
    counts = torch.full((2, 64), float(2**22 - 1))
    counts[1] = -counts[1]
    acc = accumulator_backend(name)(layer, counts)
    expected = counts.to(torch.int64) @ layer.weight_q.to(torch.int64).t()
    assert torch.equal(acc[:, 0].to(torch.int64), expected)
    assert int(expected.abs().max()) > 2**31  # the sums really leave the int32 range


# --- the layer's derived-tensor cache ----------------------------------------------------------


def test_derived_weights_are_cached_and_rebuilt_when_the_weights_change() -> None:
    layer = _layer("bitwise_bidirectional", 8, 16)
    transposed = layer.transposed_weight_q()
    assert transposed.is_contiguous() and torch.equal(transposed, layer.weight_q.t())
    assert layer.transposed_weight_q() is transposed
    dense = layer.dequantized_weight()
    assert layer.dequantized_weight() is dense
    with torch.no_grad():
        layer.weight_q[0, 0] = -layer.weight_q[0, 0] - 1  # in place: the version changes
    assert torch.equal(layer.transposed_weight_q(), layer.weight_q.t())
    assert not torch.equal(layer.dequantized_weight(), dense)
    state = {
        k: v.clone() for k, v in _layer("bitwise_bidirectional", 8, 16, seed=5).state_dict().items()
    }
    layer.load_state_dict(state)
    assert torch.equal(layer.transposed_weight_q(), state["weight_q"].t())


# --- a converted model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    from spikelm.models import HybridConfig, HybridLM

    torch.manual_seed(0)
    config = HybridConfig(
        vocab_size=256, hidden_size=64, n_layers=2, n_heads=2, head_dim=32,
        intermediate_size=128, window=8, layer_types=["gla", "swa"],
    )  # fmt: skip
    model = HybridLM(config).eval()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (2, 16), generator=g) for _ in range(3)]
    return spikelm.spiking(model, SpikeConfig(), batches, progress=False)


def _set_backend(model, name: str) -> None:
    for layer in spiking_layers(model).values():
        layer.backend = name


def test_converted_model_is_the_same_on_every_backend(tiny_model) -> None:
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(3))
    logits, tokens = {}, {}
    with torch.no_grad():
        for name in ALL_BACKENDS:
            _set_backend(tiny_model, name)
            logits[name] = tiny_model(ids)
            tokens[name] = tiny_model.generate(ids[:1, :6], max_new_tokens=8)
    _set_backend(tiny_model, "torch")
    for name in INT_BACKENDS:
        assert torch.equal(logits[name], logits["reference"]), name
    assert torch.allclose(logits["torch"], logits["reference"], rtol=1e-4, atol=1e-4)
    for name in ALL_BACKENDS:
        assert torch.equal(tokens[name], tokens["reference"]), name


# --- selection and errors ----------------------------------------------------------------------


def test_unknown_backend_is_a_one_line_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown backend 'fast'; choose one of") as info:
        get_backend("fast")
    assert "\n" not in str(info.value)
    layer = _layer("bitwise", 8, None)
    layer.backend = "fast"
    with pytest.raises(ConfigError, match="unknown backend"):
        layer(torch.randn(2, layer.in_features))


@pytest.mark.skipif(CUDA, reason="checks the machine without a GPU")
def test_cuda_without_a_gpu_is_a_config_error() -> None:
    for name in ("torch", "torch_events", "numba", "auto", "reference"):
        with pytest.raises(
            ConfigError, match=r"^CUDA requested but torch.cuda.is_available\(\) is False$"
        ):
            get_backend(name, device="cuda")
    with pytest.raises(ConfigError, match="CUDA requested"):
        resolve_device("cuda:0")
    with pytest.raises(ConfigError, match="invalid device"):
        resolve_device("gpu-please")


@needs_numba
def test_numba_refuses_tensors_off_the_cpu() -> None:
    layer = _layer("bitwise", 8, None)
    counts = torch.zeros(1, layer.in_features, device="meta")
    with pytest.raises(ConfigError, match="backend 'numba' runs on cpu only"):
        get_backend("numba")(layer, counts, torch.ones(1, 1, device="meta"))


@needs_numba
@needs_cuda
def test_numba_with_a_cuda_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="backend 'numba' runs on cpu only"):
        get_backend("numba", device="cuda")


def test_auto_rule() -> None:
    expected = "numba" if numba_available() else "torch"
    assert auto_backend_name("cpu", rows=1) == expected
    assert auto_backend_name("cpu", rows=100_000) == "torch"
    if CUDA:
        assert auto_backend_name("cuda", rows=1) == "torch"


@needs_numba
@pytest.mark.parametrize("group_size", [None, 16])
@pytest.mark.parametrize("rows", [1, 5])
@pytest.mark.parametrize("coding", ["ternary", "bitwise_twos_complement"])
def test_numba_parallel_split_matches_the_reference(
    monkeypatch, numba_path: str, coding: str, rows: int, group_size: int | None
) -> None:
    import numba

    from spikelm.backends import numba as numba_backend
    from spikelm.backends.numba import driver
    from spikelm.backends.numba import layout as blocks

    if numba.get_num_threads() < 2:
        pytest.skip("needs 2 numba threads")
    # Force the parallel kernel on a small layer: tasks are rows x output blocks.
    monkeypatch.setattr(driver, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(driver, "PARALLEL", True)
    assert blocks.block_width(4096, 2) == blocks.BLOCK == 1024
    assert blocks.block_width(1024, 2) == 512  # narrow: a block per thread
    assert blocks.block_width(2816, 4) == 704
    assert blocks.block_width(128, 2) == 128
    monkeypatch.setattr(blocks, "BLOCK", 16)  # out 40: blocks of 16, 16 and 8 (padded)
    layer = _layer(coding, CODINGS[coding], group_size)
    counts, v_th = _counts(layer, rows), _thresholds(rows)
    acc = numba_backend.accumulators(layer, counts)
    assert torch.equal(acc.to(torch.int64), accumulator_backend("reference")(layer, counts))
    reference = get_backend("reference")(layer, counts, v_th)
    paths = counting_paths()
    assert torch.equal(numba_backend.linear(layer, counts, v_th), reference)
    assert paths() == {f"numba.{numba_path}": rows}


@needs_numba
@pytest.mark.parametrize("coding", ["bitwise_bidirectional", "bitwise_twos_complement", "ternary"])
def test_numba_planes_are_flushed_before_int16_overflows(numba_path: str, coding: str) -> None:
    """600 channels in one group at full weight and count: each step plane (event path) or int16
    lane (count path) would sum far more than int16 holds if it were not merged in time."""
    from spikelm.backends import numba as numba_backend

    layer = _layer(coding, CODINGS[coding], None, n_in=600, n_out=24)
    layer.weight_q.fill_(-128)
    layer.weight_q[1::2] = 127
    lo, hi = layer.count_range
    counts = torch.full((3, 600), float(hi))
    counts[1] = lo
    counts[2, ::3] = lo
    v_th = _thresholds(3)
    expected = accumulator_backend("reference")(layer, counts)
    assert int(expected.abs().max()) > 255 * 128 * 2  # far beyond one int16 plane
    assert torch.equal(numba_backend.accumulators(layer, counts).to(torch.int64), expected)
    assert torch.equal(
        numba_backend.linear(layer, counts, v_th), get_backend("reference")(layer, counts, v_th)
    )


@needs_numba
@pytest.mark.parametrize("group_size", [None, 16])
@pytest.mark.parametrize("coding", ["bitwise_bidirectional", "bitwise_twos_complement", "ternary"])
def test_numba_runs_of_alike_channels_match_the_reference(
    numba_path: str, coding: str, group_size
) -> None:
    """Demo-like counts (mostly one or two spikes, many sharing a step): the kernel's sorted
    order, its four-channel adds and its two/three-spike passes give the reference's sums."""
    from spikelm.backends import numba as numba_backend

    layer = _layer(coding, CODINGS[coding], group_size, n_in=96, n_out=40)
    g = torch.Generator().manual_seed(3)
    values = torch.tensor([0, 0, 1, -1, 2, -2, 4, 3, -3, 6, 5, -5])
    counts = values[torch.randint(0, len(values), (3, 96), generator=g)].to(torch.float32)
    counts[1, :40] = 1  # long runs of one kind
    v_th = _thresholds(3)
    expected = accumulator_backend("reference")(layer, counts)
    assert torch.equal(numba_backend.accumulators(layer, counts).to(torch.int64), expected)
    assert torch.equal(
        numba_backend.linear(layer, counts, v_th), get_backend("reference")(layer, counts, v_th)
    )


@needs_numba
@pytest.mark.parametrize("threshold", ["dynamic", "static_tensor"])
def test_numba_one_call_path_fires_the_same_spikes_and_outputs(
    numba_path: str, threshold: str
) -> None:
    """``forward`` computes the counts inside numba; they and the outputs must equal the
    two-step path (torch's ``spike_counts`` then ``linear``) bit for bit: ties at exactly half a
    threshold, zeros, an all-zero token, counts clamped at the coding's range, a channel divisor."""
    from spikelm.backends import numba as numba_backend
    from spikelm.errors import NonFiniteError

    config = SpikeConfig(coding="bitwise_bidirectional", steps=4, threshold=threshold)
    layer = SpikingLinear(48, 40, config, name="test")
    weight_q, scale = quantize_weight(torch.randn(40, 48), 8, 128)
    layer.weight_q.copy_(weight_q)
    layer.weight_scale.copy_(scale)
    layer.input_divisor.copy_(2.0 ** torch.randint(-2, 3, (48,)).float())  # exact: keeps ties
    if threshold != "dynamic":
        layer.threshold.fill_(0.25)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 48, generator=g) * 2
    x[1] = 0.0  # silent token (dynamic threshold 0)
    x[2, :8] = (torch.arange(8) + 0.5) * 0.25 * layer.input_divisor[:8]  # ties (static)
    x[3, :4] = torch.tensor([1e3, -1e3, 1e-30, -0.0])  # clamped, tiny, negative zero
    expected_counts, v_th = layer.spike_counts(x)
    layer.bias.normal_()
    y, counts = numba_backend.forward(layer, x)
    assert torch.equal(counts.to(torch.float32), expected_counts)
    assert int(expected_counts.abs().max()) == 15  # the range edge was reached
    assert torch.equal(y, numba_backend.linear(layer, expected_counts, v_th) + layer.bias)
    layer.backend = "numba"  # through the layer, from an input that carries autograd history
    assert torch.equal(layer(x.clone().requires_grad_(True)), y)
    y_alone, none = numba_backend.forward(layer, x, counts=False)  # the kernel keeps the counts
    assert none is None and torch.equal(y_alone, y)
    x[4, 7] = float("nan")
    for counts_wanted in (True, False):
        with pytest.raises(NonFiniteError, match="^NaN in input of layer 'test'"):
            numba_backend.forward(layer, x, counts=counts_wanted)


@needs_numba
def test_numba_counts_beyond_int32_with_many_steps(numba_path: str) -> None:
    """Bitwise codes over T = 40 steps hold counts past 2^31: int64 counts, int64 accumulators
    (on the count path, counts past an int16 lane's budget go straight into the sums)."""
    from spikelm.backends import numba as numba_backend

    layer = _layer("bitwise_bidirectional", 40, 16)
    counts = torch.randint(-300, 301, (2, 48), generator=torch.Generator().manual_seed(5))
    counts[0, 5:9] = torch.tensor([2**35 + 5, -(2**36) - 3, 2**31, -(2**31) - 1])
    assert accumulator_dtype(layer) == torch.int64
    expected = accumulator_backend("reference")(layer, counts)
    assert torch.equal(numba_backend.accumulators(layer, counts), expected)


@needs_numba
def test_clamped_counts_stay_in_range_when_float32_cannot_hold_the_bound() -> None:
    """T = 40: hi = 2^40 - 1 is not a float32; clamping must not round it up out of the range
    (the torch neuron and numba's one-call path alike, with the same counts)."""
    from spikelm.backends import numba as numba_backend

    config = SpikeConfig(coding="bitwise_bidirectional", steps=40, threshold="static_tensor")
    layer = SpikingLinear(48, 40, config, name="wide")
    layer.threshold.fill_(1e-3)
    x = torch.randn(2, 48)
    x[0, :2] = torch.tensor([1e10, -1e10])  # 1e13 thresholds: far past the range
    counts, _ = layer.spike_counts(x)
    lo, hi = layer.count_range
    assert lo <= float(counts.min()) and float(counts.max()) <= hi
    assert float(counts.max()) > hi - 2**17  # clamped to the last float32 below 2^40
    get_coder(layer.coding).events(counts, layer.steps)  # in range: no CountRangeError
    _, fused = numba_backend.forward(layer, x)
    assert torch.equal(fused.to(torch.float32), counts)


@needs_numba
def test_numba_auto_parallel_keeps_the_faster_kernel_and_the_same_numbers(monkeypatch) -> None:
    import numba

    from spikelm.backends import numba as numba_backend
    from spikelm.backends.numba import driver
    from spikelm.backends.numba.tuning import ParallelChooser

    if numba.get_num_threads() < 2:
        pytest.skip("needs 2 numba threads")
    chooser = ParallelChooser()
    monkeypatch.setattr(driver, "_parallel_chooser", chooser)
    monkeypatch.setattr(driver, "PARALLEL_MIN_WORK", 0)
    layer = _layer("bitwise_bidirectional", 8, 16)
    counts, v_th = _counts(layer, 1), _thresholds(1)
    expected = get_backend("reference")(layer, counts, v_th)
    for _ in range(8):  # both kernels get timed (after a first call each, not kept); every
        assert torch.equal(numba_backend.linear(layer, counts, v_th), expected)  # same numbers
    (key,) = chooser.state
    assert all(len(t) == chooser.SAMPLES for t in chooser.state[key]["times"].values())
    assert set(numba_backend.parallel_choices().values()) <= {"parallel", "serial"}
    # With made-up timings the slower mode is only re-tried after a growing number of calls,
    # and only those re-tries (and the check of the faster mode after each) are timed.
    state = chooser.state[key]
    state["times"], state["best"] = {True: [9.0] * 3, False: [1.0] * 3}, None
    state["wait"] = state["gap"] = 0
    picks = [chooser.pick(key) for _ in range(40)]
    modes = [mode for mode, _ in picks]
    assert modes.count(True) == 3 and modes[-1] is False  # re-tried at growing intervals
    timed = [i for i, (_, t) in enumerate(picks) if t]
    assert timed == [0, 1, 9, 10, 26, 27]  # each re-try, and the faster mode right after it
    chooser.record(key, True, 0.5)  # the re-tried mode got faster: it wins from then on
    chooser.record(key, True, 0.5)
    assert chooser.state[key]["best"] is True


@needs_numba
def test_numba_compile_time_is_reported_apart() -> None:
    from spikelm.backends import numba as numba_backend

    layer = _layer("bitwise", 8, None)
    layer.backend = "numba"
    get_backend("numba")(layer, _counts(layer, 2), _thresholds(2))
    layer(torch.randn(2, 48))  # the one-call path: the same compiled kernel, neuron included
    spent = numba_backend.compile_seconds()
    assert spent > 0  # compiled, or loaded from the disk cache, on first use
    get_backend("numba")(layer, _counts(layer, 3), _thresholds(3))
    layer(torch.randn(3, 48))
    assert numba_backend.compile_seconds() == spent  # once per process: steady state after that
    stats = numba_backend.cache_stats()
    assert stats["hits"] + stats["misses"] >= 1


def test_import_spikelm_does_not_import_numba() -> None:
    import subprocess
    import sys

    code = "import sys, spikelm, spikelm.backends; print('numba' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


# --- CUDA ---------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("coding", CODINGS)
def test_cuda_backends_match_the_cpu_reference(coding: str) -> None:
    layer = _layer(coding, CODINGS[coding], 16)
    counts, v_th = _counts(layer, 7), _thresholds(7)
    reference_acc = accumulator_backend("reference")(layer, counts)
    reference = get_backend("reference")(layer, counts, v_th)
    gpu = layer.to("cuda")
    counts_gpu, v_gpu = counts.cuda(), v_th.cuda()
    acc = accumulator_backend("torch_events")(gpu, counts_gpu)
    assert acc.is_cuda and torch.equal(acc.cpu().to(torch.int64), reference_acc)
    events = get_backend("torch_events", device="cuda")(gpu, counts_gpu, v_gpu)
    assert events.is_cuda and _close_to(events.cpu(), reference)
    dense = get_backend("torch", device="cuda")(gpu, counts_gpu, v_gpu)
    assert dense.is_cuda and _close_to(dense.cpu(), reference)
    assert torch.equal(get_backend("auto", device="cuda")(gpu, counts_gpu, v_gpu), dense)


@needs_cuda
def test_cuda_model_generates_the_cpu_reference_tokens(tiny_model) -> None:
    import copy

    ids = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        _set_backend(tiny_model, "reference")
        expected = tiny_model.generate(ids, max_new_tokens=8)
        gpu = copy.deepcopy(tiny_model).to("cuda")
        for name in ("torch", "torch_events", "auto"):
            _set_backend(gpu, name)
            assert torch.equal(gpu.generate(ids.cuda(), max_new_tokens=8).cpu(), expected), name
    _set_backend(tiny_model, "torch")


# --- the numba backend's path choice, neuron and declarations --------------------------------


@needs_numba
def test_numba_path_choice_follows_the_measured_crossover(monkeypatch) -> None:
    """``PATH = "auto"``: the crossover is measured on a layer shape's first call; rows whose
    events outnumber ``r x`` their active channels take the count path, the others the event
    path, and both give the reference's outputs bit for bit."""
    from spikelm.backends import numba as numba_backend
    from spikelm.backends.numba import driver
    from spikelm.backends.numba.layout import layout
    from spikelm.backends.numba.tuning import PathChooser

    chooser = PathChooser()
    monkeypatch.setattr(driver, "_path_chooser", chooser)
    layer = _layer("bitwise_bidirectional", 8, 16)
    counts = torch.zeros(2, layer.in_features)
    counts[0, :10] = 1  # one spike per active channel: events = active
    counts[1, :10] = 7  # three spikes each: events = 3 x active
    v_th = _thresholds(2)
    reference = get_backend("reference")(layer, counts, v_th)
    assert torch.equal(numba_backend.linear(layer, counts, v_th), reference)
    key = layout(layer).key
    measured = numba_backend.path_crossovers()[key]
    assert 0 < measured < float("inf")
    chooser.ratios[key] = 2.0  # between the two rows' events per active channel
    paths = counting_paths()
    assert torch.equal(numba_backend.linear(layer, counts, v_th), reference)
    assert paths() == {"numba.counts": 1, "numba.events": 1}
    chooser.ratios[key] = 0.5  # below 1: every row on the count path, no scan
    paths = counting_paths()
    assert torch.equal(numba_backend.linear(layer, counts, v_th), reference)
    assert paths() == {"numba.counts": 2}


@needs_numba
@pytest.mark.parametrize(("width", "k"), [(100, 2.7), (129, 3.0), (4097, 1.3), (1, 3.0)])
def test_numba_neuron_fires_the_torch_neurons_spikes(width: int, k: float) -> None:
    """The compiled neuron (divisor, fixed-order threshold sum, rounding, clamp) against the torch
    one, over widths with odd halving steps and thresholds not exact in float32."""
    from spikelm.backends import numba as numba_backend

    config = SpikeConfig(k=k, group_size=None)
    layer = SpikingLinear(width, 8, config, name="neuron")
    layer.input_divisor.copy_(torch.rand(width, generator=torch.Generator().manual_seed(1)) + 0.5)
    x = torch.randn(6, width, generator=torch.Generator().manual_seed(2)) * 3
    x[1] *= 1e-20  # tiny, not zero
    expected, v_th = layer.spike_counts(x)
    y, counts = numba_backend.forward(layer, x)
    assert torch.equal(counts.to(torch.float32), expected)
    assert torch.equal(y, get_backend("reference")(layer, expected, v_th) + layer.bias)


def test_every_coder_declares_how_kernels_decode_it() -> None:
    from typing import get_args

    from spikelm.encoders import CODERS
    from spikelm.encoders.base import Decoding

    for coder in CODERS.values():
        assert coder.decoding in get_args(Decoding), coder.name
    if numba_available():
        from spikelm.backends.numba.events import DECODINGS

        assert set(DECODINGS) == set(get_args(Decoding))


def test_backends_declare_themselves() -> None:
    """The selection layer knows backends only through what their objects declare."""
    for name in ("reference", "torch", "torch_events"):
        chosen = backend(name)
        assert chosen.name == name and chosen.devices is None and chosen.note
    assert backend("reference").exact and backend("torch_events").exact
    assert not backend("torch").exact and backend("torch").accumulators is None
    assert "CUDA path" in backend("torch_events").note
    assert set(exact_backends()) >= {"reference", "torch_events"}
    with pytest.raises(ConfigError, match="has no integer accumulators"):
        accumulator_backend("torch")
    if numba_available():
        numba_backend = backend("numba")
        assert numba_backend.exact and numba_backend.devices == ("cpu",)
        assert numba_backend.forward is not None and numba_backend.warmup is not None


@needs_numba
def test_numba_count_path_cuts_int32_lanes_before_they_wrap(numba_path: str) -> None:
    """T = 15: counts up to 32767 against full-scale weights over one 4096-wide group. The count
    kernel's int32 lanes would wrap; it sums the pair list in chunks that cannot, in int64."""
    from spikelm.backends import numba as numba_backend

    layer = _layer("bitwise_bidirectional", 15, None, n_in=4096, n_out=24)
    layer.weight_q.fill_(127)
    layer.weight_q[:, 1::2] = -128
    g = torch.Generator().manual_seed(6)
    counts = torch.randint(-32767, 32768, (2, 4096), generator=g).to(torch.float32)
    counts[0] = 32767
    counts[0, 1::2] = -32767  # every product at its largest, the same sign
    v_th = _thresholds(2)
    expected = accumulator_backend("reference")(layer, counts)
    assert int(expected.abs().max()) > 2**31  # the true sum does not fit int32
    assert torch.equal(numba_backend.accumulators(layer, counts).to(torch.int64), expected)
    reference = get_backend("reference")(layer, counts, v_th)
    assert torch.equal(numba_backend.linear(layer, counts, v_th), reference)


@needs_numba
def test_numba_count_path_reads_short_silent_runs_and_skips_long_ones() -> None:
    """The count kernel lists every channel pair but runs of SKIP_RUN or more silent ones (a
    short gap costs the memory stream more than it saves): the listed pairs are exactly those,
    and the outputs stay the reference's bit for bit with runs at a group's start, middle and
    end."""
    from spikelm.backends import numba as numba_backend
    from spikelm.backends.numba import driver
    from spikelm.backends.numba.counts import SKIP_RUN, listed_pairs

    width = 4 * SKIP_RUN  # channels per group: 2 * SKIP_RUN pairs
    layer = _layer("bitwise_bidirectional", 8, width, n_in=3 * width, n_out=300)
    counts = torch.zeros(2, 3 * width)
    pairs = counts.view(2, -1, 2)  # [rows, pairs, 2]
    # group 0: a silent run of SKIP_RUN - 1 pairs (read), then active pairs
    pairs[0, SKIP_RUN - 1 : 2 * SKIP_RUN, 1] = 3
    # group 1: active, a silent run of SKIP_RUN pairs (skipped), active to the group's end
    pairs[0, 2 * SKIP_RUN, 0] = -5
    pairs[0, 3 * SKIP_RUN + 1 : 4 * SKIP_RUN, 0] = 7
    # group 2: one active pair, then silent to the end (skipped)
    pairs[0, 4 * SKIP_RUN, :] = 1
    pairs[1, ::3, 0] = -2  # row 1: gaps of two silent pairs, all read
    per_group = 2 * SKIP_RUN
    expected = [per_group + (per_group - SKIP_RUN) + 1, 3 * per_group]
    for r, want in enumerate(expected):
        assert listed_pairs(counts[r : r + 1].to(torch.int64).numpy(), width) == want
    v_th = _thresholds(2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(driver, "PATH", "counts")
        assert torch.equal(
            numba_backend.linear(layer, counts, v_th), get_backend("reference")(layer, counts, v_th)
        )


@needs_numba
def test_numba_entry_points_get_exactly_their_signature_types(monkeypatch, numba_path) -> None:
    """The kernels are entered through their compiled entry points, which do not check their
    arguments (numba's dispatcher would have compiled another version for other types): every
    call, from every entry (a layer's forward, ``linear``, ``accumulators``, the crossover's
    measurement), must pass exactly the types of the signature it was compiled for, across the
    codings, int64 accumulators, float64 scales, 3-D inputs and a spike-cost neuron."""
    import numba

    from spikelm.backends import numba as numba_backend
    from spikelm.backends.numba import driver

    real, keys = driver.kernel, set()

    def checked(parallel: bool, key: tuple):
        entry, signature = real(parallel, key), driver._signature(*key)

        def call(*args):
            assert tuple(numba.typeof(a) for a in args) == signature
            keys.add(key)
            return entry(*args)

        return call

    monkeypatch.setattr(driver, "kernel", checked)
    monkeypatch.setattr(driver, "PARALLEL_MIN_WORK", 0)  # the parallel kernel too
    monkeypatch.setattr(driver, "_path_chooser", type(driver._path_chooser)())  # re-measured
    layers = [_layer(coding, steps, 16) for coding, steps in CODINGS.items()]
    layers.append(_layer("bitwise_bidirectional", 15, None, n_in=4096, n_out=24))  # int64 acc
    layers.append(_layer("bitwise_bidirectional", 8, 16).double())  # float64 scales
    layers[0].spike_cost = 0.5
    for layer in layers:
        layer.backend = "numba"
        x = torch.randn(2, 3, layer.in_features, dtype=layer.weight_scale.dtype)
        layer(x)
        counts, v_th = _counts(layer, 3), _thresholds(3)
        numba_backend.linear(layer, counts, v_th)
        numba_backend.accumulators(layer, counts)
    assert {torch.int32, torch.int64} == {acc for acc, _ in keys}
    assert {np.dtype(np.float32), np.dtype(np.float64)} == {scale for _, scale in keys}


@needs_numba
def test_numba_forward_follows_parameter_changes() -> None:
    """The one-call path caches its weight layout and neuron constants per layer; changing a
    buffer in place, replacing one, or changing k must be seen by the next call."""
    layer = _layer("bitwise_bidirectional", 8, 16)
    layer.backend = "numba"
    x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(8))

    def expected() -> torch.Tensor:
        counts, v_th = layer.spike_counts(x)
        return get_backend("reference")(layer, counts, v_th) + layer.bias

    assert torch.equal(layer(x), expected())
    layer.weight_q[:, :5] = -layer.weight_q[:, :5]  # in place
    assert torch.equal(layer(x), expected())
    layer.bias = torch.randn(layer.out_features)  # replaced
    assert torch.equal(layer(x), expected())
    layer.input_divisor.mul_(2.0)
    layer.k = 2.5
    assert torch.equal(layer(x), expected())
    layer.set_neuron(k=1.5, steps=3)  # a recipe's per-layer neuron: a smaller count range
    assert layer.count_range == (-7, 7)
    assert torch.equal(layer(x), expected())


@needs_numba
def test_numba_gives_the_reference_outputs_of_a_float64_layer() -> None:
    """After ``.double()`` the torch neuron computes in float64 and the scales are float64: the
    numba layer must still give the reference's outputs bit for bit (its compiled float32 neuron
    steps aside; its kernels take the float64 scales)."""
    layer = _layer("bitwise_bidirectional", 8, 16).double()
    layer.input_divisor.copy_(torch.rand(layer.in_features, dtype=torch.float64) + 0.5)
    layer.bias.normal_()
    x = torch.randn(3, 2, layer.in_features, dtype=torch.float64)
    counts, v_th = layer.spike_counts(x.reshape(-1, layer.in_features))
    assert layer.weight_scale.dtype == torch.float64 and counts.dtype == torch.float64
    layer.backend = "numba"
    expected = get_backend("reference")(layer, counts, v_th) + layer.bias
    y = layer(x)
    assert y.dtype == torch.float64
    assert torch.equal(y, expected.reshape(3, 2, -1))
    paths = counting_paths()
    layer(x)
    assert sum(paths().values()) == 6 and not set(paths()) - {"numba.counts", "numba.events"}


@needs_numba
@pytest.mark.parametrize(
    ("coding", "steps", "cost"),
    [("bitwise_bidirectional", 8, 0.3), ("bitwise_bidirectional", 8, 1.0), ("bitwise", 6, 0.5),
     ("ternary", 4, 0.3)],
)  # fmt: skip
def test_numba_error_aware_neuron_fires_the_torch_counts(coding, steps, cost) -> None:
    """``spike_cost > 0`` (the spikelm recipe's rounding) in numba's one-call path: the counts of
    ``spike_counts`` bit for bit, powers of two and values a hair below them included."""
    from spikelm.backends import numba as numba_backend

    with pytest.raises(ConfigError, match="use bitwise_bidirectional"):
        SpikeConfig(coding="bitwise_twos_complement", spike_cost=cost)
    for threshold in ("dynamic", "static_tensor"):
        config = SpikeConfig(coding=coding, steps=steps, threshold=threshold, spike_cost=cost)
        layer = SpikingLinear(64, 8, config, name="aware")
        layer.weight_q.copy_(torch.randint(-127, 128, (8, 64), dtype=torch.int8))
        if threshold != "dynamic":
            layer.threshold.fill_(1.0)  # a = |x|: the edge values below land where meant
        g = torch.Generator().manual_seed(5)
        rows = torch.randn(40, 64, generator=g) * torch.exp(torch.randn(40, 1, generator=g) * 2)
        edges = [2.0**j for j in range(-1, steps + 2)]
        below = [torch.nextafter(torch.tensor(e), torch.tensor(0.0)).item() for e in edges]
        special = torch.tensor(edges + below + [0.0, 1.5, 2.5, 5.5, 6.75, 1e30])
        special = torch.cat([special, -special])
        rows = torch.cat([rows, F.pad(special, (0, -len(special) % 64)).reshape(-1, 64)])
        expected, v_th = layer.spike_counts(rows)
        y, counts = numba_backend.forward(layer, rows)
        assert torch.equal(counts.to(torch.float32), expected), threshold
        assert torch.equal(y, get_backend("reference")(layer, expected, v_th) + layer.bias)
