"""lm-eval's command line with the ``spikelm`` model registered: ``python -m spikelm.harness run
--model spikelm --model_args path=CKPT,backend=numba --tasks spikelm_choice`` takes every argument
``lm-eval`` takes. spikelm's offline tasks are on the task path unless ``--include_path`` names
another directory (lm-eval's command line takes one)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Run lm-eval's CLI on ``argv`` (default ``sys.argv[1:]``)."""
    from spikelm.errors import require_extra

    require_extra("eval", "lm_eval", "python -m spikelm.harness")
    from lm_eval.__main__ import cli_evaluate

    import spikelm.harness.lm  # noqa: F401  (registers the model)
    from spikelm.harness.evaluate import TASKS_DIR

    args = list(sys.argv[1:] if argv is None else argv)
    if (args[:1] == ["run"] or args[:1] and args[0].startswith("--")) and not any(
        a.startswith("--include_path") for a in args
    ):
        args += ["--include_path", str(TASKS_DIR)]
    sys.argv = ["lm-eval", *args]
    cli_evaluate()


if __name__ == "__main__":
    main()
