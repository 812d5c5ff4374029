"""Grammar-constrained tool calls for local models: every call names one of the request's
tools and validates against its schema, by construction, for a random-weight model (the
worst case), in foundry's fallback format and in a native chat-template format."""

from __future__ import annotations

import json

import jsonschema
import pytest

from foundry.backends.base import Message, ModelRequest, ToolChoice
from foundry.config import FoundryConfig
from foundry.orchestrator.tools import TOOL_SPECS

pytestmark = pytest.mark.mlx

SYSTEM = "You are a careful build orchestrator. " * 12  # long enough to be saved (>= 32 tokens)
SCHEMAS = {spec.name: spec.input_schema for spec in TOOL_SPECS}
SEEDS = range(12)


def config(tmp_path, **mlx) -> FoundryConfig:
    return FoundryConfig.model_validate(
        {
            "prefix_cache": {"dir": str(tmp_path / "store")},
            "mlx": {"max_tokens": 384, "temperature": 1.0, **mlx},
        }
    )


def backend(model_dir, cfg):
    from foundry.backends.mlx import MLXBackend

    return MLXBackend(cfg, str(model_dir))


def request(choice: ToolChoice | None, max_tokens: int = 384) -> ModelRequest:
    return ModelRequest(
        "tiny",
        SYSTEM,
        list(TOOL_SPECS),
        [Message("user", [{"type": "text", "text": "Build a todo app"}])],
        max_tokens=max_tokens,
        tool_choice=choice,
    )


def replies(b, choice: ToolChoice | None, max_tokens: int = 384, seeds=SEEDS):
    """One reply per seed, sampled at temperature 1 so the seeds differ."""
    from foundry.local.runtime import import_mlx

    mx = import_mlx()
    for seed in seeds:
        mx.random.seed(seed)
        yield b.complete(request(choice, max_tokens))


def assert_valid_calls(response, allowed: set[str]) -> None:
    calls = [block for block in response.content if block["type"] == "tool_use"]
    assert response.stop_reason == "tool_use" and calls, response.content
    for call in calls:
        assert call["name"] in allowed
        jsonschema.validate(call["input"], SCHEMAS[call["name"]])


# The six tools' schemas take ~2,700 tokens of the tiny vocabulary: room for them and a reply.
WINDOW = 8192


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from tests.tiny_model import build_tiny_model

    path = tmp_path_factory.mktemp("fallback") / "model"
    return build_tiny_model(path, max_position_embeddings=WINDOW, sharp=False)


@pytest.fixture(scope="module")
def native_model_dir(tmp_path_factory):
    from tests.tiny_model import NATIVE_TOOLS_TEMPLATE, build_tiny_model

    path = tmp_path_factory.mktemp("native") / "model"
    return build_tiny_model(
        path, chat_template=NATIVE_TOOLS_TEMPLATE, max_position_embeddings=WINDOW, sharp=False
    )


@pytest.fixture(params=["fallback", "native"])
def model_dir(request, tiny_model_dir, native_model_dir):
    return tiny_model_dir if request.param == "fallback" else native_model_dir


def test_the_formats_under_test(tiny_model_dir, native_model_dir, tmp_path) -> None:
    from foundry.local.tool_grammar import FALLBACK_FORMAT, NATIVE_JSON_FORMAT

    fallback, native = (
        backend(tiny_model_dir, config(tmp_path)),
        backend(native_model_dir, config(tmp_path)),
    )
    fallback.load()
    native.load()
    assert fallback._renderer.call_format == FALLBACK_FORMAT
    assert native._renderer.native and native._renderer.call_format == NATIVE_JSON_FORMAT


def test_any_every_reply_is_a_valid_call(model_dir, tmp_path) -> None:
    """Over many seeds, every reply is one or more calls of real tools whose arguments
    validate against the tool's schema, and the turn ends with the calls."""
    b = backend(model_dir, config(tmp_path))
    ended_early = 0
    for response in replies(b, ToolChoice("any")):
        if response.stop_reason == "max_tokens":  # a string ran to the output limit
            # The cut call stays text and is never run; the whole calls before it are valid.
            for call in (block for block in response.content if block["type"] == "tool_use"):
                jsonschema.validate(call["input"], SCHEMAS[call["name"]])
            continue
        assert_valid_calls(response, set(SCHEMAS))
        assert b.last_cache_event["constrained"] is True
        ended_early += response.usage.output_tokens < 384
    # Random weights may wander in a long string past the limit (a cut call is reported as
    # max_tokens, never run); many replies still end with their calls.
    assert ended_early >= len(SEEDS) // 3


def test_a_named_tool_is_the_only_call(model_dir, tmp_path) -> None:
    b = backend(model_dir, config(tmp_path))
    done = 0
    for response in replies(b, ToolChoice("tool", "list_files")):
        assert_valid_calls(response, {"list_files"})
        assert len([c for c in response.content if c["type"] == "tool_use"]) == 1
        done += 1
    assert done == len(SEEDS)


def test_one_call_when_parallel_calls_are_off(model_dir, tmp_path) -> None:
    b = backend(model_dir, config(tmp_path))
    for response in replies(b, ToolChoice("any", parallel=False)):
        if response.stop_reason != "max_tokens":
            assert_valid_calls(response, set(SCHEMAS))
            assert len([c for c in response.content if c["type"] == "tool_use"]) == 1


def test_none_and_auto_never_leave_a_malformed_call(model_dir, tmp_path) -> None:
    """With "none" a reply is text without a call tag; with "auto" it is text, calls, or
    both, and never a tag that failed to parse (it would be left in the text)."""
    b = backend(model_dir, config(tmp_path))
    tag = b.tool_call_tag
    few = range(6)
    for response in replies(b, ToolChoice("none"), 96, few):
        assert all(block["type"] == "text" for block in response.content)
        assert tag not in "".join(block["text"] for block in response.content)
    for response in replies(b, None, 96, few):
        text = "".join(block.get("text", "") for block in response.content)
        if response.stop_reason != "max_tokens":
            assert tag not in text
        for call in (c for c in response.content if c["type"] == "tool_use"):
            jsonschema.validate(call["input"], SCHEMAS[call["name"]])


def test_the_grammar_forces_tokens_in_one_step(tiny_model_dir, tmp_path) -> None:
    """A call's fixed parts ({"name": ", the tags) are forced by the grammar: fed to the
    model together, in fewer forward passes than tokens."""
    b = backend(tiny_model_dir, config(tmp_path))
    b.complete(request(ToolChoice("tool", "list_files")))
    event = b.last_cache_event
    assert event["forced_tokens"] > 5
    assert event["mask_ms_per_token"] is not None and event["mask_ms_per_token"] > 0


def test_the_prefix_cache_hits_with_constraints_on(tiny_model_dir, tmp_path) -> None:
    """Constraints shape the reply, not the prompt: a prefix saved by an unconstrained
    backend is read by a constrained one, and the next turn reuses the conversation."""
    plain = backend(tiny_model_dir, config(tmp_path, constrained_tools=False))
    first = plain.complete(request(None))
    assert first.usage.cache_write_5m_tokens > 0
    constrained = backend(tiny_model_dir, config(tmp_path))
    second = constrained.complete(request(ToolChoice("any")))
    assert second.usage.cache_read_tokens == first.usage.cache_write_5m_tokens
    assert second.usage.cache_write_5m_tokens == 0
    assert constrained.last_cache_event["constrained"] is True
    turn = request(ToolChoice("any"))
    turn.messages += [
        Message("assistant", second.content),
        Message(
            "user",
            [
                {"type": "tool_result", "tool_use_id": block["id"], "content": "ok"}
                for block in second.content
                if block["type"] == "tool_use"
            ]
            or [{"type": "text", "text": "go on"}],
        ),
    ]
    third = constrained.complete(turn)
    assert third.usage.cache_read_tokens > second.usage.cache_read_tokens


def test_the_off_switch(tiny_model_dir, tmp_path) -> None:
    """mlx.constrained_tools false: the model's own sampling, which for random weights
    almost never makes a call; the same seeds constrained always do."""
    off = backend(tiny_model_dir, config(tmp_path, constrained_tools=False))
    few = range(6)
    free = [r.stop_reason for r in replies(off, ToolChoice("any"), 96, few)]
    assert "constrained" not in off.last_cache_event
    assert free.count("tool_use") < len(few) // 2
    on = backend(tiny_model_dir, config(tmp_path))
    forced = [r.stop_reason for r in replies(on, ToolChoice("tool", "list_files"), 384, few)]
    assert forced == ["tool_use"] * len(few)


def grammar_accepts(tokenizer_dir, text: str, choice: ToolChoice | None, fmt=None) -> bool:
    """Whether the grammar for all six tools accepts `text` as a whole reply."""
    import llguidance
    from transformers import AutoTokenizer

    from foundry.local.constrained import hf_grammar_tokenizer
    from foundry.local.tool_grammar import FALLBACK_FORMAT, tool_call_grammar

    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    grammar_tokenizer = hf_grammar_tokenizer(hf, len(hf), [hf.convert_tokens_to_ids("<|im_end|>")])
    grammar = tool_call_grammar(list(TOOL_SPECS), choice, fmt or FALLBACK_FORMAT)
    matcher = llguidance.LLMatcher(grammar_tokenizer, grammar, log_level=0)
    tokens = hf.encode(text, add_special_tokens=False)
    return matcher.consume_tokens(tokens) and matcher.is_accepting()


def call(name: str, arguments: dict) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


TWO_CALLS = call("list_files", {}) + "\n" + call("list_files", {})
FINISH = {"summary": "done", "report": "r"}
REQ = ("test_command",)


@pytest.mark.parametrize(
    ("text", "choice", "accepted"),
    [
        ("Done: nothing to call.", None, True),
        ("I will look." + call("list_files", {}), None, True),
        (call("read_file", {"path": "a"}) + "\n" + call("list_files", {}), None, True),
        (call("read_file", {"path": "a"}), ToolChoice("any"), True),
        ("First I look." + call("read_file", {"path": "a"}), ToolChoice("any"), False),
        ("plain text", ToolChoice("any"), False),
        (call("rm_rf", {"path": "/"}), ToolChoice("any"), False),  # not a tool
        (call("read_file", {}), ToolChoice("any"), False),  # path is required
        (call("read_file", {"path": 1}), ToolChoice("any"), False),  # path is a string
        (call("read_file", {"path": "a", "mode": "w"}), ToolChoice("any"), False),  # extra key
        (call("read_file", {"path": "a", "offset": 0}), ToolChoice("any"), False),  # minimum 1
        (call("list_files", {}), ToolChoice("tool", "read_file"), False),
        (call("read_file", {"path": "a"}), ToolChoice("tool", "read_file"), True),
        (TWO_CALLS, ToolChoice("any", parallel=False), False),
        (TWO_CALLS, ToolChoice("any"), True),
        ("text " + call("list_files", {}), ToolChoice("none"), False),
        ("only text", ToolChoice("none"), True),
        (call("finish_phase", FINISH), ToolChoice("tool", "finish_phase"), True),
        (call("finish_phase", {**FINISH, "summary": ""}), ToolChoice("any"), False),
        (call("finish_phase", {**FINISH, "summary": " \n"}), ToolChoice("any"), False),
        (call("finish_phase", FINISH), ToolChoice("tool", "finish_phase", required=REQ), False),
        (
            call("finish_phase", {**FINISH, "test_command": "  "}),
            ToolChoice("tool", "finish_phase", required=REQ),
            False,
        ),
        (
            call("finish_phase", {**FINISH, "test_command": "pytest"}),
            ToolChoice("tool", "finish_phase", required=REQ),
            True,
        ),
    ],
)
def test_the_grammar(tiny_model_dir, text, choice, accepted) -> None:
    assert grammar_accepts(tiny_model_dir, text, choice) is accepted


def test_the_native_grammar_allows_the_template_newlines(native_model_dir) -> None:
    from foundry.local.tool_grammar import NATIVE_JSON_FORMAT

    body = json.dumps({"name": "list_files", "arguments": {"pattern": "*.py"}})
    text = f"<tool_call>\n{body}\n</tool_call>"
    assert grammar_accepts(native_model_dir, text, ToolChoice("any"), NATIVE_JSON_FORMAT)


def test_strict_schema_only_narrows() -> None:
    from foundry.local.tool_grammar import strict_schema

    schema = {
        "type": "object",
        "properties": {
            "properties": {"type": "object", "properties": {"x": {"type": "string"}}},
            "free": {"type": "object"},
        },
        "enum": [{"properties": {}}],
    }
    strict = strict_schema(schema)
    assert strict["additionalProperties"] is False
    assert strict["properties"]["properties"]["additionalProperties"] is False
    assert "additionalProperties" not in strict["properties"]["free"]  # lists no properties
    assert strict["enum"] == schema["enum"]  # data, not a schema
    open_schema = {"type": "object", "properties": {}, "additionalProperties": True}
    assert strict_schema(open_schema) == open_schema
    # Inside `not` tightening would widen the whole; inside `allOf` refuse another part's keys.
    kept = {"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}], "not": schema}
    assert strict_schema(kept) == kept


def _nested_schema(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for level in range(depth):
        schema = {"type": "object", "properties": {f"p{level}": schema, "leaf": {}}}
    return schema


def test_a_deep_schema_is_walked_once_per_subschema(monkeypatch) -> None:
    """Issue 21: `properties` was walked twice per level, 2**depth visits (20 levels took
    4 s, 40 over a minute). Counted through the module's own name, which the recursion
    uses; the count stops an exponential walk at once instead of letting it run."""
    import time

    from foundry.local import tool_grammar

    depth, visits = 60, 0
    walk = tool_grammar.strict_schema

    def counted(schema):
        nonlocal visits
        visits += 1
        assert visits <= 20 * depth, "strict_schema revisits subschemas (exponential walk)"
        return walk(schema)

    monkeypatch.setattr(tool_grammar, "strict_schema", counted)
    counted(_nested_schema(depth))
    assert visits <= 10 * depth  # each level: itself, its two properties, a few values
    monkeypatch.undo()
    started = time.perf_counter()
    strict = tool_grammar.strict_schema(_nested_schema(depth))
    assert time.perf_counter() - started < 1.0  # generous: it takes about a millisecond
    node = strict
    for level in reversed(range(depth)):
        assert node["additionalProperties"] is False and node["properties"]["leaf"] == {}
        node = node["properties"][f"p{level}"]
    assert node == {"type": "string"}


def _old_strict_schema(schema):
    """strict_schema as it was before issue 21 (exponential, same output): the reference."""
    from foundry.local.tool_grammar import DATA_KEYWORDS, KEPT_KEYWORDS

    if isinstance(schema, list):
        return [_old_strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    tightened = {
        key: value if key in DATA_KEYWORDS | KEPT_KEYWORDS else _old_strict_schema(value)
        for key, value in schema.items()
    }
    properties = schema.get("properties")
    if isinstance(properties, dict):
        tightened["properties"] = {n: _old_strict_schema(v) for n, v in properties.items()}
        if "additionalProperties" not in schema and "patternProperties" not in schema:
            tightened["additionalProperties"] = False
    return tightened


@pytest.mark.parametrize(
    "schema",
    [
        *SCHEMAS.values(),
        _nested_schema(6),
        {"properties": {"const": {"properties": {}}, "not": {"type": "object"}}},
        {"properties": {"enum": {"enum": [1]}, "allOf": {"allOf": [{"properties": {}}]}}},
        {"properties": "not an object", "items": {"properties": {"a": {}}}},
        {"properties": {}, "patternProperties": {"^x": {"properties": {"y": {}}}}},
        {"anyOf": [{"properties": {"a": {}}}, True], "$defs": {"d": {"properties": {}}}},
        {"type": "array", "prefixItems": [{"properties": {"q": {}}}], "items": False},
    ],
)
def test_strict_schema_writes_what_it_always_wrote(schema) -> None:
    from foundry.local.tool_grammar import strict_schema

    assert strict_schema(schema) == _old_strict_schema(schema)


def test_a_required_argument_keeps_its_own_pattern() -> None:
    from foundry.backends.base import ToolSpec
    from foundry.local.tool_grammar import NOT_BLANK, call_schema

    spec = ToolSpec(
        "t",
        "d",
        {"type": "object", "properties": {"a": {"type": "string", "pattern": "^x"}, "b": {}}},
    )
    arguments = call_schema(spec, ("a", "b"))["properties"]["arguments"]
    assert arguments["required"] == ["a", "b"]
    assert arguments["properties"]["a"]["pattern"] == "^x"
    plain = ToolSpec("t", "d", {"type": "object", "properties": {"a": {"type": "string"}}})
    assert call_schema(plain, ("a",))["properties"]["arguments"]["properties"]["a"] == {
        "type": "string",
        "pattern": NOT_BLANK,
    }


@pytest.mark.parametrize("local", [True, False])
def test_what_a_build_asks_of_a_local_model(local) -> None:
    """One call on every turn and finish_phase (with what the phase's finish needs) on the
    last, for a local model; Claude is left to choose."""
    from types import SimpleNamespace

    from foundry.orchestrator.metered import ModelSession

    session = ModelSession(
        backend=SimpleNamespace(local=local),  # type: ignore[arg-type]
        ledger=None,  # type: ignore[arg-type]
        build_id="b",
        pricing=None,  # type: ignore[arg-type]
        system="s",
        tools=list(TOOL_SPECS),
        max_tokens=64,
        ttl=None,
        events=None,  # type: ignore[arg-type]
    )
    turn = session.tool_choice(last_turn=False)
    last = session.tool_choice(last_turn=True, finish_requires=("test_command",))
    if local:
        assert turn == ToolChoice("any", parallel=False)
        assert last == ToolChoice("tool", "finish_phase", required=("test_command",))
    else:
        assert turn is None and last is None


def test_a_call_stuck_in_a_loop_is_wound_up(tmp_path, tmp_path_factory) -> None:
    """The sharp tiny model, greedy, repeats one token inside the path string forever; the
    loop is caught and the call steered to its end: a valid call, not a cut-off reply."""
    from tests.tiny_model import build_tiny_model

    sharp = build_tiny_model(tmp_path_factory.mktemp("sharp") / "model")
    b = backend(sharp, config(tmp_path, temperature=0.0))
    read = next(t for t in TOOL_SPECS if t.name == "read_file")
    ask = ModelRequest(
        "tiny",
        SYSTEM,
        [read],
        [Message("user", [{"type": "text", "text": "Read the notes"}])],
        max_tokens=384,
        tool_choice=ToolChoice("tool", "read_file"),
    )
    response = b.complete(ask)
    assert b.last_cache_event.get("wound_up") is True
    assert_valid_calls(response, {"read_file"})
    assert response.usage.output_tokens < 200


def test_an_unenforceable_keyword_is_one_line_per_tool_once(tiny_model_dir, caplog) -> None:
    """Claude Code's Agent tool uses propertyNames, which llguidance does not implement: the
    grammar ignores that keyword. Said once, naming the tool and the keyword; not a 25 KB
    grammar dump on every request (issue 22)."""
    import logging

    from transformers import AutoTokenizer

    from foundry.backends.base import ToolSpec
    from foundry.local.constrained import ToolGrammars, hf_grammar_tokenizer
    from foundry.local.tool_grammar import FALLBACK_FORMAT

    hf = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    end = [hf.convert_tokens_to_ids("<|im_end|>")]
    grammars = ToolGrammars(
        lambda: hf_grammar_tokenizer(hf, len(hf), end), FALLBACK_FORMAT, enabled=True
    )
    agent = ToolSpec(
        "Agent",
        "Start a sub-agent. " * 200,  # a long description, as Claude Code's tools have
        {
            "type": "object",
            "properties": {"env": {"type": "object", "propertyNames": {"pattern": "^[A-Z]+$"}}},
        },
    )
    req = request(ToolChoice("auto"))
    req.tools = [*TOOL_SPECS, agent]
    with caplog.at_level(logging.WARNING, logger="foundry.local.constrained"):
        for _ in range(3):
            assert grammars.for_request(req) is not None  # the rest is still enforced
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert "'Agent'" in lines[0] and "propertyNames" in lines[0] and len(lines[0]) < 200
