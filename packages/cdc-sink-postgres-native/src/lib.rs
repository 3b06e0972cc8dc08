//! Optional accelerator of `cdc-sink-postgres`: the binary `COPY` payload of a batch's staging
//! records, built in one call.
//!
//! The reference is asyncpg's `copy_records_to_table` (its per-type binary encoders in
//! `asyncpg/pgproto/codecs`): every value accepted here is encoded the way asyncpg encodes it
//! (the tests compare the staged values of both through the real server).
//! Anything else — a type code not listed, a Python value of an unexpected class, an int out of
//! range, a non-finite Decimal, a datetime not in `datetime.timezone.utc`, text with lone
//! surrogates — makes `encode_copy` return `None`, and the caller sends the records through
//! asyncpg instead (which then raises, or encodes, exactly as before).
//!
//! Format (PostgreSQL docs, "COPY … Binary Format"): the 11-byte signature `PGCOPY\n\377\r\n\0`, an
//! int32 flags field and an int32 header-extension length (both 0); per tuple an int16 field count,
//! then per field an int32 length (-1 for NULL) and the value in the type's `send` format
//! (big-endian); the trailer is an int16 -1.

use pyo3::prelude::*;
use pyo3::types::{
    timezone_utc, PyBool, PyByteArray, PyBytes, PyDate, PyDateAccess, PyDateTime, PyDict, PyFloat, PyList, PyString, PyTimeAccess, PyTuple,
    PyType, PyTzInfoAccess,
};

/// Type codes (the order of `TYPE_CODES` in the stub).
const INT2: u8 = 0;
const INT4: u8 = 1;
const INT8: u8 = 2;
const FLOAT4: u8 = 3;
const FLOAT8: u8 = 4;
const BOOL: u8 = 5;
const TEXT: u8 = 6;
const BYTEA: u8 = 7;
const UUID: u8 = 8;
const TIMESTAMPTZ: u8 = 9;
const DATE: u8 = 10;
const NUMERIC: u8 = 11;
const LAST_CODE: u8 = NUMERIC;

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Days from 0001-01-01 (ordinal 1) to 2000-01-01 (PostgreSQL's epoch): `date(2000, 1, 1).toordinal()`.
const PG_EPOCH_ORDINAL: i64 = 730_120;
/// asyncpg maps these two instants (µs since 2000-01-01) to ±infinity (`_encode_time`).
const INFINITY_TS: i64 = 252_455_615_999_999_999;
const NEGATIVE_INFINITY_TS: i64 = -63_082_281_600_000_000;
/// asyncpg maps `date.max` / `date.min` to ±infinity (`date_encode`).
const MAX_DATE_ORDINAL: i64 = 3_652_059;
const MIN_DATE_ORDINAL: i64 = 1;
const NUMERIC_NEG: u16 = 0x4000;
const MAX_DSCALE: i64 = 0x3FFF;

/// Not encodable here: the caller falls back to asyncpg.
struct Decline;

type Enc<T> = Result<T, Decline>;

fn ordinal(year: i64, month: i64, day: i64) -> i64 {
    // Proleptic Gregorian, as datetime.date.toordinal (0001-01-01 is 1).
    const BEFORE_MONTH: [i64; 13] = [0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let y = year - 1;
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    y * 365 + y / 4 - y / 100 + y / 400 + BEFORE_MONTH[month as usize] + i64::from(leap && month > 2) + day
}

struct Types<'py> {
    uuid: Bound<'py, PyType>,
    decimal: Bound<'py, PyType>,
    utc: Bound<'py, PyAny>,
}

fn put_len(out: &mut Vec<u8>, n: usize) -> Enc<()> {
    let n = i32::try_from(n).map_err(|_| Decline)?;
    out.extend_from_slice(&n.to_be_bytes());
    Ok(())
}

fn int_of<T: for<'a> FromPyObject<'a>>(v: &Bound<'_, PyAny>) -> Enc<T> {
    // asyncpg accepts ints (and bools, which are ints); other classes it converts with __int__:
    // left to asyncpg.
    if v.is_instance_of::<pyo3::types::PyInt>() {
        v.extract::<T>().map_err(|_| Decline)
    } else {
        Err(Decline)
    }
}

fn encode_numeric(out: &mut Vec<u8>, text: &str) -> Enc<()> {
    // `str(Decimal)`: [-]digits[.digits][E[+-]n] (NaN/Infinity declined: asyncpg encodes them).
    let bytes = text.as_bytes();
    let (negative, rest) = match bytes.first() {
        Some(b'-') => (true, &bytes[1..]),
        _ => (false, bytes),
    };
    let mut digits: Vec<u8> = Vec::with_capacity(rest.len());
    let mut frac: i64 = 0;
    let mut seen_point = false;
    let mut i = 0;
    while i < rest.len() {
        match rest[i] {
            c @ b'0'..=b'9' => {
                digits.push(c - b'0');
                if seen_point {
                    frac += 1;
                }
            }
            b'.' if !seen_point => seen_point = true,
            b'E' | b'e' => break,
            _ => return Err(Decline),
        }
        i += 1;
    }
    let mut exponent: i64 = 0;
    if i < rest.len() {
        exponent = std::str::from_utf8(&rest[i + 1..])
            .map_err(|_| Decline)?
            .trim_start_matches('+')
            .parse()
            .map_err(|_| Decline)?;
    }
    if digits.is_empty() {
        return Err(Decline);
    }
    exponent -= frac;
    // The coefficient as Decimal.as_tuple() gives it: no leading zeros, at least one digit.
    let first = digits.iter().position(|&d| d != 0).unwrap_or(digits.len() - 1);
    let digits = &digits[first..];
    // asyncpg's numeric_encode_binary, step by step.
    if exponent < 0 && -exponent > MAX_DSCALE {
        return Err(Decline);
    }
    let n = digits.len() as i64;
    let dweight = n + exponent - 1;
    let weight = if dweight >= 0 {
        (dweight + 4) / 4 - 1
    } else {
        -((-dweight - 1) / 4 + 1)
    };
    if weight > 0xFFFF {
        return Err(Decline);
    }
    let padding = (weight + 1) * 4 - (dweight + 1);
    let ngroups = (n + padding + 3) / 4;
    if ngroups > 0xFFFF {
        return Err(Decline);
    }
    let dscale: i64 = if exponent < 0 { -exponent } else { 0 };
    put_len(out, 8 + 2 * ngroups as usize)?;
    out.extend_from_slice(&(ngroups as i16).to_be_bytes());
    out.extend_from_slice(&(weight as i16).to_be_bytes());
    out.extend_from_slice(&(if negative { NUMERIC_NEG } else { 0 }).to_be_bytes());
    out.extend_from_slice(&(dscale as i16).to_be_bytes());
    // Digit j of the padded sequence (4 zeros, the digits, 4 zeros) as asyncpg indexes it.
    let at = |j: i64| -> i16 {
        let k = j - 4;
        if (0..n).contains(&k) {
            i16::from(digits[k as usize])
        } else {
            0
        }
    };
    let mut j = 4 - padding;
    for _ in 0..ngroups {
        let g = at(j) * 1000 + at(j + 1) * 100 + at(j + 2) * 10 + at(j + 3);
        out.extend_from_slice(&g.to_be_bytes());
        j += 4;
    }
    Ok(())
}

fn encode_value(out: &mut Vec<u8>, code: u8, v: &Bound<'_, PyAny>, types: &Types<'_>) -> Enc<()> {
    if v.is_none() {
        out.extend_from_slice(&(-1i32).to_be_bytes());
        return Ok(());
    }
    match code {
        INT2 => {
            out.extend_from_slice(&2i32.to_be_bytes());
            out.extend_from_slice(&int_of::<i16>(v)?.to_be_bytes());
        }
        INT4 => {
            out.extend_from_slice(&4i32.to_be_bytes());
            out.extend_from_slice(&int_of::<i32>(v)?.to_be_bytes());
        }
        INT8 => {
            out.extend_from_slice(&8i32.to_be_bytes());
            out.extend_from_slice(&int_of::<i64>(v)?.to_be_bytes());
        }
        FLOAT4 | FLOAT8 => {
            // asyncpg: PyFloat_AsDouble (floats and ints); anything else is left to it.
            let d: f64 = if let Ok(f) = v.downcast::<PyFloat>() {
                f.value()
            } else if v.is_instance_of::<pyo3::types::PyInt>() {
                v.extract::<f64>().map_err(|_| Decline)?
            } else {
                return Err(Decline);
            };
            if code == FLOAT4 {
                let f = d as f32;
                if f.is_infinite() && !d.is_infinite() {
                    return Err(Decline); // asyncpg raises "value out of float32 range"
                }
                out.extend_from_slice(&4i32.to_be_bytes());
                out.extend_from_slice(&f.to_bits().to_be_bytes());
            } else {
                out.extend_from_slice(&8i32.to_be_bytes());
                out.extend_from_slice(&d.to_bits().to_be_bytes());
            }
        }
        BOOL => {
            let b = v.downcast::<PyBool>().map_err(|_| Decline)?;
            out.extend_from_slice(&1i32.to_be_bytes());
            out.push(u8::from(b.is_true()));
        }
        TEXT => {
            let s = v.downcast::<PyString>().map_err(|_| Decline)?;
            let s = s.to_str().map_err(|_| Decline)?; // lone surrogates: asyncpg raises
            put_len(out, s.len())?;
            out.extend_from_slice(s.as_bytes());
        }
        BYTEA => {
            if let Ok(b) = v.downcast::<PyBytes>() {
                put_len(out, b.as_bytes().len())?;
                out.extend_from_slice(b.as_bytes());
            } else if let Ok(b) = v.downcast::<PyByteArray>() {
                let data = b.to_vec();
                put_len(out, data.len())?;
                out.extend_from_slice(&data);
            } else {
                return Err(Decline);
            }
        }
        UUID => {
            if !v.is_instance(&types.uuid).map_err(|_| Decline)? {
                return Err(Decline);
            }
            let n: u128 = v
                .getattr(pyo3::intern!(v.py(), "int"))
                .and_then(|i| i.extract())
                .map_err(|_| Decline)?;
            out.extend_from_slice(&16i32.to_be_bytes());
            out.extend_from_slice(&n.to_be_bytes());
        }
        TIMESTAMPTZ => {
            if !v.is_exact_instance_of::<PyDateTime>() {
                return Err(Decline);
            }
            let d = v.downcast::<PyDateTime>().map_err(|_| Decline)?;
            match d.get_tzinfo() {
                Some(tz) if tz.is(&types.utc) => {}
                _ => return Err(Decline), // naive or another zone: asyncpg converts it
            }
            let days = ordinal(i64::from(d.get_year()), i64::from(d.get_month()), i64::from(d.get_day())) - PG_EPOCH_ORDINAL;
            let secs = days * 86_400 + i64::from(d.get_hour()) * 3600 + i64::from(d.get_minute()) * 60 + i64::from(d.get_second());
            let mut ts = secs * 1_000_000 + i64::from(d.get_microsecond());
            if ts == INFINITY_TS {
                ts = i64::MAX;
            } else if ts == NEGATIVE_INFINITY_TS {
                ts = i64::MIN;
            }
            out.extend_from_slice(&8i32.to_be_bytes());
            out.extend_from_slice(&ts.to_be_bytes());
        }
        DATE => {
            if !v.is_exact_instance_of::<PyDate>() {
                return Err(Decline);
            }
            let d = v.downcast::<PyDate>().map_err(|_| Decline)?;
            let ord = ordinal(i64::from(d.get_year()), i64::from(d.get_month()), i64::from(d.get_day()));
            let pg: i32 = if ord == MAX_DATE_ORDINAL {
                i32::MAX
            } else if ord == MIN_DATE_ORDINAL {
                i32::MIN
            } else {
                (ord - PG_EPOCH_ORDINAL) as i32
            };
            out.extend_from_slice(&4i32.to_be_bytes());
            out.extend_from_slice(&pg.to_be_bytes());
        }
        NUMERIC => {
            if !v.get_type().is(&types.decimal) {
                return Err(Decline);
            }
            let text = v.str().map_err(|_| Decline)?;
            encode_numeric(out, text.to_str().map_err(|_| Decline)?)?;
        }
        _ => return Err(Decline),
    }
    Ok(())
}

fn encode_record(out: &mut Vec<u8>, fields: &[Bound<'_, PyAny>], codes: &[u8], types: &Types<'_>) -> Enc<()> {
    if fields.len() != codes.len() {
        return Err(Decline);
    }
    out.extend_from_slice(&(codes.len() as i16).to_be_bytes());
    for (v, &code) in fields.iter().zip(codes) {
        encode_value(out, code, v, types)?;
    }
    Ok(())
}

// --- the optimistic fold's column checks (typemap.bulk_check) and the staged shape -------------

/// Check kinds (the order of `CHECK_KINDS` in cdc_sink_postgres.native).
const CHECK_TEXT: u8 = 0;
const CHECK_INT: u8 = 1;
const CHECK_FLOAT: u8 = 2;
const CHECK_BOOL: u8 = 3;
const CHECK_UUID: u8 = 4;
const CHECK_TIMESTAMP: u8 = 5;
const CHECK_DECIMAL: u8 = 6;

fn field<'py>(rec: &Bound<'py, PyAny>, offset: usize) -> PyResult<Bound<'py, PyAny>> {
    if let Ok(l) = rec.downcast::<PyList>() {
        return l.get_item(offset);
    }
    rec.get_item(offset)
}

/// The coefficient's digit count (as Decimal.as_tuple gives it) and the exponent of a finite
/// Decimal's str(); None for NaN/Infinity (or anything unexpected).
fn decimal_parts(text: &str) -> Option<(i64, i64)> {
    let rest = text.strip_prefix('-').unwrap_or(text).as_bytes();
    let mut digits: i64 = 0;
    let mut leading = true;
    let mut frac: i64 = 0;
    let mut seen_point = false;
    let mut any = false;
    let mut i = 0;
    while i < rest.len() {
        match rest[i] {
            c @ b'0'..=b'9' => {
                any = true;
                if !(leading && c == b'0') {
                    leading = false;
                    digits += 1;
                }
                if seen_point {
                    frac += 1;
                }
            }
            b'.' if !seen_point => seen_point = true,
            b'E' | b'e' => break,
            _ => return None,
        }
        i += 1;
    }
    if !any {
        return None;
    }
    let mut exponent: i64 = 0;
    if i < rest.len() {
        exponent = std::str::from_utf8(&rest[i + 1..]).ok()?.trim_start_matches('+').parse().ok()?;
    }
    Some((digits.max(1), exponent - frac))
}

/// 2**bits, the bound of the int range -(2**bits) ≤ v < 2**bits.
fn int_limit(bits: u32) -> i128 {
    1i128 << bits.min(100)
}

/// Whether ``v`` is an exact int in -``limit`` ≤ v < ``limit``.
fn int_within(v: &Bound<'_, PyAny>, limit: i128) -> bool {
    v.is_exact_instance_of::<pyo3::types::PyInt>()
        && match v.extract::<i128>() {
            Ok(n) => -limit <= n && n < limit,
            Err(_) => false,
        }
}

/// ``typemap.bulk_check``'s verdict on field ``offset`` of ``records``: True only if every
/// non-None value passes the check of ``kind`` (``bits``: the int range, -(2**bits) ≤ v < 2**bits).
#[pyfunction]
fn check_field(py: Python<'_>, records: &Bound<'_, PyAny>, offset: usize, kind: u8, bits: u32) -> PyResult<bool> {
    let uuid_type = py.import("uuid")?.getattr("UUID")?;
    let decimal_type = py.import("decimal")?.getattr("Decimal")?;
    let limit = int_limit(bits);
    for rec in records.try_iter()? {
        let v = field(&rec?, offset)?;
        if v.is_none() {
            continue;
        }
        let ok = match kind {
            CHECK_TEXT => match v.downcast_exact::<PyString>() {
                Ok(s) => match s.to_str() {
                    Ok(text) => !text.as_bytes().contains(&0),
                    Err(_) => false,
                },
                Err(_) => false,
            },
            CHECK_INT => int_within(&v, limit),
            CHECK_FLOAT => v.is_exact_instance_of::<PyFloat>(),
            CHECK_BOOL => v.is_exact_instance_of::<PyBool>(),
            CHECK_UUID => v.get_type().is(&uuid_type),
            CHECK_TIMESTAMP => match v.downcast_exact::<PyDateTime>() {
                Ok(d) => d.get_tzinfo().is_some(),
                Err(_) => false,
            },
            CHECK_DECIMAL => {
                v.get_type().is(&decimal_type)
                    && match decimal_parts(v.str()?.to_str()?) {
                        Some((n, exponent)) => {
                            let adjusted = exponent + n - 1;
                            adjusted > -16000 && adjusted < 131_000 && exponent > -16383
                        }
                        None => false,
                    }
            }
            _ => false,
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The staged shape of ``records`` (RecordFold._stage): ``present[i]`` is True for the first
/// ``key_len`` fields and for every field some record sets (not None); ``aliases`` lists
/// (field, anchor) for the fields of ``ts_fields`` (in order) that are present and equal, record
/// by record, to the first present one of them (the anchor).
#[pyfunction]
#[allow(clippy::type_complexity)]
fn staged_shape(
    records: &Bound<'_, PyList>,
    width: usize,
    key_len: usize,
    ts_fields: Vec<usize>,
) -> PyResult<(Vec<bool>, Vec<(usize, usize)>)> {
    let mut present: Vec<bool> = (0..width).map(|i| i < key_len).collect();
    let mut missing: Vec<usize> = (key_len..width).collect();
    let rows: Vec<Bound<'_, PyList>> = records.iter().map(|r| r.downcast_into::<PyList>()).collect::<Result<_, _>>()?;
    for rec in &rows {
        if missing.is_empty() {
            break;
        }
        if rec.len() != width {
            return Err(pyo3::exceptions::PyValueError::new_err("a record of another width"));
        }
        missing.retain(|&i| match rec.get_item(i) {
            Ok(v) if !v.is_none() => {
                present[i] = true;
                false
            }
            _ => true,
        });
    }
    let mut aliases = Vec::new();
    let mut anchor: Option<usize> = None;
    for &f in &ts_fields {
        if f >= width || !present[f] {
            continue;
        }
        match anchor {
            None => anchor = Some(f),
            Some(a) => {
                let mut same = true;
                for rec in &rows {
                    let x = rec.get_item(f)?;
                    let y = rec.get_item(a)?;
                    if !(x.is(&y) || x.eq(&y)?) {
                        same = false;
                        break;
                    }
                }
                if same {
                    aliases.push((f, a));
                }
            }
        }
    }
    Ok((present, aliases))
}

/// Stops the cyclic GC from tracking ``obj`` (a container that cannot be part of a cycle).
fn untrack(obj: &Bound<'_, PyAny>) {
    // SAFETY: the pointer is a live object we hold a reference to; PyObject_GC_UnTrack accepts
    // an already untracked GC object, and lists and tuples are GC objects.
    unsafe { pyo3::ffi::PyObject_GC_UnTrack(obj.as_ptr().cast()) }
}

/// Attribute reads of instances of one class, straight from the class's ``__slots__`` members —
/// what CPython's own specialised ``LOAD_ATTR_SLOT`` does. ``PyObject_GetAttr`` walks the type's
/// lookup and the member descriptor on every read; the fold reads about 60 attributes per
/// 10-column event, and that walk was about half of its time. Only an instance of exactly the
/// class learned first (plain generic attribute lookup, the attribute a ``T_OBJECT_EX`` member
/// of it or a base) is read directly; anything else — a subclass, which may shadow a slot with a
/// property, an unset slot, a class with its own ``__getattribute__`` — goes through getattr.
struct SlotReader<'py, const N: usize> {
    names: [Bound<'py, PyString>; N],
    // The class learned (held, so that its address stays its own while it is compared).
    learned: Option<Bound<'py, PyType>>,
    class: *mut pyo3::ffi::PyTypeObject,
    offsets: [isize; N],
}

impl<'py, const N: usize> SlotReader<'py, N> {
    fn new(names: [Bound<'py, PyString>; N]) -> Self {
        SlotReader {
            names,
            learned: None,
            class: std::ptr::null_mut(),
            offsets: [-1; N],
        }
    }

    /// Learns the slot offsets of ``obj``'s class (once: the first object read). Whatever it
    /// cannot tell for sure leaves that attribute to getattr.
    fn learn(&mut self, obj: &Bound<'py, PyAny>) {
        let class = obj.get_type();
        self.class = class.as_type_ptr();
        self.learned = Some(class.clone());
        // SAFETY: live type objects; reading their tp_getattro slots. ``object``'s is the generic
        // lookup a class without its own __getattribute__ / __getattr__ inherits.
        let generic = unsafe {
            match (
                (*self.class).tp_getattro,
                (*std::ptr::addr_of!(pyo3::ffi::PyBaseObject_Type)).tp_getattro,
            ) {
                (Some(mine), Some(object)) => std::ptr::fn_addr_eq(mine, object),
                _ => false,
            }
        };
        if !generic {
            return;
        }
        let Ok(mro) = class.getattr(pyo3::intern!(obj.py(), "__mro__")) else {
            return;
        };
        for (i, name) in self.names.iter().enumerate() {
            self.offsets[i] = slot_offset(&mro, name).unwrap_or(-1);
        }
    }

    #[inline]
    fn get(&mut self, obj: &Bound<'py, PyAny>, i: usize) -> PyResult<Bound<'py, PyAny>> {
        if self.learned.is_none() {
            self.learn(obj);
        }
        let offset = self.offsets[i];
        // SAFETY: ``obj`` is exactly of the class whose member descriptor gave ``offset`` (an
        // object-pointer slot inside its instances), and we hold a reference to it: the slot
        // holds a borrowed pointer or NULL (unset: read through getattr, which raises).
        unsafe {
            if offset >= 0 && pyo3::ffi::Py_TYPE(obj.as_ptr()) == self.class {
                let slot = *(obj.as_ptr().cast::<u8>().offset(offset).cast::<*mut pyo3::ffi::PyObject>());
                if !slot.is_null() {
                    return Ok(Bound::from_borrowed_ptr(obj.py(), slot));
                }
            }
        }
        obj.getattr(&self.names[i])
    }
}

/// The offset of the object slot named ``name`` of a class with method resolution order ``mro``:
/// the first class of it defining the name must define it as a ``T_OBJECT_EX`` member descriptor
/// (a ``__slots__`` entry); else -1.
fn slot_offset(mro: &Bound<'_, PyAny>, name: &Bound<'_, PyString>) -> PyResult<isize> {
    let dict_s = pyo3::intern!(mro.py(), "__dict__");
    for base in mro.try_iter()? {
        let found = base?.getattr(dict_s)?.call_method1(pyo3::intern!(mro.py(), "get"), (name,))?;
        if found.is_none() {
            continue;
        }
        // SAFETY: the type object's address is only compared; a member descriptor's layout is
        // PyMemberDescrObject, whose d_member points at its PyMemberDef (pyo3 types the field as
        // PyGetSetDef).
        unsafe {
            if pyo3::ffi::Py_TYPE(found.as_ptr()) != std::ptr::addr_of_mut!(pyo3::ffi::PyMemberDescr_Type) {
                return Ok(-1);
            }
            let member = (*found.as_ptr().cast::<pyo3::ffi::PyMemberDescrObject>())
                .d_member
                .cast::<pyo3::ffi::PyMemberDef>();
            if (*member).type_code != pyo3::ffi::Py_T_OBJECT_EX || (*member).flags & pyo3::ffi::Py_AUDIT_READ != 0 {
                return Ok(-1);
            }
            return Ok((*member).offset);
        }
    }
    Ok(-1)
}

/// One key column's converter, and the int range it accepts unchanged when the key column is an
/// integer type (``limit``: 2**bits, so -limit ≤ v < limit; an exact int passes as itself — what the
/// converter of ``typemap._int_converter`` returns); anything else calls the converter.
struct KeyConv<'py> {
    name: Bound<'py, PyAny>,
    conv: Bound<'py, PyAny>,
    limit: Option<i128>,
}

impl<'py> KeyConv<'py> {
    #[inline]
    fn convert(&self, value: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if self.limit.is_some_and(|limit| int_within(&value, limit)) {
            return Ok(value);
        }
        self.conv.call1((value,))
    }
}

/// A cell's column, as ``fast`` maps it: (offset of its value field, converter or None).
struct Column<'py> {
    name: Bound<'py, PyAny>,
    offset: usize,
    conv: Option<Bound<'py, PyAny>>,
}

/// The inline fast path of ``RecordFold.add_all`` from event ``start`` on: each row event of a
/// new key (not static) writing only simple cells of columns in ``fast`` becomes its staging
/// record in ``target`` (key, marker ts, marker expiry, deletion ts, then per column value, ts,
/// exp); a converter raising ``rejected_type`` rejects that event (appended to ``rejected`` as
/// (index, error)). ``keys`` are (name, converter, int bits or -1) of the key columns. Returns the
/// index of the first event it leaves to the caller's general path (``len(events)`` when none),
/// exactly where the Python loop would have called ``add``.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn fold_inline<'py>(
    py: Python<'py>,
    events: &Bound<'py, PyList>,
    start: usize,
    target: &Bound<'py, PyDict>,
    keys: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>, i64)>,
    fast: &Bound<'py, PyDict>,
    width: usize,
    row_kind: &Bound<'py, PyAny>,
    cell_type: &Bound<'py, PyAny>,
    rejected_type: &Bound<'py, PyAny>,
    rejected: &Bound<'py, PyList>,
) -> PyResult<usize> {
    let s = |name: &str| PyString::intern(py, name);
    // ChangeEvent, Liveness, Deletion and Cell attributes (the indexes below).
    let mut ev = SlotReader::new([s("kind"), s("static"), s("key"), s("liveness"), s("row_deletion"), s("cells")]);
    let mut marker_r = SlotReader::new([s("timestamp"), s("ttl"), s("local_deletion_time")]);
    let mut deletion_r = SlotReader::new([s("timestamp")]);
    let mut cell_r = SlotReader::new([s("value"), s("tombstone"), s("timestamp"), s("ttl"), s("local_deletion_time")]);
    let none = py.None().into_bound(py);
    let keys: Vec<KeyConv<'py>> = keys
        .into_iter()
        .map(|(name, conv, bits)| KeyConv {
            name,
            conv,
            limit: u32::try_from(bits).ok().map(int_limit),
        })
        .collect();
    let key_len = keys.len();
    if !(key_len == 1 || key_len == 2) || width < key_len + 3 {
        return Ok(start);
    }
    // The columns of the cells seen so far, by the identity of the cell dicts' name objects
    // (one per column, shared by every event of a table): a pointer comparison instead of a dict
    // look-up and a tuple unpacking per cell. Holding the names keeps their addresses theirs.
    let mut columns: Vec<Column<'py>> = Vec::new();
    let n = events.len();
    let mut i = start;
    'events: while i < n {
        let event = events.get_item(i)?;
        if !ev.get(&event, 0)?.is(row_kind) || ev.get(&event, 1)?.is_truthy()? {
            return Ok(i);
        }
        let key_values = ev.get(&event, 2)?;
        let mut rec: Vec<Bound<'py, PyAny>> = Vec::with_capacity(width);
        for k in &keys {
            match k.convert(key_values.get_item(&k.name)?) {
                Ok(v) => rec.push(v),
                Err(e) if e.is_instance(py, rejected_type) => {
                    rejected.append((i, e.value(py)))?;
                    i += 1;
                    continue 'events;
                }
                Err(e) => return Err(e),
            }
        }
        let key = PyTuple::new(py, &rec)?;
        if target.contains(&key)? {
            return Ok(i);
        }
        let marker = ev.get(&event, 3)?;
        if marker.is_none() {
            rec.push(none.clone());
            rec.push(none.clone());
        } else {
            rec.push(marker_r.get(&marker, 0)?);
            rec.push(if marker_r.get(&marker, 1)?.is_none() {
                none.clone()
            } else {
                marker_r.get(&marker, 2)?
            });
        }
        let deletion = ev.get(&event, 4)?;
        rec.push(if deletion.is_none() {
            none.clone()
        } else {
            deletion_r.get(&deletion, 0)?
        });
        rec.resize(width, none.clone());
        let cells = ev.get(&event, 5)?;
        let cells = match cells.downcast::<PyDict>() {
            Ok(d) => d.clone(),
            Err(_) => return Ok(i),
        };
        for (name, change) in cells.iter() {
            let column = match columns.iter().position(|c| c.name.as_ptr() == name.as_ptr()) {
                Some(at) => &columns[at],
                None => {
                    let hot = match fast.get_item(&name)? {
                        Some(h) => h,
                        None => return Ok(i),
                    };
                    let (offset, conv): (usize, Bound<'py, PyAny>) = hot.extract()?;
                    columns.push(Column {
                        name,
                        offset,
                        conv: if conv.is_none() { None } else { Some(conv) },
                    });
                    &columns[columns.len() - 1]
                }
            };
            if !change.get_type().is(cell_type) {
                return Ok(i);
            }
            let off = column.offset;
            if off + 2 >= width {
                return Ok(i);
            }
            let value = cell_r.get(&change, 0)?;
            if value.is_none() || cell_r.get(&change, 1)?.is_truthy()? {
                rec[off + 1] = cell_r.get(&change, 2)?;
                continue;
            }
            rec[off] = match &column.conv {
                None => value,
                Some(conv) => match conv.call1((value,)) {
                    Ok(v) => v,
                    Err(e) if e.is_instance(py, rejected_type) => {
                        rejected.append((i, e.value(py)))?;
                        i += 1;
                        continue 'events;
                    }
                    Err(e) => return Err(e),
                },
            };
            rec[off + 1] = cell_r.get(&change, 2)?;
            if !cell_r.get(&change, 3)?.is_none() {
                rec[off + 2] = cell_r.get(&change, 4)?;
            }
        }
        let record = PyList::new(py, rec)?;
        // The record and its key hold only the event's values (never a container that could
        // point back at them): no reference cycle can run through them, so the cyclic GC need not
        // track them. Tracked, the first collection after a fold walked every field of every
        // record (≈ 12 ms per 20,000 rows, holding the event loop).
        untrack(&key);
        untrack(&record);
        target.set_item(key, record)?;
        i += 1;
    }
    Ok(n)
}

/// The whole binary COPY payload (header, one tuple per record, trailer) of ``records`` (tuples
/// or lists, one field per type code; with ``fields``, the fields at those indexes of each
/// record), or None when a value is not encodable here.
#[pyfunction]
#[pyo3(signature = (records, codes, fields=None))]
fn encode_copy<'py>(
    py: Python<'py>,
    records: &Bound<'py, PyAny>,
    codes: &[u8],
    fields: Option<Vec<usize>>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    if codes.len() > i16::MAX as usize || codes.iter().any(|&c| c > LAST_CODE) {
        return Ok(None);
    }
    if fields.as_ref().is_some_and(|f| f.len() != codes.len()) {
        return Ok(None);
    }
    let types = Types {
        uuid: py.import("uuid")?.getattr("UUID")?.downcast_into::<PyType>()?,
        decimal: py.import("decimal")?.getattr("Decimal")?.downcast_into::<PyType>()?,
        utc: timezone_utc(py).into_any(),
    };
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    out.extend_from_slice(SIGNATURE);
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    let mut values: Vec<Bound<'py, PyAny>> = Vec::with_capacity(codes.len());
    for rec in records.try_iter()? {
        let rec = rec?;
        values.clear();
        if let Ok(t) = rec.downcast::<PyTuple>() {
            match &fields {
                None => values.extend(t.iter()),
                Some(f) => {
                    for &i in f {
                        match t.get_item(i) {
                            Ok(v) => values.push(v),
                            Err(_) => return Ok(None),
                        }
                    }
                }
            }
        } else if let Ok(l) = rec.downcast::<PyList>() {
            match &fields {
                None => values.extend(l.iter()),
                Some(f) => {
                    for &i in f {
                        match l.get_item(i) {
                            Ok(v) => values.push(v),
                            Err(_) => return Ok(None),
                        }
                    }
                }
            }
        } else {
            return Ok(None);
        }
        if encode_record(&mut out, &values, codes, &types).is_err() {
            return Ok(None);
        }
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    Ok(Some(PyBytes::new(py, &out)))
}

#[pymodule]
fn cdc_sink_postgres_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // The calling convention of fold_inline (2: keys are (name, converter, int bits or -1)).
    m.add("FOLD_API", 2)?;
    m.add_function(wrap_pyfunction!(encode_copy, m)?)?;
    m.add_function(wrap_pyfunction!(check_field, m)?)?;
    m.add_function(wrap_pyfunction!(staged_shape, m)?)?;
    m.add_function(wrap_pyfunction!(fold_inline, m)?)?;
    Ok(())
}
