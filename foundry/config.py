"""cache_config.json: the schema, where it is found, and where foundry keeps user data."""

from __future__ import annotations

import difflib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from foundry.errors import ConfigError

CONFIG_FILENAME = "cache_config.json"
TEMPLATE_FILENAME = "orchestrator_prompt.txt"
SCHEMA_VERSION = 1

Ttl = Literal["5m", "1h"]


class _Section(BaseModel):
    # Unknown keys are an error: a typo in a config silently ignored is a cache that never hits.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CachingConfig(_Section):
    enabled: bool = True
    ttl: Ttl = "5m"
    boundary_marker: str = "<<CACHE_BOUNDARY>>"
    # Refresh a 5m cache with a minimal request when a build sits idle (e.g. a long test run).
    keepalive: bool = False
    keepalive_after_s: float = 270.0

    @field_validator("boundary_marker")
    @classmethod
    def _marker_is_one_line(cls, value: str) -> str:
        if not value.strip() or "\n" in value:
            raise ValueError("must be a non-empty single line")
        return value


class BackendConfig(_Section):
    # "auto": the first backend in the registry's order that is available (Claude when
    # ANTHROPIC_API_KEY is set, an OpenAI-compatible server when one is configured, else
    # the local model).
    default: str = "auto"
    anthropic_model: str = "claude-sonnet-4-6"
    # None: the one model the server lists (an error naming them when it lists several).
    openai_model: str | None = None
    mlx_model: str = "smollm2-135m"
    llamacpp_model: str = "smollm2-135m"  # a name under models/ (its .gguf) or a .gguf path

    @field_validator("default")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        from foundry.backends.registry import AUTO, BACKEND_NAMES

        if value != AUTO and value not in BACKEND_NAMES:
            raise ValueError(
                f"unknown backend '{value}'; use one of: {', '.join(BACKEND_NAMES)}, auto"
            )
        return value


class AnthropicConfig(_Section):
    base_url: str | None = None
    timeout_s: float = 600.0
    max_retries: int = Field(default=4, ge=0, le=20)
    retry_budget_s: float = Field(default=120.0, gt=0)
    max_tokens: int = Field(default=8192, gt=0)
    # The most one attempt may take, whatever the server streams (pings keep a socket
    # alive past any read timeout); past it the attempt fails as a timeout.
    deadline_s: float = Field(default=900.0, gt=0)


class OpenAIConfig(_Section):
    """An OpenAI-compatible Chat Completions server (vLLM, SGLang, llama.cpp, Ollama, ...)."""

    base_url: str | None = None  # OPENAI_BASE_URL and --base-url take precedence
    # "native": OpenAI function calling; "text": foundry's <tool_call> text format; "auto":
    # native, switching to text when the server refuses tools or its model answers in text.
    tool_format: Literal["auto", "native", "text"] = "auto"
    # None: decided from the base URL (loopback or private network: free, unless the model
    # has prices under `models`); true / false say it outright.
    local: bool | None = None
    timeout_s: float = Field(default=600.0, gt=0)
    max_retries: int = Field(default=4, ge=0, le=20)
    retry_budget_s: float = Field(default=120.0, gt=0)
    max_tokens: int = Field(default=4096, gt=0)
    # The last resort: the longest an attempt may go without a part of the reply (its first
    # included) while the server keeps the connection open, silent or sending keep-alives.
    # A reply that keeps coming is never cut; 900 s cut a cold prefill on a busy machine.
    deadline_s: float = Field(default=4 * 3600.0, gt=0)


class ModelOverride(_Section):
    """Per-model settings: prices in USD per million tokens, and the minimum cacheable prefix."""

    input: float | None = Field(default=None, ge=0)
    output: float | None = Field(default=None, ge=0)
    cache_write_5m: float | None = Field(default=None, ge=0)
    cache_write_1h: float | None = Field(default=None, ge=0)
    cache_read: float | None = Field(default=None, ge=0)
    min_cache_tokens: int | None = Field(default=None, ge=0)
    context_window: int | None = Field(default=None, gt=0)


class LedgerConfig(_Section):
    path: str | None = None


class BudgetsConfig(_Section):
    daily_usd: float | None = Field(default=None, gt=0)
    monthly_usd: float | None = Field(default=None, gt=0)


class PrefixCacheConfig(_Section):
    enabled: bool = True
    dir: str | None = None
    max_bytes: int = Field(default=4 * 1024**3, gt=0)
    ttl_days: float = Field(default=30.0, gt=0)
    # A saved cache larger than this is not loaded (a miss with the reason), never an OOM.
    memory_budget_mb: int = Field(default=4096, gt=0)


class LocalEngineConfig(_Section):
    """What every in-process local engine takes."""

    # The most positions a KV cache holds (None: the model's own context length).
    max_kv_size: int | None = Field(default=None, gt=0)
    max_tokens: int = Field(default=1024, gt=0)
    temperature: float = Field(default=0.0, ge=0)
    # Decode tool calls under a grammar of the request's tools (llguidance), so every call
    # a local model makes names a real tool and validates against its schema.
    constrained_tools: bool = True


class MlxConfig(LocalEngineConfig):
    kv_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"


class LlamaCppConfig(LocalEngineConfig):
    # llama.cpp's threads wait for each other at every step: more threads than free cores
    # makes decode collapse (0.32 tok/s measured with 2 threads and a busy second core).
    # None: a fair share of the cores among foundry's llama.cpp processes (cpu_share.py).
    threads: int | None = Field(default=None, gt=0)
    kv_type: Literal["f16", "q8_0", "f32"] = "f16"
    # "auto": off on the CPU (measured: decode and a warm turn slower with it, prefill about
    # the same; bench/flash_attention_bench.py), on where the KV type needs it (q8_0's V).
    flash_attn: Literal["auto", "on", "off"] = "auto"

    @field_validator("flash_attn")
    @classmethod
    def _v_cache_needs_it(cls, value: str, info: Any) -> str:
        if value == "off" and info.data.get("kv_type") == "q8_0":
            raise ValueError(
                'kv_type "q8_0" needs flash attention (llama.cpp quantizes V only with it): '
                'set flash_attn to "auto" or "on", or kv_type to "f16"'
            )
        return value


COMMAND_PHASES = ("scout", "architect", "builder", "test")  # the phases that run commands
# Network for the model's commands: the builder and the test fix rounds install packages.
DEFAULT_NETWORK = {"scout": False, "architect": False, "builder": True, "test": True}
# The keys foundry sends to model APIs: never handed to the model's commands.
MODEL_KEY_VARIABLES = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "OPENAI_API_KEY")


class SandboxLimits(_Section):
    """Limits on every command the model runs; null: no limit."""

    processes: int | None = Field(default=1024, gt=0)  # processes + threads, whole command
    memory_mb: int | None = Field(default=8192, gt=0)  # address space, per process
    cpu_s: int | None = Field(default=600, gt=0)  # CPU seconds, per process
    file_size_mb: int | None = Field(default=4096, gt=0)  # the largest file it may write


class BuildConfig(_Section):
    max_test_iterations: int = Field(default=3, ge=1)
    max_turns_per_phase: int = Field(default=30, ge=1)
    command_timeout_s: float = Field(default=300.0, gt=0)
    output_limit_chars: int = Field(default=20_000, gt=0)
    # The model's commands (and the test command): "auto" uses bubblewrap where it works and
    # says so in one line where it does not; "require" refuses to build without it.
    sandbox: Literal["auto", "require", "off"] = "auto"
    network: bool | dict[str, bool] = Field(default_factory=lambda: dict(DEFAULT_NETWORK))
    env_passthrough: list[str] = Field(default_factory=list)
    limits: SandboxLimits = Field(default_factory=SandboxLimits)

    @field_validator("network")
    @classmethod
    def _known_phases(cls, value: bool | dict[str, bool]) -> bool | dict[str, bool]:
        unknown = sorted(set(value) - set(COMMAND_PHASES)) if isinstance(value, dict) else []
        if unknown:
            raise ValueError(
                f"unknown phase '{unknown[0]}'; phases that run commands: "
                f"{', '.join(COMMAND_PHASES)}"
            )
        return value

    @field_validator("env_passthrough")
    @classmethod
    def _plain_names(cls, value: list[str]) -> list[str]:
        for name in value:
            plain = name.isascii() and name.replace("_", "a").isalnum()
            if not plain or name[0].isdigit():
                raise ValueError(f"'{name}' is not an environment variable name")
            if name.upper() in MODEL_KEY_VARIABLES:
                raise ValueError(f"{name} is the model API key; the model's commands never get it")
        return value

    def network_for(self, phase: str | None) -> bool:
        """Whether the model's commands have the network in `phase` (None: outside one)."""
        if isinstance(self.network, bool):
            return self.network
        key = phase or "builder"
        return self.network.get(key, DEFAULT_NETWORK.get(key, True))


class ServeConfig(_Section):
    """`foundry serve`: its memory, its queue, its response cache and its context policy."""

    # KV caches held in memory (the running request's and the kept ones); None: a quarter of
    # the machine's RAM. A request that cannot fit gets a 529, never an out-of-memory kill.
    memory_budget_mb: int | None = Field(default=None, gt=0)
    l1_max_entries: int = Field(default=8, ge=0)  # conversations' KV caches kept in memory
    queue_size: int = Field(default=16, ge=0)  # requests waiting; past it a 429
    response_cache: bool = True  # replay greedy replies to identical requests
    response_cache_entries: int = Field(default=256, gt=0)
    response_cache_mb: int = Field(default=64, gt=0)
    response_cache_ttl_s: float = Field(default=3600.0, gt=0)
    context_policy: Literal["error", "trim"] = "error"  # a conversation past the window
    keep_last_messages: int = Field(default=4, ge=1)  # never trimmed away
    max_request_mb: int = Field(default=32, gt=0)  # larger bodies get a 413
    ping_interval_s: float = Field(default=5.0, gt=0)  # SSE pings while the model is silent
    # The operator's cap on a reply's tokens; None: only the client's max_tokens and the
    # model's context window bound a reply (the engines' max_tokens is for builds).
    max_output_tokens: int | None = Field(default=None, gt=0)


class FoundryConfig(_Section):
    version: int = SCHEMA_VERSION
    caching: CachingConfig = Field(default_factory=CachingConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    anthropic: AnthropicConfig = Field(default_factory=AnthropicConfig)
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)
    mlx: MlxConfig = Field(default_factory=MlxConfig)
    llamacpp: LlamaCppConfig = Field(default_factory=LlamaCppConfig)
    models: dict[str, ModelOverride] = Field(default_factory=dict)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    budgets: BudgetsConfig = Field(default_factory=BudgetsConfig)
    prefix_cache: PrefixCacheConfig = Field(default_factory=PrefixCacheConfig)
    build: BuildConfig = Field(default_factory=BuildConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    # Where this config came from, for messages; not part of the file.
    source: str = Field(default="<defaults>", exclude=True)

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(
                f"unsupported version {value}; this foundry reads version {SCHEMA_VERSION}"
            )
        return value


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the key at `loc`, to suggest the nearest valid key."""
    model: type[BaseModel] = FoundryConfig
    for part in loc[:-1]:
        if model is FoundryConfig and part == "models":
            return None if len(loc) == 2 else ModelOverride
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _describe(error: ErrorDetails) -> str:
    loc = tuple(error["loc"])
    where = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        owner = _model_at(loc)
        valid = [n for n in owner.model_fields if n != "source"] if owner else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        suggestion = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown key '{where}'{suggestion}"
    message = error["msg"].removeprefix("Value error, ")
    return f"'{where}': {message}"


def parse_config(data: Any, source: str) -> FoundryConfig:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the top level must be a JSON object", "see docs/configuration.md"
        )
    try:
        config = FoundryConfig.model_validate(data)
    except ValidationError as exc:
        first = _describe(exc.errors()[0])
        more = len(exc.errors()) - 1
        extra = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise ConfigError(
            f"{source}: {first}{extra}", "fix the file; docs/configuration.md lists every key"
        ) from None
    config.source = source
    return config


def load_config(path: Path | str | None = None) -> FoundryConfig:
    """--config PATH, else $FOUNDRY_CONFIG, else ./cache_config.json (found: checked by
    foundry/config_trust.py, and never read inside a build's working directory), else the
    packaged default."""
    from foundry import config_trust

    explicit = config_trust.explicit_path(path)
    if explicit is not None:
        return _read_config(explicit)
    cwd = Path.cwd()
    found = cwd / CONFIG_FILENAME
    if os.path.lexists(found):
        workdir = config_trust.build_workdir(cwd, ledger_path())
        if workdir is not None:
            from foundry import console

            console.warning(config_trust.ignored_notice(CONFIG_FILENAME, workdir))
        else:
            config_trust.check_found_file(found)
            config = _read_config(found)
            config_trust.check_found_config(config, CONFIG_FILENAME)
            return config
    text = resources.files("foundry.data").joinpath(CONFIG_FILENAME).read_text("utf-8")
    return parse_config(json.loads(text), f"<packaged {CONFIG_FILENAME}>")


def _read_config(candidate: Path) -> FoundryConfig:
    try:
        text = candidate.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file not found: {candidate}", "check the --config path or FOUNDRY_CONFIG"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{candidate} is not UTF-8 text", "save it as UTF-8 JSON") from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read {candidate}: {exc.strerror}", "check its permissions"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{candidate}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})", "fix the JSON syntax"
        ) from None
    return parse_config(data, str(candidate))


DEFAULT_API_HOSTS = ("api.anthropic.com", "api.openai.com")


def _host(url: str | None) -> str | None:
    from urllib.parse import urlsplit

    try:
        return (urlsplit(url.strip()).hostname or None) if url else None
    except ValueError:
        return None


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 and `localhost` only. Not `*.localhost`: only some resolvers keep
    those names on this machine (glibc asks DNS), nor ::ffff:127.x or a scoped ::1."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        return address == ipaddress.IPv6Address("::1")
    return address in ipaddress.IPv4Network("127.0.0.0/8")


def is_default_endpoint(url: str | None) -> bool:
    """No URL, or one of the model APIs' own: nothing to point out to the user."""
    host = _host(url)
    return host is None or host.lower() in DEFAULT_API_HOSTS


def foundry_home() -> Path:
    """Where foundry keeps user data: $FOUNDRY_HOME, else the platform's user data dir."""
    env = os.environ.get("FOUNDRY_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("foundry", appauthor=False))


def ledger_path(config: FoundryConfig | None = None, override: str | Path | None = None) -> Path:
    """--db PATH, else $FOUNDRY_DB, else the config's ledger.path, else $FOUNDRY_HOME/foundry.db."""
    if override:
        return Path(override).expanduser()
    if os.environ.get("FOUNDRY_DB"):
        return Path(os.environ["FOUNDRY_DB"]).expanduser()
    if config is not None and config.ledger.path:
        return Path(config.ledger.path).expanduser()
    return foundry_home() / "foundry.db"


def models_dir() -> Path:
    return foundry_home() / "models"


def prefix_cache_dir(config: FoundryConfig | None = None) -> Path:
    if config is not None and config.prefix_cache.dir:
        return Path(config.prefix_cache.dir).expanduser()
    return foundry_home() / "prefix-cache"
