//! The database as the service's threads share it: one writer connection behind a lock, held
//! only for short transactions, and a pool of reader connections that WAL lets run beside it
//! (a listing or a finisher reading a million shards never holds up a lease).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::{Db, DbResult, PLAN_BATCH};
use crate::job::plan::EncodePlan;

/// Reader connections kept open between reads.
const IDLE_READERS: usize = 8;

/// The state database, shared.
pub struct Store {
    path: PathBuf,
    writer: Mutex<Db>,
    readers: Mutex<Vec<Db>>,
}

impl Store {
    /// Opens the database (recovering from an unclean stop; see `Db::open`).
    pub fn open(path: &Path) -> DbResult<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            writer: Mutex::new(Db::open(path)?),
            readers: Mutex::new(Vec::new()),
        })
    }

    /// Runs `f` on the writer connection. Callers keep `f` short: every lease waits for it.
    pub fn write<T>(&self, f: impl FnOnce(&mut Db) -> DbResult<T>) -> DbResult<T> {
        f(&mut self.writer())
    }

    /// The writer, locked (for a caller that releases it between steps).
    pub fn writer(&self) -> MutexGuard<'_, Db> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores an encode plan in batches, the writer released between them: leases go on while
    /// a plan of a million shards is stored.
    pub fn set_planned_encode(&self, id: &str, plan: &EncodePlan) -> DbResult<()> {
        if !self.write(|db| db.begin_plan(id))? {
            return Ok(());
        }
        let pending = super::sorted_pending(plan);
        for batch in plan.shards.chunks(PLAN_BATCH) {
            if !self.write(|db| db.add_planned_shards(id, batch, &pending))? {
                return Ok(()); // Cancelled meanwhile.
            }
        }
        self.write(|db| db.finish_plan(id, plan))
    }

    /// Runs `f` on a reader connection, beside the writer.
    pub fn read<T>(&self, f: impl FnOnce(&Db) -> DbResult<T>) -> DbResult<T> {
        let idle = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let reader = match idle {
            Some(r) => r,
            None => Db::open_reader(&self.path)?,
        };
        let result = f(&reader);
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if readers.len() < IDLE_READERS {
            readers.push(reader);
        }
        result
    }
}
