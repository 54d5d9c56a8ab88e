"""Spike coding: exact coders for integer counts, and classic stochastic input encoders.

``CODERS`` maps each exact scheme's name to an instance; ``get_coder(name)`` looks one up.
"""

from __future__ import annotations

from spikelm.encoders.base import SpikeCoder
from spikelm.encoders.binary import BinaryCoder
from spikelm.encoders.bitwise import (
    BitwiseBidirectionalCoder,
    BitwiseCoder,
    BitwiseTwosComplementCoder,
)
from spikelm.encoders.stochastic import DeltaCoder, LatencyCoder, RateCoder
from spikelm.encoders.ternary import TernaryCoder
from spikelm.errors import ConfigError

CODERS: dict[str, SpikeCoder] = {
    coder.name: coder
    for coder in (
        BinaryCoder(),
        TernaryCoder(),
        BitwiseCoder(),
        BitwiseBidirectionalCoder(),
        BitwiseTwosComplementCoder(),
    )
}


def get_coder(name: str | SpikeCoder) -> SpikeCoder:
    """The exact coder registered as ``name`` (a coder instance is returned unchanged)."""
    if isinstance(name, SpikeCoder):
        return name
    try:
        return CODERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown spike coding {name!r}; choose one of: {', '.join(CODERS)}"
        ) from None


__all__ = [
    "CODERS",
    "BinaryCoder",
    "BitwiseBidirectionalCoder",
    "BitwiseCoder",
    "BitwiseTwosComplementCoder",
    "DeltaCoder",
    "LatencyCoder",
    "RateCoder",
    "SpikeCoder",
    "TernaryCoder",
    "get_coder",
]
