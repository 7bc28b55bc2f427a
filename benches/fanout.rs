//! Local fan-out: one pre-encoded frame pushed to 10,000 connections' [`OutboundQueue`]s, then
//! taken by each connection's writer side, as a shard does for every broadcast it receives.
//!
//! The figure to read is the time per (frame, receiver): the whole loop divided by 10,000.
//! Wakers are not registered (no writer task here), so it measures the queue itself: a `Bytes`
//! refcount increment, a bounded-bytes check and a `VecDeque` push, then the swap in `take` and
//! the drop of the frame reference by the writer after "writing" it.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-perf cargo bench --bench fanout`.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use channel::protocol::Broadcast;
use channel::shard::outbound_queue::{Enqueued, OutboundQueue};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const RECEIVERS: usize = 10_000;
/// A queue limit far above what one frame needs (the server's default is of this order).
const QUEUE_LIMIT: usize = 1 << 20;

fn frame() -> Bytes {
    let mut payload = String::from(r#"{"t":1712345678901234,"pad":""#);
    while payload.len() < 198 {
        payload.push('x');
    }
    payload.push_str(r#""}"#);
    Broadcast::new("room:lobby", "new_msg", payload.as_bytes())
        .frame_for(channel::protocol::Vsn::V2)
        .expect("a JSON broadcast has a V2 frame")
        .clone()
}

fn bench_fanout(c: &mut Criterion) {
    let frame = frame();
    let mut queues: Vec<OutboundQueue> = (0..RECEIVERS)
        .map(|_| OutboundQueue::new(QUEUE_LIMIT))
        .collect();
    // One batch per writer, kept across frames as the connection's writer keeps it.
    let mut batches: Vec<VecDeque<Bytes>> = (0..RECEIVERS).map(|_| VecDeque::new()).collect();

    let mut g = c.benchmark_group("fanout_10k");
    g.throughput(Throughput::Elements(RECEIVERS as u64));
    // Push to every queue, then every writer takes its batch, accounts it and drops the frames.
    g.bench_function("push_then_take", |b| {
        b.iter(|| {
            for q in queues.iter_mut() {
                let r = q.push(black_box(&frame).clone());
                debug_assert_eq!(r, Enqueued::Queued);
            }
            for (q, batch) in queues.iter_mut().zip(batches.iter_mut()) {
                let close = q.take(batch);
                debug_assert!(close.is_none());
                let n: usize = batch.iter().map(Bytes::len).sum();
                q.written(n);
                batch.clear();
            }
        })
    });
    // The shard's half alone (push); the writers' take runs outside the timed part.
    g.bench_function("push_only", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t0 = Instant::now();
                for q in queues.iter_mut() {
                    black_box(q.push(black_box(&frame).clone()));
                }
                total += t0.elapsed();
                for (q, batch) in queues.iter_mut().zip(batches.iter_mut()) {
                    q.take(batch);
                    let n: usize = batch.iter().map(Bytes::len).sum();
                    q.written(n);
                    batch.clear();
                }
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench_fanout);
criterion_main!(benches);
