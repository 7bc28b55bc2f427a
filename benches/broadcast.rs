//! Downstream frame building: what the Redis core pays once per `pmessage`.
//!
//! [`channel::protocol::Broadcast::new`] validates the payload (UTF-8 + JSON) and builds the V2
//! WebSocket frame once; every receiver then calls [`Broadcast::frame_for`], which must be a
//! pointer read (V2) or a one-time lazy build (V1). Measured for a 200-byte JSON payload and a
//! 200-byte binary one (kind-2 frame), and `frame_for` on a built broadcast.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-perf cargo bench --bench broadcast`.

use std::hint::black_box;

use channel::protocol::{Broadcast, Vsn};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// A 200-byte JSON payload like the load tool's (`{"t":<16 digits>,"pad":"xx…"}`).
fn json_payload() -> Vec<u8> {
    let mut s = String::from(r#"{"t":1712345678901234,"pad":""#);
    while s.len() < 198 {
        s.push('x');
    }
    s.push_str(r#""}"#);
    assert_eq!(s.len(), 200);
    s.into_bytes()
}

/// 200 bytes that are not UTF-8 (so certainly not JSON): a binary broadcast.
fn binary_payload() -> Vec<u8> {
    (0..200u32).map(|i| (i * 37 % 256) as u8 | 0x80).collect()
}

fn bench_broadcast(c: &mut Criterion) {
    let (topic, event) = ("room:lobby", "new_msg");
    let json = json_payload();
    let binary = binary_payload();
    let mut g = c.benchmark_group("broadcast_new");
    g.throughput(Throughput::Elements(1));
    g.bench_function("json_200B", |b| {
        b.iter(|| {
            black_box(Broadcast::new(
                black_box(topic),
                black_box(event),
                black_box(&json),
            ))
        })
    });
    g.bench_function("binary_200B", |b| {
        b.iter(|| {
            black_box(Broadcast::new(
                black_box(topic),
                black_box(event),
                black_box(&binary),
            ))
        })
    });
    g.finish();

    let built = Broadcast::new(topic, event, &json);
    assert!(built.is_json() && built.is_deliverable());
    let mut g = c.benchmark_group("frame_for");
    g.throughput(Throughput::Elements(1));
    g.bench_function("v2", |b| {
        b.iter(|| black_box(black_box(&built).frame_for(Vsn::V2).map(|f| f.len())))
    });
    // The V1 frame is built once on first use; afterwards frame_for is a OnceLock read.
    g.bench_function("v1_after_first", |b| {
        b.iter(|| black_box(black_box(&built).frame_for(Vsn::V1).map(|f| f.len())))
    });
    // Cloning the frame (one refcount increment) is what each receiver's queue push costs.
    g.bench_function("v2_clone_bytes", |b| {
        b.iter(|| black_box(black_box(&built).frame_for(Vsn::V2).cloned()))
    });
    g.finish();
}

criterion_group!(benches, bench_broadcast);
criterion_main!(benches);
