"""A malformed body gets a 4xx in Anthropic's error shape from the real `foundry serve`, and
the server's log holds no traceback for it: lone surrogates, nesting past any sane depth,
NaN and infinite numbers, bytes that are not UTF-8, a body that is not an object, a body
over the limit sent in chunks, a key header that is not ASCII, a client that hangs up
mid-body. Each goes over real HTTP to the server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import socket
import time
from typing import Any

import httpx2
import pytest

from tests.serve_helpers import READ_TOOL, serving

pytestmark = pytest.mark.mlx
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
HEAD = '{"model": "claude-x", "max_tokens": 5, '
HI = '"messages": [{"role": "user", "content": "hi"}]'
DEEP = 100_000


def _nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def _schema(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


def _tool_use_turns(tool_input: str) -> str:
    return (
        '"messages": [{"role": "user", "content": "read a.py"}, {"role": "assistant", '
        '"content": [{"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": '
        + tool_input
        + '}]}, {"role": "user", "content": [{"type": "tool_result", "tool_use_id": '
        '"toolu_1", "content": "ok"}]}]'
    )


# (what it is, the raw body, a word the message must hold)
BODIES: list[tuple[str, bytes, str]] = [
    (
        "a lone surrogate in a message",
        (HEAD + '"messages": [{"role": "user", "content": "hi \\ud800 there"}]}').encode(),
        "surrogate",
    ),
    (
        "a lone low surrogate in the system prompt",
        (HEAD + '"system": "rules \\udfff", ' + HI + "}").encode(),
        "surrogate",
    ),
    (
        "a lone surrogate inside a tool_use input",
        (HEAD + _tool_use_turns('{"path": "a\\ud83d.py"}') + "}").encode(),
        "surrogate",
    ),
    (
        "a lone surrogate as an object key in a tool schema",
        (
            HEAD + '"tools": [{"name": "t", "input_schema": {"type": "object", "properties": '
            '{"\\udc00": {"type": "string"}}}}], ' + HI + "}"
        ).encode(),
        "surrogate",
    ),
    (
        "a lone surrogate in the model id",
        b'{"model": "claude-\\ud800", "max_tokens": 5, ' + HI.encode() + b"}",
        "surrogate",
    ),
    (
        "100,000-deep nesting in an ignored field",
        (HEAD + '"metadata": ' + _nested(DEEP) + ", " + HI + "}").encode(),
        "nest",
    ),
    ("100,000-deep nesting as the whole body", _nested(DEEP).encode(), "nest"),
    (
        "100,000-deep objects",
        ('{"a": ' * DEEP + "1" + "}" * DEEP).encode(),
        "nest",
    ),
    (
        "deep nesting inside a tool's input schema",
        (
            HEAD
            + '"tools": [{"name": "t", "input_schema": '
            + json.dumps(_schema(400))
            + "}], "
            + HI
            + "}"
        ).encode(),
        "nest",
    ),
    (
        "deep nesting inside a tool_use input",
        (HEAD + _tool_use_turns('{"path": ' + _nested(600, '"a"') + "}") + "}").encode(),
        "nest",
    ),
    ("NaN as temperature", (HEAD + '"temperature": NaN, ' + HI + "}").encode(), "NaN"),
    (
        "NaN inside a tool_use input",
        (HEAD + _tool_use_turns('{"path": "a.py", "n": NaN}') + "}").encode(),
        "NaN",
    ),
    (
        "Infinity inside a tool schema",
        (
            HEAD + '"tools": [{"name": "t", "input_schema": {"type": "object", "maximum": '
            "-Infinity}}], " + HI + "}"
        ).encode(),
        "Infinity",
    ),
    (
        "a number too large for a double, inside a tool_use input",
        (HEAD + _tool_use_turns('{"path": "a.py", "n": 1e999}') + "}").encode(),
        "number",
    ),
    (
        "an integer of 5,000 digits",
        (HEAD + '"metadata": {"n": ' + "9" * 5000 + "}, " + HI + "}").encode(),
        "number",
    ),
    (
        "an empty stop sequence (it swallowed the whole reply)",
        (HEAD + '"stop_sequences": ["END", ""], ' + HI + "}").encode(),
        "stop_sequences.1: must not be empty",
    ),
    ("bytes that are not UTF-8", b'{"model": "claude-\xff\xfe", ' + HI.encode() + b"}", "UTF-8"),
    ("UTF-8 that encodes a surrogate", b'{"model": "claude-\xed\xa0\x80"}', "UTF-8"),
    ("a JSON array", b"[]", "object"),
    ("a JSON string", b'"hi"', "object"),
    ("JSON null", b"null", "object"),
    ("an empty body", b"", "JSON"),
]


def _assert_invalid(response: httpx2.Response, word: str, status: int = 400) -> None:
    assert response.status_code == status, response.text[:300]
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    expected = "invalid_request_error" if status == 400 else "request_too_large"
    assert body["error"]["type"] == expected
    assert word.lower() in body["error"]["message"].lower(), body["error"]["message"]
    assert "Traceback" not in body["error"]["message"] and len(body["error"]["message"]) < 500


def _no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]
    assert "Traceback" not in caplog.text


def test_every_malformed_body_is_a_400_without_a_traceback(server, caplog) -> None:
    caplog.set_level(logging.INFO)
    headers = {"content-type": "application/json"}
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        for what, raw, word in BODIES:
            response = httpx2.post(f"{server.url}{path}", content=raw, headers=headers, timeout=60)
            try:
                _assert_invalid(response, word)
            except AssertionError as exc:
                raise AssertionError(f"{path}, {what}: {exc}") from None
    _no_traceback(caplog)
    assert server.ledger_rows() == []  # nothing reached the model
    # The server still answers, and a valid emoji (a surrogate *pair* escaped) is text.
    ok = httpx2.post(
        f"{server.url}/v1/messages",
        content=(HEAD + '"messages": [{"role": "user", "content": "hi \\ud83d\\ude00"}]}').encode(),
        headers=headers,
        timeout=60,
    )
    assert ok.status_code == 200 and ok.json()["type"] == "message"


def test_a_tool_schema_of_ordinary_depth_is_served_and_a_deep_one_refused_at_once(
    server,
) -> None:
    """Real schemas nest a few objects deep. 20 used to take seconds to turn into a
    tool-call grammar (24, a minute, with the model's worker blocked) while each level was
    walked twice; walked once, 30 objects (61 levels) are served, and past the 64-level cap
    a client's absurd depth is a quick 400."""

    def ask(depth: int) -> httpx2.Response:
        body = {
            "model": "claude-x",
            "max_tokens": 4,
            "tools": [READ_TOOL, {"name": "deep", "input_schema": _schema(depth)}],
            "messages": [{"role": "user", "content": "hi"}],
        }
        return httpx2.post(f"{server.url}/v1/messages", json=body, timeout=60)

    assert ask(12).status_code == 200
    started = time.monotonic()
    assert ask(30).status_code == 200
    assert time.monotonic() - started < 30  # generous: it takes well under a second
    started = time.monotonic()
    _assert_invalid(ask(32), "tools.1.input_schema: nested 65 levels deep, over the 64")
    assert time.monotonic() - started < 2


def test_a_chunked_body_over_the_limit_is_a_413(tiny_model_dir, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    with serving(tiny_model_dir, tmp_path, serve={"max_request_mb": 1}) as served:

        def chunks():  # no content-length: the server counts as it reads
            yield (HEAD + '"messages": [{"role": "user", "content": "').encode()
            for _ in range(40):
                yield b"x" * 65536
            yield b'"}]}'

        response = httpx2.post(f"{served.url}/v1/messages", content=chunks(), timeout=60)
        _assert_invalid(response, "limit", status=413)
    _no_traceback(caplog)


def test_odd_headers_and_a_client_that_hangs_up_mid_body(tiny_model_dir, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    with serving(tiny_model_dir, tmp_path, api_key="s3cret-key") as served:
        body = (HEAD + HI + "}").encode()
        # Bytes that are not ASCII (nor UTF-8) in the key header: a 401, not a crash.
        response = httpx2.post(
            f"{served.url}/v1/messages",
            content=body,
            headers={"x-api-key": b"s3cret-\xff\xfe", "content-type": "application/json"},
        )
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
        bearer = httpx2.post(
            f"{served.url}/v1/messages",
            content=body,
            headers={"authorization": b"Bearer \xc3\xa9\xed\xa0\x80"},
        )
        assert bearer.status_code == 401
        # Headers promise 10,000 bytes; 20 arrive and the client hangs up.
        host, port = served.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: s3cret-key\r\n"
                b"content-type: application/json\r\ncontent-length: 10000\r\n\r\n" + body[:20]
            )
        time.sleep(0.5)
        # The server is still there.
        assert httpx2.get(f"{served.url}/health").json()["status"] == "ok"
    _no_traceback(caplog)
