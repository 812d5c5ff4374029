"""`GET /metrics` through the real server: requests sent with the anthropic SDK (a miss, a
memory hit, a response-cache replay, a refused prompt, an unknown model), then the page
scraped over HTTP and parsed with prometheus_client's own parser. Its counts must be what
happened, token for token, and what /cache/stats and the ledger say."""

from __future__ import annotations

import time
from typing import Any

import anthropic
import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serve_helpers import serving, system_blocks

pytestmark = pytest.mark.mlx

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    response = httpx2.get(f"{url}/metrics", headers=headers or {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample; every foundry_ metric but the HTTP counts carries the model's name."""
    return samples[(name, frozenset(labels.items()))]


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(key)[label]: number for (found, key), number in samples.items() if found == name}


def wait_for(check, timeout: float = 10.0) -> Any:
    """A replay's stats are written after its response has gone out: wait for them."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.02)


def ask(client, text: str, **kwargs):
    return client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=6,
        system=system_blocks(),
        messages=[{"role": "user", "content": text}],
        **kwargs,
    )


def test_metrics_count_what_happened_and_agree_with_cache_stats(tiny_model_dir, tmp_path) -> None:
    with serving(tiny_model_dir, tmp_path) as served:
        client = served.client()
        model = {"model_name": served.service.settings.model_name}
        cold = ask(client, "Build a todo app")  # a miss: the system prompt is new
        with client.messages.stream(
            model="claude-sonnet-4-6",
            max_tokens=6,
            system=system_blocks(),
            messages=[{"role": "user", "content": "Build a wiki"}],
        ) as stream:
            warm = stream.get_final_message()  # the system prompt from memory, streamed
        raw = client.messages.with_raw_response.create(
            model="claude-sonnet-4-6",
            max_tokens=6,
            system=system_blocks(),
            messages=[{"role": "user", "content": "Build a wiki"}],
        )
        assert raw.headers["x-foundry-cache"] == "response"
        replayed = raw.parse()
        long = "The quick brown fox jumps over the lazy dog. " * 400
        with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
            ask(client, long)
        with pytest.raises(anthropic.NotFoundError):
            client.messages.create(
                model="gpt-4o", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            )
        stats = wait_for(lambda: (s := served.stats())["since_start"]["requests"] == 4 and s)
        since = stats["since_start"]
        assert (since["misses"], since["l1_hits"], since["l2_hits"], since["disk_hits"]) == (
            1,
            1,
            1,
            0,
        )
        # The streamed response's timing is recorded after its last byte: wait for it too.
        samples = wait_for(
            lambda: (
                (s := scrape(served.url))
                and value(s, "foundry_e2e_request_latency_seconds_count", **model) == 3
                and s
            )
        )
        assert samples, "the e2e histogram did not count the three answered requests"

    # Requests by outcome: what /cache/stats counts (the 404 never reached the model).
    assert by_label(samples, "foundry_requests_total", "outcome") == {
        "completed": 3,
        "context_too_long": 1,
    }
    assert since["completed"] == 3 and since["errors"] == {"context_too_long": 1}
    # Each request's prompt tokens, by where they came from, from its own usage.
    computed = [u.input_tokens + u.cache_creation_input_tokens for u in (cold.usage, warm.usage)]
    assert cold.usage.cache_read_input_tokens == 0 and warm.usage.cache_read_input_tokens > 100
    assert by_label(samples, "foundry_prompt_tokens_total", "source") == {
        "memory": warm.usage.cache_read_input_tokens,
        "disk": 0,
        "response_cache": replayed.usage.cache_read_input_tokens,
        "prefilled": sum(computed),
    }
    tokens = since["tokens"]
    assert (
        sum(by_label(samples, "foundry_prompt_tokens_total", "source").values())
        == (tokens["prompt"])
    )
    assert tokens["reused_memory"] + tokens["replayed"] == tokens["reused"]
    assert value(samples, "foundry_prompt_tokens_saved_to_disk_total", **model) == (
        cold.usage.cache_creation_input_tokens + warm.usage.cache_creation_input_tokens
    )
    assert cold.usage.cache_creation_input_tokens > 100  # the system prompt, saved once
    assert value(samples, "foundry_generation_tokens_total", **model) == (
        cold.usage.output_tokens + warm.usage.output_tokens + replayed.usage.output_tokens
    )
    assert value(samples, "foundry_generation_tokens_total", **model) == tokens["output"]
    # Hits and misses, from which the rates follow.
    assert by_label(samples, "foundry_cache_hits_total", "level") == {
        "memory": 1,
        "disk": 0,
        "response": 1,
    }
    assert value(samples, "foundry_cache_misses_total", **model) == 1
    assert value(samples, "foundry_prefix_cache_hits_total", **model) == (
        warm.usage.cache_read_input_tokens
    )
    assert value(samples, "foundry_prefix_cache_queries_total", **model) == sum(computed) + (
        warm.usage.cache_read_input_tokens
    )
    # Time to first token: one observation per answered request, the ledger's own figures.
    rows = [r for r in served.ledger_rows() if r["status"] == "ok"]
    assert len(rows) == 3
    assert value(samples, "foundry_time_to_first_token_seconds_count", **model) == 3
    assert value(samples, "foundry_time_to_first_token_seconds_sum", **model) == pytest.approx(
        sum(r["ttft_ms"] for r in rows) / 1000, rel=1e-9
    )
    assert value(samples, "foundry_time_to_first_token_seconds_bucket", le="+Inf", **model) == 3
    # HTTP responses by endpoint and status, errors included.
    messages = {
        status: count
        for (name, key), count in samples.items()
        if name == "foundry_http_requests_total" and dict(key)["endpoint"] == "/v1/messages"
        for status in [dict(key)["status"]]
    }
    assert messages == {"200": 3, "400": 1, "404": 1}
    # Gauges: nothing running or waiting now; the caches' sizes as /cache/stats gave them.
    assert value(samples, "foundry_num_requests_running", **model) == 0
    assert value(samples, "foundry_num_requests_waiting", **model) == 0
    assert (
        value(samples, "foundry_kv_cache_memory_bytes", **model)
        == (stats["memory"]["kv_bytes_in_memory"])
    )
    assert stats["memory"]["kv_bytes_in_memory"] > 0
    assert value(samples, "foundry_kv_cache_usage_ratio", **model) == pytest.approx(
        stats["memory"]["kv_bytes_in_memory"] / stats["memory"]["budget_bytes"]
    )
    assert value(samples, "foundry_prefix_store_entries", **model) == stats["disk"]["entries"] > 0
    assert value(samples, "foundry_prefix_store_bytes", **model) == stats["disk"]["total_bytes"]
    assert value(samples, "foundry_response_cache_entries", **model) == 2


def test_a_restarted_server_counts_a_disk_hit_in_a_registry_of_its_own(
    tiny_model_dir, tmp_path
) -> None:
    with serving(tiny_model_dir, tmp_path) as first:
        ask(first.client(), "Build a todo app")
        assert (
            value(
                scrape(first.url),
                "foundry_cache_misses_total",
                model_name=first.service.settings.model_name,
            )
            == 1
        )
        with serving(tiny_model_dir, tmp_path / "other") as beside:  # another app, same process
            assert (
                value(
                    scrape(beside.url),
                    "foundry_cache_misses_total",
                    model_name=beside.service.settings.model_name,
                )
                == 0
            )
    with serving(tiny_model_dir, tmp_path) as second:
        model = {"model_name": second.service.settings.model_name}
        warm = ask(second.client(), "Build a wiki")
        samples = scrape(second.url)
    assert warm.usage.cache_read_input_tokens > 100
    assert by_label(samples, "foundry_cache_hits_total", "level")["disk"] == 1
    assert value(samples, "foundry_cache_misses_total", **model) == 0  # a fresh count
    assert by_label(samples, "foundry_prompt_tokens_total", "source")["disk"] == (
        warm.usage.cache_read_input_tokens
    )
    assert by_label(samples, "foundry_requests_total", "outcome") == {"completed": 1}


def test_metrics_need_the_key_like_cache_stats(tiny_model_dir, tmp_path) -> None:
    with serving(tiny_model_dir, tmp_path, api_key="sekrit-key") as served:
        refused = httpx2.get(f"{served.url}/metrics")
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
        samples = scrape(served.url, {"authorization": "Bearer sekrit-key"})
        assert (
            "sekrit"
            not in httpx2.get(f"{served.url}/metrics", headers={"x-api-key": "sekrit-key"}).text
        )
    assert (
        samples[
            (
                "foundry_http_requests_total",
                frozenset({"endpoint": "/metrics", "method": "GET", "status": "401"}.items()),
            )
        ]
        == 1
    )


def test_without_prometheus_client_serve_runs_without_metrics(
    tiny_model_dir, tmp_path, monkeypatch, caplog
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if it were missing
    monkeypatch.delitem(sys.modules, "foundry.server.metrics", raising=False)
    with (
        caplog.at_level("WARNING", logger="foundry.server.app"),
        serving(tiny_model_dir, tmp_path) as served,
    ):
        answer = ask(served.client(), "Build a todo app")
        missing = httpx2.get(f"{served.url}/metrics")
    assert answer.usage.output_tokens > 0  # the server serves
    assert missing.status_code == 404
    (line,) = [r.getMessage() for r in caplog.records if "/metrics is off" in r.getMessage()]
    assert "pip install -c constraints.txt -e '.[serve]'" in line
