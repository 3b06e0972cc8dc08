"""Reading Cassandra commitlog (CDC) segments: segment format, mutation decoding, the reader.

See docs/commitlog-reader.md. The public entry points are :class:`CommitLogReader` with its
:class:`CommitLogReaderConfig`, :func:`dump_schema` / :func:`load_schema_snapshot`, and
:func:`sample_cdc_dir` (a small recorded cdc_raw directory for the quickstart).
"""

from __future__ import annotations

from pathlib import Path

from cdc_core.commitlog.reader import CommitLogReader, CommitLogReaderConfig
from cdc_core.commitlog.schema_source import dump_schema, load_schema_snapshot

__all__ = ["CommitLogReader", "CommitLogReaderConfig", "dump_schema", "load_schema_snapshot", "sample_cdc_dir"]


def sample_cdc_dir() -> Path:
    """A small cdc_raw directory recorded from a real Cassandra 5.0 (with ``schema.json`` beside
    the segments), for the quickstart and demos."""
    return Path(__file__).parent / "sample"
