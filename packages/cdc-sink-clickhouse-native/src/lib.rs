//! Optional accelerator of `cdc-sink-clickhouse`: the TabSeparated cell fields of one
//! latest-state row (value, version, expiry per simple column) in one call.
//!
//! `TableLayout._cells` in `cdc_sink_clickhouse/layout.py` is the reference; this module gives the
//! same bytes (a hypothesis test compares both) or returns `None`, and the caller then runs the
//! Python encoder for the whole event. `None` covers everything outside the fast path — a change
//! that is not exactly a `Cell`, a timestamp or expiry that is not a machine integer or is out of
//! range, an integer out of its column's range, any exception from a Python value encoder — so
//! rejections keep the Python messages and types.

use pyo3::prelude::*;
use pyo3::intern;
use pyo3::types::{
    timezone_utc, PyBool, PyDateAccess, PyDateTime, PyDict, PyFloat, PyInt, PyString, PyTimeAccess, PyType, PyTzInfoAccess,
};

const KIND_CALL: u8 = 0;
const KIND_INT: u8 = 1;
const KIND_TEXT: u8 = 2;
const KIND_DOUBLE: u8 = 3;
const KIND_BOOL: u8 = 4;
/// A `datetime` as epoch milliseconds (`_ts_ms`), rejected outside `lo..=hi` (`_ts64_enc`).
const KIND_TS: u8 = 5;
const MAX_TEXT: &str = "9223372036854775807";

struct Spec {
    name: Py<PyString>,
    kind: u8,
    encode: PyObject,
    default: String,
    absent: String,
    lo: i64,
    hi: i64,
}

/// `tsv_escape`: backslash, tab, newline, carriage return, NUL, backspace and form feed escaped.
fn push_tsv(text: &str, out: &mut String) {
    for ch in text.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c => out.push(c),
        }
    }
}

/// Decimal text of an unsigned integer, straight into `out` (no allocation per field).
fn push_u64(out: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or_default());
}

fn push_i64(out: &mut String, v: i64) {
    if v < 0 {
        out.push('-');
    }
    push_u64(out, v.unsigned_abs());
}

/// Sixteen lowercase hex digits (`"%016x"`).
fn push_hex16(out: &mut String, v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        out.push(HEX[((v >> (shift * 4)) & 15) as usize] as char);
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Epoch milliseconds of a naive (taken as UTC) or UTC `datetime`, floored like `_ts_ms`; None for
/// any other time zone (the Python encoder converts those).
fn datetime_ms(value: &Bound<'_, PyAny>) -> Option<i64> {
    let v = value.downcast_exact::<PyDateTime>().ok()?;
    if let Some(tz) = v.get_tzinfo() {
        if !tz.is(&timezone_utc(value.py())) {
            return None;
        }
    }
    let days = days_from_civil(i64::from(v.get_year()), i64::from(v.get_month()), i64::from(v.get_day()));
    let secs = days * 86_400 + i64::from(v.get_hour()) * 3600 + i64::from(v.get_minute()) * 60 + i64::from(v.get_second());
    let micros = secs * 1_000_000 + i64::from(v.get_microsecond());
    Some(micros.div_euclid(1000))
}

fn exact_i64(obj: &Bound<'_, PyAny>) -> Option<i64> {
    if obj.is_exact_instance_of::<PyInt>() {
        obj.extract::<i64>().ok()
    } else {
        None
    }
}

/// A clustering column's order key as hex: via the Python function, or offset binary for integers.
const HEX_CALL: u8 = 0;
const HEX_INT_ASC: u8 = 1;
const HEX_INT_DESC: u8 = 2;
const MIN_TEXT: &str = "-9223372036854775808";

struct KeySpec {
    name: Py<PyString>,
    value: Spec,
    hex: PyObject,
    hex_mode: u8,
}

/// The value's field text, or None (the Python encoder decides: it may reject the value).
fn push_value(spec: &Spec, value: &Bound<'_, PyAny>, out: &mut String) -> Option<()> {
    match spec.kind {
        KIND_INT if value.is_exact_instance_of::<PyInt>() => {
            let v = value.extract::<i64>().ok()?;
            if v < spec.lo || v > spec.hi {
                return None;
            }
            push_i64(out, v);
            return Some(());
        }
        KIND_TEXT => {
            let s = value.downcast_exact::<PyString>().ok()?;
            push_tsv(s.to_str().ok()?, out);
            return Some(());
        }
        KIND_DOUBLE if value.is_exact_instance_of::<PyFloat>() => {
            let v: f64 = value.extract().ok()?;
            push_u64(out, v.to_bits());
            return Some(());
        }
        KIND_TS => {
            if let Some(ms) = datetime_ms(value) {
                if ms < spec.lo || ms > spec.hi {
                    return None;
                }
                push_i64(out, ms);
                return Some(());
            }
        }
        KIND_BOOL if value.is_exact_instance_of::<PyBool>() => {
            out.push_str(if value.is_truthy().ok()? { "1" } else { "0" });
            return Some(());
        }
        _ => {}
    }
    let text = spec.encode.bind(value.py()).call1((value,)).ok()?;
    let text = text.downcast_exact::<PyString>().ok()?;
    out.push_str(text.to_str().ok()?);
    Some(())
}

#[pyclass(frozen, module = "cdc_sink_clickhouse_native")]
struct RowEncoder {
    pk: Vec<KeySpec>,
    ck: Vec<KeySpec>,
    cells: Vec<Spec>,
    known: PyObject,
    row_kind: PyObject,
    cell_type: Py<PyType>,
    version_limit: i64,
    no_elem: String,
}

impl RowEncoder {
    fn cell(&self, spec: &Spec, change: &Bound<'_, PyAny>, out: &mut String) -> Option<()> {
        let py = change.py();
        if !change.get_type().is(self.cell_type.bind(py)) {
            return None;
        }
        let ts = exact_i64(&change.getattr(intern!(py, "timestamp")).ok()?)?;
        if ts <= -self.version_limit || ts >= self.version_limit {
            return None;
        }
        let ttl = change.getattr(intern!(py, "ttl")).ok()?;
        let ldt = change.getattr(intern!(py, "local_deletion_time")).ok()?;
        let expiry = if !ttl.is_none() && !ldt.is_none() { Some(exact_i64(&ldt)?) } else { None };
        let value = change.getattr(intern!(py, "value")).ok()?;
        let dead = change.getattr(intern!(py, "tombstone")).ok()?.is_truthy().ok()? || value.is_none();
        let version = if dead {
            out.push_str(&spec.default);
            ts * 4 + 2
        } else {
            push_value(spec, &value, out)?;
            if expiry.is_some() {
                ts * 4 + 1
            } else {
                ts * 4
            }
        };
        out.push('\t');
        push_i64(out, version);
        out.push('\t');
        match expiry {
            Some(x) => push_i64(out, x),
            None => out.push_str(MAX_TEXT),
        }
        Some(())
    }

    fn keys(&self, specs: &[KeySpec], key: &Bound<'_, PyDict>, out: &mut String) -> Option<()> {
        for k in specs {
            let value = key.get_item(k.name.bind(key.py())).ok()??;
            if value.is_none() {
                return None;
            }
            push_value(&k.value, &value, out)?;
            out.push('\t');
        }
        Some(())
    }

    fn line(&self, event: &Bound<'_, PyAny>) -> Option<String> {
        let py = event.py();
        // Only a plain row write: partition/range deletions and static rows go the Python way.
        if !event.getattr(intern!(py, "kind")).ok()?.is(self.row_kind.bind(py))
            || event.getattr(intern!(py, "static")).ok()?.is_truthy().ok()?
            || !event.getattr(intern!(py, "partition_deletion")).ok()?.is_none()
            || !event.getattr(intern!(py, "range_deletion")).ok()?.is_none()
        {
            return None;
        }
        let cells = event.getattr(intern!(py, "cells")).ok()?;
        let cells = cells.downcast::<PyDict>().ok()?;
        let known = self.known.bind(py);
        for name in cells.keys() {
            if !known.contains(name).ok()? {
                return None;
            }
        }
        let key = event.getattr(intern!(py, "key")).ok()?;
        let key = key.downcast::<PyDict>().ok()?;
        let mut out = String::with_capacity(64 + 40 * self.cells.len());
        self.keys(&self.pk, key, &mut out)?;
        self.keys(&self.ck, key, &mut out)?;
        for k in &self.ck {
            let value = key.get_item(k.name.bind(py)).ok()??;
            match k.hex_mode {
                HEX_INT_ASC => push_hex16(&mut out, (exact_i64(&value)? as u64) ^ (1u64 << 63)),
                HEX_INT_DESC => push_hex16(&mut out, !((exact_i64(&value)? as u64) ^ (1u64 << 63))),
                _ => {
                    let text = k.hex.bind(py).call1((value,)).ok()?;
                    out.push_str(text.downcast_exact::<PyString>().ok()?.to_str().ok()?);
                }
            }
        }
        out.push('\t');
        let rd = event.getattr(intern!(py, "row_deletion")).ok()?;
        if rd.is_none() {
            out.push_str(MIN_TEXT);
        } else {
            push_i64(&mut out, exact_i64(&rd.getattr(intern!(py, "timestamp")).ok()?)?);
        }
        out.push('\t');
        let lv = event.getattr(intern!(py, "liveness")).ok()?;
        if lv.is_none() {
            out.push_str(MIN_TEXT);
            out.push('\t');
            out.push_str(MIN_TEXT);
        } else {
            push_i64(&mut out, exact_i64(&lv.getattr(intern!(py, "timestamp")).ok()?)?);
            out.push('\t');
            let ttl = lv.getattr(intern!(py, "ttl")).ok()?;
            let ldt = lv.getattr(intern!(py, "local_deletion_time")).ok()?;
            if ttl.is_none() || ldt.is_none() {
                out.push_str(MIN_TEXT);
            } else {
                push_i64(&mut out, exact_i64(&ldt)?);
            }
        }
        for spec in &self.cells {
            out.push('\t');
            match cells.get_item(spec.name.bind(py)).ok()? {
                None => out.push_str(&spec.absent),
                Some(change) if change.is_none() => out.push_str(&spec.absent),
                Some(change) => self.cell(spec, &change, &mut out)?,
            }
        }
        if !self.no_elem.is_empty() {
            out.push('\t');
            out.push_str(&self.no_elem);
        }
        Some(out)
    }
}

type SpecTuple<'py> = (Bound<'py, PyString>, u8, PyObject, String, String, i64, i64);
type KeyTuple<'py> = (Bound<'py, PyString>, u8, PyObject, i64, i64, PyObject, u8);

fn key_specs(keys: Vec<KeyTuple<'_>>) -> Vec<KeySpec> {
    keys.into_iter()
        .map(|(name, kind, encode, lo, hi, hex, hex_mode)| KeySpec {
            name: name.clone().unbind(),
            value: Spec { name: name.unbind(), kind, encode, default: String::new(), absent: String::new(), lo, hi },
            hex,
            hex_mode,
        })
        .collect()
}

#[pymethods]
impl RowEncoder {
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        pk: Vec<KeyTuple<'_>>,
        ck: Vec<KeyTuple<'_>>,
        cells: Vec<SpecTuple<'_>>,
        known: PyObject,
        row_kind: PyObject,
        cell_type: Py<PyType>,
        version_limit: i64,
        no_elem: String,
    ) -> Self {
        let cells = cells
            .into_iter()
            .map(|(name, kind, encode, default, absent, lo, hi)| Spec { name: name.unbind(), kind, encode, default, absent, lo, hi })
            .collect();
        RowEncoder { pk: key_specs(pk), ck: key_specs(ck), cells, known, row_kind, cell_type, version_limit, no_elem }
    }

    /// The event's `__rows_in` line, or None when the Python encoder must handle the event.
    fn encode(&self, event: &Bound<'_, PyAny>) -> Option<String> {
        self.line(event)
    }
}

#[pymodule]
fn cdc_sink_clickhouse_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("KIND_CALL", KIND_CALL)?;
    m.add("KIND_INT", KIND_INT)?;
    m.add("KIND_TEXT", KIND_TEXT)?;
    m.add("KIND_DOUBLE", KIND_DOUBLE)?;
    m.add("KIND_BOOL", KIND_BOOL)?;
    m.add("KIND_TS", KIND_TS)?;
    m.add("HEX_CALL", HEX_CALL)?;
    m.add("HEX_INT_ASC", HEX_INT_ASC)?;
    m.add("HEX_INT_DESC", HEX_INT_DESC)?;
    m.add_class::<RowEncoder>()?;
    Ok(())
}
