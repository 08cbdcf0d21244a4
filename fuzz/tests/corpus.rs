//! Every seed (`corpus/TARGET/`) and every input a fuzzer ever crashed on
//! (`regressions/TARGET/`, kept forever) through its target's function,
//! in an ordinary test build: what libFuzzer runs, without libFuzzer.
//!
//! `cargo test --manifest-path fuzz/Cargo.toml`

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The files of `dir`, sorted (none if it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().is_none_or(|n| n != ".gitkeep"))
        .collect();
    out.sort();
    out
}

/// Runs every seed and regression input of `target`; fails naming each
/// input that panics.
fn run(target: &str) {
    let (_, f) = keybridge_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a target");
    let seeds = files(&root().join("corpus").join(target));
    assert!(
        !seeds.is_empty(),
        "no seed corpus for {target}: `cargo test --manifest-path fuzz/Cargo.toml --test generate_corpus -- --ignored`"
    );
    let regressions = files(&root().join("regressions").join(target));
    let mut failed = vec![];
    for path in seeds.iter().chain(&regressions) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if catch_unwind(AssertUnwindSafe(|| f(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs panicked (messages above): {failed:#?}",
        failed.len(),
        seeds.len() + regressions.len()
    );
}

#[test]
fn envelope_verify() {
    run("envelope_verify");
}

#[test]
fn batch_proof() {
    run("batch_proof");
}

#[test]
fn key_log() {
    run("key_log");
}

#[test]
fn key_request() {
    run("key_request");
}

#[test]
fn public_key() {
    run("public_key");
}

#[test]
fn bridge_requests() {
    run("bridge_requests");
}

#[test]
fn key_uri() {
    run("key_uri");
}

#[test]
fn device_state() {
    run("device_state");
}

/// Each target has its test above, a libFuzzer binary, a `[[bin]]` and a
/// seed corpus; nothing else is in `corpus/` or `regressions/`.
#[test]
fn every_target_is_wired() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    let this = std::fs::read_to_string(root().join("tests/corpus.rs")).expect("this file");
    let names: Vec<&str> = keybridge_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
    for name in &names {
        let bin = format!("fuzz_targets/{name}.rs");
        assert!(root().join(&bin).is_file(), "{bin}");
        assert!(
            manifest.contains(&format!("name = \"{name}\"\npath = \"{bin}\"")),
            "[[bin]] {name}"
        );
        assert!(this.contains(&format!("run(\"{name}\")")), "test {name}");
    }
    for kind in ["corpus", "regressions"] {
        for entry in std::fs::read_dir(root().join(kind))
            .into_iter()
            .flatten()
            .flatten()
        {
            let dir = entry.file_name().to_string_lossy().into_owned();
            assert!(
                dir.starts_with('.') || names.contains(&dir.as_str()),
                "{kind}/{dir} is no target's"
            );
        }
    }
}
