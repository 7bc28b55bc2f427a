//! Slow clients of a soak (the steps of `slow.rs`): join `<prefix>:slow`, read for
//! `slow_read_for` s, stop reading for `slow_stall` s while the publisher sends large messages to
//! that topic, then read what is left and look for the close code (1013 expected).

use super::shared::Shared;
use crate::slow::{self, Ending};
use crate::token::TokenClient;
use anyhow::Result;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

pub(super) async fn slow_client(sh: Arc<Shared>, idx: usize, tokens: Rc<TokenClient>) {
    let topic = format!("{}:slow", sh.sc.topic_prefix);
    while !sh.stop.load(Relaxed) {
        if let Err(e) = slow_cycle(&sh, idx, &topic, &tokens).await {
            sh.note_error(format!("slow {idx}: {e:#}"));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

async fn sleep_unless_stopped(sh: &Shared, d: Duration) -> bool {
    let until = tokio::time::Instant::now() + d;
    while tokio::time::Instant::now() < until {
        if sh.stop.load(Relaxed) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100).min(d)).await;
    }
    true
}

async fn slow_cycle(sh: &Shared, idx: usize, topic: &str, tokens: &TokenClient) -> Result<()> {
    let token = tokens.fetch(topic, &format!("slow{idx}")).await?;
    let (seed, join_timeout) = (
        1_000_000 + idx as u64,
        Duration::from_secs_f64(sh.sc.join_timeout),
    );
    let mut conn = slow::join(
        sh.addr,
        &sh.host,
        &sh.sc.ws_path,
        topic,
        &token,
        seed,
        join_timeout,
    )
    .await?;
    let read_until = tokio::time::Instant::now() + Duration::from_secs_f64(sh.p.slow_read_for);
    slow::read_while(&mut conn, || tokio::time::Instant::now() < read_until).await?;
    // Stop reading.
    sh.c.slow_cycles.fetch_add(1, Relaxed);
    if !sleep_unless_stopped(sh, Duration::from_secs_f64(sh.p.slow_stall)).await {
        return Ok(());
    }
    // Read what is left and look for the close frame.
    match slow::ending(&mut conn, Duration::from_secs(10)).await? {
        Ending::Closed(1013) => {
            sh.c.slow_1013.fetch_add(1, Relaxed);
        }
        Ending::Closed(code) => Shared::bump(&sh.slow_other, code.to_string()),
        Ending::Eof => {
            sh.c.slow_eof.fetch_add(1, Relaxed);
        }
        Ending::NotClosed => {
            sh.c.slow_not_closed.fetch_add(1, Relaxed);
        }
    }
    Ok(())
}
