//! DistilBERT with its masked-language-model head (`DistilBertForMaskedLM`).
//!
//! Sanh et al., "DistilBERT" (arXiv:1910.01108); upstream: Hugging Face
//! `transformers/models/distilbert/modeling_distilbert.py`. Tensor keys equal the HF state dict.

use tch::{Kind, Tensor};

use super::config::DistilBertConfig;
use super::layers::{
    activation, dropout, lookup, BlockKeys, Dropout, LayerNorm, Linear, Parameters,
    TransformerBlock,
};
use super::packed::PackedBatch;
use super::weights::WeightMap;
use super::ModelError;

/// DistilBERT's LayerNorm epsilon is fixed in the upstream code, not configured.
const EPS: f64 = 1e-12;

/// Key names of a DistilBERT block under `distilbert.transformer.layer.N`.
const KEYS: BlockKeys = BlockKeys {
    qkv: ["attention.q_lin", "attention.k_lin", "attention.v_lin"],
    attn_out: "attention.out_lin",
    attn_norm: "sa_layer_norm",
    ffn: ["ffn.lin1", "ffn.lin2"],
    out_norm: "output_layer_norm",
};

/// `DistilBertForMaskedLM`: encoder plus `vocab_transform`/`vocab_layer_norm`/`vocab_projector`.
pub struct DistilBert {
    cfg: DistilBertConfig,
    word: Tensor,
    position: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<TransformerBlock>,
    transform: Linear,
    transform_norm: LayerNorm,
    decoder: Tensor,
    decoder_bias: Tensor,
    tied: bool,
    /// Dropout, when training.
    dropout: Option<Dropout>,
}

impl DistilBert {
    /// Loads every tensor from `w` (keys `distilbert.*` and `vocab_*`).
    pub fn load(w: &mut WeightMap, cfg: &DistilBertConfig) -> Result<Self, ModelError> {
        let (d, v, f) = (cfg.dim, cfg.vocab_size, cfg.hidden_dim);
        let e = "distilbert.embeddings";
        let word = w.take_shaped(&format!("{e}.word_embeddings.weight"), &[v, d])?;
        let position = w.take_shaped(
            &format!("{e}.position_embeddings.weight"),
            &[cfg.max_position_embeddings, d],
        )?;
        let emb_norm = LayerNorm::load(w, &format!("{e}.LayerNorm"), d, EPS)?;
        let layers = (0..cfg.n_layers)
            .map(|n| {
                TransformerBlock::load(
                    w,
                    &format!("distilbert.transformer.layer.{n}"),
                    &KEYS,
                    (d, f, EPS),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let transform = Linear::load(w, "vocab_transform", d, d)?;
        let transform_norm = LayerNorm::load(w, "vocab_layer_norm", d, EPS)?;
        let projector = w.take("vocab_projector.weight");
        let tied = projector.is_none();
        let decoder = match projector {
            Some(t) if t.size() == [v, d] => {
                w.record("vocab_projector.weight", &t);
                t
            }
            Some(t) => {
                return Err(ModelError::WeightShape {
                    path: w.source().to_path_buf(),
                    key: "vocab_projector.weight".into(),
                    expected: vec![v, d],
                    found: t.size(),
                })
            }
            None => word.shallow_clone(),
        };
        let decoder_bias = w.take_shaped("vocab_projector.bias", &[v])?;
        Ok(Self {
            cfg: cfg.clone(),
            word,
            position,
            emb_norm,
            layers,
            transform,
            transform_norm,
            decoder,
            decoder_bias,
            tied,
            dropout: None,
        })
    }

    /// Runs the encoder and the MLM transform over the packed stream of `batch`:
    /// `[tokens, dim]`.
    pub fn transformed(&self, batch: &PackedBatch) -> Result<Tensor, tch::TchError> {
        let x =
            lookup(&self.word, &batch.ids)?.f_add(&lookup(&self.position, &batch.positions)?)?;
        let mut x = dropout(&self.emb_norm.forward(&x)?, self.dropout.map(|d| d.hidden))?;
        for layer in &self.layers {
            x = layer.forward(
                &x,
                self.cfg.n_heads,
                batch,
                &self.cfg.activation,
                self.dropout,
            )?;
        }
        let t = activation(&self.cfg.activation, &self.transform.forward(&x)?)?;
        self.transform_norm.forward(&t)
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
            hidden: self.cfg.dropout,
            attention: self.cfg.attention_dropout,
            after_attention: false,
        });
    }

    /// Moves and casts every parameter, keeping a tied decoder tied.
    pub fn to(&mut self, device: tch::Device, kind: Kind) {
        for t in self.parameters_mut() {
            *t = t.to_device(device).to_kind(kind);
        }
        self.decoder = if self.tied {
            self.word.shallow_clone()
        } else {
            self.decoder.to_device(device).to_kind(kind)
        };
    }

    /// The vocabulary projection: weight `[vocab, dim]` and bias `[vocab]`.
    pub fn decoder(&self) -> (&Tensor, &Tensor) {
        (&self.decoder, &self.decoder_bias)
    }
}

impl Parameters for DistilBert {
    fn parameters_mut(&mut self) -> Vec<&mut Tensor> {
        let mut out = vec![&mut self.word, &mut self.position];
        out.extend(self.emb_norm.parameters_mut());
        for l in &mut self.layers {
            out.extend(l.parameters_mut());
        }
        out.extend(self.transform.parameters_mut());
        out.extend(self.transform_norm.parameters_mut());
        out.push(&mut self.decoder_bias);
        out
    }
}
