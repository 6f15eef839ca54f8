"""Continuous batching with chunked prefill over the paged pool and the radix prefix cache.

Each step: decodes first; then prefills, running and waiting together, fewest tokens left to
compute first (a waiting prompt's longest cached prefix counts as computed; arrival order when
the queue is long), while the token budget and pages last. While sequences decode, the step's
prefill tokens are bounded (`prefill_tokens_while_decoding`): a step's time is the time
between two tokens of every stream. A step that brings a prompt to its first token takes no
partial chunk of a longer one (that would delay the first token by its own time), except
right after a step that held one back, so that long prompts advance at least every other
step. A running sequence short of pages
takes them from tool pins, then by preempting the newest; a waiting one that does not fit
stops admission for the step.
"""

from __future__ import annotations

from collections import deque

from ragkv.cache.kv.radix import RadixCache
from ragkv.engine.kv_pool import KVPool
from ragkv.engine.sequence import KVReuse, SeqStatus, Sequence
from ragkv.engine.tool_pins import ToolPins
from ragkv.settings import EngineSettings

ScheduledBatch = list[tuple[Sequence, int]]
# Prefill tokens per step while sequences decode on a CPU (`prefill_tokens_while_decoding`
# 0). On 2 cores with 4 streams decoding and a 1,536-token prompt arriving, a 512-token step
# held every stream 1.2 s between tokens and a short prompt arriving then waited 1.3 s for its
# first token; 256 halved both (0.66 s, 0.62 s) for 14% more TTFT of the long prompt (4.8 vs
# 4.2 s); 128 cut them to 0.47 s / 0.38 s for 42% more (benchmarks/bench_step_budget.py).
CPU_PREFILL_TOKENS_WHILE_DECODING = 256


def prefill_while_decoding(settings: EngineSettings, device_type: str) -> int | None:
    """Prefill tokens per step while sequences decode: the setting, or by default
    `CPU_PREFILL_TOKENS_WHILE_DECODING` on a CPU and no bound (None) on an accelerator,
    where a `max_batch_tokens` step takes milliseconds."""
    if settings.prefill_tokens_while_decoding:
        return settings.prefill_tokens_while_decoding
    return CPU_PREFILL_TOKENS_WHILE_DECODING if device_type == "cpu" else None


class Scheduler:
    """Decides which sequences run each step and how many tokens each adds."""

    def __init__(
        self,
        settings: EngineSettings,
        pool: KVPool,
        radix: RadixCache,
        prefill_tokens_while_decoding: int | None = None,
    ) -> None:
        self.settings = settings
        # Prefill tokens a step takes while sequences decode (None: `max_batch_tokens`).
        self.prefill_tokens_while_decoding = prefill_tokens_while_decoding
        self.step_budget = settings.max_batch_tokens  # the budget of the last `schedule`
        # Tokens the blends in flight may take in the last scheduled step (`schedule`).
        self.blend_budget = settings.max_batch_tokens
        self.held_back = False  # the last step held a partial prefill chunk back
        self.pool = pool
        self.radix = radix
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        # (namespace, session id) -> the token path pinned for that agent session
        self.session_pins: dict[tuple[str, str], list[int]] = {}
        self.tool_pins = ToolPins(
            radix,
            pool.num_pages,
            pool.page_size,
            settings.tool_pin_max_share,
            settings.tool_pin_on_demand,
        )

    def has_work(self) -> bool:
        """Any sequence waiting or running."""
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence (the engine checks the queue bound before)."""
        self.waiting.append(seq)

    def abort(self, request_id: str) -> Sequence | None:
        """Remove a request wherever it is and free what it holds."""
        for seq in list(self.waiting):
            if seq.request_id == request_id:
                self.waiting.remove(seq)
                return seq
        for seq in self.running:
            if seq.request_id == request_id:
                self.running.remove(seq)
                self.release(seq)
                return seq
        return None

    def schedule(self) -> ScheduledBatch:
        """Pick this step's work: `[(sequence, num_new_tokens)]`, sequences in running state.

        Decodes go first. Then prefills, running and waiting together, fewest tokens left to
        compute first: an agent back from a tool whose conversation is cached (a few dozen
        new tokens) is not queued behind a 2,000-token prompt. A long prefill still gets
        whatever budget the shorter ones leave, every step, and its own remainder only
        shrinks, so it moves up as it runs. With decodes in the step, the prefills share
        `prefill_tokens_while_decoding` tokens (a returning agent then also waits less for
        the step in flight). Once a prefill in the step completes its prompt, a longer one's
        partial chunk waits for the next step (not two steps in a row), and blends get only
        their least share: the first token does not wait for other prompts' work.
        """
        budget = self.settings.max_batch_tokens
        batch: ScheduledBatch = []
        decodes = sorted((s for s in self.running if not s.in_prefill), key=lambda s: s.arrival_s)
        if decodes and self.prefill_tokens_while_decoding is not None:
            budget = min(budget, len(decodes) + self.prefill_tokens_while_decoding)
        self.step_budget = budget
        preempted = False
        for seq in decodes:
            budget, preempted = self._run(seq, budget, batch, preempted)
        admitting, completes, held_back = not preempted, False, False
        for seq, waiting, left in self._prefill_order():
            if budget <= 0:
                break
            if completes and left > budget and not self.held_back:
                held_back = True  # a partial chunk would delay the first token in this step
                continue
            scheduled = len(batch)
            if not waiting:
                budget, preempted = self._run(seq, budget, batch, preempted)
            elif admitting and not preempted:
                budget, admitting = self._admit(seq, batch, budget)
            if len(batch) > scheduled and batch[-1][1] == batch[-1][0].num_uncomputed:
                completes = True
        self.held_back = held_back
        self.blend_budget = (
            self.step_budget // 4 if held_back else max(budget, self.step_budget // 4)
        )
        return batch

    def _run(
        self, seq: Sequence, budget: int, batch: ScheduledBatch, preempted: bool
    ) -> tuple[int, bool]:
        """Give a running sequence its tokens this step, taking pages from tool pins and then
        preempting the newest running sequences if the pool is short; (budget, preempted)."""
        if seq.status is not SeqStatus.RUNNING or budget <= 0:
            return budget, preempted
        num_tokens = min(seq.num_uncomputed, budget)
        while not self._reserve(seq, num_tokens, take_pins=True):
            victim = self._newest_running(exclude=[s for s, _ in batch])
            self._preempt(victim)
            preempted = True
            if victim is seq:
                break
        if seq.status is SeqStatus.RUNNING:
            batch.append((seq, num_tokens))
            budget -= num_tokens
        return budget, preempted

    def admit_blend(self) -> Sequence | None:
        """Admit the first waiting sequence that wants a blended prefill, with pages for its
        whole prompt, as BLENDING (steps skip it until the engine marks it RUNNING); None if
        there is none or it does not fit yet.

        Its longest cached prefix is attached first: when that already reaches past the
        last chunk (the same RAG prompt again), it is left to the plain path.
        """
        if len(self.running) >= self.settings.max_num_seqs:
            return None
        for seq in self.waiting:
            if not seq.blend_pending:
                continue
            self._attach_prefix(seq)
            last_chunk_end = max(span.end for span in seq.request.chunk_spans)
            if seq.num_computed >= last_chunk_end or not self._reserve(seq, seq.num_uncomputed):
                seq.blend_pending = seq.num_computed < last_chunk_end
                self.release(seq)
                if seq.blend_pending:
                    return None  # no pages yet: wait for decodes to finish
                continue
            self._hit_tool_pin(seq)
            self.waiting.remove(seq)
            seq.status = SeqStatus.BLENDING
            self.running.append(seq)
            return seq
        return None

    def _admit(self, seq: Sequence, batch: ScheduledBatch, budget: int) -> tuple[int, bool]:
        """Start a waiting sequence with its cached prefix; (budget, whether admission goes
        on: not once one does not fit, so later arrivals never overtake it for pages)."""
        if len(self.running) >= self.settings.max_num_seqs:
            return budget, False
        if seq.blend_pending:
            return budget, True
        self._attach_prefix(seq)
        num_tokens = min(seq.num_uncomputed, budget)
        if not self._reserve(seq, num_tokens):
            self.release(seq)  # its tool pin, if any, holds on until it is admitted
            return budget, False
        self._hit_tool_pin(seq)
        self.waiting.remove(seq)
        seq.status = SeqStatus.RUNNING
        self.running.append(seq)
        batch.append((seq, num_tokens))
        return budget - num_tokens, True

    def _prefill_order(self) -> list[tuple[Sequence, bool, int]]:
        """Running prefills and waiting sequences, `(seq, waiting, tokens left)`, fewest
        tokens left to compute first (a waiting one counts its longest cached prefix as
        computed), ties by arrival; with more than `lpm_queue_limit` waiting, the queue stays
        in arrival order (matching each prompt against the tree every step would cost more
        than it saves) and a waiting prompt counts all its tokens."""

        def fewest_left(item: tuple[Sequence, bool, int]) -> tuple[int, float]:
            return item[2], item[0].arrival_s

        running = [(s, False, s.num_uncomputed) for s in self.running if s.in_prefill]
        if len(self.waiting) > self.settings.lpm_queue_limit:
            running.sort(key=fewest_left)
            return running + [(s, True, len(s.token_ids)) for s in self.waiting]
        candidates = running + [(s, True, self._uncached(s)) for s in self.waiting]
        return sorted(candidates, key=fewest_left)

    def _uncached(self, seq: Sequence) -> int:
        """Tokens of a waiting prompt past its longest cached prefix."""
        if not seq.request.use_prefix_cache:
            return len(seq.token_ids)
        return (
            len(seq.token_ids)
            - self.radix.match_prefix(seq.namespace, seq.token_ids[:-1]).num_tokens
        )

    def _attach_prefix(self, seq: Sequence) -> None:
        """Point a waiting sequence at its longest cached prefix (at least one token left)."""
        if not seq.request.use_prefix_cache:
            return
        # `prefix` asks for exact reuse: blended (approximate) pages are not served to it.
        exact_only = seq.request.kv_reuse is KVReuse.PREFIX
        match = self.radix.match_prefix(seq.namespace, seq.token_ids[:-1], exact_only)
        self.pool.incref(match.page_ids)
        self.radix.lock(match.node)
        seq.locked_node = match.node
        seq.pages = list(match.page_ids)
        seq.num_computed = match.num_tokens
        seq.approx_from = match.approx_from
        if seq.num_preemptions == 0:
            seq.num_cached_prompt = match.num_tokens
            approx = 0 if match.approx_from is None else match.num_tokens - match.approx_from
            seq.num_approx_cached = approx

    def _hit_tool_pin(self, seq: Sequence) -> None:
        """`seq` is admitted: the tool pin of the conversation it continues is released (its
        own lock keeps the pages now). Not before: a follow-up that waits for pages keeps its
        pin, or other prompts' reservations would evict the conversation it came back for."""
        if seq.request.use_prefix_cache:
            self.tool_pins.on_admit(seq.namespace, seq.token_ids)

    def _reserve(self, seq: Sequence, num_tokens: int, take_pins: bool = False) -> bool:
        """Make sure `seq` has pages for `num_tokens` more tokens, evicting cache if needed;
        with `take_pins` (a running sequence) tool pins are given up before it fails."""
        needed = self.pool.pages_for(seq.num_computed + num_tokens) - len(seq.pages)
        if needed <= 0:
            return True
        self._evict_until(needed, include_pinned=False)
        pins = self.tool_pins
        while (
            take_pins
            and self.pool.num_free < needed
            and pins.yield_pages(needed - self.pool.num_free)
        ):
            self._evict_until(needed, include_pinned=False)
        alone = all(other is seq for other in self.running)
        if self.pool.num_free < needed and alone:
            while pins.yield_pages(pins.max_pages):  # counted, before the tree drops every pin
                pass
            self._evict_until(needed, include_pinned=True)  # pins must never deadlock the pool
        if self.pool.num_free < needed:
            return False
        seq.pages.extend(self.pool.alloc(needed))
        return True

    def _evict_until(self, needed: int, include_pinned: bool) -> None:
        while self.pool.num_free < needed:
            if include_pinned:
                self.radix.unpin_all()
            # No pin on demand while the pool must not deadlock (every pin just went).
            freed = self.radix.evict(needed - self.pool.num_free, rescue=not include_pinned)
            if not freed:
                return
            self.pool.decref(freed)

    def _newest_running(self, exclude: list[Sequence]) -> Sequence:
        # A blend in flight is never the victim: its work so far would be lost.
        candidates = [
            s
            for s in self.running
            if s.status is SeqStatus.RUNNING and all(s is not e for e in exclude)
        ]
        return max(candidates, key=lambda s: s.arrival_s)

    def _preempt(self, seq: Sequence) -> None:
        """Free a running sequence's pages; it waits again and recomputes (prefix hits help)."""
        self.running.remove(seq)
        self.release(seq)
        seq.status = SeqStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def requeue(self, seq: Sequence) -> None:
        """Send a running sequence back to the head of the queue, its pages freed."""
        self.running.remove(seq)
        self.release(seq)
        seq.status = SeqStatus.WAITING
        self.waiting.appendleft(seq)

    def release(self, seq: Sequence) -> None:
        """Drop the sequence's page references and prefix lock."""
        self.pool.decref(seq.pages)
        seq.pages = []
        seq.num_computed = 0
        if seq.locked_node is not None:
            self.radix.unlock(seq.locked_node)
            seq.locked_node = None

    def store_prefix(self, seq: Sequence) -> None:
        """Insert the sequence's computed full pages into the radix tree (store-back)."""
        if not seq.request.use_prefix_cache:
            return
        computed = seq.token_ids[: seq.num_computed]
        result = self.radix.insert_prefix(seq.namespace, computed, seq.pages, seq.approx_from)
        self.pool.incref(result.new_page_ids)

    def _pin_session(self, seq: Sequence) -> None:
        """Pin a finished agent turn's KV; a session's next turn moves the pin to its path."""
        request = seq.request
        ttl_s = request.pin_ttl_s
        if request.session_id is not None and ttl_s is None:
            ttl_s = self.settings.session_pin_ttl_s
        if not ttl_s:
            return
        path = seq.token_ids[: seq.num_computed]
        if request.session_id is not None:
            key = (seq.namespace, request.session_id)
            previous = self.session_pins.pop(key, None)
            if previous is not None:
                self.radix.unpin(seq.namespace, previous)
            self.session_pins[key] = path
        self.radix.pin(seq.namespace, path, ttl_s)

    def finish(self, seq: Sequence) -> None:
        """Store the sequence's KV in the prefix cache, pin it if asked, free the rest."""
        self.store_prefix(seq)
        if seq.request.use_prefix_cache:
            self._pin_session(seq)
        self.running.remove(seq)
        self.release(seq)
        seq.status = SeqStatus.FINISHED
