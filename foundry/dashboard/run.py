"""Starting the dashboard: who may listen where, the ledger checked, uvicorn on a socket
bound first (a port in use is one clear error, not uvicorn's log and exit)."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundry.config import is_loopback_host
from foundry.errors import UsageError, install_hint
from foundry.server.listen import base_url, bind


@dataclass(frozen=True)
class DashboardOptions:
    db: Path
    config: Any  # FoundryConfig
    host: str = "127.0.0.1"
    port: int = 8090
    allow_remote: bool = False  # listen on a host that is not loopback
    serve_url: str = "http://127.0.0.1:8082"
    allow_remote_serve: bool = False
    serve_api_key: str | None = None
    warm: bool = True  # compute the first pages' costs reports at start-up


def import_web_libraries() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UsageError(
            "foundry dashboard needs uvicorn and starlette", install_hint("serve")
        ) from None


def check_exposure(host: str, allow_remote: bool) -> None:
    """The page shows every build's task and spend, and has no login: loopback only unless
    the operator says otherwise."""
    if not allow_remote and not is_loopback_host(host):
        raise UsageError(
            f"--host {host} would show your builds and costs to other machines (the dashboard "
            "has no login)",
            "keep the default 127.0.0.1, or add --allow-remote if that is what you want",
        )


class Dashboard:
    """The app on uvicorn, on a bound socket: run() blocks; start_in_thread() for tests and
    the bench."""

    def __init__(self, options: DashboardOptions) -> None:
        import_web_libraries()
        check_exposure(options.host, options.allow_remote)
        import uvicorn

        from foundry.dashboard.app import DashboardSettings, create_app
        from foundry.dashboard.readonly import ReadOnlyLedger
        from foundry.server.stats_client import serve_target

        serve = serve_target(
            options.serve_url,
            allow_remote=options.allow_remote_serve,
            api_key=options.serve_api_key,
        )
        ledger = ReadOnlyLedger(options.db)
        ledger.check()
        settings = DashboardSettings(
            ledger=ledger, config=options.config, serve=serve, warm=options.warm
        )
        if options.allow_remote:
            settings.allowed_hosts = ["*"]
        else:
            settings.allowed_hosts = [*settings.allowed_hosts, options.host]
        self.sock = bind(options.host, options.port)
        self.url = base_url(self.sock)
        self.ledger_path = ledger.path
        config = uvicorn.Config(
            create_app(settings),
            log_config=None,
            access_log=False,
            lifespan="off",
            # Open event streams would hold a stop up to this long.
            timeout_graceful_shutdown=2,
        )

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                # Ctrl-C or SIGTERM is how a dashboard is meant to end: stop and exit 0,
                # not re-raise the signal afterwards (uvicorn's default), as foundry serve.
                if self.should_exit and sig == signal.SIGINT:
                    self.force_exit = True  # a second Ctrl-C: stop waiting for streams
                self.should_exit = True

        self.server = Server(config)
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        self.server.run(sockets=[self.sock])

    def start_in_thread(self, timeout: float = 30.0) -> None:
        self._thread = threading.Thread(target=self.run, name="foundry-dashboard", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the dashboard did not start")
            time.sleep(0.01)

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.sock.close()
