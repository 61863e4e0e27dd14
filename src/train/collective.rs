//! How the ranks of a data-parallel run exchange tensors: the TCP collective (through host
//! memory, rank 0 the hub; CPU and CUDA ranks) or NCCL (on the GPUs, on libtorch's current
//! stream), chosen by `--collective` once every rank's device is known. Gradients are averaged
//! bucket by bucket (`super::buckets`, as DDP does) on either.

use std::time::Duration;

use tch::{Device, Kind, Tensor};

use super::buckets::{plan_buckets, BUCKET_BYTES};
use super::dist::{Group, RankEnv};
use super::host::{host_vec, set_from};
use super::nccl::NcclComm;
use super::optim::Param;
use super::TrainError;

/// `--collective`: which collective carries the tensors between ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CollectiveKind {
    /// NCCL when every rank is on CUDA, TCP otherwise; nothing for a single process.
    #[default]
    Auto,
    /// The TCP collective (host memory).
    Tcp,
    /// NCCL (CUDA ranks only).
    Nccl,
}

impl std::str::FromStr for CollectiveKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "tcp" => Ok(Self::Tcp),
            "nccl" => Ok(Self::Nccl),
            _ => Err(format!("`{s}` is not a collective: use auto, tcp or nccl")),
        }
    }
}

impl<'de> serde::Deserialize<'de> for CollectiveKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for CollectiveKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Tcp => "tcp",
            Self::Nccl => "nccl",
        })
    }
}

/// What a run exchanges tensors with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// A single process with nothing to exchange.
    Nothing,
    /// The TCP collective.
    Tcp,
    /// NCCL.
    Nccl,
}

/// Decides the collective from what was asked and whether each rank (index = rank) runs on
/// CUDA; ranks that disagree about devices are an error, as is NCCL on the CPU.
pub fn choose(kind: CollectiveKind, on_cuda: &[bool]) -> Result<Choice, TrainError> {
    let ranks =
        |want: bool| -> Vec<usize> { (0..on_cuda.len()).filter(|&r| on_cuda[r] == want).collect() };
    let (cuda, cpu) = (ranks(true), ranks(false));
    if !cuda.is_empty() && !cpu.is_empty() {
        return Err(TrainError::Collective(format!(
            "the ranks disagree about devices: rank(s) {cuda:?} run on CUDA, rank(s) {cpu:?} on \
             the CPU; give every rank the same --device (and a GPU each for cuda)"
        )));
    }
    let all_cuda = cpu.is_empty();
    let single = on_cuda.len() <= 1;
    match kind {
        CollectiveKind::Nccl if !all_cuda => Err(TrainError::Option(
            "--collective nccl exchanges tensors between GPUs: use it with --device cuda; on the \
             CPU use --collective tcp (or auto)"
                .into(),
        )),
        CollectiveKind::Nccl => Ok(Choice::Nccl),
        _ if single => Ok(Choice::Nothing),
        CollectiveKind::Auto if all_cuda => Ok(Choice::Nccl),
        _ => Ok(Choice::Tcp),
    }
}

/// The ranks of a run, connected, and how their tensors travel.
pub struct Collective {
    /// The TCP group: the tensors with `--collective tcp`, control messages with NCCL (absent
    /// for a single process).
    group: Option<Group>,
    nccl: Option<NcclComm>,
    rank: usize,
    world: usize,
    /// Gradient buckets by parameter index (planned at the first exchange).
    buckets: Vec<Vec<usize>>,
    bucket_cap: usize,
}

impl Collective {
    /// Connects the ranks of `env` (none: a single process) and picks the collective; `None`
    /// when there is nothing to exchange. Every rank learns every rank's device first, so a
    /// disagreement fails on all of them before any step.
    pub fn connect(
        kind: CollectiveKind,
        env: Option<&RankEnv>,
        device: Device,
        timeout: Duration,
    ) -> Result<Option<Self>, TrainError> {
        let on_cuda = matches!(device, Device::Cuda(_));
        let mut group = match env {
            Some(env) => Some(Group::connect(env, timeout)?),
            None => None,
        };
        let devices = match group.as_mut() {
            Some(g) => {
                let code = |k: CollectiveKind| k as u8 as f32;
                let all = g.all_gather(&[f32::from(u8::from(on_cuda)), code(kind)])?;
                let kinds: Vec<f32> = all.chunks(2).map(|c| c[1]).collect();
                if kinds.iter().any(|&k| k != kinds[0]) {
                    return Err(TrainError::Option(
                        "the ranks were started with different --collective settings: give \
                         every rank the same one"
                            .into(),
                    ));
                }
                all.chunks(2).map(|c| c[0] != 0.0).collect()
            }
            None => vec![on_cuda],
        };
        let (rank, world) = env.map_or((0, 1), |e| (e.rank, e.world));
        let nccl = match choose(kind, &devices)? {
            Choice::Nothing => return Ok(None),
            Choice::Tcp => None,
            Choice::Nccl => {
                let Device::Cuda(index) = device else {
                    unreachable!("NCCL is only chosen when every rank is on CUDA")
                };
                Some(join_nccl(group.as_mut(), rank, world, index)?)
            }
        };
        Ok(Some(Self {
            group,
            nccl,
            rank,
            world,
            buckets: Vec::new(),
            bucket_cap: BUCKET_BYTES,
        }))
    }

    /// Sets the gradient bucket size (default [`BUCKET_BYTES`]); for tests and tuning.
    pub fn set_bucket_bytes(&mut self, cap: usize) {
        self.bucket_cap = cap;
        self.buckets.clear();
    }

    /// The gradient buckets of the last exchange (parameter indices).
    pub fn buckets(&self) -> &[Vec<usize>] {
        &self.buckets
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn world(&self) -> usize {
        self.world
    }

    /// `nccl` or `tcp`.
    pub fn name(&self) -> &'static str {
        if self.nccl.is_some() {
            "nccl"
        } else {
            "tcp"
        }
    }

    /// The TCP group, for control messages (agreement checks, barriers); `None` for a single
    /// process.
    pub fn group(&mut self) -> Option<&mut Group> {
        self.group.as_mut()
    }

    /// Every rank's `t` `[rows, d]` (f32), concatenated along rows in rank order, on `t`'s
    /// device.
    pub fn all_gather(&mut self, t: &Tensor) -> Result<Tensor, TrainError> {
        if let Some(nccl) = self.nccl.as_mut() {
            return nccl.all_gather(&t.f_to_kind(Kind::Float)?);
        }
        let group = self.group.as_mut().expect("TCP needs several ranks");
        let size = t.size();
        let all = group.all_gather(&host_vec(t)?)?;
        Ok(Tensor::from_slice(&all)
            .f_view([size[0] * group.world as i64, size[1]])?
            .f_to_device(t.device())?)
    }

    /// The sums over ranks of `tensors` (f32; the same shapes on every rank), in the same
    /// shapes, on the host with TCP and on the device with NCCL.
    pub fn all_reduce_sum(&mut self, tensors: &[Tensor]) -> Result<Vec<Tensor>, TrainError> {
        let shapes: Vec<Vec<i64>> = tensors.iter().map(Tensor::size).collect();
        let flat = if let Some(nccl) = self.nccl.as_mut() {
            let parts = tensors
                .iter()
                .map(|t| t.f_to_kind(Kind::Float)?.f_reshape([-1]))
                .collect::<Result<Vec<_>, _>>()?;
            let flat = Tensor::f_cat(&parts, 0)?;
            nccl.all_reduce_sum(&flat)?;
            flat
        } else {
            let group = self.group.as_mut().expect("TCP needs several ranks");
            let mut flat = Vec::new();
            for t in tensors {
                flat.extend(host_vec(t)?);
            }
            group.all_reduce_sum(&mut flat)?;
            Tensor::from_slice(&flat)
        };
        let mut offset = 0;
        shapes
            .iter()
            .map(|shape| {
                let n: i64 = shape.iter().product();
                let t = flat.f_narrow(0, offset, n)?.f_view(shape.as_slice())?;
                offset += n;
                Ok(t)
            })
            .collect()
    }

    /// The mean over ranks of a few host numbers (the step's losses), through the TCP group.
    pub fn mean_of_hosts(&mut self, values: &mut [f64]) -> Result<(), TrainError> {
        let Some(group) = self.group.as_mut() else {
            return Ok(());
        };
        let mut v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
        group.all_reduce_sum(&mut v)?;
        for (x, s) in values.iter_mut().zip(v) {
            *x = s as f64 / group.world as f64;
        }
        Ok(())
    }

    /// Gives every rank rank 0's parameters.
    pub fn broadcast_params(&mut self, params: &[Param]) -> Result<(), TrainError> {
        for p in params {
            if let Some(nccl) = self.nccl.as_mut() {
                nccl.broadcast(&p.tensor)?;
            } else if let Some(group) = self.group.as_mut() {
                let mut flat = host_vec(&p.tensor)?;
                group.broadcast(&mut flat)?;
                set_from(&p.tensor, &flat)?;
            }
        }
        Ok(())
    }

    /// Sums every gradient across ranks and divides by the number of ranks, as DDP averages
    /// them, one ~25 MB bucket at a time (reverse registration order). With TCP the sum runs in
    /// rank order on rank 0, so every rank holds the same bits; with NCCL the flattened bucket
    /// is reduced in place on the device, on libtorch's stream, with no host sync.
    pub fn average_gradients(&mut self, params: &[Param]) -> Result<(), TrainError> {
        if self.buckets.is_empty() {
            let sizes: Vec<usize> = params.iter().map(|p| p.tensor.numel() * 4).collect();
            self.buckets = plan_buckets(&sizes, self.bucket_cap);
        }
        let world = self.world;
        for bucket in &self.buckets {
            let grads: Vec<Tensor> = bucket.iter().map(|&i| params[i].tensor.grad()).collect();
            if let Some(nccl) = self.nccl.as_mut() {
                tch::no_grad(|| -> Result<(), TrainError> {
                    let parts = grads
                        .iter()
                        .map(|g| g.f_reshape([-1]))
                        .collect::<Result<Vec<_>, _>>()?;
                    let mut flat = Tensor::f_cat(&parts, 0)?;
                    nccl.all_reduce_sum(&flat)?;
                    let _ = flat.f_div_scalar_(world as f64)?;
                    let mut offset = 0;
                    for g in &grads {
                        let n = g.numel() as i64;
                        let part = flat.f_narrow(0, offset, n)?.f_view(g.size().as_slice())?;
                        g.shallow_clone().f_copy_(&part)?;
                        offset += n;
                    }
                    Ok(())
                })?;
            } else if let Some(group) = self.group.as_mut() {
                let mut flat: Vec<f32> = Vec::new();
                for g in &grads {
                    flat.extend(host_vec(g)?);
                }
                group.all_reduce_sum(&mut flat)?;
                for x in flat.iter_mut() {
                    *x /= world as f32;
                }
                let mut offset = 0;
                for g in &grads {
                    let n = g.numel();
                    set_from(g, &flat[offset..offset + n])?;
                    offset += n;
                }
            }
        }
        Ok(())
    }
}

/// Every rank loads NCCL (a rank that cannot says so, and the others learn which), rank 0
/// makes the unique id and sends it over the TCP group, and all join the communicator.
fn join_nccl(
    group: Option<&mut Group>,
    rank: usize,
    world: usize,
    device: usize,
) -> Result<NcclComm, TrainError> {
    let loaded = super::nccl::library();
    let Some(group) = group else {
        loaded?;
        return NcclComm::join(&super::nccl::unique_id()?, 1, 0, device);
    };
    let failed = group.all_gather(&[f32::from(u8::from(loaded.is_err()))])?;
    loaded?;
    let without: Vec<usize> = (0..world).filter(|&r| failed[r] != 0.0).collect();
    if !without.is_empty() {
        return Err(TrainError::Collective(format!(
            "rank(s) {without:?} cannot load NCCL (see their message); every rank needs it, or \
             train with --collective tcp"
        )));
    }
    // Byte 0: whether rank 0 made an id; then the id.
    let mut message = [0u8; 129];
    let made = if rank == 0 {
        super::nccl::unique_id().map(|id| {
            message[0] = 1;
            message[1..].copy_from_slice(&id);
        })
    } else {
        Ok(())
    };
    group.broadcast_bytes(&mut message)?;
    made?;
    if message[0] != 1 {
        return Err(TrainError::Collective(
            "rank 0 could not make an NCCL unique id (see its message)".into(),
        ));
    }
    let id: [u8; 128] = message[1..].try_into().expect("128 bytes");
    NcclComm::join(&id, world, rank, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_nccl_for_cuda_ranks_tcp_for_cpu_ranks_and_nothing_for_one_process() {
        use CollectiveKind::*;
        assert_eq!(choose(Auto, &[true, true]).unwrap(), Choice::Nccl);
        assert_eq!(choose(Auto, &[false, false]).unwrap(), Choice::Tcp);
        assert_eq!(choose(Tcp, &[true, true]).unwrap(), Choice::Tcp);
        assert_eq!(choose(Nccl, &[true, true, true]).unwrap(), Choice::Nccl);
        // One process exchanges nothing, unless NCCL is asked for on a GPU (to exercise it).
        assert_eq!(choose(Auto, &[true]).unwrap(), Choice::Nothing);
        assert_eq!(choose(Auto, &[false]).unwrap(), Choice::Nothing);
        assert_eq!(choose(Tcp, &[true]).unwrap(), Choice::Nothing);
        assert_eq!(choose(Nccl, &[true]).unwrap(), Choice::Nccl);
    }

    #[test]
    fn nccl_on_the_cpu_and_mixed_devices_are_clear_errors() {
        use CollectiveKind::*;
        for devices in [&[false][..], &[false, false]] {
            let err = choose(Nccl, devices).unwrap_err().to_string();
            assert!(err.contains("--device cuda"), "{err}");
            assert!(err.contains("--collective tcp"), "{err}");
        }
        for kind in [Auto, Tcp, Nccl] {
            let err = choose(kind, &[true, false, true]).unwrap_err().to_string();
            assert!(err.contains("rank(s) [0, 2] run on CUDA"), "{err}");
            assert!(err.contains("rank(s) [1] on the CPU"), "{err}");
        }
    }

    #[test]
    fn collective_names_parse_as_the_flag_spells_them() {
        assert_eq!("NCCL".parse::<CollectiveKind>(), Ok(CollectiveKind::Nccl));
        assert_eq!("tcp".parse::<CollectiveKind>(), Ok(CollectiveKind::Tcp));
        assert_eq!(" auto".parse::<CollectiveKind>(), Ok(CollectiveKind::Auto));
        let err = "gloo".parse::<CollectiveKind>().unwrap_err();
        assert!(err.contains("auto, tcp or nccl"), "{err}");
    }
}
