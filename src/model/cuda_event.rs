//! CUDA events from the CUDA runtime libtorch already loaded: the host waits for one batch's
//! results while the device runs the next one (tch exposes no events, only a device-wide
//! synchronize, which would wait for the next batch too).
//!
//! The runtime's functions are looked up with `dlsym` once `libtorch_cuda` is loaded, so the
//! binary keeps no link-time dependency on CUDA. Events are recorded on the legacy default
//! stream, where libtorch queues its work unless a stream is set (sparq sets none).

use std::ffi::{c_int, c_uint, c_void};
use std::sync::OnceLock;

type Handle = *mut c_void;

struct Runtime {
    set_device: unsafe extern "C" fn(c_int) -> c_int,
    create: unsafe extern "C" fn(*mut Handle, c_uint) -> c_int,
    record: unsafe extern "C" fn(Handle, Handle) -> c_int,
    synchronize: unsafe extern "C" fn(Handle) -> c_int,
    destroy: unsafe extern "C" fn(Handle) -> c_int,
}

/// `cudaEventDisableTiming`: the cheapest kind of event.
const DISABLE_TIMING: c_uint = 2;

fn runtime() -> Option<&'static Runtime> {
    static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            // SAFETY: dlopen/dlsym with constant NUL-terminated names; the handles stay valid
            // for the life of the process (never closed); each symbol is cast to the
            // signature the CUDA runtime API documents for it.
            unsafe {
                let mut lib = libc::RTLD_DEFAULT;
                if libc::dlsym(lib, c"cudaEventRecord".as_ptr()).is_null() {
                    lib = [c"libcudart.so.13", c"libcudart.so.12", c"libcudart.so"]
                        .iter()
                        .map(|n| libc::dlopen(n.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD))
                        .find(|h| !h.is_null())?;
                }
                let sym = |name: &std::ffi::CStr| {
                    let p = libc::dlsym(lib, name.as_ptr());
                    (!p.is_null()).then_some(p)
                };
                type SetDevice = unsafe extern "C" fn(c_int) -> c_int;
                type Create = unsafe extern "C" fn(*mut Handle, c_uint) -> c_int;
                type Record = unsafe extern "C" fn(Handle, Handle) -> c_int;
                type OneHandle = unsafe extern "C" fn(Handle) -> c_int;
                Some(Runtime {
                    set_device: std::mem::transmute::<*mut c_void, SetDevice>(sym(
                        c"cudaSetDevice",
                    )?),
                    create: std::mem::transmute::<*mut c_void, Create>(sym(
                        c"cudaEventCreateWithFlags",
                    )?),
                    record: std::mem::transmute::<*mut c_void, Record>(sym(c"cudaEventRecord")?),
                    synchronize: std::mem::transmute::<*mut c_void, OneHandle>(sym(
                        c"cudaEventSynchronize",
                    )?),
                    destroy: std::mem::transmute::<*mut c_void, OneHandle>(sym(
                        c"cudaEventDestroy",
                    )?),
                })
            }
        })
        .as_ref()
}

/// A recorded point in device `n`'s default stream.
pub struct Event {
    handle: Handle,
}

// SAFETY: a CUDA event handle may be waited on and destroyed from any host thread.
unsafe impl Send for Event {}

impl Event {
    /// Records an event after everything queued so far on device `n`, or `None` when the CUDA
    /// runtime's functions cannot be found (the caller then synchronizes the device).
    pub fn record(device: usize) -> Option<Self> {
        let rt = runtime()?;
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: calls into the CUDA runtime with a valid out-pointer and the handle it
        // returned; a non-zero status is an error and the event is not used.
        unsafe {
            if (rt.set_device)(device as c_int) != 0
                || (rt.create)(&mut handle, DISABLE_TIMING) != 0
            {
                return None;
            }
            if (rt.record)(handle, std::ptr::null_mut()) != 0 {
                (rt.destroy)(handle);
                return None;
            }
        }
        Some(Self { handle })
    }

    /// Blocks until the device has passed the event; false if the runtime reported an error.
    pub fn wait(&self) -> bool {
        runtime().is_some_and(|rt| {
            // SAFETY: `handle` is a live event created by this runtime.
            unsafe { (rt.synchronize)(self.handle) == 0 }
        })
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if let Some(rt) = runtime() {
            // SAFETY: destroys the event this value owns, once.
            unsafe {
                (rt.destroy)(self.handle);
            }
        }
    }
}
