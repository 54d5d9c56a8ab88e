"""The ``spikelm`` model of EleutherAI's lm-evaluation-harness: any spikelm-runnable model scored
on lm-eval's tasks.

For a request ``(context, continuation)`` tokenized as ``c`` and ``x`` (lm-eval's own split of the
joint encoding) and a forward pass giving next-token log-probabilities ``log p``:

    loglikelihood = sum_j log p(x_j | c, x_<j)        is_greedy = all_j argmax p(. | c, x_<j) == x_j

the input being the last ``max_length + 1`` tokens of ``c + x`` minus the final one, as lm-eval's
``hf`` model cuts it. Rolling log-likelihoods use lm-eval's disjoint windows; generation is greedy,
one full forward per new token, stopped at the end-of-text token or a stop string. Requests run in
batches of ``batch_size`` (longest first, padded on the right: every family here is causal, so
padding never reaches an earlier position).

A spiking checkpoint (``path=DIR``) runs on the spikelm backend named by ``backend``; its firing
statistics over the run accumulate in :attr:`SpikelmLM.stats` and are logged after each request
type. The ANN and W8A8 baselines of ``spikelm eval`` are plain modules passed as ``model=``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from torch import nn
from tqdm.auto import tqdm

from spikelm.errors import ConfigError
from spikelm.estimators import SpikeStats, summarize
from spikelm.fidelity import logits_of
from spikelm.layers import collect_stats, spiking_layers
from spikelm.workflow import decode_text

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 2048
"""Longest input when neither ``max_length`` nor the model's config sets one (as lm-eval's hf)."""
DEFAULT_MAX_GEN_TOKS = 256
LINE_FEED = 10
"""The byte tokenizer (no special tokens) separates documents with a line feed."""


@register_model("spikelm")
class SpikelmLM(TemplateLM):
    """lm-eval model over a spiking checkpoint (``path``) or any causal LM module (``model``)."""

    def __init__(
        self,
        path: str | None = None,
        *,
        backend: str = "auto",
        batch_size: int | str = 8,
        max_length: int | str | None = None,
        device: str | None = "cpu",
        model: nn.Module | None = None,
        tokenizer: Any = None,
        name: str = "spikelm",
        progress: bool = True,
        **ignored: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(k for k in ignored if k not in _HARNESS_KEYS)
        if unknown:
            raise ConfigError(f"spikelm model: unknown model_args {', '.join(unknown)}")
        if (path is None) == (model is None):
            raise ConfigError(
                "spikelm model: give exactly one of path=CHECKPOINT and a model object"
            )
        self._device = torch.device(device or "cpu")
        if self._device.type == "cuda" and not torch.cuda.is_available():
            log.warning(
                "%s: no GPU available (lm-eval's default device is cuda); using the CPU", name
            )
            self._device = torch.device("cpu")  # as lm-eval's hf model does
        if path is not None:
            from spikelm.checkpoint import load

            model, tokenizer = load(path, backend=backend, with_tokenizer=True)
            if not spiking_layers(model):
                raise ConfigError(f"{path}: not a spiking checkpoint (no spiking layers)")
        if tokenizer is None:
            raise ConfigError(f"{path or name}: no tokenizer, so task text cannot be encoded")
        self.model = model.to(self._device).eval()
        self.tokenizer = tokenizer
        self.name = name
        self.path, self.backend = path, backend
        self.progress = progress
        self.batch_size = _positive(batch_size, "batch_size", default=8)
        self._max_length = _positive(max_length, "max_length", default=_config_length(model))
        self.stats: dict[str, SpikeStats] = {}

    # -- what lm-eval asks of a TemplateLM -------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return LINE_FEED if eos is None else int(eos)

    @property
    def prefix_token_id(self) -> int:
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return self.eot_token_id if bos is None else int(bos)

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", type(self.tokenizer).__name__)

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **_: Any
    ) -> list[int]:
        if not hasattr(self.tokenizer, "convert_ids_to_tokens"):  # spikelm's ByteTokenizer
            return list(self.tokenizer.encode(string))
        extra = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        return list(self.tokenizer.encode(string, **extra))

    def tok_decode(self, ids: list[int]) -> str:
        return decode_text(self.tokenizer, ids)

    def _loglikelihood_tokens(
        self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False, **_: Any
    ) -> list[tuple[float, bool]]:
        ordered = Collator(requests, sort_fn=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])))
        results = []
        bar = tqdm(
            total=len(requests),
            desc=f"{self.name}: log-likelihoods",
            disable=self._quiet(disable_tqdm),
        )
        for chunk in ordered.get_batched(n=self.batch_size):
            inputs = [(c + x)[-(self.max_length + 1) :][:-1] for _, c, x in chunk]
            logprobs = self._logprobs(inputs)
            for row, (key, _, continuation) in enumerate(chunk):
                end = len(inputs[row])
                lp = logprobs[row, end - len(continuation) : end]
                target = torch.tensor(continuation, dtype=torch.long)
                answer = (
                    float(lp.gather(-1, target[:, None]).sum()),
                    bool((lp.argmax(-1) == target).all()),
                )
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, answer)
                results.append(answer)
                bar.update(1)
        bar.close()
        self._log_firing("log-likelihood")
        return ordered.get_original(results)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for index, (text,) in enumerate(request.args for request in requests):
            tokens = self.tok_encode(text)
            for window in get_rolling_token_windows(
                token_list=tokens,
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            ):
                windows.append((None, *make_disjoint_window(window)))
                owners.append(index)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, scores, strict=True):
            totals[owner] += logprob
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (request.args[0],), total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        outputs = []
        for request in tqdm(
            requests, desc=f"{self.name}: generating", disable=self._quiet(disable_tqdm)
        ):
            context, options = request.args
            text = self._greedy(context, dict(options))
            self.cache_hook.add_partial("generate_until", request.args, text)
            outputs.append(text)
        self._log_firing("generation")
        return outputs

    # -- forward passes --------------------------------------------------------------------------

    @torch.no_grad()
    def _logprobs(self, inputs: list[list[int]]) -> torch.Tensor:
        """Next-token log-probabilities ``[B, L, V]`` of right-padded inputs (pad: token 0; its
        spikes are not counted)."""
        width = max(len(ids) for ids in inputs)
        batch = torch.zeros(len(inputs), width, dtype=torch.long)
        real = torch.zeros(len(inputs), width, dtype=torch.bool)
        for row, ids in enumerate(inputs):
            batch[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            real[row, : len(ids)] = True
        with collect_stats(self.model, self.stats, real.flatten()):  # a running total
            logits = logits_of(self.model, batch.to(self._device))
        return F.log_softmax(logits, dim=-1).cpu()

    def _greedy(self, context: str, options: dict[str, Any]) -> str:
        until = options.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        new = int(options.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
        if options.pop("do_sample", False) or float(options.pop("temperature", 0.0) or 0.0) > 0:
            raise ConfigError(f"{self.name}: generation is greedy; sampling was asked for")
        ids = self.tok_encode(context)[-max(1, self.max_length - new) :]
        generated: list[int] = []
        text = ""
        for _ in range(new):
            token = int(self._logprobs([ids + generated])[0, -1].argmax())
            if token == self.eot_token_id:
                break
            generated.append(token)
            text = self.tok_decode(generated)
            if any(stop in text for stop in until):
                break
        for stop in until:
            text = text.split(stop)[0]
        return text

    def _quiet(self, disable_tqdm: bool) -> bool | None:
        """tqdm's ``disable``: off when asked, else automatic (no bar without a terminal)."""
        return True if disable_tqdm or not self.progress else None

    # -- firing statistics -----------------------------------------------------------------------

    def firing(self) -> SpikeStats | None:
        """All layers' statistics over the run so far, pooled (``None`` for a dense model)."""
        return summarize(self.stats.values()) if self.stats else None

    def get_model_info(self) -> dict[str, Any]:
        """What lm-eval writes into its results' ``config`` after a run: the checkpoint, the
        backend and the run's firing statistics."""
        info: dict[str, Any] = {"spikelm_model": self.name, "spikelm_path": self.path,
                                "spikelm_backend": self.backend if self.path else None}  # fmt: skip
        total = self.firing()
        if total is not None:
            info["spikelm_firing"] = {
                "spikes_per_channel": total.spikes_per_channel,
                "firing_rate": total.firing_rate,
                "silent_share": total.silent_share,
                "clamped_share": total.clipped_share,
                "events": total.events,
                "token_channels": total.slots,
            }
        return info

    def _log_firing(self, what: str) -> None:
        total = self.firing()
        if total is not None:
            log.info(
                "%s firing after %s: %.3f spikes per channel, sparsity %.3f, clamped share %.4f%%",
                self.name, what, total.spikes_per_channel, total.sparsity,
                100 * total.clipped_share,
            )  # fmt: skip


_HARNESS_KEYS = {"max_batch_size", "trust_remote_code", "dtype"}
"""Keys lm-eval's own command line may add to every model's arguments; the model ignores them."""


def _positive(value: int | str | None, what: str, *, default: int) -> int:
    if value is None or value == "auto":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ConfigError(f"spikelm model: {what} must be a positive integer, got {value!r}")
    return number


def _config_length(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_MAX_LENGTH
