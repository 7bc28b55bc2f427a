//! The fuzz corpus as a regression suite on stable: every file of `fuzz/corpus/<target>/` goes
//! through the same check the libFuzzer target runs (`fuzz/src/lib.rs`, included here), so an
//! input that once crashed a decoder, or broke one of the invariants asserted there, fails
//! `cargo test` forever after. No nightly, no cargo-fuzz needed.

#[path = "../fuzz/src/lib.rs"]
mod fuzz_checks;

use std::path::{Path, PathBuf};

/// The check a fuzz target runs on one input.
type Check = fn(&[u8]);

/// Every target: its name (and corpus directory) and its check.
const TARGETS: [(&str, Check); 4] = [
    ("v2_text_decode", fuzz_checks::v2_text_decode),
    ("binary_decode", fuzz_checks::binary_decode),
    ("http_head", fuzz_checks::http_head),
    ("config_load", fuzz_checks::config_load),
];

/// The corpus is kept small on purpose (it is minimised with `cargo fuzz cmin`); far more means
/// someone committed a raw corpus.
const MAX_FILES_PER_TARGET: usize = 100;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
        .join(target)
}

/// Runs `check` on every file of the target's corpus; panics naming every file that failed and
/// how, after trying them all.
fn replay(target: &str, check: Check) {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus directory entry is readable").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "the corpus {} is empty: the replay would test nothing",
        dir.display()
    );
    assert!(
        files.len() <= MAX_FILES_PER_TARGET,
        "{} holds {} files; minimise it (cargo fuzz cmin {target})",
        dir.display(),
        files.len()
    );
    let mut failures = Vec::new();
    for path in &files {
        let data =
            std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| check(&data));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "<non-string panic>".to_string());
            failures.push(format!("{}: {message}", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus inputs of {target} fail:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn v2_text_decode_corpus_replays_without_panic() {
    replay("v2_text_decode", fuzz_checks::v2_text_decode);
}

#[test]
fn binary_decode_corpus_replays_without_panic() {
    replay("binary_decode", fuzz_checks::binary_decode);
}

#[test]
fn http_head_corpus_replays_without_panic() {
    replay("http_head", fuzz_checks::http_head);
}

#[test]
fn config_load_corpus_replays_without_panic() {
    replay("config_load", fuzz_checks::config_load);
}

#[test]
fn every_fuzz_target_has_a_corpus_and_a_replay() {
    // A target added to fuzz/Cargo.toml without a corpus (or a corpus without a target) would
    // silently escape `cargo test`.
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz")
            .join("Cargo.toml"),
    )
    .expect("fuzz/Cargo.toml is readable");
    // The `name` of every `[[bin]]` table.
    let mut declared: Vec<&str> = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if let Some(name) = line
            .strip_prefix("name = \"")
            .and_then(|r| r.strip_suffix('"'))
        {
            if in_bin {
                declared.push(name);
            }
        }
    }
    let mut replayed: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    let mut declared_sorted = declared.clone();
    declared_sorted.sort_unstable();
    replayed.sort_unstable();
    assert_eq!(
        declared_sorted, replayed,
        "fuzz targets vs replayed corpora"
    );
    for name in declared {
        assert!(
            corpus_dir(name).is_dir(),
            "no corpus for fuzz target {name}"
        );
    }
}

/// The checks are not over-strict: well-formed inputs of each kind pass them.
#[test]
fn fuzz_checks_pass_on_well_formed_inputs() {
    // A binary push of the right shape must decode; the check re-encodes it exactly.
    fuzz_checks::binary_decode(b"\x00\x01\x01\x01\x01jrte data");
    // An incomplete head shorter than every limit is fine; the same prefix of an upgrade too.
    fuzz_checks::http_head(b"GET /websocket HTTP/1.1\r\nHost: x\r\n");
    // A config with a secret: describe() must redact it (the check swaps it and compares).
    fuzz_checks::config_load(b"[channel]\njwt_secret = \"hunter2-hunter2\"\n");
}
