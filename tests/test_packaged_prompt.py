"""The orchestrator prompt foundry ships: it renders, splits, is static above the marker, is
big enough to cache on every current Claude model and small enough for an 8k local model,
and documents the workspace tools as the orchestrator defines them."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from foundry.config import TEMPLATE_FILENAME
from foundry.pricing import PricingTable
from foundry.prompt import analysis
from foundry.prompt.split import (
    DEFAULT_MARKER,
    SAMPLE_TASKS,
    contrasting_task,
    parse_template,
    render_split,
)
from foundry.prompt.template import TaskConfig, load_template
from foundry.prompt.tokens import estimate_tokens
from tests.conftest import REPO_ROOT


@pytest.fixture
def packaged():
    # The autouse fixture runs tests in an empty directory: this is the packaged template.
    template = load_template()
    assert template.name == f"<packaged {TEMPLATE_FILENAME}>"
    return template


def test_the_packaged_template_is_the_repository_one(packaged):
    assert packaged.text == (REPO_ROOT / TEMPLATE_FILENAME).read_text("utf-8")
    data = resources.files("foundry.data")
    for path in sorted((REPO_ROOT / "prompts").glob("*.md")):
        assert data.joinpath("prompts", path.name).read_text("utf-8") == path.read_text("utf-8")


def test_every_include_exists_in_the_package(packaged):
    includes = re.findall(r"{%\s*include\s+\"([^\"]+)\"", packaged.text)
    assert includes, "the template includes its phase instructions"
    data = resources.files("foundry.data")
    for name in includes:
        assert data.joinpath(*name.split("/")).is_file(), name


def test_renders_and_splits_for_every_sample_task(packaged):
    statics = set()
    for task in SAMPLE_TASKS:
        split = render_split(packaged, task)
        statics.add(split.static_sha256)
        assert f"# Build card: {task.name}" in split.dynamic
        assert task.task in split.dynamic and task.workdir in split.dynamic
        assert DEFAULT_MARKER not in split.static + split.dynamic
    assert len(statics) == 1  # one static part for every build


def test_nothing_task_specific_is_above_the_marker(packaged):
    parsed = parse_template(packaged)
    assert [u for u in parsed.variable_uses() if u.part == "static"] == []
    for task in SAMPLE_TASKS:
        static = parsed.render_static(task)
        assert static == parsed.render_static(contrasting_task(task))
        for value in (contrasting_task(task).name, task.task, task.workdir):
            assert value not in static


def test_the_dynamic_part_renders_the_task_configuration(packaged):
    task = TaskConfig(
        "api", "Add an endpoint", "/srv/api", mode="existing", phases=("builder", "test")
    )
    dynamic = render_split(packaged, task).dynamic
    assert dynamic.endswith("## Task\n\nAdd an endpoint")
    assert "- Working directory: `/srv/api`" in dynamic
    assert "- Mode: existing project" in dynamic
    assert "- Phases: builder, test" in dynamic
    assert "- Test runs: 3" in dynamic
    new = render_split(packaged, TaskConfig("a", "b", "/c", phases=("scout", "builder"))).dynamic
    assert "- Mode: new project" in new
    assert "Test runs" not in new  # no test phase, so no test-run limit


def test_a_multi_line_task_cannot_swallow_the_fields_of_the_card(packaged):
    # `foundry build x "$(cat spec.md)"`: the task is last, under its own heading, so a
    # list inside it is never read as more of the card.
    spec = "Build a todo CLI.\n\n## Requirements\n- add\n- list"
    dynamic = render_split(packaged, TaskConfig("x", spec, "/w")).dynamic
    assert dynamic.endswith("## Task\n\n" + spec)
    assert dynamic.index("- Test runs: 3") < dynamic.index("## Requirements")


def test_the_static_part_explains_every_field_of_the_build_card(packaged):
    # The card carries values only; their meaning is cached above the marker.
    static = render_split(packaged).static
    for field in ("Working directory", "Mode", "Phases", "Test runs"):
        assert f"- **{field}**:" in static, field
    for rule in ("`existing project`", "Without a test", "but no architect", "`tests_failed`"):
        assert rule in static, rule


def test_the_dynamic_part_is_the_task_plus_a_few_dozen_tokens(packaged):
    # Every dynamic token is prefilled again in each phase (and on a local model it is
    # what a warm start waits for), so instructions must not creep below the marker.
    task = TaskConfig("todo", "Build a CLI todo app with tests", "/tmp/todo")
    dynamic = render_split(packaged, task).dynamic
    overhead = estimate_tokens(dynamic) - estimate_tokens(task.task + task.workdir + task.name)
    assert overhead <= 50, dynamic  # the old prose "Setting" section was ~115


def test_static_part_size_is_between_the_cache_floor_and_the_local_ceiling(packaged):
    static = render_split(packaged).static
    tokens = estimate_tokens(static)
    assert 4096 <= tokens <= 6000, tokens
    # It caches on every current model whose minimum is known, Opus 4.6 and Haiku 4.5 included.
    below, _ = analysis.models_not_cached(tokens, PricingTable().models())
    assert below == []
    # Margin: still above the highest minimum if the estimate is 8% high.
    assert tokens * (1 - 0.08) >= 4096


def test_no_cache_busters_and_the_boundary_is_where_it_should_be(packaged):
    parsed = parse_template(packaged)
    variants = [(parsed.render_static(t), parsed.render_dynamic(t)) for t in SAMPLE_TASKS]
    assert analysis.find_cache_busters(variants[0][0]) == []
    advice = analysis.boundary_advice(
        variants, parsed.marker_line, parsed.variable_uses(), estimate_tokens
    )
    assert advice.status == "ok", advice.message
    assert advice.uncached_constant_tokens == 0


def test_the_prompt_covers_every_phase_artifact_and_the_summary(packaged):
    static = render_split(packaged).static
    for phase in ("scout", "architect", "builder", "test", "deploy"):
        assert f"## Phase: {phase}" in static
    for artifact in (
        "scout-report.md",
        "architecture.md",
        "build-log.md",
        "test-results-<n>.md",
        "summary.json",
    ):
        assert artifact in static
    for field in ("status", "tests_passed", "files_created", "test_iterations", "commit"):
        assert f"`{field}`" in static
    assert '<tool_call>{"name": ' in static and "</tool_call>" in static


def test_the_prompt_documents_the_tools_the_orchestrator_defines(packaged):
    tools = pytest.importorskip("foundry.orchestrator.tools")
    static = render_split(packaged).static
    for spec in tools.TOOL_SPECS:
        properties = spec.input_schema["properties"]
        required = set(spec.input_schema.get("required", []))
        args = ", ".join(name if name in required else f"{name}?" for name in properties)
        assert f"### {spec.name}({args})" in static, spec.name


def test_the_fallback_example_parses_as_the_orchestrator_reads_it(packaged):
    tool_calls = pytest.importorskip("foundry.local.tool_calls")
    static = render_split(packaged).static
    section = static.split("## Calling tools without native tool support")[1]
    example = section.split("Example of a full turn in this format:")[1]
    parsed = tool_calls.parse_tool_calls(example, {"write_file", "run_command"})
    assert parsed.errors == []
    assert [call["name"] for call in parsed.calls] == ["write_file", "run_command"]
