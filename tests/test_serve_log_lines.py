"""`foundry -v serve`'s HIT/MISS line says where every prompt token came from, and its numbers
add up: prompt = reused + prefilled, and the tokens saved to disk are some of the prefilled
ones (a cold prompt is prefilled whole, even the part then saved). Checked on real requests,
against the usage the client received, on both engines: cold (MISS), the next turn (HIT
memory), and the first request again after a restart (HIT disk)."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

from tests.serve_helpers import serving, system_blocks

pytest.importorskip("uvicorn")  # the serve extra: pip install -e '.[serve]'
LINE = re.compile(
    r"^(?P<verdict>HIT memory|HIT disk|MISS \(.+?\)): (?P<prompt>[\d,]+) prompt tokens: "
    r"(?P<reused>[\d,]+) reused, (?P<prefilled>[\d,]+) prefilled"
    r"(?: \((?P<saved>[\d,]+) of them saved to disk\))?; ttft [\d,]+ ms, "
    r"(?P<output>[\d,]+) output tokens \(req_local_\w+\)$"
)
FIRST = [{"role": "user", "content": "Build a todo app"}]
NEXT = FIRST + [
    {"role": "assistant", "content": "Reading the files."},
    {"role": "user", "content": "The tests pass."},
]


def _number(text: str | None) -> int:
    return int(text.replace(",", "")) if text else 0


def _ask(served: Any, messages: list[dict[str, Any]]) -> Any:
    return served.client().messages.create(
        model="claude-sonnet-4-6", max_tokens=4, system=system_blocks(), messages=messages
    )


def _line(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "foundry.server.service" and r.getMessage().startswith(("HIT", "MISS"))
    ]
    assert len(lines) == 1, lines
    caplog.clear()
    match = LINE.match(lines[0])
    assert match, lines[0]
    fields = {k: v if k == "verdict" else _number(v) for k, v in match.groupdict().items()}
    assert fields["prompt"] == fields["reused"] + fields["prefilled"], lines[0]
    assert fields["saved"] <= fields["prefilled"], lines[0]
    return fields


def _matches(fields: dict[str, Any], usage: Any) -> None:
    """The line's numbers are the usage the client got, in the API's meanings."""
    read, written = usage.cache_read_input_tokens, usage.cache_creation_input_tokens
    assert fields["prompt"] == usage.input_tokens + read + written
    assert fields["reused"] == read
    assert fields["prefilled"] == usage.input_tokens + written
    assert fields["saved"] == written
    assert fields["output"] == usage.output_tokens


@pytest.fixture(params=["mlx", "llamacpp"])
def engine(request: pytest.FixtureRequest, tiny_model_dir, tmp_path_factory) -> tuple[str, Any]:
    if request.param == "mlx":
        pytest.importorskip("mlx.core")
        return "mlx", tiny_model_dir
    pytest.importorskip("llama_cpp")
    from tests.tiny_model import write_tiny_gguf

    return "llamacpp", write_tiny_gguf(
        tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    )


def test_the_hit_miss_line_adds_up(engine, tmp_path, caplog) -> None:
    backend, model = engine
    caplog.set_level(logging.INFO, logger="foundry.server.service")
    with serving(model, tmp_path, backend=backend) as served:
        cold = _ask(served, FIRST).usage
        miss = _line(caplog)
        warm = _ask(served, NEXT).usage
        hit = _line(caplog)
    assert miss["verdict"].startswith("MISS (") and "no saved prefix" in miss["verdict"]
    # Cold: nothing reused, every prompt token prefilled, the system prefix among them saved.
    assert miss["reused"] == 0 and miss["prefilled"] == miss["prompt"] > miss["saved"] > 100
    _matches(miss, cold)
    assert hit["verdict"] == "HIT memory"
    assert hit["reused"] >= miss["prompt"] - 1 and hit["prefilled"] == hit["prompt"] - hit["reused"]
    _matches(hit, warm)

    # A restart. llama.cpp's server takes its conversations back into memory as it starts;
    # without the list of them, or on mlx, the prompt is read from disk.
    for listed in (tmp_path / "prefix-cache").glob("conversations-*.json"):
        listed.unlink()
    with serving(model, tmp_path, backend=backend) as served:
        again = _ask(served, FIRST).usage
        disk = _line(caplog)
    assert disk["verdict"] == "HIT disk"
    assert disk["prompt"] == miss["prompt"] and disk["reused"] >= miss["saved"]
    _matches(disk, again)


def test_a_restarted_llamacpp_server_says_its_conversation_came_back_from_memory(
    tmp_path, caplog, tiny_model_dir, tmp_path_factory
) -> None:
    pytest.importorskip("llama_cpp")
    from tests.tiny_model import write_tiny_gguf

    model = write_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    caplog.set_level(logging.INFO, logger="foundry")
    with serving(model, tmp_path, backend="llamacpp") as served:
        first = _ask(served, FIRST).usage
    _line(caplog)
    with serving(model, tmp_path, backend="llamacpp") as served:
        assert "took back 1 conversation(s)" in caplog.text
        again = _ask(served, FIRST).usage
        hit = _line(caplog)
    assert hit["verdict"] == "HIT memory"
    prompt = first.input_tokens + first.cache_creation_input_tokens
    assert hit["reused"] == hit["prompt"] - 1 == prompt - 1
    _matches(hit, again)
