"""spikelm: turn language models into spiking neural networks, run, measure and export them.

``import spikelm`` stays light: torch, numpy, safetensors and tqdm. transformers, onnx, onnxruntime,
numba, h5py and matplotlib are imported by the modules that use them.
"""

from __future__ import annotations

from spikelm.calibrate import calibrate, prepare
from spikelm.checkpoint import load, save
from spikelm.config import SpikeConfig
from spikelm.convert import convert, spiking
from spikelm.encoders import CODERS, get_coder
from spikelm.errors import (
    CheckpointError,
    ConfigError,
    CountRangeError,
    NonFiniteError,
    ShapeError,
    SpikeFileError,
    SpikelmError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

__all__ = [
    "CODERS",
    "SpikeConfig",
    "calibrate",
    "convert",
    "load",
    "prepare",
    "save",
    "spiking",
    "CheckpointError",
    "ConfigError",
    "CountRangeError",
    "NonFiniteError",
    "ShapeError",
    "SpikeFileError",
    "SpikelmError",
    "UnsupportedModelError",
    "__version__",
    "get_coder",
]
