"""Claude Code's traffic, replayed against `foundry serve` and against llama.cpp's own
`llama-server` (built from the llama.cpp commit foundry's llama-cpp-python vendors), on the
same GGUF with the same threads, interleaved, each row's time to first token and whole time.

1. Capture: the real Claude Code (npm @anthropic-ai/claude-code) runs `claude -p` twice, with
   its default system prompt and tools, against a recorder on loopback that answers "OK";
   its requests (two sessions' main requests and a side request) are kept in --capture-dir.
   Capture once per Claude Code version; later runs reuse the files.
2. The engine comparison drops the tools (llama-server leaves them out with SmolLM2's
   template anyway), so both servers prefill the same tokens: the rows are a cold first
   request, a side request, a second session, the first session's next turn, then a
   restart of the server and the first session's turn after it (`--continue`). llama-server
   keeps nothing over a restart unless asked: the bench saves its slot before the stop and
   restores it after (`/slots/0?action=save|restore`), as a user would have to script;
   foundry takes its conversations back from its store as it starts. Both restores are
   reported, outside the rows.
3. foundry's prefix store is measured after each row: the disk a second session adds.

    python bench/claude_code_bench.py [--rounds 2] [--model smollm2-135m] [--threads 2]

llama-server is built once into ~/.cache/foundry-bench/llama-server (it takes minutes on two
cores; the bench says so when it builds). Run it alone on a quiet machine.
"""

from __future__ import annotations

import argparse
import copy
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.llama_server import build_llama_server  # noqa: E402
from foundry.local.llamacpp_models import resolve_gguf  # noqa: E402

ROWS = ["cold", "side request", "second session", "main again", "restart", "--continue"]
OK_REPLY = "OK."


class Recorder(http.server.BaseHTTPRequestHandler):
    """Keeps each Messages API request and answers it with "OK." (streamed or not)."""

    directory: Path

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        if self.path.startswith("/v1/messages/count_tokens"):
            return self._json({"input_tokens": 1})
        name = f"{len(list(self.directory.glob('*.json'))):03d}.json"
        (self.directory / name).write_text(json.dumps(body))
        message = {
            "id": "msg_capture",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": OK_REPLY}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1},
        }
        if not body.get("stream"):
            return self._json(message)
        events = [
            ("message_start", {"message": {**message, "content": [], "stop_reason": None}}),
            ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
            (
                "content_block_delta",
                {"index": 0, "delta": {"type": "text_delta", "text": OK_REPLY}},
            ),
            ("content_block_stop", {"index": 0}),
            (
                "message_delta",
                {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}},
            ),
            ("message_stop", {}),
        ]
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        for kind, data in events:
            self.wfile.write(
                f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()
            )

    def _json(self, payload: dict[str, Any]) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


def capture(directory: Path) -> list[dict[str, Any]]:
    """Two `claude -p` sessions' requests, recorded (or read back from an earlier capture)."""
    if not sorted(directory.glob("*.json")):
        claude = shutil.which("claude")
        if claude is None:
            sys.exit("Claude Code is not installed: npm install -g @anthropic-ai/claude-code")
        directory.mkdir(parents=True, exist_ok=True)
        Recorder.directory = directory
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        home = Path(tempfile.mkdtemp(prefix="claude-home-"))
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))},
            "HOME": str(home),
            "CLAUDE_CONFIG_DIR": str(home / ".claude"),
            "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{server.server_address[1]}",
            "ANTHROPIC_API_KEY": "local",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
        for prompt in ("List the files here and say what this project is.", "Write hello.py."):
            subprocess.run(
                [claude, "-p", prompt],
                cwd=home,
                env=env,
                timeout=300,
                check=False,
                capture_output=True,
            )
        server.shutdown()
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


def for_engines(body: dict[str, Any]) -> dict[str, Any]:
    """The request both engines can take alike: no tools, a 64-token greedy reply, streamed."""
    kept = {k: copy.deepcopy(body[k]) for k in ("model", "system", "messages") if k in body}
    return {**kept, "max_tokens": 64, "temperature": 0.0, "stream": True}


def sessions(captured: list[dict[str, Any]]) -> tuple[dict, dict, dict]:
    """The two sessions' main requests (the longest ones with tools) and a side request."""
    mains = [b for b in captured if b.get("tools")]
    sides = [b for b in captured if not b.get("tools")]
    if len(mains) < 2:
        sys.exit(f"the capture holds {len(mains)} main requests; remove it and capture again")
    side = min(sides, key=lambda b: len(json.dumps(b))) if sides else None
    first, second = mains[0], mains[-1]
    if side is None:  # a title-like request of Claude Code's shape
        side = {
            "model": first["model"],
            "system": "Write a 3-word title.",
            "messages": [{"role": "user", "content": "List the files"}],
        }
    return for_engines(first), for_engines(side), for_engines(second)


def next_turn(body: dict[str, Any], reply: str, text: str) -> dict[str, Any]:
    turn = copy.deepcopy(body)
    turn["messages"] += [
        {"role": "assistant", "content": [{"type": "text", "text": reply or OK_REPLY}]},
        {"role": "user", "content": [{"type": "text", "text": text}]},
    ]
    return turn


def post(url: str, path: str, body: dict[str, Any], timeout: float = 1800) -> Any:
    """A POST over http.client (the response, open: a stream is read line by line)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    headers = {
        "content-type": "application/json",
        "x-api-key": "local",
        "anthropic-version": "2023-06-01",
    }
    connection.request("POST", path, json.dumps(body), headers)
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"{path}: HTTP {response.status} {response.read()[:300]!r}")
    return response


def ask(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """One streamed request: time to the first text, whole time, the reply and its usage."""
    started = time.perf_counter()
    first, text, usage = None, [], {}
    response = post(url, "/v1/messages", body)
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        event = json.loads(line[5:])
        if event["type"] == "content_block_delta":
            first = first if first is not None else time.perf_counter() - started
            text.append(event["delta"].get("text", ""))
        if event["type"] in ("message_start", "message_delta"):
            usage.update(event.get("message", {}).get("usage", {}) or event.get("usage", {}))
        if event["type"] == "message_stop":
            break
    whole = time.perf_counter() - started
    return {"ttft_s": first or whole, "total_s": whole, "text": "".join(text), "usage": usage}


def healthy(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        connection = http.client.HTTPConnection(host, int(port), timeout=1)
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, kind: str, gguf: Path, threads: int, work: Path, binary: Path) -> None:
        self.kind, self.gguf, self.threads, self.work, self.binary = (
            kind,
            gguf,
            threads,
            work,
            binary,
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        if self.kind == "foundry":
            config = self.work / "cache_config.json"
            config.write_text(
                json.dumps(
                    {
                        "llamacpp": {"threads": self.threads},
                        "prefix_cache": {"dir": str(self.work / "store")},
                    }
                )
            )
            env = {**os.environ, "FOUNDRY_HOME": str(self.work / "home")}
            args = [
                sys.executable,
                "-m",
                "foundry",
                "serve",
                "--backend",
                "llamacpp",
                "--model",
                str(self.gguf),
                "--port",
                str(port),
                "--config",
                str(config),
                "--db",
                str(self.work / "ledger.db"),
                "--no-response-cache",
            ]
        else:
            env = dict(os.environ)
            (self.work / "slots").mkdir(exist_ok=True)
            args = [
                str(self.binary),
                "-m",
                str(self.gguf),
                "--port",
                str(port),
                "-t",
                str(self.threads),
                "-tb",
                str(self.threads),
                "-c",
                "8192",
                "--parallel",
                "1",
                "--cache-reuse",
                "256",
                "--jinja",
                "--slot-save-path",
                str(self.work / "slots"),
            ]
        log = open(self.work / f"{self.kind}.log", "ab")  # noqa: SIM115 (the server's lifetime)
        self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=log)
        for _ in range(600):
            if healthy(self.url):
                return
            if self.proc.poll() is not None:
                sys.exit(f"{self.kind} did not start; see {self.work / f'{self.kind}.log'}")
            time.sleep(0.5)
        sys.exit(f"{self.kind} did not answer /health in 5 minutes")

    def stop(self) -> float:
        """Stop it (llama-server: its slot saved first, as a user would script it)."""
        spent = 0.0
        if self.kind == "llama-server":
            started = time.perf_counter()
            post(self.url, "/slots/0?action=save", {"filename": "s0"}).read()
            spent = time.perf_counter() - started
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        return spent

    def after_restart(self) -> float:
        """The time a restarted server spent getting its conversation back (not in rows)."""
        if self.kind != "llama-server":  # foundry takes them back by itself as it starts
            host, port = self.url.removeprefix("http://").split(":")
            connection = http.client.HTTPConnection(host, int(port), timeout=30)
            connection.request("GET", "/cache/stats", headers={"x-api-key": "local"})
            stats = json.loads(connection.getresponse().read())
            return float(stats["l1"].get("taken_back_at_start", {}).get("seconds", 0.0))
        started = time.perf_counter()
        post(self.url, "/slots/0?action=restore", {"filename": "s0"}).read()
        return time.perf_counter() - started

    def disk_bytes(self) -> int:
        """What the server keeps on disk, once its background writes have settled."""
        where = self.work / ("store" if self.kind == "foundry" else "slots")
        sizes: list[int] = []
        for _ in range(60):  # foundry saves a conversation after its reply, in the background
            sizes.append(sum(p.stat().st_size for p in where.glob("*") if p.is_file()))
            if len(sizes) >= 4 and len(set(sizes[-4:])) == 1:
                break
            time.sleep(0.5)
        return sizes[-1]


def run_sequence(server: Server, main: dict, side: dict, second: dict) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    disk: dict[str, int] = {}
    server.start()
    rows["cold"] = ask(server.url, main)
    disk["cold"] = server.disk_bytes()
    rows["side request"] = ask(server.url, side)
    rows["second session"] = ask(server.url, second)
    disk["second session"] = server.disk_bytes()
    turn = next_turn(main, rows["cold"]["text"], "Now say which file to read first.")
    rows["main again"] = ask(server.url, turn)
    save_s = server.stop()
    server.start()
    restore_s = server.after_restart()
    rows["restart"] = ask(server.url, turn)
    rows["restart"]["restore_s"], rows["restart"]["save_s"] = restore_s, save_s
    cont = next_turn(turn, rows["restart"]["text"], "Thanks. And the second file?")
    rows["--continue"] = ask(server.url, cont)
    server.stop()
    return {"rows": rows, "disk": disk}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--capture-dir", type=Path, default=Path.home() / ".cache/foundry-bench/claude-code-capture"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    gguf = resolve_gguf(args.model)
    binary = build_llama_server()
    main_request, side, second = sessions(capture(args.capture_dir))
    results: dict[str, list[dict[str, Any]]] = {"foundry": [], "llama-server": []}
    for number in range(args.rounds):
        for kind in ("foundry", "llama-server") if number % 2 == 0 else ("llama-server", "foundry"):
            work = Path(tempfile.mkdtemp(prefix=f"cc-bench-{kind}-"))
            load = os.getloadavg()[0]
            result = run_sequence(
                Server(kind, gguf, args.threads, work, binary), main_request, side, second
            )
            result["load"] = load
            results[kind].append(result)
            shutil.rmtree(work, ignore_errors=True)
    report(results, args)


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    def median(kind: str, row: str, key: str) -> float:
        return statistics.median(r["rows"][row][key] for r in results[kind])

    loads = [r["load"] for rs in results.values() for r in rs]
    print(
        f"{args.model}, {args.threads} threads, {args.rounds} rounds interleaved, "
        f"load at starts {min(loads):.2f}-{max(loads):.2f}"
    )
    print(
        f"{'row':16} {'prompt':>7} {'foundry ttft':>13} {'llama-server':>13} {'ratio':>6}"
        f" {'foundry total':>14} {'llama total':>12}"
    )
    for row in ROWS:
        f, ll = median("foundry", row, "ttft_s"), median("llama-server", row, "ttft_s")
        usage = results["foundry"][0]["rows"][row]["usage"]
        prompt = sum(
            usage.get(k) or 0
            for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
        )
        totals = median("foundry", row, "total_s"), median("llama-server", row, "total_s")
        print(
            f"{row:16} {prompt:7,} {f:12.2f}s {ll:12.2f}s {f / ll:5.2f}x "
            f"{totals[0]:13.2f}s {totals[1]:11.2f}s"
        )
    restore = statistics.median(r["rows"]["restart"]["restore_s"] for r in results["llama-server"])
    save = statistics.median(r["rows"]["restart"]["save_s"] for r in results["llama-server"])
    print(f"llama-server's scripted slot save {save:.2f} s, restore {restore:.2f} s (not in rows)")
    taken = statistics.median(r["rows"]["restart"]["restore_s"] for r in results["foundry"])
    print(f"foundry took its conversations back as it started in {taken:.2f} s (not in rows)")
    for kind in results:
        disk = results[kind][0]["disk"]
        grown = disk["second session"] - disk["cold"]
        print(
            f"{kind}: disk after the first session {disk['cold'] / 1e6:.1f} MB, "
            f"a second session added {grown / 1e6:.1f} MB"
        )
    second = results["foundry"][0]["rows"]["second session"]["usage"]
    own = second.get("input_tokens", 0) + second.get("cache_creation_input_tokens", 0)
    print(
        f"foundry's second session: {second.get('cache_read_input_tokens', 0):,} prompt tokens "
        f"read from the first's, {own:,} of its own prefilled (plus its reply's tokens)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
