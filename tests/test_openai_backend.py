"""The openai backend against a local OpenAI-compatible server over real HTTP, with the real
`openai` SDK: the request layout that keeps prefixes cacheable, tool calls both ways, the
usage as each kind of server reports it, where requests cost money, and a whole build."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator

import pytest

from foundry.backends.base import FailedAttempt, Message, ModelRequest, ToolChoice
from foundry.backends.openai.client import SERVER_MODEL, OpenAIBackend
from foundry.backends.openai.endpoint import is_private_host
from foundry.config import FoundryConfig, parse_config
from foundry.errors import BackendError, UsageError
from foundry.ledger import Ledger, utc_now
from foundry.orchestrator.tools import tool_specs
from foundry.usage import Usage
from tests.fake_openai import FakeOpenAI
from tests.orchestrator_helpers import write_template

MODEL = "fake-model"
SYSTEM = "You orchestrate builds. Follow the rules below exactly.\n" * 40


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def backend(server: FakeOpenAI, config: FoundryConfig | None = None, **kw) -> OpenAIBackend:
    return OpenAIBackend(config or FoundryConfig(), MODEL, base_url=server.base_url, **kw)


def request(messages: list[Message], **kw) -> ModelRequest:
    return ModelRequest(MODEL, SYSTEM, tool_specs(), messages, 200, **kw)


def user(text: str) -> Message:
    return Message("user", [{"type": "text", "text": text}])


def converse(be: OpenAIBackend, server: FakeOpenAI, turns: int) -> list[Usage]:
    """A phase: the model lists files, reads each, then finishes; tool results go back."""
    messages = [user("Build a todo app")]
    usages = []
    for turn in range(turns):
        server.enqueue(f"Turn {turn}: looking.", [("read_file", {"path": f"f{turn}.py"})])
        response = be.complete(request(messages))
        usages.append(response.usage)
        messages.append(Message("assistant", response.content))
        call = response.tool_uses[0]
        result = {"type": "tool_result", "tool_use_id": call["id"], "content": f"x = {turn}"}
        messages.append(Message("user", [result]))
    return usages


def test_prefix_is_byte_identical_and_the_conversation_only_appended(server) -> None:
    be = backend(server)
    usages = converse(be, server, 4)
    bodies = server.requests
    first = bodies[0]
    assert first["messages"][0] == {"role": "system", "content": SYSTEM}
    assert [t["function"]["name"] for t in first["tools"]] == sorted(t.name for t in tool_specs())
    assert first["stream"] is True and first["stream_options"] == {"include_usage": True}
    for earlier, later in zip(bodies, bodies[1:], strict=False):
        assert later["tools"] == earlier["tools"]
        assert later["messages"][: len(earlier["messages"])] == earlier["messages"]
        assert json.dumps(later["messages"]).startswith(json.dumps(earlier["messages"])[:-1])
    # Every request after the first reads the whole earlier prompt (in 16-token blocks).
    assert usages[0].cache_read_tokens == 0
    for usage, sent in zip(usages, server.usages, strict=True):
        cached = sent["prompt_tokens_details"]["cached_tokens"]
        assert usage.cache_read_tokens == cached
        assert usage.input_tokens == sent["prompt_tokens"] - cached
        assert usage.output_tokens == sent["completion_tokens"]
    assert all(u.hit_rate and u.hit_rate > 0.9 for u in usages[1:])


def test_tool_calls_map_both_ways(server) -> None:
    be = backend(server)
    server.enqueue("Reading two files.", [("read_file", {"path": "a.py"}), ("list_files", {})])
    response = be.complete(request([user("go")]))
    assert response.stop_reason == "tool_use" and response.text == "Reading two files."
    calls = response.tool_uses
    assert [(c["name"], c["input"]) for c in calls] == [
        ("read_file", {"path": "a.py"}),
        ("list_files", {}),
    ]
    results = [
        {"type": "tool_result", "tool_use_id": calls[0]["id"], "content": "print(1)"},
        {"type": "tool_result", "tool_use_id": calls[1]["id"], "content": "boom", "is_error": True},
        {"type": "text", "text": "Carry on."},
    ]
    be.complete(
        request([user("go"), Message("assistant", response.content), Message("user", results)])
    )
    sent = server.requests[1]["messages"]
    assert sent[2]["role"] == "assistant" and sent[2]["content"] == "Reading two files."
    assert [c["id"] for c in sent[2]["tool_calls"]] == [calls[0]["id"], calls[1]["id"]]
    assert json.loads(sent[2]["tool_calls"][0]["function"]["arguments"]) == {"path": "a.py"}
    assert sent[3:] == [
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "print(1)"},
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": "Error: boom"},
        {"role": "user", "content": "Carry on."},
    ]


def test_a_server_without_function_calling_gets_the_text_format() -> None:
    with FakeOpenAI(supports_tools=False) as server:
        be = backend(server)
        failed: list[FailedAttempt] = []
        server.enqueue('<tool_call>{"name": "list_files", "arguments": {}}</tool_call>')
        response = be.complete(request([user("go")]), on_failed_attempt=failed.append)
        # The refusal is on the ledger as a failed attempt; the retry went out at once.
        assert [(f.error_class, f.will_retry) for f in failed] == [("bad_request", True)]
        assert "--jinja" in failed[0].message
        assert [(c["name"], c["input"]) for c in response.tool_uses] == [("list_files", {})]
        assert response.stop_reason == "tool_use"
        retry = server.requests[1]
        assert "tools" not in retry and be.tool_format == "text"
        assert "## Tool schemas" in retry["messages"][0]["content"]
        # Later turns send tool calls and results as text, and keep the same system text.
        messages = [user("go"), Message("assistant", response.content)]
        tool_id = response.tool_uses[0]["id"]
        messages.append(
            Message("user", [{"type": "tool_result", "tool_use_id": tool_id, "content": "a.py"}])
        )
        be.complete(request(messages))
        later = server.requests[2]["messages"]
        assert later[0] == retry["messages"][0]
        assert "<tool_call>" in later[2]["content"] and "<tool_result" in later[3]["content"]


def test_text_format_when_configured_never_sends_tools(server) -> None:
    config = parse_config({"openai": {"tool_format": "text"}}, "c")
    be = backend(server, config)
    be.complete(request([user("go")]))
    assert "tools" not in server.requests[0]


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        (ToolChoice(), {"tool_choice": "auto"}),
        (ToolChoice("any"), {"tool_choice": "required"}),
        (
            ToolChoice("tool", "read_file", parallel=False),
            {
                "tool_choice": {"type": "function", "function": {"name": "read_file"}},
                "parallel_tool_calls": False,
            },
        ),
        (ToolChoice("none", parallel=False), {"tool_choice": "none"}),  # no calls: no limit
    ],
)
def test_the_tool_choice_goes_out_as_openais(server, choice, sent) -> None:
    be = backend(server)
    be.complete(request([user("go")]))
    be.complete(request([user("go")], tool_choice=choice))
    without, chosen = server.requests  # the fake refuses a tool_choice OpenAI would refuse
    assert not {"tool_choice", "parallel_tool_calls"} & set(without)  # None: sent as before
    assert {k: chosen.pop(k) for k in sent} == sent
    assert chosen == without


def test_without_tools_only_a_forced_choice_is_sent_and_the_server_refuses_it(server) -> None:
    be = backend(server)
    bare = ModelRequest(MODEL, SYSTEM, [], [user("go")], 50, tool_choice=ToolChoice("none"))
    be.complete(bare)  # "none" without tools is what happens anyway: nothing to send
    assert "tool_choice" not in server.requests[0]
    with pytest.raises(BackendError, match="only allowed when 'tools' are specified"):
        be.complete(
            ModelRequest(MODEL, SYSTEM, [], [user("go")], 50, tool_choice=ToolChoice("any"))
        )


def test_the_text_format_never_sends_a_tool_choice() -> None:
    forced = ToolChoice("tool", "list_files", parallel=False)
    with FakeOpenAI() as server:
        be = backend(server, parse_config({"openai": {"tool_format": "text"}}, "c"))
        be.complete(request([user("go")], tool_choice=forced))
        assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(server.requests[0])
    # Nor the retry in text format after a server refused function calling.
    with FakeOpenAI(supports_tools=False) as server:
        backend(server).complete(request([user("go")], tool_choice=forced))
        first, retry = server.requests
        assert first["tool_choice"]["function"] == {"name": "list_files"}
        assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(retry)


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"tool_choice": "any"}, "Supported values are: 'none', 'auto', 'required'"),
        ({"tool_choice": {"type": "function", "function": {"name": "rm"}}}, "'rm' is not in"),
        ({"tool_choice": {"type": "tool", "name": "read_file"}}, "Invalid 'tool_choice'"),
        ({"parallel_tool_calls": "no"}, "expected a boolean"),
    ],
)
def test_the_fake_refuses_a_tool_choice_as_a_real_server_does(server, extra, named) -> None:
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    tools = [{"type": "function", "function": {"name": "read_file", "parameters": {}}}]
    with pytest.raises(openai.BadRequestError, match=named):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "go"}], tools=tools, **extra
        )


def test_a_server_that_reports_no_cached_count_is_unknown_not_a_miss(tmp_path) -> None:
    with FakeOpenAI(report_cache=None) as server:
        be = backend(server)
        usages = converse(be, server, 2)
    prompt = server.usages[1]["prompt_tokens"]
    assert usages[1].input_tokens == usages[1].cache_read_unknown_tokens == prompt
    assert usages[1].hit_rate is None and (usages[0] + usages[1]).hit_rate is None
    with Ledger.open(tmp_path / "l.db") as ledger:
        for usage in usages:
            ledger.record_request(
                build_id=None, phase=None, turn=1, backend="openai", model=MODEL, usage=usage,
                started_at=utc_now(), local=be.local,
            )  # fmt: skip
        ledger.record_request(
            build_id=None, phase=None, turn=1, backend="anthropic", model="claude-haiku-4-5",
            usage=Usage(100, 10, cache_read_tokens=300), started_at=utc_now(),
        )  # fmt: skip
    with sqlite3.connect(tmp_path / "l.db") as conn:
        rows = conn.execute("SELECT cache_read_tokens, input_tokens FROM requests").fetchall()
    assert rows[:2] == [(None, server.usages[0]["prompt_tokens"]), (None, prompt)]
    assert rows[2] == (300, 100)


def test_llama_cpp_timings_count_when_the_usage_has_no_cached_field(tmp_path) -> None:
    with FakeOpenAI(report_cache="timings") as server:
        be = backend(server)
        usages = converse(be, server, 2)
    timings = server.usages[1]["timings"]
    assert usages[1].cache_read_tokens == timings["cache_n"] > 0
    assert usages[1].input_tokens == timings["prompt_n"]
    assert usages[1].prefill_tokens_per_s == 500.0 and usages[1].generation_tokens_per_s == 50.0
    # The prefill time saved is the cached tokens at the server's measured prefill rate.
    assert usages[1].prefill_saved_ms == pytest.approx(timings["cache_n"] / 500.0 * 1000)


@pytest.mark.parametrize(
    ("url", "private"),
    [
        ("http://127.0.0.1:8000/v1", True),
        ("http://localhost:11434/v1", True),
        ("http://[::1]:8080/v1", True),
        ("http://10.1.2.3:8000/v1", True),
        ("http://192.168.0.7/v1", True),
        ("http://gpu-box:8000/v1", True),
        ("http://vllm.internal/v1", True),
        ("https://openrouter.ai/api/v1", False),
        ("https://api.openai.com/v1", False),
        ("http://8.8.8.8/v1", False),
        # Loopback is 127.0.0.0/8, ::1 and `localhost` only: a `.localhost` name is whatever
        # DNS or a resolver makes of it, so it is not taken as free (issue 21).
        ("http://evil.localhost:8000/v1", False),
        ("https://api.openai.com.localhost/v1", False),
        ("http://127.8.9.10:8000/v1", True),
    ],
)
def test_which_endpoints_are_local(url: str, private: bool) -> None:
    assert is_private_host(url) is private


def test_where_requests_cost_money(tmp_path) -> None:
    def local(url: str, **config) -> bool:
        return OpenAIBackend(parse_config(config, "c"), MODEL, base_url=url).local

    assert local("http://127.0.0.1:8000/v1")
    assert not local("https://openrouter.ai/api/v1")
    priced = {"models": {MODEL: {"input": 0.5, "cache_read": 0.05, "output": 2}}}
    assert not local("http://127.0.0.1:8000/v1", **priced)  # a priced model is metered
    assert not local("http://127.0.0.1:8000/v1", openai={"local": False})
    assert local("https://my-gpu.example.com/v1", openai={"local": True})
    # On the ledger: free (pricing_version local) versus priced at the configured rates.
    usage = Usage(1000, 100, cache_read_tokens=9000)
    with Ledger.open(tmp_path / "l.db") as ledger:
        free = ledger.record_request(
            build_id=None, phase=None, turn=1, backend="openai", model=MODEL, usage=usage,
            started_at=utc_now(), local=True,
        )  # fmt: skip
        assert free.cost.cost_usd == 0.0 and free.cost.pricing_version == "local"
    with Ledger.open(tmp_path / "m.db") as ledger:
        from foundry.pricing import PricingTable

        ledger._pricing = PricingTable(parse_config(priced, "c"))
        paid = ledger.record_request(
            build_id=None, phase=None, turn=1, backend="openai", model=MODEL, usage=usage,
            started_at=utc_now(), local=False,
        )  # fmt: skip
    # 1000 x $0.5 + 9000 x $0.05 + 100 x $2 per million tokens
    assert paid.cost.cost_usd == pytest.approx((500 + 450 + 200) / 1e6)
    with Ledger.open(tmp_path / "n.db") as ledger:
        unpriced = ledger.record_request(
            build_id=None, phase=None, turn=1, backend="openai", model="some/hosted-model",
            usage=usage, started_at=utc_now(), local=False,
        )  # fmt: skip
    assert unpriced.cost.cost_usd is None and "set its prices" in (unpriced.warning or "")


def test_check_takes_the_servers_only_model_and_names_them_when_several() -> None:
    with FakeOpenAI(models=("org/the-model",)) as server:
        be = OpenAIBackend(FoundryConfig(), SERVER_MODEL, base_url=server.base_url)
        be.check()
        assert be.model == "org/the-model"
        assert be.complete(request([user("hi")])).text == "OK"
        assert server.requests[0]["model"] == "org/the-model"
    with FakeOpenAI(models=("a", "b", "c")) as server:
        be = OpenAIBackend(FoundryConfig(), SERVER_MODEL, base_url=server.base_url)
        with pytest.raises(UsageError, match=r"serves 3 models \(a, b, c\)") as caught:
            be.check()
        assert "--model" in str(caught.value)


def test_an_unreachable_server_fails_the_check_in_one_line() -> None:
    be = OpenAIBackend(FoundryConfig(), MODEL, base_url="http://127.0.0.1:9/v1")
    with pytest.raises(BackendError, match="cannot reach the OpenAI-compatible server") as caught:
        be.check()
    assert caught.value.error_class == "connection" and "\n" not in str(caught.value)
    with pytest.raises(BackendError, match="invalid OpenAI-compatible base URL"):
        OpenAIBackend(FoundryConfig(), MODEL, base_url="ftp://x/v1").check()


def test_the_key_is_sent_and_never_shown(monkeypatch) -> None:
    key = "sk-secret-0123456789abcdef"
    with FakeOpenAI(api_key=key) as server:
        monkeypatch.setenv("OPENAI_API_KEY", key)
        be = backend(server)
        assert be.complete(request([user("hi")])).text == "OK"
        assert server.headers[-1]["authorization"] == f"Bearer {key}"
        assert key not in repr(be)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-456")
        wrong = backend(server)
        with pytest.raises(BackendError) as caught:
            wrong.complete(request([user("hi")]))
    assert caught.value.error_class == "authentication"
    assert "OPENAI_API_KEY" in str(caught.value) and "sk-wrong-key-456" not in str(caught.value)


def test_models_list_with_a_base_url(cli) -> None:
    with FakeOpenAI(models=("b-model", "a-model")) as server:
        result = cli("models", "list", "--base-url", server.base_url, "--json")
        assert result.exit_code == 0, result.stderr
        listed = json.loads(result.stdout)
        assert [m["id"] for m in listed["models"]] == ["a-model", "b-model"]
        table = cli("models", "list", "--base-url", server.base_url)
        assert "a-model" in table.stdout and "b-model" in table.stdout
    down = cli("models", "list", "--base-url", "http://127.0.0.1:9/v1")
    assert down.exit_code == 1 and "cannot reach" in down.stderr


def test_analyze_prompt_counts_with_the_servers_tokenizer_or_says_it_estimates(cli) -> None:
    args = ("analyze-prompt", "--backend", "openai", "--model", MODEL, "--json")
    with FakeOpenAI() as server:
        result = cli(*args, "--base-url", server.base_url)
        report = json.loads(result.stdout)
        assert report["tokens"]["method"] == "exact"
        assert server.base_url in report["tokens"]["description"]
        assert report["static"]["tokens"] > 0
    with FakeOpenAI(has_tokenize=False) as server:
        report = json.loads(cli(*args, "--base-url", server.base_url).stdout)
        assert report["tokens"]["method"] == "estimate"
        assert "no tokenizer endpoint" in report["tokens"]["description"]


def test_a_build_runs_against_the_server_and_its_rows_are_local(cli, tmp_path) -> None:
    with FakeOpenAI() as server:
        server.enqueue("Looking around.", [("list_files", {})])
        server.enqueue(
            "", [("finish_phase", {"summary": "Empty dir", "report": "# Scout report\n\nEmpty.\n"})]
        )
        db = tmp_path / "ledger.db"
        result = cli(
            "build", "hello", "Create hello.py", "--backend", "openai", "--base-url",
            server.base_url, "--model", MODEL, "--phases", "scout", "--dir", str(tmp_path / "w"),
            "--template", str(write_template(tmp_path)), "--db", str(db), "--yes", "--json",
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["backend"] == "openai" and summary["model"] == MODEL
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT input_tokens, cache_read_tokens, output_tokens, cost_usd, pricing_version,"
            " prefill_saved_ms FROM requests ORDER BY id"
        ).fetchall()
    assert len(rows) == len(server.usages) == 2
    for row, sent in zip(rows, server.usages, strict=True):
        cached = sent["prompt_tokens_details"]["cached_tokens"]
        assert row[:3] == (sent["prompt_tokens"] - cached, cached, sent["completion_tokens"])
        assert row[3:5] == (0.0, "local")
    assert rows[1][1] > 0 and rows[1][5] is not None and rows[1][5] > 0
    costs = json.loads(cli("costs", "--db", str(db), "--by", "model", "--json").stdout)
    assert costs["rows"][0]["kind"] == "local" and costs["rows"][0]["tokens_reused"] == rows[1][1]


def test_the_cli_does_not_load_the_openai_sdk() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from foundry.cli import app; import foundry.backends.registry as r; "
        "r.backend_class('openai'); print('openai' in sys.modules, 'httpx2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


BASE = {"prompt_tokens": 100, "completion_tokens": 5}


@pytest.mark.parametrize(
    ("usage", "timings", "expected"),
    [
        (BASE, None, Usage(100, 5, cache_read_unknown_tokens=100)),
        (
            {**BASE, "prompt_tokens_details": {"cached_tokens": 64}},
            None,
            Usage(36, 5, cache_read_tokens=64),
        ),
        (  # DeepSeek's own field
            {**BASE, "prompt_cache_hit_tokens": 80},
            None,
            Usage(20, 5, cache_read_tokens=80),
        ),
        (  # OpenRouter: reads and writes (e.g. an Anthropic model behind it)
            {**BASE, "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 90}},
            None,
            Usage(10, 5, cache_write_5m_tokens=90),
        ),
        (None, {"cache_n": 70, "prompt_n": 30, "predicted_n": 4}, Usage(30, 4, 70)),
        (None, None, None),
    ],
)  # fmt: skip
def test_usage_as_each_kind_of_server_reports_it(usage, timings, expected) -> None:
    from foundry.backends.openai.stream import map_usage

    assert map_usage(usage, timings) == expected
