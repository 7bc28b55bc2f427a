#!/usr/bin/env python3
"""Rebuilds the small committed corpus of one fuzz target from a large raw one.

    cd fuzz && CARGO_TARGET_DIR=... cargo +nightly fuzz build -O
    python3 minimise.py <target> [max_files]        # default 50

Runs the target's libFuzzer binary with -set_cover_merge over corpus/<target> and
corpus-raw/<target> with edge features only (-use_counters=0), keeps every hand-made seed
(seed-*), then adds the input that covers the most edges not yet covered, again and again, until
max_files inputs are chosen or nothing new is covered. corpus/<target> is replaced by the choice.
`cargo fuzz cmin` keeps one input per new feature, thousands of them; this keeps the few
that matter most, so the corpus stays reviewable and its replay in `cargo test` stays fast.
"""
import os
import shutil
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
target = sys.argv[1]
cap = int(sys.argv[2]) if len(sys.argv) > 2 else 50
target_dir = os.environ.get("CARGO_TARGET_DIR", os.path.join(here, "target"))
binary = os.path.join(target_dir, "x86_64-unknown-linux-gnu", "release", target)
corpus = os.path.join(here, "corpus", target)
raw = os.path.join(here, "corpus-raw", target)
os.makedirs(raw, exist_ok=True)

with tempfile.TemporaryDirectory() as tmp:
    control = os.path.join(tmp, "control")
    out = os.path.join(tmp, "out")
    os.makedirs(out)
    subprocess.run(
        [binary, "-set_cover_merge=1", "-use_counters=0", "-use_value_profile=0",
         f"-merge_control_file={control}", out, corpus, raw],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = open(control).read().split("\n")
    n = int(lines[0])
    paths = lines[2:2 + n]
    features = {}
    for line in lines[2 + n:]:
        if line.startswith("FT "):
            parts = line.split()
            features[int(parts[1])] = set(map(int, parts[2:]))
    every = set().union(*features.values())
    chosen = [i for i in features if os.path.basename(paths[i]).startswith("seed-")]
    covered = set().union(*(features[i] for i in chosen)) if chosen else set()
    while len(chosen) < cap:
        best = max((i for i in features if i not in chosen),
                   key=lambda i: (len(features[i] - covered), -os.path.getsize(paths[i])),
                   default=None)
        if best is None or not features[best] - covered:
            break
        chosen.append(best)
        covered |= features[best]
    keep = os.path.join(tmp, "keep")
    os.makedirs(keep)
    for i in chosen:
        shutil.copy(paths[i], keep)
    shutil.rmtree(corpus)
    shutil.copytree(keep, corpus)
    print(f"{target}: kept {len(chosen)} inputs covering {len(covered)} of {len(every)} "
          f"edges seen ({100 * len(covered) / max(1, len(every)):.1f}%)")
