//! A shard's inbox task: takes every message other threads hand to the shard
//! ([`crate::inbox::ShardMessage`]) and passes each to the part of the shard it is for.
//!
//! What it must never do: block or await anything but the inbox itself (a slow handler would
//! hold up every message behind it); it yields to the executor every 256 messages so that a
//! backlog does not starve the shard's connections.

use std::rc::Rc;
use std::sync::Arc;

use super::context::ShardContext;
use super::fan_out::{fan_out, write_mode};
use super::{admin, presence_delivery, recovery, session};
use crate::inbox::ShardMessage;

/// Takes everything other threads send to this shard.
pub(super) async fn inbox_loop(ctx: Rc<ShardContext>, stop: futures::channel::oneshot::Sender<()>) {
    let inbox = Arc::clone(ctx.shared.shards.inbox(ctx.id));
    let mut stop = Some(stop);
    loop {
        inbox.ready().await;
        let mut handled = 0u32;
        while let Some(message) = inbox.try_recv() {
            match message {
                ShardMessage::Broadcast(broadcast) => fan_out(&ctx, &broadcast, write_mode(&inbox)),
                ShardMessage::Downstream {
                    broadcast,
                    received_at,
                } => {
                    if broadcast.topic() == crate::admin::STATS_WANTED_TOPIC {
                        ctx.shared.stats_wanted_now();
                    }
                    fan_out(&ctx, &broadcast, write_mode(&inbox));
                    recovery::observe(&ctx, &broadcast);
                    ctx.metrics().downstream_queued(received_at);
                }
                ShardMessage::TopicSubscribed { topic, generation } => {
                    recovery::topic_subscribed(&ctx, &topic, generation)
                }
                ShardMessage::HistoryAnswer { ticket, page } => {
                    recovery::history_answer(&ctx, ticket, page)
                }
                ShardMessage::PushResult { ack, outcome } => {
                    ctx.metrics().push_outcome(outcome);
                    session::push_result(&ctx, ack, outcome)
                }
                ShardMessage::PresenceDiff { broadcast, version } => {
                    presence_delivery::take_diff(&ctx, broadcast, version)
                }
                ShardMessage::PresenceState { ticket, state } => {
                    presence_delivery::deliver_state(&ctx, ticket, state)
                }
                ShardMessage::AdminAnswer { ticket, answer } => admin::answer(&ctx, ticket, answer),
                ShardMessage::DisconnectClient { id } => admin::disconnect_client(&ctx, &id),
                ShardMessage::PresenceResync => presence_delivery::resync_all(&ctx),
                ShardMessage::RedisStateChanged => {
                    admin::announce_redis_state(&ctx);
                    super::recovery::redis_state_changed(&ctx);
                }
                ShardMessage::Shutdown => {
                    ctx.shutting_down.set(true);
                    if let Some(stop) = stop.take() {
                        let _ = stop.send(());
                    }
                }
            }
            handled += 1;
            if handled.is_multiple_of(256) {
                glommio::yield_if_needed().await;
            }
        }
    }
}
