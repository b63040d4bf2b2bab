//! Test support: a tiny random BERT written as real model files (safetensors, tokenizer.json,
//! config.json), so tests exercise the exact loading and embedding path of the real model in
//! milliseconds and without the 87 MB download.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

use super::model::ModelFiles;

/// Hidden width of the tiny model.
pub const TINY_HIDDEN: usize = 32;
const TINY_LAYERS: usize = 2;
const TINY_HEADS: usize = 2;
const TINY_INTERMEDIATE: usize = 64;
const TINY_POSITIONS: usize = 512;

const SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

const WORDS: &str = "the of and to in is you that it he was for on are as with his they at be \
    this have from or one had by word but not what all were we when your can said there use an \
    each which she do how their if will up other about out many then them these so some her \
    would make like him into time has look two more write go see number no way could people my \
    than first water been call who oil its now find long down day did get come made may part \
    over new sound take only little work know place year live me back give most very after \
    thing our just name good sentence man think say great where help through much before line \
    right too mean old any same tell boy follow came want show also around form three small set \
    put end does another well large must big even such because turn here why ask went men read \
    need land different home us move try kind hand picture again change off play spell air away \
    animal house point page letter mother answer found study still learn should world cat sat mat \
    hello error model request response token";

const SUFFIXES: [&str; 10] = [
    "##s", "##es", "##ed", "##ing", "##er", "##ly", "##ion", "##est", "##ness", "##ment",
];

/// The tiny model's vocabulary, in id order: specials, single characters, words, pieces.
fn vocab() -> Vec<String> {
    let mut out: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    let mut seen: BTreeSet<String> = out.iter().cloned().collect();
    let mut push = |t: String, out: &mut Vec<String>| {
        if seen.insert(t.clone()) {
            out.push(t);
        }
    };
    for c in (b'!'..=b'~').map(char::from) {
        if !c.is_ascii_uppercase() {
            push(c.to_string(), &mut out);
        }
    }
    for w in WORDS.split_whitespace() {
        push(w.to_string(), &mut out);
    }
    for c in ('a'..='z').chain('0'..='9') {
        push(format!("##{c}"), &mut out);
    }
    for s in SUFFIXES {
        push(s.to_string(), &mut out);
    }
    out
}

fn other<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::other(e.to_string())
}

/// Writes a tiny random BERT (hidden 32, 2 layers, ~330-token vocabulary) into `dir` as
/// `model.safetensors`, `tokenizer.json`, `config.json` and `vocab.txt`, deterministic in
/// `seed`. Its tokenizer.json carries the same trap as the packaged all-MiniLM-L6-v2 one
/// (fixed padding to 128, truncation at 128) so tests prove the loader overrides it.
pub fn write_tiny_bert(dir: &Path, seed: u64) -> io::Result<ModelFiles> {
    std::fs::create_dir_all(dir)?;
    let files = ModelFiles::in_dir(dir);
    let vocab = vocab();
    let vocab_size = vocab.len();

    let vocab_path = dir.join("vocab.txt");
    std::fs::write(&vocab_path, vocab.join("\n") + "\n")?;

    let config = serde_json::json!({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": TINY_HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": TINY_INTERMEDIATE,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": TINY_POSITIONS,
        "num_attention_heads": TINY_HEADS,
        "num_hidden_layers": TINY_LAYERS,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "type_vocab_size": 2,
        "use_cache": true,
        "vocab_size": vocab_size,
    });
    std::fs::write(
        &files.config,
        serde_json::to_vec_pretty(&config).map_err(other)?,
    )?;

    write_weights(&files.weights, vocab_size, seed)?;
    write_tokenizer(&files.tokenizer, &vocab_path)?;
    Ok(files)
}

/// Random weights under the names candle's `BertModel` loads (no `bert.` prefix, as in
/// sentence-transformers checkpoints).
fn write_weights(path: &Path, vocab_size: usize, seed: u64) -> io::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tensors = std::collections::HashMap::new();
    let (h, i) = (TINY_HIDDEN, TINY_INTERMEDIATE);
    let mut add = |name: String, shape: Vec<usize>, base: f32, scale: f32| -> io::Result<()> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| base + rng.random_range(-scale..scale))
            .collect();
        let t = Tensor::from_vec(data, shape, &Device::Cpu).map_err(other)?;
        tensors.insert(name, t);
        Ok(())
    };
    let e = "embeddings";
    add(
        format!("{e}.word_embeddings.weight"),
        vec![vocab_size, h],
        0.0,
        1.0,
    )?;
    add(
        format!("{e}.position_embeddings.weight"),
        vec![TINY_POSITIONS, h],
        0.0,
        0.2,
    )?;
    add(
        format!("{e}.token_type_embeddings.weight"),
        vec![2, h],
        0.0,
        0.2,
    )?;
    add(format!("{e}.LayerNorm.weight"), vec![h], 1.0, 0.1)?;
    add(format!("{e}.LayerNorm.bias"), vec![h], 0.0, 0.1)?;
    let linears = [
        ("attention.self.query", h, h),
        ("attention.self.key", h, h),
        ("attention.self.value", h, h),
        ("attention.output.dense", h, h),
        ("intermediate.dense", i, h),
        ("output.dense", h, i),
    ];
    for layer in 0..TINY_LAYERS {
        let p = format!("encoder.layer.{layer}");
        for (name, out_dim, in_dim) in linears {
            let scale = 1.0 / (in_dim as f32).sqrt();
            add(
                format!("{p}.{name}.weight"),
                vec![out_dim, in_dim],
                0.0,
                scale,
            )?;
            add(format!("{p}.{name}.bias"), vec![out_dim], 0.0, 0.05)?;
        }
        for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
            add(format!("{p}.{ln}.weight"), vec![h], 1.0, 0.1)?;
            add(format!("{p}.{ln}.bias"), vec![h], 0.0, 0.1)?;
        }
    }
    candle_core::safetensors::save(&tensors, path).map_err(other)
}

/// A BERT WordPiece `tokenizers::Tokenizer` over `vocab_path` (whose first five tokens are
/// `[PAD] [UNK] [CLS] [SEP] [MASK]`), normalising with `normalizer`: the reference that
/// semtap's own WordPiece is tested and benchmarked against.
pub fn bert_tokenizer(vocab_path: &Path, normalizer: BertNormalizer) -> io::Result<Tokenizer> {
    let wordpiece = WordPiece::from_file(&vocab_path.to_string_lossy())
        .unk_token("[UNK]".to_string())
        .continuing_subword_prefix("##".to_string())
        .max_input_chars_per_word(100)
        .build()
        .map_err(other)?;
    let post = TemplateProcessing::builder()
        .try_single("[CLS] $A [SEP]")
        .map_err(other)?
        .try_pair("[CLS] $A [SEP] $B:1 [SEP]:1")
        .map_err(other)?
        .special_tokens(vec![("[CLS]", 2), ("[SEP]", 3)])
        .build()
        .map_err(other)?;
    let mut tok = Tokenizer::new(wordpiece);
    tok.with_normalizer(Some(normalizer));
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_post_processor(Some(post));
    tok.with_decoder(Some(WordPieceDecoder::default()));
    let specials: Vec<AddedToken> = SPECIALS
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    tok.add_special_tokens(&specials);
    Ok(tok)
}

/// A BERT WordPiece tokenizer like the packaged one, including its fixed-128 padding.
fn write_tokenizer(path: &Path, vocab_path: &Path) -> io::Result<()> {
    let mut tok = bert_tokenizer(vocab_path, BertNormalizer::new(true, true, None, true))?;
    tok.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::Fixed(128),
        direction: PaddingDirection::Right,
        pad_to_multiple_of: None,
        pad_id: 0,
        pad_type_id: 0,
        pad_token: "[PAD]".to_string(),
    }));
    tok.with_truncation(Some(TruncationParams {
        direction: TruncationDirection::Right,
        max_length: 128,
        strategy: TruncationStrategy::LongestFirst,
        stride: 0,
    }))
    .map_err(other)?;
    tok.save(path, true).map_err(other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_bert_files_are_deterministic_and_complete() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let fa = write_tiny_bert(a.path(), 3).unwrap();
        let fb = write_tiny_bert(b.path(), 3).unwrap();
        assert!(fa.missing().is_empty());
        assert_eq!(
            std::fs::read(&fa.weights).unwrap(),
            std::fs::read(&fb.weights).unwrap()
        );
        let tok = Tokenizer::from_file(&fa.tokenizer).unwrap();
        let v = vocab();
        assert!(v.len() > 250 && v.len() < 400, "{}", v.len());
        assert_eq!(tok.token_to_id("[CLS]"), Some(2));
        assert_eq!(tok.token_to_id("[SEP]"), Some(3));
        let enc = tok.encode("The cats walked", true).unwrap();
        assert_eq!(enc.len(), 128, "the trap: fixed padding");
        let toks = enc.get_tokens();
        assert_eq!(&toks[..3], ["[CLS]", "the", "cat"]);
        assert!(toks.contains(&"##s".to_string()));
    }
}
