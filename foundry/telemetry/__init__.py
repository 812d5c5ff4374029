"""Traces of builds for monitoring stacks (OpenTelemetry), when the user configures them.

Nothing here imports opentelemetry unless an OTLP endpoint is configured: a build without
one never loads it (a test holds this). docs/metrics.md describes the trace.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from foundry.orchestrator.events import Events

# The standard variables that say where traces go (the signal-specific one wins).
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def configured_endpoint() -> str | None:
    """Where the OTLP exporter will send traces, or None when tracing is not configured
    (no endpoint, or OTEL_SDK_DISABLED=true)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    return next((os.environ[v] for v in ENDPOINT_VARS if os.environ.get(v, "").strip()), None)


def telemetry_recorders() -> list[Events]:
    """The build's trace recorders: none unless OTEL_EXPORTER_OTLP_ENDPOINT is set."""
    endpoint = configured_endpoint()
    if endpoint is None:
        return []
    from foundry import console
    from foundry.errors import install_hint

    try:
        from foundry.telemetry.otel import TraceRecorder
    except ImportError:
        console.warning(
            f"OTEL_EXPORTER_OTLP_ENDPOINT is set, but this build sends no traces: they need "
            f"OpenTelemetry; {install_hint('otel')}"
        )
        return []
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", ""
    )
    if protocol.strip() not in ("", "http/protobuf"):
        console.warning(
            f"OTEL_EXPORTER_OTLP_PROTOCOL is {protocol.strip()}, but foundry sends traces as "
            "http/protobuf only: point the endpoint at the collector's OTLP/HTTP port (4318)"
        )
    try:
        return [TraceRecorder.from_environment(endpoint)]
    except Exception as exc:  # a malformed OTEL_* variable: say so, and build anyway
        console.warning(f"this build sends no traces: {type(exc).__name__}: {exc}")
        return []
