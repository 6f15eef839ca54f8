"""One shared owner each for the semantic cache and for retrieval, as Ray Serve deployments
of one replica: hnswlib + lmdb, and the FAISS indexes over the SQLAlchemy store (PostgreSQL
in a real cluster), must have a single writer, and every gateway replica must see the same
cache and collections.

A gateway holds a `Remote` in place of the object: the same method calls (`cache.lookup(...)`,
`retriever.store.list_collections()`), run in the owner by `Owner.call`. Only public methods
can be called; results and errors travel by pickle. The retrieval owner tells the semantic
owner which chunks went away, so cached answers still die with their sources."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CollectorRegistry
from ray.exceptions import RayTaskError
from ray.serve.handle import DeploymentHandle

from ragkv.assets import generation_model_path
from ragkv.cache.semantic.admin import SemanticCacheAdmin
from ragkv.cache.semantic.cache import SemanticCache
from ragkv.compute import ComputeThread
from ragkv.engine.tokenizer import Tokenizer
from ragkv.errors import InvalidRequest
from ragkv.pipeline.semantic import source_collection
from ragkv.retrieval.documents import RemovalListener
from ragkv.retrieval.embedder import Embedder
from ragkv.retrieval.service import Retriever
from ragkv.settings import Settings

log = logging.getLogger("ragkv.cluster")

CALL_TIMEOUT_S = 600.0


class Owner:
    """The deployment class of a shared owner: `kind` "semantic" (the cache, its admin as
    `admin.*`) or "retrieval" (the retriever; `semantic` is the semantic owner's handle, told
    about removed chunks)."""

    def __init__(self, kind: str, settings: Settings, semantic: DeploymentHandle | None = None):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.kind = kind
        self.compute = ComputeThread()
        embedder = Embedder(settings.embedding, self.compute)
        self.roots: dict[str, Any] = {}
        if kind == "semantic":
            path = settings.data_dir / "semantic_cache"
            cache = SemanticCache(
                settings.semantic_cache, path, embed=embedder.embed, registry=CollectorRegistry()
            )
            self.roots = {"cache": cache, "admin": SemanticCacheAdmin(cache)}
        elif kind == "retrieval":
            model = generation_model_path(settings.model.gguf_path, settings.model.hf_dir)
            retriever = Retriever(settings.retrieval, settings.data_dir, embedder, Tokenizer(model))
            retriever.open()
            if semantic is not None:
                retriever.removals.subscribe(tell_semantic_owner(semantic))
            self.roots = {"retriever": retriever}
        else:
            raise ValueError(f"unknown owner kind '{kind}'")

    async def call(self, path: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run the public method at `path` (e.g. "retriever.store.list_collections")."""
        root, *names = path.split(".")
        target = self.roots.get(root)
        if target is None or not names or any(n.startswith("_") for n in names):
            raise InvalidRequest(f"'{path}' is not a method of the {self.kind} owner")
        for name in names:
            target = getattr(target, name)
        if not callable(target):
            raise InvalidRequest(f"'{path}' is not a method of the {self.kind} owner")
        return await asyncio.to_thread(target, *args, **kwargs)

    def close(self) -> None:
        """Save and close the owned stores (Ray calls `__del__` on a graceful stop)."""
        for component in self.roots.values():
            closer = getattr(component, "close", None)
            if callable(closer):
                closer()
        self.compute.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # an interpreter going away may have torn down lmdb already
            log.exception("closing the %s owner failed", self.kind)


def tell_semantic_owner(semantic: DeploymentHandle) -> RemovalListener:
    """A removal listener (runs in the retrieval owner) that drops, in the semantic owner,
    the cached answers built from the removed chunks."""

    def invalidate(tenant: str, collection: str, chunk_ids: list[str] | None) -> None:
        key = source_collection(tenant, collection)
        semantic.call.remote("admin.invalidate_sources", (key, chunk_ids), {}).result()

    return invalidate


class Remote:
    """A gateway's stand-in for an owned object: attribute access builds a path, calling it
    runs the method in the owner and returns its result (or raises its error). `local`:
    plain attributes answered here (e.g. the retriever's settings)."""

    def __init__(
        self, handle: DeploymentHandle, path: str, local: dict[str, Any] | None = None
    ) -> None:
        self._handle = handle
        self._path = path
        self._local = local or {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._local:
            return self._local[name]
        return Remote(self._handle, f"{self._path}.{name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        response = self._handle.call.remote(self._path, args, kwargs)
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # a worker thread: wait here
            return result_of(response)
        with ThreadPoolExecutor(1) as pool:  # an event loop must not wait on it itself
            return pool.submit(result_of, response).result()


def result_of(response: Any) -> Any:
    """The result of a handle call; the owner's own error, not Ray's wrapper, on failure."""
    try:
        return response.result(timeout_s=CALL_TIMEOUT_S)
    except RayTaskError as exc:
        raise unwrap(exc) from None


def unwrap(exc: BaseException) -> BaseException:
    """The deployment's own error inside Ray's task wrapper, if that is what it is."""
    cause = getattr(exc, "cause", None) if isinstance(exc, RayTaskError) else None
    return cause if isinstance(cause, BaseException) else exc
