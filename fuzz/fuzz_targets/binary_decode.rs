//! libFuzzer entry point; the check itself is `channel_fuzz::binary_decode` (fuzz/src/lib.rs), which
//! tests/corpus_test.rs replays over fuzz/corpus/binary_decode/ on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| channel_fuzz::binary_decode(data));
