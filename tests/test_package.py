"""Package-level promises: a light import, a working entry point, one-line CLI errors."""

from __future__ import annotations

import subprocess
import sys

import spikelm
from spikelm.cli import main

HEAVY = ("transformers", "onnx", "onnxruntime", "matplotlib", "numba", "h5py", "nir")


def test_import_spikelm_loads_no_heavy_library() -> None:
    code = (
        "import sys, spikelm, spikelm.encoders, spikelm.neurons; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_version_and_help(capsys) -> None:
    for flag in ("--version", "--help"):
        try:
            main([flag])
        except SystemExit as done:
            assert done.code == 0
    out = capsys.readouterr().out
    assert spikelm.__version__ in out
    assert "usage: spikelm" in out


def test_console_script_reports_errors_in_one_line(tmp_path) -> None:
    missing = tmp_path / "nope.h5"
    run = subprocess.run(
        [sys.executable, "-m", "spikelm", "info", str(missing)], capture_output=True, text=True
    )
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0]
    assert "Traceback" not in run.stderr
    debug = subprocess.run(
        [sys.executable, "-m", "spikelm", "--debug", "info", str(missing)],
        capture_output=True,
        text=True,
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr
