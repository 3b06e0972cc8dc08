"""The `cdc` command: each subcommand end to end, in-process and (for signals) as a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import orjson
import pytest
import structlog
from core_helpers import make_events, write_events

from cdc_core.cli import main
from cdc_core.commitlog import sample_cdc_dir
from cdc_core.dlq import DeadLetterQueue


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()  # the CLI configures logging for the process; undo it


def _pipeline_file(tmp_path: Path, *, follow: bool = False, extra: str = "") -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"""\
source: {{type: jsonl, path: events.jsonl, follow: {str(follow).lower()}}}
sinks:
  out: {{type: jsonl, path: out.jsonl, batch: {{max_events: 10, max_wait: 0.05}}}}
offsets: {{type: sqlite, path: offsets.sqlite}}
dlq: {{directory: dlq}}
follow: {str(follow).lower()}
logging: {{level: info, format: json}}
{extra}"""
    )
    return path


def test_plugins_lists_builtins_and_installed_packages(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    expected = [
        ("reader", "cassandra", "cdc-core"),
        ("reader", "jsonl", "cdc-core"),
        ("transform", "masking", "cdc-masking"),
        ("sink", "postgres", "cdc-sink-postgres"),
        ("sink", "timescale", "cdc-sink-timescale"),
        ("sink", "clickhouse", "cdc-sink-clickhouse"),
        ("offset-store", "sqlite", "cdc-core"),
    ]
    for kind, name, dist in expected:
        try:
            distribution(dist)
        except PackageNotFoundError:
            continue  # cdc-core tested on its own (scripts/check_isolation.sh): siblings absent
        assert any(line.split()[:3] == [kind, name, dist] for line in out.splitlines()), f"{kind} {name} missing:\n{out}"


def test_validate_accepts_a_good_file_and_names_the_key_of_a_bad_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "events.jsonl").write_text("")
    good = _pipeline_file(tmp_path)
    assert main(["validate", str(good)]) == 0
    assert "valid" in capsys.readouterr().out
    bad = _pipeline_file(tmp_path, extra="metrics: {port: high}\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "metrics.port" in err
    assert f"{bad}:8" in err


def test_run_then_offsets_and_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_events(tmp_path / "events.jsonl", make_events(25))
    cfg = _pipeline_file(tmp_path)
    assert main(["run", str(cfg)]) == 0
    assert len((tmp_path / "out.jsonl").read_bytes().splitlines()) == 25
    capsys.readouterr()
    assert main(["offsets", "show", str(cfg)]) == 0
    assert "out: n1 n1@1:340:0 (offset store)" in capsys.readouterr().out
    assert main(["status", str(cfg)]) == 0
    assert "n1@1:340:0" in capsys.readouterr().out
    assert main(["offsets", "reset", str(cfg), "--sink", "out"]) == 2  # needs --yes
    assert main(["offsets", "reset", str(cfg), "--sink", "out", "--yes"]) == 0
    assert main(["run", str(cfg)]) == 0  # replays everything after a reset
    assert len((tmp_path / "out.jsonl").read_bytes().splitlines()) == 50


def test_tail_prints_decoded_events_from_real_segments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sample = sample_cdc_dir()
    cfg = tmp_path / "tail.yaml"
    cfg.write_text(
        f"source: {{type: cassandra, cdc_raw_dir: {sample}, schema_snapshot: {sample / 'schema.json'}, node: n}}\n"
        "sinks: {out: {type: jsonl}}\n"
    )
    assert main(["tail", str(cfg), "--limit", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    first = orjson.loads(lines[0])
    assert first["v"] == 1
    assert first["position"]["node"] == "n"
    # --from: the events strictly after the given position.
    pos = first["position"]
    assert main(["tail", str(cfg), "--limit", "4", "--from", f"n@{pos['segment_id']}:{pos['offset']}:{pos['index']}"]) == 0
    assert capsys.readouterr().out.splitlines() == lines[1:5]


def test_dlq_list_and_replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "events.jsonl").write_text("")
    cfg = _pipeline_file(tmp_path)
    DeadLetterQueue(tmp_path / "dlq").write("out", [(e, "PermanentError", "refused", None, 3) for e in make_events(3)])
    assert main(["dlq", "list", str(cfg)]) == 0
    assert "3 events (PermanentError)" in capsys.readouterr().out
    assert main(["dlq", "replay", str(cfg)]) == 0
    assert "replayed 3 events" in capsys.readouterr().out
    assert [orjson.loads(x)["key"]["id"] for x in (tmp_path / "out.jsonl").read_bytes().splitlines()] == [0, 1, 2]
    assert main(["dlq", "list", str(cfg)]) == 0
    assert "empty" in capsys.readouterr().out


def test_bad_position_and_missing_file_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read configuration file" in capsys.readouterr().err
    (tmp_path / "events.jsonl").write_text("")
    assert main(["tail", str(_pipeline_file(tmp_path)), "--from", "garbage"]) == 2
    assert "node@segment:offset:index" in capsys.readouterr().err


def test_sigterm_stops_cleanly_and_commits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_events(tmp_path / "events.jsonl", make_events(40))
    cfg = _pipeline_file(tmp_path, follow=True)
    cdc = Path(sys.executable).with_name("cdc")
    proc = subprocess.Popen([str(cdc), "run", str(cfg)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    out = tmp_path / "out.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 40):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert b'"state": "stopped"' in err
    capsys.readouterr()
    assert main(["offsets", "show", str(cfg)]) == 0
    assert "out: n1 n1@1:490:0" in capsys.readouterr().out  # everything applied is committed


def test_validate_checks_masking_rules_against_the_schema_snapshot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("cdc_masking", reason="needs the cdc-masking distribution (absent when cdc-core is tested on its own)")
    sample = sample_cdc_dir()
    (tmp_path / "key").write_text("k" * 40)
    cfg = tmp_path / "masked.yaml"
    cfg.write_text(
        f"source: {{type: cassandra, cdc_raw_dir: {sample}, schema_snapshot: {sample / 'schema.json'}, keyspaces: [cdcfix]}}\n"
        "transforms:\n"
        "  - type: masking\n"
        "    policy_version: t1\n"
        "    keys: {hmac: '${file:key}'}\n"
        "    rules:\n"
        "      - {keyspace: cdcfix, table: all_types, column: t, classification: pii}\n"
        "      - {keyspace: cdcfix, table: all_types, column: no_such_column, classification: pii}\n"
        "sinks: {out: {type: jsonl}}\n"
    )
    assert main(["validate", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "no_such_column" in out
    assert "checked against 6 table schemas" in out


def test_status_shows_the_backlog_of_cdc_raw(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sample = sample_cdc_dir()
    cfg = tmp_path / "status.yaml"
    cfg.write_text(
        f"source: {{type: cassandra, cdc_raw_dir: {sample}, schema_snapshot: {sample / 'schema.json'}, node: n, password: s3cret-pw}}\n"
        "sinks: {out: {type: jsonl, path: out.jsonl}}\n"
        "offsets: {type: sqlite, path: offsets.sqlite}\n"
        "follow: false\n"
    )
    size = sum(p.stat().st_size for p in sample.glob("*.log"))
    assert main(["status", str(cfg)]) == 0
    assert f"backlog_bytes={size} segments=1" in capsys.readouterr().out
    assert main(["run", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["status", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "n@" in out
    assert f"backlog_bytes={size}" not in out  # the committed position moved into the segment
    assert "s3cret-pw" not in out
