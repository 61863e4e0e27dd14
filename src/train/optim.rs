//! AdamW, the linear warm-up schedule and gradient clipping, computed as PyTorch's
//! `torch.optim.AdamW` (single-tensor path), transformers' `get_linear_schedule_with_warmup`
//! and `torch.nn.utils.clip_grad_norm_` compute them, so a run matches the reference trainer
//! step for step. Parameters may have their own peak learning rate (sentence-transformers'
//! `learning_rate_mapping`); the schedule scales every one alike, as `LambdaLR` scales each
//! parameter group's initial rate.

use tch::{Kind, Tensor};

/// One parameter with its AdamW state.
pub struct Param {
    /// Hugging Face state-dict name.
    pub name: String,
    /// The tensor (shared with the model).
    pub tensor: Tensor,
    /// First moment.
    pub exp_avg: Tensor,
    /// Second moment.
    pub exp_avg_sq: Tensor,
    /// Weight decay applies (not to biases and LayerNorm weights, as transformers' Trainer).
    pub decay: bool,
    /// Peak learning rate from a `learning_rate_mapping` pattern (`None`: the run's).
    pub peak_lr: Option<f64>,
}

impl Param {
    /// The parameter `name` with zero AdamW state; decayed unless [`decays`] exempts it.
    pub fn new(name: &str, tensor: &Tensor) -> Self {
        Self {
            name: name.to_string(),
            tensor: tensor.shallow_clone(),
            exp_avg: zeros_like_f32(tensor),
            exp_avg_sq: zeros_like_f32(tensor),
            decay: decays(name),
            peak_lr: None,
        }
    }
}

/// Gives each parameter the learning rate of the last pattern of `mapping` (regex, searched
/// anywhere) that matches one of `names(param)`, as sentence-transformers' trainer moves the
/// parameters each pattern matches into a group of their own, pattern after pattern. A pattern
/// that matches nothing is an error, as upstream.
pub fn map_learning_rates(
    params: &mut [Param],
    mapping: &[(String, f64)],
    names: impl Fn(&str) -> Vec<String>,
) -> Result<(), String> {
    for (pattern, lr) in mapping {
        let re = regex::Regex::new(pattern)
            .map_err(|e| format!("--learning-rate-mapping pattern `{pattern}`: {e}"))?;
        let mut matched = false;
        for p in params.iter_mut() {
            if names(&p.name).iter().any(|n| re.is_match(n)) {
                p.peak_lr = Some(*lr);
                matched = true;
            }
        }
        if !matched {
            let examples: Vec<String> = params
                .iter()
                .filter(|p| !p.name.contains(".layer."))
                .take(4)
                .flat_map(|p| names(&p.name))
                .collect();
            return Err(format!(
                "--learning-rate-mapping pattern `{pattern}` matches no trainable parameter; \
                 parameter names look like {}",
                examples.join(", ")
            ));
        }
    }
    Ok(())
}

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct AdamW {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Whether transformers' Trainer decays `name`: it exempts names matching `bias`,
/// `layernorm`, `rmsnorm`, a `norm` path segment or a `_norm` suffix (lowercased).
pub fn decays(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let segments: Vec<&str> = lower.split('.').collect();
    !(lower.contains("bias")
        || lower.contains("layernorm")
        || lower.contains("rmsnorm")
        || segments.contains(&"norm")
        || segments.iter().any(|s| s.ends_with("_norm")))
}

impl AdamW {
    /// One update of every parameter at learning rate `lr`; `step` counts updates from 1.
    pub fn step(&self, params: &mut [Param], lr: f64, step: u64) -> Result<(), tch::TchError> {
        self.step_scheduled(params, |_| lr, 0.0, step)
    }

    /// One update of every parameter at `lr_at(peak)`, its peak being its own
    /// ([`Param::peak_lr`]) or `base_peak`; `step` counts updates from 1.
    pub fn step_scheduled(
        &self,
        params: &mut [Param],
        lr_at: impl Fn(f64) -> f64,
        base_peak: f64,
        step: u64,
    ) -> Result<(), tch::TchError> {
        tch::no_grad(|| -> Result<(), tch::TchError> {
            // As Python's `beta ** step` (C pow).
            let bias1 = 1.0 - self.beta1.powf(step as f64);
            let bias2_sqrt = (1.0 - self.beta2.powf(step as f64)).sqrt();
            for p in params.iter_mut() {
                let grad = p.tensor.grad();
                if !grad.defined() {
                    continue;
                }
                let lr = lr_at(p.peak_lr.unwrap_or(base_peak));
                if p.decay && self.weight_decay != 0.0 {
                    let _ = p.tensor.f_mul_scalar_(1.0 - lr * self.weight_decay)?;
                }
                let _ = p.exp_avg.f_lerp_(&grad, 1.0 - self.beta1)?;
                let _ = p
                    .exp_avg_sq
                    .f_mul_scalar_(self.beta2)?
                    .f_addcmul_(&grad, &grad.f_mul_scalar(1.0 - self.beta2)?)?;
                let denom = p
                    .exp_avg_sq
                    .f_sqrt()?
                    .f_div_scalar(bias2_sqrt)?
                    .f_add_scalar(self.eps)?;
                let _ = p
                    .tensor
                    .f_addcdiv_(&p.exp_avg.f_mul_scalar(-(lr / bias1))?, &denom)?;
            }
            Ok(())
        })
    }
}

/// Warm-up steps for `ratio` of `total` (transformers: ⌈total · ratio⌉).
pub fn warmup_steps(total: u64, ratio: f64) -> u64 {
    (total as f64 * ratio).ceil() as u64
}

/// The learning rate of update `step` (0-based): linear from 0 over `warmup` steps, then
/// linear down to 0 at `total`.
pub fn linear_lr(peak: f64, step: u64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        peak * step as f64 / warmup.max(1) as f64
    } else {
        peak * ((total.saturating_sub(step)) as f64 / total.saturating_sub(warmup).max(1) as f64)
            .max(0.0)
    }
}

/// Scales all gradients so their total 2-norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(params: &[Param], max_norm: f64) -> Result<f64, tch::TchError> {
    tch::no_grad(|| -> Result<f64, tch::TchError> {
        let grads: Vec<Tensor> = params
            .iter()
            .map(|p| p.tensor.grad())
            .filter(|g| g.defined())
            .collect();
        if grads.is_empty() {
            return Ok(0.0);
        }
        let norms = grads
            .iter()
            .map(|g| g.f_norm())
            .collect::<Result<Vec<_>, _>>()?;
        let total = Tensor::f_stack(&norms, 0)?.f_norm()?;
        let coef = Tensor::f_full(&[] as &[i64], max_norm, (Kind::Float, total.device()))?
            .f_div(&total.f_add_scalar(1e-6)?)?
            .f_clamp_max(1.0)?;
        for g in &grads {
            let _ = g.shallow_clone().f_mul_(&coef)?;
        }
        total.f_double_value(&[])
    })
}

/// Zeroes every gradient.
pub fn zero_grad(params: &mut [Param]) {
    for p in params {
        let mut g = p.tensor.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

/// A zero tensor shaped like `t` in fp32 (AdamW state).
pub fn zeros_like_f32(t: &Tensor) -> Tensor {
    t.zeros_like().to_kind(Kind::Float)
}
