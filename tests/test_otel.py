"""A build's OpenTelemetry trace, received over real OTLP/HTTP on loopback.

No OpenTelemetry Collector is installable from PyPI or Debian (it is a Go program), so the
receiver is a small HTTP server that does what a collector's OTLP/HTTP receiver does:
accepts POST /v1/traces and decodes the protobuf body with OpenTelemetry's own
ExportTraceServiceRequest. The builds are real (`foundry build` against the local
Anthropic test server, files written, pytest run); the trace must match the ledger.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.test_build_e2e import HELLO, TASK, requests_rows, run, script_build

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent: str
    kind: int
    start: int
    end: int
    status: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    resource: dict[str, Any]


def _values(pairs: Any) -> dict[str, Any]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in pairs}


@dataclass
class Receiver:
    url: str
    posts: list[tuple[str, str]] = field(default_factory=list)  # path, content type
    spans: list[Span] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """An OTLP/HTTP traces receiver on 127.0.0.1."""
    found = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["content-length"]))
            found.posts.append((self.path, self.headers["content-type"]))
            if self.path != "/v1/traces":
                self.send_response(404)
                self.end_headers()
                return
            message = ExportTraceServiceRequest()
            message.ParseFromString(body)
            for resource_spans in message.resource_spans:
                resource = _values(resource_spans.resource.attributes)
                for scope in resource_spans.scope_spans:
                    for s in scope.spans:
                        found.spans.append(
                            Span(
                                s.name,
                                s.trace_id.hex(),
                                s.span_id.hex(),
                                s.parent_span_id.hex(),
                                s.kind,
                                s.start_time_unix_nano,
                                s.end_time_unix_nano,
                                s.status.code,
                                _values(s.attributes),
                                [(e.name, _values(e.attributes)) for e in s.events],
                                resource,
                            )
                        )
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    found.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()


SPAN_KIND_CLIENT = 3
STATUS_ERROR = 2


def test_a_build_is_a_trace_of_its_phases_requests_tools_and_tests(
    cli, tmp_path, anthropic_env, receiver, monkeypatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    script_build(anthropic_env, HELLO)
    anthropic_env.enqueue_fault("overloaded")  # the first attempt fails and is retried
    result = run(cli, tmp_path)
    assert result.exit_code == 0, result.stderr
    # Everything arrived before the command returned: close() flushed it.
    assert receiver.posts and {p for p in receiver.posts} == {
        ("/v1/traces", "application/x-protobuf")
    }
    spans = receiver.spans
    assert len({s.trace_id for s in spans}) == 1  # one build, one trace
    assert {s.resource["service.name"] for s in spans} == {"foundry"}
    by_id = {s.span_id: s for s in spans}

    (root,) = [s for s in spans if not s.parent]
    rows = requests_rows(tmp_path / "ledger.db")
    import sqlite3

    conn = sqlite3.connect(tmp_path / "ledger.db")
    build_id, name, status = conn.execute("SELECT id, name, status FROM builds").fetchone()
    conn.close()
    assert root.name == "build hello" and status == "completed"
    assert root.attributes["foundry.build.id"] == build_id
    assert root.attributes["foundry.build.name"] == name
    assert root.attributes["foundry.build.status"] == "completed"
    assert root.attributes["foundry.build.backend"] == "anthropic"
    assert root.attributes["foundry.build.model"] == rows[0]["model"]
    assert root.attributes["foundry.build.requests"] == len(rows)
    assert root.status != STATUS_ERROR

    # The phases, in order, under the build.
    phases = sorted((s for s in spans if s.parent == root.span_id), key=lambda s: s.start)
    assert [p.name for p in phases] == [
        "phase scout",
        "phase architect",
        "phase builder",
        "phase test",
        "phase deploy",
    ]
    assert [p.attributes["foundry.phase.status"] for p in phases] == [
        "finished",
        "finished",
        "finished",
        "passed",
        "committed",
    ]
    assert all(p.status != STATUS_ERROR for p in phases)
    assert all(root.start <= p.start <= p.end <= root.end for p in phases)

    # Each model request, failed attempt included, is a GenAI chat span under its phase,
    # with the ledger row's token counts.
    chats = sorted((s for s in spans if s.name.startswith("chat ")), key=lambda s: s.start)
    assert len(chats) == len(rows) == 7
    for span, row in zip(chats, rows, strict=True):
        phase = by_id[span.parent]
        assert phase.name == f"phase {row['phase']}" and phase.parent == root.span_id
        assert phase.start <= span.start <= span.end <= phase.end
        assert span.kind == SPAN_KIND_CLIENT and span.name == f"chat {row['model']}"
        a = span.attributes
        assert (a["gen_ai.operation.name"], a["gen_ai.provider.name"], a["gen_ai.system"]) == (
            "chat",
            "anthropic",
            "anthropic",
        )
        assert a["gen_ai.request.model"] == row["model"]
        written = row["cache_write_5m_tokens"] + row["cache_write_1h_tokens"]
        assert (
            a["gen_ai.usage.input_tokens"],
            a["gen_ai.usage.output_tokens"],
            a["gen_ai.usage.cache_read.input_tokens"],
            a["gen_ai.usage.cache_creation.input_tokens"],
            a["foundry.usage.uncached_input_tokens"],
        ) == (
            row["input_tokens"] + row["cache_read_tokens"] + written,
            row["output_tokens"],
            row["cache_read_tokens"],
            written,
            row["input_tokens"],
        )
        assert (a["foundry.phase"], a["foundry.turn"]) == (row["phase"], row["turn"])
        assert a.get("foundry.cost_usd", 0.0) == pytest.approx(row["cost_usd"] or 0.0)
        assert (span.status == STATUS_ERROR) == (row["status"] == "error")
        assert a.get("error.type") == row["error_class"]
    assert rows[0]["error_class"] == "overloaded" and rows[1]["status"] == "ok"
    assert chats[0].end <= chats[1].start  # the retry starts after the failed attempt
    assert sum(s.attributes["gen_ai.usage.cache_read.input_tokens"] for s in chats) == sum(
        r["cache_read_tokens"] for r in rows
    )

    # Tool calls under their phases, in the order the model made them.
    tools = sorted((s for s in spans if s.name.startswith("execute_tool ")), key=lambda s: s.start)
    assert [(by_id[t.parent].name, t.attributes["gen_ai.tool.name"]) for t in tools] == [
        ("phase scout", "list_files"),
        ("phase scout", "finish_phase"),
        ("phase architect", "finish_phase"),
        ("phase builder", "write_file"),
        ("phase builder", "write_file"),
        ("phase builder", "run_command"),
        ("phase builder", "finish_phase"),
    ]
    assert all(t.attributes["gen_ai.operation.name"] == "execute_tool" for t in tools)
    # The test run, under the test phase, with its outcome.
    (test_run,) = [s for s in spans if s.name.startswith("test run")]
    assert by_id[test_run.parent].name == "phase test"
    assert test_run.attributes["foundry.test.passed"] is True
    assert test_run.attributes["foundry.test.exit_code"] == 0
    assert test_run.end - test_run.start == pytest.approx(
        test_run.attributes["foundry.test.duration_s"] * 1e9, rel=1e-6
    )
    # The failed attempt's warning is an event on its phase.
    scout = phases[0]
    assert any(
        name == "warning" and "overloaded" in attrs["message"] for name, attrs in scout.events
    )


def test_a_failed_build_is_an_error_trace_with_its_status(
    cli, tmp_path, anthropic_env, receiver, monkeypatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{receiver.url}/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")  # said once, sent over HTTP
    script_build(anthropic_env, HELLO.replace('return "hello"', 'return "helo"'))
    result = run(
        cli, tmp_path, "--max-test-iterations", "1", "--phases", "scout,architect,builder,test"
    )
    assert result.exit_code == 3, result.stderr  # tests failed
    said = [line for line in result.stderr.splitlines() if "OTEL_EXPORTER_OTLP_PROTOCOL" in line]
    assert len(said) == 1 and "http/protobuf only" in said[0]
    (root,) = [s for s in receiver.spans if not s.parent]
    assert root.attributes["foundry.build.status"] == "tests_failed"
    assert root.status == STATUS_ERROR and "tests" in root.attributes["foundry.build.error"]
    (test_run,) = [s for s in receiver.spans if s.name.startswith("test run")]
    assert test_run.attributes["foundry.test.passed"] is False
    assert test_run.status == STATUS_ERROR


def test_a_collector_that_never_answers_cannot_hold_up_the_end(
    cli, tmp_path, anthropic_env, monkeypatch
) -> None:
    from foundry.telemetry.otel import FLUSH_TIMEOUT_S

    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)  # accepts connections (the kernel does) and never answers
    try:
        monkeypatch.setenv(
            "OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{hole.getsockname()[1]}"
        )
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "60")  # an unbounded flush: a minute
        script_build(anthropic_env, HELLO)
        started = time.monotonic()
        result = run(cli, tmp_path)
        elapsed = time.monotonic() - started
    finally:
        hole.close()
    assert result.exit_code == 0, result.stderr
    assert elapsed < FLUSH_TIMEOUT_S + 25, elapsed  # the build itself takes a few seconds
    lines = [line for line in result.stderr.splitlines() if "traces did not reach" in line]
    assert len(lines) == 1 and f"within {FLUSH_TIMEOUT_S:.0f} s" in lines[0]


def test_without_the_otel_extra_a_build_warns_once_and_goes_on(
    cli, tmp_path, anthropic_env, monkeypatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    # As if the extra were not installed: importing opentelemetry fails.
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "foundry.telemetry.otel", raising=False)
    script_build(anthropic_env, HELLO)
    result = run(cli, tmp_path)
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "OTEL_EXPORTER_OTLP_ENDPOINT" in line]
    assert len(lines) == 1
    assert "pip install -c constraints.txt -e '.[otel]'" in lines[0]


CHILD = """
import json, sys
from foundry.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
prefixes = ("opentelemetry", "foundry.telemetry.")
loaded = sorted(m for m in sys.modules if m.startswith(prefixes))
print(json.dumps({"code": code, "otel": loaded}))
"""


def _child(args: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"stderr": done.stderr}


# What tracing loads: OpenTelemetry's SDK, its OTLP exporter and protobufs, and foundry's
# recorder. (The anthropic SDK imports OpenTelemetry's API by itself when it is installed,
# anthropic/_tracing.py: that is the API's no-op tracer, not foundry's doing.)
TRACING = (
    "opentelemetry.sdk",
    "opentelemetry.exporter",
    "opentelemetry.proto",
    "foundry.telemetry.otel",
)


def test_without_an_endpoint_no_tracing_code_is_imported(tmp_path, anthropic_env, receiver) -> None:
    from tests.orchestrator_helpers import write_template

    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(REPO)
    args = ["build", "hello", TASK, "--backend", "anthropic", "--yes"]
    args += ["--template", str(write_template(tmp_path)), "--db", str(tmp_path / "ledger.db")]
    script_build(anthropic_env, HELLO)
    plain = _child([*args, "--dir", str(tmp_path / "plain")], env, tmp_path)
    assert plain["code"] == 0, plain["stderr"]
    assert [m for m in plain["otel"] if m.startswith(TRACING)] == []
    # The same build with an endpoint does load it (so the check above can fail).
    script_build(anthropic_env, HELLO)
    traced = _child(
        [*args, "--dir", str(tmp_path / "traced")],
        env | {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url},
        tmp_path,
    )
    assert traced["code"] == 0, traced["stderr"]
    assert receiver.spans
    assert {"opentelemetry.sdk.trace", "foundry.telemetry.otel"} <= set(traced["otel"])
