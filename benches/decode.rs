//! Upstream decode and downstream validation: the server's serde_json paths against simd-json.
//!
//! What it answers: is simd-json worth it for the frames this server sees (a `phx_join` with a
//! token, a 200-byte push, a heartbeat; 200 B and 4 KiB downstream payloads)?
//!
//! The simd-json side pays what the server would pay: simd-json parses in place, so every
//! iteration copies the frame into a mutable buffer first (a fresh `Vec`, or a per-connection
//! scratch buffer that is reused, both measured). The V2 decode then has to produce what
//! [`channel::protocol::decode_text`] produces: the four names, and the payload as the *raw* JSON
//! slice of the input (never re-serialised). simd-json's tape does not keep spans, so the payload
//! span comes from stage 1's structural indexes (`Buffers::structural_indexes`), which is the
//! cheapest way a simd-json decoder in the server could do it.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-perf cargo bench --bench decode`.

use std::borrow::Cow;
use std::hint::black_box;

use channel::auth::TokenAuthority;
use channel::protocol::{decode_text, is_valid_json, Payload, Vsn};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use simd_json::{Buffers, Node, StaticNode};

/// The fields of a decoded V2 message, as the simd-json path produces them (names unescaped
/// into the scratch buffer, payload borrowed raw from the input).
struct SimdInbound<'a, 's> {
    join_ref: Option<Cow<'s, str>>,
    msg_ref: Option<Cow<'s, str>>,
    topic: &'s str,
    event: &'s str,
    payload: Payload<'a>,
}

/// A string or null element of the tape.
fn ref_node<'s>(node: &Node<'s>) -> Option<Option<Cow<'s, str>>> {
    match node {
        Node::String(s) => Some(Some(Cow::Borrowed(s))),
        Node::Static(StaticNode::Null) => Some(None),
        _ => None,
    }
}

fn name_node<'s>(node: &Node<'s>) -> Option<&'s str> {
    match node {
        Node::String(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// V2 decode with simd-json: `input` is the frame as received, `scratch` the mutable copy that
/// simd-json unescapes into, `buffers` its reusable stage-1/stage-2 buffers.
fn simd_decode_v2<'a, 's>(
    input: &'a [u8],
    scratch: &'s mut Vec<u8>,
    buffers: &mut Buffers,
) -> Option<SimdInbound<'a, 's>> {
    scratch.clear();
    scratch.extend_from_slice(input);
    let tape = simd_json::to_tape_with_buffers(scratch, buffers).ok()?;
    let nodes = &tape.0;
    // Exactly five elements, the first four scalars (the common case; anything else would fall
    // back to the serde_json path in a real server).
    let Some(Node::Array { len: 5, .. }) = nodes.first() else {
        return None;
    };
    let join_ref = ref_node(nodes.get(1)?)?;
    let msg_ref = ref_node(nodes.get(2)?)?;
    let topic = name_node(nodes.get(3)?)?;
    let event = name_node(nodes.get(4)?)?;
    // Structurals: '[' v0 ',' v1 ',' v2 ',' v3 ',' payload… ']' — the payload starts at index 9
    // and, being the last element, ends before the closing bracket (the last structural).
    let idx = buffers.structural_indexes();
    let start = *idx.get(9)? as usize;
    let close = *idx
        .iter()
        .rev()
        .find(|&&i| input.get(i as usize) == Some(&b']'))? as usize;
    let raw = input.get(start..close)?;
    let raw = raw.trim_ascii_end();
    let payload = Payload::Json(std::str::from_utf8(raw).ok()?);
    Some(SimdInbound {
        join_ref,
        msg_ref,
        topic,
        event,
        payload,
    })
}

/// The frames a client sends, as they arrive (after unmasking).
fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let auth = TokenAuthority::new("bench-secret-bench-secret-bench-secret", 3600);
    let token = auth
        .mint("room:lobby", "user-0123456789")
        .expect("minting with a valid secret cannot fail");
    let join = format!(r#"["3","3","room:lobby","phx_join",{{"token":"{token}"}}]"#);
    // A 200-byte push payload, shaped like an application message.
    let mut body = String::from(r#"{"t":1712345678901234,"user":"user-0123456789","body":""#);
    while body.len() < 198 {
        body.push('x');
    }
    body.push_str(r#""}"#);
    assert_eq!(body.len(), 200);
    let push = format!(r#"["3","17","room:lobby","new_msg",{body}]"#);
    let heartbeat = r#"[null,"42","phoenix","heartbeat",{}]"#.to_string();
    vec![
        ("phx_join", join.into_bytes()),
        ("push_200B", push.into_bytes()),
        ("heartbeat", heartbeat.into_bytes()),
    ]
}

/// A JSON payload of about `n` bytes, with the variety a real one has (strings, numbers, nesting).
fn payload(n: usize) -> Vec<u8> {
    let mut s = String::from(r#"{"t":1712345678901234,"kind":"update","items":["#);
    let mut i = 0;
    while s.len() + 64 < n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"id":{i},"name":"item-{i}","v":{}.25,"ok":true}}"#,
            i * 7
        ));
        i += 1;
    }
    s.push_str(r#"],"pad":""#);
    while s.len() + 2 < n {
        s.push('p');
    }
    s.push_str(r#""}"#);
    assert_eq!(s.len(), n);
    s.into_bytes()
}

fn check_equivalence() {
    let mut scratch = Vec::new();
    let mut buffers = Buffers::default();
    for (name, frame) in frames() {
        let a = decode_text(Vsn::V2, &frame).expect("bench frames are valid");
        let b = simd_decode_v2(&frame, &mut scratch, &mut buffers).expect("bench frames are valid");
        assert_eq!(a.join_ref, b.join_ref, "{name}");
        assert_eq!(a.msg_ref, b.msg_ref, "{name}");
        assert_eq!(a.topic, b.topic, "{name}");
        assert_eq!(a.event, b.event, "{name}");
        assert_eq!(a.payload, b.payload, "{name}");
    }
}

fn bench_decode(c: &mut Criterion) {
    check_equivalence();
    let mut g = c.benchmark_group("decode_v2");
    for (name, frame) in frames() {
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_with_input(BenchmarkId::new("serde_json", name), &frame, |b, f| {
            b.iter(|| {
                let m = decode_text(Vsn::V2, black_box(f)).expect("valid frame");
                black_box((m.topic.len(), m.event.len(), m.payload));
            })
        });
        g.bench_with_input(
            BenchmarkId::new("simd_json_fresh_copy", name),
            &frame,
            |b, f| {
                b.iter(|| {
                    // What a server without a scratch buffer pays: a new Vec and new buffers per frame.
                    let mut scratch = Vec::with_capacity(f.len());
                    let mut buffers = Buffers::new(f.len());
                    let m =
                        simd_decode_v2(black_box(f), &mut scratch, &mut buffers).expect("valid");
                    black_box((m.topic.len(), m.event.len(), m.payload));
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("simd_json_reused", name),
            &frame,
            |b, f| {
                // A per-connection scratch buffer and Buffers kept across frames (the copy remains).
                let mut scratch = Vec::with_capacity(4096);
                let mut buffers = Buffers::new(4096);
                b.iter(|| {
                    let m =
                        simd_decode_v2(black_box(f), &mut scratch, &mut buffers).expect("valid");
                    black_box((m.topic.len(), m.event.len(), m.payload));
                })
            },
        );
    }
    g.finish();
}

fn bench_validate(c: &mut Criterion) {
    let mut g = c.benchmark_group("is_valid_json");
    for size in [200usize, 4096] {
        let p = payload(size);
        assert!(is_valid_json(&p));
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(
            BenchmarkId::new("serde_json_ignored_any", size),
            &p,
            |b, p| b.iter(|| black_box(is_valid_json(black_box(p)))),
        );
        g.bench_with_input(
            BenchmarkId::new("simd_json_to_borrowed_value", size),
            &p,
            |b, p| {
                b.iter(|| {
                    let mut copy = black_box(p).clone();
                    let ok = simd_json::to_borrowed_value(&mut copy).is_ok();
                    black_box(ok)
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("simd_json_tape_reused", size),
            &p,
            |b, p| {
                // The cheapest simd-json validation: no value tree, buffers reused, copy kept.
                let mut scratch = Vec::with_capacity(8192);
                let mut buffers = Buffers::new(8192);
                b.iter(|| {
                    scratch.clear();
                    scratch.extend_from_slice(black_box(p));
                    black_box(simd_json::to_tape_with_buffers(&mut scratch, &mut buffers).is_ok())
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench_decode, bench_validate);
criterion_main!(benches);
