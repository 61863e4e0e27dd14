//! Data-parallel training across processes: a TCP collective (rank 0 the hub) with a timeout
//! on every exchange, the torchrun environment, and the `--nproc-per-node` launcher.
//!
//! Rank 0 receives every rank's buffer, sums them in rank order and sends the same bits back,
//! so every rank applies bitwise-identical updates and parameters never drift apart. The
//! exchange goes through host memory; it is the collective for CPU ranks and works for CUDA
//! ranks too (gradients are copied to the host and back). With NCCL (`super::collective`) it
//! still carries the control messages: the unique id, agreement checks, barriers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::TrainError;

/// The torchrun variables of this process, if it is one rank of several.
#[derive(Debug, Clone)]
pub struct RankEnv {
    /// This process's rank.
    pub rank: usize,
    /// Number of processes.
    pub world: usize,
    /// Rank on this machine (selects the GPU).
    pub local_rank: usize,
    /// Rank 0's address.
    pub master: String,
}

impl RankEnv {
    /// Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (plus one under torchrun,
    /// whose agent holds MASTER_PORT); `None` when WORLD_SIZE is unset or 1.
    pub fn from_env() -> Result<Option<Self>, TrainError> {
        let var = |k: &str| std::env::var(k).ok();
        let world: usize = match var("WORLD_SIZE") {
            None => return Ok(None),
            Some(w) => w
                .parse()
                .map_err(|_| TrainError::Collective(format!("WORLD_SIZE={w} is not a number")))?,
        };
        if world <= 1 {
            return Ok(None);
        }
        let num = |k: &str| -> Result<usize, TrainError> {
            let v = var(k).ok_or_else(|| {
                TrainError::Collective(format!("WORLD_SIZE={world} but {k} is not set"))
            })?;
            v.parse()
                .map_err(|_| TrainError::Collective(format!("{k}={v} is not a number")))
        };
        let rank = num("RANK")?;
        if rank >= world {
            return Err(TrainError::Collective(format!(
                "RANK={rank} but WORLD_SIZE={world}"
            )));
        }
        let local_rank = var("LOCAL_RANK")
            .and_then(|v| v.parse().ok())
            .unwrap_or(rank);
        let addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let mut port = num("MASTER_PORT")?;
        // torchrun's agent serves its own TCPStore on MASTER_PORT (and says so in this
        // variable); the ranks meet on the next port instead, which every rank derives alike.
        if var("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True") {
            port = port
                .checked_add(1)
                .filter(|&p| p <= usize::from(u16::MAX))
                .ok_or_else(|| {
                    TrainError::Collective(format!(
                        "MASTER_PORT={port} is torchrun's store; the ranks need the port after it"
                    ))
                })?;
        }
        Ok(Some(Self {
            rank,
            world,
            local_rank,
            master: format!("{addr}:{port}"),
        }))
    }
}

/// A connected group of ranks.
pub struct Group {
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
    /// Rank 0: streams to ranks 1.. in rank order. Others: the stream to rank 0.
    links: Vec<TcpStream>,
    timeout: Duration,
}

const HELLO: u32 = 0x5350_5251; // "SPRQ"

impl Group {
    /// Connects all ranks (rank 0 listens on MASTER_ADDR:MASTER_PORT), waiting at most
    /// `timeout` for the others.
    pub fn connect(env: &RankEnv, timeout: Duration) -> Result<Self, TrainError> {
        let deadline = Instant::now() + timeout;
        let err = |m: String| TrainError::Collective(format!("rank {}: {m}", env.rank));
        let mut links = Vec::new();
        if env.rank == 0 {
            let listener = TcpListener::bind(&env.master)
                .map_err(|e| err(format!("cannot listen on {} ({e})", env.master)))?;
            listener
                .set_nonblocking(true)
                .map_err(|e| err(e.to_string()))?;
            let mut by_rank: Vec<Option<TcpStream>> = (0..env.world).map(|_| None).collect();
            let mut joined = 1;
            while joined < env.world {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream
                            .set_nonblocking(false)
                            .map_err(|e| err(e.to_string()))?;
                        configure(&stream, timeout).map_err(|e| err(e.to_string()))?;
                        let mut hello = [0u8; 8];
                        stream
                            .read_exact(&mut hello)
                            .map_err(|e| err(format!("a peer's greeting failed ({e})")))?;
                        let magic = u32::from_le_bytes(hello[..4].try_into().expect("4 bytes"));
                        let rank =
                            u32::from_le_bytes(hello[4..].try_into().expect("4 bytes")) as usize;
                        if magic != HELLO
                            || rank == 0
                            || rank >= env.world
                            || by_rank[rank].is_some()
                        {
                            return Err(err(format!(
                                "unexpected peer on {} (rank {rank}): is another job using this port?",
                                env.master
                            )));
                        }
                        by_rank[rank] = Some(stream);
                        joined += 1;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            return Err(err(format!(
                                "only {joined} of {} ranks connected within {} s",
                                env.world,
                                timeout.as_secs()
                            )));
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(err(format!("accepting a peer failed ({e})"))),
                }
            }
            links.extend(by_rank.into_iter().flatten());
        } else {
            let addr: SocketAddr = env
                .master
                .to_socket_addrs()
                .map_err(|e| err(format!("cannot resolve MASTER_ADDR {} ({e})", env.master)))?
                .next()
                .ok_or_else(|| err(format!("MASTER_ADDR {} resolves to nothing", env.master)))?;
            let mut stream = loop {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() > deadline => {
                        return Err(err(format!(
                            "rank 0 at {} did not answer within {} s ({e})",
                            env.master,
                            timeout.as_secs()
                        )))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            };
            configure(&stream, timeout).map_err(|e| err(e.to_string()))?;
            let mut hello = HELLO.to_le_bytes().to_vec();
            hello.extend((env.rank as u32).to_le_bytes());
            stream
                .write_all(&hello)
                .map_err(|e| err(format!("greeting rank 0 failed ({e})")))?;
            links.push(stream);
        }
        Ok(Self {
            rank: env.rank,
            world: env.world,
            links,
            timeout,
        })
    }

    fn lost(&self, peer: usize, what: &str, e: std::io::Error) -> TrainError {
        let why = match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!("no answer within {} s", self.timeout.as_secs())
            }
            _ => e.to_string(),
        };
        TrainError::Collective(format!(
            "rank {}: {what} rank {peer} failed ({why}); a process of the job died or hangs — \
             resume from the last checkpoint with --resume",
            self.rank
        ))
    }

    /// Sums `data` over all ranks, in rank order, leaving the same bits on every rank.
    pub fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<(), TrainError> {
        if self.rank == 0 {
            let mut buf = vec![0u8; data.len() * 4];
            for peer in 1..self.world {
                self.links[peer - 1]
                    .read_exact(&mut buf)
                    .map_err(|e| self.lost(peer, "receiving from", e))?;
                for (x, b) in data.iter_mut().zip(buf.chunks_exact(4)) {
                    *x += f32::from_le_bytes(b.try_into().expect("4 bytes"));
                }
            }
            self.broadcast(data)
        } else {
            let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
            self.links[0]
                .write_all(&bytes)
                .map_err(|e| self.lost(0, "sending to", e))?;
            self.broadcast(data)
        }
    }

    /// Copies rank 0's `data` to every rank.
    pub fn broadcast(&mut self, data: &mut [f32]) -> Result<(), TrainError> {
        let mut bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.broadcast_bytes(&mut bytes)?;
        if self.rank != 0 {
            for (x, b) in data.iter_mut().zip(bytes.chunks_exact(4)) {
                *x = f32::from_le_bytes(b.try_into().expect("4 bytes"));
            }
        }
        Ok(())
    }

    /// Copies rank 0's bytes to every rank (e.g. NCCL's unique id).
    pub fn broadcast_bytes(&mut self, data: &mut [u8]) -> Result<(), TrainError> {
        if self.rank == 0 {
            for peer in 1..self.world {
                self.links[peer - 1]
                    .write_all(data)
                    .map_err(|e| self.lost(peer, "sending to", e))?;
            }
        } else {
            self.links[0]
                .read_exact(data)
                .map_err(|e| self.lost(0, "receiving from", e))?;
        }
        Ok(())
    }

    /// Concatenates every rank's `data` in rank order (the same bits on every rank). Every rank
    /// must pass the same length; a mismatch is an error rather than a hang.
    pub fn all_gather(&mut self, data: &[f32]) -> Result<Vec<f32>, TrainError> {
        let n = data.len();
        let mut out = vec![0f32; n * self.world];
        if self.rank == 0 {
            out[..n].copy_from_slice(data);
            let mut buf = vec![0u8; n * 4];
            for peer in 1..self.world {
                let mut len = [0u8; 8];
                self.links[peer - 1]
                    .read_exact(&mut len)
                    .map_err(|e| self.lost(peer, "receiving from", e))?;
                let theirs = u64::from_le_bytes(len) as usize;
                if theirs != n {
                    return Err(TrainError::Collective(format!(
                        "rank {peer} gathers {theirs} values where rank 0 gathers {n}: the ranks \
                         disagree on the batch (same --batch-size and data on every rank?)"
                    )));
                }
                self.links[peer - 1]
                    .read_exact(&mut buf)
                    .map_err(|e| self.lost(peer, "receiving from", e))?;
                for (x, b) in out[peer * n..(peer + 1) * n]
                    .iter_mut()
                    .zip(buf.chunks_exact(4))
                {
                    *x = f32::from_le_bytes(b.try_into().expect("4 bytes"));
                }
            }
        } else {
            let mut bytes = (n as u64).to_le_bytes().to_vec();
            bytes.extend(data.iter().flat_map(|x| x.to_le_bytes()));
            self.links[0]
                .write_all(&bytes)
                .map_err(|e| self.lost(0, "sending to", e))?;
        }
        self.broadcast(&mut out)?;
        Ok(out)
    }

    /// Checks that every rank holds the same `value` (e.g. a hash of its parameters); an error
    /// names the ranks that differ from rank 0.
    pub fn check_same(&mut self, value: u64, what: &str) -> Result<(), TrainError> {
        let mut verdict = [0u8; 1];
        if self.rank == 0 {
            let mut differ = Vec::new();
            for peer in 1..self.world {
                let mut buf = [0u8; 8];
                self.links[peer - 1]
                    .read_exact(&mut buf)
                    .map_err(|e| self.lost(peer, "receiving from", e))?;
                if u64::from_le_bytes(buf) != value {
                    differ.push(peer);
                }
            }
            verdict[0] = u8::from(!differ.is_empty());
            for peer in 1..self.world {
                self.links[peer - 1]
                    .write_all(&verdict)
                    .map_err(|e| self.lost(peer, "sending to", e))?;
            }
            if !differ.is_empty() {
                return Err(TrainError::Collective(format!(
                    "{what} of rank(s) {differ:?} differ from rank 0's"
                )));
            }
        } else {
            self.links[0]
                .write_all(&value.to_le_bytes())
                .map_err(|e| self.lost(0, "sending to", e))?;
            self.links[0]
                .read_exact(&mut verdict)
                .map_err(|e| self.lost(0, "receiving from", e))?;
            if verdict[0] != 0 {
                return Err(TrainError::Collective(format!(
                    "rank {}: {what} differ from rank 0's",
                    self.rank
                )));
            }
        }
        Ok(())
    }

    /// Waits until every rank has arrived.
    pub fn barrier(&mut self) -> Result<(), TrainError> {
        self.all_reduce_sum(&mut [0.0])
    }
}

fn configure(stream: &TcpStream, timeout: Duration) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))
}

/// Runs `world` copies of this program as ranks 0..world on this machine (the same arguments
/// minus `--nproc-per-node`), with the torchrun variables set; if one fails the others are
/// stopped. Returns the first failure's message.
pub fn launch(world: usize) -> Result<(), TrainError> {
    use std::os::unix::process::CommandExt;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| TrainError::Collective(format!("no free port for the ranks ({e})")))?
        .port();
    let exe = std::env::current_exe().map_err(|e| TrainError::Collective(e.to_string()))?;
    let mut args: Vec<String> = Vec::new();
    let mut skip = false;
    for a in std::env::args().skip(1) {
        if skip {
            skip = false;
            continue;
        }
        if a == "--nproc-per-node" {
            skip = true;
            continue;
        }
        if a.starts_with("--nproc-per-node=") {
            continue;
        }
        args.push(a);
    }
    let mut children = Vec::new();
    for rank in 0..world {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string());
        if rank > 0 {
            cmd.stdout(std::process::Stdio::null());
        }
        // SAFETY: prctl is async-signal-safe; ranks die with the launcher.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        children.push(
            cmd.spawn()
                .map_err(|e| TrainError::Collective(format!("starting rank {rank}: {e}")))?,
        );
    }
    let mut failure: Option<String> = None;
    let mut running: Vec<bool> = vec![true; world];
    while running.iter().any(|&r| r) {
        for (rank, child) in children.iter_mut().enumerate() {
            if !running[rank] {
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                running[rank] = false;
                if !status.success() && failure.is_none() {
                    failure = Some(format!("rank {rank} exited with {status}"));
                    // Give the others a moment to report the lost peer, then stop them.
                    std::thread::sleep(Duration::from_secs(2));
                }
            }
        }
        if failure.is_some() {
            for (rank, child) in children.iter_mut().enumerate() {
                if running[rank] {
                    let _ = child.kill();
                    let _ = child.wait();
                    running[rank] = false;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match failure {
        Some(f) => Err(TrainError::Collective(f)),
        None => Ok(()),
    }
}
