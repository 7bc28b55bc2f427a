//! libFuzzer entry point; the check itself is `channel_fuzz::config_load` (fuzz/src/lib.rs), which
//! tests/corpus_test.rs replays over fuzz/corpus/config_load/ on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| channel_fuzz::config_load(data));
