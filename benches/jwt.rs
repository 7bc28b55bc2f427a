//! Join-token cost: [`TokenAuthority::verify_for_channel`] runs on a shard once per `phx_join`
//! (HS256 signature, expiry, channel claim), and [`TokenAuthority::mint`] once per `POST /token`.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-perf cargo bench --bench jwt`.

use std::hint::black_box;

use channel::auth::TokenAuthority;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench_jwt(c: &mut Criterion) {
    let auth = TokenAuthority::new("bench-secret-bench-secret-bench-secret", 3600);
    let token = auth
        .mint("room:lobby", "user-0123456789")
        .expect("minting with a valid secret cannot fail");
    assert!(auth.verify_for_channel(&token, "room:lobby").is_ok());
    assert!(auth.verify_for_channel(&token, "room:other").is_err());

    let mut g = c.benchmark_group("jwt");
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify_for_channel_valid", |b| {
        b.iter(|| {
            black_box(
                auth.verify_for_channel(black_box(&token), black_box("room:lobby"))
                    .is_ok(),
            )
        })
    });
    g.bench_function("verify_for_channel_wrong_channel", |b| {
        b.iter(|| {
            black_box(
                auth.verify_for_channel(black_box(&token), black_box("room:other"))
                    .is_err(),
            )
        })
    });
    g.bench_function("mint", |b| {
        b.iter(|| black_box(auth.mint(black_box("room:lobby"), black_box("user-0123456789"))))
    });
    g.finish();
}

criterion_group!(benches, bench_jwt);
criterion_main!(benches);
