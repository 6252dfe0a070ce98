//! pgoutput: decode the logical replication protocol into committed transactions.
//!
//! [`parse`] turns one XLogData payload into a [`Message`] (Begin, Relation,
//! Insert, ...). [`Decoder`] keeps the relation cache and assembles messages
//! into [`Transaction`]s, handing one on only when its Commit arrives, so
//! nothing of an unfinished (or, after a reconnect, abandoned) transaction
//! ever leaves this module. Malformed input is a [`DecodeError`], never a panic.
//!
//! Message layouts: PostgreSQL docs, "Logical Replication Message Formats"
//! (protocol version 1; we never ask for streaming of in-progress transactions).
//!
//! Memory: changes are charged against a [`TxnMemory`] budget until the
//! pipeline drops their transaction; a transaction that does not fit spills
//! the rest of its changes to a temporary file ([`spill`]).

pub mod spill;
mod value;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::lsn::Lsn;
pub use spill::{Changes, Spilled, TxnMemory};
use spill::{Charge, SpillReader, SpillWriter};
pub use value::{datum_to_json, pg_timestamp, text_to_json};

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message truncated while reading {0}")]
    Truncated(&'static str),
    #[error("unknown message type {0:#04x}")]
    UnknownMessage(u8),
    #[error("unknown tuple column kind {0:#04x}")]
    UnknownColumnKind(u8),
    #[error("expected tuple marker {expected:?}, found {found:#04x}")]
    BadMarker { expected: &'static str, found: u8 },
    #[error("string is not NUL-terminated UTF-8 in {0}")]
    BadString(&'static str),
    #[error("change for relation {0} before its Relation message")]
    UnknownRelation(u32),
    #[error("{0} outside a transaction")]
    OutsideTransaction(&'static str),
    #[error("Begin inside an unfinished transaction")]
    NestedBegin,
    #[error("tuple has {found} columns, relation {relation} has {expected}")]
    ColumnCount { relation: String, expected: usize, found: usize },
    #[error("spilling a large transaction: {0}")]
    Spill(String),
}

/// One column of a relation, as announced by its Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
    /// Part of the replica identity key.
    pub key: bool,
}

/// A table's shape as last announced by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

impl Relation {
    /// Index of the column named `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// One column value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    Null,
    /// A TOASTed value that did not change (only in updates' new tuples).
    Unchanged,
    Text(Bytes),
    Binary(Bytes),
}

impl Datum {
    /// The value as UTF-8 text, when it is text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Datum::Text(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

/// A decoded protocol message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Begin { final_lsn: Lsn, commit_time: i64, xid: u32 },
    Commit { flags: u8, commit_lsn: Lsn, end_lsn: Lsn, commit_time: i64 },
    Origin { lsn: Lsn, name: String },
    Relation(Relation),
    Type { oid: u32, namespace: String, name: String },
    Insert { relation: u32, new: Vec<Datum> },
    Update { relation: u32, old: Option<Vec<Datum>>, key_only: bool, new: Vec<Datum> },
    Delete { relation: u32, old: Vec<Datum>, key_only: bool },
    Truncate { relations: Vec<u32>, options: u8 },
    Message { transactional: bool, lsn: Lsn, prefix: String, content: Bytes },
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(self.u32(what)? as i32)
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(self.u64(what)? as i64)
    }
    fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(self.u64(what)?))
    }
    fn cstr(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let end = self.buf.iter().position(|b| *b == 0).ok_or(DecodeError::BadString(what))?;
        let s = std::str::from_utf8(&self.buf[..end]).map_err(|_| DecodeError::BadString(what))?;
        self.buf = &self.buf[end + 1..];
        Ok(s.to_string())
    }
}

/// Decodes one pgoutput message. `payload` is the XLogData body; values are
/// sliced out of it without copying.
pub fn parse(payload: &Bytes) -> Result<Message, DecodeError> {
    let base = payload.as_ptr() as usize;
    let mut r = Reader { buf: payload };
    let slice = |s: &[u8]| payload.slice(s.as_ptr() as usize - base..s.as_ptr() as usize - base + s.len());
    let tag = r.u8("message type")?;
    let msg = match tag {
        b'B' => Message::Begin {
            final_lsn: r.lsn("begin lsn")?,
            commit_time: r.i64("begin timestamp")?,
            xid: r.u32("begin xid")?,
        },
        b'C' => Message::Commit {
            flags: r.u8("commit flags")?,
            commit_lsn: r.lsn("commit lsn")?,
            end_lsn: r.lsn("commit end lsn")?,
            commit_time: r.i64("commit timestamp")?,
        },
        b'O' => Message::Origin { lsn: r.lsn("origin lsn")?, name: r.cstr("origin name")? },
        b'R' => {
            let oid = r.u32("relation oid")?;
            let namespace = r.cstr("relation namespace")?;
            let name = r.cstr("relation name")?;
            let replica_identity = r.u8("replica identity")?;
            let n = r.u16("column count")?;
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let flags = r.u8("column flags")?;
                columns.push(Column {
                    name: r.cstr("column name")?,
                    type_oid: r.u32("column type")?,
                    type_modifier: r.i32("column type modifier")?,
                    key: flags & 1 == 1,
                });
            }
            Message::Relation(Relation { oid, namespace, name, replica_identity, columns })
        }
        b'Y' => {
            Message::Type { oid: r.u32("type oid")?, namespace: r.cstr("type namespace")?, name: r.cstr("type name")? }
        }
        b'I' => {
            let relation = r.u32("insert relation")?;
            expect_marker(&mut r, b'N', "N")?;
            Message::Insert { relation, new: tuple(&mut r, &slice)? }
        }
        b'U' => {
            let relation = r.u32("update relation")?;
            let mut marker = r.u8("update marker")?;
            let mut old = None;
            let mut key_only = false;
            if marker == b'K' || marker == b'O' {
                key_only = marker == b'K';
                old = Some(tuple(&mut r, &slice)?);
                marker = r.u8("update new marker")?;
            }
            if marker != b'N' {
                return Err(DecodeError::BadMarker { expected: "N", found: marker });
            }
            Message::Update { relation, old, key_only, new: tuple(&mut r, &slice)? }
        }
        b'D' => {
            let relation = r.u32("delete relation")?;
            let marker = r.u8("delete marker")?;
            if marker != b'K' && marker != b'O' {
                return Err(DecodeError::BadMarker { expected: "K or O", found: marker });
            }
            Message::Delete { relation, key_only: marker == b'K', old: tuple(&mut r, &slice)? }
        }
        b'T' => {
            let n = r.u32("truncate count")?;
            let options = r.u8("truncate options")?;
            // Bound the allocation by what the payload can actually hold.
            let mut relations = Vec::with_capacity((n as usize).min(r.buf.len() / 4));
            for _ in 0..n {
                relations.push(r.u32("truncate relation")?);
            }
            Message::Truncate { relations, options }
        }
        b'M' => {
            let flags = r.u8("message flags")?;
            let lsn = r.lsn("message lsn")?;
            let prefix = r.cstr("message prefix")?;
            let len = r.u32("message length")? as usize;
            let content = slice(r.take(len, "message content")?);
            Message::Message { transactional: flags & 1 == 1, lsn, prefix, content }
        }
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    Ok(msg)
}

fn expect_marker(r: &mut Reader<'_>, want: u8, expected: &'static str) -> Result<(), DecodeError> {
    let found = r.u8("tuple marker")?;
    if found != want {
        return Err(DecodeError::BadMarker { expected, found });
    }
    Ok(())
}

fn tuple(r: &mut Reader<'_>, slice: &dyn Fn(&[u8]) -> Bytes) -> Result<Vec<Datum>, DecodeError> {
    let n = r.u16("tuple column count")?;
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let kind = r.u8("column kind")?;
        out.push(match kind {
            b'n' => Datum::Null,
            b'u' => Datum::Unchanged,
            b't' | b'b' => {
                let len = r.u32("column length")? as usize;
                let bytes = slice(r.take(len, "column value")?);
                if kind == b't' {
                    Datum::Text(bytes)
                } else {
                    Datum::Binary(bytes)
                }
            }
            other => return Err(DecodeError::UnknownColumnKind(other)),
        });
    }
    Ok(out)
}

/// A row of a relation, with the relation's shape at the time of the change.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub relation: Arc<Relation>,
    pub values: Vec<Datum>,
}

impl Row {
    /// The value of column `name`, if the relation has it.
    pub fn get(&self, name: &str) -> Option<&Datum> {
        self.relation.column(name).and_then(|i| self.values.get(i))
    }

    /// The row as a JSON object, every column typed by its type OID.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.relation
            .columns
            .iter()
            .zip(&self.values)
            .filter(|(_, d)| **d != Datum::Unchanged)
            .map(|(c, d)| (c.name.clone(), datum_to_json(c.type_oid, d)))
            .collect()
    }
}

/// One change inside a committed transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Insert {
        new: Row,
    },
    /// `old` is the previous row (all columns with REPLICA IDENTITY FULL, key
    /// columns only with the default identity when the key changed).
    Update {
        old: Option<Row>,
        new: Row,
    },
    Delete {
        old: Row,
    },
    Truncate {
        relations: Vec<Arc<Relation>>,
        options: u8,
    },
    Message {
        prefix: String,
        content: Bytes,
    },
}

impl Change {
    /// The relation the change is about (None for truncate and messages).
    pub fn relation(&self) -> Option<&Relation> {
        match self {
            Change::Insert { new } | Change::Update { new, .. } => Some(&new.relation),
            Change::Delete { old } => Some(&old.relation),
            _ => None,
        }
    }
}

/// How many row changes of each kind a transaction holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeCounts {
    pub inserts: u64,
    pub updates: u64,
    pub deletes: u64,
}

impl ChangeCounts {
    pub fn total(&self) -> u64 {
        self.inserts + self.updates + self.deletes
    }
}

/// A committed transaction, complete. Its changes are in `changes` and,
/// when it did not fit the memory budget, in `spilled` after them: take them
/// all, in order, with [`Transaction::into_changes`].
#[derive(Debug, Clone)]
pub struct Transaction {
    pub xid: u32,
    /// LSN of the commit record: the transaction is replayed by the server as
    /// long as the confirmed position is at or before it.
    pub commit_lsn: Lsn,
    /// End of the commit record: confirm this once the transaction is handled.
    pub end_lsn: Lsn,
    pub commit_time: DateTime<Utc>,
    /// The changes held in memory (all of them unless spilled).
    pub changes: Vec<Change>,
    /// The rest, on disk.
    pub spilled: Option<Arc<Spilled>>,
    pub counts: ChangeCounts,
    /// Its share of the memory budget, released when the last clone drops.
    charge: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
}

impl PartialEq for Transaction {
    fn eq(&self, o: &Transaction) -> bool {
        let same_spill = match (&self.spilled, &o.spilled) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        (self.xid, self.commit_lsn, self.end_lsn, self.commit_time, &self.changes, self.counts)
            == (o.xid, o.commit_lsn, o.end_lsn, o.commit_time, &o.changes, o.counts)
            && same_spill
    }
}

impl Transaction {
    fn begin(xid: u32, final_lsn: Lsn, commit_time: i64) -> Transaction {
        Transaction {
            xid,
            commit_lsn: final_lsn,
            end_lsn: final_lsn,
            commit_time: pg_timestamp(commit_time),
            changes: Vec::new(),
            spilled: None,
            counts: ChangeCounts::default(),
            charge: None,
        }
    }

    /// Every change, in order (reading spilled ones back from disk), holding
    /// the transaction's memory charge until the iterator is dropped.
    pub fn into_changes(self) -> Changes {
        Changes { memory: self.changes.into_iter(), spill: self.spilled.map(SpillReader::new), _charge: self.charge }
    }
}

/// The transaction being assembled.
struct Open {
    txn: Transaction,
    charge: Charge,
    spill: Option<SpillWriter>,
}

/// Stateful decoder: relation cache plus the transaction being assembled.
#[derive(Default)]
pub struct Decoder {
    relations: HashMap<u32, Arc<Relation>>,
    open: Option<Open>,
    /// None: unbounded (tests and tools).
    memory: Option<TxnMemory>,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// A decoder whose transactions stay within `memory` (spilling beyond).
    pub fn with_memory(memory: TxnMemory) -> Decoder {
        Decoder { memory: Some(memory), ..Decoder::default() }
    }

    /// True while a Begin has been seen without its Commit.
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// Forgets the transaction being assembled (after a disconnect: the server
    /// will send it again from its Begin). Its charge and spill file go with it.
    pub fn reset(&mut self) {
        self.open = None;
    }

    /// Feeds one XLogData payload. Returns a transaction when this was its Commit.
    pub fn feed(&mut self, payload: &Bytes) -> Result<Option<Transaction>, DecodeError> {
        let msg = parse(payload)?;
        match msg {
            Message::Begin { final_lsn, commit_time, xid } => {
                if self.open.is_some() {
                    return Err(DecodeError::NestedBegin);
                }
                let txn = Transaction::begin(xid, final_lsn, commit_time);
                self.open = Some(Open { txn, charge: Charge::default(), spill: None });
            }
            Message::Commit { commit_lsn, end_lsn, commit_time, .. } => {
                let open = self.open.take().ok_or(DecodeError::OutsideTransaction("Commit"))?;
                let mut txn = open.txn;
                txn.commit_lsn = commit_lsn;
                txn.end_lsn = end_lsn;
                txn.commit_time = pg_timestamp(commit_time);
                txn.charge = open.charge.into_permit().map(Arc::new);
                if let Some(spill) = open.spill {
                    let spilled = spill.finish()?;
                    tracing::info!(
                        xid = txn.xid,
                        changes = txn.counts.total(),
                        spilled_bytes = spilled.bytes(),
                        "large transaction committed; relaying its spilled changes"
                    );
                    txn.spilled = Some(Arc::new(spilled));
                }
                return Ok(Some(txn));
            }
            Message::Origin { .. } | Message::Type { .. } => {}
            Message::Relation(rel) => {
                // A spilling transaction replays its relations from the file.
                if let Some(spill) = self.open.as_mut().and_then(|o| o.spill.as_mut()) {
                    spill.append(payload)?;
                }
                self.relations.insert(rel.oid, Arc::new(rel));
            }
            Message::Message { transactional: false, .. } => {
                // Non-transactional messages arrive on their own; we have no
                // use for them beyond not failing on them.
            }
            change => {
                let open = self.open.as_mut().ok_or(DecodeError::OutsideTransaction(change_name(&change)))?;
                match &change {
                    Message::Insert { .. } => open.txn.counts.inserts += 1,
                    Message::Update { .. } => open.txn.counts.updates += 1,
                    Message::Delete { .. } => open.txn.counts.deletes += 1,
                    _ => {}
                }
                if let Some(spill) = &mut open.spill {
                    return spill.append(payload).map(|()| None);
                }
                let Some(change) = to_change(&self.relations, change)? else { return Ok(None) };
                let cost = payload.len() + 96 + 40 * change_width(&change);
                let fits = match &self.memory {
                    Some(memory) => open.charge.reserve(cost, memory),
                    None => true,
                };
                if fits {
                    open.txn.changes.push(change);
                } else if let Some(memory) = &self.memory {
                    // Over the budget: the rest of this transaction goes to disk.
                    let mut spill = SpillWriter::create(memory, self.relations.clone())?;
                    spill.append(payload)?;
                    tracing::info!(
                        xid = open.txn.xid,
                        in_memory = open.txn.changes.len(),
                        budget_kib = memory.total_kib(),
                        "transaction exceeds the memory budget; spilling the rest to disk"
                    );
                    open.spill = Some(spill);
                }
            }
        }
        Ok(None)
    }

    /// Bytes the open transaction has spilled so far (0 when none).
    pub fn spilled_bytes(&self) -> u64 {
        self.open.as_ref().and_then(|o| o.spill.as_ref()).map_or(0, |s| s.bytes())
    }
}

fn change_name(m: &Message) -> &'static str {
    match m {
        Message::Insert { .. } => "Insert",
        Message::Update { .. } => "Update",
        Message::Delete { .. } => "Delete",
        Message::Truncate { .. } => "Truncate",
        _ => "Message",
    }
}

fn change_width(c: &Change) -> usize {
    match c {
        Change::Insert { new } => new.values.len(),
        Change::Update { old, new } => new.values.len() + old.as_ref().map_or(0, |o| o.values.len()),
        Change::Delete { old } => old.values.len(),
        Change::Truncate { relations, .. } => relations.len(),
        Change::Message { .. } => 1,
    }
}

fn relation(relations: &HashMap<u32, Arc<Relation>>, oid: u32) -> Result<Arc<Relation>, DecodeError> {
    relations.get(&oid).cloned().ok_or(DecodeError::UnknownRelation(oid))
}

fn row(relations: &HashMap<u32, Arc<Relation>>, oid: u32, values: Vec<Datum>) -> Result<Row, DecodeError> {
    let relation = relation(relations, oid)?;
    if values.len() != relation.columns.len() {
        return Err(DecodeError::ColumnCount {
            relation: relation.name.clone(),
            expected: relation.columns.len(),
            found: values.len(),
        });
    }
    Ok(Row { relation, values })
}

/// A change message as a [`Change`], with the relations as they stand
/// (None for messages that are not changes).
fn to_change(relations: &HashMap<u32, Arc<Relation>>, msg: Message) -> Result<Option<Change>, DecodeError> {
    Ok(Some(match msg {
        Message::Insert { relation, new } => Change::Insert { new: row(relations, relation, new)? },
        Message::Update { relation, old, key_only, new } => {
            let old = old.map(|o| row(relations, relation, o)).transpose()?;
            let mut new = row(relations, relation, new)?;
            // Unchanged TOASTed columns: take them from the full old row.
            if let Some(o) = old.as_ref().filter(|_| !key_only) {
                for (n, o) in new.values.iter_mut().zip(&o.values) {
                    if *n == Datum::Unchanged {
                        *n = o.clone();
                    }
                }
            }
            Change::Update { old, new }
        }
        Message::Delete { relation, old, .. } => Change::Delete { old: row(relations, relation, old)? },
        Message::Truncate { relations: oids, options } => {
            let rels = oids.into_iter().map(|oid| relation(relations, oid)).collect::<Result<_, _>>()?;
            Change::Truncate { relations: rels, options }
        }
        Message::Message { transactional: true, prefix, content, .. } => Change::Message { prefix, content },
        _ => return Ok(None),
    }))
}

#[cfg(test)]
pub(crate) mod tests;
