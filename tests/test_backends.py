"""The backend registry and the capability interface: the one list of names, `auto`, and
the rule that callers ask a backend what it can do instead of which one it is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from foundry.backends.base import Backend
from foundry.backends.registry import (
    BACKEND_NAMES,
    LOCAL_BACKEND_NAMES,
    REGISTRY,
    backend_class,
    create_backend,
    is_local,
    resolve_backend,
)
from foundry.config import FoundryConfig, parse_config
from foundry.errors import ConfigError, UsageError

PACKAGE = Path(__file__).resolve().parent.parent / "foundry"


@pytest.fixture
def mlx_is_local_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto's local pick as on Apple silicon, or without the llamacpp extra: mlx."""
    from foundry.backends import llamacpp

    monkeypatch.setattr(llamacpp, "is_apple_silicon", lambda: True)


def test_auto_backend_picks_claude_only_with_a_key(
    monkeypatch: pytest.MonkeyPatch, mlx_is_local_auto: None
) -> None:
    config = FoundryConfig()
    assert resolve_backend(config) == "mlx"
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    assert resolve_backend(config) == "anthropic"
    assert resolve_backend(config, "mlx") == "mlx"
    with pytest.raises(UsageError, match="unknown backend 'gpt'") as caught:
        resolve_backend(config, "gpt")
    assert "anthropic, openai, llamacpp, mlx, auto" in str(caught.value)


@pytest.mark.parametrize(
    ("apple_silicon", "installed", "expected"),
    [(False, True, "llamacpp"), (True, True, "mlx"), (False, False, "mlx")],
)
def test_auto_prefers_llama_cpp_where_mlx_is_slow_and_it_is_installed(
    monkeypatch: pytest.MonkeyPatch, apple_silicon: bool, installed: bool, expected: str
) -> None:
    from foundry.backends import llamacpp
    from foundry.backends.registry import resolve_local_backend

    monkeypatch.setattr(llamacpp, "is_apple_silicon", lambda: apple_silicon)
    monkeypatch.setattr(llamacpp, "llama_cpp_installed", lambda: installed)
    config = FoundryConfig()
    assert resolve_backend(config) == expected
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    assert resolve_backend(config) == "anthropic"
    # foundry serve runs a local engine: a remote default falls back to auto's local pick
    assert resolve_local_backend(config) == expected
    config.backend.default = "anthropic"
    assert resolve_local_backend(config) == expected
    assert resolve_local_backend(config, "mlx") == "mlx"
    with pytest.raises(UsageError, match="'openai' is not a local engine") as caught:
        resolve_local_backend(config, "openai")
    assert "--backend llamacpp or mlx" in str(caught.value.hint)


def test_auto_gives_a_model_to_the_engine_that_runs_its_format(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    from foundry.backends import llamacpp

    monkeypatch.setattr(llamacpp, "is_apple_silicon", lambda: False)
    monkeypatch.setattr(llamacpp, "llama_cpp_installed", lambda: True)
    config = FoundryConfig()
    mlx_dir = tmp_path / "qwen-mlx"
    mlx_dir.mkdir()
    gguf = tmp_path / "qwen.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_backend(config, model=str(mlx_dir)) == "mlx"  # only mlx runs a directory
    assert resolve_backend(config, model=str(gguf)) == "llamacpp"
    assert resolve_backend(config, model="smollm2-135m") == "llamacpp"  # pullable as GGUF
    assert resolve_backend(config, "llamacpp", model=str(mlx_dir)) == "llamacpp"  # as asked


def test_auto_picks_an_openai_server_only_when_one_is_configured(
    monkeypatch: pytest.MonkeyPatch, mlx_is_local_auto: None
) -> None:
    config = FoundryConfig()
    assert resolve_backend(config) == "mlx"
    config.openai.base_url = "http://127.0.0.1:8000/v1"
    assert resolve_backend(config) == "openai"
    config.openai.base_url = None
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
    assert resolve_backend(config) == "openai"
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")  # Claude comes first in auto order
    assert resolve_backend(config) == "anthropic"


def test_base_url_reaches_server_backends_and_is_refused_in_process() -> None:
    config = FoundryConfig()
    for name in ("anthropic", "openai"):
        backend = create_backend(name, config, base_url="http://127.0.0.1:9/v9")
        assert backend.endpoint == "http://127.0.0.1:9/v9"
        backend.close()
    with pytest.raises(UsageError, match="--base-url does not apply to the mlx backend"):
        create_backend("mlx", config, base_url="http://127.0.0.1:9/v1")


def test_the_config_names_only_registered_backends() -> None:
    assert parse_config({"backend": {"default": "mlx"}}, "c").backend.default == "mlx"
    with pytest.raises(ConfigError, match="unknown backend 'gpt'"):
        parse_config({"backend": {"default": "gpt"}}, "c")


@pytest.mark.parametrize("entry", REGISTRY, ids=lambda e: e.name)
def test_every_entry_loads_a_backend_that_says_what_it_can_do(entry) -> None:
    cls = backend_class(entry.name)
    assert cls.name == entry.name
    assert cls.local is entry.local is is_local(entry.name)
    config = FoundryConfig()
    backend = create_backend(entry.name, config)  # nothing heavy happens before check()
    try:
        assert isinstance(backend, Backend)
        assert backend.model == cls.default_model(config)
        assert backend.max_tokens > 0
    finally:
        backend.close()


def test_local_names_come_from_the_registry() -> None:
    assert {e.name for e in REGISTRY if e.local} == LOCAL_BACKEND_NAMES
    assert set(BACKEND_NAMES) == {e.name for e in REGISTRY}
    assert not is_local("a-backend-nobody-registered")


# A string literal that is a backend's name, compared or matched against something.
_NAME = "|".join(re.escape(name) for name in BACKEND_NAMES)
_COMPARISON = re.compile(rf"""(==|!=|\bin)\s*\(?["']({_NAME})["']|["']({_NAME})["']\s*(==|!=)""")


def test_no_module_outside_the_backends_package_compares_a_backend_name() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "backends" in path.relative_to(PACKAGE).parts:
            continue
        for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
            if _COMPARISON.search(line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert offenders == []


def test_the_orchestrator_imports_no_backend_specific_module() -> None:
    specific = re.compile(r"foundry\.backends\.(?!base\b|registry\b|retry\b)\w+")
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in (PACKAGE / "orchestrator").rglob("*.py")
        if specific.search(path.read_text("utf-8"))
    ]
    assert offenders == []


def test_the_reachability_check_trusts_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # Behind a proxy a direct connect proves nothing (and is often blocked): no refusal.
    from foundry.backends.endpoints import check_reachable
    from foundry.errors import BackendError

    args = {"service": "the API", "hint": "h", "invalid_hint": "h", "label": "Test"}
    unreachable = "https://127.0.0.1:9"  # the discard port: nothing listens
    with pytest.raises(BackendError, match="cannot reach the API"):
        check_reachable(unreachable, **args)
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    monkeypatch.setenv("no_proxy", "")
    check_reachable(unreachable, **args)
