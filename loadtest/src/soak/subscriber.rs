//! The soak's subscriber: `PSUBSCRIBE from:*`, reconnecting and resubscribing after a restart,
//! marking every push id of this run it sees in the ledger and recording the intervals during
//! which it was known to be subscribed.

use super::ledger::parse_push_id;
use super::redis_link::redis_connect;
use super::shared::Shared;
use crate::resp::{encode_command, parse_resp, Resp};
use crate::stamp::now_us;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

pub(super) fn subscriber(sh: Arc<Shared>, stop: Arc<AtomicBool>) {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut first = true;
    while !stop.load(Relaxed) {
        let mut s = match redis_connect(sh.redis) {
            Ok(s) => s,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if !first {
            sh.c.subscriber_reconnects.fetch_add(1, Relaxed);
        }
        first = false;
        let mut cmd = Vec::new();
        encode_command(&mut cmd, &[b"PSUBSCRIBE", b"from:*"]);
        if s.write_all(&cmd).is_err() {
            continue;
        }
        let mut buf: Vec<u8> = Vec::new();
        let mut up = false;
        'conn: while !stop.load(Relaxed) {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => break,
            }
            let mut pos = 0;
            loop {
                match parse_resp(&buf[pos..]) {
                    Ok(Some((Resp::Array(items), used))) => {
                        pos += used;
                        match items.first() {
                            Some(Resp::Bulk(Some(b"pmessage"))) => {
                                if let Some(Resp::Bulk(Some(p))) = items.get(3) {
                                    if let Some(id) = parse_push_id(p, &sh.run_id) {
                                        if let Ok(mut l) = sh.ledger.lock() {
                                            l.seen(id);
                                        }
                                    }
                                }
                            }
                            Some(Resp::Bulk(Some(b"psubscribe"))) => {
                                if let Ok(mut l) = sh.ledger.lock() {
                                    l.subscriber_up(now_us());
                                }
                                up = true;
                            }
                            _ => {}
                        }
                    }
                    Ok(Some((_, used))) => pos += used,
                    Ok(None) => break,
                    Err(e) => {
                        sh.note_error(format!("subscriber: {e}"));
                        break 'conn;
                    }
                }
            }
            buf.drain(..pos);
        }
        if up {
            if let Ok(mut l) = sh.ledger.lock() {
                l.subscriber_down(now_us());
            }
        }
    }
}
