"""The ledger side of a serve session: one `builds` row per server start (named
`serve-<model>`, status `running` until a clean shutdown marks it `completed`), and one
`requests` row (phase "serve") per served request, so `foundry costs --by build` shows each
session with the prefill time its caches saved."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from foundry.ledger.store import Ledger
from foundry.usage import Usage

PHASE = "serve"


def session_name(model: str) -> str:
    """`serve-<model>`: a model given as a directory path is named by its last part."""
    return f"serve-{Path(model).name or model}"


class ServeSession:
    def __init__(self, ledger: Ledger, *, backend: str, model: str, url: str) -> None:
        self.ledger = ledger
        self.backend = backend
        self.model = model
        self._lock = threading.Lock()
        self.build_id = ledger.start_build(
            name=session_name(model),
            task=f"foundry serve on {url}",
            backend=backend,
            model=model,
            workdir=os.getcwd(),
            template_sha256="",
            static_sha256="",
        )
        self.rows = 0

    def record(
        self,
        usage: Usage,
        *,
        started_at: str,
        status: str = "ok",
        error_class: str | None = None,
        stop_reason: str | None = None,
        request_id: str | None = None,
    ) -> None:
        with self._lock:
            self.ledger.record_request(
                build_id=self.build_id,
                phase=PHASE,
                turn=None,
                backend=self.backend,
                model=self.model,
                usage=usage,
                started_at=started_at,
                status=status,
                error_class=error_class,
                stop_reason=stop_reason,
                provider_request_id=request_id,
            )
            self.rows += 1

    def close(self, summary: dict[str, Any], *, interrupted: bool = False) -> None:
        with self._lock:
            self.ledger.finish_build(
                self.build_id,
                status="interrupted" if interrupted else "completed",
                summary=summary,
            )
            self.ledger.close()
