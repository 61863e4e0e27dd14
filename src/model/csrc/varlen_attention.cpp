// Variable-length self-attention over a packed token stream, through ATen's dispatcher:
// FlashAttention-2 for bf16/fp16 and the memory-efficient kernel for fp32, both taking the
// cumulative sequence lengths of the packed batch (text-embeddings-inference's flash_bert
// does the same through candle). tch does not generate these private ops, hence this shim;
// it needs no CUDA headers: the ops dispatch to libtorch_cuda's kernels at run time, and on a
// CPU tensor (no kernel) they throw, which is returned as an error, never a crash.
#include <ATen/ATen.h>
#include <ATen/ops/_efficient_attention_forward.h>
#include <ATen/ops/_flash_attention_forward.h>

#include <cstring>
#include <exception>

namespace {
void copy_error(const char* what, char* err, size_t err_len) {
  if (err_len == 0) return;
  std::strncpy(err, what, err_len - 1);
  err[err_len - 1] = '\0';
}
}  // namespace

extern "C" {

// q, k, v: [tokens, heads, head_dim]; cu_seqlens: int32 [segments + 1] on the same device;
// dropout: on the attention probabilities (training). Returns a new [tokens, heads, head_dim]
// tensor (differentiable: the ops have autograd formulas), or nullptr with the error in `err`.
at::Tensor* sparq_varlen_attention(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                                   const at::Tensor* cu_seqlens, int64_t max_len, double scale,
                                   double dropout, char* err, size_t err_len) {
  try {
    if (q->scalar_type() == at::kFloat) {
      // The memory-efficient kernel takes variable lengths as one batch of [1, tokens, ...].
      auto out = at::_efficient_attention_forward(
          q->unsqueeze(0), k->unsqueeze(0), v->unsqueeze(0), std::nullopt, *cu_seqlens,
          *cu_seqlens, max_len, max_len, dropout, /*custom_mask_type=*/0,
          /*compute_log_sumexp=*/q->requires_grad(), scale);
      return new at::Tensor(std::get<0>(out).squeeze(0));
    }
    auto out = at::_flash_attention_forward(*q, *k, *v, *cu_seqlens, *cu_seqlens, max_len,
                                            max_len, dropout, /*is_causal=*/false,
                                            /*return_debug_mask=*/false, scale);
    return new at::Tensor(std::get<0>(out));
  } catch (const std::exception& e) {
    copy_error(e.what(), err, err_len);
    return nullptr;
  }
}

}  // extern "C"
