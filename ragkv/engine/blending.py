"""Blended prefills in flight, stepped next to the batch.

Each engine step runs its batch (decodes first, then prefill chunks) and then gives the
blends the token budget the batch left, a quarter of it at least, counted in token-layers:
a chunk computed for the cache costs its tokens times the layers, a layer of the blend its
active tokens. A RAG prompt is thus blended over several steps while running sequences
decode in every one of them (before, a blend ran whole in one step and stalled them all).
"""

from __future__ import annotations

import logging

import torch

from ragkv.engine.blend.blender import BlendJob, ChunkBlender
from ragkv.engine.kv_pool import KVPool
from ragkv.engine.scheduler import Scheduler
from ragkv.engine.sequence import SeqStatus, Sequence

log = logging.getLogger("ragkv.engine")


class BlendSteps:
    """The blends in flight (oldest first), at most `max_in_flight` at once."""

    def __init__(
        self,
        blender: ChunkBlender,
        scheduler: Scheduler,
        pool: KVPool,
        max_in_flight: int,
    ) -> None:
        self.blender = blender
        self.scheduler = scheduler
        self.pool = pool
        self.max_in_flight = max_in_flight
        self.jobs: list[BlendJob] = []
        self.steps = 0  # engine steps in which a blend advanced

    def admit(self) -> None:
        """Start the waiting blends that fit (pages for their whole prompt)."""
        while len(self.jobs) < self.max_in_flight:
            seq = self.scheduler.admit_blend()
            if seq is None:
                return
            self.jobs.append(self.blender.start(seq, self.pool))

    def drop(self, seq: Sequence) -> None:
        """Forget the blend of an aborted sequence (the scheduler frees its pages)."""
        self.jobs = [job for job in self.jobs if job.seq is not seq]

    def advance(self, budget_tokens: int) -> list[tuple[Sequence, torch.Tensor]]:
        """Advance the blends oldest first while `budget_tokens` (times the layers) last;
        the sequences whose prompt is now in the pool, with their first-token logits.

        A blend that fails is logged and counted, and its sequence goes back to the head of
        the queue for a plain prefill: a failed blend costs time, never the request."""
        if not self.jobs:
            return []
        self.steps += 1
        budget = budget_tokens * self.blender.model.config.num_layers
        finished = []
        for job in list(self.jobs):
            if budget <= 0:
                break
            try:
                budget -= job.advance(budget)
                if not job.done:
                    continue
                logits = job.finish()
            except Exception:
                log.exception("blended prefill of %s failed; recomputing it", job.seq.request_id)
                self.blender.stats.fallbacks += 1
                self.jobs.remove(job)
                self.scheduler.requeue(job.seq)
                continue
            self.jobs.remove(job)
            job.seq.status = SeqStatus.RUNNING
            finished.append((job.seq, logits))
        return finished
