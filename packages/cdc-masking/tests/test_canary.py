"""Canaries planted everywhere a value can be are found zero times in the masked, serialized events."""

from __future__ import annotations

import pytest
import structlog
from prometheus_client import CollectorRegistry

from cdc_core.serialization import event_to_json
from cdc_masking import MaskingTransform, structure_config
from cdc_masking.testing import (
    CANARIES,
    assert_no_canaries,
    canary_masking_config,
    find_canaries,
    make_canary_events,
    make_canary_range_deletion,
)


def serialized(events: list) -> bytes:  # type: ignore[type-arg]
    return b"\n".join(event_to_json(e) for e in events)


def test_canaries_are_planted() -> None:
    found = find_canaries(serialized(make_canary_events()))
    assert set(found) == set(CANARIES)  # every canary is really in the unmasked events
    with pytest.raises(AssertionError, match="canary values leaked into output"):
        assert_no_canaries(serialized(make_canary_events()))


def test_no_canary_survives_the_transform() -> None:
    transform = MaskingTransform(structure_config(canary_masking_config()), registry=CollectorRegistry())
    out = transform.apply(make_canary_events())
    text = serialized(out)
    assert_no_canaries(text, where="serialized masked events")
    assert_no_canaries(repr(out), where="repr of masked events")
    assert_no_canaries(repr(transform.audit()), where="audit records")
    assert len(out) == len(make_canary_events())


def test_canaries_survive_without_a_rule() -> None:
    config = canary_masking_config()
    config["rules"] = [r for r in config["rules"] if r["column"] != "ssn*"]
    transform = MaskingTransform(structure_config(config), registry=CollectorRegistry())
    found = find_canaries(serialized(transform.apply(make_canary_events())))
    assert set(found) == {"987-65-4329", "987654329"}  # the helper really detects a missing rule


def test_dropped_range_deletion_leaks_nothing() -> None:
    transform = MaskingTransform(structure_config(canary_masking_config()), registry=CollectorRegistry())
    events = [*make_canary_events(), make_canary_range_deletion()]
    with structlog.testing.capture_logs() as logs:
        out = transform.apply(events)
    assert len(out) == len(events) - 1  # the range over the masked clustering column is dropped
    assert_no_canaries(serialized(out), where="serialized masked events")
    assert_no_canaries(repr(logs), where="log records")
    assert_no_canaries(repr(transform.audit()), where="audit records")
    assert [e["event"] for e in logs if e["log_level"] == "warning"].count("masking.range_deletion_dropped") == 1
