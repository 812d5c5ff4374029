"""foundry.prompt.split: sandboxed rendering, the boundary split, the static-part proof, and a clear
error with file and line for every kind of bad template."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foundry.errors import TemplateError
from foundry.prompt.split import SAMPLE_TASKS, contrasting_task, parse_template, render_split
from foundry.prompt.template import (
    PHASES,
    TEMPLATE_VARIABLES,
    TaskConfig,
    load_template,
    template_from_text,
)

M = "<<CACHE_BOUNDARY>>"
TASK = TaskConfig("todo", "Build a CLI todo app", "/w/todo")


def split(text: str, **kwargs):
    return render_split(template_from_text(text, "t.txt"), TASK, **kwargs)


def test_split_renders_both_parts_and_hashes_the_static_part():
    result = split(f"Static {{{{ 'rules' }}}}.\n{M}\nTask: {{{{ task }}}} in {{{{ workdir }}}}\n")
    assert result.static == "Static rules."
    assert result.dynamic == "Task: Build a CLI todo app in /w/todo"
    assert result.marker_line == 2
    assert re.fullmatch(r"[0-9a-f]{64}", result.static_sha256)
    assert result.sha256 == result.static_sha256
    again = split(f"Static {{{{ 'rules' }}}}.\n{M}\nOther: {{{{ build_name }}}}\n")
    assert again.static_sha256 == result.static_sha256  # the task part never moves the hash
    assert again.template_sha256 != result.template_sha256  # but the template changed


def test_every_variable_renders_in_the_dynamic_part():
    text = "s\n" + M + "\n" + "\n".join(f"{v}={{{{ {v} }}}}" for v in TEMPLATE_VARIABLES)
    task = TaskConfig(
        "n", "t", "/d", mode="existing", phases=("builder", "test"), max_test_iterations=4
    )
    dynamic = render_split(template_from_text(text), task).dynamic
    assert dynamic.split("\n") == [
        "build_name=n",
        "task=t",
        "workdir=/d",
        "mode=existing",
        "phases=['builder', 'test']",
        "max_test_iterations=4",
    ]


def test_blocks_do_not_leave_blank_lines_and_crlf_is_normalised():
    text = f"a\r\n{{% if true %}}\r\nb\r\n{{% endif %}}\r\n{M}\r\n{{{{ task }}}}\r\n"
    result = split(text)
    assert result.static == "a\nb"
    assert "\r" not in result.dynamic


def test_custom_marker():
    result = split("static\n---8<---\n{{ task }}\n", marker="---8<---")
    assert (result.static, result.marker) == ("static", "---8<---")
    with pytest.raises(TemplateError, match="no boundary marker line ---8<---"):
        split(f"static\n{M}\n{{{{ task }}}}\n", marker="---8<---")


def test_a_bom_is_not_part_of_the_prompt(tmp_path: Path):
    path = tmp_path / "p.txt"
    path.write_bytes(b"\xef\xbb\xbfstatic\n" + M.encode() + b"\n{{ task }}\n")
    assert render_split(load_template(path), TASK).static == "static"


def test_contrasting_task_differs_in_every_variable():
    for task in (TASK, *SAMPLE_TASKS):
        a, b = task.context(), contrasting_task(task).context()
        assert all(a[name] != b[name] for name in TEMPLATE_VARIABLES)
        assert bool(a["phases"]) == bool(b["phases"]) and set(b["phases"]) <= set(PHASES)


def test_sample_tasks_cover_both_modes_and_varied_phases():
    assert {t.mode for t in SAMPLE_TASKS} == {"new", "existing"}
    assert len({t.phases for t in SAMPLE_TASKS}) == len(SAMPLE_TASKS)


# --------------------------------------------------------------------------- bad templates

BAD_TEMPLATES = [
    # (id, template, expected fragment of the message, expected "t.txt:LINE" or None)
    ("missing marker", "a\nb\n", "no boundary marker line", None),
    (
        "two markers",
        f"a\n{M}\nb\n{M}\n{{{{ task }}}}",
        "more than one boundary marker line (lines 2, 4)",
        4,
    ),
    ("marker not alone", f"a {M} b\n{{{{ task }}}}", "must stand alone on its line", 1),
    (
        "marker in if",
        f"a\n{{% if true %}}\n{M}\n{{% endif %}}\n{{{{ task }}}}",
        "the 'if' block opened at line 2",
        3,
    ),
    (
        "marker in for",
        f"a\n{{% for p in [1] %}}\n{M}\n{{% endfor %}}\n{{{{ task }}}}",
        "the 'for' block opened at line 2",
        3,
    ),
    (
        "marker in comment",
        f"a\n{{# note\n{M}\n#}}\n{{{{ task }}}}",
        "a comment opened at line 2",
        3,
    ),
    (
        "marker in raw",
        f"a\n{{% raw %}}\n{M}\n{{% endraw %}}\n{{{{ task }}}}",
        "the 'raw' block opened at line 2",
        3,
    ),
    (
        "marker in set block",
        f"a\n{{% set x %}}\n{M}\n{{% endset %}}\n{{{{ task }}}}",
        "the 'set' block opened at line 2",
        3,
    ),
    (
        "marker in expression",
        f"a\n{{{{ 'x' ~\n{M}\n}}}}\n{{{{ task }}}}",
        "inside a Jinja expression",
        3,
    ),
    (
        "marker from expression",
        "a\n{{ '<<CACHE_' ~ 'BOUNDARY>>' }}\n{{ task }}",
        "produced only by an expression or include",
        None,
    ),
    ("syntax error", f"a\n{{% if %}}\n{M}\n{{{{ task }}}}", "template syntax error", 2),
    ("unclosed block", f"a\n{M}\n{{% if task %}}\nb", "template syntax error", 4),
    ("undefined below", f"a\n{M}\n\n{{{{ tsk }}}}", "undefined variable: 'tsk' is undefined", 4),
    ("undefined above", f"a\n{{{{ nope }}}}\n{M}\n{{{{ task }}}}", "undefined variable: 'nope'", 2),
    (
        "empty static",
        f"{{# only a comment #}}\n\n{M}\n{{{{ task }}}}",
        "static part (above the marker) is empty",
        3,
    ),
    (
        "empty dynamic",
        f"a\n{M}\n{{% if false %}}x{{% endif %}}\n",
        "dynamic part (below the marker) is empty",
        2,
    ),
    (
        "variable above",
        f"a\nHello {{{{ build_name }}}}\n{M}\n{{{{ task }}}}",
        "changes with the task",
        2,
    ),
    (
        "variable in a loop above",
        f"a\n{{% for p in phases %}}- {{{{ p }}}}\n{{% endfor %}}\n{M}\n{{{{ task }}}}",
        "'phases' at t.txt:2",
        2,
    ),
    (
        "variable above, same output",
        f"a\n{{% if task %}}yes{{% endif %}}\n{M}\n{{{{ task }}}}",
        "uses the variable 'task'",
        2,
    ),
    (
        "unsafe attribute",
        f"{{{{ ''.__class__ }}}}\n{M}\n{{{{ task }}}}",
        "not allowed in a template",
        1,
    ),
    ("random lipsum", f"{{{{ lipsum() }}}}\n{M}\n{{{{ task }}}}", "'lipsum' is undefined", 1),
    ("runtime error", f"a\n{M}\n{{{{ 1 / 0 }}}}", "ZeroDivisionError", 3),
    (
        "missing include",
        f"a\n{{% include 'prompts/nope.md' %}}\n{M}\n{{{{ task }}}}",
        "included file 'prompts/nope.md' not found",
        2,
    ),
    (
        "include escapes",
        f"a\n{{% include '../secret.md' %}}\n{M}\n{{{{ task }}}}",
        "may not leave the template's directory",
        2,
    ),
    ("extends", f"{{% extends 'x.txt' %}}\n{M}\n{{{{ task }}}}", "inheritance", None),
]


@pytest.mark.parametrize(
    ("template", "fragment", "line"),
    [pytest.param(t, f, line, id=i) for i, t, f, line in BAD_TEMPLATES],
)
def test_bad_templates_fail_with_a_clear_located_error(template: str, fragment: str, line):
    with pytest.raises(TemplateError) as caught:
        split(template)
    message = str(caught.value)
    assert fragment in message
    if line is not None:
        assert message.startswith(f"t.txt:{line}:"), message
    assert "Traceback" not in message and "\n" not in message


def test_static_error_names_the_first_differing_line_and_the_variable():
    text = f"one\ntwo {{{{ workdir }}}}\nthree {{{{ build_name }}}}\n{M}\n{{{{ task }}}}"
    with pytest.raises(TemplateError) as caught:
        split(text)
    message = str(caught.value)
    assert "rendered line 2" in message
    assert "'two /w/todo'" in message
    assert "'workdir' at t.txt:2" in message
    assert "build_name" not in message  # line 3 differs too, but line 2 is the first


def test_unreadable_and_non_utf8_files(tmp_path: Path):
    with pytest.raises(TemplateError, match="template not found: .*missing.txt"):
        load_template(tmp_path / "missing.txt")
    with pytest.raises(TemplateError, match="is a directory"):
        load_template(tmp_path)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"line one\nna\xefve\n" + M.encode() + b"\n{{ task }}\n")
    with pytest.raises(TemplateError, match=r"latin1.txt:2: not UTF-8 text \(byte 0xef"):
        load_template(bad)


def test_non_utf8_include(tmp_path: Path):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "x.md").write_bytes(b"caf\xe9\n")
    main = tmp_path / "t.txt"
    main.write_text(f"{{% include 'prompts/x.md' %}}\n{M}\n{{{{ task }}}}\n", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"prompts/x.md:1: not UTF-8"):
        render_split(load_template(main), TASK)


def test_syntax_error_inside_an_include_names_the_include(tmp_path: Path):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "x.md").write_text("ok\n{% if %}\n", encoding="utf-8")
    main = tmp_path / "t.txt"
    main.write_text(f"{{% include 'prompts/x.md' %}}\n{M}\n{{{{ task }}}}\n", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"prompts/x.md:2: template syntax error"):
        render_split(load_template(main), TASK)


# --------------------------------------------------------------------------- includes


def test_includes_resolve_next_to_the_template_first(tmp_path: Path):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "scout.md").write_text("my own scout\n", encoding="utf-8")
    main = tmp_path / "t.txt"
    main.write_text(
        f"{{% include 'prompts/scout.md' %}}\n{{% include 'prompts/builder.md' %}}\n{M}\n"
        "{{ task }}\n",
        encoding="utf-8",
    )
    static = render_split(load_template(main), TASK).static
    assert static.startswith("my own scout\n")
    assert "## Phase: builder" in static  # not next to the template: the packaged one


def test_a_variable_used_in_an_included_file_is_located_there(tmp_path: Path):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "x.md").write_text("fine\nname: {{ build_name }}\n", encoding="utf-8")
    main = tmp_path / "t.txt"
    main.write_text(f"top\n{{% include 'prompts/x.md' %}}\n{M}\n{{{{ task }}}}\n", encoding="utf-8")
    parsed = parse_template(load_template(main))
    [use] = [u for u in parsed.variable_uses() if u.part == "static"]
    assert (use.name, Path(use.file).name, use.line, use.template_line) == (
        "build_name",
        "x.md",
        2,
        2,
    )
    with pytest.raises(TemplateError, match=r"x.md:2: the static part .* changes with the task"):
        render_split(load_template(main), TASK)


def test_template_hash_covers_included_files(tmp_path: Path):
    (tmp_path / "prompts").mkdir()
    include = tmp_path / "prompts" / "x.md"
    main = tmp_path / "t.txt"
    main.write_text(f"{{% include 'prompts/x.md' %}}\n{M}\n{{{{ task }}}}\n", encoding="utf-8")
    include.write_text("one\n", encoding="utf-8")
    first = render_split(load_template(main), TASK)
    include.write_text("two\n", encoding="utf-8")
    second = render_split(load_template(main), TASK)
    assert first.template_sha256 != second.template_sha256
    assert first.static_sha256 != second.static_sha256


def test_load_template_prefers_the_working_directory(tmp_path: Path, monkeypatch):
    assert load_template().name == "<packaged orchestrator_prompt.txt>"
    (tmp_path / "orchestrator_prompt.txt").write_text(f"mine\n{M}\n{{{{ task }}}}\n", "utf-8")
    monkeypatch.chdir(tmp_path)
    template = load_template()
    assert Path(template.name).name == "orchestrator_prompt.txt"
    assert render_split(template, TASK).static == "mine"


# --------------------------------------------------------------------------- properties

_plain_line = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="{}#%\r\n"
    ),
    max_size=40,
).filter(lambda s: s.strip() and "<<CACHE_BOUNDARY>>" not in s)


@settings(max_examples=60, deadline=None)
@given(
    static=st.lists(_plain_line, min_size=1, max_size=8),
    dynamic=st.lists(_plain_line, max_size=4),
)
def test_plain_text_above_the_marker_is_the_static_part(static: list[str], dynamic: list[str]):
    text = "\n".join([*static, M, *dynamic, "Task: {{ task }}"])
    result = split(text)
    assert result.static == "\n".join(static).strip("\n").rstrip()
    assert result.dynamic.endswith(f"Task: {TASK.task}")


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(_plain_line, min_size=1, max_size=6),
    where=st.integers(min_value=0, max_value=6),
    variable=st.sampled_from(TEMPLATE_VARIABLES),
)
def test_any_variable_anywhere_above_the_marker_is_refused(
    lines: list[str], where: int, variable: str
):
    position = min(where, len(lines))
    lines.insert(position, f"uses {{{{ {variable} }}}} here")
    with pytest.raises(TemplateError) as caught:
        split("\n".join([*lines, M, "{{ task }}"]))
    assert f"t.txt:{position + 1}:" in str(caught.value)
    assert variable in str(caught.value)
