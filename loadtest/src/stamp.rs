//! Send timestamps carried inside message payloads, and finding them again cheaply.
//!
//! A measured payload is `{"t":<16 digits>,"pad":"xxx…"}`, exactly `message_bytes` long. The time is
//! CLOCK_MONOTONIC in µs plus [`STAMP_OFFSET`], so it always has 16 digits (a fixed width lets the
//! publisher overwrite the digits in a template instead of formatting a new message) and it is
//! comparable across the processes of one host. A receiver finds it with one substring search for
//! `"t":` — no JSON parse — and tolerates whitespace after the colon and any key order, because a
//! server may re-serialise the payload (Tangram does: it may sort keys or add spaces).

use memchr::memmem::Finder;
use std::sync::OnceLock;

/// Added to the monotonic clock so that stamps have a fixed width of 16 digits.
pub const STAMP_OFFSET: u64 = 1_000_000_000_000_000;
/// Digits in a stamp.
pub const STAMP_DIGITS: usize = 16;
/// The key that marks a measured payload.
const MARKER: &[u8] = b"\"t\":";
/// Bytes of a payload before the padding: `{"t":` + 16 digits + `,"pad":"` and the closing `"}`.
const FIXED_BYTES: usize = 5 + STAMP_DIGITS + 8 + 2;

/// Microseconds of CLOCK_MONOTONIC: one clock for every thread and process of this host.
pub fn now_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

fn finder() -> &'static Finder<'static> {
    static F: OnceLock<Finder<'static>> = OnceLock::new();
    F.get_or_init(|| Finder::new(MARKER))
}

/// A payload template of exactly `bytes` bytes (at least [`min_payload_bytes`]).
pub fn payload_template(bytes: usize) -> Vec<u8> {
    let pad = bytes.saturating_sub(FIXED_BYTES);
    let mut v = Vec::with_capacity(FIXED_BYTES + pad);
    v.extend_from_slice(b"{\"t\":");
    v.extend_from_slice(&[b'0'; STAMP_DIGITS]);
    v.extend_from_slice(b",\"pad\":\"");
    v.resize(v.len() + pad, b'x');
    v.extend_from_slice(b"\"}");
    write_stamp(&mut v, STAMP_POS, 0);
    v
}

/// The smallest payload that still carries a stamp.
pub fn min_payload_bytes() -> usize {
    FIXED_BYTES
}

/// Offset of the stamp digits inside a payload made by [`payload_template`].
pub const STAMP_POS: usize = 5;

/// Writes the stamp for `t_us` at `buf[pos..pos + 16]`.
pub fn write_stamp(buf: &mut [u8], pos: usize, t_us: u64) {
    let mut v = t_us + STAMP_OFFSET;
    for i in (0..STAMP_DIGITS).rev() {
        buf[pos + i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Finds the send time (µs, same clock as [`now_us`]) in a frame or payload, if it carries one.
pub fn find_stamp(bytes: &[u8]) -> Option<u64> {
    let at = finder().find(bytes)? + MARKER.len();
    let mut i = at;
    while i < bytes.len() && bytes[i] == b' ' {
        i += 1;
    }
    let start = i;
    let mut v: u64 = 0;
    while i < bytes.len() && bytes[i].is_ascii_digit() && i - start < 20 {
        v = v.wrapping_mul(10).wrapping_add((bytes[i] - b'0') as u64);
        i += 1;
    }
    if i - start != STAMP_DIGITS {
        return None;
    }
    v.checked_sub(STAMP_OFFSET)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_has_the_requested_size_and_is_json() {
        for n in [min_payload_bytes(), 64, 200, 1000] {
            let t = payload_template(n);
            assert_eq!(t.len(), n);
            let v: serde_json::Value = serde_json::from_slice(&t).unwrap();
            assert!(v["pad"].is_string());
        }
    }

    #[test]
    fn stamp_written_is_found_in_a_v2_broadcast_frame() {
        let mut p = payload_template(200);
        write_stamp(&mut p, STAMP_POS, 123_456_789);
        let mut frame = br#"[null,null,"lt:0","msg","#.to_vec();
        frame.extend_from_slice(&p);
        frame.push(b']');
        assert_eq!(find_stamp(&frame), Some(123_456_789));
        let v: serde_json::Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(v[4]["t"].as_u64(), Some(STAMP_OFFSET + 123_456_789));
    }

    #[test]
    fn stamp_is_found_after_reserialisation_with_spaces_and_sorted_keys() {
        let frame = br#"[null, null, "lt:0", "msg", {"pad": "xxxx", "t": 1000000000000042}]"#;
        assert_eq!(find_stamp(frame), Some(42));
    }

    #[test]
    fn frames_without_a_stamp_have_none() {
        assert_eq!(
            find_stamp(br#"["1","1","lt:0","phx_reply",{"status":"ok","response":{}}]"#),
            None
        );
        assert_eq!(
            find_stamp(br#"[null,null,"x","presence_diff",{"joins":{},"leaves":{}}]"#),
            None
        );
        // a "t" key with a number that is not a stamp
        assert_eq!(find_stamp(br#"{"t":12}"#), None);
        assert_eq!(find_stamp(br#"{"t":"#), None);
    }

    #[test]
    fn clock_is_monotonic() {
        let a = now_us();
        let b = now_us();
        assert!(b >= a);
    }
}
