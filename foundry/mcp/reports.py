"""The reporting tools: `foundry costs`, `foundry analyze-prompt` and `foundry cache` as data.
Each calls the core its command calls (foundry.ledger.costs, foundry.prompt.report,
foundry.local.prefix_store) with the server's config, and returns the dict the command's
--json prints; nothing is computed here."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from foundry.errors import FoundryError, UsageError

if TYPE_CHECKING:
    from foundry.mcp.settings import ServerSettings

SERVE_TIMEOUT_S = 5.0
SERVE_MAX_BYTES = 4 * 1024 * 1024  # a stats page is a few KB; anything far larger is not one


def costs(
    settings: ServerSettings,
    *,
    by: str = "day",
    since: str | None = None,
    until: str | None = None,
    tz: str | None = None,
    build: str | None = None,
    model: str | None = None,
    backend: str | None = None,
) -> dict[str, Any]:
    from foundry.config import load_config
    from foundry.ledger.costs import CostsOptions, costs_report
    from foundry.ledger.report import VIEWS

    if by not in VIEWS:  # as `foundry costs --by` refuses it
        raise UsageError(f"--by {by!r} is not a view", f"use one of: {', '.join(VIEWS)}")
    options = CostsOptions(
        by=by,
        since=since,
        until=until,
        tz=tz,
        build=build,
        model=model,
        backend=backend,
        db=settings.db,
    )
    return costs_report(load_config(settings.config), options)


def analyze_prompt(
    settings: ServerSettings,
    *,
    model: str | None = None,
    template: str | None = None,
    builds: int = 10,
    builds_per_hour: float = 1.0,
    requests_per_build: int | None = None,
    exact: bool = False,
) -> dict[str, Any]:
    """`foundry analyze-prompt --json` for a priced model, offline estimate or (exact)
    Anthropic's count_tokens; the per-backend tokenizers are the CLI's alone (they may load
    a local model)."""
    from foundry.commands.analyze import DEFAULT_REQUESTS_PER_BUILD
    from foundry.config import load_config
    from foundry.pricing import PricingTable
    from foundry.prompt.report import AnalyzeOptions, analyze

    config = load_config(settings.config)
    options = AnalyzeOptions(
        template=Path(template) if template else None,
        model=model or config.backend.anthropic_model,
        builds=builds,
        builds_per_hour=builds_per_hour,
        requests_per_build=requests_per_build or DEFAULT_REQUESTS_PER_BUILD,
        exact=exact,
    )
    PricingTable(config).require(options.model)  # the analysis is about a priced model
    count_exact = None
    if exact:
        from foundry.backends.registry import exact_token_counter

        count_exact = exact_token_counter(config, options.model)
    return analyze(config, options, count_exact)


def cache_stats(
    settings: ServerSettings, *, serve_url: str | None = None, api_key: str | None = None
) -> dict[str, Any]:
    """The local prefix store, as `foundry cache stats` and `list` report it, and a running
    `foundry serve`'s /cache/stats when asked."""
    from foundry.config import load_config
    from foundry.local.prefix_store import PrefixCacheStore

    store = PrefixCacheStore.from_config(load_config(settings.config), create=False)
    entries = [{k: v for k, v in r.items() if k != "identity"} for r in store.entries()]
    served = None
    if serve_url is not None:
        served = serve_stats(serve_url, api_key, allow_remote=settings.allow_remote_serve)
    return {"store": store.stats(), "entries": entries, "serve": served}


def serve_stats(url: str, api_key: str | None, *, allow_remote: bool) -> dict[str, Any]:
    """GET <url>/cache/stats. Loopback only unless the user started the server with
    --allow-remote-serve: a tool call must not make this server a probe of other hosts."""
    from foundry.config import is_loopback_host

    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"serve_url {url!r} is not an http(s) URL", "give the base URL foundry serve printed"
        )
    if not allow_remote and not is_loopback_host(parts.hostname):
        raise UsageError(
            f"serve_url {url!r} is not on this machine (loopback)",
            "foundry mcp reads only a serve on 127.0.0.1, ::1 or localhost unless started "
            "with --allow-remote-serve",
        )
    target = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}/cache/stats"
    request = urllib.request.Request(target, headers={"accept": "application/json"})
    if api_key:
        request.add_header("x-api-key", api_key)
    # No proxy (a proxy would see loopback traffic) and no redirect (it could lead anywhere).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)
    try:
        with opener.open(request, timeout=SERVE_TIMEOUT_S) as response:
            body = response.read(SERVE_MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise FoundryError(
            f"{target} answered HTTP {exc.code}",
            "give the serve's --api-key as api_key" if exc.code == 401 else "check serve_url",
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise FoundryError(
            f"cannot reach foundry serve at {target} ({reason})", "is `foundry serve` running?"
        ) from None
    if len(body) > SERVE_MAX_BYTES:
        raise FoundryError(f"{target} answered more than 4 MB", "check serve_url")
    try:
        data = json.loads(body)
    except ValueError:
        raise FoundryError(f"{target} did not answer JSON", "check serve_url") from None
    if not isinstance(data, dict):
        raise FoundryError(f"{target} did not answer a JSON object", "check serve_url")
    return data


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx is then raised as an HTTPError
