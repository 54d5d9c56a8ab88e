"""``SpikeConfig``: every choice a conversion makes, in one serialisable object."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from spikelm.encoders import get_coder
from spikelm.errors import ConfigError

ThresholdMode = Literal["dynamic", "static_tensor", "static_channel"]
ThresholdRule = Literal["mean_abs", "percentile", "max"]
Recipe = Literal["spikingbrain", "spikelm"]
RECIPES = ("spikingbrain", "spikelm")
RECIPE_SPIKE_COST = {"spikingbrain": 0.0, "spikelm": 0.3}
"""``spike_cost`` when the config leaves it ``None``: the recipe's own (measured best for
``spikelm``: learned thresholds with error-aware rounding, ``benchmarks/bench_fidelity.py``)."""


LATER_FIELDS = ("recipe", "spike_weight", "spike_budget")
"""Fields added after checkpoint version 2 (written only when set)."""
FLOAT_FIELDS = (
    "k",
    "percentile",
    "smooth_alpha",
    "fisher_power",
    "spike_cost",
    "spike_weight",
    "spike_budget",
)
"""Fields held as floats: an integer given for one is converted (torch refuses ints past int64)."""


@dataclass(frozen=True)
class SpikeConfig:
    """How to turn a model's linear layers into spiking ones.

    Attributes:
        coding: exact spike coder name (see ``spikelm.CODERS``).
        steps: time steps ``T`` of a spike train; with the coding it fixes the count range.
        k: threshold divisor of the dynamic rule ``V_th = mean|x| / k`` and of ``mean_abs``.
        threshold: ``dynamic`` (per token, SpikingBrain's rule), or calibrated constants
            ``static_tensor`` (one per layer) or ``static_channel`` (one per input channel).
        rule: how static thresholds come from calibration data: ``mean_abs`` (``mean|x| / k``),
            ``percentile`` (the ``percentile``-th |x| maps to the top count) or ``max``.
        percentile: percentile for ``rule="percentile"``, in (0, 100].
        weight_bits: bits of the symmetric integer weights (2..8).
        group_size: input channels sharing one weight scale; ``None`` = one scale per row.
        smooth_alpha: ``None`` for no channel rescaling, else the strength of outlier migration:
            ``x_j / d_j`` into the neuron and ``W[:, j] * d_j`` into the weights with
            ``d_j = max|x_j|^alpha / max|W[:, j]|^(1 - alpha)`` (normalised to geometric mean 1).
            ``alpha = 0`` spends spikes where the weights are large (weight-aware thresholds).
        fisher_power: ``None`` to ignore the loss; else thresholds follow the diagonal Fisher
            ``F_{l,i} = E[(dL/dx_{l,i})^2]`` of the next-token loss w.r.t. each converted layer's
            input channel (a backward pass per calibration batch): ``V_{l,i} ~ F_{l,i}^-p``.
            ``p = 1/2`` equalises the loss increase ``F V^2 / 24`` of every channel. Dynamic
            thresholds are shaped per channel within a layer (``d_i ~ F_i^-p``, geometric mean 1);
            static ones also per layer, with one constant for the whole model:
            ``V_{l,i} = c F_{l,i}^-p / k``, ``c = geomean(mean|x_{l,i}| F_{l,i}^p)`` over all
            channels of all layers (so ``k`` keeps its ``mean_abs`` meaning).
        spike_cost: ``0`` for nearest rounding; ``> 0`` for error-aware rounding, which picks per
            value the count minimising ``(|x|/V_th - c)^2 + spike_cost * spikes(c)`` among the
            nearest count, the nearest powers of two and 0 (fewer spikes for bitwise codes);
            ``None`` (the default): the recipe's (:data:`RECIPE_SPIKE_COST`: 0 for
            ``spikingbrain``, 0.3 for ``spikelm``).
        keep_dense: ``fnmatch`` patterns of qualified layer names left floating point.
        include: patterns a layer must match to be converted (default: every ``nn.Linear``).
        max_calib_rows: activation rows kept per layer (a seeded reservoir) for percentiles.
        seed: seed of the calibration reservoir.
        recipe: ``spikingbrain`` (the fields above as given) or ``spikelm``, which after
            conversion adds time steps where counts saturate and learns per-layer thresholds
            from the calibration data (:mod:`spikelm.recipes`).
        spike_weight: the ``spikelm`` recipe's trade-off: the weight of spikes per channel
            against the next-token KL divergence from the ANN in what it learns (larger: fewer
            spikes, lower fidelity; 0.04 keeps the demo model within +1% perplexity).
        spike_budget: instead of a fixed weight, the most spikes per channel the ``spikelm``
            recipe may spend (the weight then adapts while it learns, so that fidelity takes
            what the budget leaves; a budget no threshold can meet is an error); ``None``: the
            fixed ``spike_weight``.
    """

    coding: str = "bitwise_bidirectional"
    steps: int = 8
    k: float = 3.0
    threshold: ThresholdMode = "dynamic"
    rule: ThresholdRule = "mean_abs"
    percentile: float = 99.9
    weight_bits: int = 8
    group_size: int | None = 128
    smooth_alpha: float | None = None
    fisher_power: float | None = None
    spike_cost: float | None = None
    keep_dense: tuple[str, ...] = ("lm_head", "*.lm_head", "head")
    include: tuple[str, ...] = ("*",)
    max_calib_rows: int = 4096
    seed: int = 0
    recipe: Recipe = "spikingbrain"
    spike_weight: float = 0.04
    spike_budget: float | None = None

    def __post_init__(self) -> None:
        get_coder(self.coding)
        for name in FLOAT_FIELDS:  # an int past float64 (2**1024) or past int64 in torch: refuse
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                try:
                    object.__setattr__(self, name, float(value))
                except OverflowError:
                    raise ConfigError(
                        f"{name} is out of range: an integer of {len(str(abs(value)))} digits"
                    ) from None
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 62:
            raise ConfigError(f"steps must be an integer in [1, 62], got {self.steps!r}")
        if not (isinstance(self.k, (int, float)) and math.isfinite(self.k) and self.k > 0):
            raise ConfigError(f"k must be a positive number, got {self.k!r}")
        if self.threshold not in ("dynamic", "static_tensor", "static_channel"):
            raise ConfigError(
                f"threshold must be dynamic, static_tensor or static_channel, got {self.threshold!r}"
            )
        if self.rule not in ("mean_abs", "percentile", "max"):
            raise ConfigError(f"rule must be mean_abs, percentile or max, got {self.rule!r}")
        if not 0 < self.percentile <= 100:
            raise ConfigError(f"percentile must be in (0, 100], got {self.percentile}")
        if not isinstance(self.weight_bits, int) or not 2 <= self.weight_bits <= 8:
            raise ConfigError(f"weight_bits must be an integer in [2, 8], got {self.weight_bits!r}")
        if self.group_size is not None and (
            not isinstance(self.group_size, int) or self.group_size < 1
        ):
            raise ConfigError(
                f"group_size must be a positive integer or None, got {self.group_size!r}"
            )
        if self.smooth_alpha is not None and not 0 <= self.smooth_alpha <= 1:
            raise ConfigError(f"smooth_alpha must be in [0, 1] or None, got {self.smooth_alpha}")
        self._check_fisher()
        if self.recipe not in RECIPES:
            raise ConfigError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if self.spike_cost is None:
            object.__setattr__(self, "spike_cost", RECIPE_SPIKE_COST[self.recipe])
        if self.spike_budget is not None and not (
            isinstance(self.spike_budget, (int, float)) and 0 < self.spike_budget < math.inf
        ):
            raise ConfigError(f"spike_budget must be a positive number, got {self.spike_budget!r}")
        if self.spike_cost and get_coder(self.coding).decoding == "twos_complement":
            raise ConfigError(
                "error-aware rounding (spike_cost > 0) weighs the spikes of a count's magnitude; "
                f"{self.coding} codes the sign into the bits: use bitwise_bidirectional"
            )
        for name in ("spike_cost", "spike_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < math.inf):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        object.__setattr__(self, "keep_dense", tuple(self.keep_dense))
        object.__setattr__(self, "include", tuple(self.include))

    def _check_fisher(self) -> None:
        power = self.fisher_power
        if power is None:
            return
        if not (isinstance(power, (int, float)) and math.isfinite(power) and 0 < power <= 2):
            raise ConfigError(f"fisher_power must be in (0, 2] or None, got {power!r}")
        if self.threshold != "dynamic" and self.rule != "mean_abs":
            raise ConfigError(
                f"fisher_power sets static thresholds itself (c F^-p / k); it needs "
                f"rule='mean_abs', got rule={self.rule!r}"
            )

    @property
    def needs_calibration(self) -> bool:
        """Whether converting needs calibration data (SpikingBrain's dynamic rule needs none)."""
        return (
            self.threshold != "dynamic"
            or self.smooth_alpha is not None
            or self.fisher_power is not None
            or self.recipe != "spikingbrain"
        )

    @property
    def count_range(self) -> tuple[int, int]:
        """Counts the coding holds in ``steps`` steps; the neurons clamp to it."""
        return get_coder(self.coding).count_range(self.steps)

    def replace(self, **changes: Any) -> SpikeConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values; :data:`LATER_FIELDS` only when not at their defaults, so
        that a checkpoint of SpikingBrain's recipe stays readable by spikelm before recipes."""
        data = dataclasses.asdict(self)
        data["keep_dense"] = list(self.keep_dense)
        data["include"] = list(self.include)
        defaults = SpikeConfig()
        for name in LATER_FIELDS:
            if data[name] == getattr(defaults, name):
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpikeConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown SpikeConfig fields: {', '.join(unknown)}")
        values = dict(data)
        for key in ("keep_dense", "include"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


__all__ = ["SpikeConfig"]
