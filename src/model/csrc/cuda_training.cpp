// The CUDA settings training needs that tch does not expose, through c10's device-generic
// interfaces (no CUDA headers needed: libtorch_cuda registers the CUDA implementation when it
// is loaded): libtorch's current stream on a device (NCCL enqueues its collectives there, after
// the kernels that produce the gradients, without a host sync), making a device current (NCCL
// creates its communicator on the current device), and bf16 as CUDA autocast's type (libtorch's
// default is fp16; sentence-transformers' trainer with bf16=True autocasts to bf16).
#include <ATen/autocast_mode.h>
#include <c10/core/Device.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <cstring>
#include <exception>

namespace {
void copy_error(const char* what, char* err, size_t err_len) {
  if (err_len == 0) return;
  std::strncpy(err, what, err_len - 1);
  err[err_len - 1] = '\0';
}

c10::Device cuda(int index) {
  return c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index));
}
}  // namespace

extern "C" {

// Writes the native handle (a cudaStream_t; null is the legacy default stream) of libtorch's
// current stream on cuda:`index` to `out`. Returns 0, or 1 with the error in `err`.
int sparq_cuda_current_stream(int index, void** out, char* err, size_t err_len) {
  try {
    const auto* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
    *out = impl->getStreamNativeHandle(impl->getStream(cuda(index)));
    return 0;
  } catch (const std::exception& e) {
    copy_error(e.what(), err, err_len);
    return 1;
  }
}

// Makes cuda:`index` this thread's current device. Returns 0, or 1 with the error in `err`.
int sparq_cuda_set_device(int index, char* err, size_t err_len) {
  try {
    c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->setDevice(cuda(index));
    return 0;
  } catch (const std::exception& e) {
    copy_error(e.what(), err, err_len);
    return 1;
  }
}

// Makes bf16 the type CUDA autocast casts to on this thread (autocast settings are
// thread-local); enabling autocast is left to tch::autocast.
void sparq_cuda_autocast_bf16() { at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16); }

}  // extern "C"
