//! The upstream half of the Redis core: pipelined `PUBLISH from:<topic>:<event>`.
//!
//! Runs on its own thread, fed by one bounded queue that every shard writes to. It takes
//! whatever is waiting (up to [`MAX_BATCH`]), sends it as one pipeline, and tells each
//! originating shard the outcome so that the client gets `ok` only once Redis accepted the
//! message. One thread and one FIFO queue keep a client's pushes in the order it sent them.
//! While Redis is down every queued push is answered `backend unavailable` at once: a client
//! never waits on a dead Redis and never gets a false `ok`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::status::RedisStatus;
use crate::shard::inbox::{PushAck, PushOutcome, ShardInbox, ShardMessage};

/// The most publishes sent in one pipeline.
pub const MAX_BATCH: usize = 512;
/// How long a pipeline may take before the connection is declared dead.
const IO_DEADLINE: Duration = Duration::from_secs(3);
/// How often an idle publisher looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// One message to publish, and who to tell when it is done.
#[derive(Debug)]
pub struct PublishRequest {
    /// The Redis channel, `from:<topic>:<event>`.
    pub channel: String,
    /// The payload exactly as the client sent it.
    pub payload: Bytes,
    /// Which shard and connection wait for the outcome; `None` for fire-and-forget.
    pub origin: Option<(usize, PushAck)>,
}

/// Everything the publisher thread needs.
pub struct RedisPublisher {
    pub(super) client: redis::Client,
    pub(super) status: Arc<RedisStatus>,
    pub(super) inboxes: Vec<Arc<ShardInbox>>,
    pub(super) queue: Receiver<PublishRequest>,
    /// Set at shutdown: publish what is queued, then stop.
    pub(super) stop: Arc<AtomicBool>,
}

impl RedisPublisher {
    /// Runs until the stop flag is set (or every sender is gone) and the queue is drained.
    pub fn run(self) {
        let mut backoff = Backoff::default();
        let mut ever_connected = false;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            match self.connect() {
                Ok(mut conn) => {
                    backoff.reset();
                    if ever_connected {
                        self.status.count_reconnect();
                    }
                    ever_connected = true;
                    self.status.set_publisher_up(true);
                    info!("redis publisher connected");
                    match self.publish_until_failure(&mut conn, &mut batch) {
                        Ok(()) => {
                            info!("redis publisher drained and stopped");
                            return;
                        }
                        Err(err) => {
                            self.status.set_publisher_up(false);
                            warn!(%err, "redis publisher lost; reconnecting");
                        }
                    }
                }
                Err(err) => debug!(%err, "redis publisher cannot connect yet"),
            }
            // While disconnected, answer everything that arrives at once, then try again.
            let wait = backoff.next_wait();
            if self.stop.load(Ordering::Acquire) {
                while let Ok(next) = self.queue.try_recv() {
                    self.fail(next);
                }
                return;
            }
            match self.queue.recv_timeout(wait) {
                Ok(first) => {
                    self.fail(first);
                    while let Ok(next) = self.queue.try_recv() {
                        self.fail(next);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let conn = self
            .client
            .get_connection_with_timeout(Duration::from_secs(2))?;
        conn.set_read_timeout(Some(IO_DEADLINE))?;
        conn.set_write_timeout(Some(IO_DEADLINE))?;
        Ok(conn)
    }

    /// Publishes batches until the queue closes (Ok) or Redis fails (Err).
    fn publish_until_failure(
        &self,
        conn: &mut redis::Connection,
        batch: &mut Vec<PublishRequest>,
    ) -> redis::RedisResult<()> {
        loop {
            let first = match self.queue.recv_timeout(STOP_CHECK) {
                Ok(first) => first,
                Err(RecvTimeoutError::Timeout) if self.stop.load(Ordering::Acquire) => {
                    return Ok(())
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match self.queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let mut pipe = redis::pipe();
            for request in batch.iter() {
                pipe.cmd("PUBLISH")
                    .arg(&request.channel)
                    .arg(request.payload.as_ref());
            }
            let result = pipe.query::<Vec<redis::Value>>(conn);
            let outcome = match result {
                Ok(_) => PushOutcome::Published,
                Err(_) => PushOutcome::BackendUnavailable,
            };
            for request in batch.drain(..) {
                self.answer(request, outcome);
            }
            result?;
        }
    }

    fn fail(&self, request: PublishRequest) {
        self.answer(request, PushOutcome::BackendUnavailable);
    }

    fn answer(&self, request: PublishRequest, outcome: PushOutcome) {
        let Some((shard, ack)) = request.origin else {
            return;
        };
        if let Some(inbox) = self.inboxes.get(shard) {
            // An answer that does not fit leaves the client without a reply only when its shard
            // is hopelessly behind; the shard inbox counts it.
            inbox.send(ShardMessage::PushResult { ack, outcome });
        }
    }
}
