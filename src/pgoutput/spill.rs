//! Transactions of any size in bounded memory.
//!
//! Decoded changes wait in memory from the first one until the pipeline has
//! handled their transaction's commit. [`TxnMemory`] is the budget for all of
//! them together (`CHAT_RELAY_TXN_MEMORY_MB`): the decoder charges each
//! change against it, and the charge travels with the [`Transaction`] until
//! the pipeline drops it. When a transaction cannot get more, the rest of its
//! changes go, as the raw pgoutput messages they came in, to an unnamed
//! temporary file ([`SpillWriter`]); at commit the pipeline reads them back
//! one at a time ([`Changes`]). Postgres's own reorder buffer does the same.
//! The file has no name (O_TMPFILE where the filesystem supports it, else
//! unlinked at once), so it is gone when closed, crash included.
//!
//! [`Transaction`]: super::Transaction

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{parse, to_change, Change, DecodeError, Message, Relation};

/// Charges are taken in steps of this many KiB.
const STEP_KIB: usize = 64;
/// Buffer for writing and reading spill files.
const IO_BUF: usize = 1 << 20;

/// The memory budget for decoded transactions, and where to spill.
#[derive(Clone)]
pub struct TxnMemory {
    sem: Arc<Semaphore>,
    kib: usize,
    dir: Option<PathBuf>,
}

impl std::fmt::Debug for TxnMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TxnMemory({} of {} KiB free, spill in {:?})", self.available_kib(), self.kib, self.dir)
    }
}

impl TxnMemory {
    pub fn new(mib: u32, dir: Option<PathBuf>) -> TxnMemory {
        let kib = (mib as usize).saturating_mul(1024).clamp(STEP_KIB, Semaphore::MAX_PERMITS);
        TxnMemory { sem: Arc::new(Semaphore::new(kib)), kib, dir }
    }

    /// KiB of the budget not charged right now.
    pub fn available_kib(&self) -> usize {
        self.sem.available_permits()
    }

    /// The whole budget, in KiB.
    pub fn total_kib(&self) -> usize {
        self.kib
    }

    fn try_charge(&self, kib: usize) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(kib).ok()?;
        self.sem.clone().try_acquire_many_owned(kib).ok()
    }
}

/// What an open transaction holds of the budget.
#[derive(Default)]
pub(super) struct Charge {
    permit: Option<OwnedSemaphorePermit>,
    /// Bytes the changes in memory are estimated to take.
    used: usize,
}

impl Charge {
    /// Accounts `bytes` more; false when the budget cannot cover them.
    pub(super) fn reserve(&mut self, bytes: usize, memory: &TxnMemory) -> bool {
        let held = self.permit.as_ref().map_or(0, |p| p.num_permits()) * 1024;
        if self.used + bytes > held {
            let short_kib = (self.used + bytes - held).div_ceil(1024);
            let step = short_kib.div_ceil(STEP_KIB) * STEP_KIB;
            match memory.try_charge(step) {
                Some(more) => match &mut self.permit {
                    Some(p) => p.merge(more),
                    None => self.permit = Some(more),
                },
                None => return false,
            }
        }
        self.used += bytes;
        true
    }

    pub(super) fn into_permit(self) -> Option<OwnedSemaphorePermit> {
        self.permit
    }
}

/// A transaction's changes being written to disk.
pub(super) struct SpillWriter {
    out: BufWriter<File>,
    bytes: u64,
    records: u64,
    /// Relations as they stood when spilling began.
    relations: HashMap<u32, Arc<Relation>>,
}

impl SpillWriter {
    pub(super) fn create(
        memory: &TxnMemory,
        relations: HashMap<u32, Arc<Relation>>,
    ) -> Result<SpillWriter, DecodeError> {
        let dir = memory.dir.clone().unwrap_or_else(std::env::temp_dir);
        let file = tempfile::tempfile_in(&dir)
            .map_err(|e| DecodeError::Spill(format!("cannot create a spill file in {}: {e}", dir.display())))?;
        Ok(SpillWriter { out: BufWriter::with_capacity(IO_BUF, file), bytes: 0, records: 0, relations })
    }

    /// Appends one raw pgoutput message.
    pub(super) fn append(&mut self, payload: &[u8]) -> Result<(), DecodeError> {
        let len = u32::try_from(payload.len()).map_err(|_| DecodeError::Spill("message over 4 GiB".into()))?;
        self.out
            .write_all(&len.to_be_bytes())
            .and_then(|()| self.out.write_all(payload))
            .map_err(|e| DecodeError::Spill(format!("writing a spill file: {e}")))?;
        self.bytes += 4 + payload.len() as u64;
        self.records += 1;
        Ok(())
    }

    pub(super) fn finish(self) -> Result<Spilled, DecodeError> {
        let file = self.out.into_inner().map_err(|e| DecodeError::Spill(format!("writing a spill file: {e}")))?;
        Ok(Spilled { file, bytes: self.bytes, records: self.records, relations: self.relations })
    }

    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// A committed transaction's changes on disk, read back in order.
pub struct Spilled {
    file: File,
    bytes: u64,
    records: u64,
    relations: HashMap<u32, Arc<Relation>>,
}

impl Spilled {
    /// Size of the file.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Messages in it (changes, and the Relation messages among them).
    pub fn records(&self) -> u64 {
        self.records
    }
}

impl std::fmt::Debug for Spilled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Spilled({} messages, {} bytes)", self.records, self.bytes)
    }
}

/// Reads a spill file's messages back and decodes them, with the relations
/// as they stood when spilling began and then as the file changes them.
pub(super) struct SpillReader {
    spilled: Arc<Spilled>,
    offset: u64,
    buf: Vec<u8>,
    pos: usize,
    relations: HashMap<u32, Arc<Relation>>,
}

impl SpillReader {
    pub(super) fn new(spilled: Arc<Spilled>) -> SpillReader {
        let relations = spilled.relations.clone();
        SpillReader { spilled, offset: 0, buf: Vec::new(), pos: 0, relations }
    }

    /// Makes `need` bytes available at `pos`; false at the end of the file.
    fn fill(&mut self, need: usize) -> Result<bool, DecodeError> {
        if self.buf.len() - self.pos >= need {
            return Ok(true);
        }
        self.buf.drain(..self.pos);
        self.pos = 0;
        let want = need.max(IO_BUF);
        while self.buf.len() < need {
            let have = self.buf.len();
            self.buf.resize(want, 0);
            let n = self
                .spilled
                .file
                .read_at(&mut self.buf[have..], self.offset)
                .map_err(|e| DecodeError::Spill(format!("reading a spill file: {e}")))?;
            self.buf.truncate(have + n);
            self.offset += n as u64;
            if n == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn next_message(&mut self) -> Result<Option<Bytes>, DecodeError> {
        if !self.fill(4)? {
            return if self.buf.len() == self.pos {
                Ok(None)
            } else {
                Err(DecodeError::Spill("spill file ends inside a message".into()))
            };
        }
        let p = self.pos;
        let len = u32::from_be_bytes([self.buf[p], self.buf[p + 1], self.buf[p + 2], self.buf[p + 3]]) as usize;
        if !self.fill(4 + len)? {
            return Err(DecodeError::Spill("spill file ends inside a message".into()));
        }
        let payload = Bytes::copy_from_slice(&self.buf[self.pos + 4..self.pos + 4 + len]);
        self.pos += 4 + len;
        Ok(Some(payload))
    }
}

impl Iterator for SpillReader {
    type Item = Result<Change, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let payload = match self.next_message() {
                Ok(Some(p)) => p,
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            };
            let msg = match parse(&payload) {
                Ok(m) => m,
                Err(e) => return Some(Err(e)),
            };
            if let Message::Relation(rel) = msg {
                self.relations.insert(rel.oid, Arc::new(rel));
                continue;
            }
            match to_change(&self.relations, msg) {
                Ok(Some(change)) => return Some(Ok(change)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// A transaction's changes, in order: those in memory, then those on disk.
/// Holds the transaction's memory charge until dropped.
pub struct Changes {
    pub(super) memory: std::vec::IntoIter<Change>,
    pub(super) spill: Option<SpillReader>,
    pub(super) _charge: Option<Arc<OwnedSemaphorePermit>>,
}

impl Iterator for Changes {
    type Item = Result<Change, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(c) = self.memory.next() {
            return Some(Ok(c));
        }
        self.spill.as_mut()?.next()
    }
}
