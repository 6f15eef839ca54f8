"""Grammar-constrained decoding on the real SmolLM2: JSON schemas, JSON objects, regexes and
EBNF are followed under greedy and seeded sampling, over the blended prefill too; bad
grammars are a 400 at `add_request`; unconstrained rows in the same batch are untouched."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re

import jsonschema
import pytest
import torch

from ragkv.cache.kv.chunk_store import ChunkKVStore
from ragkv.engine.async_engine import AsyncEngine
from ragkv.engine.sampling import SamplingParams
from ragkv.engine.sequence import Constraint, KVReuse, Request, Sequence
from ragkv.errors import InvalidRequest
from ragkv.pipeline.prompt import ContextChunk, assemble_rag_prompt
from ragkv.settings import ChunkCacheSettings
from tests.engine.helpers import greedy_request, run_greedy
from tests.engine.test_pressure import text_prompt

NAME = {"type": "string", "maxLength": 12}
SCHEMAS = {
    "person": {
        "type": "object",
        "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"],
    },
    "shirt": {
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", "blue"]},
            "size": {"type": "string", "enum": ["S", "M", "L"]},
        },
        "required": ["color", "size"],
    },
    "tag list": {
        "type": "object",
        "properties": {
            "tags": {
                "type": "array",
                "items": {"type": "string", "maxLength": 8},
                "minItems": 2,
                "maxItems": 3,
            }
        },
        "required": ["tags"],
    },
    "city": {
        "type": "object",
        "properties": {
            "city": {
                "type": "object",
                "properties": {"name": NAME, "country": NAME},
                "required": ["name", "country"],
            }
        },
        "required": ["city"],
    },
    "game score": {
        "type": "object",
        "properties": {
            "score": {"type": "number", "minimum": 0, "maximum": 10},
            "count": {"type": "integer", "minimum": 1, "maximum": 9},
            "ok": {"type": "boolean"},
        },
        "required": ["score", "count", "ok"],
    },
}


def chat(smollm, text: str) -> list[int]:
    return smollm.tokenizer.apply_chat_template([{"role": "user", "content": text}])


_ids = itertools.count()


def constrained(prompt_ids, constraint: Constraint, **fields: object) -> Request:
    """A greedy request (unless `fields` say otherwise) bound by `constraint`; stops at EOS."""
    params = {"max_tokens": 96, "temperature": 0}
    params.update({k: fields.pop(k) for k in list(fields) if hasattr(SamplingParams, k)})
    return Request(
        f"c-{next(_ids)}", prompt_ids, SamplingParams(**params), constraint=constraint, **fields
    )


def engine_tokens(engine, request: Request) -> list[int]:
    """Token ids one request generates on `engine`."""
    return [t for o in engine.generate([request])[request.request_id] for t in o.token_ids]


def run_one(engine, request: Request) -> tuple[str, str | None]:
    """(text, finish reason) of one request run to the end; the matcher is gone after."""
    outputs = engine.generate([request])[request.request_id]
    return "".join(o.text for o in outputs), outputs[-1].finish_reason


@pytest.mark.parametrize("subject", list(SCHEMAS))
def test_greedy_output_follows_the_json_schema_and_stops(smollm, make_engine, subject):
    schema = SCHEMAS[subject]
    request = constrained(
        chat(smollm, f"Describe a {subject} as JSON."),
        Constraint("json_schema", json.dumps(schema)),
    )
    text, reason = run_one(make_engine(), request)
    jsonschema.validate(json.loads(text), schema)
    assert reason == "stop"


def test_json_object_parses_to_a_dict(smollm, make_engine):
    request = constrained(
        chat(smollm, "Give a short JSON object with the name and age of a person."),
        Constraint("json_object"),
    )
    text, reason = run_one(make_engine(), request)
    assert isinstance(json.loads(text), dict) and reason == "stop"


def test_regex_and_ebnf_end_the_sequence_even_when_eos_is_ignored(smollm, make_engine):
    engine = make_engine()
    code, yes_no = r"\d{3}-[a-z]{2}", 'root ::= ("yes" | "no") "."'
    # ignore_eos: the stop token does not end them, the terminated grammar does.
    regex = constrained(chat(smollm, "Give a code."), Constraint("regex", code), ignore_eos=True)
    ebnf = constrained(
        chat(smollm, "Is the sky blue?"),
        Constraint("ebnf", yes_no),
        ignore_eos=True,
        logprobs=True,
        top_logprobs=5,
    )
    engine.add_request(regex)
    engine.add_request(ebnf)
    produced = engine.step()  # both prompts prefilled, first tokens sampled
    seqs = list(engine.scheduler.running)
    assert len(seqs) == 2 and all(seq.matcher is not None for seq in seqs)
    while engine.has_work():
        produced += engine.step()
    for request, pattern in ((regex, code), (ebnf, r"(yes|no)\.")):
        outputs = [o for o in produced if o.request_id == request.request_id]
        assert re.fullmatch(pattern, "".join(o.text for o in outputs))
        assert outputs[-1].finish_reason == "stop"
        assert outputs[-1].token_ids[0] in smollm.tokenizer.stop_token_ids
    # Alternatives the grammar ruled out are dropped, not reported as -inf.
    logprobs = [lp for o in produced if o.request_id == ebnf.request_id for lp in o.logprobs]
    assert logprobs and all(math.isfinite(v) for lp in logprobs for _, v in lp.top)
    assert any(len(lp.top) < 5 for lp in logprobs)
    assert all(seq.matcher is None for seq in seqs)  # dropped when they finished


def test_abort_drops_the_matcher(smollm, make_engine):
    engine = make_engine()
    request = constrained(chat(smollm, "Describe a city as JSON."), Constraint("json_object"))
    engine.add_request(request)
    engine.step()
    (seq,) = engine.scheduler.running
    assert seq.matcher is not None and seq.output_ids
    engine.abort(request.request_id)
    engine.step()
    assert seq.matcher is None and not engine.has_work()


def test_unconstrained_neighbour_is_identical_to_running_alone(smollm, make_engine):
    free_prompt = chat(smollm, "Write one sentence about the sea.")
    ((alone, _),) = run_greedy(make_engine(), [greedy_request(free_prompt, 24)]).values()
    free = greedy_request(free_prompt, 24)
    schema = SCHEMAS["shirt"]
    constraint = Constraint("json_schema", json.dumps(schema))
    bound = constrained(chat(smollm, "Describe a shirt as JSON."), constraint)
    results = make_engine().generate([free, bound])
    assert [t for o in results[free.request_id] for t in o.token_ids] == alone
    jsonschema.validate(json.loads("".join(o.text for o in results[bound.request_id])), schema)


def test_mask_touches_only_constrained_rows_that_sample(smollm, make_engine):
    engine = make_engine()
    matcher = engine.grammar.matcher(Constraint("regex", "[0-9]+"))
    prompt = chat(smollm, "Count.")

    def seq(matcher=None) -> Sequence:
        return Sequence(greedy_request(prompt, 4), "t", list(prompt), None, matcher=matcher)

    free, bound, prefilling = (
        seq(),
        seq(matcher),
        seq(engine.grammar.matcher(Constraint("json_object"))),
    )
    batch = [(free, len(prompt)), (bound, len(prompt)), (prefilling, len(prompt) - 1)]
    logits = torch.randn(3, smollm.config.vocab_size, generator=torch.Generator().manual_seed(0))
    before = logits.clone()
    engine.grammar.mask_batch(logits, batch)
    assert torch.equal(logits[0], before[0]) and torch.equal(logits[2], before[2])
    allowed = torch.isfinite(logits[1]).nonzero().flatten().tolist()
    assert allowed and all(smollm.tokenizer.decode([t]).isdigit() for t in allowed)


@pytest.mark.parametrize(
    "constraint",
    [
        Constraint("json_schema", '{"type": "nonsense"}'),
        Constraint("json_schema", '{"type": "object",'),
        Constraint("regex", "(abc"),
        Constraint("ebnf", "root ::= missing_rule"),
        Constraint("yaml", "a: b"),
    ],
)
def test_invalid_constraint_is_an_invalid_request_at_add(smollm, make_engine, constraint):
    engine = make_engine()
    with pytest.raises(InvalidRequest) as caught:
        engine.add_request(constrained(chat(smollm, "Hi."), constraint))
    assert caught.value.param == "response_format" and "/project/" not in caught.value.message
    assert not engine.has_work()


def test_invalid_constraint_reaches_the_async_caller(smollm, make_engine):
    async def consume() -> None:
        engine = AsyncEngine(make_engine())
        engine.start()
        try:
            request = constrained(chat(smollm, "Hi."), Constraint("regex", "(abc"))
            async for _ in engine.stream(request):
                pass
        finally:
            await engine.stop()

    with pytest.raises(InvalidRequest):
        asyncio.run(consume())


def test_seeded_sampling_follows_the_schema(smollm, make_engine):
    schema = {
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", "blue"]},
            "count": {"type": "integer", "minimum": 1, "maximum": 9},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 2},
        },
        "required": ["color", "count", "tags"],
    }
    constraint = Constraint("json_schema", json.dumps(schema))
    engine = make_engine()
    for seed in (1, 2):
        prompt = chat(smollm, f"Describe shirt number {seed} as JSON.")
        request = constrained(prompt, constraint, temperature=1.0, top_k=50, seed=seed)
        text, reason = run_one(engine, request)
        jsonschema.validate(json.loads(text), schema)
        assert reason == "stop"


def test_blended_prefill_first_token_is_constrained(smollm, make_engine, tmp_path):
    store = ChunkKVStore("fp", "cpu", 64 << 20, disk_path=tmp_path, disk_bytes=1 << 28)
    engine = make_engine(chunk_store=store, chunk_settings=ChunkCacheSettings())
    passages = {
        "Oslo": "Oslo is the capital of Norway. It lies at the head of the Oslofjord and has "
        "about seven hundred thousand people, many parks and a large harbour.",
        "Lima": "Lima is the capital of Peru. It sits on the Pacific coast in a desert valley "
        "and is home to about ten million people and old colonial houses.",
    }
    chunks = [
        ContextChunk(smollm.tokenizer.encode(text), title) for title, text in passages.items()
    ]
    question = [{"role": "user", "content": "Which country is Oslo in? Answer as JSON."}]
    prompt = assemble_rag_prompt(smollm.tokenizer, question, chunks)
    schema = SCHEMAS["city"]
    request = constrained(
        prompt.token_ids,
        Constraint("json_schema", json.dumps(schema)),
        kv_reuse=KVReuse.CACHEBLEND,
        chunk_spans=tuple(prompt.spans),
    )
    outputs = engine.generate([request])[request.request_id]
    assert outputs[0].selector == "cacheblend" and outputs[0].chunk_tokens_reused > 0
    jsonschema.validate(json.loads("".join(o.text for o in outputs)), schema)
    assert outputs[-1].finish_reason == "stop"


def test_preempted_sequences_keep_their_grammar_state(smollm, make_engine):
    # A fixed structure: a matcher reset or a token accepted twice would break the match.
    words = r'\[("[a-z]{1,6}", ){19}"[a-z]{1,6}"\]'
    prompts = [text_prompt(smollm, seed, 8) for seed in range(2)]
    alone = []
    for prompt in prompts:
        request = constrained(prompt, Constraint("regex", words), max_tokens=96)
        alone.append(engine_tokens(make_engine(), request))
    engine = make_engine(kv_cache_mb=16)  # both prompts fit, both answers do not
    requests = [constrained(p, Constraint("regex", words), max_tokens=96) for p in prompts]
    results = engine.generate(requests)
    assert engine.scheduler.num_preemptions > 0
    for request, expected in zip(requests, alone, strict=True):
        outputs = results[request.request_id]
        assert [t for o in outputs for t in o.token_ids] == expected
        assert re.fullmatch(words, "".join(o.text for o in outputs))
        assert outputs[-1].finish_reason == "stop"


def test_strict_is_carried_to_the_grammar(smollm, make_engine):
    """strict (the default) allows only the named properties; strict false allows others,
    as JSON Schema does when additionalProperties is not given."""
    engine = make_engine()
    schema = json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}})
    extra = '{"a": 1, "b": 2}'  # the compact form's separators have one space
    for strict, accepted in ((True, False), (False, True)):
        matcher = engine.grammar.matcher(Constraint("json_schema", schema, strict=strict))
        assert matcher is not None and matcher.accept_string(extra) is accepted
    strict = engine.grammar.matcher(Constraint("json_schema", schema))
    assert strict is not None and strict.accept_string('{"a": 1}') and strict.is_completed()
