// Reads a state dict written by Python's `torch.save` (the zip format: `data.pkl` plus raw
// storages) through libtorch's own unpickler, `torch::jit::pickle_load`. That unpickler builds
// only tensors and plain containers (it resolves no arbitrary Python globals), so a crafted
// file cannot run code; anything else is returned as an error, never a crash.
#include <ATen/ATen.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {
void copy_error(const char* what, char* err, size_t err_len) {
  if (err_len == 0) return;
  std::strncpy(err, what, err_len - 1);
  err[err_len - 1] = '\0';
}
}  // namespace

extern "C" {

// `data`: the file's bytes. Calls `add(ctx, name, tensor)` for each entry of the top-level
// dict (the callee owns each new tensor). Returns 0, or -1 with a message in `err`.
int sparq_pickle_load(const char* data, size_t len, void* ctx,
                      void (*add)(void*, const char*, at::Tensor*), char* err, size_t err_len) {
  try {
    std::vector<char> bytes(data, data + len);
    c10::IValue value = torch::jit::pickle_load(bytes);
    if (!value.isGenericDict()) {
      copy_error("the file does not hold a dict of tensors (a state dict)", err, err_len);
      return -1;
    }
    for (const auto& item : value.toGenericDict()) {
      if (!item.key().isString() || !item.value().isTensor()) {
        copy_error("an entry of the dict is not a named tensor", err, err_len);
        return -1;
      }
      add(ctx, item.key().toStringRef().c_str(), new at::Tensor(item.value().toTensor()));
    }
    return 0;
  } catch (const std::exception& e) {
    copy_error(e.what(), err, err_len);
    return -1;
  }
}

}  // extern "C"
