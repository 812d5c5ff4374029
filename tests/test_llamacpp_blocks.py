"""llama.cpp states stored as token blocks, on a tiny random-weight GGUF: a state cut into
blocks and put back together is the same KV cache, sessions sharing a system prompt store it
once, and a restarted server finds its conversations on disk."""

from __future__ import annotations

import json
import logging
import struct

import numpy as np
import pytest

from foundry.backends.base import Message, ModelRequest
from tests.test_llamacpp_backend import (
    READ,
    assert_context_is_exact,
    backend,
    config,
    conversation,
    gguf,  # noqa: F401  (the module's fixture)
    request,
)

pytestmark = pytest.mark.llamacpp
COMMON = "You are a careful build orchestrator who reads before writing. " * 32


def model(gguf_path):  # noqa: F811
    from foundry.local.llamacpp_engine import LlamaCppModel

    return LlamaCppModel(gguf_path, "tiny", n_ctx=2048)


def test_a_state_cut_into_blocks_and_put_together_is_the_same_cache(gguf) -> None:  # noqa: F811
    from foundry.local.llamacpp_layout import ParsedState, assemble

    m = model(gguf)
    tokens = [int(t) for t in np.random.default_rng(7).integers(10, min(400, m.n_vocab), size=900)]
    m.feed(tokens[:600])
    m.trim(250)  # cells given back and filled again, as a served context's are
    m.feed(tokens[250:900])
    expected = m.feed([5])
    m.trim(900)
    parsed = ParsedState(m.save_state(), 900)
    cuts = [0, 256, 512, 768, 900]
    blocks = [(b - a, parsed.block(a, b)) for a, b in zip(cuts, cuts[1:], strict=False)]
    state = assemble(parsed.layout, blocks)
    m.trim(0)
    assert m.load_state(state, tokens[:900])
    np.testing.assert_array_equal(m.feed([5]), expected)
    m.close()


def test_cells_out_of_position_order_are_put_in_order(gguf) -> None:  # noqa: F811
    """llama.cpp writes cells in buffer order, which after trims need not be position order:
    a block holds positions, wherever their cells sat."""
    from foundry.local.llamacpp_layout import CELL, ParsedState

    m = model(gguf)
    m.feed([20 + i % 30 for i in range(40)])
    raw = bytes(m.save_state())
    m.close()
    parsed = ParsedState(raw, 40)
    layout = parsed.layout
    order = np.random.default_rng(3).permutation(40)  # cell i now holds position order[i]
    head = 16  # magic, sequence id, streams, cell count
    cells = np.frombuffer(raw[head : head + 40 * CELL.itemsize], dtype=CELL).copy()[order]
    shuffled = bytearray(raw[:head] + cells.tobytes())
    at = head + 40 * CELL.itemsize
    shuffled += raw[at : at + 8]
    at += 8
    for _, row in layout.keys:
        rows = np.frombuffer(raw[at + 12 : at + 12 + 40 * row], np.uint8).reshape(40, row)
        shuffled += raw[at : at + 12] + rows[order].tobytes()
        at += 12 + 40 * row
    for _, row, width in layout.values:
        element = row // width
        columns = np.frombuffer(raw[at + 12 : at + 12 + 40 * row], np.uint8)
        columns = columns.reshape(width, 40, element)[:, order, :]
        shuffled += raw[at : at + 12] + columns.tobytes()
        at += 12 + 40 * row
    assert at == len(raw)
    assert ParsedState(bytes(shuffled), 40).block(0, 40) == parsed.block(0, 40)


def test_states_it_cannot_cut_are_refused(gguf) -> None:  # noqa: F811
    from foundry.local.llamacpp_layout import ParsedState

    m = model(gguf)
    m.feed(list(range(20, 30)))
    raw = bytes(m.save_state())
    m.close()
    for broken, why in [
        (raw[:-1], "truncated"),
        (raw + b"\0", "left over"),
        (struct.pack("<I", 1) + raw[4:], "sequence 0"),
    ]:
        with pytest.raises(ValueError, match=why):
            ParsedState(broken, 10)
    with pytest.raises(ValueError, match="cells for"):
        ParsedState(raw, 11)


def session_request(session: str, text: str = "Build a todo app") -> ModelRequest:
    """A client's first request: a long shared system prompt ending in its own session's
    details, with the breakpoint after them (as Claude Code's system prompt does)."""
    system = f"{COMMON}Session {session}: working directory /home/u/{session}."
    messages = [Message("user", [{"type": "text", "text": text}])]
    return ModelRequest("tiny", system, [READ], messages, max_tokens=4, temperature=0.0)


def store_bytes(tmp_path) -> int:
    return sum(p.stat().st_size for p in (tmp_path / "store").glob("*.safetensors"))


def test_sessions_sharing_a_system_prompt_store_it_once(gguf, tmp_path, cli, caplog) -> None:  # noqa: F811
    cfg = config(tmp_path)
    first = backend(gguf, cfg)
    one = first.complete(session_request("alpha"))
    assert one.usage.cache_write_5m_tokens > 1000
    after_one = store_bytes(tmp_path)
    per_token = first._loaded.kv_bytes_per_token()
    caplog.set_level(logging.INFO, logger="foundry.local.prefix_store")
    second = backend(gguf, cfg)  # another process: nothing in memory, the store on disk
    two = second.complete(session_request("beta"))
    prompt = two.usage.total_input_tokens
    shared = two.usage.cache_read_tokens
    assert second.last_cache_event["source"] == "store"
    assert not [r for r in caplog.records if "prefix cache miss" in r.getMessage()]
    assert shared >= 1024  # the full blocks of the shared system prompt, read from disk
    growth = store_bytes(tmp_path) - after_one
    # Only the second session's own tokens (from the block it diverges in) are added.
    assert 0 < growth <= (prompt - shared) * per_token * 1.1 + 64 * 1024, (growth, after_one)
    assert growth < after_one / 3
    settings = tmp_path / "cache_config.json"
    settings.write_text(json.dumps({"prefix_cache": {"dir": str(tmp_path / "store")}}))
    listed = json.loads(cli("cache", "list", "--json", "--config", str(settings)).stdout)
    rows = listed["entries"]
    assert rows and {r["kind"] for r in rows} == {"block"}
    assert all(r["n_tokens"] <= 256 for r in rows)
    assert two.content == backend(gguf, cfg).complete(session_request("beta")).content
    assert_context_is_exact(second)


def served(gguf, cfg, entries=3):  # noqa: F811
    b = backend(gguf, cfg)
    b.serve_with(l1_entries=entries, memory_budget_bytes=None)
    b.load()
    return b


def test_a_restarted_server_takes_its_conversations_back_into_memory(gguf, tmp_path) -> None:  # noqa: F811
    """Two clients' conversations before a stop are in memory again when the restarted
    server takes its first request: the newest in the context, the other parked, so both
    clients' next turns are memory hits on their whole previous prompts."""
    cfg = config(tmp_path)
    before = served(gguf, cfg)
    for turns in (2, 3):
        before.complete(request(messages=conversation("Build a todo app", turns)))
    before.complete(request(messages=conversation("Write a haiku about caches", 2)))
    prompts = {
        first: before.count_request_tokens(request(messages=conversation(first, turns)))
        for first, turns in (("Build a todo app", 3), ("Write a haiku about caches", 2))
    }
    before.close()  # a stop: what the background saver was writing lands whole
    after = served(gguf, cfg)
    assert after.taken_back["conversations"] == 2, after.taken_back
    for first, turns in (("Build a todo app", 4), ("Write a haiku about caches", 3)):
        back = after.complete(request(messages=conversation(first, turns)))
        assert after.last_cache_event["source"] == "memory", after.last_cache_event
        assert back.usage.cache_read_tokens >= prompts[first], (back.usage, prompts[first])
        assert back.usage.input_tokens < 40
        assert_context_is_exact(after)
    assert after.flush_saves(30)
    after.close()


def test_without_its_list_a_restart_still_reads_conversations_from_disk(gguf, tmp_path) -> None:  # noqa: F811
    cfg = config(tmp_path)
    before = served(gguf, cfg)
    for turns in (2, 3):
        before.complete(request(messages=conversation("Build a todo app", turns)))
    previous = before.count_request_tokens(request(messages=conversation("Build a todo app", 3)))
    before.close()
    for listed in (tmp_path / "store").glob("conversations-*.json"):
        listed.unlink()
    after = served(gguf, cfg)
    assert after.taken_back["conversations"] == 0
    nxt = request(messages=conversation("Build a todo app", 4))
    back = after.complete(nxt)
    assert after.last_cache_event["source"] == "store"
    assert back.usage.cache_read_tokens >= previous, (back.usage, previous)
    assert back.usage.input_tokens < 40
    assert after.flush_saves(30)
    assert_context_is_exact(after)
    after.close()
    again = served(gguf, cfg)  # and again: the client retries that request, word for word
    repeated = again.complete(nxt)
    assert again.last_cache_event["source"] == "memory"  # taken back at start this time
    assert repeated.usage.cache_read_tokens == again.count_request_tokens(nxt) - 1
    assert repeated.content == back.content


def test_the_breakpoints_of_a_served_prompt_are_saved_after_its_reply(gguf, tmp_path) -> None:  # noqa: F811
    """Under `foundry serve` a prompt's cache points are written with the conversation, in
    the background, not in the middle of its prefill; another process finds them."""
    cfg = config(tmp_path)
    server = served(gguf, cfg)
    first = server.complete(session_request("alpha"))
    assert server._deferred, "the prompt's breakpoints were saved during its prefill"
    assert first.usage.cache_write_5m_tokens > 0
    assert server.flush_saves(30)
    server.close()
    other = backend(gguf, cfg)  # not served: reads the breakpoint from the store
    other.complete(session_request("alpha", "Write a haiku instead"))
    assert other.last_cache_event["source"] == "store"
    assert other.last_cache_event["reused"] >= first.usage.cache_write_5m_tokens


@pytest.mark.parametrize(
    "listed",
    [
        {"version": 1, "conversations": [{"tokens": [10**9, 5], "prompt_length": 1}]},
        {"version": 1, "conversations": [{"tokens": [-1], "prompt_length": 0}]},
        {"version": 1, "conversations": [{"tokens": [True, 5], "prompt_length": 1}]},
        {"version": 1, "conversations": [{"tokens": [5, 6], "prompt_length": 9}]},
        {"version": 1, "conversations": "all"},
        {"version": 2, "conversations": []},
        [1, 2, 3],
        "[[[[",
    ],
)
def test_a_forged_conversation_list_restores_nothing(gguf, tmp_path, listed) -> None:  # noqa: F811
    cfg = config(tmp_path)
    probe = served(gguf, cfg)
    name = probe._keeper.served.name
    probe.close()
    text = listed if isinstance(listed, str) else json.dumps(listed)
    (tmp_path / "store" / name).write_text(text)
    after = served(gguf, cfg)
    assert after.taken_back["conversations"] == 0
    after.complete(request())  # and the server works
    after.close()


def test_a_conversation_list_that_is_a_link_or_huge_is_not_read(gguf, tmp_path, caplog) -> None:  # noqa: F811
    """The list names token ids only, but it is read from a directory others may share:
    never through a link (it could name any file), never past its size limit."""
    from foundry.local import served_conversations

    cfg = config(tmp_path)
    before = served(gguf, cfg)
    before.complete(request(messages=conversation("Build a todo app", 2)))
    name = before._keeper.served.name
    before.close()
    listed = tmp_path / "store" / name
    real = tmp_path / "elsewhere.json"
    listed.rename(real)
    listed.symlink_to(real)
    with caplog.at_level(logging.WARNING):
        assert served(gguf, cfg).taken_back["conversations"] == 0
    assert name in caplog.text
    listed.unlink()
    real.rename(listed)
    served_conversations.LIST_LIMIT_BYTES, limit = 100, served_conversations.LIST_LIMIT_BYTES
    try:
        assert served(gguf, cfg).taken_back["conversations"] == 0
    finally:
        served_conversations.LIST_LIMIT_BYTES = limit
    assert served(gguf, cfg).taken_back["conversations"] == 1  # the same list, read


def test_a_prefix_over_the_memory_budget_is_a_miss_that_says_so(gguf, tmp_path) -> None:  # noqa: F811
    """Each block is small, but the state they make is what a restore holds in memory."""
    backend(gguf, config(tmp_path)).complete(session_request("alpha"))
    tight = backend(gguf, config(tmp_path))
    tight.load()
    # The tiny model's whole prefix is ~300 KB: a budget under it (in bytes; the setting
    # counts whole MB) stands for a real model's GB-sized state against the default 4 GB.
    tight._store.store.memory_budget_bytes = 100_000
    tight.complete(session_request("alpha"))
    assert tight.last_cache_event["source"] != "store"
    assert "memory_budget_mb" in tight.last_cache_event["reason"]


def test_states_in_prefaulted_maps_behave_as_bytearrays(gguf, tmp_path, monkeypatch) -> None:  # noqa: F811
    """A real model's state (tens of MB) is copied into an anonymous map faulted in at once;
    the tiny model's are under the threshold, so it is lowered here: parking, loading back,
    cutting into blocks and restoring all take such a buffer."""
    import mmap

    from foundry.local import llamacpp_layout

    monkeypatch.setattr(llamacpp_layout, "POPULATE_FROM", 0)
    m = model(gguf)
    m.feed([20 + i % 30 for i in range(300)])
    state = m.save_state()
    assert isinstance(state, mmap.mmap) and len(state) > 300 * 64
    expected = m.feed([5])
    m.trim(0)
    assert m.load_state(state, [20 + i % 30 for i in range(300)])
    np.testing.assert_array_equal(m.feed([5]), expected)
    m.close()
    cfg = config(tmp_path)
    server = served(gguf, cfg)
    server.complete(request(messages=conversation("Build a todo app", 2)))
    server.complete(request(messages=conversation("Write a haiku about caches", 2)))
    back = server.complete(request(messages=conversation("Build a todo app", 3)))
    assert "parked" in server.last_cache_event["reason"] and back.usage.input_tokens < 40
    assert_context_is_exact(server)
    server.close()
    after = served(gguf, cfg)  # taken back from blocks put together in such a buffer
    assert after.taken_back["conversations"] == 2
    assert_context_is_exact(after)
    after.close()
