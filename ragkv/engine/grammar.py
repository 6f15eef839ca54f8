"""Grammar-constrained decoding with xgrammar: a request's `Constraint` compiled once (cached),
a matcher per sequence, and the step's mask applied in place to the rows of constrained
sequences only, so unconstrained rows in the same batch sample exactly as they would alone."""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable

import torch
import xgrammar as xgr

from ragkv.engine.sampling import TokenLogprob
from ragkv.engine.sequence import Constraint, Sequence
from ragkv.engine.tokenizer import Tokenizer
from ragkv.errors import InvalidRequest

log = logging.getLogger("ragkv.engine")

KINDS = ("json_schema", "json_object", "regex", "ebnf")
MAX_CACHED_GRAMMARS = 128
# xgrammar prefixes its messages with "[12:00:00] /project/cpp/file.cc:123: " and CHECK noise.
_NOISE = re.compile(r"\[[\d:]+\] \S+:\d+: |Check failed: \(.*?\) is false: ")


class GrammarEngine:
    """Compiles constraints for one model and masks its logits.

    The xgrammar tokenizer info and compiler are built on first use (about 0.2 s for a 49k
    vocabulary). `matcher` may be called from any thread; `mask_*` and
    `accept` from the engine thread. `vocab_size` is the logits width (it may exceed the
    tokenizer's vocabulary; the extra ids are never allowed). A complete grammar allows only
    the tokenizer's `stop_token_ids` (all of them, not just the HF EOS): the tokens the engine
    stops on.
    """

    def __init__(self, tokenizer: Tokenizer, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._compiler: xgr.GrammarCompiler | None = None
        self._cache: OrderedDict[Constraint, xgr.CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()

    def matcher(self, constraint: Constraint | None) -> xgr.GrammarMatcher | None:
        """A fresh matcher for one sequence (None without a constraint). Raises
        `InvalidRequest` (param `response_format`) for an invalid schema, regex or grammar."""
        if constraint is None:
            return None
        return xgr.GrammarMatcher(self._compiled(constraint))

    def mask_batch(self, logits: torch.Tensor, batch: Iterable[tuple[Sequence, int]]) -> None:
        """Mask in place the rows of `logits: [len(batch), vocab]` (CPU) whose sequence samples
        a token this step under a grammar; `batch` is the step's `(sequence, num_new_tokens)`
        before `num_computed` moves. Other rows are not touched."""
        rows = [
            (row, seq.matcher)
            for row, (seq, num_tokens) in enumerate(batch)
            if seq.matcher is not None and seq.num_computed + num_tokens >= len(seq.token_ids)
        ]
        self._mask_rows(logits, rows)

    def mask_one(self, logits: torch.Tensor, seq: Sequence) -> None:
        """Mask in place `logits: [vocab]` (CPU) of one sequence about to sample (no-op
        without a grammar)."""
        if seq.matcher is not None:
            self._mask_rows(logits.unsqueeze(0), [(0, seq.matcher)])

    def accept(self, matcher: xgr.GrammarMatcher, token: int) -> bool:
        """Advance `matcher` by the sampled `token`; True when the sequence must end (the
        grammar is complete and its stop token taken, or the token was refused)."""
        if not matcher.accept_token(token):
            # Only reachable through a bug: every sampled token was allowed by the mask.
            log.error("the grammar refused sampled token %d; ending the sequence", token)
            return True
        return matcher.is_terminated()

    @staticmethod
    def drop_masked(logprob: TokenLogprob | None) -> TokenLogprob | None:
        """`logprob` without the alternatives the grammar ruled out (-inf; JSON has no -inf).

        A constrained token's logprobs come from the masked distribution it was drawn from."""
        if logprob is not None:
            logprob.top = [(token, value) for token, value in logprob.top if math.isfinite(value)]
        return logprob

    def _mask_rows(self, logits: torch.Tensor, rows: list[tuple[int, xgr.GrammarMatcher]]) -> None:
        if not rows:
            return
        # apply_token_bitmask_inplace pairs logits row i with bitmask row i.
        bitmask = xgr.allocate_token_bitmask(logits.shape[0], self.vocab_size)
        indices = [row for row, matcher in rows if matcher.fill_next_token_bitmask(bitmask, row)]
        if indices:
            xgr.apply_token_bitmask_inplace(
                logits, bitmask, vocab_size=self.vocab_size, indices=indices
            )

    def _compiled(self, constraint: Constraint) -> xgr.CompiledGrammar:
        with self._lock:
            compiled = self._cache.get(constraint)
            if compiled is not None:
                self._cache.move_to_end(constraint)
                return compiled
            compiled = self._compile(constraint)
            self._cache[constraint] = compiled
            if len(self._cache) > MAX_CACHED_GRAMMARS:
                self._cache.popitem(last=False)
            return compiled

    def _compile(self, constraint: Constraint) -> xgr.CompiledGrammar:
        if constraint.kind not in KINDS:
            raise InvalidRequest(
                f"unknown constraint kind {constraint.kind!r}; use one of {', '.join(KINDS)}",
                param="response_format",
            )
        compiler = self._get_compiler()
        try:
            # Compact JSON (no free whitespace): small models otherwise loop on blank lines.
            if constraint.kind == "json_schema":
                return compiler.compile_json_schema(
                    constraint.value, any_whitespace=False, strict_mode=constraint.strict
                )
            if constraint.kind == "json_object":
                return compiler.compile_json_schema(
                    '{"type": "object"}', any_whitespace=False, strict_mode=False
                )
            if constraint.kind == "regex":
                return compiler.compile_regex(constraint.value)
            return compiler.compile_grammar(constraint.value, root_rule_name="root")
        except (RuntimeError, ValueError, TypeError) as exc:
            detail = _NOISE.sub("", str(exc)).strip()
            raise InvalidRequest(
                f"invalid {constraint.kind} in response_format: {detail}",
                param="response_format",
            ) from exc

    def _get_compiler(self) -> xgr.GrammarCompiler:
        if self._compiler is None:
            started = time.perf_counter()
            info = xgr.TokenizerInfo.from_huggingface(
                self.tokenizer.hf,
                vocab_size=self.vocab_size,
                stop_token_ids=sorted(self.tokenizer.stop_token_ids),
            )
            # Our LRU above is the bounded cache; xgrammar's own one is unbounded by default.
            self._compiler = xgr.GrammarCompiler(
                info, max_threads=min(8, os.cpu_count() or 1), cache_enabled=False
            )
            log.info("grammar compiler ready in %.2f s", time.perf_counter() - started)
        return self._compiler
