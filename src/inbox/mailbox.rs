//! A shard's inbox: the lock-free hand-off from other threads (the Redis core, the `system`
//! and `admin` tickers, the server's shutdown) into one shard's executor, and the messages it
//! carries.
//!
//! A [`bounded_queue`](crate::bounded_queue) carries the messages (its memory grows with use:
//! an idle inbox holds none); an [`AtomicWaker`] wakes the shard's inbox task, which glommio
//! turns into a cross-thread notification (eventfd), so an idle shard sleeps instead of
//! polling. Overflow rule: `send` never blocks; when the queue is full the
//! message is dropped, counted in `dropped`, and `send` returns false. The queue is bounded
//! twice: in messages, and in the payload bytes of the broadcasts it holds, so that a shard
//! that falls behind on large messages holds at most that many bytes (Redis would cut our
//! subscriber at 32 MB of its own buffer; we drop for the one shard that is behind first).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

use super::tickets::{AdminTicket, HistoryTicket, PushAck, PushOutcome};
use crate::bounded_queue::{self, QueueReceiver, QueueSender, TrySendError};
use crate::history::HistoryPage;
use crate::presence::PresenceTicket;
use crate::protocol::Broadcast;

/// What a shard can be told from outside.
#[derive(Debug)]
pub enum ShardMessage {
    /// A downstream message for every local subscriber of its topic.
    Broadcast(Arc<Broadcast>),
    /// A message from Redis (`to:<topic>:<event>`) for every local subscriber of its topic.
    Downstream {
        /// The frame, built once by the Redis reader.
        broadcast: Arc<Broadcast>,
        /// When the reader read it from Redis: the start of the downstream latency.
        received_at: std::time::Instant,
    },
    /// The outcome of a client's push that the publisher sent to Redis.
    PushResult {
        /// Who to answer.
        ack: PushAck,
        /// Whether Redis accepted it.
        outcome: PushOutcome,
    },
    /// A presence diff for a topic, with the version of the members it leads to.
    PresenceDiff {
        /// The `presence_diff` broadcast, built once.
        broadcast: Arc<Broadcast>,
        /// The topic's presence version after this diff.
        version: u64,
    },
    /// The presence state for a join, or `None` when Redis could not give it.
    PresenceState {
        /// Which join asked.
        ticket: PresenceTicket,
        /// The version and the `presence_state` JSON.
        state: Option<crate::presence::replica::State>,
    },
    /// The answer to an admin query.
    AdminAnswer {
        /// Who asked, and how to answer.
        ticket: AdminTicket,
        /// The JSON answer, or why there is none.
        answer: Result<serde_json::Value, String>,
    },
    /// Redis came back: register every local presence again (its data may be gone, and diffs
    /// published while we were away were missed) and send each channel a fresh state.
    PresenceResync,
    /// The Redis connection state changed; tell the admin members.
    RedisStateChanged,
    /// Close every socket of this client id (admin `disconnect`, from any process).
    DisconnectClient {
        /// The client id (token `id` claim).
        id: String,
    },
    /// Redis confirmed this process's sharded subscription of `topic` (`SSUBSCRIBE`), or it was
    /// already confirmed when this shard gained the topic: messages published with the function
    /// from now on reach the shard, so the joins waiting for it can be answered.
    TopicSubscribed {
        /// The topic.
        topic: String,
        /// The shard's holding of the topic this confirms ([`super::InterestChange::generation`]).
        generation: u64,
    },
    /// The history a waiting join asked for, or `None` when Redis could not give it.
    HistoryAnswer {
        /// Which join asked.
        ticket: HistoryTicket,
        /// What the history holds after the join's `since`.
        page: Option<HistoryPage>,
    },
    /// Stop accepting, close every socket with 1012, then stop the executor.
    Shutdown,
}

impl ShardMessage {
    /// The bytes this message holds alive while it waits: the payload of a broadcast (shared
    /// with other shards, but held by this one until it is delivered); 0 for control messages,
    /// which are bounded by count only.
    fn weight(&self) -> usize {
        match self {
            ShardMessage::Broadcast(broadcast)
            | ShardMessage::Downstream { broadcast, .. }
            | ShardMessage::PresenceDiff { broadcast, .. } => broadcast.payload().len(),
            _ => 0,
        }
    }
}

/// One shard's inbox. Shared (`Arc`) between the shard and every sender.
#[derive(Debug)]
pub struct ShardInbox {
    tx: QueueSender<ShardMessage>,
    rx: QueueReceiver<ShardMessage>,
    waker: AtomicWaker,
    dropped: AtomicU64,
    /// Payload bytes of the broadcasts waiting, and the most allowed.
    queued_bytes: AtomicUsize,
    max_bytes: usize,
}

impl ShardInbox {
    /// An inbox that holds at most `capacity` messages and `max_bytes` of broadcast payloads.
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        let (tx, rx) = bounded_queue::bounded(capacity);
        Self {
            tx,
            rx,
            waker: AtomicWaker::new(),
            dropped: AtomicU64::new(0),
            queued_bytes: AtomicUsize::new(0),
            max_bytes,
        }
    }

    /// Queues `message` and wakes the shard. Never blocks; false when the inbox was full (or
    /// the shard is gone) and the message was dropped.
    pub fn send(&self, message: ShardMessage) -> bool {
        let weight = message.weight();
        if weight > 0 {
            let queued = self.queued_bytes.fetch_add(weight, Ordering::AcqRel) + weight;
            if queued > self.max_bytes {
                self.queued_bytes.fetch_sub(weight, Ordering::AcqRel);
                return self.drop_one();
            }
        }
        match self.tx.try_send(message) {
            Ok(()) => {
                self.waker.wake();
                true
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.queued_bytes.fetch_sub(weight, Ordering::AcqRel);
                self.drop_one()
            }
        }
    }

    fn drop_one(&self) -> bool {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.waker.wake();
        false
    }

    /// Payload bytes of the broadcasts waiting.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Acquire)
    }

    /// Messages dropped because the inbox was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether no message waits (one may arrive right after).
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Takes one waiting message without waiting.
    pub fn try_recv(&self) -> Option<ShardMessage> {
        let message = self.rx.try_recv().ok()?;
        let weight = message.weight();
        if weight > 0 {
            self.queued_bytes.fetch_sub(weight, Ordering::AcqRel);
        }
        Some(message)
    }

    /// Waits (asleep) until at least one message is waiting.
    pub fn ready(&self) -> InboxReady<'_> {
        InboxReady { inbox: self }
    }
}

/// Future returned by [`ShardInbox::ready`].
pub struct InboxReady<'a> {
    inbox: &'a ShardInbox,
}

impl Future for InboxReady<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.inbox.rx.is_empty() {
            return Poll::Ready(());
        }
        self.inbox.waker.register(cx.waker());
        // A message sent between the check and the registration must not be missed.
        if !self.inbox.rx.is_empty() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn downstream(bytes: usize) -> ShardMessage {
        let payload = format!("\"{}\"", "x".repeat(bytes - 2));
        ShardMessage::Downstream {
            broadcast: Arc::new(Broadcast::new("t", "e", payload.as_bytes())),
            received_at: std::time::Instant::now(),
        }
    }

    #[test]
    fn broadcasts_are_bounded_in_bytes_and_control_messages_only_in_count() {
        let inbox = ShardInbox::new(100, 10_000);
        assert!(inbox.send(downstream(4_000)));
        assert!(inbox.send(downstream(4_000)));
        assert!(!inbox.send(downstream(4_000)), "12,000 bytes > 10,000");
        assert_eq!(inbox.dropped(), 1);
        assert_eq!(inbox.queued_bytes(), 8_000);
        assert!(
            inbox.send(ShardMessage::RedisStateChanged),
            "no bytes: only the count"
        );
        assert!(inbox.send(downstream(2_000)), "what fits still goes in");
        assert!(inbox.try_recv().is_some());
        assert_eq!(inbox.queued_bytes(), 6_000);
        assert!(
            inbox.send(downstream(4_000)),
            "room again once the shard took one"
        );
        while inbox.try_recv().is_some() {}
        assert_eq!(inbox.queued_bytes(), 0);
    }

    #[test]
    fn control_messages_are_bounded_in_count() {
        let inbox = ShardInbox::new(3, 1 << 20);
        for _ in 0..3 {
            assert!(inbox.send(ShardMessage::RedisStateChanged));
        }
        assert!(!inbox.send(ShardMessage::PresenceResync), "4 > 3 messages");
        assert!(!inbox.send(downstream(10)), "a broadcast counts as one too");
        assert_eq!(inbox.dropped(), 2);
        assert_eq!(
            inbox.queued_bytes(),
            0,
            "a refused broadcast gives its bytes back"
        );
        assert!(inbox.try_recv().is_some());
        assert!(
            inbox.send(downstream(10)),
            "room again once the shard took one"
        );
        assert_eq!(inbox.queued_bytes(), 10);
    }

    #[test]
    fn an_idle_inbox_of_the_default_size_holds_no_memory() {
        // The default inbox is 65,536 messages; as a preallocated ring it was 6.5 MiB per
        // shard from start-up (docs/benchmarks.md, "Start-up memory").
        let before = crate::heap::thread_allocated_bytes().expect("jemalloc statistics");
        let inbox = ShardInbox::new(65_536, 32 << 20);
        let allocated = crate::heap::thread_allocated_bytes().unwrap() - before;
        assert!(
            allocated < 4096,
            "an idle inbox allocated {allocated} bytes"
        );
        assert!(inbox.is_empty());
    }

    #[test]
    fn a_full_count_drops_without_leaking_the_byte_budget() {
        let inbox = ShardInbox::new(1, 1 << 20);
        assert!(inbox.send(downstream(100)));
        assert!(!inbox.send(downstream(100)));
        assert_eq!(inbox.queued_bytes(), 100);
        assert_eq!(inbox.dropped(), 1);
    }
}
