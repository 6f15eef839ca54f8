"""ragkv: cache-aware serving middleware for retrieval-augmented generation and agents."""

__version__ = "0.1.0"
