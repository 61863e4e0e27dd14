//! What training needs of libtorch's CUDA state that tch does not expose (see
//! `src/model/csrc/cuda_training.cpp`): the current stream of a device, the current device, and
//! bf16 as autocast's type.

use std::ffi::{c_char, c_int, c_void};

use super::TrainError;

extern "C" {
    fn sparq_cuda_current_stream(
        index: c_int,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn sparq_cuda_set_device(index: c_int, err: *mut c_char, err_len: usize) -> c_int;
    fn sparq_cuda_autocast_bf16();
}

fn call(what: &str, f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), TrainError> {
    let mut err = vec![0 as c_char; 512];
    if f(err.as_mut_ptr(), err.len()) == 0 {
        return Ok(());
    }
    // SAFETY: the shim wrote a NUL-terminated message into the buffer.
    let message = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
    Err(TrainError::Collective(format!(
        "{what}: {}",
        crate::model::clean_tch_error(&message)
    )))
}

/// libtorch's current stream on cuda:`index` (a `cudaStream_t`; null is the legacy default
/// stream, which libtorch uses unless a stream is set).
pub fn current_stream(index: usize) -> Result<*mut c_void, TrainError> {
    let mut stream = std::ptr::null_mut();
    call(
        &format!("the current stream of cuda:{index}"),
        |err, len| {
            // SAFETY: `stream` is a valid out-pointer; the shim catches every C++ exception.
            unsafe { sparq_cuda_current_stream(index as c_int, &mut stream, err, len) }
        },
    )?;
    Ok(stream)
}

/// Makes cuda:`index` this thread's current device.
pub fn set_device(index: usize) -> Result<(), TrainError> {
    call(&format!("selecting cuda:{index}"), |err, len| {
        // SAFETY: the shim catches every C++ exception and writes at most `len` bytes.
        unsafe { sparq_cuda_set_device(index as c_int, err, len) }
    })
}

/// Makes bf16 the type CUDA autocast casts to on this thread (libtorch's default is fp16).
pub fn autocast_to_bf16() {
    // SAFETY: sets a thread-local ATen setting; cannot fail.
    unsafe { sparq_cuda_autocast_bf16() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_gpu_the_cuda_helpers_fail_with_an_error_not_a_crash() {
        use crate::model::ResolveDevice;
        // Loads libtorch's CUDA backend where there is one.
        if crate::types::DeviceSpec::Cuda(0).resolve().is_ok() {
            // A GPU machine: the stream and device of cuda:0 are there.
            set_device(0).unwrap();
            current_stream(0).unwrap();
            return;
        }
        for err in [
            set_device(0).unwrap_err().to_string(),
            current_stream(0).unwrap_err().to_string(),
        ] {
            assert!(err.contains("cuda:0"), "{err}");
            assert!(err.to_lowercase().contains("cuda"), "{err}");
            assert!(!err.contains('\n'), "a backtrace leaked: {err}");
        }
        // Setting autocast's type touches no device.
        autocast_to_bf16();
    }
}
