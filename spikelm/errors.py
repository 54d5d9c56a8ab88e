"""Exceptions spikelm raises for bad input.

Every error a user can cause derives from :class:`SpikelmError`; the CLI prints its message on one
line and exits non-zero (a traceback only with ``--debug``). Messages name the offending object
(a file path, a layer name, a value range) so that the one line is enough to act on.
"""

from __future__ import annotations


class SpikelmError(Exception):
    """Base class of every user-facing spikelm error."""


class CountRangeError(SpikelmError, ValueError):
    """A spike count does not fit the coding scheme's range for the given number of steps."""


class NonFiniteError(SpikelmError, ValueError):
    """NaN or infinite values reached a neuron, an encoder or a calibration observer."""


class SpikeFileError(SpikelmError, OSError):
    """A spike-train HDF5 file is missing, truncated, corrupt, of another version or incomplete."""


class ShapeError(SpikelmError, ValueError):
    """Tensor shapes that must agree do not."""


class ConfigError(SpikelmError, ValueError):
    """An invalid option or combination of options."""


class CheckpointError(SpikelmError, OSError):
    """A model checkpoint is missing, truncated or corrupt, or its config does not match its weights.

    Raised for source checkpoints (``spikelm.hf``) and spiking checkpoints (``spikelm.load``) alike;
    the message names the file and what is wrong with it.
    """


class UnsupportedModelError(SpikelmError, ValueError):
    """A checkpoint's ``model_type`` is not a supported family; the message lists the supported ones.

    The list comes from the adapters (``spikelm.adapters``).
    """


class MissingExtraError(ConfigError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def require_extra(extra: str, module: str, what: str) -> None:
    """Raise :class:`MissingExtraError` unless ``module`` imports: ``what`` needs the ``extra``."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(
            f'{what} needs the optional package {module!r}: pip install "spikelm[{extra}]"'
        )
