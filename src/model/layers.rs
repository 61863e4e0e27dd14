//! Building blocks shared by the BERT-family encoders: linear, LayerNorm, attention.

use tch::Tensor;

use super::config::Activation;
use super::packed::{PackedBatch, Qkv};
use super::weights::WeightMap;
use super::ModelError;

/// A dense layer `y = x Wᵀ + b` with HF `weight`/`bias` keys.
pub struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
}

impl Linear {
    /// Loads `{prefix}.weight` `[out, in]` and `{prefix}.bias` `[out]`.
    pub fn load(
        w: &mut WeightMap,
        prefix: &str,
        in_dim: i64,
        out_dim: i64,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            weight: w.take_shaped(&format!("{prefix}.weight"), &[out_dim, in_dim])?,
            bias: w.take_shaped(&format!("{prefix}.bias"), &[out_dim])?,
        })
    }

    /// Applies the layer to the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, tch::TchError> {
        x.f_linear(&self.weight, Some(&self.bias))
    }

    fn tensors_mut(&mut self) -> [&mut Tensor; 2] {
        [&mut self.weight, &mut self.bias]
    }
}

/// Layer normalisation over the last dimension.
pub struct LayerNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `{prefix}.weight`/`{prefix}.bias` (legacy `gamma`/`beta` are renamed on read).
    pub fn load(w: &mut WeightMap, prefix: &str, dim: i64, eps: f64) -> Result<Self, ModelError> {
        Ok(Self {
            weight: w.take_shaped(&format!("{prefix}.weight"), &[dim])?,
            bias: w.take_shaped(&format!("{prefix}.bias"), &[dim])?,
            eps,
        })
    }

    /// Normalises the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, tch::TchError> {
        let dim = *self.weight.size().last().unwrap_or(&0);
        x.f_layer_norm([dim], Some(&self.weight), Some(&self.bias), self.eps, true)
    }

    fn tensors_mut(&mut self) -> [&mut Tensor; 2] {
        [&mut self.weight, &mut self.bias]
    }
}

/// Dropout rates of a model in training (Hugging Face's placements).
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    /// After embeddings and on sublayer outputs.
    pub hidden: f64,
    /// On attention probabilities.
    pub attention: f64,
    /// Whether the attention output projection is followed by dropout (BERT: yes,
    /// DistilBERT: no).
    pub after_attention: bool,
}

/// Training-mode dropout with rate `p` (identity for `None` or 0).
pub fn dropout(x: &Tensor, p: Option<f64>) -> Result<Tensor, tch::TchError> {
    match p {
        Some(p) if p > 0.0 => x.f_dropout(p, true),
        _ => Ok(x.shallow_clone()),
    }
}

/// Embedding lookup: rows of `table` for each id.
pub fn lookup(table: &Tensor, ids: &Tensor) -> Result<Tensor, tch::TchError> {
    Tensor::f_embedding(table, ids, -1, false, false)
}

/// Applies a feed-forward activation.
pub fn activation(act: &Activation, x: &Tensor) -> Result<Tensor, tch::TchError> {
    match act {
        Activation::Gelu => x.f_gelu("none"),
        Activation::GeluTanh => x.f_gelu("tanh"),
        Activation::Relu => x.f_relu(),
        // Refused when the model is loaded (`architecture::read_arch`).
        Activation::Unsupported(name) => Err(tch::TchError::Torch(format!(
            "activation `{name}` is not supported"
        ))),
    }
}

/// Anything holding parameters: lets the loader move or cast all of them at once.
pub trait Parameters {
    /// Every parameter tensor, mutably.
    fn parameters_mut(&mut self) -> Vec<&mut Tensor>;
}

impl Parameters for Linear {
    fn parameters_mut(&mut self) -> Vec<&mut Tensor> {
        self.tensors_mut().into_iter().collect()
    }
}

impl Parameters for LayerNorm {
    fn parameters_mut(&mut self) -> Vec<&mut Tensor> {
        self.tensors_mut().into_iter().collect()
    }
}

/// Checkpoint key suffixes of one transformer block (they differ between BERT and DistilBERT).
pub struct BlockKeys {
    /// Query, key, value projections.
    pub qkv: [&'static str; 3],
    /// Attention output projection.
    pub attn_out: &'static str,
    /// LayerNorm after attention.
    pub attn_norm: &'static str,
    /// Feed-forward in and out projections.
    pub ffn: [&'static str; 2],
    /// LayerNorm after the feed-forward block.
    pub out_norm: &'static str,
}

/// A post-LayerNorm transformer block: self-attention, add & norm, feed-forward, add & norm,
/// on the packed token stream.
pub struct TransformerBlock {
    qkv: [Linear; 3],
    /// Q, K and V as one `[3·hidden, hidden]` projection (inference; see [`Self::fuse_qkv`]).
    fused: Option<Linear>,
    attn_out: Linear,
    attn_norm: LayerNorm,
    ffn_in: Linear,
    ffn_out: Linear,
    out_norm: LayerNorm,
}

impl TransformerBlock {
    /// Loads the block under `prefix` with the given key names.
    pub fn load(
        w: &mut WeightMap,
        prefix: &str,
        keys: &BlockKeys,
        (hidden, inner, eps): (i64, i64, f64),
    ) -> Result<Self, ModelError> {
        let key = |k: &str| format!("{prefix}.{k}");
        let linear = |w: &mut WeightMap, k: &str, i, o| Linear::load(w, &key(k), i, o);
        Ok(Self {
            qkv: [
                linear(w, keys.qkv[0], hidden, hidden)?,
                linear(w, keys.qkv[1], hidden, hidden)?,
                linear(w, keys.qkv[2], hidden, hidden)?,
            ],
            fused: None,
            attn_out: linear(w, keys.attn_out, hidden, hidden)?,
            attn_norm: LayerNorm::load(w, &key(keys.attn_norm), hidden, eps)?,
            ffn_in: linear(w, keys.ffn[0], hidden, inner)?,
            ffn_out: linear(w, keys.ffn[1], inner, hidden)?,
            out_norm: LayerNorm::load(w, &key(keys.out_norm), hidden, eps)?,
        })
    }

    /// Concatenates the Q, K and V projections into one GEMM (for inference: the separate
    /// tensors stay the parameters a trainer updates, and are dropped here).
    pub fn fuse_qkv(&mut self) -> Result<(), tch::TchError> {
        let [q, k, v] = &self.qkv;
        self.fused = Some(Linear {
            weight: Tensor::f_cat(&[&q.weight, &k.weight, &v.weight], 0)?,
            bias: Tensor::f_cat(&[&q.bias, &k.bias, &v.bias], 0)?,
        });
        Ok(())
    }

    /// Applies the block to the packed stream `x` `[tokens, hidden]` of `batch`; `act` is the
    /// FFN activation, `drop` the dropout rates when training.
    pub fn forward(
        &self,
        x: &Tensor,
        heads: i64,
        batch: &PackedBatch,
        act: &Activation,
        drop: Option<Dropout>,
    ) -> Result<Tensor, tch::TchError> {
        let ctx = match &self.fused {
            Some(qkv) => batch.attend(Qkv::Fused(&qkv.forward(x)?), heads, 0.0)?,
            None => {
                let [q, k, v] = &self.qkv;
                let (q, k, v) = (q.forward(x)?, k.forward(x)?, v.forward(x)?);
                batch.attend(
                    Qkv::Split(&q, &k, &v),
                    heads,
                    drop.map_or(0.0, |d| d.attention),
                )?
            }
        };
        let attn_drop = drop.filter(|d| d.after_attention).map(|d| d.hidden);
        let attended = dropout(&self.attn_out.forward(&ctx)?, attn_drop)?;
        let x = self.attn_norm.forward(&attended.f_add(x)?)?;
        let inner = activation(act, &self.ffn_in.forward(&x)?)?;
        let out = dropout(&self.ffn_out.forward(&inner)?, drop.map(|d| d.hidden))?;
        self.out_norm.forward(&out.f_add(&x)?)
    }
}

impl Parameters for TransformerBlock {
    fn parameters_mut(&mut self) -> Vec<&mut Tensor> {
        let mut out = Vec::new();
        for l in
            self.qkv
                .iter_mut()
                .chain([&mut self.attn_out, &mut self.ffn_in, &mut self.ffn_out])
        {
            out.extend(l.parameters_mut());
        }
        out.extend(self.attn_norm.parameters_mut());
        out.extend(self.out_norm.parameters_mut());
        out
    }
}
