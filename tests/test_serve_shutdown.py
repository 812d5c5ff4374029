"""SIGTERM with work in flight: `foundry serve` (a real process, the real smollm2-135m GGUF on
llama.cpp) is prefilling one long prompt and has a second request queued behind it.

One llama.cpp prefill step (512 tokens) cannot be interrupted; with a real model on a CPU it
takes tens of seconds, so the server must not wait for it. Here the tiny model runs on one
thread, so its steps take several seconds too. The promise: the process exits 0 within a few
seconds, the queued client gets the API's 529 at once, the streaming client gets an
`overloaded_error` event instead of a hang or a reset, and the ledger says what happened to
both requests.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.llamacpp
pytest.importorskip("uvicorn")  # the serve extra
pytest.importorskip("llama_cpp")
MODEL = Path.home() / ".local/share/foundry/models/smollm2-135m.gguf"
REPO = Path(__file__).resolve().parent.parent  # the server runs this tree's foundry
EXIT_WITHIN_S = 3.0  # SIGTERM to the process gone (here: about 1.2 s)
QUEUED_ANSWER_S = 1.0  # SIGTERM to the queued client's 529 (here: about 0.1 s)
RUNNING_ANSWER_S = 2.5  # SIGTERM to the streaming client's error event (here: about 1.05 s)

# About 3,000 tokens: six prefill steps of 512, each several seconds on one thread.
LONG_PROMPT = " ".join(f"Line {i}: the build log says the step passed." for i in range(300))


@pytest.fixture
def server(tmp_path: Path):
    if not MODEL.is_file():
        pytest.skip(f"needs {MODEL} (foundry models pull smollm2-135m --backend llamacpp)")
    home = tmp_path / "home"
    home.mkdir()
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "prefix_cache": {"dir": str(tmp_path / "prefix-cache")},
                # One thread: a prefill step takes long enough to land a signal inside it.
                "llamacpp": {"threads": 1, "max_kv_size": 8192},
            }
        )
    )
    db = tmp_path / "ledger.db"
    env = {
        **os.environ,
        "FOUNDRY_HOME": str(home),
        "FOUNDRY_DB": str(db),
        "FOUNDRY_CPU_SHARE_DIR": str(home / "cpu-share"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env.pop("FOUNDRY_DEBUG", None)
    stderr = (tmp_path / "stderr.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "foundry", "-v", "serve", "--backend", "llamacpp"]
        + ["--model", str(MODEL), "--port", "0", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert " on http://127.0.0.1:" in banner, banner
        yield process, banner.split(" on ")[1].split(" ")[0], db, tmp_path / "stderr.log"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        stderr.close()


def _client(url: str) -> Any:
    import anthropic

    return anthropic.Anthropic(base_url=url, api_key="local", max_retries=0, timeout=60)


def _queued(url: str) -> int:
    import httpx2

    return int(httpx2.get(f"{url}/cache/stats", timeout=10).json()["queue"]["waiting"])


def test_sigterm_ends_a_prefill_and_answers_the_queue_in_seconds(server) -> None:
    import anthropic

    process, url, db, stderr_log = server
    outcome: dict[str, Any] = {}
    prefilling = threading.Event()

    def long_stream() -> None:
        events = []
        try:
            with _client(url).messages.stream(
                model="claude-sonnet-4-6",
                max_tokens=32,
                messages=[{"role": "user", "content": LONG_PROMPT}],
            ) as stream:
                for event in stream:
                    events.append(event.type)
                    if event.type == "message_start":  # planned: the prefill starts now
                        prefilling.set()
            outcome["first"] = ("completed", events)
        except anthropic.APIStatusError as exc:
            outcome["first"] = ("error", events, exc.status_code, exc.body)
        except Exception as exc:  # a reset, a timeout: what must not happen
            outcome["first"] = ("failed", events, repr(exc))
        finally:
            prefilling.set()
            outcome["first_at"] = time.monotonic()

    def queued_request() -> None:
        try:
            reply = _client(url).messages.create(
                model="claude-sonnet-4-6",
                max_tokens=8,
                messages=[{"role": "user", "content": "and me"}],
            )
            outcome["second"] = ("completed", reply.stop_reason)
        except anthropic.APIStatusError as exc:
            outcome["second"] = ("error", exc.status_code, exc.body)
        except Exception as exc:
            outcome["second"] = ("failed", repr(exc))
        finally:
            outcome["second_at"] = time.monotonic()

    first = threading.Thread(target=long_stream, daemon=True)
    first.start()
    assert prefilling.wait(60), "the long request never started"
    assert "first" not in outcome, outcome  # still prefilling
    second = threading.Thread(target=queued_request, daemon=True)
    second.start()
    deadline = time.monotonic() + 20
    while _queued(url) < 1:
        assert time.monotonic() < deadline, "the second request never queued"
        time.sleep(0.05)

    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    try:
        out, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    took = time.monotonic() - signalled
    first.join(10)
    second.join(10)
    err = stderr_log.read_text()

    # Every broken promise at once: this test is also run against code that breaks several.
    broken: list[str] = []

    def check(ok: bool, promise: str) -> None:
        if not ok:
            broken.append(promise)

    check(took < EXIT_WITHIN_S, f"exit within {EXIT_WITHIN_S} s of SIGTERM (took {took:.1f} s)")
    check(process.returncode == 0, f"exit status 0 (was {process.returncode})")
    check("Traceback" not in err, "no traceback in the log")

    # The queued client: the API's 529 at once, saying why.
    second, second_s = outcome.get("second"), outcome["second_at"] - signalled
    check(second is not None and second[:2] == ("error", 529), f"queued: a 529 (got {second})")
    if second is not None and second[0] == "error":
        error = second[2].get("error", {})
        check(error.get("type") == "overloaded_error", f"queued: overloaded_error ({error})")
        check("shutting down" in error.get("message", ""), f"queued: says why ({error})")
    check(second_s < QUEUED_ANSWER_S, f"queued: answered in {QUEUED_ANSWER_S} s ({second_s:.1f})")

    # The streaming client: an error event on its open stream, not a reset or a hang.
    first, first_s = outcome.get("first"), outcome["first_at"] - signalled
    check(first is not None and first[0] == "error", f"running: an error event (got {first})")
    if first is not None and first[0] == "error":
        error = first[3].get("error", {})
        check(error.get("type") == "overloaded_error", f"running: overloaded_error ({error})")
        check("message_start" in first[1], f"running: it had started streaming ({first[1]})")
    check(first_s < RUNNING_ANSWER_S, f"running: answered in {RUNNING_ANSWER_S} s ({first_s:.1f})")

    # The ledger: the running request cancelled, the queued one turned away (as a request
    # arriving after the stop is), and the serve session closed.
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT status, error_class FROM requests ORDER BY id").fetchall()
        build = conn.execute("SELECT status FROM builds").fetchone()
    finally:
        conn.close()
    expected = [("cancelled", "cancelled"), ("error", "overloaded")]
    check(sorted(rows) == expected, f"ledger rows {expected} (got {rows})")
    check(build == ("completed",), f"serve session completed (got {build})")
    check("served 2 requests" in out, f"the summary counts both requests:\n{out}")
    assert not broken, "\n".join(broken) + f"\n--- server log ---\n{err}"
