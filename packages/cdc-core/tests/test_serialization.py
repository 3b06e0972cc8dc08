"""The JSON form of events round-trips losslessly (hypothesis) and rejects what is not an event."""

from __future__ import annotations

import datetime as dt
import ipaddress
import uuid
from decimal import Decimal

import pytest
from core_helpers import make_events
from frozendict import frozendict
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc_core.cqltypes import Duration, parse_type, value_from_json, value_to_json
from cdc_core.serialization import EventDecodeError, event_from_json, event_to_json
from cdc_core.testing.strategies import event_histories, table_schemas


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_every_generated_event_round_trips(data: st.DataObject) -> None:
    schema = data.draw(table_schemas())
    for event in data.draw(event_histories(schema)):
        assert event_from_json(event_to_json(event)) == event


EXAMPLES = [
    ("varint", 2**200),
    ("decimal", Decimal("-12345678901234567890.000100")),
    ("double", float("inf")),
    ("float", 1.5),
    ("timestamp", dt.datetime(1969, 7, 20, 20, 17, 40, 123000, tzinfo=dt.UTC)),
    ("date", dt.date(1, 1, 1)),
    ("time", 86_399_999_999_999),
    ("duration", Duration(-1, -2, -3_000_000_000)),
    ("inet", ipaddress.ip_address("2001:db8::1")),
    ("blob", b"\x00\xff"),
    ("timeuuid", uuid.UUID("d2177dd0-eaa2-11de-a572-001b779c76e3")),
    ("frozen<map<text, frozen<set<int>>>>", frozendict({"a": (1, 2), "b": ()})),
    ("tuple<int, text, frozen<list<double>>>", (1, "x", (0.5,))),
    ("frozen<udt<ks.addr>{street:text,zip:int}>", frozendict({"street": "Main", "zip": None})),
    ("vector<float, 3>", (1.0, 2.0, 3.0)),
]


@pytest.mark.parametrize(("type_string", "value"), EXAMPLES)
def test_values_keep_their_exact_form(type_string: str, value: object) -> None:
    typ = parse_type(type_string)
    assert value_from_json(value_to_json(value, typ), typ) == value


def test_nan_round_trips() -> None:
    typ = parse_type("double")
    out = value_from_json(value_to_json(float("nan"), typ), typ)
    assert out != out  # NaN


@pytest.mark.parametrize(
    "type_string", ["map<text, int>", "frozen<list<set<uuid>>>", "udt<ks.t>{a:int,b:frozen<list<text>>}", "vector<float, 8>"]
)
def test_type_strings_print_back_parseably(type_string: str) -> None:
    typ = parse_type(type_string)
    assert parse_type(str(typ)) == typ


@pytest.mark.parametrize("bad", ["map<text>", "list<", "nosuch", "int extra", "vector<float, x>"])
def test_bad_type_strings_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="type"):
        parse_type(bad)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"v": 99}', "unsupported event format version 99"),
        (b'{"v": 1, "position": {}}', "not a valid event"),
    ],
)
def test_invalid_documents_name_the_problem(document: bytes, message: str) -> None:
    with pytest.raises(EventDecodeError, match=message):
        event_from_json(document)


def test_decode_errors_do_not_quote_values() -> None:
    good = event_to_json(make_events(8)[7])
    bad = good.replace(b'"key":{"id":7}', b'"key":{"id":"123-45-6789"}')
    assert bad != good
    with pytest.raises(EventDecodeError) as err:
        event_from_json(bad)
    assert "123-45-6789" not in str(err.value)
