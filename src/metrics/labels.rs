//! Label bookkeeping: cardinality caps and the label-values → series lookup.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use parking_lot::RwLock;

use super::hist::Counter;

/// Longest label value kept; longer ones are treated as overflow (they are never model names).
const MAX_VALUE_LEN: usize = 128;

/// Admits at most `max` distinct values for one label; later ones become a fallback value.
///
/// This is what keeps a client sending random model names from growing the series set.
pub(crate) struct LabelCap {
    max: usize,
    fallback: &'static str,
    seen: RwLock<HashSet<Box<str>>>,
    overflow: Counter,
}

impl LabelCap {
    pub(crate) fn new(max: usize, fallback: &'static str, overflow: Counter) -> LabelCap {
        LabelCap {
            max,
            fallback,
            seen: RwLock::new(HashSet::new()),
            overflow,
        }
    }

    /// `value` if it is (or can become) one of the admitted values, else the fallback, counting
    /// the overflow. The empty string means "absent" and always passes.
    pub(crate) fn admit<'a>(&self, value: &'a str) -> &'a str {
        self.admit_counting(value, true)
    }

    /// Like [`admit`](Self::admit) without counting, for a second lookup of the same value.
    pub(crate) fn admit_uncounted<'a>(&self, value: &'a str) -> &'a str {
        self.admit_counting(value, false)
    }

    fn admit_counting<'a>(&self, value: &'a str, count: bool) -> &'a str {
        if value.is_empty() || self.seen.read().contains(value) {
            return value;
        }
        if value.len() <= MAX_VALUE_LEN {
            let mut seen = self.seen.write();
            if seen.contains(value) {
                return value;
            }
            if seen.len() < self.max {
                seen.insert(value.into());
                return value;
            }
        }
        if count {
            self.overflow.inc();
        }
        self.fallback
    }
}

/// HTTP status class label: `2xx` ... `5xx`, or `none` when no status was sent.
pub(crate) fn status_class(status: u16) -> &'static str {
    match status {
        0 => "none",
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// Hash of a label-value tuple. Values are length-delimited so ("ab","c") != ("a","bc").
fn hash_parts(parts: &[&str]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h: u64 = parts.len() as u64;
    let mut mix = |w: u64| h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    for p in parts {
        let bytes = p.as_bytes();
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        mix(u64::from_le_bytes(w));
        mix(bytes.len() as u64);
    }
    // Final avalanche (murmur3 fmix64) so the table's high and low bits both vary.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The keys of [`SeriesMap`] are already hashes.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Entries<V> = Vec<(Box<[Box<str>]>, V)>;

/// Label-value tuple → value, looked up by borrowed `&[&str]` without allocating.
pub(crate) struct SeriesMap<V> {
    inner: RwLock<HashMap<u64, Entries<V>, BuildHasherDefault<PreHashed>>>,
}

fn same(key: &[Box<str>], parts: &[&str]) -> bool {
    key.len() == parts.len() && key.iter().zip(parts).all(|(k, p)| **k == **p)
}

impl<V> SeriesMap<V> {
    pub(crate) fn new() -> SeriesMap<V> {
        SeriesMap {
            inner: RwLock::new(HashMap::default()),
        }
    }

    /// Runs `f` on the value for `parts` under the read lock; `None` if absent.
    #[inline]
    pub(crate) fn with<R>(&self, parts: &[&str], f: impl FnOnce(&V) -> R) -> Option<R> {
        let h = hash_parts(parts);
        let map = self.inner.read();
        let entries = map.get(&h)?;
        entries
            .iter()
            .find(|(k, _)| same(k, parts))
            .map(|(_, v)| f(v))
    }

    /// The value for `parts`, inserting `make()` first if absent.
    pub(crate) fn get_or_insert_with(&self, parts: &[&str], make: impl FnOnce() -> V) -> V
    where
        V: Clone,
    {
        if let Some(v) = self.with(parts, V::clone) {
            return v;
        }
        let h = hash_parts(parts);
        let mut map = self.inner.write();
        let entries = map.entry(h).or_default();
        if let Some((_, v)) = entries.iter().find(|(k, _)| same(k, parts)) {
            return v.clone();
        }
        let v = make();
        let key: Box<[Box<str>]> = parts.iter().map(|p| Box::<str>::from(*p)).collect();
        entries.push((key, v.clone()));
        v
    }

    /// Every (key, value) pair, cloned out so the lock is not held by the caller.
    pub(crate) fn entries(&self) -> Vec<(Vec<String>, V)>
    where
        V: Clone,
    {
        let map = self.inner.read();
        map.values()
            .flatten()
            .map(|(k, v)| (k.iter().map(|s| s.to_string()).collect(), v.clone()))
            .collect()
    }
}
