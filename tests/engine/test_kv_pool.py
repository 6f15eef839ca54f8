"""The KV pool hands out the lowest free page ids first, so that a sequence's pages tend to
be consecutive (attention then reads them as a view of the pool, `plan_paged_attention`)."""

from __future__ import annotations

import pytest

from ragkv.engine.kv_pool import KVPool, OutOfPages
from tests.engine.conftest import LoadedModel


def test_pages_come_lowest_id_first_after_frees(smollm: LoadedModel) -> None:
    pool = KVPool(smollm.config, num_pages=12, page_size=4)
    first, second = pool.alloc(5), pool.alloc(3)
    assert first == [0, 1, 2, 3, 4] and second == [5, 6, 7]
    pool.decref(first[1:4])  # pages 1, 2, 3 free again, in any order
    assert pool.alloc(4) == [1, 2, 3, 8]
    assert pool.num_free == 3
    with pytest.raises(OutOfPages):
        pool.alloc(4)
