//! semtap's own BERT encoder forward, built from candle ops, for the sentence-transformer models
//! it runs (all-MiniLM-L6-v2 and other BERT-style encoders with absolute positions).
//!
//! Why not candle-transformers' `BertModel`: its attention runs three separate projections and
//! three transposed copies, divides the scores by √d into a new tensor, adds the mask into
//! another, and uses the generic five-pass softmax; at 256 tokens softmax alone was a quarter of
//! the time. Here: Q, K and V are one fused projection whose query rows are pre-scaled by 1/√d
//! (no scaling pass), split by a single permute-and-copy, the mask is added only when the batch
//! is actually padded, and softmax is candle's fused last-dimension kernel. The weights and the
//! arithmetic are the same, so the output matches `BertModel` to float rounding (tested).

use std::sync::OnceLock;

use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Module, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

use super::bert_cpu::{self, CpuBert};

/// The parts of a BERT `config.json` the forward needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertShape {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_type_vocab() -> usize {
    2
}

fn default_eps() -> f64 {
    1e-12
}

struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl Norm {
    fn load(vb: VarBuilder, size: usize, eps: f64) -> candle_core::Result<Norm> {
        Ok(Norm {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// A dense layer with its weight stored transposed ([in, out], contiguous) so the matmul reads
/// it row-major.
struct Dense {
    wt: Tensor,
    bias: Tensor,
}

impl Dense {
    fn from_parts(weight: Tensor, bias: Tensor) -> candle_core::Result<Dense> {
        Ok(Dense {
            wt: weight.t()?.contiguous()?,
            bias,
        })
    }

    fn load(vb: VarBuilder, inp: usize, out: usize) -> candle_core::Result<Dense> {
        Dense::from_parts(vb.get((out, inp), "weight")?, vb.get(out, "bias")?)
    }

    /// `x` is [rows, in].
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_act(x, None)
    }

    /// `act(x·W + b)`; on the CPU the bias and activation are applied in place in one pass
    /// over the fresh matmul output (no extra tensors).
    fn forward_act(&self, x: &Tensor, act: Option<Act>) -> candle_core::Result<Tensor> {
        let y = x.matmul(&self.wt)?;
        if y.device().is_cpu() && y.dtype() == DType::F32 && y.is_contiguous() {
            y.inplace_op2(&self.bias, &BiasAct(act))?;
            return Ok(y);
        }
        let y = y.broadcast_add(&self.bias)?;
        match act {
            Some(a) => a.apply(&y),
            None => Ok(y),
        }
    }
}

/// In place: each row of `dst` gets `bias` added, then the activation.
struct BiasAct(Option<Act>);

impl InplaceOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "semtap-bias-act"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        bias: &CpuStorage,
        bias_l: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(d), CpuStorage::F32(b)) = (dst, bias) else {
            candle_core::bail!("semtap-bias-act: f32 only");
        };
        let (Some((d0, d1)), Some((b0, b1))) =
            (dst_l.contiguous_offsets(), bias_l.contiguous_offsets())
        else {
            candle_core::bail!("semtap-bias-act: contiguous tensors only");
        };
        let b = &b[b0..b1];
        let d = &mut d[d0..d1];
        if b.is_empty() || d.len() % b.len() != 0 {
            candle_core::bail!("semtap-bias-act: {} values, bias of {}", d.len(), b.len());
        }
        match self.0 {
            None => d.chunks_exact_mut(b.len()).for_each(|row| {
                row.iter_mut().zip(b).for_each(|(x, c)| *x += c);
            }),
            Some(Act::GeluErf) => {
                let table = gelu_table();
                d.chunks_exact_mut(b.len()).for_each(|row| {
                    row.iter_mut()
                        .zip(b)
                        .for_each(|(x, c)| *x = gelu_lut(table, *x + c));
                })
            }
            Some(Act::GeluTanh) => d.chunks_exact_mut(b.len()).for_each(|row| {
                row.iter_mut().zip(b).for_each(|(x, c)| {
                    let v = *x + c;
                    *x = 0.5 * v * (1.0 + (0.797_884_6 * (v + 0.044_715 * v * v * v)).tanh());
                });
            }),
            Some(Act::Relu) => d.chunks_exact_mut(b.len()).for_each(|row| {
                row.iter_mut()
                    .zip(b)
                    .for_each(|(x, c)| *x = (*x + c).max(0.0));
            }),
        }
        Ok(())
    }
}

/// Exact (erf) GELU tabulated on [-GELU_RANGE, GELU_RANGE] in steps of 1/GELU_STEPS, linearly
/// interpolated: the error is below 1e-5 everywhere (tested), and it is several times faster
/// than evaluating erf per element. Outside the range GELU is x (above) or 0 (below) to f32
/// precision.
const GELU_RANGE: f32 = 8.0;
const GELU_STEPS: f32 = 128.0;

fn gelu_table() -> &'static [f32] {
    static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let n = (2.0 * GELU_RANGE * GELU_STEPS) as usize + 2;
        (0..n)
            .map(|i| {
                let x = -f64::from(GELU_RANGE) + i as f64 / f64::from(GELU_STEPS);
                (0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))) as f32
            })
            .collect()
    })
}

#[inline]
fn gelu_lut(table: &[f32], x: f32) -> f32 {
    if x >= GELU_RANGE {
        return x;
    }
    if x <= -GELU_RANGE || x.is_nan() {
        return if x.is_nan() { x } else { 0.0 };
    }
    let pos = (x + GELU_RANGE) * GELU_STEPS;
    let i = pos as usize;
    let frac = pos - i as f32;
    match (table.get(i), table.get(i + 1)) {
        (Some(a), Some(b)) => a + (b - a) * frac,
        _ => x.max(0.0),
    }
}

/// erf to double precision (W. J. Cody's rational approximations are overkill here; this is
/// the Numerical Recipes erfc with |error| < 1.2e-7, computed in f64 for the table only).
fn erf(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        1.0 - r
    } else {
        r - 1.0
    }
}

/// The feed-forward activation named by `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Act {
    /// `gelu`: the exact, erf-based GELU (BERT, MiniLM).
    GeluErf,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_approximate`: the tanh approximation.
    GeluTanh,
    Relu,
}

impl Act {
    fn parse(name: Option<&str>) -> candle_core::Result<Act> {
        match name.unwrap_or("gelu") {
            "gelu" => Ok(Act::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_approximate" => Ok(Act::GeluTanh),
            "relu" => Ok(Act::Relu),
            other => {
                candle_core::bail!("hidden_act `{other}` is not supported (gelu, gelu_new, relu)")
            }
        }
    }

    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Act::GeluErf => x.gelu_erf(),
            Act::GeluTanh => x.gelu(),
            Act::Relu => x.relu(),
        }
    }
}

struct Layer {
    act: Act,
    qkv: Dense,
    attn_out: Dense,
    attn_norm: Norm,
    up: Dense,
    down: Dense,
    out_norm: Norm,
}

impl Layer {
    fn load(vb: VarBuilder, s: &BertShape) -> candle_core::Result<Layer> {
        let h = s.hidden_size;
        let head = h / s.num_attention_heads;
        let scale = 1.0 / (head as f64).sqrt();
        let sa = vb.pp("attention").pp("self");
        let q_w = (sa.pp("query").get((h, h), "weight")? * scale)?;
        let q_b = (sa.pp("query").get(h, "bias")? * scale)?;
        let k_w = sa.pp("key").get((h, h), "weight")?;
        let k_b = sa.pp("key").get(h, "bias")?;
        let v_w = sa.pp("value").get((h, h), "weight")?;
        let v_b = sa.pp("value").get(h, "bias")?;
        let qkv = Dense::from_parts(
            Tensor::cat(&[&q_w, &k_w, &v_w], 0)?,
            Tensor::cat(&[&q_b, &k_b, &v_b], 0)?,
        )?;
        let ao = vb.pp("attention").pp("output");
        Ok(Layer {
            act: Act::parse(s.hidden_act.as_deref())?,
            qkv,
            attn_out: Dense::load(ao.pp("dense"), h, h)?,
            attn_norm: Norm::load(ao.pp("LayerNorm"), h, s.layer_norm_eps)?,
            up: Dense::load(vb.pp("intermediate").pp("dense"), h, s.intermediate_size)?,
            down: Dense::load(vb.pp("output").pp("dense"), s.intermediate_size, h)?,
            out_norm: Norm::load(vb.pp("output").pp("LayerNorm"), h, s.layer_norm_eps)?,
        })
    }

    /// `x` is [b·t, h]; `bias` the additive mask [b, 1, 1, t] when the batch is padded.
    fn forward(
        &self,
        x: &Tensor,
        b: usize,
        t: usize,
        heads: usize,
        bias: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let h = x.dim(1)?;
        let d = h / heads;
        // [b·t, 3h] → [b, t, 3, heads, d] → [3, b, heads, t, d]: one copy for Q, K and V.
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, t, 3, heads, d))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let q = qkv.get(0)?;
        let k = qkv.get(1)?;
        let v = qkv.get(2)?;
        let mut scores = q.matmul(&k.t()?)?;
        if let Some(bias) = bias {
            scores = scores.broadcast_add(bias)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * t, h))?;
        let attn = self
            .attn_norm
            .forward(&(self.attn_out.forward(&ctx)? + x)?)?;
        let inner = self.up.forward_act(&attn, Some(self.act))?;
        self.out_norm.forward(&(self.down.forward(&inner)? + attn)?)
    }
}

/// A BERT encoder (embeddings and layers; no pooler: sentence-transformers mean-pools).
pub struct BertEncoder {
    words: Embedding,
    positions: Tensor,
    types: Embedding,
    norm: Norm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
}

impl BertEncoder {
    /// Loads the weights under `bert.`, `<model_type>.` or the root, as checkpoints vary.
    pub fn load(vb: VarBuilder, s: &BertShape) -> candle_core::Result<BertEncoder> {
        if s.num_attention_heads == 0 || s.hidden_size % s.num_attention_heads != 0 {
            candle_core::bail!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                s.hidden_size,
                s.num_attention_heads
            );
        }
        let root = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else if let Some(prefix) = s
            .model_type
            .as_deref()
            .filter(|m| vb.contains_tensor(&format!("{m}.embeddings.word_embeddings.weight")))
        {
            vb.pp(prefix)
        } else {
            vb
        };
        let e = root.pp("embeddings");
        let h = s.hidden_size;
        let words = Embedding::new(e.pp("word_embeddings").get((s.vocab_size, h), "weight")?, h);
        let positions = e
            .pp("position_embeddings")
            .get((s.max_position_embeddings, h), "weight")?;
        let types = Embedding::new(
            e.pp("token_type_embeddings")
                .get((s.type_vocab_size, h), "weight")?,
            h,
        );
        let norm = Norm::load(e.pp("LayerNorm"), h, s.layer_norm_eps)?;
        let layers = (0..s.num_hidden_layers)
            .map(|i| Layer::load(root.pp("encoder").pp("layer").pp(i), s))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(BertEncoder {
            words,
            positions,
            types,
            norm,
            layers,
            heads: s.num_attention_heads,
            hidden: h,
        })
    }

    /// Token states [b, t, hidden] for `ids` and `types` [b, t] (u32) and `mask` [b, t] (u32,
    /// 1 = token, 0 = padding). `padded` says whether any mask entry is 0 (the caller knows it
    /// from the lengths; an unpadded batch skips the mask).
    pub fn forward(
        &self,
        ids: &Tensor,
        types: &Tensor,
        mask: &Tensor,
        padded: bool,
    ) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let pos = self.positions.narrow(0, 0, t)?;
        let x = (self.words.forward(ids)? + self.types.forward(types)?)?.broadcast_add(&pos)?;
        let mut x = self.norm.forward(&x)?.reshape((b * t, self.hidden))?;
        // Padding gets a large negative score before the softmax (HF uses the dtype's minimum;
        // -1e30 leaves exp() at 0 without risking -inf arithmetic).
        let bias = if padded {
            let m = mask.to_dtype(DType::F32)?;
            Some(((m - 1.0)? * 1e30)?.reshape((b, 1, 1, t))?)
        } else {
            None
        };
        for layer in &self.layers {
            x = layer.forward(&x, b, t, self.heads, bias.as_ref())?;
        }
        x.reshape((b, t, self.hidden))
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.positions.device()
    }

    /// The same weights as plain arrays for the packed CPU forward ([`CpuBert`]).
    pub fn to_cpu(&self) -> candle_core::Result<CpuBert> {
        let flat = |t: &Tensor| t.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>();
        let norm = |n: &Norm| -> candle_core::Result<bert_cpu::Norm> {
            Ok(bert_cpu::Norm {
                weight: flat(&n.weight)?,
                bias: flat(&n.bias)?,
                eps: n.eps,
            })
        };
        let linear = |d: &Dense| -> candle_core::Result<bert_cpu::Linear> {
            let (inp, out) = d.wt.dims2()?;
            Ok(bert_cpu::Linear {
                wt: flat(&d.wt)?,
                bias: flat(&d.bias)?,
                inp,
                out,
            })
        };
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(bert_cpu::Layer {
                    act: match l.act {
                        Act::GeluErf => bert_cpu::Act::GeluErf,
                        Act::GeluTanh => bert_cpu::Act::GeluTanh,
                        Act::Relu => bert_cpu::Act::Relu,
                    },
                    qkv: linear(&l.qkv)?,
                    attn_out: linear(&l.attn_out)?,
                    attn_norm: norm(&l.attn_norm)?,
                    up: linear(&l.up)?,
                    down: linear(&l.down)?,
                    out_norm: norm(&l.out_norm)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let (vocab, _) = self.words.embeddings().dims2()?;
        let (type_vocab, _) = self.types.embeddings().dims2()?;
        let (max_positions, _) = self.positions.dims2()?;
        Ok(CpuBert {
            hidden: self.hidden,
            heads: self.heads,
            vocab,
            type_vocab,
            max_positions,
            words: flat(self.words.embeddings())?,
            positions: flat(&self.positions)?,
            types: flat(self.types.embeddings())?,
            norm: norm(&self.norm)?,
            layers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tabulated_gelu_is_within_1e5_of_candles_erf_gelu() {
        let xs: Vec<f32> = (-12_000..=12_000).map(|i| i as f32 / 1000.0).collect();
        let exact = Tensor::new(xs.as_slice(), &Device::Cpu)
            .and_then(|t| t.gelu_erf())
            .and_then(|t| t.to_vec1::<f32>())
            .expect("candle gelu");
        let table = gelu_table();
        let worst = xs
            .iter()
            .zip(&exact)
            .map(|(x, e)| (gelu_lut(table, *x) - e).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "worst abs error {worst}");
        assert!(gelu_lut(table, f32::NAN).is_nan());
        assert_eq!(gelu_lut(table, 1e30), 1e30);
        assert_eq!(gelu_lut(table, -1e30), 0.0);
    }

    #[test]
    fn bias_and_activation_in_place_match_the_generic_ops() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[0.5f32, -1.0, 2.0], [3.0, -4.0, 0.0]], &dev).expect("x");
        let w = Tensor::new(&[[1.0f32, 0.5], [0.0, 1.0], [-1.0, 2.0]], &dev).expect("w");
        let b = Tensor::new(&[0.1f32, -0.2], &dev).expect("b");
        let d = Dense::from_parts(w.t().expect("t"), b.clone()).expect("dense");
        for act in [
            None,
            Some(Act::GeluErf),
            Some(Act::GeluTanh),
            Some(Act::Relu),
        ] {
            let fast = d
                .forward_act(&x, act)
                .expect("fast")
                .to_vec2::<f32>()
                .expect("v");
            let y = x
                .matmul(&d.wt)
                .and_then(|y| y.broadcast_add(&b))
                .expect("y");
            let slow = match act {
                Some(a) => a.apply(&y).expect("act"),
                None => y,
            }
            .to_vec2::<f32>()
            .expect("v");
            for (r, s) in fast.iter().flatten().zip(slow.iter().flatten()) {
                assert!((r - s).abs() < 1e-5, "{act:?}: {r} vs {s}");
            }
        }
    }
}
