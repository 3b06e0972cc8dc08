"""Strategy properties: determinism, key separation, never the input, documented output types, token rotation."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import hmac
import ipaddress
import uuid
from typing import Any

import pytest
from helpers import KEYS, PK, REG, row, table, transform
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cdc_core.cqltypes import parse_type
from cdc_core.errors import ConfigError
from cdc_core.secrets import Secret
from cdc_masking import BUILTIN_STRATEGIES, Masker, StrategyContext, identify_token, make_token
from cdc_masking.strategies import memoise, memoised, native_module

SECRETS = {k: Secret(v) for k, v in KEYS.items()}


def compile_strategy(name: str, options: dict[str, Any] | None = None, keys: dict[str, str] | None = None, **ctx: Any) -> Masker:
    secrets = SECRETS if keys is None else {k: Secret(v) for k, v in keys.items()}
    context = StrategyContext(rule_name="r", strategy=name, keys=secrets, token_key=ctx.pop("token_key", "v1"), **ctx)
    return BUILTIN_STRATEGIES[name].compile(options or {}, context)


# Values of many CQL types (leaves as the event model holds them).
leaf_values = st.one_of(
    st.text(min_size=1),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.uuids(),
    st.dates(),
    st.datetimes(timezones=st.just(dt.UTC)),
    st.binary(min_size=1),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.ip_addresses(),
    st.floats(allow_nan=False),
)

KEYED = ("hmac", "tokenize", "sha256", "email")
ALL = tuple(BUILTIN_STRATEGIES)


@settings(max_examples=200)
@given(value=leaf_values, name=st.sampled_from(ALL))
def test_deterministic(value: Any, name: str) -> None:
    a = compile_strategy(name)
    b = compile_strategy(name)  # a second compilation with the same key: same output
    assert a.mask(value) == a.mask(value) == b.mask(value)


@settings(max_examples=200)
@given(value=leaf_values, name=st.sampled_from(("hmac", "tokenize", "email")))
def test_different_keys_give_different_outputs(value: Any, name: str) -> None:
    option = {"key": "other"} if name != "tokenize" else {"key": "v2"}
    assert compile_strategy(name).mask(value) != compile_strategy(name, option).mask(value)


@settings(max_examples=100)
@given(value=leaf_values)
def test_sha256_different_salts_differ(value: Any) -> None:
    assert compile_strategy("sha256").mask(value) != compile_strategy("sha256", {"salt": "other"}).mask(value)


non_trivial_text = st.text(alphabet=st.characters(blacklist_characters="*", blacklist_categories=["Cs"]), min_size=1)


@settings(max_examples=300)
@given(value=st.one_of(non_trivial_text, st.integers(), st.uuids(), st.dates()), name=st.sampled_from(ALL))
def test_no_strategy_returns_its_input(value: Any, name: str) -> None:
    assume(value != "REDACTED")
    masked = compile_strategy(name).mask(value)
    assert masked != value
    assert str(value) not in str(masked) or len(str(value)) <= 4 or name in ("keep_last", "truncate")


@settings(max_examples=200)
@given(value=st.text(min_size=9, alphabet="0123456789-"))
def test_keyed_outputs_do_not_contain_the_value(value: Any) -> None:
    for name in KEYED:
        assert value not in compile_strategy(name).mask(value)


@pytest.mark.parametrize(
    ("type_string", "value"),
    [
        ("int", 123456789),
        ("bigint", 987654329),
        ("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678")),
        ("date", dt.date(1961, 3, 27)),
        ("timestamp", dt.datetime(2020, 1, 2, 3, 4, 5, 6000, tzinfo=dt.UTC)),
        ("decimal", decimal.Decimal("12.50")),
        ("inet", ipaddress.ip_address("10.1.2.3")),
        ("blob", b"\x00\x01secret"),
        ("boolean", True),
        ("text", "plain"),
    ],
)
@pytest.mark.parametrize("name", ALL)
def test_output_types_as_documented(type_string: str, value: Any, name: str) -> None:
    masker = compile_strategy(name)
    typ = parse_type(type_string)
    out = masker.mask(value)
    if name == "null":
        assert out is None
        assert masker.result_type(typ) == typ  # null keeps the column's type
    elif name == "redact" and type_string == "text":
        assert out == "REDACTED"
        assert masker.result_type(typ) == typ
    else:
        assert isinstance(out, str)
        assert str(masker.result_type(typ)) == "text"


def test_hmac_is_rfc2104_hmac_sha256() -> None:
    key = KEYS["hmac"].encode()
    assert compile_strategy("hmac").mask("123-45-6789") == hmac.new(key, b"123-45-6789", hashlib.sha256).hexdigest()


def test_hmac_output_options() -> None:
    full = compile_strategy("hmac").mask("x")
    assert len(full) == 64
    assert compile_strategy("hmac", {"length": 16}).mask("x") == full[:16]
    b64 = compile_strategy("hmac", {"output": "base64url"}).mask("x")
    assert len(b64) == 43 and "=" not in b64 and "+" not in b64 and "/" not in b64
    assert compile_strategy("hmac", {"prefix": "h:"}).mask("x") == "h:" + full


def test_binary_keys_decode() -> None:
    raw = bytes(range(32))
    hexed = compile_strategy("hmac", keys={"hmac": "hex:" + raw.hex()})
    assert hexed.mask("v") == hmac.new(raw, b"v", hashlib.sha256).hexdigest()


def test_equal_values_of_different_columns_mask_equally() -> None:
    # Joins: the canonical form depends on the value only, so an int SSN and a text SSN agree.
    masker = compile_strategy("hmac")
    assert masker.mask(123456789) == masker.mask("123456789")


def test_redact_null_keep_last_truncate_email() -> None:
    assert compile_strategy("redact", {"replacement": "[x]"}).mask("secret") == "[x]"
    assert compile_strategy("null").mask("secret") is None
    assert compile_strategy("keep_last").mask("4111111111111111") == "************1111"
    assert compile_strategy("keep_last", {"n": 2, "mask_char": "#"}).mask(123456) == "####56"
    assert compile_strategy("keep_last").mask("123") == "***"
    assert compile_strategy("truncate", {"length": 3}).mask("10115 Berlin") == "101"
    assert compile_strategy("truncate", {"length": 3}).mask("ab") == "**"
    masked = compile_strategy("email").mask("Jane.Doe@Example.COM")
    local, domain = masked.split("@")
    assert domain == "example.com" and len(local) == 16 and "jane" not in local.lower()
    hashed_domain = compile_strategy("email", {"domain": "hmac"}).mask("jane@example.com")
    assert "example" not in hashed_domain and hashed_domain.endswith(".invalid")
    assert compile_strategy("email", {"local": "redact"}).mask("jane@example.com") == "***@example.com"


# --- tokens and rotation --------------------------------------------------------------------------------


@settings(max_examples=100)
@given(value=leaf_values)
def test_tokens_carry_their_key_id(value: Any) -> None:
    token = compile_strategy("tokenize").mask(value)
    assert token.startswith("tok_v1_")
    assert identify_token(token) == "v1"
    assert token == make_token(KEYS["v1"].encode(), "v1", value)


def test_rotation_old_tokens_stay_recognisable() -> None:
    from helpers import transform

    rules = [{"column": "diagnosis", "classification": "phi"}]
    before = transform(rules, token_key="v1")
    after = transform(rules, token_key="v2")  # v2 active, v1 still configured
    old, new = before.rules[0].masker, after.rules[0].masker
    old_token, new_token = old.mask("J45.909"), new.mask("J45.909")
    assert identify_token(old_token) == "v1"
    assert identify_token(new_token) == "v2"
    assert old_token != new_token
    assert after.verify_token(old_token, "J45.909")
    assert after.verify_token(new_token, "J45.909")
    assert not after.verify_token(old_token, "J45.90")
    assert not after.verify_token("tok_v9_AAAAAAAAAAAAAAAAAAAA", "J45.909")  # key v9 unknown


@pytest.mark.parametrize("text", ["", "tok_", "tok__abc", "token_v1_abc", "tok_v1_", "tok_v_1_abc=", "v1_abc", "tok_v1_abc def"])
def test_identify_token_rejects_non_tokens(text: str) -> None:
    assert identify_token(text) is None


def test_identify_token_accepts_dashed_ids() -> None:
    assert identify_token("tok_2024-q3_Ab-_9") == "2024-q3"


# --- compile-time errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "keys", "message"),
    [
        ("hmac", {}, {}, "needs HMAC key 'hmac', which masking.keys does not define"),
        ("hmac", {}, {"hmac": "short-key"}, "is 9 bytes; at least 32 bytes are required"),
        ("hmac", {}, {"hmac": "   "}, "is empty"),
        ("hmac", {"key": "nope"}, KEYS, "needs HMAC key 'nope'"),
        ("hmac", {"output": "b32"}, KEYS, "option output must be one of hex, base64url"),
        ("hmac", {"length": 4}, KEYS, "option length must be an integer >= 8"),
        ("hmac", {"colour": "red"}, KEYS, "unknown option(s) colour"),
        ("tokenize", {}, {"v1": "x" * 31}, "is 31 bytes"),
        ("tokenize", {"length": 40}, KEYS, "at most 32"),
        ("sha256", {}, {}, "needs salt key 'salt'"),
        ("email", {}, {}, "needs HMAC key 'hmac'"),
        ("keep_last", {"n": -1}, KEYS, "option n must be an integer >= 0"),
        ("keep_last", {"mask_char": "**"}, KEYS, "one character"),
        ("redact", {"replacement": 5}, KEYS, "option replacement must be a string"),
        ("null", {"x": 1}, KEYS, "unknown option(s) x"),
        ("hmac", {}, {"hmac": "hex:zz"}, "does not decode"),
    ],
)
def test_compile_errors_name_rule_and_problem(name: str, options: dict[str, Any], keys: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        compile_strategy(name, options, keys=keys)
    assert message in str(info.value)
    assert "masking rule 'r'" in str(info.value)


def test_tokenize_without_active_key() -> None:
    with pytest.raises(ConfigError, match="token_key"):
        compile_strategy("tokenize", token_key=None)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (decimal.Decimal("1.0"), decimal.Decimal("1.00")),
        (0.0, -0.0),
        (
            dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC),
            dt.datetime(2026, 1, 1, 13, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        ),
    ],
)
@pytest.mark.parametrize("name", ["hmac", "tokenize", "sha256", "email", "keep_last"])
def test_memo_keeps_equal_but_different_values_apart(first: Any, second: Any, name: str) -> None:
    # Regression: the memo was keyed on the value, so values that compare equal but mask differently
    # (Decimal('1.0') == Decimal('1.00'), 0.0 == -0.0) shared an entry: the output depended on the order.
    masker = compile_strategy(name)
    assert first == second and masker.mask(first) != masker.mask(second)
    for order in ((first, second), (second, first)):
        memo = memoise(masker.mask, 16)
        assert [memo(v) for v in order] == [masker.mask(v) for v in order]


@pytest.mark.parametrize("first_second", [(decimal.Decimal("1.0"), decimal.Decimal("1.00")), (0.0, -0.0), (1, True)])
@pytest.mark.parametrize("name", ["hmac", "tokenize", "email", "redact"])
def test_memoised_list_form_equals_the_value_form(first_second: tuple[Any, Any], name: str) -> None:
    """The per-list function (one call per column per batch; native where installed) shares the memo of the per-value one."""
    masker = compile_strategy(name)
    values = [*first_second, "a", "a", b"a", "", "é" * 70, *first_second]
    for size in (0, 2, 16):
        one, many = memoised(masker, size)
        assert many(values) == [masker.mask(v) for v in values]
        assert [one(v) for v in reversed(values)] == [masker.mask(v) for v in reversed(values)]


def test_pure_python_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    """CDC_MASKING_NATIVE=0 compiles the pure-Python strategies even where the accelerator is installed."""
    native = compile_strategy("hmac")
    assert (native.batch is not None) == (native_module() is not None)
    monkeypatch.setenv("CDC_MASKING_NATIVE", "0")
    assert native_module() is None
    pure = compile_strategy("hmac")
    assert pure.batch is None
    assert [pure.mask(v) for v in ("x", b"x", 7, "")] == [native.mask(v) for v in ("x", b"x", 7, "")]


def test_memo_through_the_transform_is_order_independent() -> None:
    schema = table([("id", "int", PK), ("amount", "decimal", REG), ("score", "double", REG)])

    def masked(values: list[Any], column: str) -> list[Any]:
        t = transform([{"table": "t", "column": column, "strategy": "hmac"}])
        return [t.apply([row(schema, {"id": 1}, {column: v})])[0].cells[column].value for v in values]  # type: ignore[union-attr]

    assert masked([decimal.Decimal("1.0"), decimal.Decimal("1.00")], "amount")[1] == masked([decimal.Decimal("1.00")], "amount")[0]
    assert masked([0.0, -0.0], "score")[1] == masked([-0.0], "score")[0]


@pytest.mark.parametrize(
    ("name", "options", "injective"),
    [
        ("hmac", {}, True),
        ("hmac", {"length": 8}, False),  # 32 bits: collisions after ~65 000 values
        ("hmac", {"length": 16}, False),  # 64 bits
        ("hmac", {"length": 24}, True),  # 96 bits
        ("hmac", {"output": "base64url", "length": 12}, False),  # 72 bits
        ("hmac", {"output": "base64url", "length": 16}, True),  # 96 bits
        ("sha256", {"length": 8}, False),
        ("sha256", {}, True),
        ("email", {}, False),  # 16 hex chars of local part = 64 bits
        ("email", {"length": 24}, True),
        ("tokenize", {"length": 12}, True),
    ],
)
def test_truncated_hashes_are_not_injective(name: str, options: dict[str, Any], injective: bool) -> None:
    # Regression: `length: 8` (32 bits) claimed injective=True, so keys masked by it raised no warning.
    assert compile_strategy(name, options).injective is injective


def test_truncated_hmac_on_a_key_column_warns() -> None:
    t = transform([{"column": "id", "strategy": "hmac", "options": {"length": 8}, "name": "short"}])
    warnings = t.validate([table([("id", "text", PK), ("v", "text", REG)])])
    assert len(warnings) == 1 and "'short' masks primary-key column ks.t.id" in warnings[0]
