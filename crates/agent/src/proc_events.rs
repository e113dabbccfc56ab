//! The kernel's process events (the netlink proc connector): which
//! processes forked, exec'd, renamed themselves or exited, so the `process`
//! beacon learns what changed instead of reading all of `/proc` every
//! interval (issue #21: the scan was most of an idle agent's CPU).
//!
//! Subscribing needs the initial pid namespace, CAP_NET_ADMIN there (the
//! agent runs as root; a container usually has neither; kernels since 6.6
//! also let other users listen) and a kernel with `CONFIG_PROC_EVENTS`; [`ProcEvents::subscribe`] says why it
//! cannot, and the beacon then scans. Nothing here blocks once subscribed:
//! the socket is read without waiting, by the beacon's own sampling thread,
//! so following the events adds no thread and no wake-up. The kernel queues
//! the events in the socket's receive buffer (bounded by `SO_RCVBUF`); when
//! it overflows, the kernel says so (`ENOBUFS`) and [`Drained::Lost`] tells
//! the caller to look at `/proc` again.
//!
//! The messages are parsed here from bytes (native endian, as the kernel
//! writes them: `nlmsghdr`, `cn_msg`, `proc_event` in
//! `include/uapi/linux/cn_proc.h`), with no `unsafe`.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sys::socket::NetlinkAddr;

/// The connector's multicast group and value for process events
/// (`CN_IDX_PROC`, `CN_VAL_PROC` in `linux/connector.h`).
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
/// `enum proc_cn_mcast_op`.
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_CN_MCAST_IGNORE: u32 = 2;
/// `enum what` of `struct proc_event`.
const PROC_EVENT_NONE: u32 = 0;
const PROC_EVENT_FORK: u32 = 1;
const PROC_EVENT_EXEC: u32 = 2;
const PROC_EVENT_COMM: u32 = 0x200;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

const NLMSG_HEADER: usize = 16;
const CN_MSG_HEADER: usize = 20;
/// `what`, `cpu`, `timestamp_ns`: where `event_data` starts in a
/// `proc_event`.
const PROC_EVENT_HEADER: usize = 16;
/// Where a `proc_event` starts in a datagram.
const EVENT_AT: usize = NLMSG_HEADER + CN_MSG_HEADER;

/// How long [`ProcEvents::subscribe`] waits for the kernel's answer to the
/// subscription (it comes at once where process events exist; a kernel
/// without them never answers).
const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// Messages looked at while waiting for that answer. The kernel handles the
/// request within the `send`, so only events queued between joining the
/// group and sending it (and other subscribers' answers) come first.
const ANSWER_AMONG: usize = 256;
/// One datagram holds one event (at most about 100 bytes); room to spare.
const DATAGRAM: usize = 1024;

/// Numbers each subscription within the agent, so that its answer is told
/// from another beacon's (see [`tag`]).
static NEXT_TAG: AtomicU32 = AtomicU32::new(1);

/// A number for one request, carried in its `cn_msg.ack`: the kernel
/// answers with `ack` one more (and a `seq` of its own). The process id in
/// the high bits tells other processes' subscriptions apart too.
fn tag() -> u32 {
    (std::process::id() << 12) ^ (NEXT_TAG.fetch_add(1, Ordering::Relaxed) & 0xfff)
}

/// Why the kernel's process events cannot be followed; each names what was
/// tried.
#[derive(Debug, thiserror::Error)]
pub enum ProcEventsError {
    #[error("cannot open a netlink connector socket for process events: {source}")]
    Socket { source: std::io::Error },
    #[error("cannot join the process events' netlink group: {source}")]
    Join { source: nix::errno::Errno },
    #[error("cannot subscribe to process events: {source}")]
    Subscribe { source: std::io::Error },
    #[error(
        "the kernel refused the subscription to process events: {errno} (it needs CAP_NET_ADMIN in the initial namespaces)"
    )]
    Refused { errno: nix::errno::Errno },
    #[error("the kernel did not answer the subscription to process events within {} (no CONFIG_PROC_EVENTS?)", humantime::format_duration(*within))]
    NoAnswer { within: Duration },
    #[error("cannot read process events: {source}")]
    Receive { source: std::io::Error },
}

/// What happened to a process (a thread group; threads' own events are
/// left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcEvent {
    /// `child` was forked from `parent`: it runs the parent's program, with
    /// its name and argv, until it execs.
    Fork { parent: u32, child: u32 },
    /// `pid` now runs another program.
    Exec { pid: u32 },
    /// `pid` renamed itself (`prctl(PR_SET_NAME)`).
    Comm { pid: u32 },
    /// `pid` ended (its whole thread group, or at least its leader).
    Exit { pid: u32 },
}

/// What [`ProcEvents::drain`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every event since the last drain was handed over.
    Complete,
    /// The kernel dropped events (the receive buffer was full): what the
    /// caller knows may be wrong until it looks at `/proc` again, and the
    /// events still queued were left unread (subscribe again to drop them).
    Lost,
}

/// A subscription to the kernel's process events. Dropping it unsubscribes.
#[derive(Debug)]
pub struct ProcEvents {
    socket: socket2::Socket,
}

impl ProcEvents {
    /// Subscribes, and waits (up to a second) for the kernel to say it
    /// accepted. Events from then on are queued until [`drain`](Self::drain).
    pub fn subscribe() -> Result<ProcEvents, ProcEventsError> {
        let socket = socket2::Socket::new(
            socket2::Domain::from(libc::AF_NETLINK),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::from(libc::NETLINK_CONNECTOR)),
        )
        .map_err(|source| ProcEventsError::Socket { source })?;
        nix::sys::socket::bind(socket.as_raw_fd(), &NetlinkAddr::new(0, CN_IDX_PROC))
            .map_err(|source| ProcEventsError::Join { source })?;
        socket.set_read_timeout(Some(ANSWER_WITHIN)).map_err(|source| ProcEventsError::Subscribe { source })?;
        let tag = tag();
        let events = ProcEvents { socket };
        events.send(PROC_CN_MCAST_LISTEN, tag).map_err(|source| ProcEventsError::Subscribe { source })?;
        let mut buffer = [0u8; DATAGRAM];
        let mut answer = None;
        for _ in 0..ANSWER_AMONG {
            let len = match (&events.socket).read(&mut buffer) {
                Ok(len) => len,
                Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    break;
                }
                // Overrun while waiting: events before the answer do not
                // matter (the caller looks at /proc after subscribing).
                Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Err(source) => return Err(ProcEventsError::Receive { source }),
            };
            if let Some(err) = subscription_answer(&buffer[..len], tag) {
                answer = Some(err);
                break;
            }
        }
        match answer {
            None => Err(ProcEventsError::NoAnswer { within: ANSWER_WITHIN }),
            Some(0) => {
                events.socket.set_read_timeout(None).map_err(|source| ProcEventsError::Subscribe { source })?;
                events.socket.set_nonblocking(true).map_err(|source| ProcEventsError::Subscribe { source })?;
                Ok(events)
            }
            Some(err) => Err(ProcEventsError::Refused {
                errno: nix::errno::Errno::from_raw(i32::try_from(err).unwrap_or(i32::MAX)),
            }),
        }
    }

    /// Hands every queued event to `each`, without waiting for more; stops
    /// at the first sign of an overrun (the kernel reports it before the
    /// events still queued, and reading those would cost as much as the
    /// scan the caller must make anyway: subscribe again, which starts with
    /// an empty queue).
    ///
    /// The receive buffer keeps its default size (about 270 events here)
    /// on purpose: one `recv` per event costs about a third of what a scan
    /// costs per process, so a full buffer costs about one scan of a
    /// typical host, and a host busier than that overflows it and is
    /// scanned instead. A larger buffer made a busy host's samples cost
    /// twice a scan (BENCHMARKS.md, issue #21).
    pub fn drain(&mut self, mut each: impl FnMut(ProcEvent)) -> Result<Drained, ProcEventsError> {
        let mut buffer = [0u8; DATAGRAM];
        loop {
            match (&self.socket).read(&mut buffer) {
                Ok(len) => parse(&buffer[..len], &mut each),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(Drained::Complete),
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => return Ok(Drained::Lost),
                Err(source) => return Err(ProcEventsError::Receive { source }),
            }
        }
    }

    /// The receive buffer's size, as the kernel counts it (tests overflow
    /// it on purpose).
    #[cfg(test)]
    pub(crate) fn receive_buffer(&self) -> usize {
        self.socket.recv_buffer_size().unwrap_or(usize::MAX)
    }

    /// Waits (up to `within`) until an event is queued, without taking it:
    /// tests await the kernel's next event instead of sleeping.
    #[cfg(test)]
    pub(crate) fn wait_queued(&self, within: Duration) -> bool {
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        let waited = self.socket.set_nonblocking(false).is_ok()
            && self.socket.set_read_timeout(Some(within)).is_ok()
            && self.socket.peek(&mut byte).is_ok();
        let restored = self.socket.set_read_timeout(None).is_ok() && self.socket.set_nonblocking(true).is_ok();
        waited && restored
    }

    fn send(&self, op: u32, tag: u32) -> std::io::Result<()> {
        let message = control_message(op, tag);
        let sent = self.socket.send(&message)?;
        if sent == message.len() {
            Ok(())
        } else {
            Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "the subscription message was cut short"))
        }
    }
}

impl Drop for ProcEvents {
    /// The kernel counts its listeners and builds no events while there are
    /// none: say this one has gone. (Closing the socket alone does not.)
    fn drop(&mut self) {
        let _ = self.send(PROC_CN_MCAST_IGNORE, tag());
    }
}

/// An `nlmsghdr` + `cn_msg` carrying one `proc_cn_mcast_op`, numbered
/// `tag` (see [`tag`]).
fn control_message(op: u32, tag: u32) -> Vec<u8> {
    let total = NLMSG_HEADER + CN_MSG_HEADER + 4;
    let mut message = Vec::with_capacity(total);
    // nlmsghdr: length, type (one message: NLMSG_DONE), flags, seq, port.
    message.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_ne_bytes());
    message.extend_from_slice(&u16::try_from(libc::NLMSG_DONE).unwrap_or_default().to_ne_bytes());
    message.extend_from_slice(&0u16.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    // cn_msg: id {idx, val}, seq, ack, len, flags.
    message.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    message.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(&tag.to_ne_bytes());
    message.extend_from_slice(&4u16.to_ne_bytes());
    message.extend_from_slice(&0u16.to_ne_bytes());
    message.extend_from_slice(&op.to_ne_bytes());
    message
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let word = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes([word[0], word[1], word[2], word[3]]))
}

/// The `proc_event` of one connector message, if it is one: its `what` and
/// its `event_data`, and the `cn_msg`'s seq and ack.
fn proc_event(message: &[u8]) -> Option<(u32, &[u8], u32, u32)> {
    if u32_at(message, NLMSG_HEADER)? != CN_IDX_PROC || u32_at(message, NLMSG_HEADER + 4)? != CN_VAL_PROC {
        return None;
    }
    let seq = u32_at(message, NLMSG_HEADER + 8)?;
    let ack = u32_at(message, NLMSG_HEADER + 12)?;
    let what = u32_at(message, EVENT_AT)?;
    Some((what, message.get(EVENT_AT + PROC_EVENT_HEADER..)?, seq, ack))
}

/// The netlink messages of one datagram.
fn messages(datagram: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        let len = usize::try_from(u32_at(rest, 0)?).ok()?;
        if len < NLMSG_HEADER || len > rest.len() {
            return None;
        }
        let (message, after) = rest.split_at(len);
        // Messages are aligned to 4 bytes.
        rest = after.get(after.len().min((len.next_multiple_of(4)) - len)..).unwrap_or_default();
        Some(message)
    })
}

/// The kernel's answer to the subscription numbered `tag`: its error
/// number (0: accepted), if `datagram` is that answer.
fn subscription_answer(datagram: &[u8], tag: u32) -> Option<u32> {
    messages(datagram).find_map(|message| match proc_event(message)? {
        // cn_proc_ack: ack is the request's ack plus one.
        (PROC_EVENT_NONE, data, _, ack) if ack == tag.wrapping_add(1) => u32_at(data, 0),
        _ => None,
    })
}

/// The process events in `datagram`, threads' own left out.
fn parse(datagram: &[u8], each: &mut impl FnMut(ProcEvent)) {
    for message in messages(datagram) {
        let Some((what, data, _, _)) = proc_event(message) else { continue };
        let word = |i: usize| u32_at(data, 4 * i);
        let event = match what {
            // parent_pid, parent_tgid, child_pid, child_tgid
            PROC_EVENT_FORK => match (word(1), word(2), word(3)) {
                (Some(parent), Some(child), Some(tgid)) if child == tgid => Some(ProcEvent::Fork { parent, child }),
                _ => None,
            },
            // process_pid, process_tgid, …
            PROC_EVENT_EXEC | PROC_EVENT_COMM | PROC_EVENT_EXIT => match (word(0), word(1)) {
                (Some(pid), Some(tgid)) if pid == tgid => Some(match what {
                    PROC_EVENT_EXEC => ProcEvent::Exec { pid },
                    PROC_EVENT_COMM => ProcEvent::Comm { pid },
                    _ => ProcEvent::Exit { pid },
                }),
                _ => None,
            },
            _ => None,
        };
        if let Some(event) = event {
            each(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A datagram as the kernel sends it: one message with one event.
    fn datagram(what: u32, seq: u32, ack: u32, data: &[u32]) -> Vec<u8> {
        let mut bytes = control_message(0, ack);
        bytes.truncate(NLMSG_HEADER + CN_MSG_HEADER);
        bytes[NLMSG_HEADER + 8..NLMSG_HEADER + 12].copy_from_slice(&seq.to_ne_bytes());
        bytes.extend_from_slice(&what.to_ne_bytes());
        bytes.extend_from_slice(&[0; 12]); // cpu, timestamp
        for word in data {
            bytes.extend_from_slice(&word.to_ne_bytes());
        }
        let len = u32::try_from(bytes.len()).unwrap();
        bytes[..4].copy_from_slice(&len.to_ne_bytes());
        bytes
    }

    fn parsed(datagram: &[u8]) -> Vec<ProcEvent> {
        let mut events = Vec::new();
        parse(datagram, &mut |event| events.push(event));
        events
    }

    #[test]
    fn process_events_are_parsed_and_threads_left_out() {
        let cases: &[(u32, &[u32], Option<ProcEvent>)] = &[
            (PROC_EVENT_FORK, &[10, 10, 11, 11], Some(ProcEvent::Fork { parent: 10, child: 11 })),
            (PROC_EVENT_FORK, &[10, 10, 12, 10], None), // a new thread
            (PROC_EVENT_EXEC, &[11, 11], Some(ProcEvent::Exec { pid: 11 })),
            (PROC_EVENT_COMM, &[11, 11, 0x6e69_676e, 0x78], Some(ProcEvent::Comm { pid: 11 })),
            (PROC_EVENT_EXIT, &[11, 11, 0, 9], Some(ProcEvent::Exit { pid: 11 })),
            (PROC_EVENT_EXIT, &[12, 10, 0, 0], None), // a thread ended
            (4, &[11, 11, 0, 0], None),               // uid change: not wanted
            (PROC_EVENT_EXEC, &[11], None),           // cut short
        ];
        for (what, data, want) in cases {
            assert_eq!(
                parsed(&datagram(*what, 0, 0, data)),
                want.iter().copied().collect::<Vec<_>>(),
                "{what:#x} {data:?}"
            );
        }
        // Another connector's message, and garbage, give nothing.
        let mut other = datagram(PROC_EVENT_EXEC, 0, 0, &[11, 11]);
        other[NLMSG_HEADER..NLMSG_HEADER + 4].copy_from_slice(&7u32.to_ne_bytes());
        assert!(parsed(&other).is_empty());
        assert!(parsed(&[0xff; 3]).is_empty());
        assert!(parsed(&[]).is_empty());
        let mut long = datagram(PROC_EVENT_EXEC, 0, 0, &[11, 11]);
        long[..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(parsed(&long).is_empty(), "a length beyond the datagram");
    }

    #[test]
    fn the_subscription_answer_is_found_by_its_number() {
        // The kernel's own seq is whatever it is; ack is the tag plus one.
        assert_eq!(subscription_answer(&datagram(PROC_EVENT_NONE, 85722, 8, &[0]), 7), Some(0));
        assert_eq!(subscription_answer(&datagram(PROC_EVENT_NONE, 3, 8, &[1]), 7), Some(1));
        assert_eq!(subscription_answer(&datagram(PROC_EVENT_NONE, 3, 9, &[0]), 7), None, "another's");
        assert_eq!(subscription_answer(&datagram(PROC_EVENT_EXEC, 3, 8, &[3, 3]), 7), None);
    }

    /// Whether this process holds CAP_NET_ADMIN (bit 12 of `CapEff`).
    fn may_subscribe() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let caps = status.lines().find_map(|line| line.strip_prefix("CapEff:")).unwrap();
        u64::from_str_radix(caps.trim(), 16).unwrap() & (1 << 12) != 0
    }

    /// On the real kernel: a process started and killed is seen forking,
    /// exec'ing and exiting. With CAP_NET_ADMIN (as the agent has running
    /// as root) the subscription must succeed; without it, the kernel may
    /// refuse (older kernels, or outside the initial namespaces), and the
    /// refusal must say why (the beacon then scans; `process.rs` tests that
    /// path).
    #[test]
    fn a_real_process_is_seen_starting_and_ending() {
        if let Err(error) = ProcEvents::subscribe() {
            assert!(!may_subscribe(), "with CAP_NET_ADMIN: {error}");
            assert!(matches!(error, ProcEventsError::Join { .. } | ProcEventsError::Refused { .. }), "{error}");
            return;
        }
        // On a busy host the kernel may drop events (a full receive buffer)
        // between the subscription and the drain: then it says so, and the
        // round is run again.
        for _ in 0..5 {
            let mut events = ProcEvents::subscribe().unwrap();
            let mut child = crate::beacons::process::live_process("halite-pe-test");
            let pid = child.id();
            child.kill().unwrap();
            child.wait().unwrap();
            // Both are queued by now (the fork and exec before `spawn`
            // returned, the exit before `wait` did): one drain finds them.
            let mut seen = Vec::new();
            if events.drain(|event| seen.push(event)).unwrap() == Drained::Lost {
                continue;
            }
            assert!(seen.iter().any(|e| matches!(e, ProcEvent::Fork { child, .. } if *child == pid)), "{seen:?}");
            assert!(seen.contains(&ProcEvent::Exec { pid }), "{seen:?}");
            assert!(seen.contains(&ProcEvent::Exit { pid }), "{seen:?}");
            return;
        }
        panic!("five rounds lost events");
    }
}
