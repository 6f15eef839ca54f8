"""One `Settings` object for the whole process, sliced into typed sub-configs per component.

Sources, strongest first: environment (`RAGKV_*`, nested with `__`, e.g. `RAGKV_SERVER__PORT`),
then a TOML file (`--config` or `RAGKV_CONFIG`), then the defaults written here.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, TypeAdapter
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ragkv.errors import InvalidRequest
from ragkv.settings_defaults import default_examples, default_policies

AbsolutePath = Annotated[Path, AfterValidator(lambda path: path.expanduser().absolute())]


class Section(BaseModel):
    """Base of every settings section: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ServerSettings(Section):
    """HTTP gateway: where to listen and how big a request may be."""

    host: str = Field("127.0.0.1", description="bind address (127.0.0.1 while auth is off)")
    port: int = Field(8000, ge=1, le=65535, description="TCP port")
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0, description="larger bodies get 413")
    access_log: bool = Field(True, description="one JSON line per request (ragkv.access)")
    expose_cache_status: bool = Field(
        True,
        description="responses say what the caches did (x-ragkv-cache, cached_tokens, the "
        "ragkv cache fields); false hides it from clients (admin stats still count)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    shutdown_drain_s: float = Field(
        30.0, ge=0, le=3600, description="on SIGTERM/SIGINT: stop accepting, let running "
        "requests finish for at most this long, then save the indexes and exit"
    )  # fmt: skip
    demo_documents: int = Field(
        300, ge=0, le=10_000, description="Wikipedia leads ingested as collection 'demo' on a "
        "first start with auth off, in the background (0: none)"
    )  # fmt: skip


class AuthSettings(Section):
    """API keys map to tenants; a separate admin key opens /admin/*.

    With no keys at all, auth is off and the server binds to localhost only.
    """

    api_keys: dict[str, str] = Field(default_factory=dict, description="API key -> tenant name")
    admin_key: SecretStr | None = Field(None, description="key for /admin/* (any tenant)")

    @property
    def enabled(self) -> bool:
        """True when any key is configured."""
        return bool(self.api_keys) or self.admin_key is not None


class ModelSettings(Section):
    """Which generation model to serve and how to run it."""

    gguf_path: Path | None = Field(None, description="GGUF file; default: bundled SmolLM2")
    hf_dir: Path | None = Field(None, description="Hugging Face folder (config + safetensors)")
    served_name: str | None = Field(None, description="model id to report; default from file")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="weights and KV precision (float32 is the exact reference)"
    )
    decode_dtype: Literal["auto", "same", "bfloat16", "float16"] = Field(
        "auto", description="precision of the weights read by one-row decode steps: auto "
        "(float16 on a CPU where it times faster at start, else exact), same (dtype: exact), "
        "float16, bfloat16"
    )  # fmt: skip
    native_decode: Literal["auto", "off"] = Field("auto", description="native CPU kernels (decode "
        "steps, attention, prefill's pointwise ops): auto (where cc builds them), off")  # fmt: skip
    batch_dtype: Literal["auto", "same", "bfloat16"] = Field(
        "auto", description="precision of the projections in batched decode steps (the LM "
        "head: dtype; native: float16): auto (bfloat16 on a CPU whose oneDNN times it faster "
        "at start, native with AVX512-BF16; else exact), same (dtype: exact), bfloat16"
    )  # fmt: skip
    num_threads: int | None = Field(None, ge=1, description="torch threads; default: all cores")
    gemm_layout: Literal["auto", "blocked", "joined"] = Field(
        "auto",
        description="decode GEMV weight layout on CPU: auto (timed at start, fastest kept), "
        "blocked (one column block per thread), joined (one matrix)",
    )
    batched_gemm: Literal["auto", "onednn", "blas"] = Field(
        "auto", description="CPU library for products of several rows (batched decode, "
        "prefill): auto (oneDNN from the row count where it times faster at start), onednn "
        "(from 2 rows), blas (torch's matmul)"
    )  # fmt: skip
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
        description="where weights and KV live: auto (CUDA when available), cpu, cuda[:N]",
    )
    backend: Literal["auto", "torch", "triton"] = Field(
        "auto", description="ops backend: auto (Triton kernels on CUDA, torch references on "
        "CPU); triton on a CPU only under TRITON_INTERPRET=1"
    )  # fmt: skip


class EngineSettings(Section):
    """Paged KV pool, batching and queue limits of the model engine."""

    page_size: int = Field(16, ge=1, le=256, description="tokens per KV page")
    kv_cache_mb: int = Field(1024, ge=1, description="KV pool size in MiB")
    max_num_seqs: int = Field(32, ge=1, description="sequences running at once")
    max_batch_tokens: int = Field(512, ge=16, description="token budget per step (chunked prefill)")
    prefill_tokens_while_decoding: int = Field(
        0, ge=0, description="prefill tokens per step while sequences decode, so that they wait "
        "less between tokens (0: auto, 256 on a CPU, unbounded on an accelerator)"
    )  # fmt: skip
    max_concurrent_blends: int = Field(2, ge=1, le=64, description="RAG prompts blended at once")
    max_waiting: int = Field(256, ge=1, description="queue bound; beyond it requests get 503")
    lpm_queue_limit: int = Field(
        128, ge=0, description="waiting queue length up to which prefills go fewest-tokens-left "
        "first"
    )  # fmt: skip
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request has none")
    retry_after_s: int = Field(
        2, ge=1, description="least Retry-After of a 503 (s); above it, the time the queue "
        "takes to drain at the measured finish rate"
    )  # fmt: skip
    session_pin_ttl_s: float = Field(
        60.0, gt=0, description="KV pin of an agent turn with session_id and no pin_ttl_s"
    )
    tool_pin_max_share: float = Field(0.25, ge=0, le=1, description="pool share tool pins may hold")
    tool_pin_ttl_s: float = Field(
        60.0, gt=0, description="tool-call pin TTL until a tool's round trips are known"
    )
    tool_pin_min_ttl_s: float = Field(2.0, gt=0, description="shortest predicted tool-call pin")
    tool_pin_max_ttl_s: float = Field(600.0, gt=0, description="longest predicted tool-call pin")
    tool_pin_on_demand: bool = Field(
        True, description="a tool pin holds pages only once eviction reaches the waiting "
        "conversation (false: from the tool call on, as fixed pins do)"
    )  # fmt: skip


class ChunkCacheSettings(Section):
    """Chunk KV cache and blended prefill (the RAG level)."""

    enabled: bool = Field(True, description="reuse retrieved chunks' KV by blending")
    memory_mb: int = Field(1024, ge=0, description="chunk KV held in CPU memory, MiB")
    device_mb: int = Field(2048, ge=0, description="chunk KV kept on the accelerator, MiB")
    disk: bool = Field(True, description="write chunk KV through to lmdb in data_dir")
    disk_mb: int = Field(8192, ge=1, description="chunk KV disk tier bound, MiB")
    eviction: Literal["lru", "pgdsf"] = Field("pgdsf", description="memory tier eviction")
    default_selector: Literal["naive", "cacheblend", "cachecraft", "lego"] = Field(
        "cacheblend", description="selector behind kv_reuse 'auto'"
    )
    recompute_ratio: float = Field(
        0.15, ge=0.0, le=1.0, description="share of chunk tokens recomputed by default"
    )
    adaptive_ratio: bool = Field(
        False,
        description="cacheblend picks its own ratio per request: the chunk-first tokens plus "
        "the fewest others holding 70% of their K deviation, within 5-50% "
        "(recompute_ratio then ignored)",
    )
    check_layer: int = Field(1, ge=0, description="layer where KV deviation is measured")
    sink_tokens: int = Field(1, ge=0, description="first tokens of each chunk always recomputed")
    refine_layers: int = Field(
        3,
        ge=0,
        description="cacheblend gradual filtering: layers after the check layer that narrow "
        "the recomputed set by their own KV deviation (0: one selection)",
    )
    refine_start: float = Field(
        2.0, ge=1.0, le=10.0, description="share of the budget kept after the check layer"
    )
    lego_tokens: int = Field(16, ge=1, description="tokens per chunk recomputed by 'lego'")
    min_chunk_tokens: int = Field(
        16, ge=1, description="shorter chunks are computed with the prompt, not cached"
    )
    context_variant: bool = Field(
        False,
        description="compute each chunk's KV after the default RAG prompt head (system "
        "prompt + instruction) instead of alone (a cache variant; measured worse with "
        "cacheblend, see benchmarks/README.md)",
    )
    disk_read_mb_s: float = Field(500.0, gt=0, description="initial disk speed of the cost model")
    prefill_tokens_s: float = Field(
        400.0, gt=0, description="initial prefill speed of the cost model"
    )


class CacheSettings(Section):
    """Who shares the caches. Tenants never share any cache level."""

    scope: Literal["tenant", "user"] = Field(
        "tenant",
        description="tenant: a tenant's users share its caches; user: each user (the "
        "request's `user` field or x-ragkv-user header) has its own, at all three levels",
    )


class EmbeddingSettings(Section):
    """Sentence embedder used by retrieval and the semantic cache."""

    model_dir: Path | None = Field(None, description="default: bundled all-MiniLM-L6-v2")
    batch_size: int = Field(64, ge=1, description="texts per embedding batch")


class RetrievalSettings(Section):
    """Chunker, FAISS index and document store (owned by ragkv/retrieval)."""

    chunk_tokens: int = Field(256, ge=16, le=4096, description="target tokens per chunk")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in data_dir")
    index_factory: str = Field(
        "Flat",
        description="FAISS factory string of each collection's index (inner product): 'Flat' "
        "(exact), 'HNSW32,Flat', 'IVF1024,Flat'; IVF trains once it holds 39 x nlist vectors",
    )
    hnsw_ef_search: int = Field(128, ge=1, le=65536, description="HNSW search breadth")
    ivf_nprobe: int = Field(32, ge=1, le=65536, description="IVF lists probed per query")
    use_gpu: bool = Field(True, description="search on a GPU when faiss has one")
    max_document_bytes: int = Field(1024 * 1024, gt=0, description="largest document text (413)")
    max_documents_per_request: int = Field(1000, ge=1, description="documents per ingest call")
    max_top_k: int = Field(100, ge=1, le=10000, description="largest search top_k (422 above)")


class CategoryPolicy(Section):
    """One question category's semantic-cache rules (ragkv/cache/semantic/categories.py)."""

    threshold: float = Field(0.92, gt=0.0, le=1.0, description="raw cosine needed for a hit")
    floor: float = Field(0.88, gt=0.0, le=1.0, description="lowest threshold under load")
    ttl_s: float | None = Field(None, gt=0, description="entry lifetime; None: no expiry")
    max_entries: int = Field(
        100_000, ge=1, description="entries per tenant in this category (all models and templates)"
    )
    max_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1,
        description="bytes per tenant in this category (all models and templates)",
    )
    cacheable: bool = True
    eviction: Literal["lru", "lfu"] = "lru"
    guard: bool = True


def _check_category_policies(policies: dict[str, CategoryPolicy]) -> dict[str, CategoryPolicy]:
    for name, policy in policies.items():
        if not name or len(name) > 64 or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"category name {name!r} must be 1-64 letters, digits, '_' or '-'")
        if policy.floor > policy.threshold:
            raise ValueError(f"category '{name}': floor must not be above threshold")
    return policies


class SemanticCacheSettings(Section):
    """Category-aware semantic cache (owned by ragkv/cache/semantic/)."""

    enabled: bool = Field(True, description="answer close-enough questions from the cache")
    hnsw_m: int = Field(16, ge=4, le=128, description="hnswlib graph degree")
    hnsw_ef: int = Field(64, ge=8, le=4096, description="hnswlib search breadth")
    hnsw_ef_construction: int = Field(100, ge=8, le=4096, description="hnswlib build breadth")
    categories: Annotated[dict[str, CategoryPolicy], AfterValidator(_check_category_policies)] = (
        Field(
            default_factory=lambda: {
                name: CategoryPolicy(**fields) for name, fields in default_policies().items()
            }
        )
    )
    default_category: str = Field("general", description="when the classifier is unsure")
    classifier_examples: dict[str, list[str]] = Field(default_factory=default_examples)
    classifier_min_similarity: float = Field(
        0.45, ge=-1.0, le=1.0, description="centroid cosine needed to leave default_category"
    )
    candidates_k: int = Field(4, ge=1, le=64, description="neighbours checked per lookup")
    lmdb_map_size_bytes: int = Field(16 * 1024**3, ge=1024**2)
    durable_writes: bool = Field(False, description="fsync each commit (power-loss safety)")
    index_save_every_writes: int = Field(50_000, ge=1, description="persist hnswlib after N")
    load_high: float = Field(0.8, ge=0.0, le=1.0, description="load that starts relaxing")
    load_low: float = Field(0.5, ge=0.0, le=1.0, description="load that ends relaxing")
    load_min_dwell_s: float = Field(5.0, ge=0.0, description="least time between mode switches")
    verified: bool = Field(False, description="learn per-entry thresholds from feedback")
    verified_delta: float = Field(0.05, gt=0.0, lt=1.0, description="allowed error rate")
    verified_min_observations: int = Field(5, ge=1)
    single_flight_wait_s: float = Field(
        120.0,
        gt=0.0,
        description="how long an identical request waits for one in flight before running itself",
    )


class ClusterSettings(Section):
    """Scale-out on Ray Serve (`ragkv serve --replicas N`; extra `ragkv[ray]`): engine
    replicas behind the cache-affinity router, shared semantic-cache and retrieval owners."""

    replicas: int = Field(2, ge=1, le=256, description="engine replicas (one per GPU on GPUs)")
    gateway_replicas: int = Field(1, ge=1, le=64, description="gateway (HTTP ingress) replicas")
    ray_address: str | None = Field(None, description="join this Ray cluster; unset: start one")
    engine_num_cpus: float = Field(1.0, gt=0, description="CPUs Ray reserves per engine replica")
    engine_num_gpus: float = Field(0.0, ge=0, description="GPUs Ray reserves per engine replica")
    stats_period_s: float = Field(1.0, gt=0, le=60, description="replica cache report period")
    router: Literal["affinity", "pow2"] = Field(
        "affinity", description="engine routing: cache affinity, or Ray's power of two choices"
    )
    chunk_credit: float = Field(
        0.85, ge=0, le=1, description="routing credit per held chunk token (prefix tokens: 1)"
    )
    tokens_per_queued: float = Field(
        128.0, ge=0, description="routing penalty, in prompt tokens, per request on a replica"
    )
    balance_abs_threshold: float = Field(
        4.0, ge=0, description="load spread (and relative factor) past which the least loaded wins"
    )
    balance_rel_threshold: float = Field(
        1.5, ge=1, description="busiest over idlest load that counts as imbalanced (with abs)"
    )
    max_reported_pages: int = Field(16384, ge=0, description="page digests reported at most")
    max_reported_chunks: int = Field(8192, ge=0, description="chunk entries reported at most")


class Settings(BaseSettings):
    """Everything configurable in ragkv. Build with `Settings.load()`."""

    model_config = SettingsConfigDict(
        env_prefix="RAGKV_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    data_dir: AbsolutePath = Field(
        Path(".ragkv"), description="where caches, indexes and stores live"
    )
    server: ServerSettings = Field(default_factory=ServerSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    chunk_cache: ChunkCacheSettings = Field(default_factory=ChunkCacheSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    semantic_cache: SemanticCacheSettings = Field(default_factory=SemanticCacheSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the values passed in (which come from the TOML file).
        return (env_settings, init_settings)

    @classmethod
    def load(cls, config_file: Path | str | None = None, **overrides: Any) -> Settings:
        """Read env > TOML file > defaults; then apply `overrides` (e.g. CLI flags) on top.

        `config_file` defaults to `$RAGKV_CONFIG`. A missing or malformed file raises
        `InvalidRequest` naming the file.
        """
        path = config_file or os.environ.get("RAGKV_CONFIG")
        file_values = read_toml(Path(path)) if path else {}
        settings = cls(**file_values)
        if not overrides:
            return settings
        # Re-validating the whole object would read the environment again and let it win.
        merged = _deep_merge(settings.model_dump(), overrides)
        update = {key: _validate_field(cls, key, merged[key]) for key in overrides}
        return settings.model_copy(update=update)


def read_toml(path: Path) -> dict[str, Any]:
    """Load a TOML config file, with an error a user can act on."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise InvalidRequest(f"config file '{path}' does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRequest(f"config file '{path}' is not valid TOML: {exc}") from exc


def _validate_field(model: type[BaseModel], name: str, value: Any) -> Any:
    if name not in model.model_fields:
        raise InvalidRequest(f"unknown setting '{name}'")
    info = model.model_fields[name]
    annotated = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    return TypeAdapter(annotated).validate_python(value)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
