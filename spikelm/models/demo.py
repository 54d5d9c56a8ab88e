"""The built-in demo model: a ~1M-parameter byte-level :class:`HybridLM` and its text splits.

The model, its calibration split and its eval split ship in ``spikelm/models/demo/`` (written by
``examples/train_demo_model.py``; see the README there), so nothing depends on the local Python's
copy of the training text.
"""

from __future__ import annotations

from pathlib import Path

from spikelm.errors import SpikelmError
from spikelm.models.hybrid import HybridLM

DEMO_SOURCE = "spikelm:demo"
"""The source a conversion of the demo model records in its checkpoint's manifest."""


def demo_dir() -> Path:
    """Directory of the shipped demo files (``config.json``, ``model.safetensors``, texts)."""
    return Path(__file__).resolve().with_name("demo")


def load_demo_model() -> HybridLM:
    """The demo model on the CPU, in eval mode."""
    return HybridLM.from_pretrained(demo_dir()).eval()


def load_demo_texts() -> tuple[str, str]:
    """``(calib_text, eval_text)``: the shipped calibration and evaluation splits."""
    texts = []
    for name in ("calib.txt", "eval.txt"):
        path = demo_dir() / name
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise SpikelmError(f"{path}: cannot read demo text ({e})") from e
    return texts[0], texts[1]
