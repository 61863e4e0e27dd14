//! BERT with its masked-language-model head (`BertForMaskedLM`), the backbone of SPLADE.
//!
//! Devlin et al., "BERT" (arXiv:1810.04805); upstream: Hugging Face
//! `transformers/models/bert/modeling_bert.py`. Tensor keys equal the HF state dict.

use tch::{Kind, Tensor};

use super::config::BertConfig;
use super::layers::{
    activation, dropout, lookup, BlockKeys, Dropout, LayerNorm, Linear, Parameters,
    TransformerBlock,
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

/// Key names of a BERT block under `bert.encoder.layer.N` (RoBERTa's blocks are the same).
pub(crate) const KEYS: BlockKeys = BlockKeys {
    qkv: [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
    ],
    attn_out: "attention.output.dense",
    attn_norm: "attention.output.LayerNorm",
    ffn: ["intermediate.dense", "output.dense"],
    out_norm: "output.LayerNorm",
};

/// BERT's embeddings and transformer blocks (`BertModel` without its pooler): the backbone
/// under the masked-LM head and under a sequence-classification head (cross-encoders).
pub struct BertEncoder {
    cfg: BertConfig,
    embeddings: Embeddings,
    layers: Vec<TransformerBlock>,
    /// Dropout, when training.
    dropout: Option<Dropout>,
}

impl BertEncoder {
    /// Loads `{prefix}.embeddings.*` and `{prefix}.encoder.layer.N.*` from `w`.
    pub fn load(w: &mut WeightMap, cfg: &BertConfig, prefix: &str) -> Result<Self, ModelError> {
        let (h, v, i) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
        let eps = cfg.layer_norm_eps;
        let e = format!("{prefix}.embeddings");
        let embeddings = Embeddings {
            word: w.take_shaped(&format!("{e}.word_embeddings.weight"), &[v, h])?,
            position: w.take_shaped(
                &format!("{e}.position_embeddings.weight"),
                &[cfg.max_position_embeddings, h],
            )?,
            token_type: w.take_shaped(
                &format!("{e}.token_type_embeddings.weight"),
                &[cfg.type_vocab_size, h],
            )?,
            norm: LayerNorm::load(w, &format!("{e}.LayerNorm"), h, eps)?,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|n| {
                TransformerBlock::load(
                    w,
                    &format!("{prefix}.encoder.layer.{n}"),
                    &KEYS,
                    (h, i, eps),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            embeddings,
            layers,
            dropout: None,
        })
    }

    /// The last hidden state `[tokens, hidden]` of the packed stream of `batch`. `token_types`
    /// holds each token's segment id in the stream's order (`[total]`, int64); `None` gives
    /// every token type 0 (single texts).
    pub fn forward(
        &self,
        batch: &PackedBatch,
        token_types: Option<&Tensor>,
    ) -> Result<Tensor, tch::TchError> {
        let e = &self.embeddings;
        let types = match token_types {
            Some(types) => lookup(&e.token_type, types)?,
            // One row of the type table, broadcast.
            None => e.token_type.f_narrow(0, 0, 1)?,
        };
        let x = lookup(&e.word, &batch.ids)?
            .f_add(&lookup(&e.position, &batch.positions)?)?
            .f_add(&types)?;
        let mut x = dropout(&e.norm.forward(&x)?, self.dropout.map(|d| d.hidden))?;
        let heads = self.cfg.num_attention_heads;
        for layer in &self.layers {
            x = layer.forward(&x, heads, batch, &self.cfg.hidden_act, self.dropout)?;
        }
        Ok(x)
    }

    /// The word embedding matrix `[vocab, hidden]`.
    pub fn word_embeddings(&self) -> &Tensor {
        &self.embeddings.word
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
            hidden: self.cfg.hidden_dropout_prob,
            attention: self.cfg.attention_probs_dropout_prob,
            after_attention: true,
        });
    }
}

impl Parameters for BertEncoder {
    fn parameters_mut(&mut self) -> Vec<&mut Tensor> {
        let e = &mut self.embeddings;
        let mut out = vec![&mut e.word, &mut e.position, &mut e.token_type];
        out.extend(e.norm.parameters_mut());
        for l in &mut self.layers {
            out.extend(l.parameters_mut());
        }
        out
    }
}

/// `BertForMaskedLM`: encoder plus the `cls.predictions` head.
pub struct Bert {
    encoder: BertEncoder,
    transform: Linear,
    transform_norm: LayerNorm,
    /// `[vocab, hidden]`; the word embeddings when the checkpoint ties them.
    decoder: Tensor,
    /// `[vocab]`.
    decoder_bias: Tensor,
    /// The decoder shares the word embeddings' storage (kept shared across casts).
    tied: bool,
}

impl Bert {
    /// Loads every tensor from `w` (keys `bert.*` and `cls.predictions.*`).
    pub fn load(w: &mut WeightMap, cfg: &BertConfig) -> Result<Self, ModelError> {
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let eps = cfg.layer_norm_eps;
        let encoder = BertEncoder::load(w, cfg, "bert")?;
        let c = "cls.predictions";
        let transform = Linear::load(w, &format!("{c}.transform.dense"), h, h)?;
        let transform_norm = LayerNorm::load(w, &format!("{c}.transform.LayerNorm"), h, eps)?;
        // A tied decoder is saved without its weight: it is the word embedding matrix.
        let decoder_weight = w.take(&format!("{c}.decoder.weight"));
        let tied = decoder_weight.is_none();
        let decoder = match decoder_weight {
            Some(t) if t.size() == [v, h] => {
                w.record(&format!("{c}.decoder.weight"), &t);
                t
            }
            Some(t) => {
                return Err(ModelError::WeightShape {
                    path: w.source().to_path_buf(),
                    key: format!("{c}.decoder.weight"),
                    expected: vec![v, h],
                    found: t.size(),
                })
            }
            None => encoder.word_embeddings().shallow_clone(),
        };
        // Older checkpoints store the bias as `cls.predictions.bias`, newer ones (also) as
        // `cls.predictions.decoder.bias`; both are the same parameter.
        let bias_key = if w.contains(&format!("{c}.bias")) {
            format!("{c}.bias")
        } else {
            format!("{c}.decoder.bias")
        };
        let decoder_bias = w.take_shaped(&bias_key, &[v])?;
        let _ = w.take(&format!("{c}.decoder.bias"));
        Ok(Self {
            encoder,
            transform,
            transform_norm,
            decoder,
            decoder_bias,
            tied,
        })
    }

    /// Runs the encoder and the MLM transform over the packed stream of `batch`:
    /// `[tokens, hidden]`, before the vocabulary projection (see [`Bert::decoder`]).
    pub fn transformed(&self, batch: &PackedBatch) -> Result<Tensor, tch::TchError> {
        let x = self.encoder.forward(batch, None)?;
        let t = activation(&self.encoder.cfg.hidden_act, &self.transform.forward(&x)?)?;
        self.transform_norm.forward(&t)
    }

    /// Fuses each layer's Q/K/V projections (inference only).
    pub fn fuse_qkv(&mut self) -> Result<(), tch::TchError> {
        self.encoder.fuse_qkv()
    }

    /// Turns training dropout on (the config's rates) or off.
    pub fn set_training(&mut self, on: bool) {
        self.encoder.set_training(on);
    }

    /// Moves and casts every parameter, keeping a tied decoder tied.
    pub fn to(&mut self, device: tch::Device, kind: Kind) {
        for t in self.parameters_mut() {
            *t = t.to_device(device).to_kind(kind);
        }
        if self.tied {
            self.decoder = self.encoder.word_embeddings().shallow_clone();
        } else {
            self.decoder = self.decoder.to_device(device).to_kind(kind);
        }
    }

    /// The vocabulary projection: weight `[vocab, hidden]` and bias `[vocab]`.
    pub fn decoder(&self) -> (&Tensor, &Tensor) {
        (&self.decoder, &self.decoder_bias)
    }
}

impl Parameters for Bert {
    fn parameters_mut(&mut self) -> Vec<&mut Tensor> {
        let mut out = self.encoder.parameters_mut();
        out.extend(self.transform.parameters_mut());
        out.extend(self.transform_norm.parameters_mut());
        out.push(&mut self.decoder_bias);
        out
    }
}
