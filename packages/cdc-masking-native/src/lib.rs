//! Optional accelerator of `cdc-masking`: keyed HMAC-SHA256 masking of whole columns in one call.
//!
//! The pure-Python strategies in `cdc_masking.strategies` are the reference; this module must give
//! byte-identical output (a hypothesis test compares both). Hashing uses the RustCrypto `hmac` and
//! `sha2` crates; the key schedule (and an optional domain prefix) is absorbed once per masker and
//! the state cloned per value, as the Python code does with `hashlib` state copies.
//!
//! `SlotClass` and `dicts_with` rebuild the masked events: copies of slotted objects with some
//! slots replaced, and copies of mappings with some entries replaced, for whole batches at once.

use hmac::{Hmac, Mac};
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList, PyString, PyTuple, PyType};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const HEX: &[u8; 16] = b"0123456789abcdef";
const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    Hex,
    Base64Url,
}

fn encode_hex(data: &[u8], out: &mut String) {
    for &b in data {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
}

/// RFC 4648 §5 alphabet without padding (what `_b64url` in strategies.py produces).
fn encode_b64url(data: &[u8], out: &mut String) {
    let mut chunks = data.chunks_exact(3);
    for c in &mut chunks {
        let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
        for shift in [18, 12, 6, 0] {
            out.push(B64URL[((n >> shift) & 63) as usize] as char);
        }
    }
    match *chunks.remainder() {
        [a] => {
            let n = u32::from(a) << 16;
            out.push(B64URL[((n >> 18) & 63) as usize] as char);
            out.push(B64URL[((n >> 12) & 63) as usize] as char);
        }
        [a, b] => {
            let n = (u32::from(a) << 16) | (u32::from(b) << 8);
            out.push(B64URL[((n >> 18) & 63) as usize] as char);
            out.push(B64URL[((n >> 12) & 63) as usize] as char);
            out.push(B64URL[((n >> 6) & 63) as usize] as char);
        }
        _ => {}
    }
}

/// HMAC-SHA256 of `domain + value`, encoded, truncated and prefixed:
/// `prefix + encode(digest[:digest_bytes])[:length]`.
#[pyclass(frozen, module = "cdc_masking_native")]
struct KeyedHmac {
    mac: HmacSha256, // key schedule and domain prefix already absorbed
    output: Output,
    digest_bytes: usize,
    length: Option<usize>,
    prefix: String,
    canonical: Option<PyObject>, // bytes of values that are neither exact str nor exact bytes
}

impl KeyedHmac {
    fn mask_bytes(&self, data: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(data);
        let digest = mac.finalize().into_bytes();
        let digest = &digest[..self.digest_bytes];
        let mut out = String::with_capacity(self.prefix.len() + 2 * digest.len());
        out.push_str(&self.prefix);
        match self.output {
            Output::Hex => encode_hex(digest, &mut out),
            Output::Base64Url => encode_b64url(digest, &mut out),
        }
        if let Some(length) = self.length {
            out.truncate(self.prefix.len() + length); // the encodings are ASCII: any byte index is a char boundary
        }
        out
    }

    fn mask_value<'py>(&self, value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyString>> {
        let py = value.py();
        // exact classes only, like canonical_bytes: a str or bytes subclass goes through canonical()
        let masked = if let Ok(s) = value.downcast_exact::<PyString>() {
            self.mask_bytes(s.to_str()?.as_bytes())
        } else if let Ok(b) = value.downcast_exact::<PyBytes>() {
            self.mask_bytes(b.as_bytes())
        } else {
            let Some(canonical) = &self.canonical else {
                return Err(PyTypeError::new_err(
                    "KeyedHmac: value is not str or bytes and no canonical function was given",
                ));
            };
            let data = canonical.bind(py).call1((value,))?;
            let data = data
                .downcast::<PyBytes>()
                .map_err(|_| PyTypeError::new_err("KeyedHmac: canonical() must return bytes"))?;
            self.mask_bytes(data.as_bytes())
        };
        Ok(PyString::new(py, &masked))
    }
}

#[pymethods]
impl KeyedHmac {
    #[new]
    #[pyo3(signature = (key, *, domain = b"".as_slice(), output = "hex", digest_bytes = 32, length = None, prefix = String::new(), canonical = None))]
    fn new(
        key: &[u8],
        domain: &[u8],
        output: &str,
        digest_bytes: usize,
        length: Option<usize>,
        prefix: String,
        canonical: Option<PyObject>,
    ) -> PyResult<Self> {
        let output = match output {
            "hex" => Output::Hex,
            "base64url" => Output::Base64Url,
            other => return Err(PyValueError::new_err(format!("output must be hex or base64url, not {other:?}"))),
        };
        if !(1..=32).contains(&digest_bytes) {
            return Err(PyValueError::new_err("digest_bytes must be between 1 and 32"));
        }
        let mut mac = HmacSha256::new_from_slice(key).map_err(|e| PyValueError::new_err(e.to_string()))?;
        mac.update(domain);
        Ok(Self {
            mac,
            output,
            digest_bytes,
            length,
            prefix,
            canonical,
        })
    }

    /// The masked form of one value.
    fn mask<'py>(&self, value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyString>> {
        self.mask_value(value)
    }

    /// The masked forms of `values`, in order (no memo).
    fn mask_many<'py>(&self, values: &Bound<'py, PyList>) -> PyResult<Bound<'py, PyList>> {
        let mut out = Vec::with_capacity(values.len());
        for value in values.iter() {
            out.push(self.mask_value(&value)?);
        }
        PyList::new(values.py(), out)
    }

    /// `mask_many` through a memo dict with the semantics of `cdc_masking.strategies.memoise`:
    /// keyed on the value for exact str, int and bytes, else on `(type, repr(value))` (values that
    /// compare equal may mask differently); a value whose repr raises is not memoised; the dict is
    /// cleared when it holds `size` entries and a new one must be added.
    fn mask_many_memo<'py>(&self, values: &Bound<'py, PyList>, cache: &Bound<'py, PyDict>, size: usize) -> PyResult<Bound<'py, PyList>> {
        let py = values.py();
        let mut out: Vec<Bound<'py, PyAny>> = Vec::with_capacity(values.len());
        for value in values.iter() {
            let key = if value.is_exact_instance_of::<PyString>()
                || value.is_exact_instance_of::<PyInt>()
                || value.is_exact_instance_of::<PyBytes>()
            {
                value.clone()
            } else {
                match value.repr() {
                    Ok(r) => PyTuple::new(py, [value.get_type().into_any(), r.into_any()])?.into_any(),
                    Err(err) if err.is_instance_of::<PyException>(py) => {
                        out.push(self.mask_value(&value)?.into_any());
                        continue;
                    }
                    Err(err) => return Err(err),
                }
            };
            if let Some(hit) = cache.get_item(&key)? {
                out.push(hit);
                continue;
            }
            let masked = self.mask_value(&value)?.into_any();
            if size > 0 {
                if cache.len() >= size {
                    cache.clear();
                }
                cache.set_item(key, &masked)?;
            }
            out.push(masked);
        }
        PyList::new(py, out)
    }

    /// The raw HMAC-SHA256 of `domain + data` (for tests).
    fn digest<'py>(&self, py: Python<'py>, data: &[u8]) -> Bound<'py, PyBytes> {
        let mut mac = self.mac.clone();
        mac.update(data);
        PyBytes::new(py, &mac.finalize().into_bytes())
    }
}

/// Where a slot of a copy comes from.
enum Source<'py> {
    Copy,
    Const(Bound<'py, PyAny>),
    Column(Bound<'py, PyList>, usize), // values consumed in order, one per non-None object
}

/// Copies of instances of one slotted class with some slots replaced (`attrs.evolve` without
/// `__init__`, like `cdc_core.fastobj.slot_constructor`). `descriptors` must be the member
/// descriptors of *every* slot of `cls` (the caller checks the class, e.g. with
/// `cdc_core.fastobj.slot_setters`): a copy fills each of them, through the descriptors' own
/// get/set functions, and nothing else.
#[pyclass(frozen, module = "cdc_masking_native")]
struct SlotClass {
    cls: Py<PyType>,
    descriptors: Vec<PyObject>,
}

#[pymethods]
impl SlotClass {
    #[new]
    fn new(cls: &Bound<'_, PyType>, descriptors: Vec<Bound<'_, PyAny>>) -> PyResult<Self> {
        let member_type = std::ptr::addr_of_mut!(ffi::PyMemberDescr_Type);
        for d in &descriptors {
            if unsafe { ffi::Py_TYPE(d.as_ptr()) } != member_type || !d.getattr("__objclass__")?.is(cls) {
                return Err(PyTypeError::new_err(format!("SlotClass: {d:?} is not a slot of {cls:?}")));
            }
        }
        if unsafe { (*cls.as_type_ptr()).tp_alloc.is_none() } {
            return Err(PyTypeError::new_err("SlotClass: the class has no tp_alloc"));
        }
        Ok(Self {
            cls: cls.clone().unbind(),
            descriptors: descriptors.into_iter().map(Bound::unbind).collect(),
        })
    }

    /// For each object of `objs` (instances of exactly the class, or None), a copy whose slot `i`
    /// is `consts[i]`, or the next unused value of `columns[i]` (values are consumed in order, one
    /// per non-None object), else the object's own value; None stays None.
    fn evolve_many<'py>(
        &self,
        objs: &Bound<'py, PyList>,
        consts: &Bound<'py, PyDict>,
        columns: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyList>> {
        let py = objs.py();
        let mut sources: Vec<Source<'py>> = (0..self.descriptors.len()).map(|_| Source::Copy).collect();
        for (k, v) in consts.iter() {
            let i: usize = k.extract()?;
            *sources.get_mut(i).ok_or_else(|| PyValueError::new_err("slot index out of range"))? = Source::Const(v);
        }
        for (k, v) in columns.iter() {
            let i: usize = k.extract()?;
            let list = v
                .downcast_into::<PyList>()
                .map_err(|_| PyTypeError::new_err("columns values must be lists"))?;
            *sources.get_mut(i).ok_or_else(|| PyValueError::new_err("slot index out of range"))? = Source::Column(list, 0);
        }
        let cls = self.cls.bind(py).as_type_ptr();
        let n = objs.len();
        let mut out: Vec<Bound<'py, PyAny>> = Vec::with_capacity(n);
        for obj in objs.iter() {
            if obj.is_none() {
                out.push(obj);
                continue;
            }
            if unsafe { ffi::Py_TYPE(obj.as_ptr()) } != cls {
                return Err(PyTypeError::new_err(
                    "evolve_many: an object is not an instance of exactly the class",
                ));
            }
            // SAFETY: tp_alloc exists (checked in new) and returns a new, zeroed, owned object or NULL
            let new = unsafe { Bound::from_owned_ptr_or_err(py, ((*cls).tp_alloc.unwrap())(cls, 0))? };
            for (descriptor, source) in self.descriptors.iter().zip(sources.iter_mut()) {
                let value = match source {
                    Source::Copy => {
                        let d = descriptor.as_ptr();
                        // SAFETY: a member descriptor of cls (checked in new); get returns a new reference or NULL
                        unsafe {
                            let get = (*ffi::Py_TYPE(d)).tp_descr_get.unwrap();
                            Bound::from_owned_ptr_or_err(py, get(d, obj.as_ptr(), cls.cast()))?
                        }
                    }
                    Source::Const(v) => v.clone(),
                    Source::Column(list, next) => {
                        let v = list
                            .get_item(*next)
                            .map_err(|_| PyValueError::new_err("a column has fewer values than objects"))?;
                        *next += 1;
                        v
                    }
                };
                let d = descriptor.as_ptr();
                // SAFETY: as above; set takes its own reference to value
                if unsafe { ((*ffi::Py_TYPE(d)).tp_descr_set.unwrap())(d, new.as_ptr(), value.as_ptr()) } != 0 {
                    return Err(PyErr::fetch(py));
                }
            }
            out.push(new);
        }
        for source in &sources {
            if let Source::Column(list, next) = source {
                if *next != list.len() {
                    return Err(PyValueError::new_err("a column has more values than objects"));
                }
            }
        }
        PyList::new(py, out)
    }
}

/// For each mapping of `bases`: if every `columns[k][i]` is None, the mapping itself; else a new
/// dict with its entries (`dict(base)`) and `names[k]` set to each non-None `columns[k][i]`.
#[pyfunction]
fn dicts_with<'py>(
    bases: &Bound<'py, PyList>,
    names: Vec<Bound<'py, PyString>>,
    columns: Vec<Bound<'py, PyList>>,
) -> PyResult<Bound<'py, PyList>> {
    let py = bases.py();
    let n = bases.len();
    if names.len() != columns.len() || columns.iter().any(|c| c.len() != n) {
        return Err(PyValueError::new_err("dicts_with: names, columns and bases do not line up"));
    }
    let mut out: Vec<Bound<'py, PyAny>> = Vec::with_capacity(n);
    for (i, base) in bases.iter().enumerate() {
        let mut copy: Option<Bound<'py, PyDict>> = None;
        for (name, column) in names.iter().zip(&columns) {
            let value = column.get_item(i)?;
            if value.is_none() {
                continue;
            }
            let dict = match &copy {
                Some(d) => d,
                None => {
                    let d = PyDict::new(py);
                    // what dict(base) does for any mapping (a dict's own fast path included)
                    if unsafe { ffi::PyDict_Merge(d.as_ptr(), base.as_ptr(), 1) } != 0 {
                        return Err(PyErr::fetch(py));
                    }
                    copy.insert(d)
                }
            };
            dict.set_item(name, value)?;
        }
        out.push(match copy {
            Some(d) => d.into_any(),
            None => base,
        });
    }
    PyList::new(py, out)
}

/// The entry `name` of each mapping of `bases` where it is a live cell — an instance of exactly
/// `cls` whose `value` is not None and whose `tombstone` is false — else None, and the values of
/// those cells in order; None if some entry is neither None nor an instance of exactly `cls`.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn live_cells<'py>(
    bases: &Bound<'py, PyList>,
    name: &Bound<'py, PyString>,
    cls: &Bound<'py, PyType>,
) -> PyResult<Option<(Bound<'py, PyList>, Bound<'py, PyList>)>> {
    let py = bases.py();
    let value_attr = pyo3::intern!(py, "value");
    let tombstone_attr = pyo3::intern!(py, "tombstone");
    let mut cells: Vec<Bound<'py, PyAny>> = Vec::with_capacity(bases.len());
    let mut values: Vec<Bound<'py, PyAny>> = Vec::with_capacity(bases.len());
    for base in bases.iter() {
        let entry = match base.downcast_exact::<PyDict>() {
            Ok(dict) => dict.get_item(name)?,
            Err(_) => Some(base.call_method1(pyo3::intern!(py, "get"), (name,))?),
        };
        let cell = match entry {
            Some(cell) if !cell.is_none() => cell,
            _ => {
                cells.push(py.None().into_bound(py));
                continue;
            }
        };
        if !cell.get_type().is(cls) {
            return Ok(None);
        }
        let value = cell.getattr(value_attr)?;
        if value.is_none() || cell.getattr(tombstone_attr)?.is_truthy()? {
            cells.push(py.None().into_bound(py));
        } else {
            cells.push(cell);
            values.push(value);
        }
    }
    Ok(Some((PyList::new(py, cells)?, PyList::new(py, values)?)))
}

#[pymodule]
fn cdc_masking_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<KeyedHmac>()?;
    m.add_class::<SlotClass>()?;
    m.add_function(wrap_pyfunction!(dicts_with, m)?)?;
    m.add_function(wrap_pyfunction!(live_cells, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
