"""The environment of a sandboxed command: an allow-list, never a deny-list. Secrets have
too many names (proxies with passwords, DATABASE_URL, tokens) for a deny-list to catch."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

# What every command gets from foundry's environment, when set; nothing else passes
# unless the user names it in build.env_passthrough.
BASE_ENV = (
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "LC_COLLATE",
    "LC_NUMERIC",
    "LC_TIME",
    "TZ",
    "TERM",
    "USER",
    "LOGNAME",
)
# Where toolchains live (not secrets): without them shims on PATH stop working.
TOOLCHAIN_ENV = (
    "PYENV_ROOT",
    "PYENV_VERSION",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "GOROOT",
    "JAVA_HOME",
    "NVM_DIR",
    "NVM_BIN",
    "VOLTA_HOME",
    "ASDF_DIR",
    "ASDF_DATA_DIR",
    "CONDA_PREFIX",
    "VIRTUAL_ENV",
    # CA bundles (file paths) that package installs need behind a TLS-inspecting proxy.
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "PIP_CERT",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
)
# Set for every command: the model edits files within the second its last run compiled
# them, and mtime-stamped .pyc files would then run the old code.
FIXED_ENV = {"PYTHONDONTWRITEBYTECODE": "1"}
# Toolchain managers that find their toolchains under HOME by default: HOME moves into
# the sandbox, so they are pointed at the user's copy (read-only there).
TOOLCHAIN_HOMES = {"PYENV_ROOT": ".pyenv", "RUSTUP_HOME": ".rustup", "ASDF_DATA_DIR": ".asdf"}


def command_env(
    home: str, tmp: str, passthrough: Iterable[str], source: dict[str, str] | None = None
) -> dict[str, str]:
    """The allow-list environment: BASE_ENV, toolchain locations and what the user named;
    HOME and TMPDIR point into the sandbox."""
    source = dict(os.environ) if source is None else source
    names = (*BASE_ENV, *TOOLCHAIN_ENV, *passthrough)
    env = {name: source[name] for name in names if name in source}
    user_home = Path(source.get("HOME") or Path.home())
    for name, relative in TOOLCHAIN_HOMES.items():
        if name not in env and (user_home / relative).is_dir():
            env[name] = str(user_home / relative)
    env.setdefault("PATH", os.defpath)
    env.setdefault("LANG", "C.UTF-8")
    env.update(FIXED_ENV)
    env["HOME"] = home
    env["TMPDIR"] = tmp
    return env
