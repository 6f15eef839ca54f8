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
        searched_from = len(seq.text)
        visible = len(seq.output_ids) - 1 if reason == "stop" else len(seq.output_ids)
        self._detokenize(seq, visible, final=reason is not None)
        if params.stop:
            longest = max(len(stop) for stop in params.stop)
            start = max(0, searched_from - longest + 1)  # a stop may straddle the new text
            found = [i for i in (seq.text.find(stop, start) for stop in params.stop) if i >= 0]
            if found:
                seq.text, reason = seq.text[: min(found)], "stop"
        return reason

    def _detokenize(self, seq: Sequence, visible: int, final: bool) -> None:
        """Extend `seq.text` to the text of `output_ids[:visible]`, decoding only a short
        window (the text of the whole output is never decoded again per token). While the
        window ends in half a UTF-8 character, nothing is added until the rest arrives (or
        the sequence ends, which keeps the replacement character as a full decode would)."""
        if visible <= seq.read_offset:
            return
        ids = seq.output_ids
        before = self.tokenizer.decode(ids[seq.prefix_offset : seq.read_offset])
        window = self.tokenizer.decode(ids[seq.prefix_offset : visible])
        if window.endswith("\ufffd") and not final:
            return
        if window.startswith(before):
            seq.text += window[len(before) :]
        else:  # the tokenizer rewrote the joint (space clean-up): decode the whole output once
            seq.text = self.tokenizer.decode(ids[:visible])
        seq.prefix_offset, seq.read_offset = seq.read_offset, visible

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
            approx_tokens_reused=seq.num_approx_cached,
        )
