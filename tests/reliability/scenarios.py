"""The four write loads of the SIGKILL campaign and what must hold after each restart.

Each scenario yields its operations (one critical write kind, in which the kill point is
drawn), then checks them: every acknowledged write is there, an unanswered one is there
whole or not at all. Document ids and texts are made-up words, so a search for a
document's own text finds it first.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.reliability.integrity import Findings, Inspector
from tests.reliability.load import Api, Op, random_text
from tests.reliability.serve import TENANT

CATEGORY = "faq"


@dataclass
class Tally:
    """What one round established: acknowledged writes and how many were found, unanswered
    writes and how many had been applied, and every violated invariant."""

    acknowledged: int = 0
    verified: int = 0
    in_flight: int = 0
    applied: int = 0
    violations: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        """Fold `other` into this one."""
        self.acknowledged += other.acknowledged
        self.verified += other.verified
        self.in_flight += other.in_flight
        self.applied += other.applied
        self.violations += other.violations


def documents_of(op: Op) -> list[dict[str, str]]:
    """The documents an ingest or chat op sent."""
    return list((op.body or {}).get("documents", []))


def searchable(api: Api, collection: str, doc: dict[str, str]) -> bool:
    """The document is stored with its text and a search for that text finds it."""
    got = api.call("GET", f"/v1/collections/{collection}/documents/{doc['id']}")
    if got.status_code != 200 or got.json()["text"] != doc["text"]:
        return False
    body = {"query": doc["text"], "top_k": 3}
    hits = api.json("POST", f"/v1/collections/{collection}/search", body)["data"]
    return any(hit["document_id"] == doc["id"] for hit in hits)


def present(api: Api, collection: str, doc_id: str) -> bool:
    """Whether the collection holds a document of that id."""
    return api.call("GET", f"/v1/collections/{collection}/documents/{doc_id}").status_code == 200


def whole_or_nothing(found: list[bool], what: str, tally: Tally) -> bool:
    """Count an unanswered write; a write applied in part is a violation. True if applied."""
    tally.in_flight += 1
    if all(found):
        tally.applied += 1
    elif any(found):
        tally.violations.append(f"{what}: {sum(found)} of {len(found)} parts applied")
    return all(found)


class Scenario:
    """A write load: `setup` once, then per round `operations` until the kill, then
    `check_offline` (server down) and `verify` (restarted)."""

    name = ""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def setup(self, api: Api) -> None:
        """Prepare what the load writes into."""

    def operations(self, round_no: int) -> Iterator[Op]:
        """The load of round `round_no`, endless."""
        raise NotImplementedError

    def touches(self, collection: str) -> bool:
        """Whether the load writes to `collection` (others must stay as they were)."""
        return False

    def check_offline(self, inspector: Inspector, findings: Findings, ops: list[Op]) -> Tally:
        """Checks of the data directory the killed server left."""
        return Tally()

    def verify(self, api: Api, ops: list[Op]) -> Tally:
        """Checks over HTTP after the restart."""
        return Tally()


class IngestScenario(Scenario):
    """(a) Documents ingested over HTTP, three per request, into collection 'ingest'."""

    name = "ingest"
    collection = "ingest"

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.expected_documents = 0

    def setup(self, api: Api) -> None:
        api.json("POST", "/v1/collections", {"name": self.collection})

    def touches(self, collection: str) -> bool:
        return collection == self.collection

    def operations(self, round_no: int) -> Iterator[Op]:
        for number in range(MAX_OPS):
            docs = [
                {"id": f"r{round_no}-{number}-{i}", "text": random_text(self.rng, 30)}
                for i in range(3)
            ]  # fmt: skip
            path = f"/v1/collections/{self.collection}/documents"
            yield Op("ingest", "POST", path, {"documents": docs}, critical=True)

    def verify(self, api: Api, ops: list[Op]) -> Tally:
        tally = Tally()
        for op in ops:
            docs = documents_of(op)
            if op.acked:
                tally.acknowledged += len(docs)
                found = [searchable(api, self.collection, doc) for doc in docs]
                tally.verified += sum(found)
                tally.violations += [
                    f"ingest: acknowledged document {doc['id']} is not listed and searchable"
                    for doc, ok in zip(docs, found, strict=True)
                    if not ok
                ]
                self.expected_documents += len(docs)
            elif op.in_flight:
                found = [present(api, self.collection, doc["id"]) for doc in docs]
                if whole_or_nothing(found, "ingest in flight", tally):
                    if not all(searchable(api, self.collection, doc) for doc in docs):
                        tally.violations.append("ingest in flight: stored but not searchable")
                    self.expected_documents += len(docs)
        info = api.json("GET", f"/v1/collections/{self.collection}")
        if info["num_documents"] != self.expected_documents:
            tally.violations.append(
                f"ingest: {info['num_documents']} documents, expected {self.expected_documents}"
            )
        return tally


class SemanticScenario(Scenario):
    """(b) Semantic-cache entries written with `POST /v1/cache/entries`, four per request."""

    name = "semantic"

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.expected_entries = 0

    def operations(self, round_no: int) -> Iterator[Op]:
        for number in range(MAX_OPS):
            entries = [
                {
                    "query": random_text(self.rng, 12),
                    "response": f"answer {round_no}-{number}-{i}",
                    "category": CATEGORY,
                }
                for i in range(4)
            ]
            yield Op("warm", "POST", "/v1/cache/entries", {"entries": entries}, critical=True)

    def check_offline(self, inspector: Inspector, findings: Findings, ops: list[Op]) -> Tally:
        acked = sum(len(op.body["entries"]) for op in ops if op.acked and op.body)
        unsure = sum(len(op.body["entries"]) for op in ops if op.in_flight and op.body)
        low, high = self.expected_entries + acked, self.expected_entries + acked + unsure
        tally = Tally()
        if not low <= findings.semantic_entries <= high:
            tally.violations.append(
                f"semantic: lmdb holds {findings.semantic_entries} entries, expected {low}-{high}"
            )
        return tally

    def verify(self, api: Api, ops: list[Op]) -> Tally:
        tally = Tally()
        for op in ops:
            entries = op.body["entries"] if op.body else []
            if op.acked:
                stored = [e for e, r in zip(entries, op.answer["entries"], strict=True)
                          if r["stored"]]  # fmt: skip
                tally.acknowledged += len(stored)
                self.expected_entries += len(stored)
                for entry in stored:
                    if self._hits(api, entry):
                        tally.verified += 1
                    else:
                        tally.violations.append(f"semantic: {entry['response']} does not hit")
            elif op.in_flight:
                found = [self._hits(api, entry) for entry in entries]
                if whole_or_nothing(found, "cache write in flight", tally):
                    self.expected_entries += len(entries)
        return tally

    def _hits(self, api: Api, entry: dict[str, Any]) -> bool:
        body = {"query": entry["query"], "category": CATEGORY}
        found = api.json("POST", "/v1/cache/lookup", body)
        return bool(found["hit"]) and found["response"] == entry["response"]


class ChunkKVScenario(Scenario):
    """(c) Chat requests with three new inline documents each: their chunk KV is computed and
    written through to the lmdb disk tier."""

    name = "chunk_kv"

    def operations(self, round_no: int) -> Iterator[Op]:
        for number in range(MAX_OPS):
            docs = [
                {"id": f"c{round_no}-{number}-{i}", "text": random_text(self.rng, 30)}
                for i in range(3)
            ]  # fmt: skip
            body = {
                "messages": [{"role": "user", "content": "Which words come first?"}],
                "documents": docs,
                "max_tokens": 1,
                "temperature": 0,
                "ragkv": {"semantic_cache": False},
            }
            yield Op("chat", "POST", "/v1/chat/completions", body, critical=True)

    def check_offline(self, inspector: Inspector, findings: Findings, ops: list[Op]) -> Tally:
        tally = Tally()
        for op in ops:
            if not op.acked:
                continue
            for doc in documents_of(op):
                for key in inspector.chunk_record_keys(TENANT, doc["text"]):
                    tally.acknowledged += 1
                    if key in findings.chunk_records:
                        tally.verified += 1
                    else:
                        tally.violations.append(f"chunk KV: acknowledged {doc['id']} not on disk")
        return tally

    def verify(self, api: Api, ops: list[Op]) -> Tally:
        tally = Tally(in_flight=sum(op.in_flight for op in ops))  # any part may be on disk
        acked = [op for op in ops if op.acked]
        for op in [*acked[-1:], *(op for op in ops if op.in_flight)]:
            response = api.call(op.method, op.path, op.body)
            if response.status_code != 200:
                tally.violations.append(f"chunk KV: repeated request got {response.status_code}")
        return tally


class DeleteScenario(Scenario):
    """(d) Collections created, filled and deleted in turn; the kill falls in a delete.
    Collection 'keep' (and every other collection) must come through unchanged."""

    name = "delete"
    documents_per_collection = 8

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.kept = [{"id": f"keep-{i}", "text": random_text(self.rng, 30)} for i in range(4)]

    def setup(self, api: Api) -> None:
        api.json("POST", "/v1/collections", {"name": "keep"})
        api.json("POST", "/v1/collections/keep/documents", {"documents": self.kept})

    def touches(self, collection: str) -> bool:
        return collection.startswith("del-")

    def operations(self, round_no: int) -> Iterator[Op]:
        for number in range(MAX_OPS):
            name = f"del-{round_no}-{number}"
            docs = [
                {"id": f"{name}-{i}", "text": random_text(self.rng, 30)}
                for i in range(self.documents_per_collection)
            ]  # fmt: skip
            yield Op("create", "POST", "/v1/collections", {"name": name})
            yield Op("ingest", "POST", f"/v1/collections/{name}/documents", {"documents": docs})
            yield Op("delete", "DELETE", f"/v1/collections/{name}", critical=True)

    def verify(self, api: Api, ops: list[Op]) -> Tally:
        tally = Tally()
        by_collection: dict[str, dict[str, Op]] = {}
        for op in ops:
            name = op.body["name"] if op.kind == "create" and op.body else op.path.split("/")[3]
            by_collection.setdefault(name, {})[op.kind] = op
        for name, steps in by_collection.items():
            self._verify_collection(api, name, steps, tally)
            if api.call("GET", f"/v1/collections/{name}").status_code == 200:
                api.json("DELETE", f"/v1/collections/{name}")  # survivors do not pile up
        for doc in self.kept:
            if not searchable(api, "keep", doc):
                tally.violations.append(f"delete: kept document {doc['id']} is gone")
        return tally

    def _verify_collection(self, api: Api, name: str, steps: dict[str, Op], tally: Tally) -> None:
        got = api.call("GET", f"/v1/collections/{name}")
        exists = got.status_code == 200
        num_documents = got.json()["num_documents"] if exists else 0
        ingest, delete = steps.get("ingest"), steps.get("delete")
        full = ingest is not None and ingest.acked
        whole = exists and num_documents == (self.documents_per_collection if full else 0)
        if delete is not None and delete.acked:
            tally.acknowledged += 1
            tally.verified += not exists
            if exists:
                tally.violations.append(f"delete: acknowledged delete of {name} undone")
        elif delete is not None:  # in flight: all there, or all gone
            tally.in_flight += 1
            tally.applied += not exists
            docs = documents_of(ingest) if ingest is not None else []
            if exists and not (whole and all(searchable(api, name, doc) for doc in docs)):
                tally.violations.append(f"delete in flight: {name} is half there")
        elif ingest is not None and ingest.in_flight:
            if exists and num_documents not in (0, self.documents_per_collection):
                tally.violations.append(f"ingest in flight: {name} has {num_documents} documents")
        elif ingest is not None and not whole:
            tally.violations.append(f"delete: {name} lost documents it was never asked to")


MAX_OPS = 1_000_000  # a load runs until the kill; LoadRun bounds a round
