"""A process killed with SIGKILL while writing leaves a cache that reopens consistent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from ragkv.cache.semantic.admin import SemanticCacheAdmin
from ragkv.cache.semantic.cache import SemanticCache
from ragkv.settings import CategoryPolicy, SemanticCacheSettings

WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    from ragkv.cache.semantic.cache import SemanticCache
    from ragkv.settings import CategoryPolicy, SemanticCacheSettings

    policy = CategoryPolicy(threshold=0.9, floor=0.9, max_entries=300, guard=False)
    settings = SemanticCacheSettings(categories={"general": policy}, index_save_every_writes=40)
    cache = SemanticCache(settings, Path(sys.argv[1]))
    rng = np.random.default_rng(0)
    for i in range(100_000):
        vector = rng.standard_normal(64).astype(np.float32)
        cache.store_answer("t", "m", "none", f"question {i}", vector, f"answer {i}", "general")
        print(i, flush=True)
    """
)


def settings() -> SemanticCacheSettings:
    policy = CategoryPolicy(threshold=0.9, floor=0.9, max_entries=300, guard=False)
    return SemanticCacheSettings(categories={"general": policy}, index_save_every_writes=40)


def assert_consistent(path: Path) -> int:
    cache = SemanticCache(settings(), path)
    (part,) = cache.partitions.by_id.values()
    assert part.index is not None and part.index.live == len(part.meta) > 0
    vectors = cache.store.vectors(sorted(part.meta))
    assert set(vectors) == set(part.meta)
    for entry_id, vector in vectors.items():
        result = cache.lookup("t", "m", "none", "q", vector, "general", record=False)
        assert result.entry_id == entry_id and result.similarity > 0.999
        assert SemanticCacheAdmin(cache).get(entry_id)["query"].startswith("question ")
    count = len(part.meta)
    cache.close()
    return count


def test_sigkill_while_writing_reopens_consistent(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for kill_after in (150, 420):
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert child.stdout is not None
        for line in child.stdout:
            if int(line) >= kill_after:
                break
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL
        count = assert_consistent(tmp_path)
        assert count <= 300  # the quota held across the crash


def test_reopen_after_kill_keeps_working(tmp_path: Path) -> None:
    cache = SemanticCache(settings(), tmp_path)
    rng = np.random.default_rng(1)
    vector = rng.standard_normal(64).astype(np.float32)
    cache.store_answer("t", "m", "none", "question x", vector, "answer x", "general")
    cache.store.env.close()  # abandon without saving the index
    cache = SemanticCache(settings(), tmp_path)
    assert cache.start_report.rebuilt == 0 and cache.start_report.replayed_ops == 1
    hit = cache.lookup("t", "m", "none", "question x", vector, "general").hit
    assert hit is not None and hit.response == "answer x"
    cache.close()
