//! Building blocks shared by the BERT-family encoders: linear, LayerNorm, attention.

use tch::{Kind, Tensor};

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

/// Multi-head self-attention through libtorch's fused scaled-dot-product kernel.
pub fn self_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: i64,
    attend: &Tensor,
) -> Result<Tensor, tch::TchError> {
    let (b, l, h) = q.size3()?;
    let split = |t: &Tensor| -> Result<Tensor, tch::TchError> {
        t.f_view([b, l, heads, h / heads])?.f_transpose(1, 2)
    };
    let ctx = Tensor::f_scaled_dot_product_attention(
        &split(q)?,
        &split(k)?,
        &split(v)?,
        Some(attend),
        0.0,
        false,
        None,
        false,
    )?;
    ctx.f_transpose(1, 2)?.f_reshape([b, l, h])
}

/// Embedding lookup: rows of `table` for each id.
pub fn lookup(table: &Tensor, ids: &Tensor) -> Result<Tensor, tch::TchError> {
    Tensor::f_embedding(table, ids, -1, false, false)
}

/// The boolean `[batch, 1, 1, seq]` mask the attention kernel takes: true where a key is real.
pub fn attention_mask(mask: &Tensor) -> Result<Tensor, tch::TchError> {
    mask.f_to_kind(Kind::Bool)?.f_unsqueeze(1)?.f_unsqueeze(1)
}

/// The activation named in a config (`gelu` is the exact erf form, as in Hugging Face).
pub fn activation(name: &str, x: &Tensor) -> Result<Tensor, tch::TchError> {
    match name {
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => x.f_gelu("tanh"),
        "relu" => x.f_relu(),
        _ => x.f_gelu("none"),
    }
}

/// Whether [`activation`] implements `name`.
pub fn activation_supported(name: &str) -> bool {
    matches!(
        name,
        "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "relu"
    )
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
