"""The pipeline's semantic step without a model: cache keys of RAG requests, replayed hits."""

from __future__ import annotations

from ragkv.engine.sampling import SamplingParams
from ragkv.pipeline.request import ChatRequest, InlineDocument, RagQuery
from ragkv.pipeline.semantic import keyed_by_context, replay_pieces


def chat(**fields: object) -> ChatRequest:
    messages = [{"role": "user", "content": "Who wrote it?"}]
    return ChatRequest("tenant", messages, SamplingParams(temperature=0), **fields)


def test_replayed_hit_joins_back_to_the_answer() -> None:
    text = "Paris is the capital of France.\n\nIt  has 2 million people."
    pieces = list(replay_pieces(text, words_per_piece=2))
    assert "".join(pieces) == text and len(pieces) == 6
    assert list(replay_pieces("")) == []


def test_rag_answers_are_keyed_by_their_context() -> None:
    plain = keyed_by_context(chat())
    assert plain == chat().messages
    doc_a = keyed_by_context(chat(documents=(InlineDocument("Text A", "a"),)))
    doc_b = keyed_by_context(chat(documents=(InlineDocument("Text B", "a"),)))
    rag_4 = keyed_by_context(chat(rag=RagQuery("wiki", 4)))
    rag_8 = keyed_by_context(chat(rag=RagQuery("wiki", 8)))
    markers = {m[0]["content"] for m in (doc_a, doc_b, rag_4, rag_8)}
    assert len(markers) == 4 and all(m.startswith("ragkv-context:") for m in markers)
    assert doc_a[1:] == plain  # the question itself is unchanged


def test_rag_answers_are_keyed_by_the_chunks_retrieved() -> None:
    request = chat(rag=RagQuery("wiki", 2))
    before = keyed_by_context(request, ("chk_a", "chk_b"))
    assert keyed_by_context(request, ("chk_a", "chk_b")) == before
    assert keyed_by_context(request, ("chk_a", "chk_c")) != before  # a document changed
    assert keyed_by_context(request, ("chk_b", "chk_a")) != before  # another order
    assert keyed_by_context(request, ("chk_a",)) != before  # a document was deleted
