"""Question categories: the policy table and the classifier (rules, then nearest centroid).

The classifier takes the query's embedding in, so classification costs a few regex matches and
one `[num_categories, dim] @ [dim]` product (microseconds). Example questions are embedded once,
lazily, with the `embed` callable passed in (the cache never loads a model itself).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ragkv.errors import InvalidRequest
from ragkv.settings import CategoryPolicy

EmbedFn = Callable[[Sequence[str]], np.ndarray]

# Order matters: the first rule that matches decides.
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "personal",
        re.compile(
            r"\bmy (account balance|balance|orders?|appointments?|bill|booking|test results|"
            r"salary|schedule|reservation|package|delivery|transactions?|inbox|calendar|"
            r"diagnosis|prescription)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "code",
        re.compile(
            r"```|\b(python|javascript|typescript|java|c\+\+|c#|golang|rust|sql|regex|bash|"
            r"html|css|numpy|pandas|git|compiler|traceback|segfault|stack ?overflow error|"
            r"syntax error|nullpointerexception|typeerror|valueerror)\b|\w+\.\w+\(|\bdef \w+\(",
            re.IGNORECASE,
        ),
    ),
    (
        "math",
        re.compile(
            r"\d\s*[-+*/×^÷]\s*\d|\d+\s*%\s*of\b|\b(solve|equation|integral|derivative|"
            r"square root|percent of|factorial|logarithm|calculate)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "time_sensitive",
        re.compile(
            r"\b(today|today's|tonight|tomorrow|yesterday|right now|as of now|currently|"
            r"current price|latest|this (week|weekend|month|morning|evening)|news|weather|"
            r"forecast|stock price|price of|exchange rate|live score|score of)\b",
            re.IGNORECASE,
        ),
    ),
)


def rule_category(text: str) -> str | None:
    """The category a rule assigns to `text`, or None when no rule matches."""
    for name, pattern in _RULES:
        if pattern.search(text):
            return name
    return None


class PolicyTable:
    """The category policies in force; replaceable at run time (PUT /admin/cache/categories)."""

    def __init__(self, policies: Mapping[str, CategoryPolicy], default_category: str) -> None:
        self._lock = threading.Lock()
        self._policies: dict[str, CategoryPolicy] = {}
        self.default_category = default_category
        self.replace(policies)

    def replace(self, policies: Mapping[str, CategoryPolicy]) -> None:
        """Swap in a whole new table; the default category must stay defined."""
        if self.default_category not in policies:
            raise InvalidRequest(
                f"the default category '{self.default_category}' must have a policy",
                param="categories",
            )
        with self._lock:
            self._policies = dict(policies)

    def get(self, category: str) -> CategoryPolicy:
        """The policy of `category`; raises InvalidRequest naming the known ones."""
        policy = self._policies.get(category)
        if policy is None:
            known = ", ".join(sorted(self._policies))
            raise InvalidRequest(
                f"unknown category '{category}'; known categories: {known}", param="category"
            )
        return policy

    def all(self) -> dict[str, CategoryPolicy]:
        """A copy of the whole table."""
        with self._lock:
            return dict(self._policies)


class CategoryClassifier:
    """Assign a category: explicit rules first, else the nearest example centroid."""

    def __init__(
        self,
        examples: Mapping[str, Sequence[str]],
        table: PolicyTable,
        min_similarity: float,
        embed: EmbedFn | None,
    ) -> None:
        self.examples = {name: list(texts) for name, texts in examples.items() if texts}
        self.table = table
        self.min_similarity = min_similarity
        self._embed = embed
        self._lock = threading.Lock()
        self._names: list[str] = []
        self._centroids: np.ndarray | None = None

    def _ensure_centroids(self) -> None:
        if self._centroids is not None or self._embed is None or not self.examples:
            return
        with self._lock:
            if self._centroids is not None:
                return
            names, rows = [], []
            for name, texts in self.examples.items():
                mean = np.asarray(self._embed(texts), dtype=np.float32).mean(axis=0)
                rows.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
                names.append(name)
            self._names = names
            self._centroids = np.stack(rows)

    def classify(self, text: str, vector: np.ndarray | None) -> str:
        """Category of a query (`vector`: its normalised embedding `[dim]`, may be None)."""
        known = self.table.all()
        by_rule = rule_category(text)
        if by_rule is not None and by_rule in known:
            return by_rule
        if vector is not None:
            self._ensure_centroids()
        if self._centroids is not None and vector is not None:
            similarities = self._centroids @ np.asarray(vector, dtype=np.float32)
            best = int(np.argmax(similarities))
            name = self._names[best]
            if similarities[best] >= self.min_similarity and name in known:
                return name
        return self.table.default_category
