//! Tensors of a state dict saved by Python's `torch.save` (zip format), read by libtorch's
//! unpickler through `csrc/pickle_load.cpp` (tch exposes only TorchScript archives). Used for
//! BGE-M3's `sparse_linear.pt`; the unpickler builds tensors and containers only.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::Path;

use tch::Tensor;

use super::ModelError;

extern "C" {
    fn sparq_pickle_load(
        data: *const c_char,
        len: usize,
        ctx: *mut c_void,
        add: extern "C" fn(*mut c_void, *const c_char, *mut torch_sys::C_tensor),
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

extern "C" fn add_tensor(ctx: *mut c_void, name: *const c_char, tensor: *mut torch_sys::C_tensor) {
    // SAFETY: `ctx` is the `Vec` passed by `read_state_dict` below, alive and not aliased for
    // the call; `name` is a NUL-terminated string and `tensor` a new heap tensor we now own.
    unsafe {
        let out = &mut *(ctx as *mut Vec<(String, Tensor)>);
        let name = CStr::from_ptr(name).to_string_lossy().into_owned();
        out.push((name, Tensor::from_ptr(tensor)));
    }
}

/// The named tensors of the state dict in `path`, in file order; an error naming the file
/// and `convert` (what to do) when it cannot be read.
pub fn read_state_dict(path: &Path, convert: &str) -> Result<Vec<(String, Tensor)>, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut out: Vec<(String, Tensor)> = Vec::new();
    let mut err = vec![0 as c_char; 512];
    // SAFETY: `bytes` and `err` outlive the call; the shim calls `add_tensor` with `out` only
    // during the call and catches every C++ exception.
    let rc = unsafe {
        sparq_pickle_load(
            bytes.as_ptr() as *const c_char,
            bytes.len(),
            &mut out as *mut _ as *mut c_void,
            add_tensor,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc != 0 {
        // SAFETY: the shim wrote a NUL-terminated string into the buffer.
        let message = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
        let first = message.lines().next().unwrap_or("").to_string();
        return Err(ModelError::Unsupported {
            path: path.to_path_buf(),
            what: format!("this pickled PyTorch file ({first})"),
            hint: convert.to_string(),
        });
    }
    Ok(out)
}
