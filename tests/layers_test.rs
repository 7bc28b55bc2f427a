//! The layers of `src/` and of `loadtest/src/` point down only: no import cycle between either
//! crate's top-level modules (issue 12, docs/architecture.md, loadtest/README.md).
//!
//! A module `a` depends on `b` when any file of `a` names `crate::b` (in a `use` line or a path)
//! outside comments. The check reads the source text itself rather than installing
//! `cargo-modules` (its `--acyclic` needs rust-analyzer's crates built first: minutes of CI for
//! one yes/no), and the same reading is enough here because the crate names its own modules only
//! through `crate::` and `super::` (a `super::` inside `src/<module>/` stays in that module).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The top-level module a file of `src/` belongs to (`src/shard/session.rs` → `shard`), or
/// `None` for the crate roots (`lib.rs`, `main.rs`), which may name every module. A directory
/// module (`loadtest/src/soak/churn.rs`) belongs to its directory (`soak`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).expect("a file under src/");
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

/// `text` without its comments (`//…` to the end of the line, `/* … */`), string literals kept
/// whole but emptied, so that a doc comment or a message mentioning `crate::x` is no edge.
fn code_only(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'"' => {
                out.push_str("\"\"");
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            // A char literal such as '"' would open a string above; skip those three forms.
            b'\'' if bytes.get(i + 2) == Some(&b'\'') => {
                out.push_str("' '");
                i += 3;
            }
            b'\'' if bytes.get(i + 1) == Some(&b'\\') && bytes.get(i + 3) == Some(&b'\'') => {
                out.push_str("' '");
                i += 4;
            }
            _ => {
                let len = text[i..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&text[i..i + len]);
                i += len;
            }
        }
    }
    out
}

/// The top-level modules `code` names through `crate::`, including grouped imports
/// (`use crate::{a::X, b}`).
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let preceded_by_ident = code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
        if preceded_by_ident {
            continue; // `$crate::` in a macro, or another path ending in `crate`
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name = ident(item.trim());
                if !name.is_empty() {
                    names.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Which top-level module of `src` depends on which.
fn dependency_graph(src: &Path) -> Graph {
    let mut graph = Graph::new();
    for file in rust_files(src) {
        let Some(module) = module_of(src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let targets = graph.entry(module.clone()).or_default();
        for name in named_modules(&code_only(&text)) {
            if name != module {
                targets.insert(name);
            }
        }
    }
    graph
}

/// Every cycle of the graph, each once, as the path of modules that closes it
/// (`["a", "b", "a"]`), found from each module in name order.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let mut found: BTreeSet<Vec<String>> = BTreeSet::new();
    fn walk(graph: &Graph, path: &mut Vec<String>, found: &mut BTreeSet<Vec<String>>) {
        let last = path.last().expect("a non-empty path").clone();
        for next in graph.get(&last).into_iter().flatten() {
            if let Some(start) = path.iter().position(|m| m == next) {
                // Name each cycle by its rotation that starts at its smallest module.
                let mut cycle: Vec<String> = path[start..].to_vec();
                let smallest = (0..cycle.len())
                    .min_by_key(|&i| &cycle[i])
                    .expect("a cycle has a module");
                cycle.rotate_left(smallest);
                cycle.push(cycle[0].clone());
                found.insert(cycle);
            } else {
                path.push(next.clone());
                walk(graph, path, found);
                path.pop();
            }
        }
    }
    for start in graph.keys() {
        walk(graph, &mut vec![start.clone()], &mut found);
    }
    found.into_iter().collect()
}

#[test]
fn the_checker_sees_grouped_imports_and_ignores_comments_and_strings() {
    let code = code_only(
        "use crate::{shard::X, redis};\n// crate::metrics\nlet s = \"crate::auth\";\n\
         /* crate::http */ fn f() -> crate::config::Config { $crate::presence::x() }",
    );
    let names: Vec<String> = named_modules(&code).into_iter().collect();
    assert_eq!(names, ["config", "redis", "shard"]);
}

#[test]
fn the_checker_finds_a_cycle_of_three() {
    let mut graph = Graph::new();
    let edge = |g: &mut Graph, a: &str, b: &str| {
        g.entry(a.into()).or_default().insert(b.into());
    };
    edge(&mut graph, "shard", "broker");
    edge(&mut graph, "broker", "inbox");
    edge(&mut graph, "inbox", "shard");
    edge(&mut graph, "inbox", "protocol");
    assert_eq!(
        cycles(&graph),
        [["broker", "inbox", "shard", "broker"]
            .map(String::from)
            .to_vec()]
    );
    graph.get_mut("inbox").expect("inbox").remove("shard");
    assert!(cycles(&graph).is_empty());
}

#[test]
fn top_level_modules_of_src_have_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = dependency_graph(&src);
    assert!(graph.contains_key("shard"), "the reading found the modules");
    let cycles = cycles(&graph);
    let shown: Vec<String> = cycles.iter().map(|c| c.join(" -> ")).collect();
    assert!(
        cycles.is_empty(),
        "import cycles between modules of src/ (docs/architecture.md says which way each \
         layer may point):\n  {}",
        shown.join("\n  ")
    );
}

/// The cycles of the crate rooted at `src`, shown one per line.
fn shown_cycles(src: &Path) -> Vec<String> {
    cycles(&dependency_graph(src))
        .iter()
        .map(|c| c.join(" -> "))
        .collect()
}

#[test]
fn the_checker_sees_a_cycle_between_files_of_a_crate() {
    // A crate on disk, as the reading sees it: `a` names `b` through a directory module, `b`
    // names `a` in a path (not a `use`), `c` only names `a`, and a comment in `a` names `c`.
    let root = std::env::temp_dir().join(format!("layers-test-{}", std::process::id()));
    let src = root.join("src");
    std::fs::create_dir_all(src.join("b")).expect("a scratch directory");
    let write = |path: &str, text: &str| {
        std::fs::write(src.join(path), text).expect("a scratch file");
    };
    write("main.rs", "mod a;\nmod b;\nmod c;\nuse crate::c::Z;\n");
    write("a.rs", "use crate::b::X; // crate::c::Z\n");
    write("b/mod.rs", "mod inner;\n");
    write("b/inner.rs", "fn f() -> crate::a::Y { super::g() }\n");
    write("c.rs", "use crate::a::Y;\n");
    let found = shown_cycles(&src);
    write("b/inner.rs", "fn f() { super::g() }\n");
    let after_fix = shown_cycles(&src);
    std::fs::remove_dir_all(&root).expect("removing the scratch directory");
    assert_eq!(found, ["a -> b -> a"]);
    assert!(after_fix.is_empty(), "{after_fix:?}");
}

#[test]
fn top_level_modules_of_loadtest_have_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("loadtest/src");
    let graph = dependency_graph(&src);
    assert!(
        graph.contains_key("soak") && graph.contains_key("run"),
        "the reading found loadtest's modules"
    );
    let shown = shown_cycles(&src);
    assert!(
        shown.is_empty(),
        "import cycles between modules of loadtest/src/ (loadtest/README.md, \"Layers\", says \
         which way each may point):\n  {}",
        shown.join("\n  ")
    );
}
