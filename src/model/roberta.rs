//! RoBERTa and XLM-RoBERTa: `RobertaForMaskedLM` / `XLMRobertaForMaskedLM` (SPLADE backbones)
//! and the bare `XLMRobertaModel` under BGE-M3's `sparse_linear` token-weight head.
//!
//! Liu et al., "RoBERTa" (arXiv:1907.11692); Conneau et al., "XLM-R" (arXiv:1911.02116); Chen et
//! al., "BGE M3-Embedding" (arXiv:2402.03216). Upstream: Hugging Face
//! `transformers/models/roberta/modeling_roberta.py` (XLM-R's `modeling_xlm_roberta.py` is the
//! same code) and FlagEmbedding's `finetune/embedder/encoder_only/m3/modeling.py`. The blocks
//! are BERT's; what differs is the embeddings (position ids start at `pad_token_id + 1`) and
//! the `lm_head`. Tensor keys equal the HF state dict (`roberta.*`, `lm_head.*`; a bare
//! `XLMRobertaModel` has no `roberta.` prefix).

use tch::{Kind, Tensor};

use super::bge_m3::read_sparse_linear;
use super::config::{Activation, RobertaConfig};
use super::layers::{
    activation, dropout, lookup, Dropout, LayerNorm, Linear, Parameters, TransformerBlock,
};
use super::packed::PackedBatch;
use super::weights::WeightMap;
use super::ModelError;

struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
}

/// What turns the encoder's hidden states into outputs.
enum Head {
    /// `lm_head`: dense → gelu → layer_norm, then the vocabulary projection.
    MaskedLm {
        dense: Linear,
        norm: LayerNorm,
        /// `[vocab, hidden]`; the word embeddings when tied (not saved).
        decoder: Tensor,
        /// `[vocab]`.
        bias: Tensor,
        tied: bool,
    },
    /// BGE-M3's `sparse_linear` `[1, hidden]`: one weight per token, read from the last
    /// hidden state directly.
    TokenWeight(Linear),
}

/// A RoBERTa-family encoder with its head.
pub struct Roberta {
    cfg: RobertaConfig,
    embeddings: Embeddings,
    layers: Vec<TransformerBlock>,
    head: Head,
    dropout: Option<Dropout>,
}

impl Roberta {
    /// Loads `RobertaForMaskedLM` / `XLMRobertaForMaskedLM` (`roberta.*`, `lm_head.*`).
    pub fn load_masked_lm(w: &mut WeightMap, cfg: &RobertaConfig) -> Result<Self, ModelError> {
        let (h, v, eps) = (
            cfg.bert.hidden_size,
            cfg.bert.vocab_size,
            cfg.bert.layer_norm_eps,
        );
        let (embeddings, layers) = load_encoder(w, cfg, "roberta.")?;
        let dense = Linear::load(w, "lm_head.dense", h, h)?;
        let norm = LayerNorm::load(w, "lm_head.layer_norm", h, eps)?;
        // Tied decoders are saved without their weight (`_tied_weights_keys` upstream).
        let decoder = match w.take("lm_head.decoder.weight") {
            Some(t) if t.size() == [v, h] => {
                w.record("lm_head.decoder.weight", &t);
                Some(t)
            }
            Some(t) => {
                return Err(ModelError::WeightShape {
                    path: w.source().to_path_buf(),
                    key: "lm_head.decoder.weight".into(),
                    expected: vec![v, h],
                    found: t.size(),
                })
            }
            None => None,
        };
        let tied = decoder.is_none();
        let decoder = decoder.unwrap_or_else(|| embeddings.word.shallow_clone());
        // `lm_head.bias` and `lm_head.decoder.bias` are one parameter; either may be saved.
        let bias_key = if w.contains("lm_head.bias") {
            "lm_head.bias"
        } else {
            "lm_head.decoder.bias"
        };
        let bias = w.take_shaped(bias_key, &[v])?;
        let _ = w.take("lm_head.decoder.bias");
        Ok(Self {
            cfg: cfg.clone(),
            embeddings,
            layers,
            head: Head::MaskedLm {
                dense,
                norm,
                decoder,
                bias,
                tied,
            },
            dropout: None,
        })
    }

    /// Loads BGE-M3: a bare `XLMRobertaModel` (keys with or without `roberta.`) and the
    /// `sparse_linear` file beside its weights (see [`super::bge_m3::read_sparse_linear`]).
    pub fn load_token_weight(w: &mut WeightMap, cfg: &RobertaConfig) -> Result<Self, ModelError> {
        let prefix = if w.contains("roberta.embeddings.word_embeddings.weight") {
            "roberta."
        } else {
            ""
        };
        let (embeddings, layers) = load_encoder(w, cfg, prefix)?;
        let dir = w.source().parent().unwrap_or(std::path::Path::new("."));
        let (weight, bias) = read_sparse_linear(dir, cfg.bert.hidden_size)?;
        w.record("sparse_linear.weight", &weight);
        w.record("sparse_linear.bias", &bias);
        let head = Linear { weight, bias };
        Ok(Self {
            cfg: cfg.clone(),
            embeddings,
            layers,
            head: Head::TokenWeight(head),
            dropout: None,
        })
    }

    /// Runs the encoder over the packed stream of `batch`, then the MLM transform (masked-LM
    /// head) or nothing (token-weight head): `[tokens, hidden]`, before [`Roberta::decoder`].
    pub fn transformed(&self, batch: &PackedBatch) -> Result<Tensor, tch::TchError> {
        let e = &self.embeddings;
        // Positions count from pad_token_id + 1 (fairseq's make_positions); every token has
        // type 0.
        let positions = batch.positions.f_add_scalar(self.cfg.pad_token_id + 1)?;
        let x = lookup(&e.word, &batch.ids)?
            .f_add(&e.token_type.f_narrow(0, 0, 1)?)?
            .f_add(&lookup(&e.position, &positions)?)?;
        let mut x = dropout(&e.norm.forward(&x)?, self.dropout.map(|d| d.hidden))?;
        let heads = self.cfg.bert.num_attention_heads;
        for layer in &self.layers {
            x = layer.forward(&x, heads, batch, &self.cfg.bert.hidden_act, self.dropout)?;
        }
        match &self.head {
            // RobertaLMHead applies exact gelu whatever `hidden_act` says.
            Head::MaskedLm { dense, norm, .. } => {
                norm.forward(&activation(&Activation::Gelu, &dense.forward(&x)?)?)
            }
            Head::TokenWeight(_) => Ok(x),
        }
    }

    /// The output projection: the vocabulary decoder `[vocab, hidden]` and bias `[vocab]`, or
    /// BGE-M3's `sparse_linear` `[1, hidden]` and `[1]`.
    pub fn decoder(&self) -> (&Tensor, &Tensor) {
        match &self.head {
            Head::MaskedLm { decoder, bias, .. } => (decoder, bias),
            Head::TokenWeight(l) => (&l.weight, &l.bias),
        }
    }

    /// Fuses each layer's Q/K/V projections (inference only).
    pub fn fuse_qkv(&mut self) -> Result<(), tch::TchError> {
        self.layers
            .iter_mut()
            .try_for_each(TransformerBlock::fuse_qkv)
    }

    /// Turns training dropout on (the config's rates) or off.
    pub fn set_training(&mut self, on: bool) {
        self.dropout = on.then_some(Dropout {
            hidden: self.cfg.bert.hidden_dropout_prob,
            attention: self.cfg.bert.attention_probs_dropout_prob,
            after_attention: true,
        });
    }

    /// Moves and casts every parameter, keeping a tied decoder tied.
    pub fn to(&mut self, device: tch::Device, kind: Kind) {
        for t in self.parameters_mut() {
            *t = t.to_device(device).to_kind(kind);
        }
        let word = self.embeddings.word.shallow_clone();
        if let Head::MaskedLm { decoder, tied, .. } = &mut self.head {
            *decoder = if *tied {
                word
            } else {
                decoder.to_device(device).to_kind(kind)
            };
        }
    }
}

/// Embeddings and blocks under `{prefix}embeddings` / `{prefix}encoder.layer.N`.
fn load_encoder(
    w: &mut WeightMap,
    cfg: &RobertaConfig,
    prefix: &str,
) -> Result<(Embeddings, Vec<TransformerBlock>), ModelError> {
    let c = &cfg.bert;
    let (h, i, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
    let e = format!("{prefix}embeddings");
    let embeddings = Embeddings {
        word: w.take_shaped(&format!("{e}.word_embeddings.weight"), &[c.vocab_size, h])?,
        position: w.take_shaped(
            &format!("{e}.position_embeddings.weight"),
            &[c.max_position_embeddings, h],
        )?,
        token_type: w.take_shaped(
            &format!("{e}.token_type_embeddings.weight"),
            &[c.type_vocab_size, h],
        )?,
        norm: LayerNorm::load(w, &format!("{e}.LayerNorm"), h, eps)?,
    };
    let layers = (0..c.num_hidden_layers)
        .map(|n| {
            TransformerBlock::load(
                w,
                &format!("{prefix}encoder.layer.{n}"),
                &super::bert::KEYS,
                (h, i, eps),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((embeddings, layers))
}

impl Parameters for Roberta {
    fn parameters_mut(&mut self) -> Vec<&mut Tensor> {
        let e = &mut self.embeddings;
        let mut out = vec![&mut e.word, &mut e.position, &mut e.token_type];
        out.extend(e.norm.parameters_mut());
        for l in &mut self.layers {
            out.extend(l.parameters_mut());
        }
        match &mut self.head {
            Head::MaskedLm {
                dense, norm, bias, ..
            } => {
                out.extend(dense.parameters_mut());
                out.extend(norm.parameters_mut());
                out.push(bias);
            }
            Head::TokenWeight(l) => out.extend(l.parameters_mut()),
        }
        out
    }
}
