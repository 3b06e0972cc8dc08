//! Optional accelerator of `cdc-sink-clickhouse`: the TabSeparated cell fields of one
//! latest-state row (value, version, expiry per simple column) in one call.
//!
//! `TableLayout._cells` in `cdc_sink_clickhouse/layout.py` is the reference; this module gives the
//! same bytes (a hypothesis test compares both) or returns `None`, and the caller then runs the
//! Python encoder for the whole event. `None` covers everything outside the fast path — a change
//! that is not exactly a `Cell`, a timestamp or expiry that is not a machine integer or is out of
//! range, an integer out of its column's range, any exception from a Python value encoder — so
//! rejections keep the Python messages and types.

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{
    timezone_utc, PyBool, PyBytes, PyDateAccess, PyDateTime, PyDict, PyFloat, PyInt, PyList,
    PyString, PyTimeAccess, PyType, PyTzInfoAccess,
};

const KIND_CALL: u8 = 0;
const KIND_INT: u8 = 1;
const KIND_TEXT: u8 = 2;
const KIND_DOUBLE: u8 = 3;
const KIND_BOOL: u8 = 4;
/// A `datetime` as epoch milliseconds (`_ts_ms`), rejected outside `lo..=hi` (`_ts64_enc`).
const KIND_TS: u8 = 5;
const MAX_TEXT: &str = "9223372036854775807";

/// Byte offsets of fields of an attrs-slotted class (its `__slots__` member descriptors), read
/// straight from an instance of exactly that class instead of a `getattr` per field.
struct Slots {
    ty: Py<PyType>,
    offsets: Vec<isize>,
}

/// `Py_T_OBJECT_EX`: the member type of a `__slots__` entry.
const T_OBJECT_EX: std::os::raw::c_int = 16;

impl Slots {
    fn new(ty: &Bound<'_, PyType>, names: &[&str]) -> PyResult<Self> {
        let mut offsets = Vec::with_capacity(names.len());
        for name in names {
            let descr = ty.getattr(*name)?;
            // SAFETY: the type check makes `descr` a member descriptor, whose `d_member` is a
            // `PyMemberDef` (pyo3-ffi declares it as `PyGetSetDef`, hence the cast).
            let offset = unsafe {
                if ffi::Py_TYPE(descr.as_ptr()) != std::ptr::addr_of_mut!(ffi::PyMemberDescr_Type) {
                    return Err(PyTypeError::new_err(format!(
                        "{name} is not a __slots__ field"
                    )));
                }
                let member = (*(descr.as_ptr() as *mut ffi::PyMemberDescrObject)).d_member
                    as *const ffi::PyMemberDef;
                if (*member).type_code != T_OBJECT_EX {
                    return Err(PyTypeError::new_err(format!(
                        "{name} is not an object slot"
                    )));
                }
                (*member).offset
            };
            offsets.push(offset);
        }
        Ok(Slots {
            ty: ty.clone().unbind(),
            offsets,
        })
    }

    fn is(&self, obj: &Bound<'_, PyAny>) -> bool {
        obj.get_type().is(self.ty.bind(obj.py()))
    }

    /// Field `i` of `obj`; None when `obj` is not exactly of this class or the field is unset.
    fn get<'py>(&self, obj: &Bound<'py, PyAny>, i: usize) -> Option<Bound<'py, PyAny>> {
        if unsafe { ffi::Py_TYPE(obj.as_ptr()) } != self.ty.as_ptr() as *mut ffi::PyTypeObject {
            return None;
        }
        // SAFETY: `obj`'s type is exactly the class the offsets were read from, so each offset is
        // a `PyObject *` slot inside the instance; the GIL is held.
        unsafe {
            let slot =
                (obj.as_ptr() as *const u8).offset(self.offsets[i]) as *const *mut ffi::PyObject;
            let p = *slot;
            if p.is_null() {
                None
            } else {
                Some(Bound::from_borrowed_ptr(obj.py(), p))
            }
        }
    }
}

const EV_FIELDS: &[&str] = &[
    "kind",
    "static",
    "partition_deletion",
    "range_deletion",
    "cells",
    "key",
    "row_deletion",
    "liveness",
];
const EV_KIND: usize = 0;
const EV_STATIC: usize = 1;
const EV_PD: usize = 2;
const EV_RANGE: usize = 3;
const EV_CELLS: usize = 4;
const EV_KEY: usize = 5;
const EV_ROWDEL: usize = 6;
const EV_LIVENESS: usize = 7;
const CELL_FIELDS: &[&str] = &[
    "timestamp",
    "value",
    "tombstone",
    "ttl",
    "local_deletion_time",
];
const C_TS: usize = 0;
const C_VALUE: usize = 1;
const C_TOMB: usize = 2;
const C_TTL: usize = 3;
const C_LDT: usize = 4;
const LIVENESS_FIELDS: &[&str] = &["timestamp", "ttl", "local_deletion_time"];
const DELETION_FIELDS: &[&str] = &["timestamp"];

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
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        // Only ASCII bytes are escaped, and a UTF-8 multi-byte sequence has no ASCII byte: the
        // slices below start and end on character boundaries.
        let esc = match b {
            b'\\' => "\\\\",
            b'\t' => "\\t",
            b'\n' => "\\n",
            b'\r' => "\\r",
            0 => "\\0",
            8 => "\\b",
            12 => "\\f",
            _ => continue,
        };
        out.push_str(&text[start..i]);
        out.push_str(esc);
        start = i + 1;
    }
    out.push_str(&text[start..]);
}

/// Decimal text of an unsigned integer, straight into `out` (no allocation per field).
#[inline]
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
    // SAFETY: the digits are ASCII.
    out.push_str(unsafe { std::str::from_utf8_unchecked(&buf[i..]) });
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
    let days = days_from_civil(
        i64::from(v.get_year()),
        i64::from(v.get_month()),
        i64::from(v.get_day()),
    );
    let secs = days * 86_400
        + i64::from(v.get_hour()) * 3600
        + i64::from(v.get_minute()) * 60
        + i64::from(v.get_second());
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
    event: Slots,
    cell: Slots,
    liveness: Slots,
    deletion: Slots,
    version_limit: i64,
    no_elem: String,
}

impl RowEncoder {
    fn cell(&self, spec: &Spec, change: &Bound<'_, PyAny>, out: &mut String) -> Option<()> {
        let c = &self.cell;
        if !c.is(change) {
            return None;
        }
        let ts = exact_i64(&c.get(change, C_TS)?)?;
        if ts <= -self.version_limit || ts >= self.version_limit {
            return None;
        }
        let ttl = c.get(change, C_TTL)?;
        let ldt = c.get(change, C_LDT)?;
        let expiry = if !ttl.is_none() && !ldt.is_none() {
            Some(exact_i64(&ldt)?)
        } else {
            None
        };
        let value = c.get(change, C_VALUE)?;
        let dead = c.get(change, C_TOMB)?.is_truthy().ok()? || value.is_none();
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

    /// Appends the event's line (no newline) to `out`; None when declined (`out` may then hold a
    /// partial line: the caller truncates it).
    fn line(&self, event: &Bound<'_, PyAny>, out: &mut String) -> Option<()> {
        let py = event.py();
        // Only a plain row write: partition/range deletions and static rows go the Python way.
        let ev = &self.event;
        if !ev.is(event)
            || !ev.get(event, EV_KIND)?.is(self.row_kind.bind(py))
            || ev.get(event, EV_STATIC)?.is_truthy().ok()?
            || !ev.get(event, EV_PD)?.is_none()
            || !ev.get(event, EV_RANGE)?.is_none()
        {
            return None;
        }
        let cells = ev.get(event, EV_CELLS)?;
        let cells = cells.downcast::<PyDict>().ok()?;
        let key = ev.get(event, EV_KEY)?;
        let key = key.downcast::<PyDict>().ok()?;
        self.keys(&self.pk, key, out)?;
        self.keys(&self.ck, key, out)?;
        for k in &self.ck {
            let value = key.get_item(k.name.bind(py)).ok()??;
            match k.hex_mode {
                HEX_INT_ASC => push_hex16(out, (exact_i64(&value)? as u64) ^ (1u64 << 63)),
                HEX_INT_DESC => push_hex16(out, !((exact_i64(&value)? as u64) ^ (1u64 << 63))),
                _ => {
                    let text = k.hex.bind(py).call1((value,)).ok()?;
                    out.push_str(text.downcast_exact::<PyString>().ok()?.to_str().ok()?);
                }
            }
        }
        out.push('\t');
        let rd = ev.get(event, EV_ROWDEL)?;
        if rd.is_none() {
            out.push_str(MIN_TEXT);
        } else {
            if !self.deletion.is(&rd) {
                return None;
            }
            push_i64(out, exact_i64(&self.deletion.get(&rd, 0)?)?);
        }
        out.push('\t');
        let lv = ev.get(event, EV_LIVENESS)?;
        if lv.is_none() {
            out.push_str(MIN_TEXT);
            out.push('\t');
            out.push_str(MIN_TEXT);
        } else {
            let l = &self.liveness;
            if !l.is(&lv) {
                return None;
            }
            push_i64(out, exact_i64(&l.get(&lv, 0)?)?);
            out.push('\t');
            let ttl = l.get(&lv, 1)?;
            let ldt = l.get(&lv, 2)?;
            if ttl.is_none() || ldt.is_none() {
                out.push_str(MIN_TEXT);
            } else {
                push_i64(out, exact_i64(&ldt)?);
            }
        }
        // Every cell name must be a column of the table (else Python rejects the event): when each
        // one is a regular column, the lookups below found them all and no further check is needed.
        let mut found = 0usize;
        for spec in &self.cells {
            out.push('\t');
            match cells.get_item(spec.name.bind(py)).ok()? {
                None => out.push_str(&spec.absent),
                Some(change) => {
                    found += 1;
                    if change.is_none() {
                        out.push_str(&spec.absent);
                    } else {
                        self.cell(spec, &change, out)?;
                    }
                }
            }
        }
        if found != cells.len() {
            let known = self.known.bind(py);
            for name in cells.keys() {
                if !known.contains(name).ok()? {
                    return None;
                }
            }
        }
        if !self.no_elem.is_empty() {
            out.push('\t');
            out.push_str(&self.no_elem);
        }
        Some(())
    }
}

type SpecTuple<'py> = (Bound<'py, PyString>, u8, PyObject, String, String, i64, i64);
type KeyTuple<'py> = (Bound<'py, PyString>, u8, PyObject, i64, i64, PyObject, u8);

fn key_specs(keys: Vec<KeyTuple<'_>>) -> Vec<KeySpec> {
    keys.into_iter()
        .map(|(name, kind, encode, lo, hi, hex, hex_mode)| KeySpec {
            name: name.clone().unbind(),
            value: Spec {
                name: name.unbind(),
                kind,
                encode,
                default: String::new(),
                absent: String::new(),
                lo,
                hi,
            },
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
        types: (
            Bound<'_, PyType>,
            Bound<'_, PyType>,
            Bound<'_, PyType>,
            Bound<'_, PyType>,
        ),
        version_limit: i64,
        no_elem: String,
    ) -> PyResult<Self> {
        let (event_type, cell_type, liveness_type, deletion_type) = types;
        let cells = cells
            .into_iter()
            .map(|(name, kind, encode, default, absent, lo, hi)| Spec {
                name: name.unbind(),
                kind,
                encode,
                default,
                absent,
                lo,
                hi,
            })
            .collect();
        Ok(RowEncoder {
            pk: key_specs(pk),
            ck: key_specs(ck),
            cells,
            known,
            row_kind,
            event: Slots::new(&event_type, EV_FIELDS)?,
            cell: Slots::new(&cell_type, CELL_FIELDS)?,
            liveness: Slots::new(&liveness_type, LIVENESS_FIELDS)?,
            deletion: Slots::new(&deletion_type, DELETION_FIELDS)?,
            version_limit,
            no_elem,
        })
    }

    /// The event's `__rows_in` line, or None when the Python encoder must handle the event.
    fn encode(&self, event: &Bound<'_, PyAny>) -> Option<String> {
        let mut out = String::with_capacity(64 + 40 * self.cells.len());
        self.line(event, &mut out)?;
        Some(out)
    }

    /// The lines of a list of events in one payload: `(payload, ends, declined)`. `payload` is the
    /// UTF-8 of every line `encode` gives, each followed by a newline, in list order; `ends[j]` is
    /// the byte offset just after the j-th taken event's line; `declined` lists the indexes of the
    /// events `encode` declines (None), which are not in the payload.
    fn encode_chunk<'py>(
        &self,
        events: &Bound<'py, PyList>,
    ) -> (Bound<'py, PyBytes>, Vec<usize>, Vec<usize>) {
        let py = events.py();
        let mut out = String::with_capacity(events.len() * (96 + 64 * self.cells.len()));
        let mut ends = Vec::with_capacity(events.len());
        let mut declined = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let mark = out.len();
            if self.line(&event, &mut out).is_some() {
                out.push('\n');
                ends.push(out.len());
            } else {
                out.truncate(mark);
                declined.push(i);
            }
        }
        (PyBytes::new(py, out.as_bytes()), ends, declined)
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
