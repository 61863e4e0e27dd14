//! The masked-LM backbones sparq runs, behind one type.

use tch::{Device, Kind, Tensor};

use super::bert::Bert;
use super::config::ArchConfig;
use super::distilbert::DistilBert;
use super::modernbert::ModernBert;
use super::packed::PackedBatch;
use super::roberta::Roberta;
use super::weights::WeightMap;
use super::ModelError;

/// A loaded masked-language model.
pub enum MaskedLm {
    /// `BertForMaskedLM`.
    Bert(Bert),
    /// `DistilBertForMaskedLM`.
    DistilBert(DistilBert),
    /// `RobertaForMaskedLM` / `XLMRobertaForMaskedLM`, or BGE-M3's `XLMRobertaModel` with its
    /// token-weight head (whose `decoder` is `sparse_linear`).
    Roberta(Roberta),
    /// `ModernBertForMaskedLM` (boxed: its config makes it the largest variant by far).
    ModernBert(Box<ModernBert>),
}

impl MaskedLm {
    /// Builds the architecture of `arch` from the checkpoint tensors in `weights`; tensors
    /// left over are ignored (pooler, NSP head), as Hugging Face ignores them.
    pub fn load(weights: &mut WeightMap, arch: &ArchConfig) -> Result<Self, ModelError> {
        Ok(match arch {
            ArchConfig::Bert(c) => MaskedLm::Bert(Bert::load(weights, c)?),
            ArchConfig::DistilBert(c) => MaskedLm::DistilBert(DistilBert::load(weights, c)?),
            ArchConfig::Roberta(c) => MaskedLm::Roberta(Roberta::load_masked_lm(weights, c)?),
            ArchConfig::BgeM3(c) => MaskedLm::Roberta(Roberta::load_token_weight(weights, c)?),
            ArchConfig::ModernBert(c) => {
                MaskedLm::ModernBert(Box::new(ModernBert::load(weights, c)?))
            }
        })
    }

    /// Encoder + MLM transform over a packed batch: `[tokens, hidden]`.
    pub fn transformed(&self, batch: &PackedBatch) -> Result<Tensor, tch::TchError> {
        match self {
            MaskedLm::Bert(m) => m.transformed(batch),
            MaskedLm::DistilBert(m) => m.transformed(batch),
            MaskedLm::Roberta(m) => m.transformed(batch),
            MaskedLm::ModernBert(m) => m.transformed(batch),
        }
    }

    /// Fuses each layer's Q/K/V projections into one GEMM (inference only: after this the
    /// model is not trained).
    pub fn fuse_qkv(&mut self) -> Result<(), tch::TchError> {
        match self {
            MaskedLm::Bert(m) => m.fuse_qkv(),
            MaskedLm::DistilBert(m) => m.fuse_qkv(),
            MaskedLm::Roberta(m) => m.fuse_qkv(),
            MaskedLm::ModernBert(m) => m.fuse_qkv(),
        }
    }

    /// Vocabulary projection weight and bias.
    pub fn decoder(&self) -> (&Tensor, &Tensor) {
        match self {
            MaskedLm::Bert(m) => m.decoder(),
            MaskedLm::DistilBert(m) => m.decoder(),
            MaskedLm::Roberta(m) => m.decoder(),
            MaskedLm::ModernBert(m) => m.decoder(),
        }
    }

    /// Turns training dropout on or off.
    pub fn set_training(&mut self, on: bool) {
        match self {
            MaskedLm::Bert(m) => m.set_training(on),
            MaskedLm::DistilBert(m) => m.set_training(on),
            MaskedLm::Roberta(m) => m.set_training(on),
            MaskedLm::ModernBert(m) => m.set_training(on),
        }
    }

    /// Moves and casts all parameters.
    pub fn to(&mut self, device: Device, kind: Kind) {
        match self {
            MaskedLm::Bert(m) => m.to(device, kind),
            MaskedLm::DistilBert(m) => m.to(device, kind),
            MaskedLm::Roberta(m) => m.to(device, kind),
            MaskedLm::ModernBert(m) => m.to(device, kind),
        }
    }
}
