//! A bounded multi-producer queue whose memory grows with use: the queues between threads
//! (the shards' inboxes, the publisher's queue) hold up to tens of thousands of messages under
//! load, and nothing while idle.
//!
//! crossbeam's `bounded` channel is a ring allocated whole when it is made: 65,536 slots of a
//! 100-byte message are 6.5 MiB per queue, resident from start-up whether a message ever comes
//! (it wrote a stamp into every slot). This queue is crossbeam's `unbounded` channel instead (a
//! list of 31-slot blocks, allocated as messages arrive and freed as they are taken) with the
//! bound kept by a counter: a send first claims a place in the count and gives it back if the
//! count was full, a receive gives its place back after taking the message, so the messages in
//! the channel never exceed `capacity`. The overflow rule is the caller's: a full queue refuses
//! the message at once (it never blocks).
//!
//! What it must never do: block a sender, or hold more than `capacity` messages.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use crossbeam_channel::{RecvTimeoutError, TryRecvError, TrySendError};

/// The count shared by both ends.
#[derive(Debug)]
struct Count {
    /// Messages in the channel, plus sends that have claimed a place and not yet sent.
    claimed: AtomicUsize,
    capacity: usize,
}

/// A queue that holds at most `capacity` messages (at least 1); its memory is allocated as
/// messages arrive.
pub fn bounded<T>(capacity: usize) -> (QueueSender<T>, QueueReceiver<T>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let count = Arc::new(Count {
        claimed: AtomicUsize::new(0),
        capacity: capacity.max(1),
    });
    (
        QueueSender {
            tx,
            count: Arc::clone(&count),
        },
        QueueReceiver { rx, count },
    )
}

/// The sending end; cloned for every producer.
#[derive(Debug)]
pub struct QueueSender<T> {
    tx: crossbeam_channel::Sender<T>,
    count: Arc<Count>,
}

impl<T> Clone for QueueSender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            count: Arc::clone(&self.count),
        }
    }
}

impl<T> QueueSender<T> {
    /// Queues `message` unless the queue is full or the receiver is gone; never blocks.
    pub fn try_send(&self, message: T) -> Result<(), TrySendError<T>> {
        let count = &self.count;
        if count.claimed.fetch_add(1, Ordering::AcqRel) >= count.capacity {
            count.claimed.fetch_sub(1, Ordering::AcqRel);
            return Err(TrySendError::Full(message));
        }
        self.tx.send(message).map_err(|err| {
            count.claimed.fetch_sub(1, Ordering::AcqRel);
            TrySendError::Disconnected(err.into_inner())
        })
    }
}

/// The receiving end.
#[derive(Debug)]
pub struct QueueReceiver<T> {
    rx: crossbeam_channel::Receiver<T>,
    count: Arc<Count>,
}

impl<T> QueueReceiver<T> {
    /// Takes one waiting message without waiting.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.rx.try_recv().map(|message| self.release(message))
    }

    /// Waits (asleep) up to `timeout` for a message.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.rx
            .recv_timeout(timeout)
            .map(|message| self.release(message))
    }

    /// Whether no message waits (one may arrive right after).
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Messages waiting, counting sends under way.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.count.claimed.load(Ordering::Acquire)
    }

    fn release(&self, message: T) -> T {
        // Taken out of the channel before its place is given back: the channel never holds
        // more than `capacity`.
        self.count.claimed.fetch_sub(1, Ordering::AcqRel);
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_refuses_at_once_and_takes_again_after_a_receive() {
        let (tx, rx) = bounded::<u32>(2);
        assert!(tx.try_send(1).is_ok());
        assert!(tx.try_send(2).is_ok());
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(rx.len(), 2);
        assert_eq!(rx.try_recv(), Ok(1));
        assert!(tx.try_send(4).is_ok());
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.recv_timeout(Duration::from_millis(1)), Ok(4));
        assert!(rx.is_empty());
        assert_eq!(rx.len(), 0);
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(1)),
            Err(RecvTimeoutError::Timeout)
        );
    }

    #[test]
    fn a_gone_receiver_refuses_without_keeping_the_place() {
        let (tx, rx) = bounded::<u32>(1);
        drop(rx);
        assert!(matches!(tx.try_send(1), Err(TrySendError::Disconnected(1))));
        assert_eq!(tx.count.claimed.load(Ordering::Acquire), 0);
    }

    #[test]
    fn concurrent_senders_never_put_more_than_the_capacity_in() {
        let (tx, rx) = bounded::<usize>(1000);
        let accepted: usize = std::thread::scope(|s| {
            let senders: Vec<_> = (0..4)
                .map(|_| {
                    let tx = tx.clone();
                    s.spawn(move || (0..10_000).filter(|&i| tx.try_send(i).is_ok()).count())
                })
                .collect();
            senders.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(accepted, 1000);
        let mut received = 0;
        while rx.try_recv().is_ok() {
            received += 1;
        }
        assert_eq!(received, 1000);
        assert_eq!(rx.len(), 0);
    }

    #[test]
    fn an_idle_queue_holds_no_memory_and_a_drained_one_gives_it_back() {
        // The property the queue exists for: a bounded crossbeam channel of this capacity
        // allocates 65,536 × 104 bytes when it is made; this one allocates per 31 messages.
        let allocated = || crate::heap::thread_allocated_bytes().expect("jemalloc statistics");
        // Signed: a thread may free more than it allocated (what other threads allocated).
        let live = || {
            crate::heap::thread_allocated_bytes().unwrap() as i64
                - crate::heap::thread_deallocated_bytes().unwrap() as i64
        };
        let before = allocated();
        let (tx, rx) = bounded::<[u8; 96]>(65_536);
        assert!(
            allocated() - before < 4096,
            "an empty queue allocated {} bytes",
            allocated() - before
        );
        let live_before = live();
        for _ in 0..10_000 {
            tx.try_send([7; 96]).unwrap();
        }
        let grown = live() - live_before;
        assert!(
            (10_000 * 96..10_000 * 160).contains(&grown),
            "10,000 messages of 96 bytes hold {grown} bytes"
        );
        while rx.try_recv().is_ok() {}
        assert!(
            live() - live_before < 8192,
            "a drained queue still holds {} bytes",
            live() - live_before
        );
    }
}
