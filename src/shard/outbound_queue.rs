//! One connection's outbound queue: the frames waiting to be written to its socket.
//!
//! Frames are shared, pre-encoded `Bytes` (a broadcast is the same allocation for every
//! receiver). A connection is a slow consumer when its oldest unwritten frame has waited too
//! long (`slow_consumer_lag_ms`; the writer judges that, since only it knows when the socket
//! stops taking bytes: [`OutboundQueue::oldest_unwritten_since`]) or when the bytes pending,
//! counting frames handed to the writer but not yet written, pass a hard cap
//! (`outbound_queue_bytes`, judged here on every push). Either way its pending frames are
//! dropped and it is closed with 1013; once closing, nothing more is accepted.
//!
//! What it must never do: read the clock per frame. The time is read only when a frame lands
//! in an empty queue, which is once per writer round, not once per frame of a burst.

use std::collections::VecDeque;
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;

/// The most frames an idle queue (or the writer's batch) keeps room for. A burst (a presence
/// storm, a backlog) grows them; once it is written the room goes back, since thousands of idle
/// connections each holding a burst's capacity add up (a frame slot is 32 bytes). Steady traffic
/// of a frame or two per write never grows past this, so it costs no allocation.
const IDLE_FRAMES_KEPT: usize = 4;

/// Why and how a connection is being closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    /// The WebSocket close code sent to the client.
    pub code: u16,
    /// A short human-readable reason (at most 123 bytes on the wire).
    pub reason: &'static str,
}

/// What happened to a frame offered to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// The frame was written (see `Conn::send_now`) or will be.
    Queued,
    /// The queue passed its limit: the connection is now closing as a slow consumer.
    Overflow,
    /// The connection is already closing; the frame was discarded.
    Closing,
}

/// Frames waiting for the connection's writer.
#[derive(Debug)]
pub struct OutboundQueue {
    frames: VecDeque<Bytes>,
    /// Bytes queued or being written; the hard cap applies to this.
    pending_bytes: usize,
    limit: usize,
    /// When the oldest frame of `frames` was queued (set when a frame lands in an empty queue).
    queued_since: Option<Instant>,
    /// When the oldest frame the writer took and has not finished writing was queued.
    taken_since: Option<Instant>,
    /// Bytes the writer took and has not written yet (part of `pending_bytes`).
    taken_bytes: usize,
    writer: Option<Waker>,
    close: Option<CloseRequest>,
}

impl OutboundQueue {
    /// An empty queue that tolerates at most `limit` pending bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            frames: VecDeque::new(),
            pending_bytes: 0,
            limit,
            queued_since: None,
            taken_since: None,
            taken_bytes: 0,
            writer: None,
            close: None,
        }
    }

    /// Offers one frame. On overflow the queue switches to closing with 1013.
    pub fn push(&mut self, frame: Bytes) -> Enqueued {
        if self.close.is_some() {
            return Enqueued::Closing;
        }
        if self.pending_bytes + frame.len() > self.limit {
            self.close_slow();
            return Enqueued::Overflow;
        }
        if self.frames.is_empty() {
            // The one clock read of a writer round: later frames of a burst are younger.
            self.queued_since = Some(Instant::now());
        }
        self.pending_bytes += frame.len();
        self.frames.push_back(frame);
        self.wake_writer();
        Enqueued::Queued
    }

    /// Nothing queued, nothing handed to the writer and not closing: a frame written straight
    /// to the socket now cannot overtake another.
    pub fn is_idle(&self) -> bool {
        self.pending_bytes == 0 && self.close.is_none()
    }

    /// Asks the writer to send what is queued, then a close frame. The first request wins.
    pub fn close(&mut self, request: CloseRequest) {
        if self.close.is_none() {
            self.close = Some(request);
            self.wake_writer();
        }
    }

    /// Closes as a slow consumer: drops what is queued (nobody will read it) and asks the
    /// writer for a 1013 close frame. Does nothing when already closing.
    pub fn close_slow(&mut self) {
        if self.close.is_some() {
            return;
        }
        self.frames.clear();
        self.queued_since = None;
        self.close = Some(CloseRequest {
            code: crate::protocol::close_code::TRY_AGAIN_LATER,
            reason: "slow consumer",
        });
        self.wake_writer();
    }

    /// When the oldest frame not yet written was queued: the writer's current batch first,
    /// else the queue. `None` when nothing is pending. Its age is the connection's lag.
    pub fn oldest_unwritten_since(&self) -> Option<Instant> {
        self.taken_since.or(self.queued_since)
    }

    /// True once a close was requested (by us or because of overflow).
    pub fn is_closing(&self) -> bool {
        self.close.is_some()
    }

    /// Moves every queued frame into `batch` (which must be empty: the writer's last batch,
    /// written), keeping both allocations, except that a burst's worth of room in the written
    /// batch is let go ([`IDLE_FRAMES_KEPT`]); the two deques swap at every take, so this is
    /// the one place that rule needs. Returns the close request when there is nothing left to
    /// write before it.
    pub fn take(&mut self, batch: &mut VecDeque<Bytes>) -> Option<CloseRequest> {
        debug_assert!(batch.is_empty());
        if batch.capacity() > IDLE_FRAMES_KEPT {
            *batch = VecDeque::new();
        }
        std::mem::swap(&mut self.frames, batch);
        if batch.is_empty() {
            return self.close.clone();
        }
        // The writer only takes once its last batch is written, so every pending byte is in
        // the batch now.
        self.taken_bytes = self.pending_bytes;
        self.taken_since = self.queued_since.take();
        None
    }

    /// The writer finished writing `bytes` of what it took.
    pub fn written(&mut self, bytes: usize) {
        self.pending_bytes = self.pending_bytes.saturating_sub(bytes);
        self.taken_bytes = self.taken_bytes.saturating_sub(bytes);
        if self.taken_bytes == 0 {
            self.taken_since = None;
        }
    }

    /// Registers the writer task to be woken by the next push or close.
    pub fn register_writer(&mut self, waker: &Waker) {
        match &self.writer {
            Some(w) if w.will_wake(waker) => {}
            _ => self.writer = Some(waker.clone()),
        }
    }

    fn wake_writer(&mut self) {
        if let Some(waker) = self.writer.take() {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    #[test]
    fn frames_are_taken_in_order() {
        let mut q = OutboundQueue::new(100);
        assert_eq!(q.push(Bytes::from_static(b"a")), Enqueued::Queued);
        assert_eq!(q.push(Bytes::from_static(b"b")), Enqueued::Queued);
        let mut batch = VecDeque::new();
        assert_eq!(q.take(&mut batch), None);
        assert_eq!(
            batch,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        );
    }

    #[test]
    fn a_bursts_room_is_let_go_once_written() {
        let mut q = OutboundQueue::new(1 << 20);
        for _ in 0..100 {
            q.push(frame(5));
        }
        let mut batch = VecDeque::new();
        q.take(&mut batch);
        assert_eq!(batch.len(), 100);
        assert!(q.frames.capacity() <= IDLE_FRAMES_KEPT);
        batch.clear(); // written
        q.written(500);
        assert!(q.take(&mut batch).is_none());
        assert!(batch.is_empty());
        assert!(batch.capacity() <= IDLE_FRAMES_KEPT, "the writer's batch");
        assert!(q.frames.capacity() <= IDLE_FRAMES_KEPT, "the queue");
    }

    #[test]
    fn idle_only_once_everything_taken_is_written_and_never_when_closing() {
        let mut q = OutboundQueue::new(100);
        assert!(q.is_idle());
        q.push(frame(5));
        assert!(!q.is_idle(), "a frame is queued");
        let mut batch = VecDeque::new();
        q.take(&mut batch);
        assert!(!q.is_idle(), "the writer holds bytes not yet written");
        q.written(3);
        assert!(!q.is_idle(), "part of the frame is still being written");
        q.written(2);
        assert!(q.is_idle());
        q.close(CloseRequest {
            code: 1000,
            reason: "",
        });
        assert!(!q.is_idle(), "nothing may be written after the close frame");
    }

    #[test]
    fn passing_the_byte_limit_closes_as_slow_consumer() {
        let mut q = OutboundQueue::new(10);
        assert_eq!(q.push(frame(6)), Enqueued::Queued);
        assert_eq!(q.push(frame(6)), Enqueued::Overflow);
        assert_eq!(q.push(frame(1)), Enqueued::Closing);
        let mut batch = VecDeque::new();
        let close = q.take(&mut batch).expect("overflow requests a close");
        assert!(
            batch.is_empty(),
            "pending frames of a slow consumer are dropped"
        );
        assert_eq!(close.code, 1013);
        assert_eq!(close.reason, "slow consumer");
    }

    #[test]
    fn bytes_being_written_still_count_against_the_limit() {
        let mut q = OutboundQueue::new(10);
        q.push(frame(8));
        let mut batch = VecDeque::new();
        q.take(&mut batch);
        assert_eq!(q.push(frame(4)), Enqueued::Overflow);
        let mut q = OutboundQueue::new(10);
        q.push(frame(8));
        batch.clear();
        q.take(&mut batch);
        q.written(8);
        assert_eq!(q.push(frame(4)), Enqueued::Queued);
    }

    #[test]
    fn the_lag_is_timed_from_the_oldest_frame_not_yet_written() {
        let mut q = OutboundQueue::new(1 << 20);
        assert_eq!(q.oldest_unwritten_since(), None, "nothing pending");
        q.push(frame(3));
        let first = q.oldest_unwritten_since().expect("a frame is pending");
        q.push(frame(3));
        assert_eq!(
            q.oldest_unwritten_since(),
            Some(first),
            "a later frame is younger"
        );
        let mut batch = VecDeque::new();
        q.take(&mut batch);
        assert_eq!(
            q.oldest_unwritten_since(),
            Some(first),
            "taken is not written"
        );
        q.push(frame(4));
        assert_eq!(
            q.oldest_unwritten_since(),
            Some(first),
            "the batch is older"
        );
        q.written(5);
        assert_eq!(
            q.oldest_unwritten_since(),
            Some(first),
            "part of the batch is still being written"
        );
        q.written(1);
        let second = q
            .oldest_unwritten_since()
            .expect("the frame queued meanwhile");
        assert!(second >= first);
        batch.clear();
        q.take(&mut batch);
        assert_eq!(q.oldest_unwritten_since(), Some(second));
        q.written(4);
        assert_eq!(q.oldest_unwritten_since(), None, "everything written");
    }

    #[test]
    fn a_lagging_connection_is_closed_with_1013_and_its_queue_dropped() {
        let mut q = OutboundQueue::new(1 << 20);
        q.push(frame(3));
        q.close_slow();
        assert_eq!(
            q.oldest_unwritten_since(),
            None,
            "the dropped frames no longer lag"
        );
        assert_eq!(q.push(frame(1)), Enqueued::Closing);
        let mut batch = VecDeque::new();
        let close = q.take(&mut batch).expect("a close is requested");
        assert!(batch.is_empty(), "nothing is written to a slow consumer");
        assert_eq!((close.code, close.reason), (1013, "slow consumer"));
        q.close(CloseRequest {
            code: 1012,
            reason: "restart",
        });
        assert_eq!(
            q.take(&mut batch).map(|c| c.code),
            Some(1013),
            "the first wins"
        );
    }

    #[test]
    fn close_is_sent_after_queued_frames() {
        let mut q = OutboundQueue::new(100);
        q.push(frame(3));
        q.close(CloseRequest {
            code: 1012,
            reason: "restart",
        });
        let mut batch = VecDeque::new();
        assert_eq!(q.take(&mut batch), None);
        assert_eq!(batch.len(), 1);
        batch.clear();
        assert_eq!(q.take(&mut batch).map(|c| c.code), Some(1012));
    }
}
