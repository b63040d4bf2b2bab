//! The transformer tier on live traffic: a second opinion on what capacity allows.
//!
//! The static tier scores every answer; the transformer (all-MiniLM-L6-v2) is ~100x dearer on a
//! CPU, so it sees a uniform sample per key (`semantic.transformer_sample`) plus every answer the
//! cheap tier flagged, and confirms or clears those flags. Its uniform sample also feeds a topic
//! drift test ([`super::mmd`]) that the static tier is weak at. It runs on its own thread behind
//! a bounded queue (full: the review is dropped and counted, the exchange was already analysed),
//! batches by size or deadline (the embedder sorts each batch by length, so padding stays
//! small), and keeps an LRU cache of embeddings keyed by text hash (repeated prompts and
//! canned answers cost nothing). Verdicts go to the analysis sinks (an OTLP log record linked
//! to the exchange's span); drift alarms open the key's `drift` incident through the engine.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use super::baseline::{dot, RefPoint, Reference};
use super::conformal::Uniforms;
use super::engine::{key_parts_of, mmd_verdict, output_tokens, Analysis, Engine};
use super::lexical;
use super::live::{publish_incident, AnalysisSink};
use super::mmd::MmdMonitor;
use super::transformer::TransformerEmbedder;
use crate::metrics::{Counter, Gauge, Histogram, Metrics};
use crate::record::{ExchangeRecord, Outcome};

/// Embeds batches of texts: the transformer, or a stand-in in tests.
pub trait BatchEmbedder: Send + Sync {
    /// Unit vectors of `texts`, in order.
    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String>;
    /// `cpu`, `cuda:N` or `metal:N`.
    fn device(&self) -> String;
}

impl BatchEmbedder for TransformerEmbedder {
    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        self.embed(texts).map_err(|e| e.to_string())
    }

    fn device(&self) -> String {
        self.device_name()
    }
}

/// Settings of the live transformer tier (`[semantic]` transformer_* keys).
#[derive(Debug, Clone)]
pub struct ReviewConfig {
    /// Fraction of each key's clean answers embedded (uniform, by exchange id).
    pub sample: f64,
    /// Also review every answer the cheap tier flagged.
    pub review_flagged: bool,
    /// Reviews queued; beyond it they are dropped and counted.
    pub queue: usize,
    /// Texts per forward pass at most.
    pub max_batch: usize,
    /// How long the first review of a batch waits for company.
    pub max_wait: Duration,
    /// Embeddings kept in the LRU cache.
    pub cache: usize,
    /// Sampled clean answers per key in the transformer's own reference.
    pub baseline_size: usize,
    /// Keys with a transformer reference; further keys get verdicts without one.
    pub max_keys: usize,
    /// Conformal p-value at or below which the transformer flags `outlier` and `off_topic`.
    pub alpha: f64,
    /// CPU threads its forward passes may use (candle's kernels run on a pool of this size,
    /// not on every core), so the proxy keeps the rest.
    pub threads: usize,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        ReviewConfig {
            sample: 0.02,
            review_flagged: true,
            queue: 256,
            max_batch: 16,
            max_wait: Duration::from_millis(100),
            cache: 4096,
            baseline_size: 200,
            max_keys: 500,
            alpha: 0.005,
            threads: 1,
        }
    }
}

/// Flags the transformer can confirm or clear (the ones that come from embeddings).
pub const REVIEWABLE: [&str; 2] = ["outlier", "off_topic"];

/// What the transformer tier concluded about one exchange.
#[derive(Debug, Clone, Serialize)]
pub struct Review {
    pub exchange_id: String,
    pub key: String,
    pub ts_ms: u64,
    /// `sample` (uniform) or `flagged` (the cheap tier flagged it).
    pub reason: &'static str,
    /// Flags the cheap tier gave it.
    pub static_flags: Vec<&'static str>,
    /// Flags the transformer gives it.
    pub flags: Vec<&'static str>,
    /// The transformer's scores by flag name (1 − conformal p-value).
    pub scores: BTreeMap<&'static str, f64>,
    /// Cheap-tier flags the transformer agrees with.
    pub confirmed: Vec<&'static str>,
    /// Cheap-tier flags the transformer does not see.
    pub cleared: Vec<&'static str>,
    /// The key's transformer reference is still being learned (no verdict on flags).
    pub warming_up: bool,
    /// From the end of the exchange to this verdict.
    pub lag_ms: u64,
}

struct Job {
    rec: Arc<ExchangeRecord>,
    /// The baseline key, as the engine computed it.
    key: String,
    static_flags: Vec<&'static str>,
    sampled: bool,
    queued: Instant,
}

enum Msg {
    Job(Box<Job>),
    Flush(SyncSender<()>),
}

/// Handle of the live transformer tier; dropping it stops the thread.
pub struct Reviewer {
    tx: SyncSender<Msg>,
    depth: Arc<AtomicU64>,
    sample: f64,
    review_flagged: bool,
    device: String,
    dropped: Counter,
    dropped_total: AtomicU64,
}

impl Reviewer {
    /// Starts the review thread.
    pub fn start(
        cfg: ReviewConfig,
        embedder: Arc<dyn BatchEmbedder>,
        engine: Arc<Mutex<Engine>>,
        metrics: Arc<Metrics>,
        sinks: Vec<Arc<dyn AnalysisSink>>,
    ) -> std::io::Result<Reviewer> {
        let (tx, rx) = mpsc::sync_channel(cfg.queue.max(1));
        let depth = Arc::new(AtomicU64::new(0));
        let device = embedder.device();
        let reviewer = Reviewer {
            tx,
            depth: depth.clone(),
            sample: cfg.sample,
            review_flagged: cfg.review_flagged,
            device: device.clone(),
            dropped: metrics.counter(
                "semtap.records_dropped",
                &[("reason", "transformer_queue_full")],
            ),
            dropped_total: AtomicU64::new(0),
        };
        let worker = Worker::new(cfg, embedder, engine, metrics, sinks, depth, &device);
        std::thread::Builder::new()
            .name("semtap-transformer".into())
            .spawn(move || {
                crate::priority::idle_thread();
                worker.run(rx)
            })?;
        tracing::info!(%device, "live transformer tier started");
        Ok(reviewer)
    }

    /// Offers an analysed exchange: queued if it is in the uniform sample or was flagged by
    /// the cheap tier; never blocks.
    pub fn offer(&self, rec: &Arc<ExchangeRecord>, analysis: &Analysis) {
        if !(200..300).contains(&rec.status)
            || rec.outcome != Outcome::Complete
            || rec.response.trim().is_empty()
            || analysis.flags.contains(&"blank")
            || analysis.scores.is_empty()
        {
            return;
        }
        let sampled = in_sample(&rec.id, self.sample);
        let static_flags: Vec<&'static str> = analysis
            .flags
            .iter()
            .copied()
            .filter(|f| *f != "truncated")
            .collect();
        let flagged = self.review_flagged && !static_flags.is_empty();
        if !sampled && !flagged {
            return;
        }
        let job = Job {
            rec: rec.clone(),
            key: analysis.key.clone(),
            static_flags,
            sampled,
            queued: Instant::now(),
        };
        self.depth.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send(Msg::Job(Box::new(job))).is_err() {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            self.dropped.inc();
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One line for health and logs: where it runs and what it reviews.
    pub fn describe(&self) -> String {
        format!(
            "transformer tier on {} reviewing {}% of answers{}",
            self.device,
            self.sample * 100.0,
            if self.review_flagged {
                " plus every flagged one"
            } else {
                ""
            }
        )
    }

    /// Reviews dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }

    /// Waits (up to `timeout`) until everything queued so far has been reviewed.
    pub fn flush(&self, timeout: Duration) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(timeout);
        }
    }
}

/// True if exchange `id` is in a uniform sample of `fraction` (stable per id).
pub fn in_sample(id: &str, fraction: f64) -> bool {
    if fraction >= 1.0 {
        return true;
    }
    if fraction <= 0.0 {
        return false;
    }
    let h = hash_of(id);
    // Top 53 bits as a uniform in [0, 1).
    ((h >> 11) as f64 / (1u64 << 53) as f64) < fraction
}

fn hash_of(s: &str) -> u64 {
    // SipHash with fixed keys: stable within and across runs, well mixed.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// A cached embedding, shared with the reviews that use it.
type Vector = Arc<Vec<f32>>;

/// An LRU cache of embeddings keyed by text hash (and length, against the rare collision).
struct TextCache {
    cap: usize,
    tick: u64,
    map: HashMap<(u64, usize), (Vector, u64)>,
    order: BTreeMap<u64, (u64, usize)>,
}

impl TextCache {
    fn new(cap: usize) -> Self {
        TextCache {
            cap,
            tick: 0,
            map: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    fn key(text: &str) -> (u64, usize) {
        (hash_of(text), text.len())
    }

    fn get(&mut self, text: &str) -> Option<Arc<Vec<f32>>> {
        let k = Self::key(text);
        self.tick += 1;
        let tick = self.tick;
        let (v, t) = self.map.get_mut(&k)?;
        self.order.remove(t);
        *t = tick;
        self.order.insert(tick, k);
        Some(v.clone())
    }

    fn put(&mut self, text: &str, v: Arc<Vec<f32>>) {
        if self.cap == 0 {
            return;
        }
        let k = Self::key(text);
        self.tick += 1;
        if let Some((_, t)) = self.map.insert(k, (v, self.tick)) {
            self.order.remove(&t);
        }
        self.order.insert(self.tick, k);
        while self.map.len() > self.cap {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.map.remove(&oldest);
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

struct KeyRef {
    reference: Reference,
    mmd: MmdMonitor,
}

struct Handles {
    embeddings: Counter,
    cache_hits: Counter,
    failures: Counter,
    depth: Gauge,
    cache_size: Gauge,
    lag: Histogram,
    batch: Histogram,
}

struct Worker {
    cfg: ReviewConfig,
    embedder: Arc<dyn BatchEmbedder>,
    engine: Arc<Mutex<Engine>>,
    metrics: Arc<Metrics>,
    sinks: Vec<Arc<dyn AnalysisSink>>,
    depth: Arc<AtomicU64>,
    cache: TextCache,
    keys: HashMap<String, KeyRef>,
    h: Handles,
}

impl Worker {
    fn new(
        cfg: ReviewConfig,
        embedder: Arc<dyn BatchEmbedder>,
        engine: Arc<Mutex<Engine>>,
        metrics: Arc<Metrics>,
        sinks: Vec<Arc<dyn AnalysisSink>>,
        depth: Arc<AtomicU64>,
        device: &str,
    ) -> Worker {
        let h = Handles {
            embeddings: metrics.counter(
                "semtap.embeddings",
                &[("tier", "transformer"), ("device", device)],
            ),
            cache_hits: metrics.counter("semtap.transformer.cache_hits", &[]),
            failures: metrics.counter("semtap.transformer.failures", &[]),
            depth: metrics.gauge("semtap.transformer.queue_depth", &[]),
            cache_size: metrics.gauge("semtap.transformer.cache_entries", &[]),
            lag: metrics.histogram("semtap.transformer.lag", &[]),
            batch: metrics.histogram("semtap.transformer.batch_seconds", &[]),
        };
        Worker {
            cache: TextCache::new(cfg.cache),
            cfg,
            embedder,
            engine,
            metrics,
            sinks,
            depth,
            keys: HashMap::new(),
            h,
        }
    }

    fn run(self, rx: Receiver<Msg>) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.cfg.threads.max(1))
            .thread_name(|i| format!("semtap-transformer-{i}"))
            .start_handler(|_| {
                crate::priority::idle_thread();
            })
            .build();
        match pool {
            Ok(pool) => pool.install(move || self.serve(rx)),
            Err(e) => {
                tracing::warn!(error = %e, "no thread pool for the transformer tier; using the shared one");
                self.serve(rx)
            }
        }
    }

    fn serve(mut self, rx: Receiver<Msg>) {
        let mut flushes: Vec<SyncSender<()>> = Vec::new();
        loop {
            let first = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut jobs = Vec::new();
            let mut closed = false;
            let take = |m: Msg, jobs: &mut Vec<Job>, flushes: &mut Vec<SyncSender<()>>| match m {
                Msg::Job(j) => jobs.push(*j),
                Msg::Flush(done) => flushes.push(done),
            };
            take(first, &mut jobs, &mut flushes);
            let deadline = Instant::now() + self.cfg.max_wait;
            // A flush asks for what is queued now: take it all without waiting.
            while jobs.len() < self.cfg.max_batch {
                let m = if flushes.is_empty() {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match rx.recv_timeout(left) {
                        Ok(m) => m,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                } else {
                    match rx.try_recv() {
                        Ok(m) => m,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                };
                take(m, &mut jobs, &mut flushes);
            }
            if !jobs.is_empty() {
                let n = jobs.len() as u64;
                self.review(jobs);
                let left = self.depth.fetch_sub(n, Ordering::Relaxed).saturating_sub(n);
                self.h.depth.set(left as f64);
            }
            if self.depth.load(Ordering::Relaxed) == 0 || closed {
                for done in flushes.drain(..) {
                    let _ = done.send(());
                }
            }
            if closed {
                break;
            }
        }
    }

    /// Embeds a batch (cache first) and concludes on each job.
    fn review(&mut self, jobs: Vec<Job>) {
        let started = Instant::now();
        let mut texts: Vec<&str> = Vec::new();
        for j in &jobs {
            texts.push(&j.rec.response);
            if let Some(p) = j.rec.prompt.as_deref().filter(|p| !p.trim().is_empty()) {
                texts.push(p);
            }
        }
        let mut vectors: HashMap<&str, Arc<Vec<f32>>> = HashMap::new();
        let mut misses: Vec<&str> = Vec::new();
        for &t in &texts {
            if vectors.contains_key(t) || misses.contains(&t) {
                continue;
            }
            match self.cache.get(t) {
                Some(v) => {
                    self.h.cache_hits.inc();
                    vectors.insert(t, v);
                }
                None => misses.push(t),
            }
        }
        if !misses.is_empty() {
            let out = match self.embedder.embed_batch(&misses) {
                Ok(out) if out.len() == misses.len() => out,
                Ok(out) => self.failed(
                    &format!("{} vectors for {} texts", out.len(), misses.len()),
                    jobs.len(),
                ),
                Err(e) => self.failed(&e, jobs.len()),
            };
            if out.is_empty() {
                return;
            }
            self.h.embeddings.add(misses.len() as u64);
            for (t, v) in misses.iter().zip(out) {
                let v = Arc::new(v);
                self.cache.put(t, v.clone());
                vectors.insert(t, v);
            }
            self.h.batch.record(started.elapsed().as_secs_f64());
        }
        self.h.cache_size.set(self.cache.len() as f64);
        let found: Vec<(Option<Vector>, Option<Vector>)> = jobs
            .iter()
            .map(|j| {
                let answer = vectors.get(j.rec.response.as_str()).cloned();
                let prompt = j
                    .rec
                    .prompt
                    .as_deref()
                    .and_then(|p| vectors.get(p).cloned());
                (answer, prompt)
            })
            .collect();
        drop(vectors);
        for (job, (answer, prompt)) in jobs.into_iter().zip(found) {
            if let Some(answer) = answer {
                self.conclude(job, &answer, prompt.as_deref().map(Vec::as_slice));
            }
        }
    }

    /// Logs and counts a failed batch; its reviews are skipped.
    fn failed(&self, error: &str, jobs: usize) -> Vec<Vec<f32>> {
        tracing::warn!(%error, jobs, "transformer batch failed; its reviews are skipped");
        self.h.failures.add(jobs as u64);
        Vec::new()
    }

    fn conclude(&mut self, job: Job, answer: &[f32], prompt: Option<&[f32]>) {
        let rec = &job.rec;
        let key = job.key;
        let now = rec.ts_ms.max(rec.end_ts_ms);
        let log_len = (1.0 + output_tokens(rec) as f64).ln();
        let lex = lexical::profile(&rec.response);
        let relevance = prompt.map(|p| f64::from(dot(p, answer)));
        let seed = hash_of(&rec.id);
        let mut u = Uniforms::new(seed ^ 0x7472_616e_7366_6f72);
        let mut scores = BTreeMap::new();
        let mut flags = Vec::new();
        let mut mmd_test = None;
        let warming_up;
        if !self.keys.contains_key(&key) && self.keys.len() >= self.cfg.max_keys {
            warming_up = true;
        } else {
            let kr = self.keys.entry(key.clone()).or_insert_with(|| KeyRef {
                reference: Reference::new(self.cfg.baseline_size, now),
                mmd: MmdMonitor::default(),
            });
            warming_up = !kr.reference.is_ready();
            if warming_up {
                if job.sampled && job.static_flags.is_empty() {
                    kr.reference.learn(RefPoint {
                        vector: answer.to_vec(),
                        log_len,
                        relevance,
                        lexical: lex.to_vec(),
                    });
                }
            } else if let Some(s) =
                kr.reference
                    .score(Some(answer), log_len, &lex, relevance, u.next_f64())
            {
                let alpha = self.cfg.alpha;
                for (name, p) in [("outlier", s.outlier_p), ("off_topic", s.relevance_p)] {
                    if let Some(p) = p {
                        scores.insert(name, 1.0 - p);
                        if p <= alpha {
                            flags.push(name);
                        }
                    }
                }
                // Only the uniform sample calibrates and feeds the drift test: flagged answers
                // are not a sample of the traffic.
                if job.sampled {
                    // Calibration as in the engine (baseline.rs, `Absorbed`): the cheap tier's
                    // flags are the independent evidence; the answer's own p-values are not.
                    if !kr.mmd.open {
                        kr.reference.absorb(&s, job.static_flags.is_empty());
                    }
                    let refs = kr.reference.points.iter().map(|p| p.vector.as_slice());
                    mmd_test = kr.mmd.push(answer, refs, seed);
                }
            }
        }
        let mut confirmed = Vec::new();
        let mut cleared = Vec::new();
        for f in job.static_flags.iter().filter(|f| REVIEWABLE.contains(f)) {
            if !scores.contains_key(f) {
                continue;
            }
            if flags.contains(f) {
                confirmed.push(*f);
            } else {
                cleared.push(*f);
            }
        }
        for (list, verdict) in [(&confirmed, "confirmed"), (&cleared, "cleared")] {
            for f in list {
                self.metrics
                    .counter(
                        "semtap.transformer.verdicts",
                        &[("flag", f), ("verdict", verdict)],
                    )
                    .inc();
            }
        }
        let lag = job.queued.elapsed();
        self.h.lag.record(lag.as_secs_f64());
        let review = Review {
            exchange_id: rec.id.clone(),
            key: key.clone(),
            ts_ms: now,
            reason: if job.sampled { "sample" } else { "flagged" },
            static_flags: job.static_flags,
            flags,
            scores,
            confirmed,
            cleared,
            warming_up,
            lag_ms: lag.as_millis() as u64,
        };
        for s in &self.sinks {
            s.on_review(rec, &review);
        }
        if let Some(t) = mmd_test {
            self.metrics
                .gauge(
                    "semtap.transformer.drift_p",
                    &[("semtap.key", key.as_str())],
                )
                .set(t.p);
            if let Some(verdict) = mmd_verdict(&t, &rec.id) {
                let parts = key_parts_of(rec);
                let event = self
                    .engine
                    .lock()
                    .external_drift(&key, &parts, verdict, now, &rec.id);
                if let Some(ev) = event {
                    publish_incident(&self.metrics, &self.sinks, &ev);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::MetricsOptions;
    use crate::record::Api;
    use crate::semantic::engine::EngineConfig;
    use crate::semantic::incidents::IncidentEvent;

    /// Two topics as two directions, with a little per-text spread.
    struct TopicEmbedder {
        gate: Option<Mutex<mpsc::Receiver<()>>>,
    }

    impl BatchEmbedder for TopicEmbedder {
        fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
            if let Some(g) = &self.gate {
                let _ = g.lock().recv();
            }
            Ok(texts
                .iter()
                .map(|t| {
                    let h = (hash_of(t) % 1000) as f32 / 1000.0;
                    let mut v = [0.05f32; 8];
                    let hot = if t.contains("star") { 4 } else { 0 };
                    v[hot] = 1.0;
                    v[hot + 1] = h;
                    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                    v.iter().map(|x| x / n).collect()
                })
                .collect())
        }
        fn device(&self) -> String {
            "cpu".into()
        }
    }

    #[derive(Default)]
    struct Collect(Mutex<Vec<Review>>);

    impl AnalysisSink for Collect {
        fn on_analysis(&self, _: &ExchangeRecord, _: &Analysis) {}
        fn on_incident(&self, _: &IncidentEvent) {}
        fn on_review(&self, _: &ExchangeRecord, review: &Review) {
            self.0.lock().push(review.clone());
        }
    }

    fn record(i: u64, text: &str) -> Arc<ExchangeRecord> {
        Arc::new(ExchangeRecord {
            id: format!("r{i}"),
            ts_ms: 1_000 + i,
            listener: "main".into(),
            api: Api::ChatCompletions,
            request_model: Some("m".into()),
            status: 200,
            outcome: Outcome::Complete,
            response: text.into(),
            ..Default::default()
        })
    }

    fn analysis(flags: Vec<&'static str>) -> Analysis {
        let mut scores = BTreeMap::new();
        scores.insert("blank", 0.0);
        Analysis {
            id: String::new(),
            key: String::new(),
            ts_ms: 0,
            flags,
            scores,
            thresholds: BTreeMap::new(),
            drift: 0.0,
            warming_up: false,
            embedded: 1,
        }
    }

    fn start(cfg: ReviewConfig, embedder: TopicEmbedder) -> (Reviewer, Arc<Collect>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new(MetricsOptions::default()));
        let engine = Arc::new(Mutex::new(Engine::new(EngineConfig::default(), None, "t")));
        let got = Arc::new(Collect::default());
        let r = Reviewer::start(
            cfg,
            Arc::new(embedder),
            engine,
            metrics.clone(),
            vec![got.clone() as Arc<dyn AnalysisSink>],
        )
        .expect("start");
        (r, got, metrics)
    }

    #[test]
    fn flagged_answers_are_confirmed_when_off_baseline_and_cleared_when_not() {
        // 20 reference answers calibrate p-values down to 1/21: alpha must be above that.
        let cfg = ReviewConfig {
            sample: 1.0,
            baseline_size: 20,
            alpha: 0.05,
            max_wait: Duration::from_millis(1),
            ..Default::default()
        };
        let (r, got, _) = start(cfg, TopicEmbedder { gate: None });
        for i in 0..40 {
            r.offer(
                &record(i, &format!("soup recipe number {i}")),
                &analysis(vec![]),
            );
        }
        r.offer(
            &record(100, "a neutron star spins"),
            &analysis(vec!["outlier"]),
        );
        r.offer(
            &record(101, "soup recipe number 7"),
            &analysis(vec!["outlier"]),
        );
        r.flush(Duration::from_secs(10));
        let reviews = got.0.lock().clone();
        assert_eq!(reviews.len(), 42);
        assert!(reviews[..20].iter().all(|v| v.warming_up));
        let star = reviews
            .iter()
            .find(|v| v.exchange_id == "r100")
            .expect("r100");
        assert_eq!(star.confirmed, vec!["outlier"]);
        assert!(star.flags.contains(&"outlier"));
        let soup = reviews
            .iter()
            .find(|v| v.exchange_id == "r101")
            .expect("r101");
        assert_eq!(soup.cleared, vec!["outlier"]);
        assert!(soup.confirmed.is_empty());
    }

    #[test]
    fn a_full_queue_drops_reviews_and_counts_them_without_blocking() {
        let (gate_tx, gate_rx) = mpsc::channel();
        let cfg = ReviewConfig {
            sample: 1.0,
            queue: 2,
            max_batch: 1,
            max_wait: Duration::from_millis(1),
            ..Default::default()
        };
        let (r, _, metrics) = start(
            cfg,
            TopicEmbedder {
                gate: Some(Mutex::new(gate_rx)),
            },
        );
        for i in 0..20 {
            r.offer(&record(i, &format!("answer {i}")), &analysis(vec![]));
        }
        // At most one in the embedder and two queued; the rest were dropped.
        assert!(r.dropped() >= 17, "dropped {}", r.dropped());
        for _ in 0..20 {
            let _ = gate_tx.send(());
        }
        r.flush(Duration::from_secs(10));
        let text = metrics.render_prometheus();
        assert!(
            text.contains("reason=\"transformer_queue_full\""),
            "drops are a metric"
        );
    }

    #[test]
    fn blank_failed_and_unflagged_unsampled_answers_are_not_reviewed() {
        let cfg = ReviewConfig {
            sample: 0.0,
            max_wait: Duration::from_millis(1),
            ..Default::default()
        };
        let (r, got, _) = start(cfg, TopicEmbedder { gate: None });
        r.offer(&record(1, "fine answer"), &analysis(vec![]));
        r.offer(&record(2, "   "), &analysis(vec!["blank"]));
        let mut failed = (*record(3, "upstream error")).clone();
        failed.status = 500;
        r.offer(&Arc::new(failed), &analysis(vec!["error_text"]));
        r.offer(&record(4, "odd answer"), &analysis(vec!["garbled"]));
        r.flush(Duration::from_secs(10));
        let ids: Vec<String> = got.0.lock().iter().map(|v| v.exchange_id.clone()).collect();
        assert_eq!(ids, vec!["r4".to_string()]);
    }

    #[test]
    fn sample_fraction_is_roughly_honoured_and_stable_per_id() {
        let ids: Vec<String> = (0..20_000).map(|i| format!("ex-{i}")).collect();
        let n = ids.iter().filter(|id| in_sample(id, 0.05)).count();
        assert!((800..1200).contains(&n), "{n} of 20000 at 5%");
        assert!(ids.iter().all(|id| in_sample(id, 1.0)));
        assert!(!ids.iter().any(|id| in_sample(id, 0.0)));
        assert_eq!(in_sample("ex-7", 0.3), in_sample("ex-7", 0.3));
    }

    #[test]
    fn cache_evicts_the_least_recently_used_text() {
        let mut c = TextCache::new(2);
        c.put("a", Arc::new(vec![1.0]));
        c.put("b", Arc::new(vec![2.0]));
        assert!(c.get("a").is_some()); // a is now the most recent
        c.put("c", Arc::new(vec![3.0]));
        assert_eq!(c.len(), 2);
        assert!(c.get("b").is_none());
        assert!(c.get("a").is_some());
        assert!(c.get("c").is_some());
    }

    #[test]
    fn a_zero_sized_cache_holds_nothing() {
        let mut c = TextCache::new(0);
        c.put("a", Arc::new(vec![1.0]));
        assert!(c.get("a").is_none());
        assert_eq!(c.len(), 0);
    }
}
