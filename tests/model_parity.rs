//! Parity of the transformer tier with sentence-transformers: candle's vectors for the texts in
//! models/reference_vectors.json (written by models/reference_vectors.py) must match the
//! Python reference, batched and one at a time. Needs the real model (models/pull.sh); without
//! it the test is skipped, except under CI=true, where a missing model is a failure.

use semtap::semantic::model::{resolve, DEFAULT_MODEL};
use semtap::semantic::transformer::{DeviceChoice, TransformerEmbedder, DEFAULT_MAX_TOKENS};

#[derive(serde::Deserialize)]
struct Reference {
    model: String,
    texts: Vec<String>,
    vectors: Vec<Vec<f32>>,
    #[serde(default)]
    token_lengths: Vec<usize>,
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}

fn short(t: &str) -> String {
    t.chars().take(40).collect()
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

#[test]
fn transformer_matches_sentence_transformers() {
    let files = match resolve(DEFAULT_MODEL, None) {
        Ok(f) => f,
        Err(e) => {
            assert!(!in_ci(), "CI=true but the model is missing: {e}");
            eprintln!("skipping model parity: {e}");
            return;
        }
    };
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/reference_vectors.json");
    let raw = std::fs::read(path).expect("models/reference_vectors.json");
    let reference: Reference = serde_json::from_slice(&raw).expect("reference JSON");
    assert_eq!(reference.model, DEFAULT_MODEL);
    assert_eq!(reference.texts.len(), reference.vectors.len());

    let emb = TransformerEmbedder::load(&files, DeviceChoice::Auto, DEFAULT_MAX_TOKENS)
        .expect("load the model")
        .with_max_batch(8);
    assert_eq!(emb.dim(), 384);
    let texts: Vec<&str> = reference.texts.iter().map(String::as_str).collect();

    for (i, (t, &n)) in texts.iter().zip(&reference.token_lengths).enumerate() {
        assert_eq!(
            emb.token_count(t).expect("tokenize"),
            n,
            "token count of text {i} ({:?})",
            short(t)
        );
    }

    let batched = emb.embed(&texts).expect("embed batch");
    let mut min_batched = f32::MAX;
    let mut min_single = f32::MAX;
    for (i, (t, want)) in texts.iter().zip(&reference.vectors).enumerate() {
        let single = emb.embed(&[t]).expect("embed one").remove(0);
        let cb = cos(&batched[i], want);
        let cs = cos(&single, want);
        min_batched = min_batched.min(cb);
        min_single = min_single.min(cs);
        assert!(cb >= 0.999, "batched text {i} ({:?}): cos {cb}", short(t));
        assert!(cs >= 0.999, "single text {i} ({:?}): cos {cs}", short(t));
    }
    eprintln!(
        "model parity on {} ({} texts): min cos batched {min_batched:.7}, single {min_single:.7}",
        emb.device_name(),
        texts.len()
    );
}
