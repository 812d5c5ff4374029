"""`foundry analyze-prompt` through the CLI: the report, --json, exit codes, --exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.anthropic_server import count_tokens as server_count

M = "<<CACHE_BOUNDARY>>"
# One line of ~1,100 estimated tokens: enough for Sonnet (1,024), not for Haiku 4.5 (4,096).
RULES = "Rules for the build agent. " * 220


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_packaged_prompt_report(cli):
    result = cli("analyze-prompt")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for heading in ("Sizes", "Caching on claude-sonnet-4-6", "Boundary", "Cache busters"):
        assert heading in out
    assert "offline estimate" in out and "~" in out  # estimates are labelled as such
    assert "The static part will cache on claude-sonnet-4-6" in out
    assert "ok: the marker ends the longest never-changing prefix" in out
    assert "none found" in out
    assert "Recommended TTL for claude-sonnet-4-6: 1h" in out
    assert result.stderr == ""


def test_json_is_one_object_with_numbers(cli):
    result = cli("analyze-prompt", "--json", "--builds", "5", "--builds-per-hour", "0.25")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["model"] == "claude-sonnet-4-6"
    assert report["tokens"]["method"] == "estimate"
    assert isinstance(report["static"]["tokens"], int) and report["static"]["tokens"] >= 4096
    assert report["cacheability"]["meets_minimum"] is True
    assert report["will_cache"] is True and report["exit_code"] == 0
    assert report["boundary"]["status"] == "ok"
    assert report["cache_busters"] == []
    projection = report["projection"]
    assert projection["assumptions"]["builds"] == 5
    assert projection["warm_probability"]["1h"] == pytest.approx(0.2211992)  # 1 - e^-0.25
    chosen = projection["chosen"]
    assert chosen["model"] == "claude-sonnet-4-6"
    assert isinstance(chosen["cached_1h_usd"], float)
    assert chosen["cached_5m_usd"] < chosen["uncached_usd"]
    assert chosen["recommended_ttl"] == "5m"  # 0.25 builds/hour is below the 0.55 break-even


def test_model_option_and_the_not_cached_list(cli, tmp_path: Path):
    template = write(tmp_path / "t.txt", RULES + f"\n{M}\n{{{{ task }}}}\n")
    ok = cli("analyze-prompt", "--template", template, "--json")
    assert ok.exit_code == 0
    report = json.loads(ok.stdout)
    assert {"model": "claude-haiku-4-5", "min_cache_tokens": 4096} in report["not_cached_on"]
    assert all(row["model"] != "claude-sonnet-4-6" for row in report["not_cached_on"])

    bad = cli("analyze-prompt", "--template", template, "--model", "claude-haiku-4-5")
    assert bad.exit_code == 3
    assert "will NOT cache on claude-haiku-4-5" in bad.stdout
    assert "will NOT cache on claude-haiku-4-5" in bad.stderr  # the line CI logs show


def test_default_model_comes_from_the_config(cli, tmp_path: Path):
    config = tmp_path / "cache_config.json"
    config.write_text(json.dumps({"backend": {"anthropic_model": "claude-opus-4-7"}}), "utf-8")
    result = cli("analyze-prompt", "--config", str(config), "--json")
    assert json.loads(result.stdout)["cacheability"]["min_cache_tokens"] == 2048


def test_custom_marker_from_the_config(cli, tmp_path: Path):
    config = write(tmp_path / "c.json", json.dumps({"caching": {"boundary_marker": "=== CUT ==="}}))
    template = write(tmp_path / "t.txt", RULES + "\n=== CUT ===\n{{ task }}\n")
    result = cli("analyze-prompt", "--config", config, "--template", template, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["marker"] == "=== CUT ==="
    missing = cli("analyze-prompt", "--config", config)  # the packaged prompt has the default
    assert missing.exit_code == 1
    assert "no boundary marker line === CUT ===" in missing.stderr


def test_too_late_marker_exits_3_and_says_where(cli, tmp_path: Path):
    text = RULES + "\nYou are building {{ build_name }}.\n" + f"{M}\n{{{{ task }}}}\n"
    result = cli("analyze-prompt", "--template", write(tmp_path / "t.txt", text))
    assert result.exit_code == 3
    assert "too_late" in result.stdout
    assert "directly above template line 2" in result.stdout
    assert "'build_name' at" in result.stdout
    assert "will NOT cache across builds" in result.stderr


def test_too_early_marker_is_reported_but_still_caches(cli, tmp_path: Path):
    constant = "This line never changes and could be cached with the rest of the rules. " * 6
    text = RULES + f"\n{M}\n{constant}\nTask: {{{{ task }}}}\n"
    result = cli("analyze-prompt", "--template", write(tmp_path / "t.txt", text), "--json")
    assert result.exit_code == 0
    boundary = json.loads(result.stdout)["boundary"]
    assert boundary["status"] == "too_early"
    assert boundary["recommended_template_line"] == 4


def test_cache_busters_are_listed_with_their_lines(cli, tmp_path: Path):
    text = RULES + "\nGenerated 2026-05-01 from /home/ada/rules.\n" + f"{M}\n{{{{ task }}}}\n"
    path = write(tmp_path / "t.txt", text)
    result = cli("analyze-prompt", "--template", path, "--json")
    busters = json.loads(result.stdout)["cache_busters"]
    assert [(b["line"], b["kind"], b["text"]) for b in busters] == [
        (2, "date", "2026-05-01"),
        (2, "absolute path", "/home/ada/rules."),
    ]
    assert busters[0]["source"] == f"{path}:2"
    human = cli("analyze-prompt", "--template", path)
    assert "2026-05-01" in human.stdout and "absolute path" in human.stdout


def test_a_model_not_in_the_pricing_table_is_an_error_naming_the_nearest(cli, tmp_path):
    result = cli("analyze-prompt", "--model", "claude-sonet-4-6")  # a typo
    assert result.exit_code == 2 and result.stdout == ""
    assert "model 'claude-sonet-4-6' is not in the pricing table" in result.stderr
    assert "did you mean claude-sonnet-4-6" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # The documented way to analyze a model foundry does not know: give it a price.
    config = tmp_path / "cache_config.json"
    config.write_text('{"models": {"my-local-model": {"input": 1, "output": 5}}}')
    result = cli("analyze-prompt", "--model", "my-local-model", "--config", str(config))
    assert result.exit_code == 0
    assert "Cannot tell whether the static part caches on my-local-model" in result.stdout


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--builds", "0"], 2, "--builds"),
        (["--builds-per-hour", "-1"], 2, "--builds-per-hour"),
        (["--requests-per-build", "0"], 2, "--requests-per-build"),
        (["--template", "nope.txt"], 1, "template not found: nope.txt"),
        (["--config", "nope.json"], 1, "config file not found"),
        (["--exact"], 1, "ANTHROPIC_API_KEY is not set"),
    ],
)
def test_bad_input(cli, args: list[str], code: int, fragment: str):
    result = cli("analyze-prompt", *args)
    assert result.exit_code == code
    assert fragment in result.stderr
    assert "Traceback" not in result.output


def test_broken_template_is_one_error_line(cli, tmp_path: Path):
    path = write(tmp_path / "t.txt", f"a\n{{% if %}}\n{M}\n{{{{ task }}}}\n")
    result = cli("analyze-prompt", "--template", path)
    assert result.exit_code == 1
    assert result.stderr.strip().startswith(f"error: {path}:2: template syntax error")
    assert result.stdout == ""


def test_exact_counts_come_from_count_tokens(cli, anthropic_env):
    result = cli("analyze-prompt", "--exact", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["tokens"]["method"] == "exact"
    assert report["tokens"]["relative_error"] == 0

    from foundry.prompt.split import SAMPLE_TASKS, render_split
    from foundry.prompt.template import load_template

    split = render_split(load_template(), SAMPLE_TASKS[0])
    assert report["static"]["tokens"] == server_count(split.static)
    assert report["dynamic"]["tokens"] == server_count(split.dynamic)
    assert len(anthropic_env.count_requests) == 4  # static and dynamic, each with a baseline
    human = cli("analyze-prompt", "--exact")
    assert "exact: Anthropic messages.count_tokens" in human.stdout
    assert "~" not in human.stdout.split("Sizes")[1].split("static sha256")[0]
