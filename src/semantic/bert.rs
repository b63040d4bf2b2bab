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

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

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
        x.matmul(&self.wt)?.broadcast_add(&self.bias)
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
        let inner = self.act.apply(&self.up.forward(&attn)?)?;
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
}
