//! A sign request for a locked key, with `pinentry` in config.toml: the
//! daemon asks through the pinentry program (the Assuan protocol), then
//! signs. The program here is a script that speaks Assuan the way
//! pinentry-gnome3 does and stands in for the person at the dialog: it
//! records what it was told and answers with the secret it is given, or
//! cancels.

use keybridge_tests::*;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

const NOW: i64 = 1_800_000_000;

/// An Assuan pinentry: greets, answers OK to every command, and to GETPIN
/// with the content of `$dir/answer` (percent-escaped as Assuan wants) —
/// or, when the file says CANCEL, the error pinentry gives for Cancel.
/// Every line received goes to `$dir/heard`.
const FAKE_PINENTRY: &str = r#"#!/bin/sh
dir="$(dirname "$0")"
echo "OK Pleased to meet you"
while IFS= read -r line; do
  printf '%s\n' "$line" >> "$dir/heard"
  case "$line" in
    GETPIN*)
      answer="$(cat "$dir/answer")"
      if [ "$answer" = CANCEL ]; then
        echo "ERR 83886179 Operation cancelled <Pinentry>"
      else
        printf 'D %s\n' "$(printf '%s' "$answer" | sed 's/%/%25/g')"
        echo "OK"
      fi ;;
    BYE*) echo "OK closing connection"; exit 0 ;;
    *) echo "OK" ;;
  esac
done
"#;

struct Setup {
    b: Bridge,
    dir: PathBuf,
}

/// A daemon whose config names the fake pinentry, with alice's passphrase
/// key (locked).
fn setup(with_pinentry: bool) -> Setup {
    let mut b = Bridge::start(NOW);
    b.passphrase_key("acme", "alice");
    let dir = b.home().join("pinentry");
    std::fs::create_dir(&dir).unwrap();
    let program = dir.join("pinentry-fake");
    std::fs::write(&program, FAKE_PINENTRY).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    if with_pinentry {
        let config = b.home().join("config/config.toml");
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        std::fs::write(
            &config,
            format!("pinentry = {:?}\n", program.display().to_string()),
        )
        .unwrap();
        b.restart();
    }
    Setup { b, dir }
}

impl Setup {
    fn answer(&self, text: &str) {
        std::fs::write(self.dir.join("answer"), text).unwrap();
    }

    fn heard(&self) -> String {
        std::fs::read_to_string(self.dir.join("heard")).unwrap_or_default()
    }
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_locked_key_is_unlocked_through_pinentry_saying_which_key_and_why() {
    let s = setup(true);
    s.answer(PASSPHRASE);
    let r = s.b.sign_for("alice", "dev-1");
    assert!(r.status.success(), "{}\n{}", stderr(&r), s.b.daemon_log());
    let heard = s.heard();
    assert!(heard.contains("GETPIN"), "{heard}");
    let desc = heard
        .lines()
        .find(|l| l.starts_with("SETDESC "))
        .unwrap_or_else(|| panic!("{heard}"));
    for words in [
        "passphrase",
        "alice",
        "remote-control",
        "dev-1",
        "Account acme",
        "for this signature only",
    ] {
        assert!(desc.contains(words), "{words}: {desc}");
    }
    // The secret is in no log, and each-task: the next request asks again.
    assert!(!s.b.daemon_log().contains(PASSPHRASE));
    std::fs::remove_file(s.dir.join("heard")).unwrap();
    let r = s.b.sign_for("alice", "dev-2");
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(s.heard().contains("GETPIN"));
    // The device accepts what was signed (account init, a key-log event,
    // needs the key unlocked on the command line).
    s.b.ok(
        &["unlock", "alice", "--remember", "daily", "--secret-stdin"],
        Some(PASSPHRASE),
    );
    s.b.sign_and_verify("alice", NOW);
}

#[test]
fn a_cancelled_dialog_or_a_wrong_passphrase_leaves_the_key_locked() {
    let s = setup(true);
    s.answer("CANCEL");
    let r = s.b.sign_for("alice", "dev-1");
    assert_eq!(r.status.code(), Some(4), "{}", stderr(&r));
    assert!(stderr(&r).contains("cancelled"), "{}", stderr(&r));
    s.answer("not the passphrase at all");
    let r = s.b.sign_for("alice", "dev-1");
    assert!(!r.status.success());
    assert!(!stderr(&r).contains("not the passphrase"), "{}", stderr(&r));
    let keys = s.b.ok(&["--json", "keys", "list"], None);
    assert!(keys.contains("\"unlocked\": false"), "{keys}");
}

#[test]
fn without_pinentry_a_locked_key_is_locked_as_before() {
    let s = setup(false);
    s.answer(PASSPHRASE);
    let r = s.b.sign_for("alice", "dev-1");
    assert_eq!(r.status.code(), Some(4), "{}", stderr(&r));
    assert!(s.heard().is_empty());
}

#[test]
fn a_relative_pinentry_path_is_refused_at_start() {
    let d = tempfile::tempdir().unwrap();
    let config = d.path().join("config/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, "pinentry = \"pinentry\"\n").unwrap();
    let out = std::process::Command::new(bin("keybridge"))
        .args(["serve", "--system-policy"])
        .arg(Path::new("/nonexistent/policy.toml"))
        .env("KEYBRIDGE_HOME", d.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("absolute path"), "{}", stderr(&out));
}
