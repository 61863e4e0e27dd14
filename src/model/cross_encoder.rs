//! Cross-encoders: a `BertForSequenceClassification` (as sentence-transformers' `CrossEncoder`
//! saves it) reads a query and a passage together and gives one relevance score, equal to
//! `CrossEncoder.predict`.
//!
//! Nogueira & Cho, "Passage Re-ranking with BERT" (arXiv:1901.04085). Upstream:
//! `sentence_transformers/cross_encoder/model.py` (pair tokenization, activation) and
//! `transformers/models/bert/modeling_bert.py` (`BertPooler`: dense + tanh on `[CLS]`; then the
//! `classifier` linear layer). Tensor keys equal the HF state dict (`bert.*`, `classifier.*`).
//!
//! Only one-label models are loaded: `predict` gives one score per pair, the logit through the
//! folder's activation (Sigmoid unless configured otherwise). Models with more labels, RoBERTa /
//! XLM-R cross-encoders and default prompts are refused at load, naming the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use super::attention::{varlen_usable, AttentionKernel};
use super::bert::BertEncoder;
use super::layers::{Linear, Parameters};
use super::packed::{token_bucket, PackedBatch};
use super::tokenizer::{PairTokens, SpladeTokenizer};
use super::weights::WeightMap;
use super::ModelError;

pub use super::cross_encoder_config::{CrossEncoderConfig, ScoreActivation};

/// A loaded cross-encoder, ready to score pairs.
pub struct CrossEncoder {
    root: PathBuf,
    config: CrossEncoderConfig,
    tokenizer: SpladeTokenizer,
    encoder: BertEncoder,
    /// `bert.pooler.dense`, followed by tanh.
    pooler: Linear,
    /// `classifier`: `[1, hidden]`.
    classifier: Linear,
    device: Device,
    /// Memory maps the tensors may point into: they live as long as the model.
    _maps: Vec<Arc<memmap2::Mmap>>,
}

impl CrossEncoder {
    /// Loads the cross-encoder saved in `dir` onto `device` (fp32).
    pub fn load(dir: &Path, device: Device) -> Result<Self, ModelError> {
        let config = CrossEncoderConfig::read(dir)?;
        let tokenizer = SpladeTokenizer::load_for_pairs(
            &config.transformer_dir,
            config.max_length,
            config.do_lower_case,
        )?;
        let vocab = tokenizer.inner().get_vocab_size(true);
        if vocab as i64 > config.bert.vocab_size {
            return Err(ModelError::VocabMismatch {
                path: config.transformer_dir.join("tokenizer.json"),
                tokenizer: vocab,
                model: config.bert.vocab_size,
            });
        }
        // On CPU the checkpoint's fp32 tensors are used as they are: mapped, so every worker
        // process shares one copy.
        let mapped = device == Device::Cpu;
        let mut weights = if mapped {
            WeightMap::load_mapped(&config.transformer_dir)?
        } else {
            WeightMap::load(&config.transformer_dir)?
        };
        let h = config.bert.hidden_size;
        let mut encoder = BertEncoder::load(&mut weights, &config.bert, "bert")?;
        let mut pooler = Linear::load(&mut weights, "bert.pooler.dense", h, h)?;
        let mut classifier = Linear::load(&mut weights, "classifier", h, 1)?;
        weights.check_finite(dir)?;
        if !mapped {
            let params = encoder
                .parameters_mut()
                .into_iter()
                .chain(pooler.parameters_mut())
                .chain(classifier.parameters_mut());
            for t in params {
                *t = t.f_to_device(device)?.f_to_kind(Kind::Float)?;
            }
            encoder.fuse_qkv()?;
        }
        Ok(Self {
            root: dir.to_path_buf(),
            config,
            tokenizer,
            encoder,
            pooler,
            classifier,
            device,
            _maps: weights.maps(),
        })
    }

    /// Scores of `(query, passage)` pairs, in order, with the model's activation applied (as
    /// `CrossEncoder.predict`); `batch_size` pairs run through the model at a time.
    pub fn predict(
        &self,
        pairs: &[(&str, &str)],
        batch_size: usize,
    ) -> Result<Vec<f32>, ModelError> {
        if batch_size == 0 {
            return Err(ModelError::Option(
                "the batch size must be at least 1".into(),
            ));
        }
        let tokens = self.tokenizer.encode_pairs(pairs)?;
        // Longest first, as sentence-transformers batches: similar lengths pad less on CPU.
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(tokens[i].ids.len()));
        let mut scores = vec![0f32; tokens.len()];
        tch::no_grad(|| -> Result<(), ModelError> {
            for chunk in order.chunks(batch_size) {
                let batch: Vec<&PairTokens> = chunk.iter().map(|&i| &tokens[i]).collect();
                let batch_scores = match self.scores(&batch) {
                    // The variable-length kernels failed on this GPU: the grid path from now on.
                    Err(e) if !varlen_usable() && self.device.is_cuda() => {
                        tracing::info!("note: {e}; attention falls back to a padded grid");
                        self.scores(&batch)?
                    }
                    other => other?,
                };
                for (&i, s) in chunk.iter().zip(batch_scores) {
                    scores[i] = s;
                }
            }
            Ok(())
        })?;
        if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            return Err(ModelError::NonFinite {
                path: self.root.clone(),
                detail: format!("the score of pair {i} is {}", scores[i]),
            });
        }
        Ok(scores)
    }

    /// The activation applied to the logits.
    pub fn activation(&self) -> ScoreActivation {
        self.config.activation
    }

    /// Longest tokenized pair (special tokens included); longer pairs are truncated.
    pub fn max_length(&self) -> usize {
        self.config.max_length
    }

    /// The model folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The scores of one batch of tokenized pairs.
    fn scores(&self, batch: &[&PairTokens]) -> Result<Vec<f32>, ModelError> {
        let seqs: Vec<&[u32]> = batch.iter().map(|t| t.ids.as_slice()).collect();
        let real: i64 = seqs.iter().map(|s| s.len() as i64).sum();
        let total = token_bucket(real, self.device.is_cuda(), 1);
        let kernel = AttentionKernel::for_device(self.device);
        let packed = PackedBatch::new(&seqs, total, self.device, kernel, 1)?;
        let mut types: Vec<i64> = batch
            .iter()
            .flat_map(|t| t.type_ids.iter().map(|&id| id as i64))
            .collect();
        types.resize(packed.total as usize, 0);
        let types = Tensor::from_slice(&types).f_to_device(self.device)?;
        let hidden = self.encoder.forward(&packed, Some(&types))?;
        // Each sequence's first token ([CLS]) starts its segment of the stream.
        let starts: Vec<i64> = packed
            .lengths
            .iter()
            .scan(0i64, |end, &n| {
                let start = *end;
                *end += n;
                Some(start)
            })
            .collect();
        let starts = Tensor::from_slice(&starts).f_to_device(self.device)?;
        let cls = hidden.f_index_select(0, &starts)?;
        let pooled = self.pooler.forward(&cls)?.f_tanh()?;
        let logits = self.classifier.forward(&pooled)?.f_squeeze_dim(-1)?;
        let scores = self
            .config
            .activation
            .apply(&logits)?
            .f_to_kind(Kind::Float)?
            .f_to_device(Device::Cpu)?;
        Ok(Vec::<f32>::try_from(&scores)?)
    }
}
