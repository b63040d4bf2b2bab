//! The semantic engine on synthetic traffic: blank, error, rate-limit, latency, model-swap and
//! drift monitors opening (and steady traffic opening nothing), baselines that survive a model
//! swap and a restart, reset, and the model arriving after incidents opened.

use std::sync::Arc;

use semtap::record::{Api, ExchangeRecord, Outcome, Provider, Usage};
use semtap::semantic::engine::{Engine, EngineConfig};
use semtap::semantic::incidents::IncidentEvent;
use semtap::semantic::TextEmbedder;

/// A bag-of-words hashing embedder: cheap, deterministic, and topic-sensitive enough to tell
/// paragraphs about different subjects apart.
struct HashEmbedder;

/// The same embedder presented as the transformer tier (what replay runs on).
struct AsTransformer;

impl TextEmbedder for AsTransformer {
    fn embed(&self, text: &str) -> Vec<f32> {
        HashEmbedder.embed(text)
    }
    fn dim(&self) -> usize {
        64
    }
    fn tier(&self) -> &'static str {
        "transformer"
    }
}

impl TextEmbedder for HashEmbedder {
    fn embed(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0f32; 64];
        for w in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.len() > 2)
        {
            let h = w
                .to_lowercase()
                .bytes()
                .fold(1469598103934665603u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(1099511628211)
                });
            v[(h % 64) as usize] += 1.0;
            v[((h >> 8) % 64) as usize] += 0.5;
        }
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if n > 0.0 {
            v.iter_mut().for_each(|x| *x /= n);
        }
        v
    }
    fn dim(&self) -> usize {
        64
    }
    fn tier(&self) -> &'static str {
        "static"
    }
}

const COOKING: &[&str] = &[
    "Sear the steak in a hot cast iron pan with oil, then rest it so the juices settle before slicing against the grain.",
    "Bread dough needs kneading to develop gluten; let it rise until doubled, shape it, proof again, then bake in a hot oven with steam.",
    "A good tomato sauce starts with olive oil, garlic and onion softened slowly, then crushed tomatoes simmered with basil and salt.",
    "Risotto wants arborio rice toasted in butter, white wine, then hot stock added a ladle at a time while stirring until creamy.",
    "To poach an egg, keep the water at a gentle simmer, add a splash of vinegar, swirl, and slide the egg in for three minutes.",
    "Caramelising onions takes patience: low heat, butter, a pinch of salt, and forty minutes of stirring until deep brown and sweet.",
    "Roast vegetables at high heat spread on a tray with oil and salt so they brown instead of steaming; turn them once halfway.",
    "For a vinaigrette whisk one part vinegar with three parts oil, mustard to emulsify, salt and pepper, and taste before dressing.",
];

const ASTRONOMY: &[&str] = &[
    "Neutron stars form when massive stars collapse; their cores pack more mass than the Sun into a sphere a city wide, spinning rapidly.",
    "The cosmic microwave background is relic radiation from the early universe, cooled by expansion to about three kelvin today.",
    "Exoplanets are found by transits, when a planet dims its star slightly, and by radial velocity, the wobble its gravity induces.",
    "Black holes bend light around them; the event horizon marks where escape velocity exceeds the speed of light and nothing returns.",
    "Galaxies cluster along filaments of dark matter, leaving vast voids; the cosmic web emerges from tiny early density fluctuations.",
    "Jupiter's great red spot is a storm larger than Earth that has raged for centuries, driven by the planet's fast rotation and heat.",
];

fn record(i: u64, key_model: &str, response: &str) -> ExchangeRecord {
    ExchangeRecord {
        id: format!("x{i}"),
        ts_ms: 1_700_000_000_000 + i * 1000,
        end_ts_ms: 1_700_000_000_000 + i * 1000 + 800,
        listener: "main".into(),
        provider: Provider::OpenAi,
        api: Api::ChatCompletions,
        operation: "chat".into(),
        request_model: Some(key_model.into()),
        response_model: Some(format!("{key_model}-2024-08-06")),
        status: 200,
        outcome: Outcome::Complete,
        prompt: Some("Tell me something useful about cooking.".into()),
        response: response.into(),
        finish_reasons: vec!["stop".into()],
        usage: Usage {
            input_tokens: Some(20),
            output_tokens: Some(30 + (i % 7) * 3),
            ..Default::default()
        },
        duration_ms: 800.0 + (i % 13) as f64 * 10.0,
        ttft_ms: Some(200.0 + (i % 11) as f64 * 5.0),
        stream: true,
        ..Default::default()
    }
}

fn cooking(i: u64) -> String {
    let a = COOKING[(i % COOKING.len() as u64) as usize];
    let b = COOKING[((i * 7 + 3) % COOKING.len() as u64) as usize];
    format!("{a} {b}")
}

fn engine(embedder: bool) -> Engine {
    let cfg = EngineConfig {
        baseline_size: 100,
        ..Default::default()
    };
    let e: Option<Arc<dyn TextEmbedder>> = if embedder {
        Some(Arc::new(HashEmbedder))
    } else {
        None
    };
    Engine::new(cfg, e, "t")
}

fn opened(events: &[IncidentEvent], kind: &str) -> bool {
    events
        .iter()
        .any(|e| e.state == "opened" && e.incident.kind.as_str() == kind)
}

/// Runs `n` normal exchanges from index `start`; asserts none opens an incident.
fn steady(e: &mut Engine, start: u64, n: u64) {
    for i in start..start + n {
        let (_, ev) = e.process(&record(i, "gpt-4o", &cooking(i)));
        assert!(
            ev.is_empty(),
            "no incident on normal traffic, got {:?} at {i}",
            ev.iter()
                .map(|e| e.incident.kind.as_str())
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn steady_traffic_opens_nothing_and_warms_up() {
    let mut e = engine(true);
    steady(&mut e, 0, 600);
    let b = e.baselines();
    assert_eq!(b.len(), 1);
    assert!(b[0].ready);
    assert_eq!(b[0].key, "main/openai/gpt-4o");
}

#[test]
fn a_burst_of_blank_answers_opens_blank_rate_and_resolves() {
    let mut e = engine(true);
    steady(&mut e, 0, 150);
    let mut all = Vec::new();
    for i in 150..170 {
        let text = if i % 2 == 0 {
            String::new()
        } else {
            cooking(i)
        };
        let (a, ev) = e.process(&record(i, "gpt-4o", &text));
        if text.is_empty() {
            assert!(a.flags.contains(&"blank"));
        }
        all.extend(ev);
    }
    assert!(opened(&all, "blank_rate"), "{all:?}");
    let mut resolved = false;
    for i in 170..260 {
        let (_, ev) = e.process(&record(i, "gpt-4o", &cooking(i)));
        resolved |= ev
            .iter()
            .any(|e| e.state == "resolved" && e.incident.kind.as_str() == "blank_rate");
    }
    assert!(resolved);
}

#[test]
fn server_errors_and_429s_open_their_incidents() {
    let mut e = engine(false);
    steady(&mut e, 0, 120);
    let mut all = Vec::new();
    for i in 120..140 {
        let mut r = record(i, "gpt-4o", "");
        r.status = if i % 2 == 0 { 529 } else { 429 };
        r.error_type = Some("overloaded_error".into());
        all.extend(e.process(&r).1);
    }
    assert!(opened(&all, "error_rate"));
    assert!(opened(&all, "rate_limited"));
    let err = all
        .iter()
        .find(|e| e.incident.kind.as_str() == "error_rate")
        .map(|e| e.incident.clone());
    let err = err.expect("error incident");
    assert!(!err.evidence.example_ids.is_empty());
    assert_eq!(err.key, "main/openai/gpt-4o");
}

#[test]
fn a_silent_model_swap_is_an_incident_and_keeps_the_baseline() {
    let mut e = engine(true);
    steady(&mut e, 0, 150);
    let mut all = Vec::new();
    for i in 150..160 {
        let mut r = record(i, "gpt-4o", &cooking(i));
        r.response_model = Some("gpt-4o-2024-11-20".into());
        all.extend(e.process(&r).1);
    }
    assert!(opened(&all, "model_changed"));
    let ev = all
        .iter()
        .find(|e| e.incident.kind.as_str() == "model_changed")
        .map(|e| e.incident.evidence.detail.clone());
    assert_eq!(
        ev.as_deref(),
        Some("gpt-4o-2024-08-06 -> gpt-4o-2024-11-20")
    );
    assert!(
        e.baselines()[0].ready,
        "the swap does not reset the baseline"
    );
}

#[test]
fn a_topic_shift_is_drift_within_100_responses() {
    let mut e = engine(true);
    steady(&mut e, 0, 300);
    let mut found = None;
    for i in 0..200u64 {
        let a = ASTRONOMY[(i % ASTRONOMY.len() as u64) as usize];
        let b = ASTRONOMY[((i * 5 + 1) % ASTRONOMY.len() as u64) as usize];
        let (_, ev) = e.process(&record(300 + i, "gpt-4o", &format!("{a} {b}")));
        if opened(&ev, "drift") {
            found = Some(i);
            break;
        }
    }
    assert!(
        found.is_some_and(|i| i < 100),
        "drift found after {found:?} responses"
    );
}

/// The transformer tier with the per-answer martingale switched off: whatever finds drift is
/// the window test.
fn mmd_only_engine() -> Engine {
    let cfg = EngineConfig {
        baseline_size: 100,
        drift_threshold: f64::INFINITY,
        ..Default::default()
    };
    Engine::new(cfg, Some(Arc::new(AsTransformer)), "t")
}

#[test]
fn on_the_transformer_tier_a_topic_shift_is_found_by_the_window_test_within_100_responses() {
    let mut e = mmd_only_engine();
    steady(&mut e, 0, 1000);
    let mut found = None;
    for i in 0..200u64 {
        let a = ASTRONOMY[(i % ASTRONOMY.len() as u64) as usize];
        let b = ASTRONOMY[((i * 5 + 1) % ASTRONOMY.len() as u64) as usize];
        let (_, ev) = e.process(&record(1000 + i, "gpt-4o", &format!("{a} {b}")));
        if let Some(d) = ev
            .iter()
            .find(|e| e.state == "opened" && e.incident.kind.as_str() == "drift")
        {
            assert_eq!(d.incident.evidence.monitor, "drift.transformer_mmd");
            found = Some(i);
            break;
        }
    }
    assert!(
        found.is_some_and(|i| i < 100),
        "drift found after {found:?} responses"
    );
    // Back to the usual topic: the window test clears and the incident resolves.
    let mut resolved = false;
    for i in 1200..1500u64 {
        let (_, ev) = e.process(&record(i, "gpt-4o", &cooking(i)));
        resolved |= ev
            .iter()
            .any(|e| e.state == "resolved" && e.incident.kind.as_str() == "drift");
    }
    assert!(resolved, "drift resolved once answers are back on topic");
}

#[test]
fn the_window_test_does_not_run_on_the_static_tier() {
    let cfg = EngineConfig {
        baseline_size: 100,
        drift_threshold: f64::INFINITY,
        ..Default::default()
    };
    let mut e = Engine::new(cfg, Some(Arc::new(HashEmbedder)), "t");
    steady(&mut e, 0, 300);
    for i in 0..300u64 {
        let a = ASTRONOMY[(i % ASTRONOMY.len() as u64) as usize];
        let (_, ev) = e.process(&record(300 + i, "gpt-4o", a));
        assert!(!opened(&ev, "drift"));
    }
}

#[test]
fn a_latency_spike_opens_latency() {
    let mut e = engine(false);
    steady(&mut e, 0, 250);
    let mut all = Vec::new();
    for i in 250..280 {
        let mut r = record(i, "gpt-4o", &cooking(i));
        r.duration_ms = 6000.0;
        all.extend(e.process(&r).1);
    }
    assert!(opened(&all, "latency"), "{all:?}");
}

/// An engine warmed up on steady traffic, its state saved in `dir`; returns the file.
fn saved_baselines(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("baselines.json");
    let mut e = engine(true);
    steady(&mut e, 0, 150);
    e.save(&path).expect("save");
    path
}

#[test]
fn baselines_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = saved_baselines(dir.path());
    let mut e2 = engine(true);
    assert_eq!(e2.load(&path).expect("load"), 1);
    assert!(e2.baselines()[0].ready);
    // The reloaded baseline scores immediately (no new warm-up).
    let (a, _) = e2.process(&record(1000, "gpt-4o", &cooking(3)));
    assert!(a.scores.contains_key("outlier"));
    assert!(!a.warming_up);
}

#[test]
fn a_state_file_of_the_previous_version_keeps_its_baseline_and_scores() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = saved_baselines(dir.path());
    // What version 1 wrote: 10 lexical rates per reference answer, outlier scores of the old
    // formula in the calibration.
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    v["version"] = 1.into();
    for key in v["keys"].as_object_mut().expect("keys").values_mut() {
        for p in key["reference"]["points"].as_array_mut().expect("points") {
            p["lexical"].as_array_mut().expect("lexical").truncate(10);
        }
    }
    std::fs::write(&path, serde_json::to_vec(&v).expect("json")).expect("write");
    let mut e2 = engine(true);
    assert_eq!(e2.load(&path).expect("load"), 1);
    assert!(e2.baselines()[0].ready);
    let (a, _) = e2.process(&record(1000, "gpt-4o", &cooking(3)));
    assert!(a.scores.contains_key("outlier"), "{a:?}");
    assert!(!a.warming_up);
}

#[test]
fn reset_starts_the_baseline_over_and_resolves_incidents() {
    let mut e = engine(true);
    steady(&mut e, 0, 150);
    for i in 150..160 {
        let mut r = record(i, "gpt-4o", &cooking(i));
        r.response_model = Some("gpt-4o-2024-11-20".into());
        e.process(&r);
    }
    assert_eq!(e.open_incidents().len(), 1);
    let ev = e.reset("main/openai/gpt-4o", 0).expect("known key");
    assert_eq!(ev.len(), 1);
    assert!(e.open_incidents().is_empty());
    assert!(!e.baselines()[0].ready);
    assert!(e.reset("no/such/key", 0).is_none());
}

#[test]
fn the_engine_never_panics_on_odd_text() {
    let mut e = engine(true);
    let huge = "word ".repeat(2_000_000);
    let lossy = String::from_utf8_lossy(&[0xff, 0xfe, b'a', 0xc3]).into_owned();
    for (i, t) in ["", " ", "\u{0}\u{1}", &huge, &lossy, "🙂🙂🙂", "a"]
        .iter()
        .enumerate()
    {
        let (a, _) = e.process(&record(i as u64, "m", t));
        assert!(!a.scores.is_empty());
        if t.trim().is_empty() {
            assert!(a.flags.contains(&"blank"), "{t:?}: {:?}", a.flags);
        }
    }
}

#[test]
fn an_incident_opened_before_the_model_loads_resolves_after_it_does() {
    let mut e = engine(false);
    steady(&mut e, 0, 120);
    let mut all = Vec::new();
    for i in 120..140 {
        let mut r = record(i, "gpt-4o", "");
        r.status = 529;
        all.extend(e.process(&r).1);
    }
    assert!(opened(&all, "error_rate"));
    // The model arrives: embeddings switch on, the open incident is not forgotten.
    e.set_embedder(Arc::new(HashEmbedder));
    assert!(e.tier().is_some());
    let mut resolved = false;
    for i in 140..260 {
        let (_, ev) = e.process(&record(i, "gpt-4o", &cooking(i)));
        resolved |= ev
            .iter()
            .any(|e| e.state == "resolved" && e.incident.kind.as_str() == "error_rate");
    }
    assert!(
        resolved,
        "the incident opened before the model loaded resolves"
    );
    assert!(
        e.baselines()[0].ready,
        "the reference relearned with vectors"
    );
}

#[test]
fn without_a_model_the_cheap_checks_still_run() {
    let mut e = engine(false);
    let (a, _) = e.process(&record(1, "m", ""));
    assert!(a.flags.contains(&"blank"));
    assert!(!a.scores.contains_key("outlier"));
}
