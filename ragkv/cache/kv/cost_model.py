"""The chunk KV store's load-or-recompute decision: expected seconds to read a record from
disk vs to prefill its tokens, learnt from what it observes."""

from __future__ import annotations


class CostModel:
    """Load-or-recompute: expected seconds to read a record vs to prefill its tokens.

    Starts from configured speeds and follows observed ones (exponential moving average).
    """

    def __init__(self, disk_read_mb_s: float, prefill_tokens_s: float, smoothing: float = 0.3):
        self.disk_bytes_s = disk_read_mb_s * 1e6
        self.prefill_tokens_s = prefill_tokens_s
        self.smoothing = smoothing

    def load_s(self, num_bytes: int) -> float:
        """Expected seconds to read `num_bytes` from disk."""
        return num_bytes / self.disk_bytes_s

    def recompute_s(self, num_tokens: int) -> float:
        """Expected seconds to prefill `num_tokens` alone."""
        return num_tokens / self.prefill_tokens_s

    def should_load(self, num_bytes: int, num_tokens: int) -> bool:
        """True when reading is expected to be faster than recomputing."""
        return self.load_s(num_bytes) <= self.recompute_s(num_tokens)

    def observe_load(self, num_bytes: int, seconds: float) -> None:
        """Learn the disk speed from one read."""
        if seconds > 0:
            self.disk_bytes_s = self._blend(self.disk_bytes_s, num_bytes / seconds)

    def observe_prefill(self, num_tokens: int, seconds: float) -> None:
        """Learn the prefill speed from one chunk computation."""
        if seconds > 0:
            self.prefill_tokens_s = self._blend(self.prefill_tokens_s, num_tokens / seconds)

    def _blend(self, old: float, new: float) -> float:
        return (1 - self.smoothing) * old + self.smoothing * new
