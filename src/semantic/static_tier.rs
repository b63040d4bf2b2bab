//! The static tier: a token-vector table distilled once from the transformer, so every
//! response can be embedded in microseconds as the weighted mean of its tokens' vectors.
//!
//! Distillation runs each vocabulary token through the transformer as `[CLS] tok [SEP]`,
//! keeps the token position's output and centres the table (the shared mean direction carries
//! no meaning and would dominate cosine similarity). Optionally it reduces the table with PCA
//! and weights tokens so frequent ones (punctuation, `##` pieces, "the") count less; the live
//! engine uses neither ([`DistillOptions::default`]: every token weighs 1.0). The table is
//! cached on disk keyed by the model's hash, because distilling takes tens of seconds.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::transformer::{EmbedError, TokenEncoder};
use super::wordpiece::is_bert_punct;

/// Cache file magic.
const MAGIC: &[u8; 8] = b"SEMTAPST";
/// Cache format version; bump when the layout or the distillation changes meaning.
const FORMAT_VERSION: u32 = 1;
/// Upper bounds that keep a corrupt header from asking for absurd allocations.
const MAX_DIM: usize = 1 << 16;
const MAX_VOCAB: usize = 1 << 24;
const MAX_MODEL_HASH_LEN: usize = 1024;
/// How many tokens ahead `embed` prefetches rows.
const PREFETCH_AHEAD: usize = 8;

/// Why distillation or the cache failed.
#[derive(Debug, thiserror::Error)]
pub enum StaticTierError {
    /// The transformer failed.
    #[error("encoder: {0}")]
    Encoder(#[from] EmbedError),
    /// The transformer returned states of an unexpected shape.
    #[error("unexpected encoder output: {0}")]
    Shape(String),
    /// The options or table parts are inconsistent.
    #[error("invalid: {0}")]
    Invalid(String),
    /// Reading or writing the cache failed.
    #[error("cache I/O: {0}")]
    Io(#[from] io::Error),
}

/// How to distil the table. `Default` is what the engine uses unless configured.
#[derive(Debug, Clone)]
pub struct DistillOptions {
    /// Tokens per transformer call.
    pub batch_size: usize,
    /// Reduce the vectors to this many principal components (`None`: keep the model's width).
    /// Smaller rows mean fewer cache misses per token on the hot path.
    pub pca_dims: Option<usize>,
    /// Token frequencies (indexed by id, length = vocabulary size) from traffic or a corpus:
    /// enables SIF weights `a / (a + p(t))`.
    pub token_counts: Option<Vec<u64>>,
    /// SIF's `a` (1e-3 as in the SIF paper).
    pub sif_a: f32,
    /// Token strings indexed by id (e.g. `WordPiece::tokens_by_id`). Without counts they give
    /// the fallback weights: 1.0 for words, [`PIECE_WEIGHT`] for `##` pieces and single
    /// punctuation. With neither, every non-special token weighs 1.0.
    pub tokens: Option<Vec<String>>,
    /// The continuing-subword prefix used to recognise pieces in `tokens`.
    pub continuing_prefix: String,
}

impl Default for DistillOptions {
    fn default() -> Self {
        DistillOptions {
            batch_size: 512,
            pca_dims: None,
            token_counts: None,
            sif_a: 1e-3,
            tokens: None,
            continuing_prefix: "##".into(),
        }
    }
}

/// Fallback weight of `##` pieces and single punctuation tokens when no counts are known:
/// they are frequent and carry little meaning of their own, as SIF would find from counts.
pub const PIECE_WEIGHT: f32 = 0.5;

/// Per-token vectors and weights: a text's embedding is the weighted mean of its tokens'
/// rows, L2-normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticTable {
    dim: usize,
    /// `vocab × dim`, row-major.
    vectors: Vec<f32>,
    /// One per token; 0 for tokens that never count (special tokens).
    weights: Vec<f32>,
    /// Fingerprint of the distillation inputs and options (see [`distill_fingerprint`]).
    options_hash: [u8; 32],
}

impl StaticTable {
    /// A table from its parts (`vectors` is `weights.len() × dim`, row-major).
    pub fn new(dim: usize, vectors: Vec<f32>, weights: Vec<f32>) -> Result<Self, StaticTierError> {
        if dim == 0 || dim > MAX_DIM {
            return Err(StaticTierError::Invalid(format!("dimension {dim}")));
        }
        if weights.len() > MAX_VOCAB || Some(vectors.len()) != weights.len().checked_mul(dim) {
            return Err(StaticTierError::Invalid(format!(
                "{} vector values for {} tokens × {dim}",
                vectors.len(),
                weights.len()
            )));
        }
        if !weights.iter().all(|w| w.is_finite() && *w >= 0.0) {
            return Err(StaticTierError::Invalid(
                "weights must be finite and ≥ 0".into(),
            ));
        }
        Ok(StaticTable {
            dim,
            vectors,
            weights,
            options_hash: [0; 32],
        })
    }

    /// Vector width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of token rows.
    pub fn vocab_size(&self) -> usize {
        self.weights.len()
    }

    /// Token weights, indexed by id.
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }

    /// The row of token `id`.
    pub fn vector(&self, id: u32) -> Option<&[f32]> {
        let start = (id as usize).checked_mul(self.dim)?;
        self.vectors.get(start..start.checked_add(self.dim)?)
    }

    /// Hex fingerprint of what the table was distilled from (see [`distill_fingerprint`]).
    pub fn options_hash(&self) -> String {
        hex::encode(self.options_hash)
    }

    /// Replaces the weights, e.g. with [`sif_weights`] once traffic counts are known, without
    /// distilling again.
    pub fn set_weights(&mut self, weights: Vec<f32>) -> Result<(), StaticTierError> {
        if weights.len() != self.weights.len() {
            return Err(StaticTierError::Invalid(format!(
                "{} weights for {} tokens",
                weights.len(),
                self.weights.len()
            )));
        }
        if !weights.iter().all(|w| w.is_finite() && *w >= 0.0) {
            return Err(StaticTierError::Invalid(
                "weights must be finite and ≥ 0".into(),
            ));
        }
        self.weights = weights;
        Ok(())
    }

    /// Writes the embedding of token ids `ids` into `out` (length [`dim`](Self::dim)): the
    /// weighted mean of their rows, L2-normalised. Special tokens (weight 0) and ids outside
    /// the table are skipped. Returns false, leaving `out` all zeros, when nothing counted
    /// (no tokens, only special tokens, or a zero sum) or `out` has the wrong length.
    /// Allocation-free. The division by the total weight is skipped: normalising cancels it.
    pub fn embed(&self, ids: &[u32], out: &mut [f32]) -> bool {
        out.fill(0.0);
        if out.len() != self.dim {
            return false;
        }
        let dim = self.dim;
        let mut any = false;
        // Rows are summed four at a time so `out` is loaded and stored once per four rows.
        let mut group: [(f32, &[f32]); 4] = [(0.0, &[]); 4];
        let mut n = 0;
        for (k, &id) in ids.iter().enumerate() {
            if let Some(&ahead) = ids.get(k + PREFETCH_AHEAD) {
                self.prefetch(ahead);
            }
            let i = id as usize;
            let Some(&w) = self.weights.get(i) else {
                continue;
            };
            if w == 0.0 {
                continue;
            }
            let Some(row) = self.vectors.get(i * dim..(i + 1) * dim) else {
                continue;
            };
            group[n] = (w, row);
            n += 1;
            any = true;
            if n == 4 {
                accumulate4(out, &group);
                n = 0;
            }
        }
        for &(w, row) in &group[..n] {
            for (o, v) in out.iter_mut().zip(row) {
                *o += w * v;
            }
        }
        let norm = sum_of_squares(out).sqrt();
        if !any || norm == 0.0 || !norm.is_finite() {
            out.fill(0.0);
            return false;
        }
        let inv = 1.0 / norm;
        for o in out.iter_mut() {
            *o *= inv;
        }
        true
    }

    /// Asks the CPU to start loading the first cache line of token `id`'s row (the hardware
    /// prefetcher streams the rest): rare tokens' rows are not cached, and having the next
    /// rows in flight hides part of the memory latency. Prefetching whole rows cost more on
    /// cached rows than it saved on cold ones.
    #[inline]
    fn prefetch(&self, id: u32) {
        #[cfg(target_arch = "x86_64")]
        if let Some(first) = (id as usize)
            .checked_mul(self.dim)
            .and_then(|i| self.vectors.get(i))
        {
            let p: *const f32 = first;
            // SAFETY: a prefetch is only a cache hint: it never faults and reads nothing into
            // the program, and the pointer is inside the table anyway.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = id;
    }

    /// Saves the table for the model whose hash is `model_sha256`, atomically (a temporary
    /// file in the same directory, synced, then renamed), so a crash never leaves a torn cache.
    pub fn save(&self, path: impl AsRef<Path>, model_sha256: &str) -> Result<(), StaticTierError> {
        let path = path.as_ref();
        if model_sha256.len() > MAX_MODEL_HASH_LEN {
            return Err(StaticTierError::Invalid("model hash too long".into()));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let tmp = temp_path(path);
        let written = self.write_to(&tmp, model_sha256);
        let renamed = written.and_then(|()| fs::rename(&tmp, path));
        if let Err(e) = renamed {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        Ok(())
    }

    fn write_to(&self, tmp: &Path, model_sha256: &str) -> io::Result<()> {
        let file = fs::File::create(tmp)?;
        let mut w = HashingWriter {
            inner: BufWriter::with_capacity(1 << 16, file),
            hasher: Sha256::new(),
        };
        w.write_all(MAGIC)?;
        w.write_all(&FORMAT_VERSION.to_le_bytes())?;
        w.write_all(&(model_sha256.len() as u32).to_le_bytes())?;
        w.write_all(model_sha256.as_bytes())?;
        w.write_all(&self.options_hash)?;
        w.write_all(&(self.dim as u32).to_le_bytes())?;
        w.write_all(&(self.weights.len() as u32).to_le_bytes())?;
        let mut buf = Vec::with_capacity(1 << 16);
        for chunk in self
            .vectors
            .chunks(1 << 14)
            .chain(self.weights.chunks(1 << 14))
        {
            buf.clear();
            for v in chunk {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            w.write_all(&buf)?;
        }
        let digest = w.hasher.finalize();
        let mut inner = w.inner;
        inner.write_all(&digest)?;
        let file = inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    }

    /// Loads a cached table if it is intact and was saved for `expected_model_sha256`.
    /// A missing, stale or corrupt file is `Ok(None)` (the caller distils again); only an
    /// unreadable file is an error. Never panics on bad data.
    pub fn load(
        path: impl AsRef<Path>,
        expected_model_sha256: &str,
    ) -> Result<Option<StaticTable>, StaticTierError> {
        Self::load_matching(path, expected_model_sha256, None)
    }

    /// Like [`load`](Self::load), also requiring the options fingerprint (from
    /// [`distill_fingerprint`]) to match, so a change of options re-distils.
    pub fn load_matching(
        path: impl AsRef<Path>,
        expected_model_sha256: &str,
        expected_options_hash: Option<&str>,
    ) -> Result<Option<StaticTable>, StaticTierError> {
        let path = path.as_ref();
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match parse(&bytes, expected_model_sha256, expected_options_hash) {
            Ok(table) => Ok(Some(table)),
            Err(why) => {
                tracing::info!(path = %path.display(), reason = why, "static table cache not usable");
                Ok(None)
            }
        }
    }
}

/// `out += Σ w·row` over four rows of `out.len()` values.
#[inline]
fn accumulate4(out: &mut [f32], group: &[(f32, &[f32]); 4]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            unsafe { accumulate4_avx2(out, group) };
            return;
        }
    }
    accumulate4_portable(out, group);
}

#[inline(always)]
fn accumulate4_portable(out: &mut [f32], group: &[(f32, &[f32]); 4]) {
    let d = out.len();
    let [(w0, r0), (w1, r1), (w2, r2), (w3, r3)] = *group;
    let (r0, r1, r2, r3) = (&r0[..d], &r1[..d], &r2[..d], &r3[..d]);
    for j in 0..d {
        out[j] += w0 * r0[j] + w1 * r1[j] + w2 * r2[j] + w3 * r3[j];
    }
}

/// The same loop compiled for AVX2/FMA (the default x86-64 target only has SSE2).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn accumulate4_avx2(out: &mut [f32], group: &[(f32, &[f32]); 4]) {
    accumulate4_portable(out, group);
}

fn sum_of_squares(v: &[f32]) -> f32 {
    // Eight lanes so the reduction vectorises.
    let mut acc = [0f32; 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x * x;
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|x| x * x).sum();
    acc.iter().sum::<f32>() + tail
}

fn temp_path(path: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "static-table".into());
    path.with_file_name(format!(".{name}.tmp-{}-{nanos}", std::process::id()))
}

struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads fields off the front of a byte slice; every short read is an error, never a panic.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.rest.len() < n {
            return Err("truncated");
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

fn parse(
    bytes: &[u8],
    expected_model: &str,
    expected_options: Option<&str>,
) -> Result<StaticTable, &'static str> {
    if bytes.len() < 32 {
        return Err("truncated");
    }
    let (body, checksum) = bytes.split_at(bytes.len() - 32);
    let mut r = Reader { rest: body };
    if r.take(8)? != MAGIC {
        return Err("not a semtap static table");
    }
    if r.u32()? != FORMAT_VERSION {
        return Err("other format version");
    }
    let hash_len = r.u32()? as usize;
    if hash_len > MAX_MODEL_HASH_LEN {
        return Err("corrupt header");
    }
    if !r
        .take(hash_len)?
        .eq_ignore_ascii_case(expected_model.as_bytes())
    {
        return Err("saved for another model");
    }
    let mut options_hash = [0u8; 32];
    options_hash.copy_from_slice(r.take(32)?);
    if let Some(expected) = expected_options {
        if !hex::encode(options_hash).eq_ignore_ascii_case(expected) {
            return Err("distilled with other options");
        }
    }
    let dim = r.u32()? as usize;
    let vocab = r.u32()? as usize;
    if dim == 0 || dim > MAX_DIM || vocab > MAX_VOCAB {
        return Err("corrupt header");
    }
    let n_vec = vocab * dim;
    if r.rest.len() != (n_vec + vocab) * 4 {
        return Err("wrong length");
    }
    if Sha256::digest(body).as_slice() != checksum {
        return Err("checksum mismatch");
    }
    let floats = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let vectors = floats(r.take(n_vec * 4)?);
    let weights = floats(r.take(vocab * 4)?);
    let mut table = StaticTable::new(dim, vectors, weights).map_err(|_| "invalid contents")?;
    table.options_hash = options_hash;
    Ok(table)
}

/// SIF weights `a / (a + p(t))` with `p(t) = counts[t] / Σ counts`, 0 for `special_ids`.
/// Unseen tokens get the full weight 1.
pub fn sif_weights(counts: &[u64], a: f32, special_ids: &[u32]) -> Vec<f32> {
    let total: f64 = counts.iter().map(|&c| c as f64).sum();
    let a = f64::from(a);
    let mut w: Vec<f32> = counts
        .iter()
        .map(|&c| {
            let p = if total > 0.0 { c as f64 / total } else { 0.0 };
            (a / (a + p)) as f32
        })
        .collect();
    zero_specials(&mut w, special_ids);
    w
}

/// Fallback weights without counts: 1.0 for word tokens, [`PIECE_WEIGHT`] for continuation
/// pieces (`prefix…`) and single punctuation characters, 0 for `special_ids` and unused ids.
pub fn heuristic_weights(tokens: &[String], prefix: &str, special_ids: &[u32]) -> Vec<f32> {
    let mut w: Vec<f32> = tokens
        .iter()
        .map(|t| {
            let mut chars = t.chars();
            let single_punct = match (chars.next(), chars.next()) {
                (Some(c), None) => is_bert_punct(c),
                _ => false,
            };
            if t.is_empty() {
                0.0
            } else if (!prefix.is_empty() && t.starts_with(prefix) && t.len() > prefix.len())
                || single_punct
            {
                PIECE_WEIGHT
            } else {
                1.0
            }
        })
        .collect();
    zero_specials(&mut w, special_ids);
    w
}

fn zero_specials(w: &mut [f32], special_ids: &[u32]) {
    for &id in special_ids {
        if let Some(x) = w.get_mut(id as usize) {
            *x = 0.0;
        }
    }
}

/// Fingerprint (hex SHA-256) of everything that determines a distilled table besides the
/// model: vocabulary size, special ids, options. Stored in the cache; compare with
/// [`StaticTable::load_matching`].
pub fn distill_fingerprint(
    vocab_size: usize,
    special_ids: &[u32],
    cls: u32,
    sep: u32,
    opts: &DistillOptions,
) -> String {
    hex::encode(fingerprint(vocab_size, special_ids, cls, sep, opts))
}

fn fingerprint(
    vocab_size: usize,
    special_ids: &[u32],
    cls: u32,
    sep: u32,
    opts: &DistillOptions,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"semtap static distill v1");
    h.update((vocab_size as u64).to_le_bytes());
    let mut specials = special_ids.to_vec();
    specials.sort_unstable();
    specials.dedup();
    h.update((specials.len() as u64).to_le_bytes());
    for s in specials {
        h.update(s.to_le_bytes());
    }
    h.update(cls.to_le_bytes());
    h.update(sep.to_le_bytes());
    h.update(opts.pca_dims.map_or(0u64, |d| d as u64 + 1).to_le_bytes());
    h.update(opts.sif_a.to_le_bytes());
    match &opts.token_counts {
        Some(c) => {
            h.update([1]);
            for x in c {
                h.update(x.to_le_bytes());
            }
        }
        None => h.update([0]),
    }
    match &opts.tokens {
        Some(t) => {
            h.update([1]);
            for s in t {
                h.update((s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
            h.update(opts.continuing_prefix.as_bytes());
        }
        None => h.update([0]),
    }
    h.finalize().into()
}

/// Distils a [`StaticTable`] from `encoder`: every id in `0..vocab_size` except
/// `special_ids` is encoded as `[cls, id, sep]` and its position-1 output becomes its row;
/// the table is centred on the mean row, optionally PCA-reduced, and weighted (SIF from
/// `opts.token_counts`, else the [`heuristic_weights`] from `opts.tokens`, else 1.0).
/// Special tokens get a zero row and weight 0. `progress(done, total)` follows the batches.
pub fn distill(
    encoder: &dyn TokenEncoder,
    vocab_size: usize,
    special_ids: &[u32],
    cls: u32,
    sep: u32,
    opts: DistillOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<StaticTable, StaticTierError> {
    let dim = encoder.hidden_size();
    if dim == 0 || dim > MAX_DIM {
        return Err(StaticTierError::Invalid(format!("hidden size {dim}")));
    }
    if vocab_size == 0 || vocab_size > MAX_VOCAB {
        return Err(StaticTierError::Invalid(format!(
            "vocabulary size {vocab_size}"
        )));
    }
    if let Some(c) = &opts.token_counts {
        if c.len() != vocab_size {
            return Err(StaticTierError::Invalid(format!(
                "{} token counts for {vocab_size} tokens",
                c.len()
            )));
        }
    }
    if let Some(t) = &opts.tokens {
        if t.len() != vocab_size {
            return Err(StaticTierError::Invalid(format!(
                "{} token strings for {vocab_size} tokens",
                t.len()
            )));
        }
    }
    if opts.pca_dims == Some(0) {
        return Err(StaticTierError::Invalid("pca_dims must be > 0".into()));
    }
    if !(opts.sif_a.is_finite() && opts.sif_a > 0.0) {
        return Err(StaticTierError::Invalid("sif_a must be > 0".into()));
    }

    let mut special = vec![false; vocab_size];
    for &id in special_ids.iter().chain([&cls, &sep]) {
        if let Some(s) = special.get_mut(id as usize) {
            *s = true;
        }
    }
    let ids: Vec<u32> = (0..vocab_size as u32)
        .filter(|&t| !special[t as usize])
        .collect();
    let total = ids.len();
    progress(0, total);

    // 1. Position-1 states.
    let mut vectors = vec![0f32; vocab_size * dim];
    let mut done = 0;
    for chunk in ids.chunks(opts.batch_size.max(1)) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&t| vec![cls, t, sep]).collect();
        let states = encoder.token_states(&batch)?;
        if states.len() != batch.len() {
            return Err(StaticTierError::Shape(format!(
                "{} outputs for {} sequences",
                states.len(),
                batch.len()
            )));
        }
        for (&t, seq) in chunk.iter().zip(&states) {
            let v = seq
                .get(1)
                .ok_or_else(|| StaticTierError::Shape(format!("{} positions", seq.len())))?;
            if v.len() != dim {
                return Err(StaticTierError::Shape(format!(
                    "width {} (expected {dim})",
                    v.len()
                )));
            }
            if !v.iter().all(|x| x.is_finite()) {
                return Err(StaticTierError::Shape(format!(
                    "non-finite state for token {t}"
                )));
            }
            let start = t as usize * dim;
            vectors[start..start + dim].copy_from_slice(v);
        }
        done += chunk.len();
        progress(done, total);
    }

    // 2. Centre on the mean over the real tokens.
    if total > 0 {
        let mut mean = vec![0f64; dim];
        for &t in &ids {
            let row = &vectors[t as usize * dim..(t as usize + 1) * dim];
            for (m, &x) in mean.iter_mut().zip(row) {
                *m += f64::from(x);
            }
        }
        for m in &mut mean {
            *m /= total as f64;
        }
        for &t in &ids {
            let row = &mut vectors[t as usize * dim..(t as usize + 1) * dim];
            for (x, &m) in row.iter_mut().zip(&mean) {
                *x = (f64::from(*x) - m) as f32;
            }
        }
    }

    // 3. Optional PCA.
    let (dim, vectors) = match opts.pca_dims {
        Some(k) if k < dim && total > 0 => (k, pca_project(&vectors, &ids, dim, k)),
        _ => (dim, vectors),
    };

    // 4. Weights.
    let mut weights = match (&opts.token_counts, &opts.tokens) {
        (Some(counts), _) => sif_weights(counts, opts.sif_a, special_ids),
        (None, Some(tokens)) => heuristic_weights(tokens, &opts.continuing_prefix, special_ids),
        (None, None) => vec![1.0; vocab_size],
    };
    for (w, &s) in weights.iter_mut().zip(&special) {
        if s {
            *w = 0.0;
        }
    }

    let mut table = StaticTable::new(dim, vectors, weights)?;
    table.options_hash = fingerprint(vocab_size, special_ids, cls, sep, &opts);
    Ok(table)
}

/// Projects the rows `ids` of a centred `n × dim` table onto its top `k` principal axes.
/// Other rows stay zero.
fn pca_project(vectors: &[f32], ids: &[u32], dim: usize, k: usize) -> Vec<f32> {
    // Covariance (upper triangle accumulated, then mirrored).
    let mut cov = vec![0f64; dim * dim];
    let mut row64 = vec![0f64; dim];
    for &t in ids {
        let row = &vectors[t as usize * dim..(t as usize + 1) * dim];
        for (r, &x) in row64.iter_mut().zip(row) {
            *r = f64::from(x);
        }
        for i in 0..dim {
            let xi = row64[i];
            if xi == 0.0 {
                continue;
            }
            let dst = &mut cov[i * dim + i..(i + 1) * dim];
            for (c, &xj) in dst.iter_mut().zip(&row64[i..]) {
                *c += xi * xj;
            }
        }
    }
    let n = ids.len().max(1) as f64;
    for i in 0..dim {
        for j in i..dim {
            let v = cov[i * dim + j] / n;
            cov[i * dim + j] = v;
            cov[j * dim + i] = v;
        }
    }
    let (values, vecs) = symmetric_eigen(&cov, dim);
    let mut order: Vec<usize> = (0..dim).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    // Basis as a dim × k matrix (column r = r-th axis), each axis's sign fixed so its largest
    // component is positive: the same model always gives the same table.
    let mut basis_t = vec![0f32; dim * k];
    for (r, &col) in order.iter().take(k).enumerate() {
        let mut big = 0.0f64;
        for i in 0..dim {
            let v = vecs[i * dim + col];
            if v.abs() > big.abs() {
                big = v;
            }
        }
        let sign = if big < 0.0 { -1.0 } else { 1.0 };
        for i in 0..dim {
            basis_t[i * k + r] = (sign * vecs[i * dim + col]) as f32;
        }
    }
    let vocab = vectors.len() / dim;
    let mut out = vec![0f32; vocab * k];
    for &t in ids {
        let row = &vectors[t as usize * dim..(t as usize + 1) * dim];
        let dst = &mut out[t as usize * k..(t as usize + 1) * k];
        // dst = Σ_i row[i] · basis_t[i]: row-wise so it vectorises.
        for (&x, b) in row.iter().zip(basis_t.chunks_exact(k)) {
            for (d, &y) in dst.iter_mut().zip(b) {
                *d += x * y;
            }
        }
    }
    out
}

/// Eigen-decomposition of the symmetric `n × n` row-major matrix `a`: Householder reduction
/// to tridiagonal form, then the implicit QL algorithm (EISPACK's tred2/tql2, as in JAMA).
/// Exact to rounding, O(n³), dependency-free. Returns the eigenvalues and the eigenvectors
/// as the columns of a row-major `n × n` matrix.
fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    if n == 0 {
        return (Vec::new(), Vec::new());
    }
    let mut v = a.to_vec();
    let mut d = vec![0f64; n];
    let mut e = vec![0f64; n];
    tred2(&mut v, &mut d, &mut e, n);
    // tql2 rotates pairs of columns of V; work on the transpose so they are contiguous rows.
    let mut vt = transpose(&v, n);
    tql2(&mut vt, &mut d, &mut e, n);
    (d, transpose(&vt, n))
}

fn transpose(m: &[f64], n: usize) -> Vec<f64> {
    let mut t = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            t[j * n + i] = m[i * n + j];
        }
    }
    t
}

/// Householder tridiagonalisation; `v` (in: the matrix) becomes the accumulated transform,
/// `d` the diagonal and `e` the sub-diagonal (in `e[1..]`).
fn tred2(v: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize) {
    let at = |i: usize, j: usize| i * n + j;
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
    }
    for i in (1..n).rev() {
        let mut scale = 0.0;
        let mut h = 0.0;
        for x in &d[..i] {
            scale += x.abs();
        }
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
                v[at(j, i)] = 0.0;
            }
        } else {
            for x in &mut d[..i] {
                *x /= scale;
                h += *x * *x;
            }
            let mut f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            for x in &mut e[..i] {
                *x = 0.0;
            }
            for j in 0..i {
                f = d[j];
                v[at(j, i)] = f;
                g = e[j] + v[at(j, j)] * f;
                for k in j + 1..i {
                    g += v[at(k, j)] * d[k];
                    e[k] += v[at(k, j)] * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                f = d[j];
                g = e[j];
                for k in j..i {
                    v[at(k, j)] -= f * e[k] + g * d[k];
                }
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
            }
        }
        d[i] = h;
    }
    for i in 0..n - 1 {
        v[at(n - 1, i)] = v[at(i, i)];
        v[at(i, i)] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[at(k, i + 1)] / h;
            }
            for j in 0..=i {
                let mut g = 0.0;
                for k in 0..=i {
                    g += v[at(k, i + 1)] * v[at(k, j)];
                }
                for k in 0..=i {
                    v[at(k, j)] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[at(k, i + 1)] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
        v[at(n - 1, j)] = 0.0;
    }
    v[at(n - 1, n - 1)] = 1.0;
    e[0] = 0.0;
}

/// Implicit QL on the tridiagonal (`d`, `e`) from [`tred2`]; `vt` is the transposed
/// transform, whose rows become the eigenvectors. `d` becomes the eigenvalues.
fn tql2(vt: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize) {
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1 = 0.0f64;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            // Bounded: QL converges in a few iterations per eigenvalue; the cap only guards
            // against NaN input looping forever.
            for _iter in 0..64 {
                let mut g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for x in &mut d[l + 2..n] {
                    *x -= h;
                }
                f += h;
                p = d[m];
                let mut c = 1.0;
                let mut c2 = c;
                let mut c3 = c;
                let el1 = e[l + 1];
                let mut s = 0.0;
                let mut s2 = 0.0;
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    let (lo, hi) = vt.split_at_mut((i + 1) * n);
                    let row_i = &mut lo[i * n..];
                    let row_i1 = &mut hi[..n];
                    for (a, b) in row_i.iter_mut().zip(row_i1.iter_mut()) {
                        let h = *b;
                        *b = s * *a + c * h;
                        *a = c * *a - s * h;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic states: position 1 is a function of the token, the other positions are
    /// wild, so taking the wrong position shows.
    struct Fake {
        dim: usize,
        calls: std::cell::Cell<usize>,
    }

    fn token_vec(t: u32, dim: usize) -> Vec<f32> {
        (0..dim)
            .map(|i| ((t as f32 + 1.0) * (i as f32 + 1.0)).sin() + 0.25 * i as f32)
            .collect()
    }

    impl TokenEncoder for Fake {
        fn token_states(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<Vec<f32>>>, EmbedError> {
            self.calls.set(self.calls.get() + 1);
            Ok(batch
                .iter()
                .map(|seq| {
                    assert_eq!(seq.len(), 3);
                    vec![
                        vec![1e3; self.dim],
                        token_vec(seq[1], self.dim),
                        vec![-1e3; self.dim],
                    ]
                })
                .collect())
        }
        fn hidden_size(&self) -> usize {
            self.dim
        }
    }

    fn fake(dim: usize) -> Fake {
        Fake {
            dim,
            calls: std::cell::Cell::new(0),
        }
    }

    const SPECIALS: [u32; 3] = [0, 1, 2];

    fn small_table(opts: DistillOptions) -> StaticTable {
        distill(&fake(6), 20, &SPECIALS, 1, 2, opts, |_, _| {}).expect("distils")
    }

    #[test]
    fn distill_takes_position_one_and_centres() {
        let enc = fake(6);
        let mut seen = Vec::new();
        let opts = DistillOptions {
            batch_size: 4,
            ..Default::default()
        };
        let table = distill(&enc, 20, &SPECIALS, 1, 2, opts, |d, t| seen.push((d, t))).expect("ok");
        assert_eq!(enc.calls.get(), 5, "17 tokens in batches of 4");
        assert_eq!(seen.first(), Some(&(0, 17)));
        assert_eq!(seen.last(), Some(&(17, 17)));
        let real: Vec<u32> = (3..20).collect();
        let mean: Vec<f32> = (0..6)
            .map(|i| real.iter().map(|&t| token_vec(t, 6)[i]).sum::<f32>() / 17.0)
            .collect();
        for &t in &real {
            let row = table.vector(t).expect("row");
            for i in 0..6 {
                assert!((row[i] - (token_vec(t, 6)[i] - mean[i])).abs() < 1e-5);
            }
        }
        for i in 0..6 {
            let m: f32 = real.iter().map(|&t| table.vector(t).expect("row")[i]).sum();
            assert!(m.abs() < 1e-4, "centred");
        }
        for s in SPECIALS {
            assert!(table.vector(s).expect("row").iter().all(|&x| x == 0.0));
            assert_eq!(table.weights()[s as usize], 0.0);
        }
    }

    #[test]
    fn weights_from_counts_tokens_or_neither() {
        let plain = small_table(DistillOptions::default());
        assert!(plain.weights()[3..].iter().all(|&w| w == 1.0));

        let mut counts = vec![0u64; 20];
        counts[3] = 900;
        counts[4] = 100;
        let sif = small_table(DistillOptions {
            token_counts: Some(counts),
            sif_a: 0.01,
            ..Default::default()
        });
        assert!((sif.weights()[3] - 0.01 / (0.01 + 0.9)).abs() < 1e-6);
        assert!((sif.weights()[4] - 0.01 / (0.01 + 0.1)).abs() < 1e-6);
        assert_eq!(sif.weights()[5], 1.0, "unseen tokens weigh fully");
        assert_eq!(sif.weights()[0], 0.0);

        let mut tokens: Vec<String> = (0..20).map(|i| format!("w{i}")).collect();
        tokens[5] = "##ing".into();
        tokens[6] = ",".into();
        tokens[7] = "“".into();
        tokens[8] = "##".into();
        let heur = small_table(DistillOptions {
            tokens: Some(tokens),
            ..Default::default()
        });
        assert_eq!(&heur.weights()[3..9], &[1.0, 1.0, 0.5, 0.5, 0.5, 1.0]);
        assert_ne!(plain.options_hash(), heur.options_hash());
        assert_eq!(
            heur.options_hash(),
            distill_fingerprint(
                20,
                &SPECIALS,
                1,
                2,
                &DistillOptions {
                    tokens: Some(
                        (0..20)
                            .map(|i| match i {
                                5 => "##ing".to_string(),
                                6 => ",".into(),
                                7 => "“".into(),
                                8 => "##".into(),
                                _ => format!("w{i}"),
                            })
                            .collect()
                    ),
                    ..Default::default()
                }
            )
        );
    }

    #[test]
    fn embedding_is_the_normalised_weighted_mean() {
        let mut table = small_table(DistillOptions::default());
        let mut w = table.weights().to_vec();
        w[4] = 0.25;
        table.set_weights(w).expect("weights");
        // Six counted rows: one group of four plus a tail of two.
        let ids = [1, 3, 4, 4, 9, 2, 999, 5, 6];
        let mut out = vec![0f32; 6];
        assert!(table.embed(&ids, &mut out));
        let mut expected = [0f32; 6];
        let mut total = 0.0;
        for (t, wt) in [(3, 1.0), (4, 0.25), (4, 0.25), (9, 1.0), (5, 1.0), (6, 1.0)] {
            let row = table.vector(t).expect("row");
            for i in 0..6 {
                expected[i] += wt * row[i];
            }
            total += wt;
        }
        for e in &mut expected {
            *e /= total;
        }
        let norm = expected.iter().map(|x| x * x).sum::<f32>().sqrt();
        for i in 0..6 {
            assert!(
                (out[i] - expected[i] / norm).abs() < 1e-5,
                "{out:?} vs {expected:?}"
            );
        }
        assert!((out.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn vectorised_and_portable_sums_agree() {
        let rows: Vec<Vec<f32>> = (0..4).map(|t| token_vec(t, 37)).collect();
        let group = [
            (0.5, rows[0].as_slice()),
            (1.0, rows[1].as_slice()),
            (0.25, rows[2].as_slice()),
            (2.0, rows[3].as_slice()),
        ];
        let mut a = vec![1f32; 37];
        let mut b = a.clone();
        accumulate4(&mut a, &group);
        accumulate4_portable(&mut b, &group);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5);
        }
    }

    #[test]
    fn empty_or_special_only_input_gives_zeros() {
        let table = small_table(DistillOptions::default());
        let mut out = vec![7f32; 6];
        assert!(!table.embed(&[], &mut out));
        assert!(out.iter().all(|&x| x == 0.0));
        out.fill(7.0);
        assert!(!table.embed(&[1, 2, 0, 12345], &mut out));
        assert!(out.iter().all(|&x| x == 0.0));
        let mut wrong = vec![7f32; 5];
        assert!(!table.embed(&[3, 4], &mut wrong));
        assert!(wrong.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn pca_keeps_the_geometry_of_low_rank_data() {
        // Rows in a 2-D subspace of 8-D: projecting onto 2 components is an isometry.
        struct LowRank;
        impl TokenEncoder for LowRank {
            fn token_states(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<Vec<f32>>>, EmbedError> {
                let u = [1.0, 2.0, 0.0, -1.0, 0.5, 0.0, 3.0, 1.0];
                let v = [0.0, 1.0, 1.0, 1.0, -2.0, 0.5, 0.0, -1.0];
                Ok(batch
                    .iter()
                    .map(|s| {
                        let t = s[1] as f32;
                        let (a, b) = ((t * 0.7).sin() * 3.0, (t * 1.3).cos());
                        let row = (0..8).map(|i| a * u[i] + b * v[i] + 5.0).collect();
                        vec![vec![0.0; 8], row, vec![0.0; 8]]
                    })
                    .collect())
            }
            fn hidden_size(&self) -> usize {
                8
            }
        }
        let full = distill(
            &LowRank,
            30,
            &[0],
            0,
            0,
            DistillOptions::default(),
            |_, _| {},
        )
        .expect("ok");
        let reduced = distill(
            &LowRank,
            30,
            &[0],
            0,
            0,
            DistillOptions {
                pca_dims: Some(2),
                ..Default::default()
            },
            |_, _| {},
        )
        .expect("ok");
        assert_eq!(reduced.dim(), 2);
        let dot = |t: &StaticTable, a: u32, b: u32| -> f32 {
            let (x, y) = (t.vector(a).expect("row"), t.vector(b).expect("row"));
            x.iter().zip(y).map(|(p, q)| p * q).sum()
        };
        for a in 1..30 {
            for b in 1..30 {
                let (f, r) = (dot(&full, a, b), dot(&reduced, a, b));
                assert!(
                    (f - r).abs() < 1e-3 * (1.0 + f.abs()),
                    "{a},{b}: {f} vs {r}"
                );
            }
        }
        assert_ne!(full.options_hash(), reduced.options_hash());
    }

    #[test]
    fn eigen_decomposes_symmetric_matrices() {
        let check = |a: &[f64], n: usize| {
            let (vals, vecs) = symmetric_eigen(a, n);
            let scale = 1.0 + a.iter().map(|x| x.abs()).fold(0.0, f64::max);
            for c in 0..n {
                for i in 0..n {
                    let av: f64 = (0..n).map(|k| a[i * n + k] * vecs[k * n + c]).sum();
                    assert!(
                        (av - vals[c] * vecs[i * n + c]).abs() < 1e-9 * scale,
                        "n={n}"
                    );
                }
                // Orthonormal columns.
                for c2 in 0..n {
                    let dot: f64 = (0..n).map(|k| vecs[k * n + c] * vecs[k * n + c2]).sum();
                    let want = if c == c2 { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-9, "n={n}");
                }
            }
        };
        for n in [1, 2, 7, 40] {
            let mut a = vec![0f64; n * n];
            for i in 0..n {
                for j in i..n {
                    let x = ((i * 7 + j * 3) as f64).sin();
                    a[i * n + j] = x;
                    a[j * n + i] = x;
                }
            }
            check(&a, n);
        }
        // Degenerate: zero, diagonal with repeats, rank one.
        check(&[0.0; 9], 3);
        check(&[2.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 5.0], 3);
        let u = [1.0, -2.0, 0.5, 3.0];
        let rank1: Vec<f64> = (0..16).map(|i| u[i / 4] * u[i % 4]).collect();
        check(&rank1, 4);
    }

    #[test]
    fn save_load_round_trip_and_rejections() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/table.bin");
        let opts = DistillOptions {
            pca_dims: Some(3),
            ..Default::default()
        };
        let fp = distill_fingerprint(20, &SPECIALS, 1, 2, &opts);
        let table = small_table(opts);
        table.save(&path, "abc123").expect("saves");
        let names: Vec<_> = fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");

        let loaded = StaticTable::load(&path, "abc123")
            .expect("reads")
            .expect("valid");
        assert_eq!(loaded, table);
        assert_eq!(loaded.options_hash(), fp);
        assert!(StaticTable::load_matching(&path, "ABC123", Some(&fp))
            .expect("reads")
            .is_some());
        assert!(StaticTable::load_matching(&path, "abc123", Some("00"))
            .expect("reads")
            .is_none());
        assert!(
            StaticTable::load(&path, "other").expect("reads").is_none(),
            "stale"
        );
        assert!(StaticTable::load(dir.path().join("missing"), "abc123")
            .expect("absent is fine")
            .is_none());

        let good = fs::read(&path).expect("read");
        // Any flipped byte is caught (header fields, data or checksum).
        for pos in [0, 9, 20, good.len() / 2, good.len() - 40, good.len() - 1] {
            let mut bad = good.clone();
            bad[pos] ^= 0x40;
            fs::write(&path, &bad).expect("write");
            assert!(
                StaticTable::load(&path, "abc123").expect("reads").is_none(),
                "flip at {pos}"
            );
        }
        for len in [0, 5, 31, 60, good.len() - 1] {
            fs::write(&path, &good[..len]).expect("write");
            assert!(
                StaticTable::load(&path, "abc123").expect("reads").is_none(),
                "cut at {len}"
            );
        }
        let mut longer = good.clone();
        longer.extend_from_slice(&[0; 8]);
        fs::write(&path, &longer).expect("write");
        assert!(StaticTable::load(&path, "abc123").expect("reads").is_none());
    }

    #[test]
    fn distill_rejects_bad_shapes_and_options() {
        struct Short;
        impl TokenEncoder for Short {
            fn token_states(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<Vec<f32>>>, EmbedError> {
                Ok(batch.iter().map(|_| vec![vec![0.0; 4]]).collect())
            }
            fn hidden_size(&self) -> usize {
                4
            }
        }
        struct Failing;
        impl TokenEncoder for Failing {
            fn token_states(&self, _: &[Vec<u32>]) -> Result<Vec<Vec<Vec<f32>>>, EmbedError> {
                Err(EmbedError::Model("boom".into()))
            }
            fn hidden_size(&self) -> usize {
                4
            }
        }
        let d = DistillOptions::default;
        assert!(matches!(
            distill(&Short, 10, &[], 0, 1, d(), |_, _| {}),
            Err(StaticTierError::Shape(_))
        ));
        assert!(matches!(
            distill(&Failing, 10, &[], 0, 1, d(), |_, _| {}),
            Err(StaticTierError::Encoder(_))
        ));
        let bad_counts = DistillOptions {
            token_counts: Some(vec![1; 3]),
            ..d()
        };
        assert!(matches!(
            distill(&fake(4), 10, &[], 0, 1, bad_counts, |_, _| {}),
            Err(StaticTierError::Invalid(_))
        ));
        assert!(matches!(
            distill(&fake(4), 0, &[], 0, 1, d(), |_, _| {}),
            Err(StaticTierError::Invalid(_))
        ));
        assert!(StaticTable::new(3, vec![0.0; 5], vec![1.0; 2]).is_err());
        assert!(StaticTable::new(0, vec![], vec![]).is_err());
    }
}
