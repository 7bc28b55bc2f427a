//! A shard's periodic upkeep: closing connections idle past `idle_timeout`, and on shard 0,
//! giving a burst's memory back to the kernel.
//!
//! What it must never do: run per message, or wake more often than a quarter of the idle
//! timeout (at least every 5 s, at most every 250 ms): an idle server stays nearly free.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::context::ShardContext;

use crate::protocol::close_code::IDLE_TIMEOUT;

/// Bytes written since the last trim beyond which the heap is trimmed.
const TRIM_AFTER_BYTES: u64 = 64 * 1024 * 1024;

/// Gives the memory of a burst of writes back to the kernel ([`crate::heap`]). Runs on shard
/// 0's sweeper, only after that much traffic, so an idle or steady server never pays for it.
fn trim_heap_after_bursts(ctx: &ShardContext, bytes_at_last_trim: u64) -> u64 {
    let written = ctx.shared.total_stats().bytes_out;
    if written.saturating_sub(bytes_at_last_trim) < TRIM_AFTER_BYTES {
        return bytes_at_last_trim;
    }
    crate::heap::trim();
    written
}

/// Closes connections that have sent nothing (not even a heartbeat) for `idle_timeout`.
pub(super) async fn idle_sweeper(ctx: Rc<ShardContext>) {
    let idle = ctx.shared.config.limits.idle_timeout();
    if idle.is_zero() {
        return;
    }
    let period = (idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(5));
    let mut bytes_at_last_trim = 0u64;
    loop {
        glommio::timer::sleep(period).await;
        if ctx.id == 0 {
            bytes_at_last_trim = trim_heap_after_bursts(&ctx, bytes_at_last_trim);
        }
        let now = Instant::now();
        let idle_conns: Vec<_> = ctx
            .conns
            .borrow()
            .values()
            .filter(|conn| {
                now.duration_since(conn.last_seen()) > idle && !conn.out.borrow().is_closing()
            })
            .cloned()
            .collect();
        for conn in idle_conns {
            conn.close(IDLE_TIMEOUT, "idle timeout");
        }
    }
}
