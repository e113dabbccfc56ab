//! The outbox: every event and job result is written to disk before it is
//! sent, and stays there until the master acknowledges it, across
//! reconnects, master restarts and agent restarts.
//!
//! # Layout on disk, and when it is fsynced
//! `<data_dir>/outbox/` holds one file per *batch* of messages,
//! `<seq>.msg`, where seq (16 hex digits, so names sort in send order) is
//! the sequence number of the batch's first message. A file is records of
//! `[length: u32 little-endian][the message as framed on the wire]`. A batch
//! (whatever the writer found waiting, up to 256 messages) is written to
//! `<seq>.tmp` and renamed, so a crash leaves either the whole batch or a
//! `.tmp` file, which [`Outbox::open`] removes.
//!
//! By default a batch is not fsynced: it survives a crash of the agent (the
//! kernel has it) but not a power cut, and it costs tens of microseconds
//! instead of two fsyncs on the path of every drift event. After a power
//! cut the start-up check finds the drift again; what is lost is job
//! results and the reports of drift already healed. With
//! [`Outbox::with_fsync`] (`outbox_fsync: true`) each batch's data and the
//! directory are fsynced before it is sent: one fsync pair per batch, not
//! per message, so a burst costs about what one event costs. A batch's file
//! is unlinked (never fsynced) once every message in it is acknowledged; a
//! delete lost to a power cut, or a batch only partly acknowledged when the
//! agent stops, only means resends, which the master drops by id.
//!
//! # When full
//! The outbox holds at most `capacity` messages. Then:
//! - a new **event** is dropped and counted: the oldest events are kept,
//!   because the first report of a drift is the one that matters (the file
//!   beacon keeps a drift open and does not repeat it), and the start-up
//!   check finds any drift again after a restart;
//! - a new **job result** takes the place of the newest pending event
//!   (counted as dropped), because a job's result is asked for and cannot be
//!   found again; only an outbox full of results drops a result;
//! - once an acknowledgement makes room, one event
//!   `halite/agent/<id>/outbox/dropped` with `{count, capacity}` says how
//!   many were dropped. The count lives in memory: an agent restart
//!   forgets it.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use halite_proto::{AgentMessage, Event, Id, Value};

/// Messages kept at most (events and job results together). At a few
/// hundred bytes each this is a few MiB of disk and memory.
pub const CAPACITY: usize = 10_000;

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
        // The link makes batches from single events as it sends; the
        // outbox keeps events one by one.
        AgentMessage::Hello(_) | AgentMessage::Ping | AgentMessage::Events(_) => None,
    }
}

#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    capacity: usize,
    /// The agent id, for the counter event's tag.
    agent: String,
    next_seq: u64,
    /// Pending messages in send order, with the batch file each is in.
    entries: BTreeMap<u64, (AgentMessage, u64)>,
    /// Acknowledgement key → seq.
    by_key: HashMap<Id, u64>,
    /// Batch file (its first seq) → its messages still pending.
    files: HashMap<u64, usize>,
    /// Messages dropped since the last counter event.
    dropped: u64,
    /// Fsync each batch and the directory (`outbox_fsync` in agent.yaml).
    fsync: bool,
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

    /// Opens (or creates) the outbox in `dir`, loading what an earlier run
    /// left unacknowledged. Leftover temporary files and unreadable batches
    /// are removed, with a warning.
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
        };
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            let first = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".msg"))
                .and_then(|s| u64::from_str_radix(s, 16).ok());
            let messages = match first {
                Some(_) => std::fs::read(&path).map(|bytes| records(&bytes)).unwrap_or_default(),
                None => Vec::new(),
            };
            let Some(first) = first.filter(|_| !messages.is_empty()) else {
                tracing::warn!(path = %path.display(), "Removing a partial or unreadable outbox file.");
                let _ = std::fs::remove_file(&path);
                continue;
            };
            outbox.files.insert(first, messages.len());
            for (seq, message) in (first..).zip(messages) {
                outbox.next_seq = outbox.next_seq.max(seq + 1);
                if let Some(key) = key_of(&message) {
                    outbox.by_key.insert(key, seq);
                }
                outbox.entries.insert(seq, (message, first));
            }
        }
        if !outbox.entries.is_empty() {
            tracing::info!(pending = outbox.entries.len(), path = %dir.display(), "Outbox holds messages from an earlier run; they are sent once the master is reached.");
        }
        Ok(outbox)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Dropped since the last counter event.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Every pending message, oldest first.
    pub fn pending(&self) -> Vec<AgentMessage> {
        self.entries.values().map(|(m, _)| m.clone()).collect()
    }

    /// Pending messages after `seq` (all of them for `None`), oldest first,
    /// with their sequence numbers: what a session has yet to send.
    pub fn pending_after(&self, seq: Option<u64>) -> Vec<(u64, AgentMessage)> {
        let from = seq.map_or(0, |s| s + 1);
        self.entries.range(from..).map(|(s, (m, _))| (*s, m.clone())).collect()
    }

    /// Writes `messages` (in order) as one batch; returns how many were
    /// kept. See the module docs for what is dropped when full. Messages
    /// without an acknowledgement key (pings) are not kept.
    pub fn push(&mut self, messages: Vec<AgentMessage>) -> Result<usize, OutboxError> {
        let mut batch: Vec<AgentMessage> = Vec::with_capacity(messages.len());
        for message in messages.into_iter().filter(|m| key_of(m).is_some()) {
            if self.entries.len() + batch.len() >= self.capacity {
                let is_event = |m: &AgentMessage| matches!(m, AgentMessage::Event(_));
                let is_result = !is_event(&message);
                self.dropped += 1;
                if !is_result {
                    if self.dropped.is_power_of_two() {
                        tracing::warn!(
                            dropped = self.dropped,
                            capacity = self.capacity,
                            "Outbox full; dropping new events."
                        );
                    }
                    continue;
                }
                if let Some(index) = batch.iter().rposition(is_event) {
                    batch.remove(index);
                } else if let Some(seq) = self.newest_event() {
                    self.forget(seq);
                } else {
                    tracing::warn!(dropped = self.dropped, "Outbox full of job results; dropping one.");
                    continue;
                }
            }
            batch.push(message);
        }
        if batch.is_empty() {
            return Ok(0);
        }
        let first = self.next_seq;
        let (temp, path) = (self.path(first, "tmp"), self.path(first, "msg"));
        let written = (|| {
            let mut bytes = Vec::new();
            for message in &batch {
                let frame = halite_proto::encode(message);
                let length = u32::try_from(frame.len()).unwrap_or(u32::MAX);
                bytes.extend_from_slice(&length.to_le_bytes());
                bytes.extend_from_slice(&frame);
            }
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(&bytes)?;
            if self.fsync {
                file.sync_data()?;
            }
            std::fs::rename(&temp, &path)?;
            if self.fsync {
                // The rename is durable once the directory is.
                std::fs::File::open(&self.dir)?.sync_all()?;
            }
            Ok(())
        })();
        if let Err(source) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(OutboxError::Io { path, source });
        }
        let kept = batch.len();
        self.files.insert(first, kept);
        for (seq, message) in (first..).zip(batch) {
            if let Some(key) = key_of(&message) {
                self.by_key.insert(key, seq);
            }
            self.entries.insert(seq, (message, first));
        }
        self.next_seq = first + kept as u64;
        Ok(kept)
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
        if self.dropped == 0 || self.entries.len() >= self.capacity {
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

    fn newest_event(&self) -> Option<u64> {
        self.entries.iter().rev().find(|(_, (m, _))| matches!(m, AgentMessage::Event(_))).map(|(seq, _)| *seq)
    }

    /// Drops a pending message; its batch file goes with its last message.
    fn forget(&mut self, seq: u64) {
        let Some((message, file)) = self.entries.remove(&seq) else { return };
        if let Some(key) = key_of(&message) {
            self.by_key.remove(&key);
        }
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

/// The messages of a batch file; stops at the first record that does not
/// read (the rest of such a file is not trusted).
fn records(mut bytes: &[u8]) -> Vec<AgentMessage> {
    let mut messages = Vec::new();
    while let Some((length, rest)) = bytes.split_first_chunk::<4>() {
        let length = u32::from_le_bytes(*length) as usize;
        let Some(frame) = rest.get(..length) else { break };
        match halite_proto::decode::<AgentMessage>(frame) {
            Ok(message) if key_of(&message).is_some() => messages.push(message),
            _ => break,
        }
        bytes = &rest[length..];
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_proto::JobResult;

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

    fn msg_files(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().flatten().filter(|e| e.path().extension().is_some_and(|x| x == "msg")).count()
    }

    fn key_of_n(outbox: &Outbox, n: i64) -> Id {
        outbox.pending().iter().find(|m| n_of(m) == Some(n)).and_then(key_of).unwrap()
    }

    #[test]
    fn survives_a_restart_in_order_and_forgets_what_was_acked() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path(), "a", 100).unwrap();
        assert_eq!(outbox.push((0..3).map(event).collect()).unwrap(), 3);
        assert_eq!(outbox.push((3..5).map(event).collect()).unwrap(), 2);
        assert_eq!(msg_files(dir.path()), 2, "one file per batch");
        let one = key_of_n(&outbox, 1);
        assert!(outbox.ack(one));
        assert!(!outbox.ack(one), "a second ack finds nothing");
        // A crash mid-write leaves a temporary file; garbage is not a batch.
        std::fs::write(dir.path().join("00000000000000ff.tmp"), b"half").unwrap();
        std::fs::write(dir.path().join("00000000000000fe.msg"), b"garbage").unwrap();
        drop(outbox);
        let mut reopened = Outbox::open(dir.path(), "a", 100).unwrap();
        // 1 comes back with its batch, which was not all acknowledged: a
        // resend, which the master drops by id.
        let pending: Vec<i64> = reopened.pending().iter().filter_map(n_of).collect();
        assert_eq!(pending, vec![0, 1, 2, 3, 4]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "leftovers removed");
        // A batch goes once all of it is acknowledged.
        for n in [0, 1, 2] {
            reopened.ack(key_of_n(&reopened, n));
        }
        assert_eq!(msg_files(dir.path()), 1);
        // New messages go after the old ones.
        reopened.push(vec![event(5)]).unwrap();
        let reopened = Outbox::open(dir.path(), "a", 100).unwrap();
        assert_eq!(reopened.pending().iter().filter_map(n_of).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(reopened.pending_after(Some(reopened.next_seq - 2)).len(), 1);
    }

    #[test]
    fn a_damaged_batch_keeps_what_reads() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path(), "a", 100).unwrap().with_fsync(true);
        outbox.push((0..3).map(event).collect()).unwrap();
        let file = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
        let mut bytes = std::fs::read(&file).unwrap();
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&file, bytes).unwrap();
        let reopened = Outbox::open(dir.path(), "a", 100).unwrap();
        assert_eq!(reopened.pending().iter().filter_map(n_of).collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn when_full_keeps_the_oldest_events_and_every_result_then_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path(), "a", 3).unwrap();
        assert_eq!(outbox.push((0..5).map(event).collect()).unwrap(), 3);
        assert_eq!(outbox.pending().iter().filter_map(n_of).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(outbox.dropped(), 2);
        assert!(outbox.take_counter().is_none(), "no room for the counter yet");
        // A result takes the newest event's place.
        assert_eq!(outbox.push(vec![result()]).unwrap(), 1);
        assert_eq!(outbox.pending().iter().filter_map(n_of).collect::<Vec<_>>(), vec![0, 1]);
        assert!(matches!(outbox.pending()[..], [_, _, AgentMessage::JobResult(_)]));
        assert_eq!(outbox.dropped(), 3);
        // In one batch too: the result replaces an event of its own batch.
        let mut other = Outbox::open(&dir.path().join("other"), "a", 2).unwrap();
        assert_eq!(other.push(vec![event(0), event(1), result()]).unwrap(), 2);
        assert_eq!(other.pending().iter().filter_map(n_of).collect::<Vec<_>>(), vec![0]);
        // An ack makes room: the counter says how many were dropped.
        outbox.ack(key_of_n(&outbox, 0));
        let Some(AgentMessage::Event(counter)) = outbox.take_counter() else { panic!("no counter event") };
        assert_eq!(counter.tag, "halite/agent/a/outbox/dropped");
        assert_eq!(counter.data.get("count"), Some(&Value::Int(3)));
        assert!(outbox.take_counter().is_none(), "the count starts again");
        outbox.push(vec![AgentMessage::Event(counter)]).unwrap();
        assert_eq!(outbox.len(), 3);
        // Results are dropped only when the outbox holds nothing else.
        let mut full = Outbox::open(&dir.path().join("results"), "a", 2).unwrap();
        assert_eq!(full.push(vec![result(), result(), result()]).unwrap(), 2);
        assert_eq!(full.dropped(), 1);
    }

    #[test]
    fn pings_are_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path(), "a", 1).unwrap();
        assert_eq!(outbox.push(vec![AgentMessage::Ping, event(0), AgentMessage::Ping]).unwrap(), 1);
        assert_eq!(outbox.push(vec![AgentMessage::Ping]).unwrap(), 0);
        assert_eq!(msg_files(dir.path()), 1);
    }
}
