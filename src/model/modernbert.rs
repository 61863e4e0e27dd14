//! ModernBERT with its masked-language-model head (`ModernBertForMaskedLM`; the Ettin encoders
//! share the architecture).
//!
//! Warner et al., "Smarter, Better, Faster, Longer: A Modern Bidirectional Encoder" (ModernBERT,
//! arXiv:2412.13663); upstream: Hugging Face
//! `transformers/models/modernbert/modeling_modernbert.py` (transformers 5). Pre-LayerNorm
//! blocks (layer 0 without an attention norm), rotary positions with one base for global and one
//! for sliding-window layers, a fused `Wqkv` projection, a gated GELU MLP, and a final norm
//! before the MLM head (`head.dense` → act → `head.norm`, decoder tied to the embeddings).
//! Tensor keys equal the HF state dict.

use tch::{Device, Kind, Tensor};

use super::config::ModernBertConfig;
use super::layers::{activation, dropout, lookup, Parameters};
use super::local_attention::BandGrid;
use super::modernbert_config::LayerKind;
use super::packed::{PackedBatch, Qkv};
use super::weights::WeightMap;
use super::ModelError;

/// A dense layer whose bias the config may leave out (`attention_bias`, `mlp_bias`, ...).
struct Dense {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Dense {
    fn load(
        w: &mut WeightMap,
        prefix: &str,
        dims: (i64, i64),
        bias: bool,
    ) -> Result<Self, ModelError> {
        let (in_dim, out_dim) = dims;
        Ok(Self {
            weight: w.take_shaped(&format!("{prefix}.weight"), &[out_dim, in_dim])?,
            bias: bias
                .then(|| w.take_shaped(&format!("{prefix}.bias"), &[out_dim]))
                .transpose()?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, tch::TchError> {
        x.f_linear(&self.weight, self.bias.as_ref())
    }

    fn tensors_mut(&mut self) -> impl Iterator<Item = &mut Tensor> {
        std::iter::once(&mut self.weight).chain(self.bias.as_mut())
    }
}

/// LayerNorm with an optional bias (`norm_bias`).
struct Norm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl Norm {
    fn load(w: &mut WeightMap, prefix: &str, cfg: &ModernBertConfig) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        Ok(Self {
            weight: w.take_shaped(&format!("{prefix}.weight"), &[h])?,
            bias: cfg
                .norm_bias
                .then(|| w.take_shaped(&format!("{prefix}.bias"), &[h]))
                .transpose()?,
            eps: cfg.norm_eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, tch::TchError> {
        let dim = self.weight.size1()?;
        x.f_layer_norm(
            [dim],
            Some(&self.weight),
            self.bias.as_ref(),
            self.eps,
            true,
        )
    }

    fn tensors_mut(&mut self) -> impl Iterator<Item = &mut Tensor> {
        std::iter::once(&mut self.weight).chain(self.bias.as_mut())
    }
}

/// One encoder layer under `model.layers.N`.
struct Layer {
    kind: LayerKind,
    /// `None` for layer 0 (an `nn.Identity` upstream).
    attn_norm: Option<Norm>,
    wqkv: Dense,
    attn_out: Dense,
    mlp_norm: Norm,
    /// `[2·intermediate, hidden]`: input and gate halves.
    wi: Dense,
    mlp_out: Dense,
}

/// Dropout rates when training (transformers' placements).
#[derive(Debug, Clone, Copy)]
struct Rates {
    embedding: f64,
    attention: f64,
    mlp: f64,
}

/// cos and sin `[total, 1, head_dim]` of one rotary base at each token's position.
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

/// `ModernBertForMaskedLM`: encoder, final norm and the MLM head.
pub struct ModernBert {
    cfg: ModernBertConfig,
    /// fp32 inverse frequencies of the global and the local rotary base, `[head_dim / 2]`.
    inv_freq: [Tensor; 2],
    tok_embeddings: Tensor,
    emb_norm: Norm,
    layers: Vec<Layer>,
    final_norm: Norm,
    head_dense: Dense,
    head_norm: Norm,
    /// `[vocab, hidden]`; the token embeddings when tied.
    decoder: Tensor,
    /// `[vocab]` (zeros when `decoder_bias` is off).
    decoder_bias: Tensor,
    tied: bool,
    rates: Option<Rates>,
}

impl ModernBert {
    /// Loads every tensor from `w` (keys `model.*`, `head.*`, `decoder.*`).
    pub fn load(w: &mut WeightMap, cfg: &ModernBertConfig) -> Result<Self, ModelError> {
        let config_path = w.source().with_file_name("config.json");
        let config_error = |detail: String| ModelError::Config {
            path: config_path.clone(),
            detail,
        };
        let kinds = cfg.layer_kinds().map_err(config_error)?;
        let (h, v, i) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
        let head_dim = h / cfg.num_attention_heads.max(1);
        let inv_freq = |kind| -> Result<Tensor, ModelError> {
            let theta = cfg.rope_theta(kind).map_err(config_error)?;
            Ok(inverse_frequencies(theta, head_dim)?)
        };
        let inv_freq = [inv_freq(LayerKind::Global)?, inv_freq(LayerKind::Local)?];
        let tok_embeddings = w.take_shaped("model.embeddings.tok_embeddings.weight", &[v, h])?;
        let emb_norm = Norm::load(w, "model.embeddings.norm", cfg)?;
        let mut layers = Vec::with_capacity(kinds.len());
        for (n, kind) in kinds.into_iter().enumerate() {
            let p = format!("model.layers.{n}");
            let (attn_bias, mlp_bias) = (cfg.attention_bias, cfg.mlp_bias);
            layers.push(Layer {
                kind,
                attn_norm: (n > 0)
                    .then(|| Norm::load(w, &format!("{p}.attn_norm"), cfg))
                    .transpose()?,
                wqkv: Dense::load(w, &format!("{p}.attn.Wqkv"), (h, 3 * h), attn_bias)?,
                attn_out: Dense::load(w, &format!("{p}.attn.Wo"), (h, h), attn_bias)?,
                mlp_norm: Norm::load(w, &format!("{p}.mlp_norm"), cfg)?,
                wi: Dense::load(w, &format!("{p}.mlp.Wi"), (h, 2 * i), mlp_bias)?,
                mlp_out: Dense::load(w, &format!("{p}.mlp.Wo"), (i, h), mlp_bias)?,
            });
        }
        let final_norm = Norm::load(w, "model.final_norm", cfg)?;
        let head_dense = Dense::load(w, "head.dense", (h, h), cfg.classifier_bias)?;
        let head_norm = Norm::load(w, "head.norm", cfg)?;
        // A tied decoder is saved without its weight: it is the token embedding matrix.
        let decoder = match w.take("decoder.weight") {
            Some(t) if t.size() == [v, h] => {
                w.record("decoder.weight", &t);
                Some(t)
            }
            Some(t) => {
                return Err(ModelError::WeightShape {
                    path: w.source().to_path_buf(),
                    key: "decoder.weight".into(),
                    expected: vec![v, h],
                    found: t.size(),
                })
            }
            None if cfg.tie_word_embeddings => None,
            None => {
                return Err(ModelError::MissingWeight {
                    path: w.source().to_path_buf(),
                    key: "decoder.weight".into(),
                })
            }
        };
        let tied = decoder.is_none();
        let decoder = decoder.unwrap_or_else(|| tok_embeddings.shallow_clone());
        let decoder_bias = if cfg.decoder_bias {
            w.take_shaped("decoder.bias", &[v])?
        } else {
            Tensor::f_zeros([v], (tok_embeddings.kind(), tok_embeddings.device()))
                .map_err(ModelError::from)?
        };
        Ok(Self {
            cfg: cfg.clone(),
            inv_freq,
            tok_embeddings,
            emb_norm,
            layers,
            final_norm,
            head_dense,
            head_norm,
            decoder,
            decoder_bias,
            tied,
            rates: None,
        })
    }

    /// Runs the encoder, the final norm and the MLM head transform over the packed stream of
    /// `batch`: `[tokens, hidden]`, before the vocabulary projection (see [`Self::decoder`]).
    pub fn transformed(&self, batch: &PackedBatch) -> Result<Tensor, tch::TchError> {
        let rates = self.rates;
        let x = lookup(&self.tok_embeddings, &batch.ids)?;
        let mut x = dropout(&self.emb_norm.forward(&x)?, rates.map(|r| r.embedding))?;
        let kind = x.kind();
        let global = rotary(&self.inv_freq[0], &batch.positions, kind)?;
        let local = rotary(&self.inv_freq[1], &batch.positions, kind)?;
        // Built once per batch, only if a layer attends locally.
        let band = if self.layers.iter().any(|l| l.kind == LayerKind::Local) {
            Some(BandGrid::new(batch, self.cfg.half_window())?)
        } else {
            None
        };
        let heads = self.cfg.num_attention_heads;
        let attn_drop = rates.map_or(0.0, |r| r.attention);
        for layer in &self.layers {
            let normed = match &layer.attn_norm {
                Some(norm) => norm.forward(&x)?,
                None => x.shallow_clone(),
            };
            let qkv = layer.wqkv.forward(&normed)?.f_chunk(3, -1)?;
            let rope = match layer.kind {
                LayerKind::Global => &global,
                LayerKind::Local => &local,
            };
            let q = rope.apply(&qkv[0], heads)?;
            let k = rope.apply(&qkv[1], heads)?;
            let ctx = match (&band, layer.kind) {
                (Some(band), LayerKind::Local) => band.attend(&q, &k, &qkv[2], heads, attn_drop)?,
                _ => batch.attend(Qkv::Split(&q, &k, &qkv[2]), heads, attn_drop)?,
            };
            let attended = dropout(&layer.attn_out.forward(&ctx)?, rates.map(|r| r.attention))?;
            x = x.f_add(&attended)?;
            let halves = layer
                .wi
                .forward(&layer.mlp_norm.forward(&x)?)?
                .f_chunk(2, -1)?;
            let gated = activation(&self.cfg.hidden_activation, &halves[0])?.f_mul(&halves[1])?;
            let gated = dropout(&gated, rates.map(|r| r.mlp))?;
            x = x.f_add(&layer.mlp_out.forward(&gated)?)?;
        }
        let x = self.final_norm.forward(&x)?;
        let t = activation(
            &self.cfg.classifier_activation,
            &self.head_dense.forward(&x)?,
        )?;
        self.head_norm.forward(&t)
    }

    /// Nothing to fuse: the checkpoint stores Q, K and V as one `Wqkv` projection.
    pub fn fuse_qkv(&mut self) -> Result<(), tch::TchError> {
        Ok(())
    }

    /// Turns training dropout on (the config's rates) or off.
    pub fn set_training(&mut self, on: bool) {
        self.rates = on.then_some(Rates {
            embedding: self.cfg.embedding_dropout,
            attention: self.cfg.attention_dropout,
            mlp: self.cfg.mlp_dropout,
        });
    }

    /// Moves and casts every parameter, keeping a tied decoder tied; the rotary frequencies
    /// stay fp32, as upstream computes them.
    pub fn to(&mut self, device: Device, kind: Kind) {
        for t in self.parameters_mut() {
            *t = t.to_device(device).to_kind(kind);
        }
        for f in &mut self.inv_freq {
            *f = f.to_device(device);
        }
        self.decoder = if self.tied {
            self.tok_embeddings.shallow_clone()
        } else {
            self.decoder.to_device(device).to_kind(kind)
        };
    }

    /// The vocabulary projection: weight `[vocab, hidden]` and bias `[vocab]`.
    pub fn decoder(&self) -> (&Tensor, &Tensor) {
        (&self.decoder, &self.decoder_bias)
    }
}

impl Parameters for ModernBert {
    fn parameters_mut(&mut self) -> Vec<&mut Tensor> {
        let mut out = vec![&mut self.tok_embeddings];
        out.extend(self.emb_norm.tensors_mut());
        for l in &mut self.layers {
            if let Some(n) = &mut l.attn_norm {
                out.extend(n.tensors_mut());
            }
            out.extend(l.wqkv.tensors_mut());
            out.extend(l.attn_out.tensors_mut());
            out.extend(l.mlp_norm.tensors_mut());
            out.extend(l.wi.tensors_mut());
            out.extend(l.mlp_out.tensors_mut());
        }
        out.extend(self.final_norm.tensors_mut());
        out.extend(self.head_dense.tensors_mut());
        out.extend(self.head_norm.tensors_mut());
        out.push(&mut self.decoder_bias);
        out
    }
}

/// `1 / theta^(2i / head_dim)` in fp32, computed as upstream's `compute_default_rope_parameters`.
fn inverse_frequencies(theta: f64, head_dim: i64) -> Result<Tensor, tch::TchError> {
    let exponents = Tensor::f_arange_start_step(0, head_dim, 2, (Kind::Float, Device::Cpu))?
        .f_div_scalar(head_dim)?;
    Tensor::f_pow_scalar(theta, &exponents)?.f_reciprocal()
}

/// cos/sin of each token's position (its place in its own sequence), computed in fp32 and
/// cast to the model's dtype, as upstream's `ModernBertRotaryEmbedding.forward`.
fn rotary(inv_freq: &Tensor, positions: &Tensor, kind: Kind) -> Result<Rotary, tch::TchError> {
    let freqs = positions
        .f_to_kind(Kind::Float)?
        .f_unsqueeze(1)?
        .f_mul(&inv_freq.f_unsqueeze(0)?)?;
    let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?.f_unsqueeze(1)?;
    Ok(Rotary {
        cos: emb.f_cos()?.f_to_kind(kind)?,
        sin: emb.f_sin()?.f_to_kind(kind)?,
    })
}

impl Rotary {
    /// Rotates `x` `[total, heads·head_dim]` in fp32 (upstream's `apply_rotary_pos_emb`) and
    /// returns it in its own dtype.
    fn apply(&self, x: &Tensor, heads: i64) -> Result<Tensor, tch::TchError> {
        let (total, hidden) = x.size2()?;
        let d = hidden / heads;
        let xf = x.f_reshape([total, heads, d])?.f_to_kind(Kind::Float)?;
        let half = d / 2;
        let rotated = Tensor::f_cat(
            &[
                &xf.f_narrow(-1, half, half)?.f_neg()?,
                &xf.f_narrow(-1, 0, half)?,
            ],
            -1,
        )?;
        xf.f_mul(&self.cos)?
            .f_add(&rotated.f_mul(&self.sin)?)?
            .f_to_kind(x.kind())?
            .f_reshape([total, hidden])
    }
}
