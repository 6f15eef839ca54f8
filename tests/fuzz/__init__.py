"""Property and fuzz tests (hypothesis).

Under `make test` every property runs a fixed, derandomized set of cases, the same on every
machine. `benchmarks/fuzz_campaign.py` runs the same properties with random seeds and
`RAGKV_TEST_FUZZ_SCALE` times as many cases.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import settings

SCALE_ENV = "RAGKV_TEST_FUZZ_SCALE"


def fuzz_settings(max_examples: int, **extra: Any) -> settings:
    """`max_examples` derandomized cases without a database or deadline; under a campaign
    (`RAGKV_TEST_FUZZ_SCALE` > 0, read at import) random cases, that many times more."""
    scale = int(os.environ.get(SCALE_ENV) or 0)
    return settings(
        derandomize=scale == 0,
        database=None,
        deadline=None,
        max_examples=max_examples * max(scale, 1),
        **extra,
    )
