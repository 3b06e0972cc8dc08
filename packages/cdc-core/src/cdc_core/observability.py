"""Metrics (prometheus-client, one registry per pipeline), tracing (opentelemetry-api only) and
the opt-in logging setup for the CLI. Library code only ever calls ``structlog.get_logger()``."""

from __future__ import annotations

import logging
import sys

import structlog
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["Metrics", "configure_logging", "tracer"]

tracer = trace.get_tracer("cdc")


class Metrics:
    """The pipeline's metrics. Labels carry names of sinks, tables and error types — never values."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_processed = Counter("cdc_events_processed", "Events a destination applied", ["destination", "table"], registry=r)
        self.replication_lag = Gauge(
            "cdc_replication_lag_seconds", "Seconds between the newest applied write and now", ["destination"], registry=r
        )
        self.events_per_second = Gauge("cdc_events_per_second", "Recent apply rate", ["destination"], registry=r)
        self.errors = Counter("cdc_errors", "Errors by kind", ["destination", "error_type"], registry=r)
        self.backlog_depth = Gauge("cdc_backlog_depth", "Events read but not yet applied", ["destination"], registry=r)
        self.dlq_events = Counter("cdc_dlq_events", "Events sent to the dead-letter queue", ["destination"], registry=r)
        self.batches = Counter("cdc_batches_committed", "Batches applied and committed", ["destination"], registry=r)
        self.retries = Counter("cdc_retries", "Retried writes", ["destination"], registry=r)


class _CurrentStderr:
    """Whatever ``sys.stderr`` is when a line is written (it may be replaced after set-up)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Set up structlog for the CLI (JSON lines to stderr by default). Never called by the library."""
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=getattr(logging, level.upper()))
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
