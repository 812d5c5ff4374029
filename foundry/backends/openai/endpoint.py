"""Where an OpenAI-compatible server is, whether it costs money, and what it says about
itself: its models (GET /models) and its tokenizer (POST /tokenize, outside /v1, on vLLM,
SGLang and llama.cpp). Nothing here streams a completion."""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from foundry.backends import endpoints
from foundry.backends.endpoints import safe_url
from foundry.backends.openai.errors import API_KEY_ENV, BASE_URL_ENV, error_text
from foundry.config import is_loopback_host
from foundry.errors import FoundryError

if TYPE_CHECKING:
    from foundry.config import FoundryConfig

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Local servers need no key, but the SDK insists on one; this is what they receive.
NO_KEY = "no-key"
LIST_TIMEOUT_S = 30.0
# Host names that never leave one's own network (RFC 6762 .local, RFC 8375 home.arpa...).
# Not `.localhost`: loopback is 127.0.0.0/8, ::1 and `localhost` itself, while a name under
# it resolves wherever a resolver or /etc/hosts says, and a public API there is not free.
_PRIVATE_SUFFIXES = (".local", ".lan", ".internal", ".home.arpa")


def resolve_base_url(config: FoundryConfig, base_url: str | None) -> str:
    """--base-url, else OPENAI_BASE_URL, else openai.base_url, else OpenAI's API."""
    chosen = base_url or os.environ.get(BASE_URL_ENV) or config.openai.base_url
    return (chosen or DEFAULT_BASE_URL).strip().rstrip("/")


LABEL = "OpenAI-compatible"
INVALID_HINT = (
    f"give --base-url, {BASE_URL_ENV} or openai.base_url as an http(s) URL, e.g. "
    "http://127.0.0.1:8000/v1"
)


def host_and_port(url: str) -> tuple[str, int]:
    return endpoints.host_and_port(url, label=LABEL, hint=INVALID_HINT)


def is_private_host(url: str) -> bool:
    """True for loopback, private-network and link-local addresses and for names that stay
    on one's own network (localhost itself, a bare host name, .local, .lan, .internal; not
    a name under .localhost). Decided from the text alone: resolving names would make a
    build's cost depend on DNS."""
    host = (urlsplit(url).hostname or "").lower()
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" or "." not in host or host.endswith(_PRIVATE_SUFFIXES)
    return address.is_loopback or address.is_private or address.is_link_local


def is_loopback_url(url: str) -> bool:
    """The URL's host is this machine (config.is_loopback_host). A server there that dies
    closes its connections at once, so an open connection is a server still at work,
    silent or not."""
    return is_loopback_host((urlsplit(url).hostname or "").lower())


def api_key() -> str | None:
    return os.environ.get(API_KEY_ENV, "").strip() or None


def check_reachable(url: str) -> None:
    endpoints.check_reachable(
        url,
        service="the OpenAI-compatible server",
        hint=f"start the server, or check --base-url, {BASE_URL_ENV} or openai.base_url",
        invalid_hint=INVALID_HINT,
        label=LABEL,
    )


def make_client(url: str, *, timeout_s: float, max_retries: int = 0) -> Any:
    import openai

    host_and_port(url)
    return openai.OpenAI(
        api_key=api_key() or NO_KEY, base_url=url, timeout=timeout_s, max_retries=max_retries
    )


def list_models(url: str, timeout_s: float = LIST_TIMEOUT_S) -> list[dict[str, Any]]:
    """The server's models as dicts (id, owned_by, and what else it says, such as vLLM's
    max_model_len); FoundryError naming the server when it cannot say."""
    import openai

    client = make_client(url, timeout_s=timeout_s, max_retries=2)
    try:
        page = client.models.list()
        models = [m.model_dump(exclude_none=True) for m in page.data]
    except openai.AuthenticationError:
        raise FoundryError(
            f"the server at {safe_url(url)} rejected the key (HTTP 401)", f"set {API_KEY_ENV}"
        ) from None
    except openai.APIConnectionError:
        raise FoundryError(
            f"cannot reach the OpenAI-compatible server at {safe_url(url)}",
            f"start the server, or check --base-url / {BASE_URL_ENV}",
        ) from None
    except openai.APIStatusError as exc:
        raise FoundryError(
            f"the server at {safe_url(url)} cannot list its models "
            f"(HTTP {exc.status_code}: {error_text(exc)[:200]})",
            "name the model with --model",
        ) from None
    except (openai.APIError, ValueError, TypeError, AttributeError) as exc:
        # mlx_lm.server, for one, answers 200 with an empty body when its HF cache is missing.
        raise FoundryError(
            f"the server at {safe_url(url)} answered GET /models with something that is not a "
            f"model list ({type(exc).__name__})",
            "name the model with --model",
        ) from None
    finally:
        client.close()
    return sorted((m for m in models if isinstance(m.get("id"), str)), key=lambda m: m["id"])


def server_root(url: str) -> str:
    """The server's root: /tokenize lives beside /v1, not under it."""
    return url[: -len("/v1")] if url.endswith("/v1") else url


def count_tokens(url: str, model: str, text: str, timeout_s: float = LIST_TIMEOUT_S) -> int:
    """Tokens in `text` by the server's own tokenizer, from POST /tokenize (vLLM and SGLang
    take {"model", "prompt"}, llama.cpp {"content"}); FoundryError when it has none."""
    import httpx2

    headers = {"authorization": f"Bearer {api_key() or NO_KEY}"}
    endpoint = server_root(url) + "/tokenize"
    bodies = (
        {"model": model, "prompt": text, "add_special_tokens": False},
        {"content": text, "add_special": False},
    )
    last = "no answer"
    try:
        with httpx2.Client(timeout=timeout_s) as http:
            for body in bodies:
                response = http.post(endpoint, json=body, headers=headers)
                if response.status_code >= 400:
                    last = f"HTTP {response.status_code}"
                    continue
                data = response.json()
                if isinstance(data, dict) and isinstance(data.get("count"), int):
                    return int(data["count"])
                if isinstance(data, dict) and isinstance(data.get("tokens"), list):
                    return len(data["tokens"])
                last = "an answer without tokens"
    except (httpx2.HTTPError, ValueError) as exc:
        last = type(exc).__name__
    raise FoundryError(
        f"the server at {safe_url(url)} has no tokenizer endpoint foundry can use "
        f"(POST {safe_url(server_root(url))}/tokenize: {last})",
        "the counts are estimates; vLLM, SGLang and llama.cpp servers expose /tokenize",
    )
