//! SECURITY.md points every claim at a test: each `file::test` it names
//! must be a test in that file (a renamed or deleted test breaks this).

use std::path::Path;

/// Where a `file::test` reference lives: `tests/tests/FILE.rs`, or the
/// path as written (`device/tests/cli.rs::…`), or `protocol/tests/FILE.rs`.
fn candidates(root: &Path, file: &str) -> Vec<std::path::PathBuf> {
    if file.ends_with(".rs") {
        return vec![root.join(file)];
    }
    vec![
        root.join(format!("tests/tests/{file}.rs")),
        root.join(format!("protocol/tests/{file}.rs")),
        root.join(format!("device/tests/{file}.rs")),
    ]
}

#[test]
fn every_test_security_md_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let text = std::fs::read_to_string(root.join("SECURITY.md")).unwrap();
    let mut named = 0;
    for span in text.split('`').skip(1).step_by(2) {
        let Some((file, test)) = span.rsplit_once("::") else {
            continue;
        };
        // The intro's `file::test`, the pattern itself.
        if file == "file" {
            continue;
        }
        if !test
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            continue;
        }
        named += 1;
        let found = candidates(root, file).iter().any(|p| {
            std::fs::read_to_string(p).is_ok_and(|src| src.contains(&format!("fn {test}(")))
        });
        assert!(found, "SECURITY.md names {file}::{test}, which is no test");
    }
    assert!(named >= 40, "only {named} tests named");
}
