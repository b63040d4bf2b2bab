//! The transformer tier: all-MiniLM-L6-v2 run through candle, pooled exactly as
//! sentence-transformers does it (mean over real tokens, then L2 normalisation), so vectors
//! are interchangeable with the Python reference.
//!
//! Two details matter for matching sentence-transformers and for speed. The packaged
//! `tokenizer.json` pads every input to 128 tokens and truncates at 128; sentence-transformers
//! instead pads to the longest text in a batch and truncates at 256 (`max_seq_length`). Both
//! are overridden at load time. And texts are sorted by token length before batching so a
//! batch carries little padding.

use std::str::FromStr;

use candle_core::{DType, Device, DeviceLocation, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig, DTYPE};

use super::bert::{BertEncoder, BertShape};
use super::bert_cpu::{mean_pool, CpuBert, Seq};
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

use super::model::ModelFiles;

/// Token budget per text, as sentence-transformers uses for all-MiniLM-L6-v2.
pub const DEFAULT_MAX_TOKENS: usize = 256;
/// Tokens per forward pass at most (batch × longest text). On a GPU (the tensor graph) the
/// attention scores [b, heads, t, t] grow with it; on the CPU (packed forward) the buffers are
/// ~15 KB per token, so 2048 keeps a forward near 30 MB with no loss of speed (BENCHMARKS.md).
pub const MAX_BATCH_TOKENS: usize = 2048;

/// Splits texts sorted longest first (`lens`) into consecutive batches of at most `max_batch`
/// texts and `max_tokens` padded tokens (a single text always makes a batch).
pub fn batches(lens: &[usize], max_batch: usize, max_tokens: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < lens.len() {
        // Sorted longest first: the batch's width is its first text's length.
        let width = lens[start].max(1);
        let fit = (max_tokens / width).clamp(1, max_batch.max(1));
        let end = (start + fit).min(lens.len());
        out.push(start..end);
        start = end;
    }
    out
}

/// Texts per forward pass unless changed with [`TransformerEmbedder::with_max_batch`].
pub const DEFAULT_MAX_BATCH: usize = 32;
/// Bytes of input kept per token of budget before tokenizing. Truncation happens after
/// tokenization, so without a cap a 10 MB response would be tokenized in full only to keep
/// 256 tokens. Real text averages well under 10 bytes per token; the cap only changes the
/// result for input whose first `max_tokens` tokens span more than ~64 KiB.
const BYTES_PER_TOKEN_CAP: usize = 256;

/// Errors from embedding.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("model: {0}")]
    Model(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The requested device cannot be used (not built in, or not present).
    #[error("device: {0}")]
    Device(String),
    /// Token ids handed to [`TokenEncoder::token_states`] that the model cannot take.
    #[error("input: {0}")]
    Input(String),
}

fn model_err(e: candle_core::Error) -> EmbedError {
    EmbedError::Model(e.to_string())
}

fn tok_err(e: impl std::fmt::Display) -> EmbedError {
    EmbedError::Tokenizer(e.to_string())
}

/// Per-position hidden states for token id sequences: what the static tier distils from.
pub trait TokenEncoder {
    /// For each sequence (already including [CLS]/[SEP]), the last layer's output per position.
    fn token_states(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<Vec<f32>>>, EmbedError>;
    /// Width of each state vector.
    fn hidden_size(&self) -> usize;
}

/// Where the transformer runs. `Auto` picks a GPU when semtap was built with one (`cuda` or
/// `metal` feature) and the device opens, and the CPU otherwise, so one config works
/// everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal,
}

impl DeviceChoice {
    /// Parses `auto`, `cpu`, `cuda` / `cuda:N` or `metal` (the config file's spellings).
    pub fn parse(s: &str) -> Result<DeviceChoice, EmbedError> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "metal" => Ok(DeviceChoice::Metal),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| {
                    EmbedError::Device(format!("`{s}` is not auto, cpu, cuda:N or metal"))
                }),
        }
    }

    /// Opens the device. An explicit GPU that is not built in or not present is an error
    /// (the user asked for it); `Auto` falls back to the CPU.
    pub fn open(self) -> Result<Device, EmbedError> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(n) => {
                if !cfg!(feature = "cuda") {
                    return Err(EmbedError::Device(
                        "cuda requested but semtap was built without the `cuda` feature \
                         (cargo build --features cuda)"
                            .into(),
                    ));
                }
                Device::new_cuda(n).map_err(|e| EmbedError::Device(format!("cuda:{n}: {e}")))
            }
            DeviceChoice::Metal => {
                if !cfg!(feature = "metal") {
                    return Err(EmbedError::Device(
                        "metal requested but semtap was built without the `metal` feature \
                         (cargo build --features metal)"
                            .into(),
                    ));
                }
                Device::new_metal(0).map_err(|e| EmbedError::Device(format!("metal: {e}")))
            }
            DeviceChoice::Auto => {
                if cfg!(feature = "cuda") {
                    match Device::new_cuda(0) {
                        Ok(d) => return Ok(d),
                        Err(e) => tracing::info!(error = %e, "no usable CUDA device"),
                    }
                }
                if cfg!(feature = "metal") {
                    match Device::new_metal(0) {
                        Ok(d) => return Ok(d),
                        Err(e) => tracing::info!(error = %e, "no usable Metal device"),
                    }
                }
                Ok(Device::Cpu)
            }
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = EmbedError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeviceChoice::parse(s)
    }
}

/// Cuts `text` so tokenizing it stays cheap (see [`BYTES_PER_TOKEN_CAP`]), at whitespace
/// when there is some in the second half, so the kept tokens are the ones full tokenization
/// would have produced.
fn cap_text(text: &str, max_tokens: usize) -> &str {
    let limit = max_tokens.saturating_mul(BYTES_PER_TOKEN_CAP).max(4096);
    if text.len() <= limit {
        return text;
    }
    let mut cut = limit;
    while cut > 0 && !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let head = &text[..cut];
    match head.rfind(char::is_whitespace) {
        Some(ws) if ws >= cut / 2 => &head[..ws],
        _ => head,
    }
}

/// Which forward pass runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// semtap's own: on the CPU the packed forward (`bert_cpu.rs`: no padding, fused attention
    /// per sequence and head); on a GPU the tensor graph of `bert.rs`.
    Semtap,
    /// `bert.rs`'s tensor graph on any device (fused QKV, fused softmax, masked padding): the
    /// GPU path, selectable on the CPU so tests and benchmarks can compare it.
    SemtapGraph,
    /// candle-transformers' `BertModel`, kept as the reference the own one is tested and
    /// benchmarked against.
    CandleBert,
}

enum Encoder {
    /// Packed sequences, plain arrays (`bert_cpu.rs`).
    Cpu(CpuBert),
    /// Padded batches as candle tensors, on any device.
    Tensor(TensorModel),
}

enum TensorModel {
    Semtap(BertEncoder),
    Candle(BertModel),
}

impl TensorModel {
    /// Token states [b, t, hidden].
    fn forward(
        &self,
        ids: &Tensor,
        types: &Tensor,
        mask: &Tensor,
        padded: bool,
    ) -> candle_core::Result<Tensor> {
        match self {
            TensorModel::Semtap(m) => m.forward(ids, types, mask, padded),
            TensorModel::Candle(m) => m.forward(ids, types, Some(mask)),
        }
    }
}

/// all-MiniLM-L6-v2 (or any BERT sentence-transformer with mean pooling) on candle.
pub struct TransformerEmbedder {
    model: Encoder,
    tokenizer: Tokenizer,
    device: Device,
    hidden: usize,
    vocab_size: usize,
    max_positions: usize,
    max_tokens: usize,
    max_batch: usize,
    pad_id: u32,
}

impl TransformerEmbedder {
    /// Loads the model (weights memory-mapped, f32) and its tokenizer, replacing the
    /// tokenizer file's padding with pad-to-longest and its truncation with `max_tokens`
    /// (clamped to 2..=the model's position limit; [`DEFAULT_MAX_TOKENS`] matches
    /// sentence-transformers).
    pub fn load(
        files: &ModelFiles,
        device: DeviceChoice,
        max_tokens: usize,
    ) -> Result<TransformerEmbedder, EmbedError> {
        Self::load_with(files, device, max_tokens, Forward::Semtap)
    }

    /// [`load`](Self::load) with a chosen forward pass (benchmarks and parity tests compare them).
    pub fn load_with(
        files: &ModelFiles,
        device: DeviceChoice,
        max_tokens: usize,
        forward: Forward,
    ) -> Result<TransformerEmbedder, EmbedError> {
        let device = device.open()?;
        let raw = std::fs::read(&files.config)
            .map_err(|e| EmbedError::Model(format!("{}: {e}", files.config.display())))?;
        let config: BertConfig = serde_json::from_slice(&raw)
            .map_err(|e| EmbedError::Model(format!("{}: {e}", files.config.display())))?;
        if config.hidden_size == 0 || config.max_position_embeddings < 2 {
            return Err(EmbedError::Model(format!(
                "{}: implausible config (hidden_size {}, max_position_embeddings {})",
                files.config.display(),
                config.hidden_size,
                config.max_position_embeddings
            )));
        }
        let max_positions = config.max_position_embeddings;
        let max_tokens = max_tokens.clamp(2, max_positions);

        let mut tokenizer = Tokenizer::from_file(&files.tokenizer)
            .map_err(|e| EmbedError::Tokenizer(format!("{}: {e}", files.tokenizer.display())))?;
        let pad_id = tokenizer
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| tokenizer.token_to_id("[PAD]"))
            .unwrap_or(config.pad_token_id as u32);
        let pad_token = tokenizer
            .id_to_token(pad_id)
            .unwrap_or_else(|| "[PAD]".to_string());
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token,
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(tok_err)?;

        // SAFETY: the weights are memory-mapped read-only; semtap never writes them, and
        // `pull` installs new copies by rename, so a mapped file is not modified underneath.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&files.weights], DTYPE, &device) }
            .map_err(|e| EmbedError::Model(format!("{}: {e}", files.weights.display())))?;
        let model = match forward {
            Forward::Semtap | Forward::SemtapGraph => {
                let shape: BertShape = serde_json::from_slice(&raw)
                    .map_err(|e| EmbedError::Model(format!("{}: {e}", files.config.display())))?;
                let weights_err = |e: candle_core::Error| {
                    EmbedError::Model(format!("{}: {e}", files.weights.display()))
                };
                let graph = BertEncoder::load(vb, &shape).map_err(weights_err)?;
                if forward == Forward::Semtap && device.is_cpu() {
                    Encoder::Cpu(graph.to_cpu().map_err(weights_err)?)
                } else {
                    Encoder::Tensor(TensorModel::Semtap(graph))
                }
            }
            Forward::CandleBert => Encoder::Tensor(TensorModel::Candle(
                BertModel::load(vb, &config)
                    .map_err(|e| EmbedError::Model(format!("{}: {e}", files.weights.display())))?,
            )),
        };
        Ok(TransformerEmbedder {
            model,
            tokenizer,
            device,
            hidden: config.hidden_size,
            vocab_size: config.vocab_size,
            max_positions,
            max_tokens,
            max_batch: DEFAULT_MAX_BATCH,
            pad_id,
        })
    }

    /// Sets how many texts go through one forward pass (at least 1). Bigger batches pay off
    /// on GPUs; on CPUs 8-32 is plenty.
    pub fn with_max_batch(mut self, max_batch: usize) -> TransformerEmbedder {
        self.max_batch = max_batch.max(1);
        self
    }

    /// Texts per forward pass.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Token budget per text (longer texts are truncated).
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Vector width (384 for all-MiniLM-L6-v2).
    pub fn dim(&self) -> usize {
        self.hidden
    }

    /// `cpu`, `cuda:N` or `metal:N`: for logs and metrics labels.
    pub fn device_name(&self) -> String {
        match self.device.location() {
            DeviceLocation::Cpu => "cpu".to_string(),
            DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        }
    }

    /// How many tokens the model sees for `text` alone, special tokens and any padding
    /// included: shows truncation and that short texts are not padded to a fixed length.
    pub fn token_count(&self, text: &str) -> Result<usize, EmbedError> {
        let enc = self
            .tokenizer
            .encode(cap_text(text, self.max_tokens), true)
            .map_err(tok_err)?;
        Ok(enc.len())
    }

    /// Unit-length embeddings of `texts`, in input order. Texts are sorted by token length
    /// and run in batches of at most [`max_batch`](Self::max_batch), each padded only to its
    /// longest member; results do not depend on what else is in the batch.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let capped: Vec<&str> = texts.iter().map(|t| cap_text(t, self.max_tokens)).collect();
        // Padded to the longest of all; each batch below is trimmed to its own longest
        // (padding is on the right, so trimming drops only padding).
        let encs = self.tokenizer.encode_batch(capped, true).map_err(tok_err)?;
        let lens: Vec<usize> = encs
            .iter()
            .map(|e| e.get_attention_mask().iter().filter(|&&m| m != 0).count())
            .collect();
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));

        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        let sorted_lens: Vec<usize> = order.iter().map(|&i| lens[i]).collect();
        for range in batches(&sorted_lens, self.max_batch, MAX_BATCH_TOKENS) {
            let chunk = &order[range];
            let width = chunk.iter().map(|&i| lens[i]).max().unwrap_or(0);
            if width == 0 {
                for &i in chunk {
                    out[i] = vec![0.0; self.hidden];
                }
                continue;
            }
            let model = match &self.model {
                Encoder::Tensor(t) => t,
                Encoder::Cpu(m) => {
                    let mut seqs = Vec::with_capacity(chunk.len());
                    for &i in chunk {
                        let (ids, types) = (encs[i].get_ids(), encs[i].get_type_ids());
                        match (ids.get(..lens[i]), types.get(..lens[i])) {
                            (Some(ids), Some(types)) => seqs.push(Seq { ids, types }),
                            _ => {
                                return Err(EmbedError::Tokenizer(
                                    "encoding shorter than its attention mask".into(),
                                ))
                            }
                        }
                    }
                    let chunk_lens: Vec<usize> = chunk.iter().map(|&i| lens[i]).collect();
                    let states = m
                        .forward(&seqs)
                        .map_err(|e| EmbedError::Model(e.to_string()))?;
                    for (&i, row) in chunk
                        .iter()
                        .zip(mean_pool(&states, &chunk_lens, self.hidden))
                    {
                        out[i] = row;
                    }
                    continue;
                }
            };
            let b = chunk.len();
            let mut ids = Vec::with_capacity(b * width);
            let mut types = Vec::with_capacity(b * width);
            let mut mask = Vec::with_capacity(b * width);
            for &i in chunk {
                let e = &encs[i];
                let take = |v: &[u32]| -> Result<Vec<u32>, EmbedError> {
                    v.get(..width).map(<[u32]>::to_vec).ok_or_else(|| {
                        EmbedError::Tokenizer("encoding shorter than its batch".into())
                    })
                };
                ids.extend(take(e.get_ids())?);
                types.extend(take(e.get_type_ids())?);
                mask.extend(take(e.get_attention_mask())?);
            }
            let rows = self
                .forward_pooled(model, ids, types, mask, b, width)
                .map_err(model_err)?;
            for (&i, row) in chunk.iter().zip(rows) {
                out[i] = row;
            }
        }
        Ok(out)
    }

    /// One forward pass, mean-pooled over the mask and L2-normalised (sentence-transformers'
    /// Pooling(mean) + Normalize: sum / max(count, 1e-9), then x / max(|x|, 1e-12)).
    fn forward_pooled(
        &self,
        model: &TensorModel,
        ids: Vec<u32>,
        types: Vec<u32>,
        mask: Vec<u32>,
        b: usize,
        width: usize,
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let padded = mask.contains(&0);
        let ids = Tensor::from_vec(ids, (b, width), &self.device)?;
        let types = Tensor::from_vec(types, (b, width), &self.device)?;
        let mask = Tensor::from_vec(mask, (b, width), &self.device)?;
        let hidden = model.forward(&ids, &types, &mask, padded)?;
        let mask_f = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask_f)?.sum(1)?;
        let counts = mask_f.sum(1)?.clamp(1e-9f32, f32::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        mean.broadcast_div(&norm)?.to_vec2::<f32>()
    }
}

impl TokenEncoder for TransformerEmbedder {
    fn token_states(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<Vec<f32>>>, EmbedError> {
        for (n, seq) in batch.iter().enumerate() {
            if seq.len() > self.max_positions {
                return Err(EmbedError::Input(format!(
                    "sequence {n} has {} tokens; the model takes at most {}",
                    seq.len(),
                    self.max_positions
                )));
            }
            if let Some(&bad) = seq.iter().find(|&&id| id as usize >= self.vocab_size) {
                return Err(EmbedError::Input(format!(
                    "sequence {n} has token id {bad}; the vocabulary has {}",
                    self.vocab_size
                )));
            }
        }
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(batch[i].len()));
        let mut out: Vec<Vec<Vec<f32>>> = vec![Vec::new(); batch.len()];
        let sorted_lens: Vec<usize> = order.iter().map(|&i| batch[i].len()).collect();
        for range in batches(&sorted_lens, self.max_batch, MAX_BATCH_TOKENS) {
            let chunk = &order[range];
            let width = chunk.iter().map(|&i| batch[i].len()).max().unwrap_or(0);
            if width == 0 {
                continue;
            }
            let model = match &self.model {
                Encoder::Tensor(t) => t,
                Encoder::Cpu(m) => {
                    let zeros = vec![0u32; width];
                    let seqs: Vec<Seq> = chunk
                        .iter()
                        .map(|&i| Seq {
                            ids: &batch[i],
                            types: &zeros[..batch[i].len()],
                        })
                        .collect();
                    let states = m
                        .forward(&seqs)
                        .map_err(|e| EmbedError::Input(e.to_string()))?;
                    let mut rows = states.chunks_exact(self.hidden).map(<[f32]>::to_vec);
                    for &i in chunk {
                        out[i] = rows.by_ref().take(batch[i].len()).collect();
                    }
                    continue;
                }
            };
            let b = chunk.len();
            let mut ids = Vec::with_capacity(b * width);
            let mut mask = Vec::with_capacity(b * width);
            for &i in chunk {
                let seq = &batch[i];
                ids.extend_from_slice(seq);
                ids.extend(std::iter::repeat_n(self.pad_id, width - seq.len()));
                mask.extend(std::iter::repeat_n(1u32, seq.len()));
                mask.extend(std::iter::repeat_n(0u32, width - seq.len()));
            }
            let states = (|| -> candle_core::Result<Vec<Vec<Vec<f32>>>> {
                let ids = Tensor::from_vec(ids, (b, width), &self.device)?;
                let types = ids.zeros_like()?;
                let mask = Tensor::from_vec(mask, (b, width), &self.device)?;
                let padded = chunk.iter().any(|&i| batch[i].len() < width);
                model
                    .forward(&ids, &types, &mask, padded)?
                    .to_dtype(DType::F32)?
                    .to_vec3::<f32>()
            })()
            .map_err(model_err)?;
            for (&i, mut rows) in chunk.iter().zip(states) {
                rows.truncate(batch[i].len());
                out[i] = rows;
            }
        }
        Ok(out)
    }

    fn hidden_size(&self) -> usize {
        self.hidden
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::semantic::testing::write_tiny_bert;

    fn tiny() -> (tempfile::TempDir, TransformerEmbedder) {
        let dir = tempfile::tempdir().unwrap();
        let files = write_tiny_bert(dir.path(), 7).unwrap();
        let e = TransformerEmbedder::load(&files, DeviceChoice::Cpu, DEFAULT_MAX_TOKENS).unwrap();
        (dir, e)
    }

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn norm(a: &[f32]) -> f32 {
        a.iter().map(|x| x * x).sum::<f32>().sqrt()
    }

    fn max_diff(x: &[f32], y: &[f32]) -> f32 {
        x.iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max)
    }

    /// Both of semtap's forwards (packed CPU and tensor graph) against candle's BertModel.
    #[test]
    fn own_forwards_match_candle_bert_on_padded_and_unpadded_batches() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_tiny_bert(dir.path(), 11).unwrap();
        let load = |f| {
            TransformerEmbedder::load_with(&files, DeviceChoice::Cpu, DEFAULT_MAX_TOKENS, f)
                .unwrap()
        };
        let theirs = load(Forward::CandleBert);
        let texts = [
            "the cat sat",
            "a much longer text about the cat that sat on the mat near the door",
            "mat",
            "the cat sat",
        ];
        let seqs = vec![vec![1u32, 5, 6, 7, 2], vec![1, 9, 2]];
        for forward in [Forward::Semtap, Forward::SemtapGraph] {
            let ours = load(forward);
            // One batch of mixed lengths (padded) and each text alone (unpadded).
            let a = ours.embed(&texts).unwrap();
            let b = theirs.embed(&texts).unwrap();
            for (x, y) in a.iter().zip(&b) {
                assert!(cos(x, y) > 0.99999, "{forward:?}: cos {}", cos(x, y));
                assert!(
                    max_diff(x, y) < 1e-4,
                    "{forward:?}: diff {}",
                    max_diff(x, y)
                );
            }
            for t in texts {
                let x = ours.embed(&[t]).unwrap();
                let y = theirs.embed(&[t]).unwrap();
                assert!(cos(&x[0], &y[0]) > 0.99999, "{forward:?}");
            }
            let sa = ours.token_states(&seqs).unwrap();
            let sb = theirs.token_states(&seqs).unwrap();
            assert_eq!(sa.len(), sb.len());
            for (x, y) in sa.iter().zip(&sb) {
                assert_eq!(x.len(), y.len(), "{forward:?}: one state per token");
                for (p, q) in x.iter().zip(y) {
                    assert!(max_diff(p, q) < 1e-4, "{forward:?}: {}", max_diff(p, q));
                }
            }
        }
    }

    #[test]
    fn batches_respect_both_the_text_and_the_token_budget() {
        let lens = [256, 256, 256, 200, 64, 64, 64, 10, 0];
        let b = batches(&lens, 32, 512);
        assert_eq!(b, vec![0..2, 2..4, 4..9]);
        assert_eq!(
            batches(&[300], 32, 100),
            vec![0..1],
            "a long text still gets a batch"
        );
        assert_eq!(batches(&[5; 10], 4, 2048), vec![0..4, 4..8, 8..10]);
        assert!(batches(&[], 4, 10).is_empty());
    }

    #[test]
    fn device_choice_parses_config_spellings() {
        assert_eq!(DeviceChoice::parse("auto").unwrap(), DeviceChoice::Auto);
        assert_eq!(DeviceChoice::parse("CPU").unwrap(), DeviceChoice::Cpu);
        assert_eq!(DeviceChoice::parse("cuda").unwrap(), DeviceChoice::Cuda(0));
        assert_eq!(
            DeviceChoice::parse("cuda:3").unwrap(),
            DeviceChoice::Cuda(3)
        );
        assert_eq!(DeviceChoice::parse("metal").unwrap(), DeviceChoice::Metal);
        assert!(DeviceChoice::parse("cuda:x").is_err());
        assert!(DeviceChoice::parse("tpu").is_err());
        // Auto always yields something.
        assert!(DeviceChoice::Auto.open().is_ok());
        if !cfg!(feature = "cuda") {
            let e = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }

    #[test]
    fn embeddings_are_unit_norm_and_sized() {
        let (_d, e) = tiny();
        assert_eq!(e.dim(), 32);
        assert_eq!(e.device_name(), "cpu");
        let v = e
            .embed(&["the cat sat on the mat", "hello, world!", "running jumped"])
            .unwrap();
        assert_eq!(v.len(), 3);
        for x in &v {
            assert_eq!(x.len(), 32);
            assert!((norm(x) - 1.0).abs() < 1e-5, "norm {}", norm(x));
        }
        assert!(cos(&v[0], &v[1]) < 0.9999, "different texts, same vector");
    }

    #[test]
    fn batch_does_not_change_a_vector() {
        let (_d, e) = tiny();
        let short = "a short text";
        let alone = e.embed(&[short]).unwrap().remove(0);
        let long1 = "this is a much longer text with many more words in it than the short one \
                     so that the batch has to pad the short text quite a lot";
        let long2 = "another long text, which also goes on and on; the model sees padding \
                     for every shorter member of its batch 123 456";
        let batch = e.embed(&[long1, short, long2, "x"]).unwrap();
        let c = cos(&alone, &batch[1]);
        assert!(c > 0.99999, "cos {c}");
        // And with batches of one, two, ... the same.
        for mb in [1, 2, 3] {
            let (_d2, e2) = tiny();
            let e2 = e2.with_max_batch(mb);
            let b2 = e2.embed(&[long1, short, long2, "x"]).unwrap();
            for (x, y) in batch.iter().zip(&b2) {
                assert!(cos(x, y) > 0.99999);
            }
        }
    }

    #[test]
    fn order_is_preserved_after_length_sorting() {
        let (_d, e) = tiny();
        let e = e.with_max_batch(2);
        let texts = [
            "one",
            "two words and more words here",
            "three",
            "a b c d e f g h i j k l m n o p",
            "",
            "the end",
        ];
        let batch = e.embed(&texts).unwrap();
        for (t, v) in texts.iter().zip(&batch) {
            let alone = e.embed(&[t]).unwrap().remove(0);
            assert!(cos(&alone, v) > 0.99999, "{t:?} moved");
        }
    }

    #[test]
    fn empty_and_huge_texts_do_not_panic() {
        let (_d, e) = tiny();
        assert_eq!(e.token_count("").unwrap(), 2); // [CLS] [SEP]
        let v = e.embed(&[""]).unwrap();
        assert!((norm(&v[0]) - 1.0).abs() < 1e-5);
        assert!(e.embed(&[]).unwrap().is_empty());

        let huge = "word and more words ".repeat(10 * 1024 * 1024 / 20);
        assert!(huge.len() >= 10 * 1024 * 1024 - 20);
        assert_eq!(e.token_count(&huge).unwrap(), DEFAULT_MAX_TOKENS);
        let v = e.embed(&[huge.as_str(), "short"]).unwrap();
        assert!((norm(&v[0]) - 1.0).abs() < 1e-5);
        // No whitespace at all and multi-byte chars: cut on a char boundary.
        let blob = "é".repeat(3 * 1024 * 1024);
        assert!(e.embed(&[blob.as_str()]).is_ok());
    }

    #[test]
    fn tokenizer_overrides_replace_the_fixed_128_padding() {
        let (dir, e) = tiny();
        // The file on disk carries the trap (Fixed 128 padding, truncation at 128)...
        let raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("tokenizer.json")).unwrap())
                .unwrap();
        assert_eq!(raw["padding"]["strategy"]["Fixed"], 128);
        assert_eq!(raw["truncation"]["max_length"], 128);
        // ...and the loaded embedder does not pad: [CLS] the cat sat [SEP].
        assert_eq!(e.token_count("the cat sat").unwrap(), 5);
        // Truncation is at the configured budget, not 128.
        let long = "word ".repeat(1000);
        assert_eq!(e.token_count(&long).unwrap(), 256);
        let files = crate::semantic::model::ModelFiles::in_dir(dir.path());
        let e64 = TransformerEmbedder::load(&files, DeviceChoice::Cpu, 64).unwrap();
        assert_eq!(e64.token_count(&long).unwrap(), 64);
        assert_eq!(e64.max_tokens(), 64);
    }

    #[test]
    fn token_states_match_embed_and_respect_padding() {
        let (_d, e) = tiny();
        assert_eq!(e.hidden_size(), 32);
        // [CLS] tok [SEP] sequences of different lengths in one call.
        let a = vec![2u32, 40, 3];
        let b = vec![2u32, 40, 41, 42, 43, 3];
        let alone = e.token_states(std::slice::from_ref(&a)).unwrap();
        let both = e.token_states(&[b.clone(), a.clone(), vec![]]).unwrap();
        assert_eq!(both[0].len(), 6);
        assert_eq!(both[1].len(), 3);
        assert!(both[2].is_empty());
        for (x, y) in alone[0].iter().zip(&both[1]) {
            for (p, q) in x.iter().zip(y) {
                assert!((p - q).abs() < 1e-4);
            }
        }
        assert!(e.token_states(&[vec![2, 100_000, 3]]).is_err());
        assert!(e.token_states(&[vec![2; 600]]).is_err());
    }
}
