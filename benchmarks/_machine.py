"""A header describing the machine a benchmark ran on (shared by the bench_* scripts)."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import torch


def describe_machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next(
                line.split(":", 1)[1].strip() for line in info if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f"{pages / 2**30:.0f} GiB RAM"
    except (ValueError, OSError):
        memory = "RAM unknown"
    return (
        f"# {datetime.date.today().isoformat()} | {cpu} | {os.cpu_count()} cores | {memory} | "
        f"Python {platform.python_version()} | torch {torch.__version__} "
        f"({torch.get_num_threads()} threads) | BLAS {blas()}"
    )


def blas() -> str:
    """The BLAS torch was built with (``BLAS_INFO`` in ``torch.__config__.show()``)."""
    for field in torch.__config__.show().replace(",", "\n").splitlines():
        if "BLAS_INFO=" in field:
            return field.split("=", 1)[1].strip()
    return "unknown"


def emit(text: str, out: str | os.PathLike[str] | None) -> None:
    """Print a benchmark's report and, with ``out``, write it there too (one trailing newline)."""
    text = text.rstrip("\n") + "\n"
    print(text, end="")
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
