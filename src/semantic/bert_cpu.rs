//! semtap's CPU forward for BERT encoders: sequences packed end to end without padding, the
//! linear layers and attention run straight on candle's own matmul kernel (`gemm`), and the
//! element-wise work in a few fused passes compiled for AVX2/FMA when the CPU has them.
//!
//! Why not the tensor graph of `bert.rs` on the CPU: a batched matmul over `b × heads` runs
//! one multi-threaded gemm per head, one after the other (72 thread hand-offs per layer at
//! batch 8), the score tensors of the whole batch are materialised (`b·heads·t²` floats: 25 MB
//! at 8 × 256), every op allocates its output, padding is computed and then masked away, and
//! the element-wise kernels are built for baseline x86-64 (SSE2) with a scalar `exp`. Here a
//! forward allocates its buffers once and reuses them through all layers; attention runs one
//! task per (sequence, head) in parallel, each over a score block the size of one sequence that
//! stays in cache; bias and residual are pre-filled into the matmul's destination so the
//! matmul adds onto them; softmax uses a branch-free vectorisable `exp`, GELU a vectorisable
//! erf. The arithmetic is the model's; outputs match the graph forward to float rounding
//! (tested), and sentence-transformers' vectors to cosine 0.99999 (tests/model_parity.rs).

use std::cell::RefCell;

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// A linear layer, weight stored [in, out] row-major.
pub(super) struct Linear {
    pub(super) wt: Vec<f32>,
    pub(super) bias: Vec<f32>,
    pub(super) inp: usize,
    pub(super) out: usize,
}

/// LayerNorm's scale and shift.
pub(super) struct Norm {
    pub(super) weight: Vec<f32>,
    pub(super) bias: Vec<f32>,
    pub(super) eps: f32,
}

/// The feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Act {
    GeluErf,
    GeluTanh,
    Relu,
}

pub(super) struct Layer {
    pub(super) act: Act,
    /// Q, K and V in one projection; the query third is pre-scaled by 1/√d.
    pub(super) qkv: Linear,
    pub(super) attn_out: Linear,
    pub(super) attn_norm: Norm,
    pub(super) up: Linear,
    pub(super) down: Linear,
    pub(super) out_norm: Norm,
}

/// The encoder's weights as plain arrays, ready for [`CpuBert::forward`].
pub struct CpuBert {
    pub(super) hidden: usize,
    pub(super) heads: usize,
    pub(super) vocab: usize,
    pub(super) type_vocab: usize,
    pub(super) max_positions: usize,
    pub(super) words: Vec<f32>,
    pub(super) positions: Vec<f32>,
    pub(super) types: Vec<f32>,
    pub(super) norm: Norm,
    pub(super) layers: Vec<Layer>,
}

/// Why a forward was refused (nothing here can panic on user input).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("sequence {seq} has {len} tokens; the model takes at most {max}")]
    TooLong { seq: usize, len: usize, max: usize },
    #[error("sequence {seq} has token id {id}; the vocabulary has {vocab}")]
    BadToken { seq: usize, id: u32, vocab: usize },
    #[error("sequence {seq} has token type {id}; the model has {types}")]
    BadType { seq: usize, id: u32, types: usize },
    #[error("sequence {seq}: {ids} token ids but {types} token types")]
    Mismatch {
        seq: usize,
        ids: usize,
        types: usize,
    },
    /// A layer's weights do not fit the buffers (a checkpoint whose shapes disagree).
    #[error("layer shapes disagree: {0}")]
    Shape(String),
}

/// One input sequence: its token ids and token type ids (same length, no padding).
#[derive(Debug, Clone, Copy)]
pub struct Seq<'a> {
    pub ids: &'a [u32],
    pub types: &'a [u32],
}

impl CpuBert {
    /// Vector width.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// Token states for `seqs`, packed: the rows of sequence 0, then those of sequence 1, …
    /// (`Σ len × hidden` floats). Runs on the current rayon pool.
    pub fn forward(&self, seqs: &[Seq]) -> Result<Vec<f32>, ForwardError> {
        let h = self.hidden;
        let mut offsets = Vec::with_capacity(seqs.len() + 1);
        offsets.push(0usize);
        for (n, s) in seqs.iter().enumerate() {
            if s.ids.len() != s.types.len() {
                return Err(ForwardError::Mismatch {
                    seq: n,
                    ids: s.ids.len(),
                    types: s.types.len(),
                });
            }
            if s.ids.len() > self.max_positions {
                return Err(ForwardError::TooLong {
                    seq: n,
                    len: s.ids.len(),
                    max: self.max_positions,
                });
            }
            if let Some(&id) = s.ids.iter().find(|&&id| id as usize >= self.vocab) {
                return Err(ForwardError::BadToken {
                    seq: n,
                    id,
                    vocab: self.vocab,
                });
            }
            if let Some(&id) = s.types.iter().find(|&&id| id as usize >= self.type_vocab) {
                return Err(ForwardError::BadType {
                    seq: n,
                    id,
                    types: self.type_vocab,
                });
            }
            offsets.push(offsets[n] + s.ids.len());
        }
        let rows = offsets[seqs.len()];
        if rows == 0 {
            return Ok(Vec::new());
        }
        let inter = self.layers.first().map_or(0, |l| l.up.out);

        let mut x = vec![0f32; rows * h];
        for (s, seq) in seqs.iter().enumerate() {
            let block = &mut x[offsets[s] * h..offsets[s + 1] * h];
            for (p, row) in block.chunks_exact_mut(h).enumerate() {
                let w = &self.words[seq.ids[p] as usize * h..][..h];
                let pos = &self.positions[p * h..][..h];
                let t = &self.types[seq.types[p] as usize * h..][..h];
                for (i, v) in row.iter_mut().enumerate() {
                    *v = w[i] + pos[i] + t[i];
                }
            }
        }
        layer_norm(&mut x, &self.norm, h);

        let mut qkv = vec![0f32; rows * 3 * h];
        let mut ctx = vec![0f32; rows * h];
        let mut attn = vec![0f32; rows * h];
        let mut inner = vec![0f32; rows * inter];
        if self.heads == 0 || h % self.heads != 0 {
            return Err(ForwardError::Shape(format!(
                "{} heads for width {h}",
                self.heads
            )));
        }
        for layer in &self.layers {
            linear(&x, &layer.qkv, None, &mut qkv)?;
            attention(&qkv, &offsets, self.heads, h, &mut ctx);
            linear(&ctx, &layer.attn_out, Some(&x), &mut attn)?;
            layer_norm(&mut attn, &layer.attn_norm, h);
            linear(&attn, &layer.up, None, &mut inner)?;
            activation(&mut inner, layer.act);
            linear(&inner, &layer.down, Some(&attn), &mut x)?;
            layer_norm(&mut x, &layer.out_norm, h);
        }
        Ok(x)
    }
}

/// Rows per rayon task in the element-wise passes: enough work to be worth a hand-off.
const ROWS_PER_TASK: usize = 32;

fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// `dst = src · W + bias (+ residual)`: the destination is filled with the bias (and the
/// residual) first and the matmul accumulates onto it.
fn linear(
    src: &[f32],
    l: &Linear,
    residual: Option<&[f32]>,
    dst: &mut [f32],
) -> Result<(), ForwardError> {
    let rows = src.len() / l.inp.max(1);
    let fits = l.inp > 0
        && src.len() == rows * l.inp
        && dst.len() == rows * l.out
        && l.wt.len() == l.inp * l.out
        && l.bias.len() == l.out
        && residual.is_none_or(|r| r.len() == dst.len());
    if !fits {
        return Err(ForwardError::Shape(format!(
            "linear {}→{} on {} inputs into {} outputs",
            l.inp,
            l.out,
            src.len(),
            dst.len()
        )));
    }
    match residual {
        Some(res) => dst
            .par_chunks_mut(l.out)
            .zip(res.par_chunks(l.out))
            .with_min_len(ROWS_PER_TASK)
            .for_each(|(d, r)| {
                d.iter_mut()
                    .zip(r)
                    .zip(&l.bias)
                    .for_each(|((d, r), b)| *d = r + b)
            }),
        None => dst
            .par_chunks_mut(l.out)
            .with_min_len(ROWS_PER_TASK)
            .for_each(|d| d.copy_from_slice(&l.bias)),
    }
    let par = match threads() {
        1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    };
    // SAFETY: `src` is [rows, inp], `l.wt` [inp, out] and `dst` [rows, out], all row-major and
    // exactly that long (checked above); gemm reads and writes only inside those extents.
    unsafe {
        matmul(
            (rows, l.out, l.inp),
            Mat::new(dst.as_mut_ptr(), l.out, 1),
            Mat::new(src.as_ptr(), l.inp, 1),
            Mat::new(l.wt.as_ptr(), l.out, 1),
            true,
            par,
        )
    }
    Ok(())
}

/// A strided matrix operand for [`matmul`]: element (i, j) is at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
struct Mat<P> {
    ptr: P,
    rs: isize,
    cs: isize,
}

impl<P> Mat<P> {
    fn new(ptr: P, rs: usize, cs: usize) -> Self {
        Mat {
            ptr,
            rs: rs as isize,
            cs: cs as isize,
        }
    }
}

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)` on candle's gemm kernel.
///
/// # Safety
/// Every element the operands' strides address for the given (m, n, k) must lie inside a live
/// allocation, and no other thread may touch `dst`'s elements meanwhile.
unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: Mat<*mut f32>,
    lhs: Mat<*const f32>,
    rhs: Mat<*const f32>,
    accumulate: bool,
    par: Parallelism,
) {
    let alpha = if accumulate { 1.0f32 } else { 0.0 };
    // SAFETY: the caller's contract above.
    unsafe {
        gemm(
            m, n, k, dst.ptr, dst.cs, dst.rs, accumulate, lhs.ptr, lhs.cs, lhs.rs, rhs.ptr, rhs.cs,
            rhs.rs, alpha, 1.0f32, false, false, false, par,
        )
    }
}

/// A raw pointer that rayon tasks may share: each task writes a disjoint block through it.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: see `attention`: tasks write disjoint (rows × columns) blocks.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The address `offset` floats in (a method, so closures capture the whole wrapper).
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

thread_local! {
    /// One sequence's score block for one head, reused by the tasks a thread runs.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Self-attention over packed sequences: `qkv` is [rows, 3h] (Q pre-scaled), `ctx` receives
/// [rows, h]. One task per (sequence, head); a sequence attends only to itself, so there is no
/// padding and no mask.
fn attention(qkv: &[f32], offsets: &[usize], heads: usize, h: usize, ctx: &mut [f32]) {
    let d = h / heads;
    let stride = 3 * h;
    let seqs = offsets.len() - 1;
    debug_assert_eq!(qkv.len(), offsets[seqs] * stride);
    debug_assert_eq!(ctx.len(), offsets[seqs] * h);
    let out = SharedOut(ctx.as_mut_ptr());
    (0..seqs * heads).into_par_iter().for_each(|task| {
        let (s, head) = (task / heads, task % heads);
        let (start, len) = (offsets[s], offsets[s + 1] - offsets[s]);
        if len == 0 {
            return;
        }
        SCORES.with(|cell| {
            let mut scores = cell.borrow_mut();
            scores.clear();
            scores.resize(len * len, 0.0);
            let base = start * stride + head * d;
            // SAFETY: Q, K and V of this (sequence, head) are the `len` rows from `start`, at
            // column offsets `head·d`, `h + head·d` and `2h + head·d` of `qkv`'s rows of
            // `3h`, all inside `qkv`. The output block — rows start..start+len, columns
            // head·d..head·d+d of `ctx` — belongs to this task alone, so concurrent writes
            // never overlap, and `ctx` outlives the parallel loop.
            unsafe {
                let q = qkv.as_ptr().add(base);
                let k = q.add(h);
                let v = q.add(2 * h);
                // scores[i][j] = q_i · k_j
                matmul(
                    (len, len, d),
                    Mat::new(scores.as_mut_ptr(), len, 1),
                    Mat::new(q, stride, 1),
                    Mat::new(k, 1, stride),
                    false,
                    Parallelism::None,
                );
                softmax_rows(&mut scores, len);
                // ctx_i = Σ_j p_ij v_j
                matmul(
                    (len, d, len),
                    Mat::new(out.at(start * h + head * d), h, 1),
                    Mat::new(scores.as_ptr(), len, 1),
                    Mat::new(v, stride, 1),
                    false,
                    Parallelism::None,
                );
            }
        });
    });
}

/// Whether this CPU runs the AVX2 + FMA builds of the element-wise kernels.
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `$name(args)` that runs `$body` built for AVX2/FMA when the CPU has them and for
/// the baseline target otherwise (the body is written so the compiler vectorises it).
macro_rules! dispatch {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$m])*
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn fast($($arg: $ty),*) {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if has_avx2() {
                // SAFETY: the CPU has AVX2 and FMA (checked at run time just above).
                return unsafe { fast($($arg),*) };
            }
            body($($arg),*)
        }
    };
}

/// Sums a slice with eight independent accumulators (so the compiler can vectorise the
/// reduction without reassociating a single running sum).
#[inline(always)]
fn sum8(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `e^x`, branch-free so loops over it vectorise: round x/ln2 to n with the 1.5·2²³ trick,
/// a degree-6 polynomial on the remainder (|r| ≤ ln2/2, relative error < 2e-7), times 2ⁿ
/// built in the exponent bits. Inputs below -87 give ≈0 (softmax never needs more).
#[inline(always)]
fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const SHIFTER: f32 = 12_582_912.0; // 1.5 · 2^23
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + SHIFTER;
    let n = t - SHIFTER;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let e = (t.to_bits() as i32).wrapping_sub(SHIFTER.to_bits() as i32);
    f32::from_bits(((e + 127) << 23) as u32) * p
}

dispatch! {
    /// Row-wise softmax, in place, over rows of `width`.
    fn softmax_rows(s: &mut [f32], width: usize) {
        for row in s.chunks_exact_mut(width) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            row.iter_mut().for_each(|v| *v = exp_fast(*v - max));
            let inv = 1.0 / sum8(row);
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

dispatch! {
    /// LayerNorm of each row of `h` in `rows` (population variance, as BERT does).
    fn layer_norm_rows(rows: &mut [f32], n: &Norm, h: usize) {
        for row in rows.chunks_exact_mut(h) {
            let mean = sum8(row) / h as f32;
            row.iter_mut().for_each(|v| *v -= mean);
            let mut sq = [0f32; 8];
            let chunks = row.chunks_exact(8);
            let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
            for c in chunks {
                for i in 0..8 {
                    sq[i] += c[i] * c[i];
                }
            }
            let var = (sq.iter().sum::<f32>() + tail) / h as f32;
            let inv = 1.0 / (var + n.eps).sqrt();
            row.iter_mut()
                .zip(&n.weight)
                .zip(&n.bias)
                .for_each(|((v, w), b)| *v = *v * inv * w + b);
        }
    }
}

fn layer_norm(x: &mut [f32], n: &Norm, h: usize) {
    x.par_chunks_mut(h * ROWS_PER_TASK)
        .for_each(|rows| layer_norm_rows(rows, n, h));
}

/// erf to |error| < 1.5e-7 (Abramowitz & Stegun 7.1.26), branch-free around [`exp_fast`].
#[inline(always)]
fn erf_fast(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp_fast(-z * z);
    y.copysign(x)
}

dispatch! {
    /// Exact (erf) GELU in place.
    fn gelu_erf(xs: &mut [f32]) {
        xs.iter_mut().for_each(|v| {
            let x = *v;
            *v = 0.5 * x * (1.0 + erf_fast(x * std::f32::consts::FRAC_1_SQRT_2));
        });
    }
}

dispatch! {
    /// tanh-approximated GELU in place (tanh via exp: 1 − 2/(e^{2u}+1)).
    fn gelu_tanh(xs: &mut [f32]) {
        xs.iter_mut().for_each(|v| {
            let x = *v;
            let u = 0.797_884_6 * (x + 0.044_715 * x * x * x);
            let th = 1.0 - 2.0 / (exp_fast(2.0 * u) + 1.0);
            *v = 0.5 * x * (1.0 + th);
        });
    }
}

fn activation(x: &mut [f32], act: Act) {
    const CHUNK: usize = 16 * 1024;
    x.par_chunks_mut(CHUNK).for_each(|c| match act {
        Act::GeluErf => gelu_erf(c),
        Act::GeluTanh => gelu_tanh(c),
        Act::Relu => c.iter_mut().for_each(|v| *v = v.max(0.0)),
    });
}

/// Mean of each sequence's rows, then L2-normalised (sentence-transformers' mean pooling and
/// Normalize: sum / max(count, 1e-9), then x / max(|x|, 1e-12)).
pub fn mean_pool(states: &[f32], lens: &[usize], h: usize) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(lens.len());
    let mut start = 0;
    for &len in lens {
        let mut v = vec![0f32; h];
        for row in states[start * h..(start + len) * h].chunks_exact(h) {
            v.iter_mut().zip(row).for_each(|(a, b)| *a += b);
        }
        let count = (len as f32).max(1e-9);
        v.iter_mut().for_each(|a| *a /= count);
        let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
        v.iter_mut().for_each(|a| *a /= norm);
        out.push(v);
        start += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> (tempfile::TempDir, CpuBert) {
        let dir = tempfile::tempdir().unwrap();
        let files = crate::semantic::testing::write_tiny_bert(dir.path(), 3).unwrap();
        let raw = std::fs::read(&files.config).unwrap();
        let shape: super::super::bert::BertShape = serde_json::from_slice(&raw).unwrap();
        // SAFETY: a test's own temporary file, not modified while mapped.
        let vb = unsafe {
            candle_nn::VarBuilder::from_mmaped_safetensors(
                &[&files.weights],
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )
        }
        .unwrap();
        let enc = super::super::bert::BertEncoder::load(vb, &shape).unwrap();
        (dir, enc.to_cpu().unwrap())
    }

    #[test]
    fn input_the_model_cannot_take_is_an_error_not_a_panic() {
        let (_dir, m) = tiny();
        let long = vec![1u32; m.max_positions + 1];
        let zeros = vec![0u32; long.len()];
        let cases = [
            (vec![1u32, u32::MAX], vec![0u32, 0], "token id"),
            (vec![1, 2], vec![0, 7], "token type"),
            (vec![1, 2, 3], vec![0, 0], "token types"),
            (long.clone(), zeros.clone(), "at most"),
        ];
        for (ids, types, want) in &cases {
            let err = m.forward(&[Seq { ids, types }]).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn packing_does_not_change_a_sequence_and_empty_ones_take_no_rows() {
        let (_dir, m) = tiny();
        let h = m.hidden();
        let a: Vec<u32> = vec![2, 10, 11, 12, 13, 3];
        let b: Vec<u32> = vec![2, 20, 3];
        let za = vec![0u32; a.len()];
        let zb = vec![0u32; b.len()];
        let alone_a = m
            .forward(&[Seq {
                ids: &a,
                types: &za,
            }])
            .unwrap();
        let alone_b = m
            .forward(&[Seq {
                ids: &b,
                types: &zb,
            }])
            .unwrap();
        let packed = m
            .forward(&[
                Seq {
                    ids: &a,
                    types: &za,
                },
                Seq {
                    ids: &[],
                    types: &[],
                },
                Seq {
                    ids: &b,
                    types: &zb,
                },
            ])
            .unwrap();
        assert_eq!(packed.len(), (a.len() + b.len()) * h);
        let joined: Vec<f32> = alone_a.iter().chain(&alone_b).copied().collect();
        let worst = packed
            .iter()
            .zip(&joined)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "packed vs alone: {worst}");
        assert!(m.forward(&[]).unwrap().is_empty());
    }

    #[test]
    fn fast_exp_is_within_3e7_relative_of_std() {
        let mut worst = 0f32;
        for i in -87_000..=80_000 {
            let x = i as f32 / 1000.0;
            let rel = ((exp_fast(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert!(exp_fast(-1e30) < 1e-37);
        assert!(exp_fast(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn fast_gelu_is_within_1e6_of_the_exact_one() {
        let xs: Vec<f32> = (-12_000..=12_000).map(|i| i as f32 / 1000.0).collect();
        let mut fast = xs.clone();
        gelu_erf(&mut fast);
        let exact = candle_core::Tensor::new(xs.as_slice(), &candle_core::Device::Cpu)
            .and_then(|t| t.gelu_erf())
            .and_then(|t| t.to_vec1::<f32>())
            .expect("candle gelu");
        let worst = fast
            .iter()
            .zip(&exact)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-6, "worst abs error {worst}");
    }

    #[test]
    fn softmax_rows_sum_to_one_and_match_the_definition() {
        let mut s: Vec<f32> = (0..3 * 37)
            .map(|i| ((i * 7919) % 101) as f32 / 9.0 - 5.0)
            .collect();
        let orig = s.clone();
        softmax_rows(&mut s, 37);
        for (row, o) in s.chunks_exact(37).zip(orig.chunks_exact(37)) {
            let max = o.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let total: f64 = o.iter().map(|&v| f64::from(v - max).exp()).sum();
            for (p, v) in row.iter().zip(o) {
                let want = (f64::from(v - max).exp() / total) as f32;
                assert!((p - want).abs() < 1e-6, "{p} vs {want}");
            }
        }
    }

    #[test]
    fn layer_norm_rows_match_the_definition_on_odd_widths() {
        let h = 13;
        let n = Norm {
            weight: (0..h).map(|i| 1.0 + i as f32 / 10.0).collect(),
            bias: (0..h).map(|i| i as f32 / 100.0).collect(),
            eps: 1e-12,
        };
        let mut x: Vec<f32> = (0..2 * h).map(|i| (i * i % 17) as f32).collect();
        let orig = x.clone();
        layer_norm_rows(&mut x, &n, h);
        for (row, o) in x.chunks_exact(h).zip(orig.chunks_exact(h)) {
            let mean = o.iter().sum::<f32>() / h as f32;
            let var = o.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / h as f32;
            for i in 0..h {
                let want = (o[i] - mean) / (var + 1e-12).sqrt() * n.weight[i] + n.bias[i];
                assert!((row[i] - want).abs() < 1e-4, "{} vs {want}", row[i]);
            }
        }
    }
}
