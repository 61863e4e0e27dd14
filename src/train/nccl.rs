//! NCCL for CUDA ranks: `libnccl.so.2` loaded at run time (the binary keeps no link-time
//! dependency on it, so it runs on machines without CUDA), and a communicator whose
//! collectives run on libtorch's current stream, in place on device tensors.
//!
//! The types and constants come from cudarc's NCCL bindings (`cudarc::nccl::sys`). Its loader
//! is not used: it looks for `libnccl.so` and CUDA-versioned names, while the torch wheel's
//! `nvidia-nccl` package (and most systems without NCCL's -dev package) ship only
//! `libnccl.so.2`. The library is searched, in order, in `SPARQ_NCCL_LIBRARY`, the process
//! (libtorch_cuda already loaded the wheel's copy: sharing it keeps one NCCL per process),
//! `LD_LIBRARY_PATH`, the torch wheel's `nvidia/nccl/lib` beside the libtorch in use, and the
//! system's library path.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cudarc::nccl::sys::{ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclUniqueId};
use tch::{Device, Kind, Tensor};

use super::TrainError;

/// The NCCL library file sparq loads.
pub const LIBRARY: &str = "libnccl.so.2";

// Results are read as plain integers: a newer NCCL may return codes the bindings' enum lacks.
type GetVersion = unsafe extern "C" fn(*mut c_int) -> c_int;
type GetUniqueId = unsafe extern "C" fn(*mut ncclUniqueId) -> c_int;
type CommInitRank = unsafe extern "C" fn(*mut ncclComm_t, c_int, ncclUniqueId, c_int) -> c_int;
type CommAbort = unsafe extern "C" fn(ncclComm_t) -> c_int;
type AllReduce = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    ncclDataType_t,
    ncclRedOp_t,
    ncclComm_t,
    *mut c_void,
) -> c_int;
type AllGather = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    ncclDataType_t,
    ncclComm_t,
    *mut c_void,
) -> c_int;
type Broadcast = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    ncclDataType_t,
    c_int,
    ncclComm_t,
    *mut c_void,
) -> c_int;
type ErrorString = unsafe extern "C" fn(c_int) -> *const c_char;
type LastError = unsafe extern "C" fn(ncclComm_t) -> *const c_char;

/// The NCCL functions sparq calls.
struct Api {
    path: String,
    version: c_int,
    get_unique_id: GetUniqueId,
    comm_init_rank: CommInitRank,
    comm_abort: CommAbort,
    all_reduce: AllReduce,
    all_gather: AllGather,
    broadcast: Broadcast,
    error_string: ErrorString,
    last_error: Option<LastError>,
}

/// Where NCCL is searched: (what the place is, the name or path given to the loader, whether
/// only an already-loaded copy counts).
fn candidates(
    override_path: Option<&str>,
    ld_library_path: Option<&str>,
    torch_lib: Option<&Path>,
) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    if let Some(p) = override_path.filter(|p| !p.is_empty()) {
        out.push(("SPARQ_NCCL_LIBRARY".to_string(), p.to_string(), false));
    }
    out.push((
        "the process (loaded by libtorch)".into(),
        LIBRARY.into(),
        true,
    ));
    for dir in ld_library_path
        .unwrap_or("")
        .split(':')
        .filter(|d| !d.is_empty())
    {
        let path = Path::new(dir).join(LIBRARY);
        out.push(("LD_LIBRARY_PATH".into(), path.display().to_string(), false));
    }
    if let Some(lib) = torch_lib {
        // <site-packages>/torch/lib → <site-packages>/nvidia/nccl/lib
        if let Some(site) = lib.parent().and_then(Path::parent) {
            let path = site.join("nvidia/nccl/lib").join(LIBRARY);
            out.push(("the torch wheel".into(), path.display().to_string(), false));
        }
    }
    out.push(("the system library path".into(), LIBRARY.into(), false));
    out
}

/// The folder of the libtorch this process runs on (from the mapped `libtorch_cpu.so`).
fn torch_lib_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
}

/// Opens the first candidate that loads; the error names every place searched.
fn open(candidates: &[(String, String, bool)]) -> Result<(*mut c_void, String), TrainError> {
    let mut tried = Vec::new();
    for (place, name, only_loaded) in candidates {
        let Ok(c_name) = CString::new(name.as_str()) else {
            continue;
        };
        let flags =
            libc::RTLD_NOW | libc::RTLD_LOCAL | if *only_loaded { libc::RTLD_NOLOAD } else { 0 };
        // SAFETY: dlopen with a NUL-terminated name; the handle is kept for the life of the
        // process (never closed), as the communicators' function pointers require.
        let handle = unsafe { libc::dlopen(c_name.as_ptr(), flags) };
        if !handle.is_null() {
            return Ok((handle, format!("{name} ({place})")));
        }
        tried.push(if name.contains('/') {
            format!("{place}: {name}")
        } else {
            place.clone()
        });
    }
    Err(TrainError::Collective(format!(
        "NCCL ({LIBRARY}) was not found; looked in {}. Install the nvidia-nccl wheel that \
         matches your torch (pip install nvidia-nccl-cu13) or a system NCCL, point \
         SPARQ_NCCL_LIBRARY at {LIBRARY}, or train with --collective tcp",
        tried.join("; ")
    )))
}

fn load() -> Result<Api, TrainError> {
    let places = candidates(
        std::env::var("SPARQ_NCCL_LIBRARY").ok().as_deref(),
        std::env::var("LD_LIBRARY_PATH").ok().as_deref(),
        torch_lib_dir().as_deref(),
    );
    let (handle, path) = open(&places)?;
    let missing = |name: &str| {
        TrainError::Collective(format!(
            "{path} lacks {name}: it is not an NCCL 2 library (use NCCL 2.18 or newer, or \
             --collective tcp)"
        ))
    };
    let sym = |name: &CStr| -> Option<*mut c_void> {
        // SAFETY: dlsym on a live handle with a NUL-terminated name.
        let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
        (!p.is_null()).then_some(p)
    };
    macro_rules! get {
        ($name:literal, $ty:ty) => {{
            let p = sym($name).ok_or_else(|| missing(&$name.to_string_lossy()))?;
            // SAFETY: the symbol is NCCL's function of this name, whose C signature `$ty`
            // declares (nccl.h, stable across NCCL 2).
            unsafe { std::mem::transmute::<*mut c_void, $ty>(p) }
        }};
    }
    let get_version = get!(c"ncclGetVersion", GetVersion);
    let mut version: c_int = 0;
    // SAFETY: a valid out-pointer.
    unsafe { get_version(&mut version) };
    let last_error = sym(c"ncclGetLastError").map(|p| {
        // SAFETY: ncclGetLastError(ncclComm_t) -> const char* (NCCL 2.13+).
        unsafe { std::mem::transmute::<*mut c_void, LastError>(p) }
    });
    Ok(Api {
        version,
        get_unique_id: get!(c"ncclGetUniqueId", GetUniqueId),
        comm_init_rank: get!(c"ncclCommInitRank", CommInitRank),
        comm_abort: get!(c"ncclCommAbort", CommAbort),
        all_reduce: get!(c"ncclAllReduce", AllReduce),
        all_gather: get!(c"ncclAllGather", AllGather),
        broadcast: get!(c"ncclBroadcast", Broadcast),
        error_string: get!(c"ncclGetErrorString", ErrorString),
        last_error,
        path,
    })
}

fn api() -> Result<&'static Api, TrainError> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(|| load().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| TrainError::Collective(e.clone()))
}

/// The loaded NCCL: its file and version (e.g. 22809 for 2.28.9).
pub fn library() -> Result<(String, i32), TrainError> {
    api().map(|a| (a.path.clone(), a.version))
}

/// A fresh unique id: rank 0 makes it and sends it to the others (128 bytes).
pub fn unique_id() -> Result<[u8; 128], TrainError> {
    let api = api()?;
    let mut id = ncclUniqueId { internal: [0; 128] };
    // SAFETY: a valid out-pointer to an ncclUniqueId.
    check(api, None, "ncclGetUniqueId", unsafe {
        (api.get_unique_id)(&mut id)
    })?;
    Ok(id.internal.map(|c| c as u8))
}

fn check(api: &Api, comm: Option<ncclComm_t>, what: &str, code: c_int) -> Result<(), TrainError> {
    if code == 0 {
        return Ok(());
    }
    // SAFETY: NCCL returns static NUL-terminated strings.
    let text = |p: *const c_char| unsafe {
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    // SAFETY: any result code is a valid argument.
    let mut detail = text(unsafe { (api.error_string)(code) });
    if let (Some(last), Some(comm)) = (api.last_error, comm) {
        // SAFETY: a live communicator.
        let last = text(unsafe { last(comm) });
        if !last.is_empty() {
            detail = format!("{detail}: {last}");
        }
    }
    Err(TrainError::Collective(format!(
        "NCCL {what} failed (code {code}, {detail}); if a process of the job died, resume from \
         the last checkpoint with --resume; to avoid NCCL, train with --collective tcp"
    )))
}

/// One rank's NCCL communicator on its CUDA device.
pub struct NcclComm {
    comm: ncclComm_t,
    api: &'static Api,
    device: usize,
    /// Number of ranks.
    pub world: usize,
}

// SAFETY: a communicator may be used from any host thread, one call at a time (`&mut self`).
unsafe impl Send for NcclComm {}

impl NcclComm {
    /// Joins the communicator of `world` ranks named by `id` (the same on every rank) as `rank`,
    /// on cuda:`device`. Blocks until every rank has joined.
    pub fn join(
        id: &[u8; 128],
        world: usize,
        rank: usize,
        device: usize,
    ) -> Result<Self, TrainError> {
        let api = api()?;
        super::cuda::set_device(device)?;
        let id = ncclUniqueId {
            internal: id.map(|b| b as c_char),
        };
        let mut comm: ncclComm_t = std::ptr::null_mut();
        // SAFETY: a valid out-pointer; the id is passed by value as nccl.h declares.
        let code = unsafe { (api.comm_init_rank)(&mut comm, world as c_int, id, rank as c_int) };
        check(api, None, "ncclCommInitRank", code)?;
        Ok(Self {
            comm,
            api,
            device,
            world,
        })
    }

    /// The device tensor's data and element count, checked: contiguous f32 on this device.
    fn buffer(&self, t: &Tensor) -> Result<(*mut c_void, usize), TrainError> {
        if t.device() != Device::Cuda(self.device) || t.kind() != Kind::Float || !t.is_contiguous()
        {
            return Err(TrainError::Collective(format!(
                "NCCL exchanges contiguous f32 tensors on cuda:{}; got {:?} on {:?}",
                self.device,
                t.kind(),
                t.device()
            )));
        }
        Ok((t.data_ptr(), t.numel()))
    }

    fn stream(&self) -> Result<*mut c_void, TrainError> {
        super::cuda::current_stream(self.device)
    }

    /// Sums `t` over all ranks, in place, queued on libtorch's current stream.
    pub fn all_reduce_sum(&mut self, t: &Tensor) -> Result<(), TrainError> {
        let (ptr, n) = self.buffer(t)?;
        let stream = self.stream()?;
        // SAFETY: `ptr` holds `n` f32 on this communicator's device and stays alive until the
        // stream has run the collective (the caller keeps `t`, and libtorch's caching allocator
        // only reuses its memory for work queued after it on the same stream).
        let code = unsafe {
            (self.api.all_reduce)(
                ptr,
                ptr,
                n,
                ncclDataType_t::ncclFloat32,
                ncclRedOp_t::ncclSum,
                self.comm,
                stream,
            )
        };
        check(self.api, Some(self.comm), "all-reduce", code)
    }

    /// Every rank's `t` (same shape everywhere) concatenated along dimension 0, in rank order.
    pub fn all_gather(&mut self, t: &Tensor) -> Result<Tensor, TrainError> {
        let t = t.f_contiguous()?;
        let (send, n) = self.buffer(&t)?;
        let mut size = t.size();
        size[0] *= self.world as i64;
        let out = Tensor::f_empty(size.as_slice(), (Kind::Float, t.device()))?;
        let (recv, _) = self.buffer(&out)?;
        let stream = self.stream()?;
        // SAFETY: `send` holds `n` f32 and `recv` `n × world` on this device, both alive until
        // the stream has run the collective (as in `all_reduce_sum`).
        let code = unsafe {
            (self.api.all_gather)(
                send,
                recv,
                n,
                ncclDataType_t::ncclFloat32,
                self.comm,
                stream,
            )
        };
        check(self.api, Some(self.comm), "all-gather", code)?;
        Ok(out)
    }

    /// Copies rank 0's `t` into every rank's, in place.
    pub fn broadcast(&mut self, t: &Tensor) -> Result<(), TrainError> {
        let (ptr, n) = self.buffer(t)?;
        let stream = self.stream()?;
        // SAFETY: as in `all_reduce_sum`.
        let code = unsafe {
            (self.api.broadcast)(
                ptr,
                ptr,
                n,
                ncclDataType_t::ncclFloat32,
                0,
                self.comm,
                stream,
            )
        };
        check(self.api, Some(self.comm), "broadcast", code)
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // Abort rather than destroy: destroy waits for unfinished collectives, which never end
        // when a peer died; on a clean exit every collective has finished (the last step's
        // values were read on the host), and abort then just frees the communicator.
        // SAFETY: the communicator this value owns, released once.
        unsafe {
            (self.api.comm_abort)(self.comm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_nccl_names_every_place_searched_and_the_tcp_fallback() {
        let places = candidates(
            None,
            Some("/nonexistent/a:/nonexistent/b"),
            Some(Path::new("/nonexistent/site-packages/torch/lib")),
        );
        // The system-path candidate may exist on a machine with NCCL, and the process may
        // hold the wheel's copy already (the next test loads it, in this same process):
        // search only the others.
        let places: Vec<_> = places
            .into_iter()
            .filter(|(place, _, _)| {
                place != "the system library path" && !place.starts_with("the process")
            })
            .collect();
        let err = open(&places).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/a/libnccl.so.2"), "{err}");
        assert!(err.contains("/nonexistent/b/libnccl.so.2"), "{err}");
        assert!(
            err.contains(
                "the torch wheel: /nonexistent/site-packages/nvidia/nccl/lib/libnccl.so.2"
            ),
            "{err}"
        );
        assert!(err.contains("--collective tcp"), "{err}");
    }

    #[test]
    fn nccl_is_found_in_the_torch_wheel_beside_libtorch() {
        // This project's libtorch is a CUDA wheel, which brings nvidia-nccl; loading it and
        // asking its version needs no GPU.
        let Some(lib) = torch_lib_dir() else {
            panic!("libtorch_cpu.so is not mapped in the test process");
        };
        let wheel = lib
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("nvidia/nccl/lib");
        if !wheel.join(LIBRARY).is_file() {
            eprintln!(
                "skipped: {} has no {LIBRARY} (a CPU-only torch)",
                wheel.display()
            );
            return;
        }
        let (path, version) = library().unwrap();
        assert!(path.contains("libnccl.so.2"), "{path}");
        assert!(version >= 21800, "NCCL {version}");
    }
}
