//! The outbox: every event and job result is kept, on disk, until the
//! master acknowledges it, across reconnects, master restarts and agent
//! restarts.
//!
//! # Send first
//! A batch is sent while its file is written, not after ([`Outbox::stage`]
//! takes it into memory and returns the write, which the link's writer
//! does without the outbox's lock while the session pump sends): the write
//! and the wake of a blocking thread were on the path of every drift event
//! and every job result (BENCHMARKS.md, "Per hop"). What that costs: an
//! agent killed in the tens of microseconds between the send and the
//! rename has sent what it no longer keeps. The master has it (and then
//! acknowledges it, and stores it) unless it died too; a drift event lost
//! that way is found again by the start-up check, a job result is reported
//! unanswered by the master. Nothing acknowledged is lost either way: the
//! master acknowledges only what it has handled. Written first, as before,
//! whenever that order is asked for or may matter: with `outbox_fsync`
//! (durable before it is sent), while anything is held or the disk refused
//! the last write, when the batch would fill the outbox, and when a
//! `statvfs` says the data dir has no room ([`Disk::has_room`]), so that a
//! full disk holds what it cannot write instead of sending it. A staged
//! batch the disk refuses after all stays pending in memory only (sent
//! again on a new session until acknowledged, forgotten by a restart, as
//! held messages are) and the outbox turns unwritable: what follows is
//! held.
//!
//! # Layout on disk, and when it is fsynced
//! `<data_dir>/outbox/` holds one file per *batch* of messages,
//! `<seq>.msg`, where seq (16 hex digits, so names sort in send order) is
//! the sequence number of the batch's first message. A batch (whatever the
//! writer found waiting, up to 256 messages) is written to `<seq>.tmp` and
//! renamed, so a crash leaves either the whole batch or a `.tmp` file,
//! which [`Outbox::open`] removes.
//!
//! # Record format
//! Version 2 (this agent writes it): the file starts with [`MAGIC`] and the
//! version as a u32 little-endian, then records of
//! `[length: u32 LE][checksum: 8 bytes][the message as framed on the wire]`,
//! the checksum being the first 8 bytes of the frame's SHA-256. Version 1
//! (agents before it) has no header and no checksum: records of
//! `[length: u32 LE][frame]`; it is still read. A file of another version
//! (a newer agent's, after a downgrade) is moved aside unread, with an
//! error naming both paths.
//!
//! A record that does not read (checksum, length past the end, a frame that
//! does not decode) is never sent. What it spans is saved to
//! `<data_dir>/outbox.damaged-<unix seconds>-<seq>`, the batch file is
//! rewritten with the records that read, and a warning names both files
//! with the records kept and lost. When the record after a bad one reads
//! (the length was intact: the framing holds), reading goes on from there;
//! otherwise everything from the bad record on is the damaged tail.
//!
//! By default a batch is not fsynced: once written it survives a crash of
//! the agent (the kernel has it) but not a power cut, and it costs tens of
//! microseconds instead of two fsyncs on the path of every drift event. After a power
//! cut the start-up check finds the drift again; what is lost is job
//! results and the reports of drift already healed. With
//! [`Outbox::with_fsync`] (`outbox_fsync: true`) each batch's data and the
//! directory are fsynced before it is sent: one fsync pair per batch, not
//! per message, so a burst costs about what one event costs. A batch's file
//! is unlinked (never fsynced) once every message in it is acknowledged; a
//! delete lost to a power cut, or a batch only partly acknowledged when the
//! agent stops, only means resends, which the master drops by id.
//!
//! # When the disk refuses a batch (full, read-only, out of inodes)
//! That is a state, not a loss. The batch is *held* in memory, in order,
//! and every later message queues behind it; held messages are not sent
//! (what is sent is what is on disk, so a restart never sends less than
//! the master saw). The writer retries ([`Outbox::retry`]) with a backoff,
//! and on the first success everything held is written as one batch, then
//! sent, in order. Entering the state is said once: a warning naming the
//! file and the error, and the event `halite/agent/<id>/outbox/unwritable`
//! (`{error, held}`); leaving it once: an info line and
//! `halite/agent/<id>/outbox/writable` (`{written}`). These two notices
//! are not written to disk (they could not be); they are sent at once and
//! forgotten by a restart. At most [`HELD_CAPACITY`] messages are held;
//! beyond, new events are refused as when the outbox is full (below). The
//! held messages of an agent that stops before the disk recovers are lost,
//! with a warning; the start-up check finds their drift again.
//!
//! # When full
//! The outbox holds at most `capacity` messages (held ones included). Then:
//! - a new **event** is refused and counted: the oldest events are kept.
//!   A sender that asked for a [`Receipt`] learns of the refusal: the file
//!   beacon reports the drift again later, since the report never left;
//! - a new **job result** takes the place of the newest pending event
//!   (counted as dropped), because a job's result is asked for and cannot be
//!   found again; only an outbox full of results drops a result;
//! - once an acknowledgement makes room, one event
//!   `halite/agent/<id>/outbox/dropped` with `{count, capacity}` says how
//!   many were dropped. The count lives in memory: an agent restart
//!   forgets it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use halite_proto::{AgentMessage, Event, Id, Sha256, Value};

/// Messages kept at most (events and job results together). At a few
/// hundred bytes each this is a few MiB of disk and memory.
pub const CAPACITY: usize = 10_000;
/// Messages held in memory at most while the disk refuses batches (a few
/// hundred KiB). When full, new events are refused (see the module docs).
pub const HELD_CAPACITY: usize = 1_000;
/// Receipts waiting for the writer at most (one per drift report in
/// flight). When full, a new receipt is not tracked and reads as stored.
pub const RECEIPTS_CAPACITY: usize = 4_096;
/// The first bytes of a batch file from version 2 on. Read as a version 1
/// record's length it is over 1 GB, more than a frame may be
/// ([`halite_proto::MAX_FRAME_BYTES`]), so the formats cannot be confused.
pub const MAGIC: [u8; 4] = *b"HLOB";
/// The record format this agent writes.
pub const FORMAT_VERSION: u32 = 2;
/// [`MAGIC`] and the version.
const HEADER_BYTES: usize = 8;
/// The checksum's length: the first bytes of the frame's SHA-256.
const CHECKSUM_BYTES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutboxError + '_ {
    move |source| OutboxError::Io { path: path.to_path_buf(), source }
}

/// What the master acknowledges a message by: an event's id or a result's
/// job id. `None` for messages that are not kept (pings, hellos).
pub fn key_of(message: &AgentMessage) -> Option<Id> {
    match message {
        AgentMessage::Event(event) => Some(event.id),
        AgentMessage::JobResult(result) => Some(result.job),
        AgentMessage::Inventory(inventory) => Some(inventory.id),
        // The link makes batches from single events as it sends; the
        // outbox keeps events one by one.
        AgentMessage::Hello(_) | AgentMessage::Ping | AgentMessage::Events(_) => None,
    }
}

fn is_event(message: &AgentMessage) -> bool {
    matches!(message, AgentMessage::Event(_))
}

/// Where batch files go: the file system, or in tests one that refuses
/// batches on demand (a full disk without filling one).
pub trait Disk: Send + Sync + std::fmt::Debug {
    /// Writes `bytes` to `temp` and renames it to `path` in `dir`; with
    /// `fsync`, the data and the directory are made durable first. A
    /// failure leaves no `temp` behind.
    fn write_batch(&self, dir: &Path, temp: &Path, path: &Path, bytes: &[u8], fsync: bool) -> std::io::Result<()>;

    /// Is there room in `dir` for `bytes` more, as far as one cheap look
    /// tells (no write)? A batch is sent before it is written only then
    /// ([`Outbox::stage`]); otherwise it is written first, and held if the
    /// disk refuses it.
    fn has_room(&self, _dir: &Path, _bytes: usize) -> bool {
        true
    }
}

/// The real disk.
#[derive(Debug)]
pub struct FileSystem;

impl Disk for FileSystem {
    fn write_batch(&self, dir: &Path, temp: &Path, path: &Path, bytes: &[u8], fsync: bool) -> std::io::Result<()> {
        let written = (|| {
            let mut file = std::fs::File::create(temp)?;
            file.write_all(bytes)?;
            if fsync {
                file.sync_data()?;
            }
            std::fs::rename(temp, path)?;
            if fsync {
                // The rename is durable once the directory is.
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(temp);
        }
        written
    }

    fn has_room(&self, dir: &Path, bytes: usize) -> bool {
        // A `statvfs`: no I/O. The margin covers the file's metadata and
        // what other writers take meanwhile.
        const MARGIN: u64 = 256 * 1024;
        match nix::sys::statvfs::statvfs(dir) {
            Ok(fs) => {
                let free = fs.blocks_available().saturating_mul(fs.fragment_size());
                !fs.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY)
                    && fs.files_available() > 0
                    && free >= MARGIN.saturating_add(bytes as u64)
            }
            Err(_) => false,
        }
    }
}

/// What became of an event whose sender asked for a [`Receipt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// In the outbox: on disk, or held in memory until the disk takes it.
    Stored,
    /// Not kept (the outbox, or its memory for a refusing disk, is full):
    /// it will never be sent.
    Refused,
}

const WAITING: u8 = 0;
const STORED: u8 = 1;
const REFUSED: u8 = 2;

/// The receipts waiting for the outbox writer, by event id. Shared by the
/// senders that ask (the file beacon, for its drift reports) and the
/// outbox, which settles each as it stores or refuses the event. An event
/// that never reaches the writer (the agent stops) leaves its receipt
/// waiting; bounded by [`RECEIPTS_CAPACITY`].
#[derive(Debug, Clone, Default)]
pub struct Receipts {
    waiting: Arc<Mutex<HashMap<Id, Arc<AtomicU8>>>>,
}

/// One event's receipt: what the outbox did with it, once it has.
#[derive(Debug, Clone)]
pub struct Receipt {
    outcome: Arc<AtomicU8>,
}

impl Receipts {
    /// A receipt for the event `id`; ask before sending it.
    pub fn expect(&self, id: Id) -> Receipt {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if waiting.len() >= RECEIPTS_CAPACITY && !waiting.contains_key(&id) {
            return Receipt { outcome: Arc::new(AtomicU8::new(STORED)) };
        }
        Receipt { outcome: waiting.entry(id).or_insert_with(|| Arc::new(AtomicU8::new(WAITING))).clone() }
    }

    /// Receipts waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub(crate) fn settle(&self, outcomes: impl IntoIterator<Item = (Id, Outcome)>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if waiting.is_empty() {
            return;
        }
        for (id, outcome) in outcomes {
            if let Some(cell) = waiting.remove(&id) {
                cell.store(if outcome == Outcome::Stored { STORED } else { REFUSED }, Ordering::Release);
            }
        }
    }
}

impl Receipt {
    /// `None` while the outbox has not had the event yet.
    pub fn outcome(&self) -> Option<Outcome> {
        match self.outcome.load(Ordering::Acquire) {
            STORED => Some(Outcome::Stored),
            REFUSED => Some(Outcome::Refused),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    capacity: usize,
    /// The agent id, for the counter and notice events' tags.
    agent: String,
    next_seq: u64,
    /// Pending messages in send order, with the batch file each is in;
    /// `None` for a notice about the outbox itself, kept in memory only.
    entries: BTreeMap<u64, (AgentMessage, Option<u64>)>,
    /// Acknowledgement key → seq.
    by_key: HashMap<Id, u64>,
    /// Batch file (its first seq) → its messages still pending.
    files: HashMap<u64, usize>,
    /// Messages dropped since the last counter event.
    dropped: u64,
    /// Fsync each batch and the directory (`outbox_fsync` in agent.yaml).
    fsync: bool,
    /// Messages the disk refused, oldest first; written (then sent) on the
    /// first retry that succeeds.
    held: VecDeque<AgentMessage>,
    /// How many may be held ([`HELD_CAPACITY`]; smaller in tests).
    held_capacity: usize,
    /// Why the last write failed, while the disk refuses batches.
    unwritable: Option<String>,
    disk: Arc<dyn Disk>,
    /// Settled as events are stored or refused.
    receipts: Receipts,
}

/// A batch file as read: the messages that read, and the byte ranges of
/// what did not (each at least one record).
#[derive(Debug, Default)]
struct Parsed {
    messages: Vec<AgentMessage>,
    damaged: Vec<Range<usize>>,
}

impl Outbox {
    /// Fsync every batch (and the directory after its rename) before it is
    /// sent: durable against a power cut, at the cost of two fsyncs on the
    /// path of every event. Without it a batch survives a crash of the agent
    /// (it is in the page cache) but not of the machine.
    pub fn with_fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    /// Settles `receipts` as events are stored or refused.
    pub fn with_receipts(mut self, receipts: Receipts) -> Self {
        self.receipts = receipts;
        self
    }

    /// Writes batches through `disk` instead of the file system.
    pub fn with_disk(mut self, disk: Box<dyn Disk>) -> Self {
        self.disk = Arc::from(disk);
        self
    }

    /// Holds at most `held` messages while the disk refuses batches.
    pub fn with_held_capacity(mut self, held: usize) -> Self {
        self.held_capacity = held.max(1);
        self
    }

    /// Opens (or creates) the outbox in `dir`, loading what an earlier run
    /// left unacknowledged. Leftover temporary files are removed; damaged
    /// records and files of an unknown format are moved aside to the data
    /// dir (the parent of `dir`), with a warning naming both files.
    pub fn open(dir: &Path, agent: &str, capacity: usize) -> Result<Outbox, OutboxError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut outbox = Outbox {
            dir: dir.to_path_buf(),
            capacity: capacity.max(1),
            agent: agent.to_owned(),
            next_seq: 0,
            entries: BTreeMap::new(),
            by_key: HashMap::new(),
            files: HashMap::new(),
            dropped: 0,
            fsync: false,
            held: VecDeque::new(),
            held_capacity: HELD_CAPACITY,
            unwritable: None,
            disk: Arc::new(FileSystem),
            receipts: Receipts::default(),
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io(dir))?;
        paths.sort();
        for path in paths {
            let first = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".msg"))
                .and_then(|s| u64::from_str_radix(s, 16).ok());
            let Some(first) = first else {
                tracing::warn!(path = %path.display(), "Removing a partial outbox file (a write cut short).");
                let _ = std::fs::remove_file(&path);
                continue;
            };
            let parsed = match std::fs::read(&path).map(|bytes| (parse(&bytes), bytes)) {
                Ok((Ok(parsed), bytes)) => {
                    if !parsed.damaged.is_empty() {
                        outbox.quarantine(&path, first, &bytes, &parsed);
                    }
                    parsed
                }
                Ok((Err(version), _)) => {
                    let aside = outbox.aside(first);
                    let moved = std::fs::rename(&path, &aside);
                    tracing::error!(
                        path = %path.display(), quarantine = %aside.display(), version, moved = moved.is_ok(),
                        "An outbox file in a format this agent does not know (written by a newer agent?) is moved aside, not sent; run that agent again to send it, or delete the file."
                    );
                    continue;
                }
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "Cannot read an outbox file; it stays where it is and is not sent.");
                    outbox.next_seq = outbox.next_seq.max(first + 1);
                    continue;
                }
            };
            if parsed.messages.is_empty() {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            outbox.files.insert(first, parsed.messages.len());
            for (seq, message) in (first..).zip(parsed.messages) {
                outbox.next_seq = outbox.next_seq.max(seq + 1);
                if let Some(key) = key_of(&message) {
                    outbox.by_key.insert(key, seq);
                }
                outbox.entries.insert(seq, (message, Some(first)));
            }
        }
        if !outbox.entries.is_empty() {
            tracing::info!(pending = outbox.entries.len(), path = %dir.display(), "Outbox holds messages from an earlier run; they are sent once the master is reached.");
        }
        Ok(outbox)
    }

    /// Where the damaged part of the batch file `first` is saved: in the
    /// data dir, beside the outbox, so the outbox only ever holds batches.
    fn aside(&self, first: u64) -> PathBuf {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let name = format!("outbox.damaged-{secs}-{first:016x}");
        let data = self.dir.parent().unwrap_or(&self.dir);
        // Two starts within a second that both find damage keep both.
        std::iter::once(data.join(&name))
            .chain((1..1000).map(|n| data.join(format!("{name}.{n}"))))
            .find(|path| !path.exists())
            .unwrap_or_else(|| data.join(name))
    }

    /// Saves the damaged records of the batch file `path` aside and
    /// rewrites it with the records that read.
    fn quarantine(&self, path: &Path, first: u64, bytes: &[u8], parsed: &Parsed) {
        let (kept, lost) = (parsed.messages.len(), parsed.damaged.len());
        let aside = self.aside(first);
        let damaged: Vec<u8> = parsed.damaged.iter().flat_map(|range| &bytes[range.clone()]).copied().collect();
        if let Err(error) = std::fs::write(&aside, damaged) {
            tracing::warn!(
                path = %path.display(), quarantine = %aside.display(), %error, kept, lost,
                "A damaged outbox file: the records that read are sent; the damaged ones cannot be saved aside, so they stay in it (and are never sent)."
            );
            return;
        }
        let rewritten = if kept == 0 {
            std::fs::remove_file(path)
        } else {
            let temp = path.with_extension("tmp");
            self.disk.write_batch(&self.dir, &temp, path, &encode_batch(&parsed.messages), self.fsync)
        };
        tracing::warn!(
            path = %path.display(), quarantine = %aside.display(), kept, lost, rewritten = rewritten.is_ok(),
            "A damaged outbox file: the records that read are kept and sent; the damaged ones (at least `lost` records) are saved aside and never sent."
        );
    }

    /// Messages pending: on disk and not acknowledged, or held in memory.
    pub fn len(&self) -> usize {
        self.entries.len() + self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Dropped since the last counter event.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Messages held in memory because the disk refused them: while there
    /// are any, the writer retries.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Every pending message that may be sent (not the held), oldest first.
    pub fn pending(&self) -> Vec<AgentMessage> {
        self.entries.values().map(|(m, _)| m.clone()).collect()
    }

    /// Pending messages after `seq` (all of them for `None`), oldest first,
    /// with their sequence numbers: what a session has yet to send.
    pub fn pending_after(&self, seq: Option<u64>) -> Vec<(u64, AgentMessage)> {
        let from = seq.map_or(0, |s| s + 1);
        self.entries.range(from..).map(|(s, (m, _))| (*s, m.clone())).collect()
    }

    /// Stores `messages` (in order) as one batch, behind anything held;
    /// returns how many were kept (written, or held while the disk refuses
    /// them). See the module docs for what is dropped when full. Messages
    /// without an acknowledgement key (pings) are not kept.
    pub fn push(&mut self, messages: Vec<AgentMessage>) -> usize {
        let mut batch: Vec<AgentMessage> = Vec::with_capacity(messages.len());
        let mut refused: Vec<Id> = Vec::new();
        for message in messages.into_iter().filter(|m| key_of(m).is_some()) {
            if self.is_full(batch.len()) {
                self.dropped += 1;
                if is_event(&message) {
                    if self.dropped.is_power_of_two() {
                        tracing::warn!(
                            dropped = self.dropped,
                            capacity = self.capacity,
                            held = self.held.len(),
                            "Outbox full; refusing new events."
                        );
                    }
                    refused.extend(key_of(&message));
                    continue;
                }
                if let Some(index) = batch.iter().rposition(is_event) {
                    refused.extend(key_of(&batch.remove(index)));
                } else if !self.evict_newest_event() {
                    tracing::warn!(dropped = self.dropped, "Outbox full of job results; dropping one.");
                    continue;
                }
            }
            batch.push(message);
        }
        let mut stored: Vec<Id> = batch.iter().filter_map(key_of).collect();
        self.held.extend(batch);
        self.flush_held();
        // A first refusal may leave more held than the bound allows.
        while self.unwritable.is_some() && self.held.len() > self.held_capacity {
            let Some(index) = self.held.iter().rposition(is_event) else { break };
            let Some(key) = self.held.remove(index).as_ref().and_then(key_of) else { break };
            self.dropped += 1;
            stored.retain(|k| *k != key);
            refused.push(key);
        }
        let kept = stored.len();
        self.receipts.settle(
            stored.into_iter().map(|k| (k, Outcome::Stored)).chain(refused.into_iter().map(|k| (k, Outcome::Refused))),
        );
        kept
    }

    /// Send first: takes `messages` (in order) as one batch into the
    /// pending messages in memory, at once and without I/O, and returns the
    /// batch's file to write ([`Staged::write`], with no lock on the
    /// outbox) while the link sends them; then [`Outbox::staged_written`].
    /// Only where nothing could be refused or held and the batch is not
    /// to be fsynced first (see the module docs); otherwise the messages
    /// come back, for [`Outbox::push`]. `Ok(None)`: nothing to keep.
    pub fn stage(&mut self, messages: Vec<AgentMessage>) -> Result<Option<Staged>, Vec<AgentMessage>> {
        if self.fsync || !self.held.is_empty() || self.unwritable.is_some() || self.is_full(messages.len()) {
            return Err(messages);
        }
        let batch: Vec<AgentMessage> = messages.into_iter().filter(|m| key_of(m).is_some()).collect();
        if batch.is_empty() {
            return Ok(None);
        }
        let bytes = encode_batch(&batch);
        if !self.disk.has_room(&self.dir, bytes.len()) {
            return Err(batch);
        }
        let first = self.next_seq;
        let staged = Staged {
            first,
            bytes,
            dir: self.dir.clone(),
            temp: self.path(first, "tmp"),
            path: self.path(first, "msg"),
            disk: self.disk.clone(),
        };
        self.files.insert(first, batch.len());
        let mut stored = Vec::with_capacity(batch.len());
        for (seq, message) in (first..).zip(batch) {
            if let Some(key) = key_of(&message) {
                self.by_key.insert(key, seq);
                stored.push((key, Outcome::Stored));
            }
            self.entries.insert(seq, (message, Some(first)));
            self.next_seq = seq + 1;
        }
        self.receipts.settle(stored);
        Ok(Some(staged))
    }

    /// The staged batch `first` was written (`Ok`) or the disk refused it:
    /// then its messages, sent already, stay pending in memory only (sent
    /// again on a new session until acknowledged; a restart forgets them,
    /// as it forgets held ones), and the outbox is unwritable until a
    /// write succeeds: later messages are held, not sent.
    pub fn staged_written(&mut self, first: u64, written: std::io::Result<()>) {
        let Err(error) = written else { return };
        self.files.remove(&first);
        for (_, file) in self.entries.values_mut() {
            if *file == Some(first) {
                *file = None;
            }
        }
        if self.unwritable.is_none() {
            tracing::warn!(
                path = %self.path(first, "msg").display(), %error, capacity = self.held_capacity,
                "Cannot write to the outbox; a batch already sent is kept in memory, and what follows is held in memory and retried. Free space in the data dir."
            );
            self.notice("unwritable", Value::map().with("error", error.to_string()).with("held", 0i64));
            self.unwritable = Some(error.to_string());
        }
    }

    /// Tries again to write what is held; returns whether some is still
    /// held (the disk still refuses it).
    pub fn retry(&mut self) -> bool {
        self.flush_held();
        !self.held.is_empty()
    }

    /// Would `batch` more messages overflow the outbox, or the memory that
    /// holds what the disk refuses?
    fn is_full(&self, batch: usize) -> bool {
        self.entries.len() + self.held.len() + batch >= self.capacity
            || (self.unwritable.is_some() && self.held.len() + batch >= self.held_capacity)
    }

    /// Writes everything held as one batch; on failure keeps holding it,
    /// and says so when the state begins and when it ends.
    fn flush_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let first = self.next_seq;
        let (temp, path) = (self.path(first, "tmp"), self.path(first, "msg"));
        let bytes = encode_batch(self.held.iter());
        match self.disk.write_batch(&self.dir, &temp, &path, &bytes, self.fsync) {
            Ok(()) => {
                let kept = self.held.len();
                self.files.insert(first, kept);
                for (seq, message) in (first..).zip(self.held.drain(..)) {
                    if let Some(key) = key_of(&message) {
                        self.by_key.insert(key, seq);
                    }
                    self.entries.insert(seq, (message, Some(first)));
                }
                self.next_seq = first + kept as u64;
                if self.unwritable.take().is_some() {
                    tracing::info!(path = %self.dir.display(), written = kept, "The outbox can write again; what it held is written and sent, in order.");
                    self.notice("writable", Value::map().with("written", i64::try_from(kept).unwrap_or(i64::MAX)));
                }
            }
            Err(error) if self.unwritable.is_none() => {
                let held = i64::try_from(self.held.len()).unwrap_or(i64::MAX);
                tracing::warn!(
                    path = %path.display(), %error, held, capacity = self.held_capacity,
                    "Cannot write to the outbox; holding messages in memory and retrying. They are sent once written; free space in the data dir."
                );
                self.notice("unwritable", Value::map().with("error", error.to_string()).with("held", held));
                self.unwritable = Some(error.to_string());
            }
            Err(_) => {}
        }
    }

    /// A notice about the outbox itself: sent at once, never written (the
    /// disk may be what it is about), forgotten by a restart.
    fn notice(&mut self, what: &str, data: Value) {
        let event = Event::new(format!("halite/agent/{}/outbox/{what}", self.agent), self.agent.as_str(), data);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_key.insert(event.id, seq);
        self.entries.insert(seq, (AgentMessage::Event(event), None));
    }

    /// Forgets the acknowledged message; returns false when it was not
    /// pending (a duplicate ack).
    pub fn ack(&mut self, key: Id) -> bool {
        match self.by_key.get(&key).copied() {
            Some(seq) => {
                self.forget(seq);
                true
            }
            None => false,
        }
    }

    /// The counter event, once there is room and something was dropped;
    /// the count starts again from zero. The caller pushes it.
    pub fn take_counter(&mut self) -> Option<AgentMessage> {
        if self.dropped == 0 || self.is_full(0) {
            return None;
        }
        let count = i64::try_from(std::mem::take(&mut self.dropped)).unwrap_or(i64::MAX);
        let tag = format!("halite/agent/{}/outbox/dropped", self.agent);
        Some(AgentMessage::Event(Event::new(
            tag,
            self.agent.as_str(),
            Value::map().with("count", count).with("capacity", i64::try_from(self.capacity).unwrap_or(i64::MAX)),
        )))
    }

    /// Drops the newest pending event (held first: they are the newest)
    /// for a job result's sake; false when there is none.
    fn evict_newest_event(&mut self) -> bool {
        if let Some(index) = self.held.iter().rposition(is_event) {
            self.held.remove(index);
            return true;
        }
        let newest = self.entries.iter().rev().find(|(_, (m, _))| is_event(m)).map(|(seq, _)| *seq);
        newest.map(|seq| self.forget(seq)).is_some()
    }

    /// Drops a pending message; its batch file goes with its last message.
    fn forget(&mut self, seq: u64) {
        let Some((message, file)) = self.entries.remove(&seq) else { return };
        if let Some(key) = key_of(&message) {
            self.by_key.remove(&key);
        }
        let Some(file) = file else { return };
        let remaining = self.files.get_mut(&file).map(|n| {
            *n = n.saturating_sub(1);
            *n
        });
        if remaining == Some(0) {
            self.files.remove(&file);
            let path = self.path(file, "msg");
            if let Err(error) = std::fs::remove_file(&path)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), %error, "Cannot remove an acknowledged outbox file; its messages may be sent again.");
            }
        }
    }

    fn path(&self, seq: u64, extension: &str) -> PathBuf {
        self.dir.join(format!("{seq:016x}.{extension}"))
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if !self.held.is_empty() {
            tracing::warn!(
                held = self.held.len(), path = %self.dir.display(), error = self.unwritable.as_deref().unwrap_or(""),
                "Stopping with messages the outbox could not write; they are lost (the start-up check finds drift again)."
            );
        }
    }
}

/// A batch taken by [`Outbox::stage`]: in the outbox's memory (and being
/// sent), its file not written yet.
#[derive(Debug)]
pub struct Staged {
    first: u64,
    bytes: Vec<u8>,
    dir: PathBuf,
    temp: PathBuf,
    path: PathBuf,
    disk: Arc<dyn Disk>,
}

impl Staged {
    /// The batch's first sequence number, for [`Outbox::staged_written`].
    pub fn first(&self) -> u64 {
        self.first
    }

    /// Writes the batch's file (renamed into place, not fsynced).
    pub fn write(&self) -> std::io::Result<()> {
        self.disk.write_batch(&self.dir, &self.temp, &self.path, &self.bytes, false)
    }
}

/// The messages of a batch file's bytes that read, in any format this
/// agent knows; nothing is changed. For tools and tests that look into a
/// running agent's outbox.
pub fn read_batch(bytes: &[u8]) -> Vec<AgentMessage> {
    parse(bytes).map(|parsed| parsed.messages).unwrap_or_default()
}

/// The checksum of a record: the first bytes of its frame's SHA-256.
fn checksum(frame: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let mut sum = [0; CHECKSUM_BYTES];
    sum.copy_from_slice(&Sha256::of(frame).0[..CHECKSUM_BYTES]);
    sum
}

/// A batch file's bytes in the current format.
fn encode_batch<'a>(messages: impl IntoIterator<Item = &'a AgentMessage>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1024);
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    for message in messages {
        let frame = halite_proto::encode(message);
        let length = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        bytes.extend_from_slice(&length.to_le_bytes());
        bytes.extend_from_slice(&checksum(&frame));
        bytes.extend_from_slice(&frame);
    }
    bytes
}

/// A batch file's messages and damage, in whichever format it was
/// written; `Err(version)` for a format this agent does not know.
fn parse(bytes: &[u8]) -> Result<Parsed, u32> {
    if bytes.first_chunk::<4>() != Some(&MAGIC) {
        return Ok(parse_v1(bytes));
    }
    match bytes.get(4..HEADER_BYTES).and_then(|v| v.first_chunk::<4>()).map(|v| u32::from_le_bytes(*v)) {
        Some(FORMAT_VERSION) => Ok(parse_v2(bytes)),
        Some(version) => Err(version),
        // Cut short within the header.
        None => Ok(Parsed { messages: Vec::new(), damaged: std::iter::once(0..bytes.len()).collect() }),
    }
}

/// Version 1: no checksum, so the first record that does not read ends
/// what is trusted; the rest is the damaged tail.
fn parse_v1(bytes: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    let mut at = 0;
    while at < bytes.len() {
        let record = bytes[at..].split_first_chunk::<4>().and_then(|(length, rest)| {
            let length = u32::from_le_bytes(*length) as usize;
            let message = halite_proto::decode::<AgentMessage>(rest.get(..length)?).ok()?;
            key_of(&message).is_some().then_some((message, at + 4 + length))
        });
        let Some((message, end)) = record else {
            parsed.damaged.push(at..bytes.len());
            break;
        };
        parsed.messages.push(message);
        at = end;
    }
    parsed
}

/// Version 2: a record whose checksum fails is skipped when the record
/// after it reads (the length held), else it starts the damaged tail.
fn parse_v2(bytes: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    let mut at = HEADER_BYTES;
    while at < bytes.len() {
        match record_v2(bytes, at) {
            Ok((message, end)) => {
                parsed.messages.push(message);
                at = end;
            }
            Err(Some(end)) if end == bytes.len() || record_v2(bytes, end).is_ok() => {
                parsed.damaged.push(at..end);
                at = end;
            }
            Err(_) => {
                parsed.damaged.push(at..bytes.len());
                break;
            }
        }
    }
    parsed
}

/// The version 2 record at `at` and where the next begins; when it does not
/// read, where it claims to end if that is within the file.
fn record_v2(bytes: &[u8], at: usize) -> Result<(AgentMessage, usize), Option<usize>> {
    let (length, rest) = bytes[at..].split_first_chunk::<4>().ok_or(None)?;
    let length = u32::from_le_bytes(*length) as usize;
    let (sum, rest) = rest.split_first_chunk::<CHECKSUM_BYTES>().ok_or(None)?;
    let frame = rest.get(..length).ok_or(None)?;
    let end = at + 4 + CHECKSUM_BYTES + length;
    if checksum(frame) != *sum {
        return Err(Some(end));
    }
    match halite_proto::decode::<AgentMessage>(frame) {
        Ok(message) if key_of(&message).is_some() => Ok((message, end)),
        _ => Err(Some(end)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_proto::JobResult;
    use std::sync::atomic::AtomicBool;

    fn event(n: i64) -> AgentMessage {
        AgentMessage::Event(Event::new("halite/beacon/a/x", "a", Value::map().with("n", n)))
    }

    fn result() -> AgentMessage {
        AgentMessage::JobResult(JobResult { job: Id::new(), results: Vec::new() })
    }

    fn n_of(message: &AgentMessage) -> Option<i64> {
        match message {
            AgentMessage::Event(e) => match e.data.get("n") {
                Some(Value::Int(n)) => Some(*n),
                _ => None,
            },
            _ => None,
        }
    }

    fn ns(outbox: &Outbox) -> Vec<i64> {
        outbox.pending().iter().filter_map(n_of).collect()
    }

    fn tags(outbox: &Outbox) -> Vec<String> {
        outbox
            .pending()
            .iter()
            .map(|m| match m {
                AgentMessage::Event(e) => match n_of(m) {
                    Some(n) => n.to_string(),
                    None => e.tag.clone(),
                },
                _ => "result".into(),
            })
            .collect()
    }

    fn msg_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "msg"))
            .collect();
        files.sort();
        files
    }

    /// The files saved aside in the data dir (the outbox's parent).
    fn quarantined(data: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(data)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("outbox.damaged-")))
            .collect();
        files.sort();
        files
    }

    fn key_of_n(outbox: &Outbox, n: i64) -> Id {
        outbox.pending().iter().find(|m| n_of(m) == Some(n)).and_then(key_of).unwrap()
    }

    /// A data dir with an outbox of three events in one batch file; the
    /// file's bytes and the offsets where each record starts.
    fn three_in_one_file() -> (tempfile::TempDir, PathBuf, Vec<u8>, Vec<usize>) {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("outbox");
        let mut outbox = Outbox::open(&dir, "a", 100).unwrap();
        assert_eq!(outbox.push((0..3).map(event).collect()), 3);
        let file = msg_files(&dir).pop().unwrap();
        let bytes = std::fs::read(&file).unwrap();
        let mut starts = vec![HEADER_BYTES];
        while let Ok((_, end)) = record_v2(&bytes, *starts.last().unwrap()) {
            starts.push(end);
        }
        assert_eq!(starts.pop(), Some(bytes.len()));
        assert_eq!(starts.len(), 3);
        (data, file, bytes, starts)
    }

    #[test]
    fn records_round_trip_with_a_versioned_header_and_checksums() {
        let messages = vec![event(0), result(), event(2)];
        let bytes = encode_batch(&messages);
        assert_eq!(&bytes[..4], &MAGIC);
        assert_eq!(bytes[4..8], FORMAT_VERSION.to_le_bytes());
        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed.messages, messages);
        assert!(parsed.damaged.is_empty());
        // Every single flipped bit in a record is caught.
        for bit in (HEADER_BYTES * 8..bytes.len() * 8).step_by(7) {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let parsed = parse(&flipped).unwrap();
            assert!(!parsed.damaged.is_empty(), "bit {bit} went unnoticed");
            assert!(parsed.messages.iter().all(|m| messages.contains(m)), "bit {bit}: a message that was never sent");
        }
    }

    #[test]
    fn a_version_1_outbox_is_still_read() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("outbox");
        std::fs::create_dir_all(&dir).unwrap();
        let mut v1 = Vec::new();
        for message in [event(0), event(1)] {
            let frame = halite_proto::encode(&message);
            v1.extend_from_slice(&u32::try_from(frame.len()).unwrap().to_le_bytes());
            v1.extend_from_slice(&frame);
        }
        std::fs::write(dir.join("0000000000000007.msg"), &v1).unwrap();
        let mut outbox = Outbox::open(&dir, "a", 100).unwrap();
        assert_eq!(ns(&outbox), vec![0, 1]);
        assert!(quarantined(data.path()).is_empty());
        // New batches go after it, in the new format.
        outbox.push(vec![event(2)]);
        assert_eq!(outbox.pending_after(None).iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![7, 8, 9]);
        assert_eq!(std::fs::read(msg_files(&dir).pop().unwrap()).unwrap()[..4], MAGIC);
        // A version 1 file cut short keeps what reads.
        std::fs::write(dir.join("0000000000000007.msg"), &v1[..v1.len() - 1]).unwrap();
        drop(outbox);
        let reopened = Outbox::open(&dir, "a", 100).unwrap();
        assert_eq!(ns(&reopened), vec![0, 2]);
        assert_eq!(quarantined(data.path()).len(), 1);
    }

    #[test]
    fn a_flipped_bit_in_a_record_quarantines_only_that_record() {
        let (data, file, mut bytes, starts) = three_in_one_file();
        // A bit of the second record's frame.
        bytes[starts[1] + 4 + CHECKSUM_BYTES + 5] ^= 0x10;
        std::fs::write(&file, &bytes).unwrap();
        let outbox = Outbox::open(&data.path().join("outbox"), "a", 100).unwrap();
        assert_eq!(ns(&outbox), vec![0, 2], "the records around it are kept, the damaged one is not sent");
        let aside = quarantined(data.path());
        assert_eq!(aside.len(), 1);
        let name = aside[0].file_name().unwrap().to_str().unwrap().to_owned();
        assert!(name.ends_with(file.file_stem().unwrap().to_str().unwrap()), "{name} names the batch");
        assert_eq!(std::fs::read(&aside[0]).unwrap(), bytes[starts[1]..starts[2]], "exactly the damaged record");
        // The batch file was rewritten: a second start finds nothing to save.
        drop(outbox);
        let reopened = Outbox::open(&data.path().join("outbox"), "a", 100).unwrap();
        assert_eq!(ns(&reopened), vec![0, 2]);
        assert_eq!(quarantined(data.path()).len(), 1);
    }

    #[test]
    fn a_flipped_bit_in_a_length_quarantines_the_tail() {
        let (data, file, mut bytes, starts) = three_in_one_file();
        bytes[starts[1]] ^= 0x01;
        std::fs::write(&file, &bytes).unwrap();
        let outbox = Outbox::open(&data.path().join("outbox"), "a", 100).unwrap();
        assert_eq!(ns(&outbox), vec![0], "the framing is lost after the bad length");
        let aside = quarantined(data.path());
        assert_eq!(std::fs::read(&aside[0]).unwrap(), bytes[starts[1]..]);
    }

    #[test]
    fn a_truncated_tail_is_cut_off_and_saved_aside() {
        let (data, file, bytes, starts) = three_in_one_file();
        std::fs::write(&file, &bytes[..bytes.len() - 3]).unwrap();
        let outbox = Outbox::open(&data.path().join("outbox"), "a", 100).unwrap();
        assert_eq!(ns(&outbox), vec![0, 1]);
        let aside = quarantined(data.path());
        assert_eq!(std::fs::read(&aside[0]).unwrap(), bytes[starts[2]..bytes.len() - 3]);
        // Cut within the header: nothing reads, the file goes, its bytes are saved.
        std::fs::write(&file, &bytes[..5]).unwrap();
        drop(outbox);
        let outbox = Outbox::open(&data.path().join("outbox"), "a", 100).unwrap();
        assert!(outbox.is_empty());
        assert!(msg_files(&data.path().join("outbox")).is_empty());
        assert_eq!(quarantined(data.path()).len(), 2);
    }

    #[test]
    fn a_file_of_an_unknown_version_is_moved_aside_unread() {
        let (data, file, mut bytes, _) = three_in_one_file();
        bytes[4..8].copy_from_slice(&9u32.to_le_bytes());
        std::fs::write(&file, &bytes).unwrap();
        let mut outbox = Outbox::open(&data.path().join("outbox"), "a", 100).unwrap();
        assert!(outbox.is_empty());
        assert!(!file.exists());
        assert_eq!(std::fs::read(&quarantined(data.path())[0]).unwrap(), bytes, "moved whole");
        assert_eq!(outbox.push(vec![event(3)]), 1, "the outbox runs on");
    }

    /// A disk that refuses every batch while `full` is set.
    #[derive(Debug, Clone, Default)]
    struct FlakyDisk {
        full: Arc<AtomicBool>,
    }

    impl Disk for FlakyDisk {
        fn write_batch(&self, dir: &Path, temp: &Path, path: &Path, bytes: &[u8], fsync: bool) -> std::io::Result<()> {
            if self.full.load(Ordering::Relaxed) {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            FileSystem.write_batch(dir, temp, path, bytes, fsync)
        }
    }

    fn receipts_for(receipts: &Receipts, messages: &[AgentMessage]) -> Vec<Receipt> {
        messages.iter().map(|m| receipts.expect(key_of(m).unwrap())).collect()
    }

    #[test]
    fn a_refusing_disk_holds_messages_in_order_and_they_drain_on_retry() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("outbox");
        let disk = FlakyDisk::default();
        let receipts = Receipts::default();
        let mut outbox = Outbox::open(&dir, "a", 100)
            .unwrap()
            .with_disk(Box::new(disk.clone()))
            .with_receipts(receipts.clone())
            .with_held_capacity(4);
        assert_eq!(outbox.push(vec![event(0)]), 1);
        disk.full.store(true, Ordering::Relaxed);
        let first = vec![event(1), event(2)];
        let first_receipts = receipts_for(&receipts, &first);
        assert_eq!(outbox.push(first), 2, "held, not lost");
        assert_eq!(outbox.held(), 2);
        assert!(first_receipts.iter().all(|r| r.outcome() == Some(Outcome::Stored)));
        // Said once: one notice however often it fails; held messages are
        // not sent before they are written.
        assert!(outbox.retry());
        let later = vec![event(3), event(4), event(5)];
        let later_receipts = receipts_for(&receipts, &later);
        assert_eq!(outbox.push(later), 2, "the memory holds four");
        assert_eq!(tags(&outbox), ["0", "halite/agent/a/outbox/unwritable"]);
        let outcomes: Vec<_> = later_receipts.iter().map(Receipt::outcome).collect();
        assert_eq!(outcomes, [Some(Outcome::Stored), Some(Outcome::Stored), Some(Outcome::Refused)]);
        assert_eq!(receipts.waiting(), 0);
        // A job result still gets in, in place of the newest held event.
        assert_eq!(outbox.push(vec![result()]), 1);
        assert_eq!(outbox.dropped(), 2);
        assert!(outbox.take_counter().is_none(), "no room for the counter yet");
        assert_eq!(outbox.len(), 2 + 4);
        // Space returns: everything drains, in order, then the notice.
        assert!(outbox.retry());
        disk.full.store(false, Ordering::Relaxed);
        assert!(!outbox.retry());
        assert_eq!(
            tags(&outbox),
            ["0", "halite/agent/a/outbox/unwritable", "1", "2", "3", "result", "halite/agent/a/outbox/writable"]
        );
        let Some(AgentMessage::Event(counter)) = outbox.take_counter() else { panic!("no counter event") };
        assert_eq!(counter.data.get("count"), Some(&Value::Int(2)));
        // The notices are not on disk; the held messages are.
        drop(outbox);
        let reopened = Outbox::open(&dir, "a", 100).unwrap();
        assert_eq!(tags(&reopened), ["0", "1", "2", "3", "result"]);
    }

    #[test]
    fn a_first_refusal_of_a_large_batch_holds_only_the_bound() {
        let data = tempfile::tempdir().unwrap();
        let disk = FlakyDisk::default();
        disk.full.store(true, Ordering::Relaxed);
        let receipts = Receipts::default();
        let mut outbox = Outbox::open(&data.path().join("outbox"), "a", 100)
            .unwrap()
            .with_disk(Box::new(disk.clone()))
            .with_receipts(receipts.clone())
            .with_held_capacity(2);
        let batch: Vec<AgentMessage> = (0..4).map(event).collect();
        let sent = receipts_for(&receipts, &batch);
        assert_eq!(outbox.push(batch), 2);
        let outcomes: Vec<_> = sent.iter().map(Receipt::outcome).collect();
        assert_eq!(
            outcomes,
            [Some(Outcome::Stored), Some(Outcome::Stored), Some(Outcome::Refused), Some(Outcome::Refused)]
        );
        disk.full.store(false, Ordering::Relaxed);
        assert!(!outbox.retry());
        assert_eq!(ns(&outbox), [0, 1]);
    }

    #[test]
    fn survives_a_restart_in_order_and_forgets_what_was_acked() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("outbox");
        let mut outbox = Outbox::open(&dir, "a", 100).unwrap();
        assert_eq!(outbox.push((0..3).map(event).collect()), 3);
        assert_eq!(outbox.push((3..5).map(event).collect()), 2);
        assert_eq!(msg_files(&dir).len(), 2, "one file per batch");
        let one = key_of_n(&outbox, 1);
        assert!(outbox.ack(one));
        assert!(!outbox.ack(one), "a second ack finds nothing");
        // A crash mid-write leaves a temporary file; garbage is not a batch.
        std::fs::write(dir.join("00000000000000ff.tmp"), b"half").unwrap();
        std::fs::write(dir.join("00000000000000fe.msg"), b"garbage").unwrap();
        drop(outbox);
        let mut reopened = Outbox::open(&dir, "a", 100).unwrap();
        // 1 comes back with its batch, which was not all acknowledged: a
        // resend, which the master drops by id.
        assert_eq!(ns(&reopened), vec![0, 1, 2, 3, 4]);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2, "leftovers removed");
        assert_eq!(std::fs::read(&quarantined(data.path())[0]).unwrap(), b"garbage");
        // A batch goes once all of it is acknowledged.
        for n in [0, 1, 2] {
            reopened.ack(key_of_n(&reopened, n));
        }
        assert_eq!(msg_files(&dir).len(), 1);
        // New messages go after the old ones.
        reopened.push(vec![event(5)]);
        let reopened = Outbox::open(&dir, "a", 100).unwrap();
        assert_eq!(ns(&reopened), vec![3, 4, 5]);
        assert_eq!(reopened.pending_after(Some(reopened.next_seq - 2)).len(), 1);
    }

    #[test]
    fn when_full_keeps_the_oldest_events_and_every_result_then_counts() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("outbox");
        let receipts = Receipts::default();
        let mut outbox = Outbox::open(&dir, "a", 3).unwrap().with_receipts(receipts.clone());
        let five: Vec<AgentMessage> = (0..5).map(event).collect();
        let sent = receipts_for(&receipts, &five);
        assert_eq!(outbox.push(five), 3);
        assert_eq!(ns(&outbox), vec![0, 1, 2]);
        assert_eq!(sent[4].outcome(), Some(Outcome::Refused), "the sender learns");
        assert_eq!(sent[0].outcome(), Some(Outcome::Stored));
        assert_eq!(outbox.dropped(), 2);
        assert!(outbox.take_counter().is_none(), "no room for the counter yet");
        // A result takes the newest event's place.
        assert_eq!(outbox.push(vec![result()]), 1);
        assert_eq!(ns(&outbox), vec![0, 1]);
        assert!(matches!(outbox.pending()[..], [_, _, AgentMessage::JobResult(_)]));
        assert_eq!(outbox.dropped(), 3);
        // In one batch too: the result replaces an event of its own batch.
        let mut other = Outbox::open(&data.path().join("other"), "a", 2).unwrap();
        assert_eq!(other.push(vec![event(0), event(1), result()]), 2);
        assert_eq!(ns(&other), vec![0]);
        // An ack makes room: the counter says how many were dropped.
        outbox.ack(key_of_n(&outbox, 0));
        let Some(AgentMessage::Event(counter)) = outbox.take_counter() else { panic!("no counter event") };
        assert_eq!(counter.tag, "halite/agent/a/outbox/dropped");
        assert_eq!(counter.data.get("count"), Some(&Value::Int(3)));
        assert!(outbox.take_counter().is_none(), "the count starts again");
        outbox.push(vec![AgentMessage::Event(counter)]);
        assert_eq!(outbox.len(), 3);
        // Results are dropped only when the outbox holds nothing else.
        let mut full = Outbox::open(&data.path().join("results"), "a", 2).unwrap();
        assert_eq!(full.push(vec![result(), result(), result()]), 2);
        assert_eq!(full.dropped(), 1);
    }

    #[test]
    fn pings_are_not_kept() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("outbox");
        let mut outbox = Outbox::open(&dir, "a", 1).unwrap();
        assert_eq!(outbox.push(vec![AgentMessage::Ping, event(0), AgentMessage::Ping]), 1);
        assert_eq!(outbox.push(vec![AgentMessage::Ping]), 0);
        assert_eq!(msg_files(&dir).len(), 1);
    }

    /// Send first: a staged batch is pending (the link may send it) before
    /// its file exists; once written it survives a restart. A crash between
    /// the two loses what was already sent and never acknowledged: the
    /// master has it, or the start-up check finds the drift again (the
    /// `durability` end-to-end tests kill the agent at random moments).
    #[test]
    fn a_staged_batch_is_pending_before_its_file_is_written() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("outbox");
        let receipts = Receipts::default();
        let mut outbox = Outbox::open(&dir, "a", 100).unwrap().with_receipts(receipts.clone());
        let batch = vec![event(1), result(), AgentMessage::Ping];
        let batch_receipts = receipts_for(&receipts, &batch[..2]);
        let staged = outbox.stage(batch).unwrap().unwrap();
        assert_eq!(tags(&outbox), ["1", "result"], "pending at once, pings not kept");
        assert_eq!(outbox.pending_after(None).len(), 2);
        assert!(msg_files(&dir).is_empty(), "no file yet");
        assert!(batch_receipts.iter().all(|r| r.outcome() == Some(Outcome::Stored)));
        // The process dies here: the batch was never on disk.
        assert!(Outbox::open(&dir, "a", 100).unwrap().is_empty());
        staged.write().unwrap();
        outbox.staged_written(staged.first(), Ok(()));
        assert_eq!(msg_files(&dir).len(), 1);
        assert_eq!(tags(&Outbox::open(&dir, "a", 100).unwrap()), ["1", "result"], "written: survives a restart");
        // Acknowledged: forgotten, and the file goes with its last message.
        let keys: Vec<Id> = outbox.pending().iter().filter_map(key_of).collect();
        keys.into_iter().for_each(|key| assert!(outbox.ack(key)));
        assert!(outbox.is_empty() && msg_files(&dir).is_empty());
        assert!(matches!(outbox.stage(vec![AgentMessage::Ping]), Ok(None)));
    }

    /// A staged batch the disk refuses was sent already: it stays pending
    /// in memory (sent again on a new session until acknowledged), the
    /// outbox says once that it cannot write, and what follows is held,
    /// not sent, until the disk takes it.
    #[test]
    fn a_refused_staged_batch_stays_pending_and_later_messages_are_held() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("outbox");
        let disk = FlakyDisk::default();
        let mut outbox = Outbox::open(&dir, "a", 100).unwrap().with_disk(Box::new(disk.clone()));
        disk.full.store(true, Ordering::Relaxed);
        let staged = outbox.stage(vec![event(1), event(2)]).unwrap().unwrap();
        let written = staged.write();
        assert!(written.is_err());
        outbox.staged_written(staged.first(), written);
        assert_eq!(tags(&outbox), ["1", "2", "halite/agent/a/outbox/unwritable"]);
        assert!(msg_files(&dir).is_empty());
        // Unwritable: nothing more is staged; it is held behind.
        let back = outbox.stage(vec![event(3)]).unwrap_err();
        assert_eq!(outbox.push(back), 1);
        assert_eq!(outbox.held(), 1);
        assert_eq!(outbox.pending().len(), 3, "held messages are not sent");
        disk.full.store(false, Ordering::Relaxed);
        assert!(!outbox.retry());
        assert_eq!(
            tags(&outbox),
            ["1", "2", "halite/agent/a/outbox/unwritable", "3", "halite/agent/a/outbox/writable"]
        );
        // The memory-only ones are acknowledged like the others.
        let first: Vec<Id> = outbox.pending().iter().take(2).filter_map(key_of).collect();
        first.into_iter().for_each(|key| assert!(outbox.ack(key)));
        assert_eq!(tags(&Outbox::open(&dir, "a", 100).unwrap()), ["3"], "only what was written survives");
        // Writable again: sending first resumes.
        assert!(outbox.stage(vec![event(4)]).unwrap().is_some());
    }

    /// With `outbox_fsync`, a batch is durable before it is sent: never
    /// staged.
    #[test]
    fn an_fsynced_outbox_never_sends_first() {
        let data = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(&data.path().join("outbox"), "a", 100).unwrap().with_fsync(true);
        let back = outbox.stage(vec![event(1)]).unwrap_err();
        assert_eq!(back.len(), 1);
        assert!(outbox.is_empty());
        // Full: the push decides what is refused, not the stage.
        let mut small = Outbox::open(&data.path().join("small"), "a", 2).unwrap();
        assert!(small.stage(vec![event(1), event(2)]).is_err());
    }
}
