"""The ``cassandra`` reader factory (registered with the plugin manager by the builtins plugin)."""

from __future__ import annotations

import attrs

from cdc_core.commitlog.reader import CommitLogReader, CommitLogReaderConfig
from cdc_core.factories import ComponentContext, ReaderFactory
from cdc_core.readers import Reader

__all__ = ["reader_factory"]

_PATH_FIELDS = ("cdc_raw_dir", "schema_snapshot", "archive_dir", "tls_ca_file", "tls_cert_file", "tls_key_file")


def _create(config: CommitLogReaderConfig, context: ComponentContext) -> Reader:
    """Build the reader; relative paths in the config resolve against the config file's directory."""
    changes = {}
    for field in _PATH_FIELDS:
        value = getattr(config, field)
        if value is not None and not value.is_absolute():
            changes[field] = context.base_dir / value
    if changes:
        config = attrs.evolve(config, **changes)
    return CommitLogReader(config)


def reader_factory() -> ReaderFactory[CommitLogReaderConfig]:
    """Factory of the commitlog (cdc_raw) reader, named ``cassandra``."""
    return ReaderFactory(
        name="cassandra",
        config_type=CommitLogReaderConfig,
        create=_create,
        description="Reads one Cassandra node's cdc_raw commitlog segments (CDC)",
    )
