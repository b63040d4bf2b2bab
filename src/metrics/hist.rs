//! Histograms, counters and gauges whose record path shares no lock between threads.
//!
//! # Design
//!
//! Every histogram series gets a small integer id from a global allocator. Every OS thread that
//! records owns one [`ThreadSlot`]: a `Vec` of per-series cells indexed by id, behind its own
//! `parking_lot::Mutex`. The slot is found through a `thread_local!` and is registered once, in a
//! global list, the first time the thread records anything.
//!
//! Recording locks only the recording thread's own slot. No other thread ever records into it,
//! so the lock is uncontended: taking it is one compare-and-swap on a cache line this thread
//! already owns, and releasing it is one store. The only other party that ever touches the lock
//! is a reader (a scrape), which holds it for the few microseconds needed to copy the thread's
//! cells. Two threads recording into the *same* series therefore never bounce a cache line
//! between them, unlike a shared `Mutex<Histogram>` or even a shared atomic bucket array.
//!
//! Reading merges the cells of every thread's slot, so values are cumulative for the life of the
//! process. A thread that exits leaves its slot in the list (its counts must not vanish) and
//! marks it free; the next new thread adopts it, so short-lived threads do not grow the list.
//!
//! Values are stored in HdrHistogram (2 significant digits, auto-resizing) as integers in a fixed
//! unit given by a [`HistogramSpec`]; the exact sum, minimum and maximum are kept beside it in
//! the caller's unit, because HdrHistogram's own are quantised.
//!
//! Memory: a cell exists only for (thread, series) pairs that recorded something, and its counts
//! array grows with the largest value seen (at 2 significant digits, 8 bytes per count: about
//! 20 KiB for microseconds up to a minute, a few KiB for token counts up to a few thousand).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// Significant decimal digits kept by every histogram: 2 gives at most ~0.8% relative error
/// with small per-thread memory.
const SIGFIG: u8 = 2;

/// How a histogram turns caller values (seconds, tokens, ...) into HdrHistogram integers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistogramSpec {
    scale: f64,
    max_units: u64,
    /// `max_units / scale`, precomputed: the record path should not divide.
    max_value: f64,
}

impl HistogramSpec {
    /// Seconds, stored as whole microseconds, clamped at one day.
    pub const SECONDS: HistogramSpec = HistogramSpec::new(1e6, 86_400 * 1_000_000);
    /// Plain counts (tokens, bytes), stored as-is, clamped at 2^40.
    pub const COUNT: HistogramSpec = HistogramSpec::new(1.0, 1 << 40);
    /// Rates such as tokens per second, stored in thousandths, clamped at 2^40 thousandths.
    pub const RATE: HistogramSpec = HistogramSpec::new(1e3, 1 << 40);

    /// A spec storing `value * scale` as an integer, clamping larger values to `max_units`.
    pub const fn new(scale: f64, max_units: u64) -> HistogramSpec {
        HistogramSpec {
            scale,
            max_units,
            max_value: max_units as f64 / scale,
        }
    }

    /// Integer units per caller unit.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Largest value (in caller units) recorded without clamping.
    pub fn max_value(&self) -> f64 {
        self.max_value
    }

    /// Clamps into `[0, max_value]`; `None` for NaN, which is dropped rather than recorded.
    #[inline]
    fn clamp(&self, v: f64) -> Option<f64> {
        if v.is_nan() {
            None
        } else if v <= 0.0 {
            Some(0.0)
        } else {
            Some(v.min(self.max_value))
        }
    }

    /// Integer units for an already clamped (non-negative) value, rounded to the nearest unit.
    #[inline]
    fn units(&self, clamped: f64) -> u64 {
        // `+ 0.5` then truncation rounds a non-negative value without a libm call; `as`
        // saturates, and the result is capped anyway.
        ((clamped * self.scale + 0.5) as u64).min(self.max_units)
    }
}

/// One thread's data for one series. Cache-line aligned so that cells of different threads
/// (adopted slots, neighbouring allocations) never share a line.
#[repr(align(64))]
struct Cell {
    hist: hdrhistogram::Histogram<u64>,
    sum: f64,
    min: f64,
    max: f64,
}

impl Cell {
    fn new() -> Option<Cell> {
        hdrhistogram::Histogram::new(SIGFIG).ok().map(|hist| Cell {
            hist,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        })
    }

    #[inline]
    fn record(&mut self, units: u64, v: f64) {
        // Auto-resizing and clamped units make failure impossible short of address-space
        // exhaustion; a failed record is simply not counted anywhere, keeping count and sum equal.
        if self.hist.record(units).is_ok() {
            self.sum += v;
            if v < self.min {
                self.min = v;
            }
            if v > self.max {
                self.max = v;
            }
        }
    }
}

/// One OS thread's cells, indexed by series id. Aligned to 128 bytes (two lines, as adjacent-line
/// prefetch pairs them) so that two threads' lock words never share a cache line: false sharing
/// would bring back exactly the contention this design avoids.
#[repr(align(128))]
struct ThreadSlot {
    cells: Mutex<Vec<Option<Cell>>>,
    /// True while a live thread owns the slot; a free slot is adopted by the next new thread.
    in_use: AtomicBool,
}

/// Process-wide registry of thread slots and series ids.
struct Registry {
    slots: Mutex<Vec<Arc<ThreadSlot>>>,
    ids: Mutex<IdAlloc>,
}

struct IdAlloc {
    next: usize,
    free: Vec<usize>,
}

static REGISTRY: Registry = Registry {
    slots: Mutex::new(Vec::new()),
    ids: Mutex::new(IdAlloc {
        next: 0,
        free: Vec::new(),
    }),
};

/// Takes a free slot or registers a new one. Runs once per thread, not per record.
fn claim_slot() -> Arc<ThreadSlot> {
    let mut slots = REGISTRY.slots.lock();
    for slot in slots.iter() {
        if slot
            .in_use
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return Arc::clone(slot);
        }
    }
    let slot = Arc::new(ThreadSlot {
        cells: Mutex::new(Vec::new()),
        in_use: AtomicBool::new(true),
    });
    slots.push(Arc::clone(&slot));
    slot
}

/// The calling thread's claim on its slot; gives the slot back (data intact) at thread exit.
struct LocalSlot(Arc<ThreadSlot>);

impl Drop for LocalSlot {
    fn drop(&mut self) {
        self.0.in_use.store(false, Ordering::Release);
    }
}

thread_local! {
    static LOCAL: LocalSlot = LocalSlot(claim_slot());
}

/// Runs `f` on the current thread's slot. If thread-local storage is already torn down (a
/// record from inside another thread-local destructor), borrows a free slot for the call.
#[inline]
fn with_slot<A, F: FnOnce(&ThreadSlot, A)>(arg: A, f: F) {
    let mut pending = Some((arg, f));
    let done = LOCAL.try_with(|local| {
        if let Some((arg, f)) = pending.take() {
            f(&local.0, arg);
        }
    });
    if done.is_err() {
        if let Some((arg, f)) = pending.take() {
            let slot = LocalSlot(claim_slot());
            f(&slot.0, arg);
        }
    }
}

/// Records into `cells[id]`, creating the cell on this thread's first value for the series.
#[inline]
fn record_in(cells: &mut Vec<Option<Cell>>, id: usize, units: u64, v: f64) {
    if let Some(Some(cell)) = cells.get_mut(id) {
        cell.record(units, v);
    } else {
        record_in_new_cell(cells, id, units, v);
    }
}

#[cold]
#[inline(never)]
fn record_in_new_cell(cells: &mut Vec<Option<Cell>>, id: usize, units: u64, v: f64) {
    if cells.len() <= id {
        cells.resize_with(id + 1, || None);
    }
    if let Some(entry) = cells.get_mut(id) {
        if entry.is_none() {
            *entry = Cell::new();
        }
        if let Some(cell) = entry.as_mut() {
            cell.record(units, v);
        }
    }
}

/// Number of registered thread slots (live and free).
#[cfg(test)]
pub(crate) fn slot_count() -> usize {
    REGISTRY.slots.lock().len()
}

/// Identity of one histogram series; frees its id and per-thread cells when the last handle
/// goes.
#[derive(Debug)]
struct SeriesCore {
    id: usize,
    spec: HistogramSpec,
}

impl Drop for SeriesCore {
    fn drop(&mut self) {
        // No handle is left, so nobody records into `id` any more: clear it everywhere, then
        // make the id reusable.
        let slots: Vec<Arc<ThreadSlot>> = REGISTRY.slots.lock().clone();
        for slot in &slots {
            if let Some(cell) = slot.cells.lock().get_mut(self.id) {
                *cell = None;
            }
        }
        REGISTRY.ids.lock().free.push(self.id);
    }
}

/// A histogram series. Cheap to clone (one `Arc`); clones record into the same series.
#[derive(Debug, Clone)]
pub struct Histogram {
    core: Arc<SeriesCore>,
}

impl Histogram {
    /// A new, empty series. Not exported anywhere until registered through `Metrics`.
    pub fn new(spec: HistogramSpec) -> Histogram {
        let id = {
            let mut ids = REGISTRY.ids.lock();
            match ids.free.pop() {
                Some(id) => id,
                None => {
                    ids.next += 1;
                    ids.next - 1
                }
            }
        };
        Histogram {
            core: Arc::new(SeriesCore { id, spec }),
        }
    }

    /// How values are stored.
    pub fn spec(&self) -> HistogramSpec {
        self.core.spec
    }

    /// Records one value (in the spec's caller unit). Negative values count as 0, values above
    /// the spec's maximum as the maximum, NaN is ignored.
    #[inline]
    pub fn record(&self, v: f64) {
        let spec = self.core.spec;
        let Some(v) = spec.clamp(v) else {
            return;
        };
        let units = spec.units(v);
        let id = self.core.id;
        with_slot((), |slot, ()| {
            record_in(&mut slot.cells.lock(), id, units, v)
        });
    }

    /// Records many values under one lock acquisition (e.g. every chunk gap of a stream).
    pub fn record_all<I: IntoIterator<Item = f64>>(&self, values: I) {
        let spec = self.core.spec;
        let id = self.core.id;
        with_slot(values.into_iter(), |slot, values| {
            let mut cells = slot.cells.lock();
            for v in values {
                if let Some(v) = spec.clamp(v) {
                    record_in(&mut cells, id, spec.units(v), v);
                }
            }
        });
    }

    /// Everything recorded so far, merged across threads.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut out = Histogram::snapshot_many(&[self]);
        out.pop()
            .unwrap_or_else(|| HistogramSnapshot::empty(self.core.spec))
    }

    /// Snapshots of several series, visiting (and locking) each thread's slot once.
    pub fn snapshot_many(hists: &[&Histogram]) -> Vec<HistogramSnapshot> {
        let mut out: Vec<HistogramSnapshot> = hists
            .iter()
            .map(|h| HistogramSnapshot::empty(h.core.spec))
            .collect();
        // Clone the list so a thread registering its slot never waits on a whole scrape.
        let slots: Vec<Arc<ThreadSlot>> = REGISTRY.slots.lock().clone();
        for slot in &slots {
            let cells = slot.cells.lock();
            for (h, snap) in hists.iter().zip(out.iter_mut()) {
                if let Some(Some(cell)) = cells.get(h.core.id) {
                    snap.absorb(&cell.hist, cell.sum, cell.min, cell.max);
                }
            }
        }
        out
    }
}

/// A merged, point-in-time copy of a histogram series.
#[derive(Debug, Clone)]
pub struct HistogramSnapshot {
    spec: HistogramSpec,
    hist: Option<hdrhistogram::Histogram<u64>>,
    sum: f64,
    min: f64,
    max: f64,
}

impl HistogramSnapshot {
    /// A snapshot with nothing recorded.
    pub fn empty(spec: HistogramSpec) -> HistogramSnapshot {
        HistogramSnapshot {
            spec,
            hist: None,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    fn absorb(&mut self, hist: &hdrhistogram::Histogram<u64>, sum: f64, min: f64, max: f64) {
        if hist.is_empty() {
            return;
        }
        match self.hist.as_mut() {
            // Both sides auto-resize, so adding cannot fail; a failure would only lose counts.
            Some(h) => {
                if h.add(hist).is_err() {
                    return;
                }
            }
            None => self.hist = Some(hist.clone()),
        }
        self.sum += sum;
        self.min = self.min.min(min);
        self.max = self.max.max(max);
    }

    /// Adds another snapshot of the same spec (e.g. to aggregate series for a summary).
    /// Snapshots of a different spec are ignored: their units are not comparable.
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        if other.spec != self.spec {
            return;
        }
        if let Some(h) = other.hist.as_ref() {
            self.absorb(h, other.sum, other.min, other.max);
        }
    }

    /// How values were stored.
    pub fn spec(&self) -> HistogramSpec {
        self.spec
    }

    /// Number of values recorded (exact).
    pub fn count(&self) -> u64 {
        self.hist.as_ref().map_or(0, |h| h.len())
    }

    /// Sum of the recorded (clamped) values, exact up to f64 rounding.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// Smallest recorded value, exact; `None` when empty.
    pub fn min(&self) -> Option<f64> {
        (self.count() > 0).then_some(self.min)
    }

    /// Largest recorded value, exact; `None` when empty.
    pub fn max(&self) -> Option<f64> {
        (self.count() > 0).then_some(self.max)
    }

    /// Value at quantile `q` in `[0, 1]` (within ~1%, never outside the exact min..max);
    /// `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let h = self.hist.as_ref().filter(|h| !h.is_empty())?;
        let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
        let v = h.value_at_quantile(q) as f64 / self.spec.scale;
        Some(v.clamp(self.min, self.max))
    }

    /// Every recorded value (each HdrHistogram step's midpoint, in real units) with its
    /// count, ascending.
    pub fn values(&self) -> Vec<(f64, u64)> {
        let Some(h) = self.hist.as_ref() else {
            return Vec::new();
        };
        h.iter_recorded()
            .map(|v| {
                let mid = h.median_equivalent(v.value_iterated_to()) as f64 / self.spec.scale;
                (mid.clamp(self.min, self.max), v.count_at_value())
            })
            .collect()
    }

    /// Count of values `<= boundary`, as a Prometheus `le` bucket wants.
    ///
    /// Exact for values on a boundary and for values clearly apart from it. A value within one
    /// HdrHistogram step (~0.8%) *above* a boundary is indistinguishable from it and counted
    /// below; values at or below a boundary are never missed.
    pub fn cumulative_count_le(&self, boundary: f64) -> u64 {
        self.cumulative_counts(&[boundary])
            .first()
            .copied()
            .unwrap_or(0)
    }

    /// [`cumulative_count_le`](Self::cumulative_count_le) for ascending `boundaries`, in one pass.
    pub fn cumulative_counts(&self, boundaries: &[f64]) -> Vec<u64> {
        let mut out = vec![0u64; boundaries.len()];
        let Some(h) = self.hist.as_ref() else {
            return out;
        };
        let limits: Vec<Option<u64>> = boundaries
            .iter()
            .map(|&b| {
                if b.is_nan() || b < 0.0 {
                    None
                } else {
                    Some(self.spec.units(b.min(self.spec.max_value())))
                }
            })
            .collect();
        for v in h.iter_recorded() {
            let lowest = h.lowest_equivalent(v.value_iterated_to());
            let n = v.count_at_value();
            for (slot, limit) in out.iter_mut().zip(&limits) {
                if matches!(limit, Some(l) if lowest <= *l) {
                    *slot += n;
                }
            }
        }
        // Boundaries beyond the clamp limit hold everything, whatever rounding said.
        let total = h.len();
        for (slot, &b) in out.iter_mut().zip(boundaries) {
            if b >= self.spec.max_value() {
                *slot = total;
            }
        }
        out
    }
}

/// A monotonic counter. Cheap to clone; `inc` is one relaxed atomic add.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// A new counter at 0, not exported until registered through `Metrics`.
    pub fn new() -> Counter {
        Counter::default()
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge (in-flight requests, queue depth, remaining rate limit), stored as f64 bits in an
/// atomic so integer and fractional values share one type. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gauge(Arc<AtomicU64>);

impl Default for Gauge {
    fn default() -> Self {
        Gauge(Arc::new(AtomicU64::new(0f64.to_bits())))
    }
}

impl Gauge {
    /// A new gauge at 0, not exported until registered through `Metrics`.
    pub fn new() -> Gauge {
        Gauge::default()
    }

    /// Sets the value.
    #[inline]
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    /// Adds `d` (may be negative). A compare-and-swap loop: gauges change per request at most.
    #[inline]
    pub fn add(&self, d: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + d).to_bits())
            });
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1.0);
    }

    /// Subtracts one.
    #[inline]
    pub fn dec(&self) {
        self.add(-1.0);
    }

    /// Current value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}
