//! Secrets leave no trace: a session with known passphrases — created,
//! unlocked (right and wrong), used to sign (one device, a batch), locked —
//! and then none of them is in the daemon's log, any answer, the audit
//! log, any state file, or the daemon's memory (read through
//! `/proc/PID/mem` after `lock`).

use keybridge_tests::*;
use serde_json::json;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;

const NOW: i64 = 1_800_000_000;

/// Where `needle` occurs in the readable memory of process `pid`: the
/// mappings (from `/proc/PID/maps`) that hold it.
fn in_memory(pid: u32, needle: &[u8]) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut found = vec![];
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (range, perms) = (parts.next().unwrap(), parts.next().unwrap());
        let name = parts.nth(3).unwrap_or("[anonymous]");
        // Readable, and not the kernel's vsyscall page.
        if !perms.starts_with('r') || name == "[vvar]" || name == "[vsyscall]" {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut buf = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        if buf.windows(needle.len()).any(|w| w == needle) {
            found.push(line.to_owned());
        }
    }
    found
}

/// Every file under `dir` whose bytes contain `needle`.
fn in_files(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            found.extend(in_files(&path, needle));
        } else if kind.is_file()
            && std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        {
            found.push(path.display().to_string());
        }
    }
    found
}

#[test]
fn no_passphrase_is_left_in_logs_answers_files_or_the_daemons_memory_after_lock() {
    let mut b = Bridge::start(NOW);
    // Secrets no other part of the test or the daemon could contain by
    // chance.
    let first = "orchid-velvet-quarry-9183-secret";
    let second = "lantern-mosaic-thimble-4471-secret";
    let wrong = "wrong-pebble-saddle-2290-secret";
    let create = |label: &str, secret: &str| {
        b.ok(
            &[
                "keys",
                "create",
                "--backend",
                "passphrase",
                "--account",
                "acme",
                "--agent",
                label,
                "--label",
                label,
                "--secret-stdin",
            ],
            Some(secret),
        )
    };
    let mut answers = vec![create("alice", first), create("bob", second)];
    let unlock = |label: &str, secret: &str, mode: &str| {
        b.cli(
            &["unlock", label, "--remember", mode, "--secret-stdin"],
            Some(secret),
        )
    };
    answers.push(output_text(&unlock("alice", first, "daily")));
    // Through the API too.
    let http = b.http();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = http.connect().await.unwrap();
        for (key, secret) in [("bob", second)] {
            let (_, v) = c
                .request(
                    "POST",
                    &format!("/v1/keys/{key}/unlock"),
                    Some(&json!({"secret": secret, "remember": "daily"})),
                )
                .await
                .unwrap();
            answers.push(v.to_string());
        }
    });
    let out = b.home().join("one.cose");
    answers.push(b.ok(
        &[
            "sign",
            "--key",
            "alice",
            "--device",
            "d-1",
            "--command",
            "remote-control",
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    ));
    let list = b.home().join("fleet.txt");
    std::fs::write(&list, "d-1\nd-2\nd-3\n").unwrap();
    answers.push(b.ok(
        &[
            "sign",
            "--key",
            "bob",
            "--devices",
            list.to_str().unwrap(),
            "--command",
            "create-alert",
            "--out",
            b.home().join("fleet.jsonl").to_str().unwrap(),
        ],
        None,
    ));
    // Wrong secrets, on the terminal path and the API (after the
    // signatures: a wrong one makes the next try wait).
    answers.push(output_text(&unlock("bob", wrong, "daily")));
    rt.block_on(async {
        let mut c = http.connect().await.unwrap();
        let (_, v) = c
            .request(
                "POST",
                "/v1/keys/alice/unlock",
                Some(&json!({"secret": wrong, "remember": "daily"})),
            )
            .await
            .unwrap();
        answers.push(v.to_string());
    });
    answers.push(b.ok(&["--json", "status"], None));
    answers.push(b.ok(&["--json", "keys", "list"], None));
    answers.push(b.ok(&["--json", "audit"], None));
    b.ok(&["lock", "alice"], None);
    b.ok(&["lock", "bob"], None);

    let pid = b.child().id();
    for secret in [first, second, wrong] {
        let s = secret.as_bytes();
        for a in &answers {
            assert!(!a.contains(secret), "{secret} in an answer: {a}");
        }
        assert!(
            !b.daemon_log().contains(secret),
            "{secret} in the daemon's log"
        );
        let files = in_files(b.home(), s);
        assert!(files.is_empty(), "{secret} in files: {files:?}");
        let memory = in_memory(pid, s);
        assert!(
            memory.is_empty(),
            "{secret} in the daemon's memory after lock: {memory:?}"
        );
    }
    // The scan finds what is there: the daemon holds its socket's path.
    assert!(!in_memory(pid, b.socket().to_str().unwrap().as_bytes()).is_empty());
}
