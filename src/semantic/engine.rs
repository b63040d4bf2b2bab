//! The engine: one exchange record in, its flags and scores out, plus any incident that opens
//! or resolves. Deterministic and clock-free (it runs on record timestamps): the same records,
//! settings and embedding tier give the same conclusions, live or in `semtap replay` (which
//! runs the default settings on the transformer tier, so it agrees with a live tap only where
//! those match).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::baseline::{dot, RefPoint, Reference};
use super::checks::{self, CheckConfig, CheckScore, Flag};
use super::conformal::{ShiryaevRoberts, Uniforms};
use super::incidents::{
    Evidence, IncidentBook, IncidentEvent, IncidentKind, KeyParts, Severity, Verdict,
};
use super::lexical;
use super::mmd::MmdMonitor;
use super::monitors::{ModelMonitor, RateMonitor, RateSettings, ValueMonitor};
use super::overlap::{prompt_terms, PromptTerms};
use super::TextEmbedder;
use crate::pipeline::assemble::estimate_tokens;
use crate::record::{Api, ExchangeRecord, Outcome};

/// Engine settings. `[semantic]` sets baseline_size, max_keys, alpha, drift_threshold and
/// cooldown; the rate, value and check settings keep their defaults (not configurable yet).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineConfig {
    /// Clean answers per key in the reference set.
    pub baseline_size: usize,
    /// Keys with a baseline; further keys get the cheap checks only.
    pub max_keys: usize,
    /// Conformal p-value at or below which `outlier`, `length` and `off_topic` fire.
    pub alpha: f64,
    /// Shiryaev–Roberts alarm level: the designed average run length between false drift
    /// alarms, in responses (1e5 = about one per 100k responses per key).
    pub drift_threshold: f64,
    pub rate: RateSettings,
    /// Binomial tail level for the latency, TTFT and throughput monitors.
    pub value_alpha: f64,
    /// An incident may reopen this long after it resolved.
    pub cooldown_ms: u64,
    pub checks: CheckConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            baseline_size: 200,
            max_keys: 500,
            alpha: 0.005,
            drift_threshold: 1e5,
            rate: RateSettings::default(),
            value_alpha: 1e-6,
            cooldown_ms: 60_000,
            checks: CheckConfig::default(),
        }
    }
}

/// What the engine concluded about one exchange.
#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    pub id: String,
    pub key: String,
    pub ts_ms: u64,
    /// Names of the flags that fired.
    pub flags: Vec<&'static str>,
    /// Every computed score by flag name (fired or not).
    pub scores: BTreeMap<&'static str, f64>,
    /// Thresholds the scores were compared with.
    #[serde(skip)]
    pub thresholds: BTreeMap<&'static str, f64>,
    /// The key's drift statistic after this exchange.
    pub drift: f64,
    /// True while the key's reference is still being learned.
    pub warming_up: bool,
    /// Texts embedded for this exchange (answer, prompt).
    pub embedded: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyState {
    reference: Reference,
    drift: ShiryaevRoberts,
    #[serde(default)]
    drift_open: bool,
    #[serde(default)]
    recent_p: VecDeque<f64>,
    blank: RateMonitor,
    refusal: RateMonitor,
    errors: RateMonitor,
    rate_limited: RateMonitor,
    interrupted: RateMonitor,
    outliers: RateMonitor,
    latency: ValueMonitor,
    ttft: ValueMonitor,
    throughput: ValueMonitor,
    model: ModelMonitor,
    last_ms: u64,
    /// Topic drift of the transformer tier's vectors (replay; the live transformer tier keeps
    /// its own, see [`super::review`]).
    #[serde(default)]
    mmd: MmdMonitor,
    /// A drift alarm raised by the live transformer tier is still on: the static tier's
    /// martingale must not resolve the shared `drift` incident under it.
    #[serde(default)]
    external_drift: bool,
    /// The key's prompt vocabulary, for the term overlap in relevance.
    #[serde(default)]
    prompt_terms: PromptTerms,
}

impl KeyState {
    fn new(cfg: &EngineConfig, now_ms: u64) -> Self {
        let learn = cfg.baseline_size as u64;
        let n = cfg.baseline_size.max(20);
        KeyState {
            reference: Reference::new(cfg.baseline_size, now_ms),
            drift: ShiryaevRoberts::default(),
            drift_open: false,
            recent_p: VecDeque::new(),
            blank: RateMonitor::new("blank_rate", 0.01, 0.2, learn),
            refusal: RateMonitor::new("refusal_rate", 0.02, 0.3, learn),
            errors: RateMonitor::new("error_rate", 0.01, 0.2, learn),
            rate_limited: RateMonitor::new("rate_limited", 0.01, 0.3, learn),
            interrupted: RateMonitor::new("stream_interrupted", 0.01, 0.2, learn),
            outliers: RateMonitor::new("outlier_rate", 0.02, 0.2, learn),
            latency: ValueMonitor::new("latency", true, 0.5, n),
            ttft: ValueMonitor::new("ttft", true, 0.25, n),
            throughput: ValueMonitor::new("throughput", false, 5.0, n),
            model: ModelMonitor::default(),
            last_ms: now_ms,
            mmd: MmdMonitor::default(),
            external_drift: false,
            prompt_terms: PromptTerms::default(),
        }
    }
}

/// A key's baseline as `GET /baselines` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineInfo {
    pub key: String,
    pub ready: bool,
    pub size: usize,
    pub target: usize,
    pub pinned: bool,
    pub created_ms: u64,
    pub last_ms: u64,
    pub drift: f64,
    pub response_model: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    /// [`STATE_VERSION`] when written.
    version: u32,
    tier: String,
    keys: HashMap<String, KeyState>,
}

/// Version of the state file. 2: the outlier score adds its terms (baseline.rs) and the
/// lexical profile has 12 rates; a version-1 file keeps its references (and pins; their
/// answers' 10 rates still count) but not the outlier and drift calibration scores, which
/// the old score computed.
const STATE_VERSION: u32 = 2;

/// The semantic engine's state over all keys.
pub struct Engine {
    cfg: EngineConfig,
    embedder: Option<Arc<dyn TextEmbedder>>,
    keys: HashMap<String, KeyState>,
    book: IncidentBook,
    refusal_vectors: Vec<Vec<f32>>,
    overflow_keys: u64,
    prefix: String,
    /// Scratch: the current prompt's terms.
    terms: Vec<u64>,
}

/// Weight of the term overlap (0–1) added to the prompt–answer cosine in the relevance
/// score. On the evaluation streams the overlap separates off-topic answers far better than
/// the static tier's cosine (docs/EVALUATION.md); chosen there.
pub const OVERLAP_WEIGHT: f64 = 1.0;

/// The baseline key: `<listener>/<provider>/<request model>[/<route>]`.
pub fn key_of(rec: &ExchangeRecord) -> String {
    let model = rec.request_model.as_deref().unwrap_or("unknown");
    let mut k = format!("{}/{}/{}", rec.listener, rec.provider.as_str(), model);
    if let Some(r) = rec.route.as_deref() {
        k.push('/');
        k.push_str(r);
    }
    k
}

/// The parts of [`key_of`], unjoined (models may contain `/`).
pub fn key_parts_of(rec: &ExchangeRecord) -> KeyParts {
    KeyParts {
        listener: rec.listener.clone(),
        provider: rec.provider.as_str().to_string(),
        model: rec
            .request_model
            .clone()
            .unwrap_or_else(|| "unknown".to_string()),
        route: rec.route.clone(),
    }
}

/// The answer's output tokens: the provider's count, else an estimate from the text.
pub fn output_tokens(rec: &ExchangeRecord) -> u64 {
    rec.usage
        .output_tokens
        .unwrap_or_else(|| estimate_tokens(&rec.response))
}

fn is_content_api(api: Api) -> bool {
    matches!(
        api,
        Api::ChatCompletions | Api::Responses | Api::Completions | Api::Messages
    )
}

fn seed_of(id: &str) -> u64 {
    // FNV-1a: a stable seed per exchange for smoothed p-values.
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Engine {
    /// An engine; `embedder` is `None` when no model could be loaded (degraded: cheap checks,
    /// length and the rate and value monitors still run).
    pub fn new(
        cfg: EngineConfig,
        embedder: Option<Arc<dyn TextEmbedder>>,
        id_prefix: &str,
    ) -> Engine {
        let refusal_vectors = embedder
            .as_ref()
            .map(|e| {
                checks::refusal_exemplars()
                    .iter()
                    .map(|t| e.embed(t))
                    .collect()
            })
            .unwrap_or_default();
        Engine {
            book: IncidentBook::new(cfg.cooldown_ms, id_prefix),
            cfg,
            embedder,
            keys: HashMap::new(),
            refusal_vectors,
            overflow_keys: 0,
            prefix: id_prefix.to_string(),
            terms: Vec::new(),
        }
    }

    /// Switches on embeddings (the model finished loading while traffic flowed). Refusal
    /// exemplars are embedded and each key's reference set starts over (length-only points are
    /// not comparable with vectors); the monitors, open incidents and incident ids carry on.
    pub fn set_embedder(&mut self, embedder: Arc<dyn TextEmbedder>) {
        self.refusal_vectors = checks::refusal_exemplars()
            .iter()
            .map(|t| embedder.embed(t))
            .collect();
        self.embedder = Some(embedder);
        for st in self.keys.values_mut() {
            st.reference = Reference::new(self.cfg.baseline_size, st.last_ms);
            st.drift = ShiryaevRoberts::default();
            st.recent_p.clear();
            st.mmd.reset();
        }
    }

    /// The settings the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Prefix of this engine's incident ids.
    pub fn id_prefix(&self) -> &str {
        &self.prefix
    }

    /// The embedding tier in use, if any.
    pub fn tier(&self) -> Option<&'static str> {
        self.embedder.as_ref().map(|e| e.tier())
    }

    /// Tells the embedder which texts are coming (see [`TextEmbedder::prefetch`]).
    pub fn prefetch(&self, texts: &[&str]) {
        if let Some(e) = &self.embedder {
            e.prefetch(texts);
        }
    }

    /// Keys that could not get a baseline because `max_keys` was reached.
    pub fn overflow_keys(&self) -> u64 {
        self.overflow_keys
    }

    /// Analyses one exchange.
    pub fn process(&mut self, rec: &ExchangeRecord) -> (Analysis, Vec<IncidentEvent>) {
        let key = key_of(rec);
        let now = rec.ts_ms.max(rec.end_ts_ms);
        let mut u = Uniforms::new(seed_of(&rec.id));
        let mut scores = BTreeMap::new();
        let mut thresholds = BTreeMap::new();
        let mut flags = Vec::new();
        let mut put = |s: CheckScore, flags: &mut Vec<&'static str>| {
            let name = s.flag.as_str();
            scores.insert(name, s.score);
            thresholds.insert(name, s.threshold);
            if s.fired() {
                flags.push(name);
            }
        };

        let content = is_content_api(rec.api);
        let ok = (200..300).contains(&rec.status);
        let mut cheap = checks::run_checks(rec, &self.cfg.checks);

        // Embeddings (static tier on everything; only answers that have text).
        let text_ok = content && ok && !rec.response.trim().is_empty();
        let vector = match (&self.embedder, text_ok) {
            (Some(e), true) => Some(e.embed(&rec.response)),
            _ => None,
        };
        // Relevance only feeds the key's reference, which complete answers of keys within the
        // key limit reach: no prompt embedding for the rest.
        let scored = rec.outcome == Outcome::Complete
            && (self.keys.contains_key(&key) || self.keys.len() < self.cfg.max_keys);
        let cosine = match (&self.embedder, &vector, rec.prompt.as_deref()) {
            (Some(e), Some(v), Some(p)) if scored && !p.trim().is_empty() => {
                Some(f64::from(dot(&e.embed(p), v)))
            }
            _ => None,
        };
        let embedded = u32::from(vector.is_some()) + u32::from(cosine.is_some());

        // Refusal: phrasing, raised by closeness to refusal exemplars.
        if let (Some(v), Some(r)) = (&vector, cheap.iter_mut().find(|c| c.flag == Flag::Refusal)) {
            let sim = self
                .refusal_vectors
                .iter()
                .map(|x| f64::from(dot(x, v)))
                .fold(f64::MIN, f64::max);
            if sim.is_finite() {
                let sim_score = ((sim - 0.6) / 0.3).clamp(0.0, 1.0);
                r.score = r.score.max(0.5 * r.score + 0.5 * sim_score);
            }
        }
        let fired = |f: Flag, cheap: &[CheckScore]| cheap.iter().any(|c| c.flag == f && c.fired());
        let blank = fired(Flag::Blank, &cheap);
        let refusal = fired(Flag::Refusal, &cheap);
        let any_cheap = cheap.iter().any(|c| c.fired());
        let cheap_anomaly = [Flag::Repetition, Flag::Garbled, Flag::ErrorText]
            .iter()
            .any(|f| fired(*f, &cheap));
        for c in cheap.iter().copied() {
            put(c, &mut flags);
        }

        let out_tokens = output_tokens(rec);
        let log_len = (1.0 + out_tokens as f64).ln();

        if !self.keys.contains_key(&key) && self.keys.len() >= self.cfg.max_keys {
            // Past the key limit: the cheap checks only, no baseline.
            self.overflow_keys += 1;
            let analysis = Analysis {
                id: rec.id.clone(),
                key,
                ts_ms: now,
                flags,
                scores,
                thresholds,
                drift: 0.0,
                warming_up: true,
                embedded,
            };
            return (analysis, Vec::new());
        }
        let st = self
            .keys
            .entry(key.clone())
            .or_insert_with(|| KeyState::new(&self.cfg, now));
        st.last_ms = now;
        // Relevance: the cosine of prompt and answer, plus how much of the prompt's particular
        // vocabulary the answer mentions (overlap.rs); the prompt then joins the key's
        // vocabulary.
        let relevance = match (cosine, rec.prompt.as_deref()) {
            (Some(c), Some(p)) => {
                prompt_terms(p, &mut self.terms);
                let o = st.prompt_terms.overlap(&self.terms, &rec.response);
                st.prompt_terms.observe(&self.terms);
                Some(c + OVERLAP_WEIGHT * o.unwrap_or(0.0))
            }
            _ => None,
        };
        let mut verdicts: Vec<(IncidentKind, Verdict)> = Vec::new();
        let alpha = self.cfg.alpha;
        let warming_up = !st.reference.is_ready();

        let mut outlier_fired = false;
        if content && ok && rec.outcome == Outcome::Complete && !blank {
            let lex = lexical::profile(&rec.response);
            if let Some(s) =
                st.reference
                    .score(vector.as_deref(), log_len, &lex, relevance, u.next_f64())
            {
                // Every scored answer calibrates the drift test; only answers with no
                // independent sign of trouble calibrate the flags (baseline.rs, `Absorbed`).
                let clean = !any_cheap && rec.finish_reasons.iter().all(|f| f != "length");
                if !st.drift_open {
                    st.reference.absorb(&s, clean);
                }
                put(
                    CheckScore {
                        flag: Flag::Length,
                        score: 1.0 - s.length_p,
                        threshold: 1.0 - alpha,
                    },
                    &mut flags,
                );
                if let Some(p) = s.outlier_p {
                    outlier_fired = p <= alpha;
                    put(
                        CheckScore {
                            flag: Flag::Outlier,
                            score: 1.0 - p,
                            threshold: 1.0 - alpha,
                        },
                        &mut flags,
                    );
                }
                if let Some(p) = s.relevance_p {
                    put(
                        CheckScore {
                            flag: Flag::OffTopic,
                            score: 1.0 - p,
                            threshold: 1.0 - alpha,
                        },
                        &mut flags,
                    );
                }
                // Drift: the stream of p-values stops looking uniform.
                let p = s.drift_p;
                let r = st.drift.update(p);
                st.recent_p.push_back(p);
                while st.recent_p.len() > 50 {
                    st.recent_p.pop_front();
                }
                if r >= self.cfg.drift_threshold {
                    st.drift.reset();
                    st.drift_open = true;
                    let severity = if st.recent_p.iter().filter(|&&p| p <= 0.05).count() * 2
                        >= st.recent_p.len()
                    {
                        Severity::Critical
                    } else {
                        Severity::Warning
                    };
                    verdicts.push((
                        IncidentKind::Drift,
                        Verdict::Fire {
                            severity,
                            evidence: Evidence {
                                monitor: format!("drift.{}_martingale", self.embedder.as_ref().map(|e| e.tier()).unwrap_or("length")),
                                score: r,
                                threshold: self.cfg.drift_threshold,
                                window: st.recent_p.len() as u64,
                                example_ids: vec![rec.id.clone()],
                                detail: format!(
                                    "Shiryaev-Roberts statistic {r:.3e} over the designed false-alarm level; {} of the last {} answers at p <= 0.05",
                                    st.recent_p.iter().filter(|&&p| p <= 0.05).count(),
                                    st.recent_p.len()
                                ),
                            },
                        },
                    ));
                    // Resolving takes 50 fresh healthy answers, not the ones before the alarm.
                    st.recent_p.clear();
                } else if st.drift_open && st.recent_p.len() >= 50 {
                    let mean = st.recent_p.iter().sum::<f64>() / st.recent_p.len() as f64;
                    let low = st.recent_p.iter().filter(|&&p| p <= 0.05).count() as f64
                        / st.recent_p.len() as f64;
                    if mean >= 0.4 && low <= 0.1 && r < 100.0 {
                        st.drift_open = false;
                        if !st.mmd.open && !st.external_drift {
                            verdicts.push((IncidentKind::Drift, Verdict::Clear));
                        }
                    }
                }
                // Topic drift of the window as a whole (transformer vectors only).
                let mmd_on = self.embedder.as_ref().map(|e| e.tier()) == Some("transformer");
                if let (Some(v), true) = (vector.as_deref(), mmd_on) {
                    let refs = st.reference.points.iter().map(|p| p.vector.as_slice());
                    if let Some(t) = st.mmd.push(v, refs, seed_of(&rec.id)) {
                        if let Some(verdict) = mmd_verdict(&t, &rec.id) {
                            let fire = matches!(verdict, Verdict::Fire { .. });
                            if fire || (!st.drift_open && !st.external_drift) {
                                verdicts.push((IncidentKind::Drift, verdict));
                            }
                        }
                    }
                }
            } else if !any_cheap && rec.finish_reasons.iter().all(|f| f != "length") {
                st.reference.learn(RefPoint {
                    vector: vector.clone().unwrap_or_default(),
                    log_len,
                    relevance,
                    lexical: lex.to_vec(),
                });
            }
        }

        // Rate monitors.
        let rs = &self.cfg.rate;
        if content && ok {
            verdicts.push((
                IncidentKind::BlankRate,
                st.blank.observe(blank, &rec.id, rs),
            ));
            verdicts.push((
                IncidentKind::RefusalRate,
                st.refusal.observe(refusal, &rec.id, rs),
            ));
        }
        let server_error = rec.status >= 500
            || matches!(
                rec.outcome,
                Outcome::UpstreamUnreachable | Outcome::UpstreamTimeout
            );
        if rec.outcome != Outcome::ClientCancelled {
            verdicts.push((
                IncidentKind::ErrorRate,
                st.errors.observe(server_error, &rec.id, rs),
            ));
            verdicts.push((
                IncidentKind::RateLimited,
                st.rate_limited.observe(rec.status == 429, &rec.id, rs),
            ));
        }
        if rec.stream && ok {
            let cut = rec.outcome == Outcome::StreamInterrupted
                || rec.error_type.as_deref() == Some("stream_incomplete");
            verdicts.push((
                IncidentKind::StreamInterrupted,
                st.interrupted.observe(cut, &rec.id, rs),
            ));
        }
        if !warming_up && content && ok && !blank {
            // Anomalous outputs: far from the baseline, or caught by a cheap check that has no
            // rate monitor of its own (loops, garbage, error text inside a 200).
            let anomalous = outlier_fired || cheap_anomaly;
            verdicts.push((
                IncidentKind::OutlierRate,
                st.outliers.observe(anomalous, &rec.id, rs),
            ));
        }
        // Value monitors (successful, complete exchanges only).
        if ok && rec.outcome == Outcome::Complete {
            let va = self.cfg.value_alpha;
            verdicts.push((
                IncidentKind::Latency,
                st.latency.observe(rec.duration_ms / 1000.0, &rec.id, va),
            ));
            if let Some(t) = rec.ttft_ms {
                verdicts.push((IncidentKind::Ttft, st.ttft.observe(t / 1000.0, &rec.id, va)));
            }
            if content && out_tokens >= 20 {
                let gen_ms = (rec.duration_ms - rec.ttft_ms.unwrap_or(0.0)).max(1.0);
                verdicts.push((
                    IncidentKind::Throughput,
                    st.throughput
                        .observe(out_tokens as f64 / (gen_ms / 1000.0), &rec.id, va),
                ));
            }
            if content {
                verdicts.push((
                    IncidentKind::ModelChanged,
                    st.model.observe(rec.response_model.as_deref(), &rec.id),
                ));
            }
        }
        let drift = st.drift.value();

        let parts = key_parts_of(rec);
        let events = verdicts
            .into_iter()
            .filter_map(|(kind, v)| self.book.apply_for(kind, &key, &parts, v, now, &rec.id))
            .collect();
        let analysis = Analysis {
            id: rec.id.clone(),
            key,
            ts_ms: now,
            flags,
            scores,
            thresholds,
            drift,
            warming_up,
            embedded,
        };
        (analysis, events)
    }

    /// A drift verdict from outside the engine (the live transformer tier's MMD monitor) for
    /// `key`. An alarm opens the key's `drift` incident (or joins an open one); a clear
    /// resolves it only if the engine's own drift monitors are calm too.
    pub fn external_drift(
        &mut self,
        key: &str,
        parts: &KeyParts,
        verdict: Verdict,
        now_ms: u64,
        exchange_id: &str,
    ) -> Option<IncidentEvent> {
        let st = self.keys.get_mut(key)?;
        match verdict {
            Verdict::Fire { .. } => st.external_drift = true,
            Verdict::Clear => {
                st.external_drift = false;
                if st.drift_open || st.mmd.open {
                    return None;
                }
            }
            Verdict::Hold => return None,
        }
        self.book.apply_for(
            IncidentKind::Drift,
            key,
            parts,
            verdict,
            now_ms,
            exchange_id,
        )
    }

    /// Every key's baseline.
    pub fn baselines(&self) -> Vec<BaselineInfo> {
        let mut v: Vec<BaselineInfo> = self
            .keys
            .iter()
            .map(|(k, s)| BaselineInfo {
                key: k.clone(),
                ready: s.reference.is_ready(),
                size: s.reference.points.len(),
                target: s.reference.size,
                pinned: s.reference.pinned,
                created_ms: s.reference.created_ms,
                last_ms: s.last_ms,
                drift: s.drift.value(),
                response_model: s.model.established().map(str::to_string),
            })
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    /// Pins a key's reference so it is kept as is. False if the key is unknown.
    pub fn pin(&mut self, key: &str) -> bool {
        match self.keys.get_mut(key) {
            Some(s) => {
                s.reference.pinned = true;
                true
            }
            None => false,
        }
    }

    /// Starts a key's reference over (e.g. after accepting a model change); resolves its
    /// open incidents. `None` if the key is unknown.
    pub fn reset(&mut self, key: &str, now_ms: u64) -> Option<Vec<IncidentEvent>> {
        let size = self.cfg.baseline_size;
        let s = self.keys.get_mut(key)?;
        s.reference = Reference::new(size, now_ms);
        s.drift.reset();
        s.drift_open = false;
        s.recent_p.clear();
        s.mmd.reset();
        s.external_drift = false;
        s.model.accept_current();
        Some(self.book.resolve_key(key, now_ms))
    }

    /// Open incidents.
    pub fn open_incidents(&self) -> Vec<super::incidents::Incident> {
        self.book.open().cloned().collect()
    }

    /// Writes every key's state to `path` atomically.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let saved = Saved {
            version: STATE_VERSION,
            tier: self.tier().unwrap_or("none").to_string(),
            keys: self.keys.clone(),
        };
        let bytes = serde_json::to_vec(&saved).map_err(std::io::Error::other)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }

    /// Loads state written by [`Engine::save`]. Baselines learned with another embedding tier
    /// are dropped (their vectors are not comparable). Returns the number of keys loaded.
    pub fn load(&mut self, path: &Path) -> std::io::Result<usize> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let saved: Saved = serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
        if saved.tier != self.tier().unwrap_or("none") {
            tracing::warn!(saved = %saved.tier, current = self.tier().unwrap_or("none"), "saved baselines are for another embedding tier; relearning");
            return Ok(0);
        }
        let n = saved.keys.len();
        if saved.version > STATE_VERSION {
            tracing::warn!(
                saved = saved.version,
                current = STATE_VERSION,
                "baselines written by a newer semtap; loading what this version understands"
            );
        }
        let old_scores = saved.version < STATE_VERSION;
        if old_scores {
            tracing::info!(
                saved = saved.version,
                current = STATE_VERSION,
                "baselines from an older version: references kept, outlier calibration relearned"
            );
        }
        for (k, mut s) in saved.keys {
            if old_scores {
                s.reference.forget_outlier_calibration();
            }
            s.reference.finalize_if_ready();
            match self.keys.get_mut(&k) {
                // Traffic arrived before the load: its monitors are current, the saved
                // reference and drift state are what took a warm-up to learn.
                Some(cur) => {
                    cur.reference = s.reference;
                    cur.drift = s.drift;
                    cur.drift_open = s.drift_open;
                    cur.recent_p = s.recent_p;
                }
                None => {
                    self.keys.insert(k, s);
                }
            }
        }
        Ok(n)
    }
}

impl Reference {
    /// Recomputes statistics if the (deserialised) reference is complete.
    pub fn finalize_if_ready(&mut self) {
        if self.is_ready() {
            self.finalize();
        }
    }
}

/// The incident verdict of an MMD window test, if it changed the monitor's state.
pub fn mmd_verdict(t: &super::mmd::MmdTest, exchange_id: &str) -> Option<Verdict> {
    use super::mmd::{CONFIRM, PERMUTATIONS, WINDOW};
    if t.alarm {
        return Some(Verdict::Fire {
            severity: Severity::Warning,
            evidence: Evidence {
                monitor: "drift.transformer_mmd".to_string(),
                score: t.statistic,
                threshold: 1.0 / (PERMUTATIONS as f64 + 1.0),
                window: (WINDOW as u64) * u64::from(CONFIRM),
                example_ids: vec![exchange_id.to_string()],
                detail: format!(
                    "{CONFIRM} consecutive windows of {WINDOW} answers each farther from the reference than all {PERMUTATIONS} permutations (p = {:.4}, MMD² {:.3e}, test {})",
                    t.p, t.statistic, t.number
                ),
            },
        });
    }
    t.clear.then_some(Verdict::Clear)
}
