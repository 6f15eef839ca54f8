"""The first-run demo collection: a few hundred Wikipedia leads (from the sample wheel)
ingested as collection `demo` in the background on a first start with auth off, so a new
user can ask a question over real documents within a minute of `make serve`."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from itertools import zip_longest

from ragkv.errors import NotFound
from ragkv.retrieval.loaders import wikipedia_sample
from ragkv.retrieval.service import DocumentInput, Retriever

log = logging.getLogger("ragkv.server")

DEMO_COLLECTION = "demo"
DEMO_TENANT = "default"
BATCH_DOCUMENTS = 32


def demo_documents(count: int) -> list[DocumentInput]:
    """`count` leads taken in turn from each topic (the sample's 12 topics, in title order),
    so the demo spans them all; the same documents on every machine."""
    by_topic: dict[str, list[DocumentInput]] = defaultdict(list)
    for document in sorted(wikipedia_sample(), key=lambda d: d.id or ""):
        by_topic[str(document.metadata.get("topic"))].append(document)
    interleaved = zip_longest(*(by_topic[topic] for topic in sorted(by_topic)))
    return [doc for group in interleaved for doc in group if doc is not None][:count]


class DemoSeeder:
    """Ingests the demo collection on a daemon thread; `stop()` ends it between batches."""

    def __init__(self, retriever: Retriever, count: int) -> None:
        self.retriever = retriever
        self.count = count
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Start seeding unless the demo collection is complete; True if started. A start
        after a crash mid-ingest completes it (documents keep their ids: re-adding one
        replaces it)."""
        try:
            info = self.retriever.get_collection(DEMO_TENANT, DEMO_COLLECTION)
            if info.num_documents >= self.count:
                return False
        except NotFound:
            self.retriever.create_collection(DEMO_TENANT, DEMO_COLLECTION)
        self._thread = threading.Thread(target=self._run, name="ragkv-demo", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        """Ask the thread to stop after its current batch and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _run(self) -> None:
        try:
            documents = demo_documents(self.count)
        except NotFound as exc:
            log.info("no demo collection: %s", exc.message)
            return
        try:
            chunks = 0
            for start in range(0, len(documents), BATCH_DOCUMENTS):
                if self._stop.is_set():
                    log.info("demo collection: stopped at %d documents", start)
                    return
                batch = documents[start : start + BATCH_DOCUMENTS]
                chunks += self.retriever.add_documents(DEMO_TENANT, DEMO_COLLECTION, batch).chunks
                done = start + len(batch)
                log.info(
                    "demo collection: %d/%d documents, %d chunks", done, len(documents), chunks
                )
            log.info(
                "demo collection ready: %d Wikipedia leads; try POST /v1/rag/chat with "
                '{"collection": "demo", "question": "..."}',
                len(documents),
            )
        except Exception:  # a demo must never take the server down
            log.exception("demo collection ingest failed")
