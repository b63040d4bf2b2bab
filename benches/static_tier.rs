//! Static tier throughput: `tokenizers` vs semtap's WordPiece vs WordPiece + table embedding,
//! on the same LLM-style texts of 16, 64 and 256 tokens.
//!
//! Uses the real tokenizer.json from `models/all-MiniLM-L6-v2/` (or `$SEMTAP_MODEL_DIR`) when
//! present, else one generated with the `tokenizers` crate; the table is random (real
//! vocabulary size × 384) since distilling needs the transformer. Before the criterion runs a
//! short summary prints texts/s per core and speedups (skipped under `--test`); `tk encode` is
//! `Tokenizer::encode`, `tk enc_fast` its offset-free `encode_fast`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use semtap::pipeline::assemble::estimate_tokens;
use semtap::record::{Api, ExchangeRecord, Outcome, Usage};
use semtap::semantic::engine::{Engine, EngineConfig};
use semtap::semantic::load::StaticEmbedder;
use semtap::semantic::static_tier::StaticTable;
use semtap::semantic::wordpiece::WordPiece;
use tokenizers::{Tokenizer, TruncationParams};

const SIZES: [usize; 3] = [16, 64, 256];
const TEXTS_PER_SIZE: usize = 64;
const DIM: usize = 384;

/// A normal answer of about 256 tokens (the cheap checks' test fixture).
const ANSWER_256: &str = include_str!("../tests/fixtures/answer_256.txt");

const CORPUS: &str = r#"Sure! Here's a quick overview of how the retry logic works in the client library.
When a request fails with a 429 or a 503, the client waits for an exponentially growing delay before trying again, capped at 30 seconds.
I'm sorry, but I can't help with that request. If you have questions about account security, please contact support.
The function `parse_config(path: &Path) -> Result<Config, Error>` reads the TOML file, validates every field, and returns a typed configuration.
In summary, the quarterly revenue grew by 12.4% year over year, driven mainly by subscriptions in Europe and Asia-Pacific.
To install the package, run `pip install requests==2.31.0` and then import it with `import requests`.
Photosynthesis converts light energy into chemical energy: plants absorb CO2 and water, and release oxygen as a by-product.
Here is the corrected SQL query: SELECT user_id, COUNT(*) AS orders FROM orders WHERE created_at >= '2024-01-01' GROUP BY user_id;
The patient should take 500 mg of amoxicillin three times a day for seven days, unless a doctor advises otherwise.
Step 1: open the Settings panel. Step 2: choose "Privacy & Security". Step 3: toggle the option labelled "Share analytics".
Great question! The main difference between TCP and UDP is that TCP guarantees ordered, reliable delivery while UDP does not.
As an AI language model, I don't have personal opinions, but I can summarise the arguments on both sides of the debate.
The error "undefined is not a function" usually means you called a method on an object that doesn't define it.
Kubernetes schedules pods onto nodes based on resource requests, affinity rules, taints and tolerations.
Let me know if you'd like me to expand on any of these points, or provide examples in Python, JavaScript or Rust.
The Treaty of Westphalia (1648) ended the Thirty Years' War and is often cited as the origin of modern state sovereignty.
You can reduce memory usage by streaming the file line by line instead of loading it entirely into RAM.
Our recommendation: use a managed PostgreSQL instance with point-in-time recovery enabled and daily snapshots retained for 14 days.
The café on Rue de Rivoli serves crème brûlée and naïve little pastries; prices start at €4.50.
Note that the API returns timestamps in ISO 8601 format (e.g. 2024-03-15T09:30:00Z), always in UTC.
Unfortunately, the document you uploaded appears to be corrupted, so I couldn't extract the tables from page 3.
Machine learning models can overfit when they memorise the training data instead of learning general patterns.
Here's a haiku: Autumn moonlight / a worm digs silently / into the chestnut.
The HTTP 401 status code indicates that the request lacks valid authentication credentials for the target resource.
Consider using a hash map keyed by user ID so lookups run in O(1) average time rather than O(n).
"#;

fn model_tokenizer() -> Option<(PathBuf, String)> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2/tokenizer.json");
    if repo.is_file() {
        return Some((
            repo,
            "real all-MiniLM-L6-v2 tokenizer.json (models/)".into(),
        ));
    }
    let dir = std::env::var_os("SEMTAP_MODEL_DIR")?;
    let p = PathBuf::from(dir).join("tokenizer.json");
    p.is_file()
        .then(|| (p.clone(), format!("real tokenizer.json ({})", p.display())))
}

/// A BERT tokenizer.json built with the `tokenizers` crate from the corpus's words, common
/// pieces and every ASCII character, for machines without the model.
fn generated_tokenizer(dir: &Path) -> PathBuf {
    use tokenizers::normalizers::BertNormalizer;

    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .map(String::from)
        .to_vec();
    for b in 33u8..127 {
        vocab.push(char::from(b).to_string());
        if b.is_ascii_alphanumeric() {
            vocab.push(format!("##{}", char::from(b)));
        }
    }
    for p in [
        "ing", "ed", "s", "ly", "er", "tion", "ation", "able", "ment", "ness",
    ] {
        vocab.push(format!("##{p}"));
    }
    // Most corpus words whole; every third only as pieces, so subword splitting happens.
    for (i, w) in CORPUS
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .enumerate()
    {
        if i % 3 == 2 && w.len() > 4 {
            let (a, b) = w.split_at(w.char_indices().nth(3).map_or(w.len(), |(i, _)| i));
            vocab.push(a.to_string());
            vocab.push(format!("##{b}"));
        } else {
            vocab.push(w);
        }
    }
    let mut seen = std::collections::HashSet::new();
    vocab.retain(|t| seen.insert(t.clone()));
    let vocab_path = dir.join("vocab.txt");
    std::fs::write(&vocab_path, vocab.join("\n") + "\n").expect("write vocab");
    let tok = semtap::semantic::testing::bert_tokenizer(&vocab_path, BertNormalizer::default())
        .expect("reference tokenizer");
    let path = dir.join("tokenizer.json");
    tok.save(&path, false).expect("save");
    path
}

/// `TEXTS_PER_SIZE` texts of exactly `tokens - 2` content tokens (so `[CLS] … [SEP]` is
/// `tokens` long and no implementation gets to truncate), cut from the corpus at random.
fn texts(wp: &WordPiece, tokens: usize, rng: &mut StdRng) -> Vec<String> {
    let words: Vec<&str> = CORPUS.split_whitespace().collect();
    let mut ids = Vec::new();
    let mut out = Vec::new();
    while out.len() < TEXTS_PER_SIZE {
        let mut text = String::new();
        let mut i = rng.random_range(0..words.len());
        loop {
            let before = text.len();
            if !text.is_empty() {
                text.push(if rng.random_bool(0.1) { '\n' } else { ' ' });
            }
            text.push_str(words[i % words.len()]);
            i += 1;
            wp.encode_no_special(&text, usize::MAX, &mut ids);
            if ids.len() > tokens - 2 {
                text.truncate(before);
                break;
            }
        }
        wp.encode_no_special(&text, usize::MAX, &mut ids);
        if ids.len() == tokens - 2 {
            out.push(text);
        }
    }
    out
}

fn random_table(vocab: usize, specials: &[u32], rng: &mut StdRng) -> StaticTable {
    let vectors: Vec<f32> = (0..vocab * DIM)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let mut weights = vec![1.0f32; vocab];
    for &s in specials {
        if let Some(w) = weights.get_mut(s as usize) {
            *w = 0.0;
        }
    }
    StaticTable::new(DIM, vectors, weights).expect("table")
}

struct Setup {
    reference: Tokenizer,
    wp: WordPiece,
    table: StaticTable,
    texts: Vec<(usize, Vec<String>)>,
}

fn reference_for(path: &Path, max_len: usize) -> Tokenizer {
    let mut t = Tokenizer::from_file(path).expect("tokenizers loads");
    t.with_padding(None);
    t.with_truncation(Some(TruncationParams {
        max_length: max_len,
        ..Default::default()
    }))
    .expect("truncation");
    t
}

/// Texts per second: the best of ten windows of about `window` each, running `f` over all
/// texts repeatedly. The best window is what the code costs when the core is its own, which
/// on a shared machine is steadier than the mean.
fn rate(texts: &[String], window: Duration, mut f: impl FnMut(&str)) -> f64 {
    let mut best = 0f64;
    for _ in 0..10 {
        let start = Instant::now();
        let mut n = 0usize;
        while start.elapsed() < window {
            for t in texts {
                f(t);
            }
            n += texts.len();
        }
        best = best.max(n as f64 / start.elapsed().as_secs_f64());
    }
    best
}

fn summary(s: &Setup, path: &Path) {
    println!("\nstatic tier throughput, one core (texts/s, best of 10 windows):");
    println!(
        "{:>6} {:>14} {:>14} {:>14} {:>9} {:>9} {:>16} {:>9}",
        "tokens",
        "tk encode",
        "tk enc_fast",
        "wordpiece",
        "x encode",
        "x fast",
        "wordpiece+embed",
        "x encode"
    );
    let budget = Duration::from_millis(150);
    let mut ids = Vec::new();
    let mut out = vec![0f32; DIM];
    for (n, texts) in &s.texts {
        let tk = reference_for(path, *n);
        let enc = rate(texts, budget, |t| {
            black_box(tk.encode(black_box(t), true).expect("encode"));
        });
        let fast = rate(texts, budget, |t| {
            black_box(tk.encode_fast(black_box(t), true).expect("encode"));
        });
        let ours = rate(texts, budget, |t| {
            s.wp.encode(black_box(t), *n, &mut ids);
            black_box(&ids);
        });
        let full = rate(texts, budget, |t| {
            s.wp.encode(black_box(t), *n, &mut ids);
            s.table.embed(&ids, &mut out);
            black_box(&out);
        });
        println!(
            "{:>6} {:>14.0} {:>14.0} {:>14.0} {:>8.1}x {:>8.1}x {:>16.0} {:>8.1}x",
            n,
            enc,
            fast,
            ours,
            ours / enc,
            ours / fast,
            full,
            full / enc
        );
    }
    println!();
}

/// The whole per-response path of the static tier as the live engine runs it:
/// `Engine::process` on a 256-token answer and its prompt — cheap checks, lexical profile,
/// static embedding of answer and prompt, kNN against the key's 200-answer reference,
/// conformal p-values, drift martingale and rate monitors. Responses per second, one core.
fn engine_summary(path: &Path, texts: &[String]) {
    let wp = WordPiece::from_tokenizer_json(path).expect("WordPiece loads");
    let mut rng = StdRng::seed_from_u64(7);
    let table = random_table(wp.vocab_size().max(30522), &wp.special_ids(), &mut rng);
    let embedder = std::sync::Arc::new(StaticEmbedder::new(wp, table, 256));
    let mut n = 0u64;
    let mut next = |text: &str| {
        n += 1;
        ExchangeRecord {
            id: format!("bench-{n}"),
            ts_ms: 1_700_000_000_000 + n,
            end_ts_ms: 1_700_000_000_000 + n,
            api: Api::ChatCompletions,
            status: 200,
            outcome: Outcome::Complete,
            response: text.to_string(),
            prompt: Some("Explain how the retry logic of the client library works.".into()),
            finish_reasons: vec!["stop".into()],
            // The tap's pipeline fills the output count (usage, or its estimate) before the
            // engine sees a record.
            usage: Usage {
                output_tokens: Some(estimate_tokens(text)),
                estimated: true,
                ..Usage::default()
            },
            ..ExchangeRecord::default()
        }
    };
    // A normal answer (the checks' own fixture, numbered so no two texts are equal) and the
    // corpus mixes above, which splice refusal, error and code sentences into one text, so
    // several cheap checks take their slower, flagging paths.
    let normal: Vec<String> = (0..256)
        .map(|i| format!("{} ({i})", ANSWER_256.trim_end()))
        .collect();
    for (what, set) in [
        ("a normal 256-token answer", normal.as_slice()),
        ("256-token corpus mixes", texts),
    ] {
        // A key whose normal answers look like these, past warm-up: its reference (200
        // answers) is ready before timing starts.
        let mut engine = Engine::new(EngineConfig::default(), Some(embedder.clone()), "bench");
        for t in set.iter().cycle().take(400) {
            let rec = next(t);
            black_box(engine.process(&rec));
        }
        let recs: Vec<ExchangeRecord> = set.iter().cycle().take(256).map(|t| next(t)).collect();
        let mut best = 0f64;
        for _ in 0..windows() {
            let start = Instant::now();
            for rec in &recs {
                black_box(engine.process(black_box(rec)));
            }
            best = best.max(recs.len() as f64 / start.elapsed().as_secs_f64());
        }
        println!(
            "Engine::process past warm-up (cheap checks + lexical profile + static embedding of \
             answer and prompt + kNN + p-values + monitors), {what}: {best:.0} responses/s per \
             core (best of 10 windows of 256)"
        );
    }
    println!();
}

/// Timing windows per engine case: 10, or `STATIC_TIER_ENGINE_WINDOWS` (a longer run to
/// profile, e.g. under `perf record`).
fn windows() -> usize {
    std::env::var("STATIC_TIER_ENGINE_WINDOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

fn main() {
    let test_mode = std::env::args().any(|a| a == "--test");
    let tmp = tempfile::tempdir().expect("tempdir");
    let (path, source) = match model_tokenizer() {
        Some(found) => found,
        None => (
            generated_tokenizer(tmp.path()),
            "generated tokenizer.json (no model present)".into(),
        ),
    };
    let wp = WordPiece::from_tokenizer_json(&path).expect("WordPiece loads");
    let mut rng = StdRng::seed_from_u64(42);
    // At least the real model's 30522 rows, so cache behaviour is realistic either way.
    let table = random_table(wp.vocab_size().max(30522), &wp.special_ids(), &mut rng);
    println!(
        "static_tier bench: {source}; random table {} × {DIM}",
        table.vocab_size()
    );
    let texts: Vec<(usize, Vec<String>)> = SIZES
        .iter()
        .map(|&n| (n, texts(&wp, n, &mut rng)))
        .collect();
    let setup = Setup {
        reference: reference_for(&path, 512),
        wp,
        table,
        texts,
    };

    // Our ids must equal the reference's on the bench texts, or the comparison is moot.
    let mut ids = Vec::new();
    for (n, texts) in &setup.texts {
        for t in texts {
            setup.wp.encode(t, *n, &mut ids);
            let theirs = setup.reference.encode(t.as_str(), true).expect("encode");
            assert_eq!(ids, theirs.get_ids(), "ids differ on {t:?}");
        }
    }

    if std::env::var_os("STATIC_TIER_ENGINE_ONLY").is_some() {
        if let Some((_, texts)) = setup.texts.iter().find(|(n, _)| *n == 256) {
            engine_summary(&path, texts);
        }
        return;
    }
    if !test_mode {
        summary(&setup, &path);
        if let Some((_, texts)) = setup.texts.iter().find(|(n, _)| *n == 256) {
            engine_summary(&path, texts);
        }
    }

    let mut c = Criterion::default().configure_from_args();
    for (n, texts) in &setup.texts {
        let mut group = c.benchmark_group(format!("static_tier/{n}_tokens"));
        group.throughput(Throughput::Elements(texts.len() as u64));
        let tk = reference_for(&path, *n);
        group.bench_function(BenchmarkId::from_parameter("tokenizers_encode"), |b| {
            b.iter(|| {
                for t in texts {
                    black_box(tk.encode(black_box(t.as_str()), true).expect("encode"));
                }
            })
        });
        group.bench_function(BenchmarkId::from_parameter("wordpiece_encode"), |b| {
            let mut ids = Vec::new();
            b.iter(|| {
                for t in texts {
                    setup.wp.encode(black_box(t), *n, &mut ids);
                    black_box(&ids);
                }
            })
        });
        group.bench_function(BenchmarkId::from_parameter("wordpiece_embed"), |b| {
            let mut ids = Vec::new();
            let mut out = vec![0f32; DIM];
            b.iter(|| {
                for t in texts {
                    setup.wp.encode(black_box(t), *n, &mut ids);
                    setup.table.embed(&ids, &mut out);
                    black_box(&out);
                }
            })
        });
        group.finish();
    }
    c.final_summary();
}
