use crate::codec::*;
use crate::endpoint::Endpoint;
use crate::error::ZmqResult;
use crate::message::*;
use crate::progress::Progress;
use crate::transport::AcceptStopHandle;
use crate::util::PeerIdentity;
use crate::write_queue::write_message_queue_counted;
use crate::{async_rt, CaptureSocket, SocketOptions};
use crate::{MultiPeerBackend, Socket, SocketBackend, SocketEvent, SocketSend, SocketType};

use async_trait::async_trait;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use futures::channel::{mpsc, oneshot};
use futures::{select, FutureExt, StreamExt};
use parking_lot::Mutex;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

const PUB_SEND_QUEUE_CAPACITY: usize = 100_000;
/// The fanout task tells waiting flush points of its progress after this
/// many messages, and whenever its queue is empty: a waiter whose point is
/// in the middle of a burst is woken within one such run, not once per
/// message (each wake-up of a waiter is a poll of it).
const FANOUT_ADVANCE_EVERY: u64 = 128;
type PubSendQueue = mpsc::Sender<Message>;

fn subscription_matches(subscriptions: &[Vec<u8>], first_frame: &Bytes) -> bool {
    // Single-subscription PUB fanout is common, so keep its comparison shape unchanged.
    // Only use first-byte filtering for multiple subscriptions, where it avoids extra scans.
    if subscriptions.len() <= 1 {
        return subscriptions.iter().any(|sub_filter| {
            sub_filter.len() <= first_frame.len()
                && sub_filter.as_slice() == &first_frame[0..sub_filter.len()]
        });
    }

    let first_byte = first_frame.first().copied();
    subscriptions
        .iter()
        .any(|sub_filter| match sub_filter.first().copied() {
            Some(prefix_first) if Some(prefix_first) != first_byte => false,
            _ => {
                sub_filter.len() <= first_frame.len()
                    && sub_filter.as_slice() == &first_frame[0..sub_filter.len()]
            }
        })
}

/// Queues `message` for one subscriber unless its queue is full; whether it
/// was queued.
fn send_to_subscriber(mut send_queue: PubSendQueue, message: &ZmqMessage) -> bool {
    let message = Message::Message(message.clone());
    match send_queue.try_send(message) {
        Ok(()) => return true,
        Err(error) if error.is_full() => {
            // PUB drops messages for slow subscribers so one full queue does not backpressure all publishers.
            drop(error.into_inner());
        }
        Err(error) => {
            // The writer task owns transport error detection and subscriber cleanup.
            // A closed local queue is treated as a dropped PUB message on this send path.
            drop(error.into_inner());
        }
    }
    false
}

/// Queues `message` for a subscriber unless that would take its queued
/// bytes over `limit` (`SocketOptions::send_queue_bytes`) or its queue is
/// full: then it is dropped for that subscriber.
fn send_within_bytes(subscriber: &Subscriber, message: &ZmqMessage, limit: usize) {
    let size: usize = message.iter().map(|frame| frame.len()).sum();
    let before = subscriber.queued_bytes.fetch_add(size, Ordering::AcqRel);
    if before.saturating_add(size) > limit
        || !send_to_subscriber(subscriber.send_queue.clone(), message)
    {
        subscriber.queued_bytes.fetch_sub(size, Ordering::AcqRel);
    } else {
        subscriber.queued.fetch_add(1, Ordering::AcqRel);
    }
}

pub(crate) struct Subscriber {
    pub(crate) subscriptions: Vec<Vec<u8>>,
    pub(crate) send_queue: PubSendQueue,
    /// Bytes in `send_queue` (taken off by the writer as it takes them).
    pub(crate) queued_bytes: Arc<AtomicUsize>,
    /// Messages ever queued for it, and ever written to its socket (the
    /// writer adds a batch once it is flushed): what a [`FlushPoint`]
    /// compares.
    pub(crate) queued: Arc<AtomicU64>,
    pub(crate) written: Arc<AtomicU64>,
    pub(crate) _subscription_coro_stop: oneshot::Sender<()>,
}

pub(crate) struct PubSocketBackend {
    pub(crate) subscribers: scc::HashMap<PeerIdentity, Subscriber>,
    /// Messages taken into the fanout queue, and messages the fanout task
    /// has handed to every subscriber's queue (or dropped for a full one).
    pub(crate) accepted: AtomicU64,
    pub(crate) fanned: AtomicU64,
    /// Advanced when `fanned` or a subscriber's `written` grows, or a
    /// subscriber's writer ends: what a [`FlushPoint`] waits on.
    pub(crate) progress: Arc<Progress>,
    pub(crate) subscriber_count: AtomicUsize,
    pub(crate) socket_monitor: Mutex<Option<mpsc::Sender<SocketEvent>>>,
    pub(crate) socket_options: Arc<SocketOptions>,
}

struct PubFanoutQueue {
    queue: Arc<ArrayQueue<ZmqMessage>>,
    wake_sender: mpsc::UnboundedSender<()>,
    wake_pending: Arc<AtomicBool>,
}

impl PubFanoutQueue {
    fn publish(&self, message: ZmqMessage) -> ZmqResult<()> {
        if self.queue.push(message).is_err() {
            return Ok(());
        }

        if !self.wake_pending.load(Ordering::Acquire)
            && !self.wake_pending.swap(true, Ordering::AcqRel)
        {
            let _ = self.wake_sender.unbounded_send(());
        }

        Ok(())
    }
}

fn spawn_pub_fanout_queue(backend: Arc<PubSocketBackend>) -> PubFanoutQueue {
    let queue = Arc::new(ArrayQueue::new(PUB_SEND_QUEUE_CAPACITY));
    let wake_pending = Arc::new(AtomicBool::new(false));
    let (wake_sender, mut wake_receiver) = mpsc::unbounded();
    let worker_queue = queue.clone();
    let worker_pending = wake_pending.clone();

    async_rt::task::spawn(async move {
        while wake_receiver.next().await.is_some() {
            loop {
                while let Some(message) = worker_queue.pop() {
                    backend.fanout_message(message).await;
                    let fanned = backend.fanned.fetch_add(1, Ordering::AcqRel) + 1;
                    if fanned.is_multiple_of(FANOUT_ADVANCE_EVERY) {
                        backend.progress.advanced();
                    }
                }
                backend.progress.advanced();

                worker_pending.store(false, Ordering::Release);
                if worker_queue.is_empty() {
                    break;
                }

                // New messages arrived between draining and sleeping, so this task keeps ownership of the batch.
                worker_pending.store(true, Ordering::Release);
            }
        }
    });

    PubFanoutQueue {
        queue,
        wake_sender,
        wake_pending,
    }
}

impl PubSocketBackend {
    pub(crate) async fn fanout_message(&self, message: ZmqMessage) {
        let first_frame = match message.get(0) {
            Some(frame) => frame,
            None => return,
        };

        let mut iter = self.subscribers.begin_async().await;
        while let Some(subscriber) = iter {
            if subscription_matches(&subscriber.subscriptions, first_frame) {
                send_within_bytes(&subscriber, &message, self.socket_options.send_queue_bytes);
            }
            iter = subscriber.next_async().await;
        }
    }

    fn message_received(&self, peer_id: &PeerIdentity, message: Message) {
        let data = match message {
            Message::Message(m) => {
                if m.len() != 1 {
                    log::warn!("Received message with unexpected length: {}", m.len());
                    return;
                }
                m.into_vec().pop().unwrap_or_default()
            }
            _ => return,
        };

        if data.is_empty() {
            return;
        }

        match data.first() {
            Some(1) => {
                // Subscribe
                if let Some(mut entry) = self.subscribers.get_sync(peer_id) {
                    entry.subscriptions.push(Vec::from(&data[1..]));
                }
            }
            Some(0) => {
                // Unsubscribe
                let sub = Vec::from(&data[1..]);
                if let Some(mut entry) = self.subscribers.get_sync(peer_id) {
                    if let Some(index) = entry.subscriptions.iter().position(|s| s == &sub) {
                        entry.subscriptions.remove(index);
                    }
                }
            }
            _ => log::warn!(
                "Received message with unexpected first byte: {:?}",
                data.first()
            ),
        }
    }
}

impl SocketBackend for PubSocketBackend {
    fn socket_type(&self) -> SocketType {
        SocketType::PUB
    }

    fn socket_options(&self) -> &Arc<SocketOptions> {
        &self.socket_options
    }

    fn shutdown(&self) {
        self.subscribers.clear_sync();
        self.subscriber_count.store(0, Ordering::Relaxed);
    }

    fn monitor(&self) -> &Mutex<Option<mpsc::Sender<SocketEvent>>> {
        &self.socket_monitor
    }
}

#[async_trait]
impl MultiPeerBackend for PubSocketBackend {
    async fn peer_connected(self: Arc<Self>, peer_id: &PeerIdentity, io: FramedIo) {
        let (mut recv_queue, send_queue) = io.into_parts();
        // TODO provide handling for recv_queue
        let (queue_sender, queue_receiver) = mpsc::channel(self.socket_options.send_queue_capacity);
        let (sender, stop_receiver) = oneshot::channel();
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let old_subscriber = self
            .subscribers
            .upsert_async(
                peer_id.clone(),
                Subscriber {
                    subscriptions: vec![],
                    send_queue: queue_sender,
                    queued_bytes: queued_bytes.clone(),
                    queued: Arc::default(),
                    written: written.clone(),
                    _subscription_coro_stop: sender,
                },
            )
            .await;
        if old_subscriber.is_none() {
            self.subscriber_count.fetch_add(1, Ordering::Relaxed);
        }
        let writer_backend = self.clone();
        let writer_peer_id = peer_id.clone();
        async_rt::task::spawn(async move {
            let progress = Some(writer_backend.progress.as_ref());
            if let Err(error) = write_message_queue_counted(
                queue_receiver,
                send_queue,
                Some(queued_bytes),
                Some(written),
                progress,
            )
            .await
            {
                log::debug!(
                    "Error sending message to subscriber {:?}: {:?}",
                    writer_peer_id,
                    error
                );
                writer_backend.peer_disconnected(&writer_peer_id);
            }
            // Its `written` is dropped and its entry gone (or going): a flush
            // point waiting on it looks again and stops waiting for it.
            writer_backend.progress.advanced();
        });
        let backend = self;
        let peer_id = peer_id.clone();
        async_rt::task::spawn(async move {
            let mut stop_receiver = stop_receiver.fuse();
            loop {
                select! {
                     _ = stop_receiver => {
                         break;
                     },
                     message = recv_queue.next().fuse() => {
                        match message {
                            Some(Ok(m)) => backend.message_received(&peer_id, m),
                            Some(Err(e)) => {
                                log::debug!("Error receiving message: {:?}", e);
                                backend.peer_disconnected(&peer_id);
                                break;
                            }
                            None => {
                                backend.peer_disconnected(&peer_id);
                                break
                            }
                        }

                     }
                }
            }
        });
    }

    fn peer_disconnected(&self, peer_id: &PeerIdentity) {
        log::info!("Client disconnected {:?}", peer_id);
        if let Some(monitor) = self.monitor().lock().as_mut() {
            let _ = monitor.try_send(SocketEvent::Disconnected(peer_id.clone()));
        }
        if self.subscribers.remove_sync(peer_id).is_some() {
            self.subscriber_count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

pub struct PubSocket {
    pub(crate) backend: Arc<PubSocketBackend>,
    fanout_queue: PubFanoutQueue,
    binds: HashMap<Endpoint, AcceptStopHandle>,
}

impl Drop for PubSocket {
    fn drop(&mut self) {
        self.backend.shutdown();
    }
}

#[async_trait]
impl SocketSend for PubSocket {
    async fn send(&mut self, message: ZmqMessage) -> ZmqResult<()> {
        if message.get(0).is_none() {
            return Ok(());
        }

        if self.backend.subscriber_count.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }

        if self.fanout_queue.queue.is_full() {
            // Dropped, as a full fanout queue always did; not counted.
            return Ok(());
        }
        self.backend.accepted.fetch_add(1, Ordering::AcqRel);
        self.fanout_queue.publish(message)
    }
}

/// Everything sent on a PUB socket before [`PubSocket::flush_point`] was
/// called: [`FlushPoint::wait`] returns once it has been written to the
/// socket of every subscriber it was queued for (a kill after that cannot
/// lose it in this process's memory), or when `timeout` passes first (a
/// subscriber that does not keep up holds no one back).
pub struct FlushPoint {
    backend: Arc<PubSocketBackend>,
    accepted: u64,
}

impl std::fmt::Debug for FlushPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlushPoint").field("accepted", &self.accepted).finish()
    }
}

impl FlushPoint {
    /// Whether everything before the point was written in time. Woken by
    /// the fanout task and the subscribers' writers as they progress
    /// ([`PubSocketBackend::progress`]), never by a polling timer: it
    /// returns as soon as the last write it waits for is flushed.
    pub async fn wait(self, timeout: std::time::Duration) -> bool {
        let written = self.written();
        futures::pin_mut!(written);
        let expired = async_rt::task::sleep(timeout).fuse();
        futures::pin_mut!(expired);
        select! {
            () = written.fuse() => true,
            () = expired => false,
        }
    }

    async fn written(&self) {
        let backend = &self.backend;
        let accepted = self.accepted;
        backend.progress.until(|| backend.fanned.load(Ordering::Acquire) >= accepted).await;
        let mut targets = Vec::new();
        let mut iter = backend.subscribers.begin_async().await;
        while let Some(subscriber) = iter {
            targets.push((subscriber.written.clone(), subscriber.queued.load(Ordering::Acquire)));
            iter = subscriber.next_async().await;
        }
        for (written, queued) in targets {
            // The writer and the subscriber entry hold the other clones: a
            // gone subscriber is not waited for.
            backend
                .progress
                .until(|| written.load(Ordering::Acquire) >= queued || Arc::strong_count(&written) <= 1)
                .await;
        }
    }
}

impl PubSocketBackend {
    /// Flush points waiting now (tests: none is left counted).
    #[cfg(test)]
    fn progress_waiting(&self) -> usize {
        self.progress.waiting()
    }
}

impl PubSocket {
    /// A point after everything sent so far (see [`FlushPoint`]).
    pub fn flush_point(&self) -> FlushPoint {
        FlushPoint { backend: self.backend.clone(), accepted: self.backend.accepted.load(Ordering::Acquire) }
    }
}

impl CaptureSocket for PubSocket {}

#[async_trait]
impl Socket for PubSocket {
    fn with_options(options: SocketOptions) -> Self {
        let backend = Arc::new(PubSocketBackend {
            subscribers: scc::HashMap::new(),
            accepted: AtomicU64::new(0),
            fanned: AtomicU64::new(0),
            progress: Arc::default(),
            subscriber_count: AtomicUsize::new(0),
            socket_monitor: Mutex::new(None),
            socket_options: Arc::new(options),
        });
        let fanout_queue = spawn_pub_fanout_queue(backend.clone());

        Self {
            backend,
            fanout_queue,
            binds: HashMap::new(),
        }
    }

    fn backend(&self) -> Arc<dyn MultiPeerBackend> {
        self.backend.clone()
    }

    fn binds(&mut self) -> &mut HashMap<Endpoint, AcceptStopHandle> {
        &mut self.binds
    }

    fn monitor(&mut self) -> mpsc::Receiver<SocketEvent> {
        let (sender, receiver) = mpsc::channel(1024);
        self.backend.socket_monitor.lock().replace(sender);
        receiver
    }
}

#[cfg(test)]
mod tests {

    /// A subscriber's queue holds at most `send_queue_bytes`: a message
    /// that would go over is dropped for it, and room comes back as the
    /// writer takes messages.
    #[test]
    fn test_send_queue_bytes_bounds_what_a_subscriber_holds() {
        let (send_queue, mut receiver) = mpsc::channel(1000);
        let (stop, _stopped) = oneshot::channel();
        let subscriber = Subscriber {
            subscriptions: vec![vec![]],
            send_queue,
            queued_bytes: Arc::default(),
            queued: Arc::default(),
            written: Arc::default(),
            _subscription_coro_stop: stop,
        };
        let message = ZmqMessage::from(vec![0u8; 600]);
        send_within_bytes(&subscriber, &message, 1000);
        send_within_bytes(&subscriber, &message, 1000);
        assert_eq!(subscriber.queued_bytes.load(Ordering::Acquire), 600);
        assert!(receiver.try_recv().is_ok());
        assert!(receiver.try_recv().is_err(), "the second message was dropped");
        // What the writer takes is taken off (as `write_message_queue_counted` does).
        subscriber.queued_bytes.fetch_sub(600, Ordering::AcqRel);
        send_within_bytes(&subscriber, &message, 1000);
        assert!(receiver.try_recv().is_ok());
    }

    use super::*;
    use crate::util::tests::{
        test_bind_to_any_port_helper, test_bind_to_unspecified_interface_helper,
    };
    use crate::ZmqResult;
    use std::net::IpAddr;

    fn test_backend() -> PubSocketBackend {
        PubSocketBackend {
            subscribers: scc::HashMap::new(),
            accepted: AtomicU64::new(0),
            fanned: AtomicU64::new(0),
            progress: Arc::default(),
            subscriber_count: AtomicUsize::new(0),
            socket_monitor: Mutex::new(None),
            socket_options: Arc::new(SocketOptions::default()),
        }
    }

    async fn insert_test_subscriber(
        backend: &PubSocketBackend,
        peer_id: PeerIdentity,
        subscriptions: Vec<Vec<u8>>,
        queue_sender: PubSendQueue,
    ) {
        let (stop_sender, _stop_receiver) = oneshot::channel();
        let old_subscriber = backend
            .subscribers
            .upsert_async(
                peer_id,
                Subscriber {
                    subscriptions,
                    send_queue: queue_sender,
                    queued_bytes: Arc::default(),
                    queued: Arc::default(),
                    written: Arc::default(),
                    _subscription_coro_stop: stop_sender,
                },
            )
            .await;
        if old_subscriber.is_none() {
            backend.subscriber_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A flush point returns when the last write it waits for is flushed,
    /// woken by the writer's progress: the paused clock never moves. (The
    /// old wait looked again every 250 µs on the runtime's timer, which
    /// moved the paused clock at each look.)
    #[tokio::test(start_paused = true)]
    async fn test_flush_point_is_woken_by_progress_not_a_timer() {
        let backend = Arc::new(test_backend());
        let peer: PeerIdentity = "subscriber".parse().expect("valid peer identity");
        let (send_queue, _receiver) = mpsc::channel(16);
        insert_test_subscriber(&backend, peer.clone(), vec![vec![]], send_queue).await;
        let (queued, written) = {
            let entry = backend.subscribers.get_async(&peer).await.expect("inserted");
            (entry.queued.clone(), entry.written.clone())
        };
        backend.accepted.store(1, Ordering::Release);
        let point = FlushPoint { backend: backend.clone(), accepted: 1 };
        let started = tokio::time::Instant::now();
        let waiting = tokio::spawn(point.wait(std::time::Duration::from_secs(60)));
        tokio::task::yield_now().await;
        // Fanned out to the subscriber's queue, not yet written.
        queued.store(1, Ordering::Release);
        backend.fanned.store(1, Ordering::Release);
        backend.progress.advanced();
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the subscriber has not written it yet");
        // As `write_message_queue_counted` does after a flushed batch.
        written.fetch_add(1, Ordering::AcqRel);
        backend.progress.advanced();
        assert!(waiting.await.expect("wait ran"));
        assert_eq!(tokio::time::Instant::now(), started, "no timer ran");
        assert_eq!(backend.progress_waiting(), 0);
    }

    /// A subscriber that does not write holds a flush point until its
    /// timeout; one that goes away (its writer's end advances) holds it no
    /// longer.
    #[tokio::test(start_paused = true)]
    async fn test_flush_point_times_out_on_a_stuck_subscriber_not_a_gone_one() {
        let backend = Arc::new(test_backend());
        let peer: PeerIdentity = "stuck".parse().expect("valid peer identity");
        let (send_queue, _receiver) = mpsc::channel(16);
        insert_test_subscriber(&backend, peer.clone(), vec![vec![]], send_queue).await;
        backend.subscribers.get_async(&peer).await.expect("inserted").queued.store(1, Ordering::Release);
        backend.accepted.store(1, Ordering::Release);
        backend.fanned.store(1, Ordering::Release);
        let timeout = std::time::Duration::from_secs(60);
        let started = tokio::time::Instant::now();
        let point = FlushPoint { backend: backend.clone(), accepted: 1 };
        assert!(!point.wait(timeout).await);
        assert_eq!(tokio::time::Instant::now() - started, timeout);

        let point = FlushPoint { backend: backend.clone(), accepted: 1 };
        let waiting = tokio::spawn(point.wait(timeout));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        backend.peer_disconnected(&peer);
        backend.progress.advanced();
        assert!(waiting.await.expect("wait ran"));
        assert_eq!(tokio::time::Instant::now() - started, timeout, "no second timeout");
    }

    fn test_fanout_queue(capacity: usize) -> (PubFanoutQueue, mpsc::UnboundedReceiver<()>) {
        let (wake_sender, wake_receiver) = mpsc::unbounded();
        let fanout_queue = PubFanoutQueue {
            queue: Arc::new(ArrayQueue::new(capacity)),
            wake_sender,
            wake_pending: Arc::new(AtomicBool::new(false)),
        };
        (fanout_queue, wake_receiver)
    }

    fn queued_frame(message: ZmqMessage) -> Bytes {
        message.get(0).expect("queued frame").clone()
    }

    #[test]
    fn test_fanout_queue_drops_new_message_when_full_without_extra_wake() {
        let (fanout_queue, mut wake_receiver) = test_fanout_queue(1);

        fanout_queue
            .publish(ZmqMessage::from(Bytes::from_static(b"first")))
            .expect("publish first message");

        assert_eq!(fanout_queue.queue.len(), 1);
        assert!(fanout_queue.wake_pending.load(Ordering::Relaxed));
        wake_receiver.try_recv().expect("first wake");

        fanout_queue
            .publish(ZmqMessage::from(Bytes::from_static(b"dropped")))
            .expect("publish dropped message");

        assert_eq!(fanout_queue.queue.len(), 1);
        assert!(wake_receiver.try_recv().is_err());
        assert_eq!(
            queued_frame(fanout_queue.queue.pop().expect("queued message")),
            Bytes::from_static(b"first")
        );
    }

    #[test]
    fn test_fanout_queue_wakes_again_after_pending_is_cleared() {
        let (fanout_queue, mut wake_receiver) = test_fanout_queue(2);

        fanout_queue
            .publish(ZmqMessage::from(Bytes::from_static(b"first")))
            .expect("publish first message");
        wake_receiver.try_recv().expect("first wake");
        assert!(fanout_queue.queue.pop().is_some());

        // Simulate the worker releasing pending after draining the current batch; the next publish must wake it again.
        fanout_queue.wake_pending.store(false, Ordering::Release);

        fanout_queue
            .publish(ZmqMessage::from(Bytes::from_static(b"second")))
            .expect("publish second message");

        wake_receiver.try_recv().expect("second wake");
        assert_eq!(
            queued_frame(fanout_queue.queue.pop().expect("queued message")),
            Bytes::from_static(b"second")
        );
    }

    #[async_rt::test]
    async fn test_send_without_subscribers_does_not_enqueue_fanout_message() {
        let mut socket = PubSocket::new();

        socket
            .send(ZmqMessage::from("dropped without subscribers"))
            .await
            .expect("send without subscribers");

        assert!(socket.fanout_queue.queue.is_empty());
    }

    #[async_rt::test]
    async fn test_replacing_subscriber_does_not_increment_subscriber_count() {
        let backend = test_backend();
        let peer_id = PeerIdentity::new();
        let (first_sender, _first_receiver) = mpsc::channel(8);
        let (second_sender, _second_receiver) = mpsc::channel(8);

        insert_test_subscriber(&backend, peer_id.clone(), vec![vec![]], first_sender).await;
        insert_test_subscriber(
            &backend,
            peer_id.clone(),
            vec![b"topic".to_vec()],
            second_sender,
        )
        .await;

        assert_eq!(backend.subscriber_count.load(Ordering::Relaxed), 1);
        assert_eq!(backend.subscribers.len(), 1);
    }

    #[async_rt::test]
    async fn test_shutdown_clears_subscriber_count() {
        let backend = test_backend();
        let (sender, _receiver) = mpsc::channel(8);

        insert_test_subscriber(&backend, PeerIdentity::new(), vec![vec![]], sender).await;

        assert_eq!(backend.subscriber_count.load(Ordering::Relaxed), 1);

        backend.shutdown();

        assert_eq!(backend.subscriber_count.load(Ordering::Relaxed), 0);
        assert!(backend.subscribers.is_empty());
    }

    #[async_rt::test]
    async fn test_fanout_message_delivers_only_matching_subscribers() {
        let backend = test_backend();
        let matching_peer = PeerIdentity::new();
        let non_matching_peer = PeerIdentity::new();
        let (matching_sender, mut matching_receiver) = mpsc::channel(8);
        let (non_matching_sender, mut non_matching_receiver) = mpsc::channel(8);

        insert_test_subscriber(
            &backend,
            matching_peer,
            vec![b"topic.a".to_vec()],
            matching_sender,
        )
        .await;
        insert_test_subscriber(
            &backend,
            non_matching_peer,
            vec![b"topic.b".to_vec()],
            non_matching_sender,
        )
        .await;

        backend
            .fanout_message(ZmqMessage::from(Bytes::from_static(b"topic.a payload")))
            .await;

        let matched = matching_receiver.try_recv().expect("matching subscriber");
        let Message::Message(matched) = matched else {
            panic!("unexpected queued message type");
        };
        assert_eq!(
            matched.get(0),
            Some(&Bytes::from_static(b"topic.a payload"))
        );
        assert!(non_matching_receiver.try_recv().is_err());
    }

    #[async_rt::test]
    async fn test_closed_subscriber_queue_does_not_interrupt_fanout_to_matching_peer() {
        let backend = test_backend();
        let stale_peer = PeerIdentity::new();
        let live_peer = PeerIdentity::new();
        let (stale_sender, stale_receiver) = mpsc::channel(1);
        let (live_sender, mut live_receiver) = mpsc::channel(8);
        drop(stale_receiver);

        insert_test_subscriber(&backend, stale_peer.clone(), vec![vec![]], stale_sender).await;
        insert_test_subscriber(&backend, live_peer.clone(), vec![vec![]], live_sender).await;

        backend
            .fanout_message(ZmqMessage::from(Bytes::from_static(b"payload")))
            .await;

        let queued = live_receiver.try_recv().expect("live subscriber message");
        let Message::Message(message) = queued else {
            panic!("unexpected queued message type");
        };
        assert_eq!(message.get(0), Some(&Bytes::from_static(b"payload")));

        assert!(backend.subscribers.get_sync(&stale_peer).is_some());
        assert!(backend.subscribers.get_sync(&live_peer).is_some());
        assert_eq!(backend.subscriber_count.load(Ordering::Relaxed), 2);
    }

    #[async_rt::test]
    async fn test_full_subscriber_queue_drops_message_without_disconnect() {
        let backend = test_backend();
        let peer_id = PeerIdentity::new();
        let (mut queue_sender, mut queue_receiver) = mpsc::channel(1);

        insert_test_subscriber(
            &backend,
            peer_id.clone(),
            vec![vec![]],
            queue_sender.clone(),
        )
        .await;

        let mut prefilled_count = 0;
        loop {
            let message = Message::Message(ZmqMessage::from(format!(
                "already queued {prefilled_count}"
            )));
            match queue_sender.try_send(message) {
                Ok(()) => prefilled_count += 1,
                Err(error) if error.is_full() => {
                    drop(error.into_inner());
                    break;
                }
                Err(error) => panic!("unexpected queue prefill error: {error:?}"),
            }
        }
        assert!(prefilled_count > 0);

        send_to_subscriber(queue_sender, &ZmqMessage::from("dropped payload"));

        assert!(backend.subscribers.get_sync(&peer_id).is_some());
        assert_eq!(backend.subscriber_count.load(Ordering::Relaxed), 1);

        let mut queued_messages = Vec::new();
        while let Ok(queued) = queue_receiver.try_recv() {
            let Message::Message(message) = queued else {
                panic!("unexpected queued message type");
            };
            queued_messages.push(String::try_from(message).unwrap());
        }

        assert_eq!(queued_messages.len(), prefilled_count);
        assert!(queued_messages
            .iter()
            .all(|message| message.starts_with("already queued ")));
        assert!(!queued_messages
            .iter()
            .any(|message| message == "dropped payload"));
    }

    #[async_rt::test]
    async fn test_send_to_subscriber_drops_closed_queue_without_disconnect() {
        let backend = test_backend();
        let peer_id = PeerIdentity::new();
        let (queue_sender, queue_receiver) = mpsc::channel(1);
        drop(queue_receiver);

        insert_test_subscriber(
            &backend,
            peer_id.clone(),
            vec![vec![]],
            queue_sender.clone(),
        )
        .await;

        send_to_subscriber(queue_sender, &ZmqMessage::from("payload"));

        assert!(backend.subscribers.get_sync(&peer_id).is_some());
        assert_eq!(backend.subscriber_count.load(Ordering::Relaxed), 1);
    }

    #[async_rt::test]
    async fn test_bind_to_any_port() -> ZmqResult<()> {
        let s = PubSocket::new();
        test_bind_to_any_port_helper(s).await
    }

    #[async_rt::test]
    async fn test_bind_to_any_ipv4_interface() -> ZmqResult<()> {
        let any_ipv4: IpAddr = "0.0.0.0".parse().unwrap();
        let s = PubSocket::new();
        test_bind_to_unspecified_interface_helper(any_ipv4, s, 4000).await
    }

    #[async_rt::test]
    async fn test_bind_to_any_ipv6_interface() -> ZmqResult<()> {
        let any_ipv6: IpAddr = "::".parse().unwrap();
        let s = PubSocket::new();
        test_bind_to_unspecified_interface_helper(any_ipv6, s, 4010).await
    }
}
