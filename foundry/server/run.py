"""Running the app on uvicorn: the listening socket, a clean stop, and who may listen where.

foundry binds the socket itself, so a port in use is one clear error instead of uvicorn's
log and exit. On Ctrl-C or SIGTERM the service stops taking work (foundry.server.shutdown):
queued requests are answered at once, the running one is cancelled at its next step or,
when the engine is inside a step it cannot leave, answered and recorded after a second;
uvicorn then closes the connections and the caller prints the summary. A model still inside
such a step is not waited for: the process ends (exit_if_worker_stuck).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundry.config import is_loopback_host
from foundry.errors import UsageError, install_hint
from foundry.server.listen import base_url, bind
from foundry.server.service import ServeService

GRACEFUL_S = 10.0  # how long uvicorn waits for open connections after a stop
log = logging.getLogger(__name__)


def check_exposure(host: str, api_key: str | None) -> None:
    """A server reachable from other machines must ask for a key."""
    if not is_loopback_host(host) and not api_key:
        raise UsageError(
            f"--host {host} would let other machines use this model and read its cache stats "
            "without a key",
            "add --api-key KEY (or set FOUNDRY_SERVE_API_KEY), or keep the default 127.0.0.1",
        )


class Runner:
    """uvicorn serving one ServeService on a socket bound beforehand."""

    def __init__(self, service: ServeService, sock: socket.socket) -> None:
        import uvicorn

        from foundry.server.app import create_app

        self.service = service
        self.sock = sock
        app = create_app(service)
        self.has_metrics = app.state.metrics is not None  # prometheus_client is installed
        config = uvicorn.Config(
            app,
            log_config=None,  # foundry's logger speaks for the server
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=int(GRACEFUL_S),
            timeout_keep_alive=30,
        )
        runner = self

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                # Stop the model first: queued requests are answered now and the running
                # one within about a second (shutdown.GRACE_S), so no connection holds the
                # shutdown up to the graceful timeout. The signal is not re-raised
                # afterwards (uvicorn's default), so the summary and the ledger are written
                # and the command exits with status 0.
                runner.service.begin_shutdown()
                runner.stopped_by = signal.Signals(sig).name
                if self.should_exit and sig == signal.SIGINT:
                    self.force_exit = True  # a second Ctrl-C: stop waiting for connections
                self.should_exit = True

        self.server = Server(config)
        self.stopped_by: str | None = None
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """Serve until Ctrl-C or SIGTERM (blocking, in the main thread)."""
        self.server.run(sockets=[self.sock])

    # For tests and benchmarks: the same server in a thread of this process.
    def start_in_thread(self, timeout: float = 30.0) -> None:
        self._thread = threading.Thread(target=self.run, name="foundry-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)

    def stop(self, timeout: float = 30.0) -> None:
        self.service.begin_shutdown()
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)

    def exit_if_worker_stuck(self) -> None:
        """After service.close: if the model's worker is still inside an engine step (a
        llama.cpp prefill chunk runs to its end), its request is already answered and
        recorded, and the ledger closed. Waiting would take as long as the step; a normal
        exit would free the model under it (a segfault, seen with llama.cpp). So the process
        ends here, its output flushed, with status 0."""
        if not self.service.queue.worker_alive:
            return
        log.info("exiting without waiting for the model's current step to end")
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(0)


def default_memory_budget() -> int:
    """A quarter of the machine's RAM: room for the model, the OS and other work."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 * 1024**3
    return int(total // 4)


@dataclass
class ServeOptions:
    model: str | None = None
    backend: str | None = None  # a local engine, or auto; None: from the config
    host: str = "127.0.0.1"
    port: int = 8082
    api_key: str | None = None
    context_policy: str | None = None
    response_cache: bool = True
    max_output_tokens: int | None = None  # None: from the config (default: no cap)
    config: Path | None = None
    db: Path | None = None


@dataclass
class OpenServer:
    runner: Runner
    url: str
    model: str
    context_window: int | None
    memory_budget: int
    response_cache: bool
    backend: str = "mlx"  # the engine serving it


def open_server(options: ServeOptions) -> OpenServer:
    """Check the options, bind the socket, load the model and open the ledger session; the
    server starts taking requests when the caller runs it."""
    from foundry.backends.registry import create_backend, resolve_local_backend
    from foundry.config import ledger_path, load_config
    from foundry.ledger.store import Ledger
    from foundry.server.context import POLICIES
    from foundry.server.disk_budget import client_disk_budget
    from foundry.server.response_cache import ResponseCache
    from foundry.server.service import ServeSettings
    from foundry.server.session import ServeSession

    config = load_config(options.config)
    settings = config.serve
    policy = options.context_policy or settings.context_policy
    if policy not in POLICIES:
        raise UsageError(f"unknown context policy '{policy}'", f"use one of: {', '.join(POLICIES)}")
    check_exposure(options.host, options.api_key)
    import_server_libraries()
    # A prompt past the window is answered with the API's 400; the tokenizer's own warning
    # about it ("Token indices sequence length is longer...") would only be noise here.
    logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)
    sock = bind(options.host, options.port)
    try:
        engine = resolve_local_backend(config, options.backend, options.model)
        backend: Any = create_backend(engine, config, options.model)
        backend.check()
        backend.load()
        budget = (
            settings.memory_budget_mb * 1024 * 1024
            if settings.memory_budget_mb is not None
            else default_memory_budget()
        )
        backend.serve_with(
            l1_entries=settings.l1_max_entries,
            memory_budget_bytes=budget,
            output_cap=options.max_output_tokens or settings.max_output_tokens,
        )
        url = base_url(sock)
        ledger = Ledger.open(ledger_path(config, options.db))
        session = ServeSession(ledger, backend=backend.name, model=backend.model, url=url)
        cache = None
        if options.response_cache and settings.response_cache:
            cache = ResponseCache(
                max_entries=settings.response_cache_entries,
                max_bytes=settings.response_cache_mb * 1024 * 1024,
                ttl_s=settings.response_cache_ttl_s,
            )
        service = ServeService(
            backend,
            ServeSettings(
                model=backend.model,
                api_key=options.api_key,
                context_policy=policy,
                keep_last=settings.keep_last_messages,
                max_request_bytes=settings.max_request_mb * 1024 * 1024,
                ping_interval_s=settings.ping_interval_s,
                queue_size=settings.queue_size,
                disk_write_bytes_per_hour=client_disk_budget(config.prefix_cache.max_bytes),
            ),
            session=session,
            response_cache=cache,
        )
    except BaseException:
        sock.close()
        raise
    return OpenServer(
        Runner(service, sock),
        url,
        backend.model,
        backend.context_window,
        budget,
        cache is not None,
        backend=backend.name,
    )


def import_server_libraries() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UsageError(
            "foundry serve needs uvicorn and starlette",
            install_hint("serve"),
        ) from None
