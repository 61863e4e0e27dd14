//! Devices as libtorch sees them: resolving `cpu` / `cuda:N`, and loading libtorch's CUDA
//! backend on demand.

use tch::Device;

use super::ModelError;
use crate::types::DeviceSpec;

/// The flag device errors suggest. `sparq encode`, whose flag is `--devices`, rewrites it
/// (see `coord::coordinator`).
pub const DEVICE_FLAG: &str = "--device";

fn device_flag() -> &'static str {
    DEVICE_FLAG
}

/// Resolves a [`DeviceSpec`] to the libtorch device, checking that it exists.
pub trait ResolveDevice {
    /// The libtorch device, or why it cannot be used.
    fn resolve(self) -> Result<Device, ModelError>;
}

impl ResolveDevice for DeviceSpec {
    fn resolve(self) -> Result<Device, ModelError> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => {
                let load_error = load_cuda_backend();
                let count = if tch::Cuda::is_available() {
                    tch::Cuda::device_count() as usize
                } else {
                    0
                };
                if n < count {
                    Ok(Device::Cuda(n))
                } else if count == 0 {
                    let flag = device_flag();
                    Err(ModelError::Device {
                        device: self.to_string(),
                        detail: match load_error {
                            Some(e) => format!(
                                "this libtorch has no usable CUDA backend ({e}): use {flag} \
                                 cpu, or put a CUDA build of libtorch on LD_LIBRARY_PATH"
                            ),
                            None => format!(
                                "libtorch sees no CUDA device here (no GPU or no driver): use \
                                 {flag} cpu"
                            ),
                        },
                    })
                } else {
                    let which = if count == 1 {
                        "only one CUDA device, cuda:0".to_string()
                    } else {
                        format!("only {count} CUDA devices, cuda:0 to cuda:{}", count - 1)
                    };
                    Err(ModelError::Device {
                        device: self.to_string(),
                        detail: format!("{which}: use {} cuda:0", device_flag()),
                    })
                }
            }
        }
    }
}

/// Loads libtorch's CUDA backend once. The linker drops `libtorch_cuda.so` from the binary
/// (nothing references its symbols: it registers itself from static initializers), so without
/// this libtorch reports no GPU. Loading it on demand keeps CPU runs from paying for the CUDA
/// libraries and lets the binary run on a CPU-only libtorch. The loader searches
/// `LD_LIBRARY_PATH`, then the binary's RUNPATH. A failure leaves `is_available()` false.
fn load_cuda_backend() -> Option<&'static str> {
    static LOADED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            // SAFETY: dlopen with a constant, NUL-terminated name; the handle is kept for the
            // life of the process (never dlclose'd), as libtorch's registrations require.
            unsafe {
                let handle = libc::dlopen(
                    c"libtorch_cuda.so".as_ptr(),
                    libc::RTLD_NOW | libc::RTLD_GLOBAL,
                );
                if handle.is_null() {
                    let err = libc::dlerror();
                    Some(if err.is_null() {
                        "libtorch_cuda.so could not be loaded".to_string()
                    } else {
                        std::ffi::CStr::from_ptr(err).to_string_lossy().into_owned()
                    })
                } else {
                    None
                }
            }
        })
        .as_deref()
}
