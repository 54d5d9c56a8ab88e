"""spikelm in EleutherAI's lm-evaluation-harness (the ``eval`` extra).

* :mod:`spikelm.harness.lm`: the ``spikelm`` lm-eval model (registered on import);
* :mod:`spikelm.harness.evaluate`: ``spikelm eval``, the spiking model beside its ANN and W8A8
  baselines on the same tasks;
* ``tasks/``: offline tasks on the demo model's held-out text (``spikelm_choice``,
  ``spikelm_text``), on the task path of ``spikelm eval`` and ``python -m spikelm.harness``;
* ``python -m spikelm.harness`` (or ``spikelm-lm-eval``): lm-eval's own command line with the
  ``spikelm`` model registered (lm-eval 0.4 has no plugin hook for models).
"""
