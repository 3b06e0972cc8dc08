"""Masking strategies: compiled once per rule into a :class:`Masker` (a plain function on values).

A strategy is any object with ``compile(options, context) -> Masker`` (a class with a
``classmethod``/``staticmethod`` ``compile`` works too). Built-ins are listed in
:data:`BUILTIN_STRATEGIES`; other plugins add theirs through the ``cdc_masking_register_strategies``
hook (see :mod:`cdc_masking.hookspecs`).

Values reach ``Masker.mask`` one leaf at a time and never as ``None``; collections, tuples and
UDTs are walked by the transform. Keyed strategies hash a canonical byte form of the value
(:func:`canonical_bytes`), which depends on the value only — not on the table or column — so the
same identifier masks to the same output everywhere and masked columns still join.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib
import os
import re
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import attrs

from cdc_core.cqltypes import CqlType
from cdc_core.errors import ConfigError
from cdc_core.secrets import Secret


def _import_native() -> ModuleType | None:
    # the optional accelerator (a separate distribution); the pure-Python code below is the reference
    try:
        return importlib.import_module("cdc_masking_native")
    except ImportError:
        return None


_native_module = _import_native()

__all__ = [
    "BUILTIN_STRATEGIES",
    "INJECTIVE_BITS",
    "MIN_KEY_BYTES",
    "TEXT",
    "BatchMask",
    "Masker",
    "MaskingStrategy",
    "StrategyContext",
    "canonical_bytes",
    "canonical_text",
    "identify_token",
    "make_token",
    "memoise",
    "memoised",
    "native_module",
    "same_type",
    "to_text",
]

MIN_KEY_BYTES = 32
INJECTIVE_BITS = 96
"""A hash truncated below this many bits is not treated as injective (``Masker.injective`` False).

By the birthday bound, n distinct values collide with probability about n² / 2^(bits+1): 32 bits
collide after ~65 000 values, 64 bits after ~4·10⁹; at 96 bits a trillion (10¹²) distinct values
collide with probability ~6·10⁻⁶. 96 bits is also ``tokenize``'s minimum length (12 bytes), and its
default (15 bytes = 120 bits) stays injective."""
TEXT = CqlType("text")
_TEXT_NAMES = frozenset({"text", "varchar", "ascii"})


def to_text(_: CqlType) -> CqlType:
    """Result type of strategies that produce strings."""
    return TEXT


def same_type(typ: CqlType) -> CqlType:
    """Result type of strategies that keep the column's type (``null``)."""
    return typ


def _text_if_needed(typ: CqlType) -> CqlType:
    return typ if typ.name in _TEXT_NAMES else TEXT


def native_module() -> ModuleType | None:
    """The compiled accelerator ``cdc_masking_native`` if it is installed and not disabled.

    ``CDC_MASKING_NATIVE=0`` (also ``false``/``no``/``off``) forces the pure-Python code; it is read
    whenever a strategy is compiled, i.e. when a ``MaskingTransform`` is built.
    """
    if os.environ.get("CDC_MASKING_NATIVE", "").strip().lower() in ("0", "false", "no", "off"):
        return None
    return _native_module


@runtime_checkable
class BatchMask(Protocol):
    """A masking function over whole lists (``cdc_masking_native.KeyedHmac`` is one).

    ``mask_many_memo`` must follow :func:`memoise`'s memo semantics on the ``cache`` it is given, so
    a column's per-value and per-list paths can share one memo.
    """

    def mask_many(self, values: list[Any], /) -> list[Any]: ...

    def mask_many_memo(self, values: list[Any], cache: dict[Any, Any], size: int, /) -> list[Any]: ...


@attrs.frozen(kw_only=True)
class Masker:
    """A compiled strategy.

    ``mask`` maps one non-None leaf value to its masked form. ``result_type`` maps the leaf's CQL
    type to the masked value's CQL type (the transform rewrites the event schema with it).
    ``deterministic`` and ``injective`` describe whether equal/different inputs keep
    equal/different outputs (key columns need both to converge and stay distinct); ``nulls`` marks
    a strategy that removes the value altogether; ``order_preserving`` one whose outputs sort like
    its inputs (none of the built-ins: without it a range deletion over a masked clustering column
    cannot be expressed on the masked rows and is dropped).
    """

    mask: Callable[[Any], Any]
    result_type: Callable[[CqlType], CqlType] = to_text
    deterministic: bool = True
    injective: bool = True
    nulls: bool = False
    memoise: bool = False  # worth a per-column memo of recent values (expensive and deterministic)
    order_preserving: bool = False  # a < b implies mask(a) < mask(b): range deletions on masked clustering columns stay exact
    batch: BatchMask | None = None  # optional: ``mask`` over a list in one call (same outputs), used per column per batch


@attrs.frozen(kw_only=True)
class StrategyContext:
    """What a strategy may use while compiling one rule."""

    rule_name: str
    strategy: str
    keys: Mapping[str, Secret]
    hmac_key: str = "hmac"
    token_key: str | None = None
    salt_key: str = "salt"

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"masking rule {self.rule_name!r} (strategy {self.strategy}): {message}")

    def key(self, key_id: str | None, purpose: str) -> bytes:
        """The key bytes of ``key_id``; refuses absent, empty or short keys (``ConfigError``)."""
        if key_id is None:
            raise self.error(f"needs a {purpose} key: set masking.token_key to the active key id")
        secret = self.keys.get(key_id)
        if secret is None:
            known = ", ".join(sorted(self.keys)) or "none"
            raise self.error(
                f"needs {purpose} key {key_id!r}, which masking.keys does not define (defined: {known}); "
                "set it from an environment variable (${CDC_MASKING_KEY}) or a secret file (${file:/run/secrets/key})"
            )
        raw = _decode_key(secret, self, key_id)
        if len(raw) < MIN_KEY_BYTES:
            if not raw:
                raise self.error(f"{purpose} key {key_id!r} is empty (is its environment variable or secret file unset?)")
            raise self.error(f"{purpose} key {key_id!r} is {len(raw)} bytes; at least {MIN_KEY_BYTES} bytes are required")
        return raw


def _decode_key(secret: Secret, ctx: StrategyContext, key_id: str) -> bytes:
    text = secret.reveal().strip()
    try:
        if text.startswith("hex:"):
            return bytes.fromhex(text[4:])
        if text.startswith("base64:"):
            return base64.b64decode(text[7:], validate=True)
    except (ValueError, binascii.Error):
        raise ctx.error(f"key {key_id!r} does not decode as its hex:/base64: prefix says") from None
    return text.encode("utf-8")


@runtime_checkable
class MaskingStrategy(Protocol):
    def compile(self, options: Mapping[str, Any], context: StrategyContext) -> Masker: ...


# --- canonical forms ---------------------------------------------------------------------------


def canonical_text(value: Any) -> str:
    """The text a value is masked as: itself for str, hex for bytes, ``str()`` otherwise."""
    cls = type(value)
    if cls is str:
        return value  # type: ignore[no-any-return]
    if cls is bytes:
        return value.hex()  # type: ignore[no-any-return]
    if cls is bool:
        return "true" if value else "false"
    return str(value)


def canonical_bytes(value: Any) -> bytes:
    """The bytes keyed strategies hash. Equal values give equal bytes, whatever the column."""
    cls = type(value)
    if cls is str:
        return value.encode("utf-8")  # type: ignore[no-any-return]
    if cls is bytes:
        return value  # type: ignore[no-any-return]
    return canonical_text(value).encode("utf-8")


# --- options ------------------------------------------------------------------------------------


class _Options:
    def __init__(self, options: Mapping[str, Any], ctx: StrategyContext, allowed: set[str]) -> None:
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ctx.error(f"unknown option(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed)) or 'none'})")
        self.options = options
        self.ctx = ctx

    def str_(self, name: str, default: str | None) -> str | None:
        value = self.options.get(name, default)
        if value is not None and not isinstance(value, str):
            raise self.ctx.error(f"option {name} must be a string")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.options.get(name, default)
        if value not in choices:
            raise self.ctx.error(f"option {name} must be one of {', '.join(choices)}, not {value!r}")
        return str(value)

    def int_(self, name: str, default: int | None, minimum: int) -> int | None:
        value = self.options.get(name, default)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.ctx.error(f"option {name} must be an integer >= {minimum}, not {value!r}")
        return value


_MISS = object()


def memoise(fn: Callable[[Any], Any], size: int, cache: dict[Any, Any] | None = None) -> Callable[[Any], Any]:
    """A bounded memo of a pure masking function (cleared when full: no LRU bookkeeping).

    Equal is not identical: ``Decimal('1.0') == Decimal('1.00')``, ``0.0 == -0.0`` and two aware
    datetimes of one instant in different zones compare (and hash) equal but have different
    canonical forms, so keying the memo on the value itself would make the output depend on which
    of them came first. The memo is therefore keyed on the value only for ``str``, ``bytes`` and
    ``int`` (where equality means the same canonical form) and on ``(type, repr(value))`` otherwise.
    ``cache`` may be given to share the memo with a :class:`BatchMask` (:func:`memoised`).
    """
    if size <= 0:
        return fn
    if cache is None:
        cache = {}
    get = cache.get

    def mask(value: Any) -> Any:
        cls = type(value)
        if cls is str or cls is int or cls is bytes:  # exact classes: bool and subclasses take the repr path
            key = value
        else:
            try:
                key = (cls, repr(value))
            except Exception:  # a repr that fails: do not memoise this value
                return fn(value)
        out = get(key, _MISS)
        if out is _MISS:
            out = fn(value)
            if len(cache) >= size:
                cache.clear()
            cache[key] = out
        return out

    return mask


def memoised(masker: Masker, size: int) -> tuple[Callable[[Any], Any], Callable[[list[Any]], list[Any]]]:
    """``masker``'s function per value and per list of values, sharing one memo of ``size`` entries
    when the masker asks for a memo (``memoise`` and ``deterministic``); the list form is the
    masker's :attr:`~Masker.batch` when it has one (one call per column per batch)."""
    batch = masker.batch
    if size <= 0 or not (masker.memoise and masker.deterministic):
        fn = masker.mask
        if batch is not None:
            return fn, batch.mask_many
        return fn, lambda values: list(map(fn, values))
    cache: dict[Any, Any] = {}
    memo = memoise(masker.mask, size, cache)
    if batch is not None:
        many_memo = batch.mask_many_memo
        return memo, lambda values: many_memo(values, cache, size)
    return memo, lambda values: list(map(memo, values))


def _native_hmac(
    key: bytes, *, domain: bytes = b"", output: str = "hex", digest_bytes: int = 32, length: int | None = None, prefix: str = ""
) -> Any:
    """A ``cdc_masking_native.KeyedHmac`` computing ``prefix + encode(hmac(key, domain + canonical_bytes(v))[:digest_bytes])[:length]``,
    or None without the accelerator."""
    native = native_module()
    if native is None:
        return None
    keyed = native.KeyedHmac
    return keyed(key, domain=domain, output=output, digest_bytes=digest_bytes, length=length, prefix=prefix, canonical=canonical_bytes)


def _hmac_state(key: bytes, domain: bytes = b"") -> tuple[Any, Any]:
    """HMAC-SHA256's two hash states with the key schedule absorbed (RFC 2104), ``domain`` prefixed to messages.

    Copying precomputed states is about twice as fast as ``hmac.digest`` per call in CPython.
    """
    block = key if len(key) <= 64 else hashlib.sha256(key).digest()
    block = block.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
    if domain:
        inner.update(domain)
    return inner, outer


def _hmac_fn(key: bytes, domain: bytes = b"") -> Callable[[bytes], bytes]:
    """HMAC-SHA256 (of ``domain + data``) as a function of the data."""
    inner, outer = _hmac_state(key, domain)
    inner_copy, outer_copy = inner.copy, outer.copy

    def digest(data: bytes) -> bytes:
        i = inner_copy()
        i.update(data)
        o = outer_copy()
        o.update(i.digest())
        return o.digest()  # type: ignore[no-any-return]

    return digest


def _output_bits(output: str, length: int | None, full_bits: int = 256) -> int:
    """Bits of hash an ``output`` encoding truncated to ``length`` characters carries."""
    if length is None:
        return full_bits
    return min(full_bits, length * (4 if output == "hex" else 6))


def _encoder(output: str, length: int | None) -> Callable[[bytes], str]:
    if output == "hex":
        if length is None:
            return bytes.hex
        return lambda d: d.hex()[:length]
    if length is None:
        return _b64url
    return lambda d: _b64url(d)[:length]


# --- built-in strategies -------------------------------------------------------------------------


class HmacStrategy:
    """Keyed HMAC-SHA256 of the value (default for PII). Options: key, output (hex|base64url), length, prefix."""

    def compile(self, options: Mapping[str, Any], context: StrategyContext) -> Masker:
        opts = _Options(options, context, {"key", "output", "length", "prefix"})
        key = context.key(opts.str_("key", context.hmac_key), "HMAC")
        output, length = opts.choice("output", "hex", ("hex", "base64url")), opts.int_("length", None, 8)
        encode = _encoder(output, length)
        prefix = opts.str_("prefix", "") or ""
        injective = _output_bits(output, length) >= INJECTIVE_BITS
        native = _native_hmac(key, output=output, length=length, prefix=prefix)
        if native is not None:
            return Masker(mask=native.mask, batch=native, memoise=True, injective=injective)
        inner, outer = _hmac_state(key)
        inner_copy, outer_copy = inner.copy, outer.copy

        def mask(value: Any) -> str:  # the hot path: hashing inlined
            i = inner_copy()
            i.update(value.encode("utf-8") if type(value) is str else canonical_bytes(value))
            o = outer_copy()
            o.update(i.digest())
            return prefix + encode(o.digest())

        return Masker(mask=mask, memoise=True, injective=injective)


_TOKEN = re.compile(r"^tok_([A-Za-z0-9][A-Za-z0-9-]{0,31})_([A-Za-z0-9_-]+)$")
_TOKEN_DOMAIN = b"cdc-token\0"  # domain separation: a token never equals an hmac output for the same key
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64url(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").translate(_URLSAFE).decode("ascii")


def identify_token(token: str) -> str | None:
    """The key id a ``tokenize`` token was made with (``tok_<key id>_<payload>``), or None if ``token`` is not one."""
    match = _TOKEN.match(token) if isinstance(token, str) else None
    return match.group(1) if match else None


def make_token(key: bytes, key_id: str, value: Any, length: int = 15) -> str:
    """The token of ``value`` under one key (used by :class:`TokenizeStrategy` and for verification)."""
    return f"tok_{key_id}_" + _b64url(_hmac_fn(key, _TOKEN_DOMAIN)(canonical_bytes(value))[:length])


class TokenizeStrategy:
    """Deterministic tokens carrying the key id, ``tok_<key id>_<base64url>`` (default for PHI). Options: key, length (bytes)."""

    def compile(self, options: Mapping[str, Any], context: StrategyContext) -> Masker:
        opts = _Options(options, context, {"key", "length"})
        key_id = opts.str_("key", context.token_key)
        key = context.key(key_id, "token")
        assert key_id is not None
        length = opts.int_("length", 15, 12)
        assert length is not None
        if length > 32:
            raise context.error("option length must be at most 32 (bytes of HMAC-SHA256)")
        head = f"tok_{key_id}_"
        native = _native_hmac(key, domain=_TOKEN_DOMAIN, output="base64url", digest_bytes=length, prefix=head)
        if native is not None:
            return Masker(mask=native.mask, batch=native, memoise=True)
        inner, outer = _hmac_state(key, _TOKEN_DOMAIN)
        inner_copy, outer_copy = inner.copy, outer.copy
        b2a, urlsafe = binascii.b2a_base64, _URLSAFE

        def mask(value: Any) -> str:  # the hot path: hashing and encoding inlined
            i = inner_copy()
            i.update(value.encode("utf-8") if type(value) is str else canonical_bytes(value))
            o = outer_copy()
            o.update(i.digest())
            return head + b2a(o.digest()[:length], newline=False).rstrip(b"=").translate(urlsafe).decode("ascii")

        return Masker(mask=mask, memoise=True)


class Sha256Strategy:
    """Salted SHA-256 (allowed, weaker than HMAC for low-entropy values). Options: salt (key id), output, length."""

    def compile(self, options: Mapping[str, Any], context: StrategyContext) -> Masker:
        opts = _Options(options, context, {"salt", "output", "length"})
        salt = context.key(opts.str_("salt", context.salt_key), "salt")
        output, length = opts.choice("output", "hex", ("hex", "base64url")), opts.int_("length", None, 8)
        encode = _encoder(output, length)
        base = hashlib.sha256(salt)

        def mask(value: Any) -> str:
            h = base.copy()
            h.update(canonical_bytes(value))
            return encode(h.digest())

        return Masker(mask=mask, memoise=True, injective=_output_bits(output, length) >= INJECTIVE_BITS)


class RedactStrategy:
    """A fixed replacement string. Option: replacement (default ``REDACTED``)."""

    def compile(self, options: Mapping[str, Any], context: StrategyContext) -> Masker:
        opts = _Options(options, context, {"replacement"})
        replacement = opts.str_("replacement", "REDACTED") or ""
        return Masker(mask=lambda _value: replacement, result_type=_text_if_needed, injective=False)


class NullStrategy:
    """Removes the value: the column is written as null (not allowed on primary-key columns)."""

    def compile(self, options: Mapping[str, Any], context: StrategyContext) -> Masker:
        _Options(options, context, set())
        return Masker(mask=lambda _value: None, result_type=same_type, injective=False, nulls=True)


class KeepLastStrategy:
    """Keeps the last N characters, masks the rest (values of N characters or fewer are masked entirely). Options: n, mask_char."""

    def compile(self, options: Mapping[str, Any], context: StrategyContext) -> Masker:
        opts = _Options(options, context, {"n", "mask_char"})
        n = opts.int_("n", 4, 0)
        assert n is not None
        char = opts.str_("mask_char", "*") or "*"
        if len(char) != 1:
            raise context.error("option mask_char must be one character")

        def mask(value: Any) -> str:
            text = canonical_text(value)
            size = len(text)
            if size <= n:
                return char * size
            return char * (size - n) + text[size - n :]

        return Masker(mask=mask, injective=False)


class TruncateStrategy:
    """Keeps the first N characters (values of N characters or fewer are masked entirely). Options: length, mask_char."""

    def compile(self, options: Mapping[str, Any], context: StrategyContext) -> Masker:
        opts = _Options(options, context, {"length", "mask_char"})
        length = opts.int_("length", 3, 0)
        assert length is not None
        char = opts.str_("mask_char", "*") or "*"
        if len(char) != 1:
            raise context.error("option mask_char must be one character")

        def mask(value: Any) -> str:
            text = canonical_text(value)
            return text[:length] if len(text) > length else char * len(text)

        return Masker(mask=mask, injective=False)


_EMAIL_DOMAIN = b"cdc-email\0"


def _no_hash(_part: str) -> str:
    raise AssertionError("email: no part is hashed in this configuration")


class EmailStrategy:
    """Masks an address's local part (HMAC or redaction) and keeps or HMACs its domain. Options: key, local, domain, length."""

    def compile(self, options: Mapping[str, Any], context: StrategyContext) -> Masker:
        opts = _Options(options, context, {"key", "local", "domain", "length"})
        local_mode = opts.choice("local", "hmac", ("hmac", "redact"))
        domain_mode = opts.choice("domain", "keep", ("keep", "hmac"))
        length = opts.int_("length", 16, 8)
        assert length is not None
        hashed: Callable[[str], str] = _no_hash
        if local_mode == "hmac" or domain_mode == "hmac":
            key = context.key(opts.str_("key", context.hmac_key), "HMAC")
            native = _native_hmac(key, domain=_EMAIL_DOMAIN, length=length)
            if native is not None:
                hashed = native.mask
            else:
                digest = _hmac_fn(key, _EMAIL_DOMAIN)
                cut = length

                def hashed(part: str) -> str:
                    return digest(part.encode("utf-8")).hex()[:cut]

        def mask(value: Any) -> str:
            text = canonical_text(value)
            local, at, domain = text.rpartition("@")
            if not at:
                local, domain = text, ""
            masked_local = hashed(local) if local_mode == "hmac" else "***"
            if not at:
                return masked_local
            domain = hashed(domain.lower()) + ".invalid" if domain_mode == "hmac" else domain.lower()
            return f"{masked_local}@{domain}"

        # the local part is hex, truncated to ``length`` characters (default 16 = 64 bits: not injective)
        return Masker(mask=mask, injective=local_mode == "hmac" and length * 4 >= INJECTIVE_BITS, memoise=True)


BUILTIN_STRATEGIES: dict[str, MaskingStrategy] = {
    "hmac": HmacStrategy(),
    "tokenize": TokenizeStrategy(),
    "sha256": Sha256Strategy(),
    "redact": RedactStrategy(),
    "null": NullStrategy(),
    "keep_last": KeepLastStrategy(),
    "email": EmailStrategy(),
    "truncate": TruncateStrategy(),
}
