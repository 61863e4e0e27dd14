//! Self-attention kernels: libtorch's fused op or explicit matmuls on a padded grid, and the
//! variable-length kernels over a packed stream (`csrc/varlen_attention.cpp`).

use std::ffi::c_char;
use std::sync::atomic::{AtomicBool, Ordering};

use tch::{Kind, Tensor};

/// How self-attention is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKernel {
    /// Variable-length kernels over the packed stream (CUDA; see [`super::packed`]).
    Varlen,
    /// libtorch's fused `scaled_dot_product_attention` on a padded grid.
    Fused,
    /// Two batched matmuls around a masked fp32 softmax, on a padded grid.
    Matmul,
}

impl AttentionKernel {
    /// The kernel for tensors on `device`: `SPARQ_ATTENTION=varlen|fused|matmul` if set, else
    /// fused on CPU and the variable-length kernels on CUDA (with the explicit matmul form as
    /// the fallback where they fail). The fused op on a padded grid picks cuDNN's attention on
    /// Hopper, which plans a graph for every new (batch, length) shape: ~20 ms per batch
    /// (measured on an H200, 2026-11-27: the 2-layer tiny model spent 21 ms per batch of 64 in
    /// its encoder).
    pub fn for_device(device: tch::Device) -> Self {
        static CHOICE: std::sync::OnceLock<Option<AttentionKernel>> = std::sync::OnceLock::new();
        let forced = *CHOICE.get_or_init(|| {
            match std::env::var("SPARQ_ATTENTION")
                .ok()?
                .to_ascii_lowercase()
                .as_str()
            {
                "varlen" | "flash" => Some(AttentionKernel::Varlen),
                "fused" | "sdpa" => Some(AttentionKernel::Fused),
                "matmul" | "explicit" => Some(AttentionKernel::Matmul),
                _ => None,
            }
        });
        match (forced, device.is_cuda()) {
            // The variable-length kernels exist only on CUDA.
            (Some(AttentionKernel::Varlen), false) | (None, false) => AttentionKernel::Fused,
            (Some(k), _) => k,
            (None, true) if varlen_usable() => AttentionKernel::Varlen,
            (None, true) => AttentionKernel::Matmul,
        }
    }
}

/// Multi-head self-attention; `attend` is the boolean `[batch, 1, 1, seq]` key mask and
/// `attn_dropout` the dropout rate on attention probabilities (0 outside training).
pub fn self_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: i64,
    attend: &Tensor,
    attn_dropout: f64,
) -> Result<Tensor, tch::TchError> {
    let (b, l, h) = q.size3()?;
    let split = |t: &Tensor| -> Result<Tensor, tch::TchError> {
        t.f_view([b, l, heads, h / heads])?.f_transpose(1, 2)
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let ctx = match AttentionKernel::for_device(q.device()) {
        AttentionKernel::Fused => Tensor::f_scaled_dot_product_attention(
            &q,
            &k,
            &v,
            Some(attend),
            attn_dropout,
            false,
            None,
            false,
        )?,
        // The grid fallback of the variable-length path on CUDA: explicit, no cuDNN planning.
        AttentionKernel::Matmul | AttentionKernel::Varlen => {
            let scale = 1.0 / ((h / heads) as f64).sqrt();
            let scores = q
                .f_matmul(&k.f_transpose(-2, -1)?)?
                .f_mul_scalar(scale)?
                .f_masked_fill(&attend.f_logical_not()?, f64::NEG_INFINITY)?;
            let probs = scores.f_softmax(-1, Kind::Float)?.f_to_kind(v.kind())?;
            if attn_dropout > 0.0 {
                probs.f_dropout(attn_dropout, true)?
            } else {
                probs
            }
            .f_matmul(&v)?
        }
    };
    ctx.f_transpose(1, 2)?.f_reshape([b, l, h])
}

/// Set once a variable-length kernel failed here (an old GPU, a libtorch without them): the
/// grid path is used from then on.
static VARLEN_BROKEN: AtomicBool = AtomicBool::new(false);

/// Whether the variable-length kernels are worth trying.
pub fn varlen_usable() -> bool {
    !VARLEN_BROKEN.load(Ordering::Relaxed)
}

extern "C" {
    fn sparq_varlen_attention(
        q: *const torch_sys::C_tensor,
        k: *const torch_sys::C_tensor,
        v: *const torch_sys::C_tensor,
        cu_seqlens: *const torch_sys::C_tensor,
        max_len: i64,
        scale: f64,
        dropout: f64,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut torch_sys::C_tensor;
}

/// ATen's variable-length attention (see `csrc/varlen_attention.cpp`): q, k, v
/// `[tokens, heads, head_dim]`, segments by `cu_seqlens`; `[tokens, heads, head_dim]`.
pub fn varlen_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &Tensor,
    max_len: i64,
    scale: f64,
    attn_dropout: f64,
) -> Result<Tensor, tch::TchError> {
    let mut err = vec![0 as c_char; 512];
    // SAFETY: every pointer is a live tensor owned by the caller for the duration of the
    // call; the shim returns a new heap tensor (owned by the returned `Tensor`) or null with a
    // NUL-terminated message in `err`, and catches every C++ exception.
    let out = unsafe {
        sparq_varlen_attention(
            q.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            cu_seqlens.as_ptr(),
            max_len,
            scale,
            attn_dropout,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if out.is_null() {
        VARLEN_BROKEN.store(true, Ordering::Relaxed);
        // SAFETY: the shim wrote a NUL-terminated string into the buffer.
        let message = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }
            .to_string_lossy()
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        return Err(tch::TchError::Torch(format!(
            "variable-length attention: {message}"
        )));
    }
    // SAFETY: a non-null result is a tensor the shim allocated for us to own.
    Ok(unsafe { Tensor::from_ptr(out) })
}
