"""What a step hands back per request: the sampled token appended, the finish decided (EOS,
length, stop strings), the text detokenised, and the visible delta held back while it may
still turn into a stop string or is half a UTF-8 character."""

from __future__ import annotations

import time

from ragkv.engine.sampling import TokenLogprob
from ragkv.engine.sequence import RequestOutput, Sequence
from ragkv.engine.tokenizer import Tokenizer


class OutputProcessor:
    """Turns sampled tokens into `RequestOutput` deltas for one engine (engine thread)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def append(self, seq: Sequence, token: int, logprob: TokenLogprob | None) -> str | None:
        """Append `token` to `seq`, update its text; the finish reason if it is done now."""
        if seq.first_token_s is None:
            seq.first_token_s = time.perf_counter()
        params = seq.request.params
        seq.token_ids.append(token)
        seq.output_ids.append(token)
        if logprob is not None:
            seq.logprobs.append(logprob)
        reason = None
        if token in self.tokenizer.stop_token_ids and not params.ignore_eos:
            reason = "stop"
        elif len(seq.output_ids) >= params.max_tokens:
            reason = "length"
        visible = seq.output_ids[:-1] if reason == "stop" else seq.output_ids
        seq.text = self.tokenizer.decode(visible)
        for stop in params.stop:
            index = seq.text.find(stop)
            if index >= 0:
                seq.text, reason = seq.text[:index], "stop"
        return reason

    def output(self, seq: Sequence) -> RequestOutput:
        """The delta since the last output of `seq` (totals filled in when it finished)."""
        finished = seq.finish_reason is not None
        holdback = 0 if finished else max((len(s) for s in seq.request.params.stop), default=1) - 1
        text = seq.text
        if not finished and text.endswith("\ufffd"):
            holdback = max(holdback, 1)  # half a UTF-8 character: wait for the rest
        end = max(seq.num_text_sent, len(text) - holdback)
        delta, seq.num_text_sent = text[seq.num_text_sent : end], end
        ttft = None
        if seq.first_token_s is not None:
            ttft = (seq.first_token_s - seq.arrival_s) * 1000
        return RequestOutput(
            request_id=seq.request_id,
            text=delta,
            token_ids=seq.output_ids[-1:],
            logprobs=seq.logprobs[-1:] if seq.request.params.logprobs else [],
            finished=finished,
            finish_reason=seq.finish_reason,
            prompt_tokens=seq.num_prompt,
            completion_tokens=len(seq.output_ids),
            cached_tokens=seq.num_cached_prompt,
            ttft_ms=ttft,
            chunk_tokens_reused=seq.chunk_tokens_reused,
            tokens_recomputed=seq.tokens_recomputed,
            selector=seq.selector,
        )
