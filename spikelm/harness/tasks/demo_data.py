"""Data of spikelm's offline lm-eval tasks, built from the demo model's held-out split.

Both tasks are made on the fly from ``spikelm/models/demo/eval.txt`` (text that calibration and
training never saw), deterministically, so they need no download and no data files of their own:

* ``spikelm_choice``: a line's first :data:`CONTEXT` characters, and four continuations of
  :data:`CHOICE` characters: the line's own and the same span of three other lines.
* ``spikelm_text``: the split's paragraphs, scored as rolling log-likelihoods (perplexity).
"""

from __future__ import annotations

import random
from typing import Any

CONTEXT, CHOICE, ITEMS, CHOICES = 40, 16, 100, 4
MIN_PARAGRAPH = 80


def _eval_text() -> str:
    from spikelm.models import load_demo_texts

    return load_demo_texts()[1]


def _splits(rows: list[dict[str, Any]]) -> Any:
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def choice(**_: Any) -> Any:
    """The multiple-choice items (``context``, ``choices``, ``label``)."""
    lines = [line for line in _eval_text().splitlines() if len(line.strip()) >= CONTEXT + CHOICE]
    spans = [line[CONTEXT : CONTEXT + CHOICE] for line in lines]
    rng = random.Random(0)
    rows = []
    for index in rng.sample(range(len(lines)), min(ITEMS, len(lines))):
        others = sorted({s for s in spans if s != spans[index]})
        options = [spans[index], *rng.sample(others, CHOICES - 1)]
        rng.shuffle(options)
        rows.append(
            {"context": lines[index][:CONTEXT], "choices": options,
             "label": options.index(spans[index])}
        )  # fmt: skip
    return _splits(rows)


def text(**_: Any) -> Any:
    """The paragraphs (``text``) for rolling log-likelihood."""
    paragraphs = [p.strip("\n") for p in _eval_text().split("\n\n")]
    return _splits([{"text": p} for p in paragraphs if len(p) >= MIN_PARAGRAPH])
