"""ragkv: cache-aware serving middleware for retrieval-augmented generation and agents.

`import ragkv` is light: the SDK (`ragkv.Client`, `ragkv.AsyncClient`, the error classes)
loads on first use and needs only httpx; the server and engine live in their own modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ragkv.errors import RagkvError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ragkv.sdk import *  # noqa: F403

__all__ = ["RagkvError", "__version__"]


def __getattr__(name: str) -> Any:
    """Load the SDK's names on first use (`ragkv.Client`, `ragkv.NotFoundError`, ...)."""
    if name.startswith("_"):
        raise AttributeError(name)
    import ragkv.sdk as sdk

    if name in sdk.__all__:
        return getattr(sdk, name)
    raise AttributeError(f"module 'ragkv' has no attribute '{name}'")
