"""After the forward: each sequence's next token (grammar mask, sampling on the CPU), appended
and detokenised, finished sequences stored back and freed. A failure while handling one
sequence fails that request alone (an output carrying the error, its pages freed); the other
sequences of the step go on."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ragkv.engine.grammar import GrammarEngine
from ragkv.engine.load import DrainRate
from ragkv.engine.output import OutputProcessor
from ragkv.engine.sampling import TokenLogprob, sample
from ragkv.engine.scheduler import ScheduledBatch, Scheduler
from ragkv.engine.sequence import RequestOutput, Sequence

log = logging.getLogger("ragkv.engine")

# (sequence, stage) -> None, or raises: a fault-injection point at "forward", "mask", "sample"
# and "detokenize" (tests use it to poison one request; no hook in production).
FaultHook = Callable[[Sequence, str], None]


@dataclass
class EngineStats:
    """Counters of the prefix level since start."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    failed_requests: int = 0
    steps: int = 0  # steps that ran a batch
    step_tokens: int = 0  # tokens those batches computed


class Postprocessor:
    """Samples, appends and finishes sequences for one engine (engine thread)."""

    def __init__(
        self,
        outputs: OutputProcessor,
        grammar: GrammarEngine,
        scheduler: Scheduler,
        drain: DrainRate | None = None,
    ) -> None:
        self.outputs = outputs
        self.grammar = grammar
        self.scheduler = scheduler
        self.stats = EngineStats()
        self.drain = drain if drain is not None else DrainRate()
        self.fault_hook: FaultHook | None = None

    def hook(self, seq: Sequence, stage: str) -> None:
        """Run the fault hook, if any, for `seq` at `stage`."""
        if self.fault_hook is not None:
            self.fault_hook(seq, stage)

    def _mask(self, logits: torch.Tensor, batch: ScheduledBatch) -> bool:
        """Apply the grammar masks of the constrained rows at once (before `num_computed`
        moves); False when that failed (one bad matcher must not fail the whole batch)."""
        try:
            for seq, _ in batch:
                if seq.matcher is not None:
                    self.hook(seq, "mask")
            self.grammar.mask_batch(logits, batch)
            return True
        except Exception:
            log.warning("the batched grammar mask failed; masking sequence by sequence")
            return False

    def batch(self, batch: ScheduledBatch, logits: torch.Tensor) -> list[RequestOutput]:
        """Outputs of a step's batch from its logits `[R, vocab]` (a row per sequence)."""
        # Sampling runs on the CPU: one copy per step, and per-request seeded generators
        # (CPU generators) draw the same tokens whatever device the model runs on.
        logits = logits.cpu()
        masked = self._mask(logits, batch)
        outputs: list[RequestOutput] = []
        for row, (seq, num_tokens) in enumerate(batch):
            try:
                if not masked:  # the batched mask failed: mask row by row, failing alone
                    self.hook(seq, "mask")
                    self.grammar.mask_one(logits[row], seq)
                output = self._advance(seq, num_tokens, logits[row])
            except Exception as exc:
                output = self.fail(seq, exc)
            if output is not None:
                outputs.append(output)
        return outputs

    def _advance(self, seq: Sequence, num_tokens: int, logits: torch.Tensor):
        was_prefill = seq.in_prefill
        seq.num_computed += num_tokens
        if seq.num_computed < len(seq.token_ids):
            return None  # a prefill chunk; the prompt is not done yet
        if was_prefill and not seq.output_ids:
            self.scheduler.store_prefix(seq)  # share the prompt's KV with later requests
        self.hook(seq, "sample")
        token, logprob = sample(logits, seq.request.params, seq.generator)
        return self._append_token(seq, token, logprob)

    def first_token(self, seq: Sequence, logits: torch.Tensor) -> RequestOutput:
        """After a blended prefill: store-back (the same prompt again is a prefix hit), then
        the first token from `logits: [vocab]`."""
        try:
            self.scheduler.store_prefix(seq)
            logits = logits.cpu()
            self.grammar.mask_one(logits, seq)
            self.hook(seq, "sample")
            token, logprob = sample(logits, seq.request.params, seq.generator)
            return self._append_token(seq, token, logprob)
        except Exception as exc:
            return self.fail(seq, exc)

    def _append_token(
        self, seq: Sequence, token: int, logprob: TokenLogprob | None
    ) -> RequestOutput:
        if seq.matcher is not None:
            logprob = self.grammar.drop_masked(logprob)
        self.hook(seq, "detokenize")
        reason = self.outputs.append(seq, token, logprob)
        if seq.matcher is not None and self.grammar.accept(seq.matcher, token):
            reason = reason or "stop"  # the grammar is complete (its stop token taken)
        if reason is not None:
            seq.finish_reason = reason
            seq.matcher = None
            self.scheduler.finish(seq)
            self._count(seq)
        return self.outputs.output(seq)

    def fail(self, seq: Sequence, error: BaseException) -> RequestOutput:
        """End `seq` on `error`: its pages freed, an output carrying the error (the caller
        fails that request with it; the other sequences are untouched)."""
        log.error("request %s failed: %r", seq.request_id, error, exc_info=error)
        self.scheduler.abort(seq.request_id)
        seq.matcher = None
        seq.finish_reason = "error"
        self.stats.failed_requests += 1
        self.drain.finished()
        return RequestOutput(
            request_id=seq.request_id,
            text="",
            token_ids=[],
            logprobs=[],
            finished=True,
            finish_reason="error",
            prompt_tokens=seq.num_prompt,
            completion_tokens=len(seq.output_ids),
            cached_tokens=seq.num_cached_prompt,
            ttft_ms=None,
            error=f"generation failed for this request: {error}",
        )

    def _count(self, seq: Sequence) -> None:
        self.drain.finished()
        self.stats.requests += 1
        self.stats.prompt_tokens += seq.num_prompt
        self.stats.cached_tokens += seq.num_cached_prompt
        self.stats.generated_tokens += len(seq.output_ids)
