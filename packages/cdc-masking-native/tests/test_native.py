"""The accelerator gives exactly what the pure-Python masking gives.

The pure-Python code in ``cdc_masking`` is the reference: every comparison below builds the same
thing twice, once with ``CDC_MASKING_NATIVE=0`` (the fallback) and once with the accelerator.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import hmac
import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs
import pytest
from frozendict import frozendict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from cdc_core.events import Cell, ChangeEvent, ChangeKind, Liveness
from cdc_core.positions import Position
from cdc_core.schema import ColumnKind, ColumnSchema, TableSchema
from cdc_core.secrets import Secret
from cdc_masking import BUILTIN_STRATEGIES, Masker, MaskingTransform, StrategyContext, structure_config
from cdc_masking.strategies import canonical_bytes, memoise, memoised
from cdc_masking.testing import canary_masking_config, make_canary_events, make_canary_range_deletion

if TYPE_CHECKING:
    import cdc_masking_native
else:  # without the build these comparisons are skipped; test_installed.py fails in CI instead
    cdc_masking_native = pytest.importorskip("cdc_masking_native")

KEYS = {
    "hmac": Secret("native-test-hmac-key-0123456789abcdef0123"),
    "v1": Secret("native-test-token-key-v1-0123456789abcdef"),
    "long": Secret("hex:" + "ab" * 100),  # > 64 bytes: HMAC hashes the key first
}


@pytest.fixture
def pure(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CDC_MASKING_NATIVE", "0")
    yield
    monkeypatch.delenv("CDC_MASKING_NATIVE")


def compile_both(name: str, options: dict[str, Any]) -> tuple[Masker, Masker]:
    """``(pure-Python, native)`` maskers of one strategy and options."""
    context = StrategyContext(rule_name="r", strategy=name, keys=KEYS, token_key="v1")
    old = os.environ.get("CDC_MASKING_NATIVE")
    os.environ["CDC_MASKING_NATIVE"] = "0"
    try:
        pure_masker = BUILTIN_STRATEGIES[name].compile(options, context)
    finally:
        if old is None:
            del os.environ["CDC_MASKING_NATIVE"]
        else:
            os.environ["CDC_MASKING_NATIVE"] = old
    native_masker = BUILTIN_STRATEGIES[name].compile(options, context)
    return pure_masker, native_masker


texts = st.one_of(
    st.just(""),
    st.text(),
    # non-ASCII only; lone surrogates cannot be UTF-8 encoded, both implementations raise (tested below)
    st.text(alphabet=st.characters(min_codepoint=0x80, exclude_categories=["Cs"]), min_size=1),
    st.text(min_size=65, max_size=400),  # longer than a SHA-256 block
)
values = st.one_of(
    texts,
    st.binary(max_size=200),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.floats(allow_nan=False),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
    st.dates(),
    st.datetimes(timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=5))])),
    st.uuids(),
)
hmac_options = st.fixed_dictionaries(
    {},
    optional={
        "key": st.sampled_from(["hmac", "long"]),
        "output": st.sampled_from(["hex", "base64url"]),
        "length": st.integers(min_value=8, max_value=80),
        "prefix": st.text(max_size=8),
    },
)
token_options = st.fixed_dictionaries(
    {}, optional={"key": st.sampled_from(["v1", "long"]), "length": st.integers(min_value=12, max_value=32)}
)
email_options = st.fixed_dictionaries(
    {},
    optional={
        "local": st.sampled_from(["hmac", "redact"]),
        "domain": st.sampled_from(["keep", "hmac"]),
        "length": st.integers(min_value=8, max_value=64),
        "key": st.sampled_from(["hmac", "long"]),
    },
)
strategy_and_options = st.one_of(
    st.tuples(st.just("hmac"), hmac_options), st.tuples(st.just("tokenize"), token_options), st.tuples(st.just("email"), email_options)
)
emails = st.one_of(values, st.builds(lambda a, b: f"{a}@{b}", texts, texts), st.builds(lambda a: f"{a}@ExAmple.COM", texts))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(strategy_and_options, st.lists(emails, max_size=20))
def test_native_masks_exactly_like_pure_python(case: tuple[str, dict[str, Any]], batch: list[Any]) -> None:
    name, options = case
    pure_masker, native_masker = compile_both(name, options)
    assert pure_masker.batch is None
    if name != "email":  # email parses in Python and hashes natively: no list form
        assert native_masker.batch is not None
    assert attrs.evolve(native_masker, mask=pure_masker.mask, batch=None) == pure_masker  # same flags
    expected = [pure_masker.mask(v) for v in batch]
    assert [native_masker.mask(v) for v in batch] == expected
    pure_one, pure_many = memoised(pure_masker, 8)
    native_one, native_many = memoised(native_masker, 8)
    doubled = batch + batch[::-1]  # memo hits too, and a cache cleared on the way (size 8)
    assert native_many(doubled) == pure_many(doubled) == [pure_masker.mask(v) for v in doubled]
    assert [native_one(v) for v in doubled] == [pure_one(v) for v in doubled]
    if native_masker.batch is not None:
        assert native_masker.batch.mask_many(batch) == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.binary(max_size=20), st.binary(max_size=300))
def test_keyed_hmac_is_rfc2104_hmac_sha256(key: bytes, domain: bytes, data: bytes) -> None:
    keyed = cdc_masking_native.KeyedHmac(key, domain=domain)
    assert keyed.digest(data) == hmac.new(key, domain + data, hashlib.sha256).digest()
    assert keyed.mask(data) == hmac.new(key, domain + data, hashlib.sha256).hexdigest()


@settings(max_examples=200, deadline=None)
@given(st.lists(values, max_size=30), st.integers(min_value=1, max_value=10))
def test_memo_follows_memoise(batch: list[Any], size: int) -> None:
    """Same outputs and the same memo contents (keys and order) as ``strategies.memoise``."""
    keyed = cdc_masking_native.KeyedHmac(b"k" * 32, canonical=canonical_bytes)
    py_cache: dict[Any, Any] = {}
    rs_cache: dict[Any, Any] = {}
    memo = memoise(keyed.mask, size, py_cache)
    assert keyed.mask_many_memo(batch, rs_cache, size) == [memo(v) for v in batch]
    assert list(rs_cache.items()) == list(py_cache.items())


def test_memo_distinguishes_equal_values_of_different_forms() -> None:
    keyed = cdc_masking_native.KeyedHmac(b"k" * 32, canonical=canonical_bytes)
    out = keyed.mask_many_memo([decimal.Decimal("1.0"), decimal.Decimal("1.00"), 0.0, -0.0, 1, True], {}, 100)
    assert out == [keyed.mask(v) for v in ["1.0", "1.00", "0.0", "-0.0", "1", "true"]]


def test_keyed_hmac_refuses_what_it_cannot_hash() -> None:
    keyed = cdc_masking_native.KeyedHmac(b"k" * 32)
    with pytest.raises(TypeError, match="canonical"):
        keyed.mask(1)
    pure_masker, _native_masker = compile_both("hmac", {})
    for mask in (keyed.mask, pure_masker.mask):
        with pytest.raises(UnicodeEncodeError):
            mask("\ud800")  # a lone surrogate: str.encode("utf-8") refuses it
    with pytest.raises(ValueError, match="output"):
        cdc_masking_native.KeyedHmac(b"k", output="b32")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="digest_bytes"):
        cdc_masking_native.KeyedHmac(b"k", digest_bytes=33)


def test_slot_class_copies_like_attrs_evolve() -> None:
    fields = [a.name for a in attrs.fields(Cell)]
    cells = cdc_masking_native.SlotClass(Cell, [Cell.__dict__[f] for f in fields])
    olds = [Cell(timestamp=1, value="a", ttl=5, local_deletion_time=9), None, Cell(timestamp=2, value="b")]
    out = cells.evolve_many(olds, {}, {fields.index("value"): ["x", "y"]})
    assert out == [attrs.evolve(olds[0], value="x"), None, attrs.evolve(olds[2], value="y")]  # type: ignore[misc]
    assert all(type(c) is Cell for c in out if c is not None)
    assert cells.evolve_many(olds, {fields.index("timestamp"): 7}, {})[2] == Cell(timestamp=7, value="b")
    with pytest.raises(ValueError, match="fewer"):
        cells.evolve_many(olds, {}, {1: ["x"]})
    with pytest.raises(ValueError, match="more"):
        cells.evolve_many(olds, {}, {1: ["x", "y", "z"]})
    with pytest.raises(TypeError, match="exactly"):
        cells.evolve_many([Liveness(timestamp=1)], {}, {})
    with pytest.raises(TypeError, match="not a slot"):
        cdc_masking_native.SlotClass(Cell, [Liveness.__dict__["timestamp"]])


def test_dicts_with() -> None:
    base = {"a": 1, "b": 2}
    out = cdc_masking_native.dicts_with([base, base], ["b", "a"], [[None, 3], [None, 4]])
    assert out[0] is base
    assert out[1] == {"a": 4, "b": 3} and list(out[1]) == ["a", "b"] and out[1] is not base


def test_live_cells() -> None:
    live = Cell(timestamp=1, value="a")
    bases: list[Any] = [
        {"c": live},
        {},
        {"c": Cell(timestamp=1, value=None, tombstone=True)},
        frozendict({"c": Cell(timestamp=2, value=0)}),  # any mapping; a falsy value is live
        {"c": None},
    ]
    found = cdc_masking_native.live_cells(bases, "c", Cell)
    assert found is not None
    cells, values = found
    assert cells == [live, None, None, bases[3]["c"], None] and cells[0] is live
    assert values == ["a", 0]
    assert cdc_masking_native.live_cells([{"c": live}, {"c": Liveness(timestamp=1)}], "c", Cell) is None


# --- whole transform: native and pure Python give equal events and audits ----------------------------

TYPES = {"t": "text", "i": "int", "b": "bigint", "bl": "blob", "d": "date", "u": "uuid", "dec": "decimal", "f": "double", "ok": "boolean"}
SCHEMA = TableSchema(
    keyspace="ks",
    table="people",
    id=uuid.UUID("00000000-0000-4000-8000-00000000aa01"),
    columns=(
        ColumnSchema(name="pk", type="text", kind=ColumnKind.PARTITION_KEY),
        ColumnSchema(name="ck", type="int", kind=ColumnKind.CLUSTERING),
        *(ColumnSchema(name=f"c_{n}", type=t, kind=ColumnKind.REGULAR) for n, t in TYPES.items()),
        ColumnSchema(name="plain", type="text", kind=ColumnKind.REGULAR),
    ),
)
CELL_VALUES = {
    "t": texts,
    "i": st.integers(min_value=-(2**31), max_value=2**31 - 1),
    "b": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "bl": st.binary(max_size=80),
    "d": st.dates(),
    "u": st.uuids(),
    "dec": st.decimals(allow_nan=False, allow_infinity=False, places=2),
    "f": st.floats(allow_nan=False),
    "ok": st.booleans(),
}


@st.composite
def events(draw: st.DrawFn) -> list[ChangeEvent]:
    out = []
    for i in range(draw(st.integers(min_value=0, max_value=12))):
        cells: dict[str, Cell] = {}
        for n in TYPES:
            shape = draw(st.sampled_from(["absent", "live", "live", "tombstone", "ttl"]))
            if shape == "live":
                cells[f"c_{n}"] = Cell(timestamp=10 + i, value=draw(CELL_VALUES[n]))
            elif shape == "ttl":
                cells[f"c_{n}"] = Cell(timestamp=10 + i, value=draw(CELL_VALUES[n]), ttl=60, local_deletion_time=1_800_000_000)
            elif shape == "tombstone":
                cells[f"c_{n}"] = Cell(timestamp=10 + i, value=None, tombstone=True, local_deletion_time=1_700_000_000)
        if draw(st.booleans()):
            cells["plain"] = Cell(timestamp=10 + i, value="kept")
        out.append(
            ChangeEvent(
                position=Position(node="n", segment_id=1, offset=i),
                schema=SCHEMA,
                kind=ChangeKind.ROW,
                key={"pk": draw(texts), "ck": i},
                liveness=Liveness(timestamp=10 + i) if draw(st.booleans()) else None,
                cells=cells,
            )
        )
    return out


def rules(data: st.DataObject, *, keys: bool) -> list[dict[str, Any]]:
    result = []
    for n in TYPES:
        name, options = data.draw(
            st.one_of(strategy_and_options, st.tuples(st.sampled_from(["redact", "keep_last", "sha256"]), st.just({})))
        )
        if data.draw(st.booleans()):
            result.append({"keyspace": "ks", "table": "people", "column": f"c_{n}", "strategy": name, "options": options})
    if keys:
        result.append({"keyspace": "ks", "table": "people", "column": "pk", "strategy": "hmac"})
    if data.draw(st.booleans()):
        result.append({"keyspace": "ks", "table": "people", "column": "c_t", "strategy": "null"})
    return result


def run(config: dict[str, Any], batches: list[list[ChangeEvent]], *, native: bool) -> tuple[list[list[ChangeEvent]], list[Any]]:
    old = os.environ.get("CDC_MASKING_NATIVE")
    os.environ["CDC_MASKING_NATIVE"] = "1" if native else "0"
    try:
        transform = MaskingTransform(structure_config(config), registry=CollectorRegistry())
        outs, audits = [], []
        for batch in batches:
            outs.append(transform.apply(batch))
            audits.append(transform.audit())
        return outs, audits
    finally:
        if old is None:
            del os.environ["CDC_MASKING_NATIVE"]
        else:
            os.environ["CDC_MASKING_NATIVE"] = old


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_transform_native_equals_pure_python(data: st.DataObject) -> None:
    config = {
        "policy_version": "p",
        "keys": {k: v.reveal() for k, v in KEYS.items()} | {"salt": "s" * 32},
        "token_key": "v1",
        "cache_size": data.draw(st.sampled_from([0, 4, 65536])),
        "rules": rules(data, keys=data.draw(st.booleans())),
    }
    batches = data.draw(st.lists(events(), max_size=3))
    assert run(config, batches, native=True) == run(config, batches, native=False)


def test_canary_events_native_equals_pure_python() -> None:
    batches = [make_canary_events(), [make_canary_range_deletion()], make_canary_events() + make_canary_events()]
    assert run(canary_masking_config(), batches, native=True) == run(canary_masking_config(), batches, native=False)
