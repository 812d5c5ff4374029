"""Traces of builds for monitoring stacks (OpenTelemetry), when the user configures them."""

from __future__ import annotations

from foundry.orchestrator.events import Events


def telemetry_recorders() -> list[Events]:
    """The build's trace recorders: none unless OTEL_EXPORTER_OTLP_ENDPOINT is set."""
    return []
