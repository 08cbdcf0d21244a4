//! The bridge under attack (issue 7): each test is an attacker's move
//! against the real daemon and CLI, and fails on the code before the fix.

use keybridge_tests::*;
use serde_json::{Value, json};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const NOW: i64 = 1_800_000_000;
const NOBODY: u32 = 65534;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn unlock(b: &Bridge, key: &str, mode: &str) -> Output {
    b.cli(
        &["unlock", key, "--remember", mode, "--secret-stdin"],
        Some(PASSPHRASE),
    )
}

fn sign(b: &Bridge, key: &str, extra: &[&str]) -> Output {
    let out = b.home().join("cmd.cose");
    let mut args = vec![
        "sign",
        "--key",
        key,
        "--device",
        "dev-1",
        "--command",
        "remote-control",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    b.cli(&args, None)
}

fn audit_lines(b: &Bridge) -> usize {
    std::fs::read_to_string(b.home().join("state/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .count()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// One request on a fresh connection.
fn call(b: &Bridge, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
    let http = b.http();
    rt().block_on(async move {
        let mut c = http.connect().await.unwrap();
        c.request_raw(method, path, body).await.unwrap()
    })
}

fn is_root() -> bool {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().metadata().unwrap().uid() == 0
}

/// Tests that switch user need root; CI runs as root, so there they never
/// skip.
fn needs_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        !in_ci(),
        "CI runs as root; {test} needs root to switch user"
    );
    eprintln!("SKIP {test}: needs root (setpriv)");
    false
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A Unix-socket listener run as `nobody` (Python, so that nothing of ours
/// is on the attacker's side): it writes every byte a client sends into
/// `capture`.
struct Impostor {
    child: std::process::Child,
    capture: PathBuf,
}

impl Impostor {
    fn listen(socket: &Path, capture: &Path) -> Self {
        const SCRIPT: &str = r#"
import os, socket, sys
path, capture = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
os.chmod(path, 0o777)
s.listen(4)
open(capture + ".ready", "w").close()
while True:
    c, _ = s.accept()
    c.settimeout(2)
    data = b""
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            data += d
    except OSError:
        pass
    with open(capture, "ab") as f:
        f.write(data)
    c.close()
"#;
        let child = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(["/usr/bin/python3", "-c", SCRIPT])
            .arg(socket)
            .arg(capture)
            .stdin(Stdio::null())
            .spawn()
            .expect("setpriv (util-linux) and Debian's python3");
        let ready = PathBuf::from(format!("{}.ready", capture.display()));
        wait_until(Duration::from_secs(10), || ready.exists());
        Impostor {
            child,
            capture: capture.to_owned(),
        }
    }

    fn captured(&self) -> Vec<u8> {
        std::fs::read(&self.capture).unwrap_or_default()
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// [`keybridge_tests::poll_until`] that must succeed.
fn wait_until(limit: Duration, ready: impl FnMut() -> bool) {
    assert!(poll_until(limit, ready), "condition not met in {limit:?}");
}

/// Runs the CLI with no KEYBRIDGE_HOME and `XDG_RUNTIME_DIR=runtime`, so
/// it finds its socket the way a user's CLI does.
fn cli_with_runtime(runtime: &Path, args: &[&str], stdin: &str) -> Output {
    run_with_stdin(
        Command::new(bin("keybridge"))
            .env_remove("KEYBRIDGE_HOME")
            .env("XDG_RUNTIME_DIR", runtime)
            .env("HOME", runtime)
            .args(args),
        Some(stdin),
    )
}

#[test]
fn the_cli_sends_nothing_into_a_socket_folder_another_user_made() {
    if !needs_root("the_cli_sends_nothing_into_a_socket_folder_another_user_made") {
        return;
    }
    let tmp = traversable_tempdir();
    // The attacker got there first: XDG_RUNTIME_DIR/keybridge is theirs,
    // world-writable, with their listener in it.
    let folder = nobodys_folder(&tmp.path().join("keybridge"), 0o777);
    let impostor = Impostor::listen(&folder.join("bridge.sock"), &folder.join("capture"));
    unlock_is_refused_before_sending(tmp.path(), "belongs to uid 65534", &impostor);
}

fn traversable_tempdir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    chmod(tmp.path(), 0o755);
    tmp
}

/// A folder `path` owned by nobody, with `mode`.
fn nobodys_folder(path: &Path, mode: u32) -> PathBuf {
    std::fs::create_dir(path).unwrap();
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    chmod(path, mode);
    path.to_owned()
}

/// `keybridge unlock` with a secret, finding its socket under `runtime`:
/// refused (exit 11, saying `why`), and the impostor received nothing.
fn unlock_is_refused_before_sending(runtime: &Path, why: &str, impostor: &Impostor) {
    let secret = "correct horse battery staple 42";
    let r = cli_with_runtime(runtime, &["unlock", "alice", "--secret-stdin"], secret);
    assert_eq!(r.status.code(), Some(11), "{}", stderr(&r));
    assert!(stderr(&r).contains(why), "{}", stderr(&r));
    // The impostor writes what it got when the connection closes.
    std::thread::sleep(Duration::from_millis(300));
    assert!(impostor.captured().is_empty(), "the impostor got bytes");
}

#[test]
fn the_cli_sends_nothing_to_a_listener_of_another_uid_in_its_own_folder() {
    if !needs_root("the_cli_sends_nothing_to_a_listener_of_another_uid_in_its_own_folder") {
        return;
    }
    let tmp = traversable_tempdir();
    let lair = nobodys_folder(&tmp.path().join("lair"), 0o755);
    let impostor = Impostor::listen(&lair.join("s"), &lair.join("capture"));
    // The folder is ours and private, but the socket in it (moved there:
    // a socket keeps its listener across a rename) is served by nobody.
    let ours = tmp.path().join("runtime");
    let folder = ours.join("keybridge");
    std::fs::create_dir_all(&folder).unwrap();
    chmod(&folder, 0o700);
    std::fs::rename(lair.join("s"), folder.join("bridge.sock")).unwrap();
    unlock_is_refused_before_sending(&ours, "runs as uid 65534", &impostor);
}

/// A daemon whose key `alice` (account acme) is unlocked daily.
fn daily_alice() -> Bridge {
    let b = Bridge::start(NOW);
    b.passphrase_key("acme", "alice");
    let u = unlock(&b, "alice", "daily");
    assert!(u.status.success(), "{}", stderr(&u));
    b
}

/// Waits for the daemon to exit, at most `limit`; its status.
fn wait_exit(b: &mut Bridge, limit: Duration) -> Option<std::process::ExitStatus> {
    let mut status = None;
    poll_until(limit, || {
        status = b.child().try_wait().unwrap();
        status.is_some()
    });
    status
}

#[test]
fn sigterm_completes_while_clients_hold_half_sent_requests() {
    let mut b = daily_alice();
    // Half a request line, complete headers with half a body, and an idle
    // connection: none may hold the daemon past its shutdown deadline.
    let mut half_head = UnixStream::connect(b.socket()).unwrap();
    half_head
        .write_all(b"POST /v1/sign HTTP/1.1\r\nHost: k")
        .unwrap();
    let mut half_body = UnixStream::connect(b.socket()).unwrap();
    half_body
        .write_all(
            b"POST /v1/sign HTTP/1.1\r\nHost: keybridge\r\nContent-Length: 100\r\n\r\n{\"key\"",
        )
        .unwrap();
    let _idle = UnixStream::connect(b.socket()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let pid = b.child().id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = wait_exit(&mut b, Duration::from_secs(30));
    let Some(status) = status else {
        let _ = b.child().kill();
        panic!(
            "the daemon did not exit within 30 s of SIGTERM: {}",
            b.daemon_log()
        );
    };
    assert!(status.success(), "{status}: {}", b.daemon_log());
    assert!(b.daemon_log().contains("keys locked"), "{}", b.daemon_log());
    assert!(!b.socket().exists());
}

#[test]
fn slow_requests_and_idle_connections_are_cut_off() {
    let b = daily_alice();
    // A body that never completes gets 408 once the body deadline passes.
    let mut slow = UnixStream::connect(b.socket()).unwrap();
    slow.write_all(b"POST /v1/sign HTTP/1.1\r\nHost: keybridge\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("request_timeout"), "{answer:?}");
    // An idle connection is closed by the header deadline.
    let mut idle = UnixStream::connect(b.socket()).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let n = idle.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(start.elapsed() < Duration::from_secs(25));
}

#[test]
fn connections_are_bounded_and_the_daemon_recovers_when_they_time_out() {
    let mut b = daily_alice();
    let pid = b.child().id();
    let hold: Vec<UnixStream> = (0..200)
        .map(|_| UnixStream::connect(b.socket()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert!(
        fds < 128 + 40,
        "the daemon holds {fds} descriptors for 200 idle clients"
    );
    // The idle ones time out; then a real client is served again.
    let start = Instant::now();
    wait_until(Duration::from_secs(60), || {
        b.cli(&["status"], None).status.success()
    });
    drop(hold);
    assert!(start.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_label_names_one_key_across_accounts() {
    let b = Bridge::start(NOW);
    let acme = b.passphrase_key("acme", "alice");
    // Another account's key may not take the label.
    let r = b.cli(
        &[
            "keys",
            "create",
            "--backend",
            "passphrase",
            "--account",
            "evil",
            "--agent",
            "alice",
            "--label",
            "alice",
            "--secret-stdin",
        ],
        Some("another passphrase entirely"),
    );
    assert!(!r.status.success());
    assert!(stderr(&r).contains("already names key"), "{}", stderr(&r));
    let (status, v) = call(
        &b,
        "POST",
        "/v1/keys",
        serde_json::to_vec(
            &json!({"backend": "passphrase", "account": "evil", "agent": "x",
            "label": "alice", "secret": "another passphrase entirely"}),
        )
        .unwrap(),
    );
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("already_exists")),
        "{v}"
    );
    let (_, keys) = call(&b, "GET", "/v1/keys", vec![]);
    assert_eq!(keys.as_array().unwrap().len(), 1, "nothing was created");
    let (_, shown) = call(&b, "GET", "/v1/keys/alice", vec![]);
    assert_eq!(shown["kid"], json!(acme));
}

#[test]
fn a_label_that_several_stored_keys_carry_is_refused_not_guessed() {
    let mut b = Bridge::start(NOW);
    b.passphrase_key("acme", "alice");
    b.passphrase_key("evil", "bob");
    b.signal("-TERM");
    // An older version let two keys share a label: edit one file to make it so.
    let dir = b.home().join("state/keys");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("\"label\": \"bob\"", "\"label\": \"alice\""),
        )
        .unwrap();
    }
    b.restart();
    let (status, v) = call(&b, "GET", "/v1/keys/alice", vec![]);
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("ambiguous")),
        "{v}"
    );
    let r = sign(&b, "alice", &[]);
    assert!(!r.status.success());
}

#[test]
fn lock_racing_unlock_leaves_one_truth() {
    let b = Bridge::start(NOW);
    b.passphrase_key("acme", "alice");
    let http = b.http();
    rt().block_on(async move {
        for round in 0..12 {
            let (h1, h2) = (http.clone(), http.clone());
            let unlocker = tokio::spawn(async move {
                let mut c = h1.connect().await.unwrap();
                c.request(
                    "POST",
                    "/v1/keys/alice/unlock",
                    Some(&json!({"secret": PASSPHRASE, "remember": "daily"})),
                )
                .await
                .unwrap()
            });
            // Lock while the unlock is deriving the key.
            tokio::time::sleep(Duration::from_millis(20 + 10 * (round % 4))).await;
            let mut c = h2.connect().await.unwrap();
            c.request("POST", "/v1/keys/alice/lock", None)
                .await
                .unwrap();
            assert_eq!(unlocker.await.unwrap().0, 200);
            let (_, shown) = c.request("GET", "/v1/keys/alice", None).await.unwrap();
            let (status, v) = c
                .request(
                    "POST",
                    "/v1/sign",
                    Some(&json!({"key": "alice", "device": "d", "command": "remote-control"})),
                )
                .await
                .unwrap();
            let signed = status == 200;
            assert_eq!(
                shown["unlocked"].as_bool(),
                Some(signed),
                "round {round}: shown {shown}, sign answered {status} {v}"
            );
            c.request("POST", "/v1/keys/alice/lock", None)
                .await
                .unwrap();
        }
    });
}

#[test]
fn a_refused_uri_never_echoes_its_pin() {
    let b = Bridge::start(NOW);
    let uri =
        "pkcs11:token=t;object=o?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=987654";
    let r = b.cli(
        &[
            "keys",
            "create",
            "--backend",
            "pkcs11",
            "--account",
            "acme",
            "--agent",
            "bob",
            "--uri",
            uri,
            "--secret-stdin",
        ],
        Some("111111"),
    );
    assert!(!r.status.success());
    assert!(stderr(&r).contains("pin-value"), "{}", stderr(&r));
    let (status, v) = call(
        &b,
        "POST",
        "/v1/keys",
        serde_json::to_vec(
            &json!({"backend": "pkcs11", "account": "acme", "agent": "bob",
            "uri": uri, "secret": "111111"}),
        )
        .unwrap(),
    );
    assert_eq!(status, 400, "{v}");
    for place in [stderr(&r), v.to_string(), b.daemon_log()] {
        assert!(!place.contains("987654"), "the PIN leaked: {place}");
        assert!(
            !place.contains("softhsm2.so"),
            "a query value leaked: {place}"
        );
    }
}

#[test]
fn a_module_outside_the_allowlist_is_never_loaded() {
    let Some(hsm) = SoftHsm::new() else { return };
    hsm.init_token("t");
    // A copy of a real module in a folder no policy names.
    let folder = tempfile::tempdir().unwrap();
    let module = folder.path().join("libsofthsm2.so");
    std::fs::copy(SOFTHSM_MODULE, &module).unwrap();
    let mut b = Bridge::start_with_env(NOW, None, &[("SOFTHSM2_CONF", &hsm.conf())]);
    let uri = format!("pkcs11:token=t;object=k?module-path={}", module.display());
    let create = |b: &Bridge| {
        b.cli(
            &[
                "keys",
                "create",
                "--backend",
                "pkcs11",
                "--account",
                "acme",
                "--agent",
                "bob",
                "--uri",
                &uri,
                "--secret-stdin",
            ],
            Some(TOKEN_PIN),
        )
    };
    let r = create(&b);
    assert_eq!(r.status.code(), Some(9), "{}", stderr(&r));
    assert!(stderr(&r).contains("pkcs11_modules"), "{}", stderr(&r));
    assert!(stderr(&r).contains("not loaded"), "{}", stderr(&r));
    // The user's config names the folder: now it loads and works.
    std::fs::create_dir_all(b.home().join("config")).unwrap();
    std::fs::write(
        b.home().join("config/config.toml"),
        format!(
            "pkcs11_modules = [\"{}/*\"]\n",
            folder.path().canonicalize().unwrap().display()
        ),
    )
    .unwrap();
    b.signal("-TERM");
    b.restart();
    let r = create(&b);
    assert!(r.status.success(), "{}", stderr(&r));
    // The administrator's list bounds the user's: the user cannot widen it.
    std::fs::write(b.system_policy(), "pkcs11_modules = [\"/usr/lib*/*\"]\n").unwrap();
    b.signal("-TERM");
    b.restart();
    let (status, v) = call(
        &b,
        "POST",
        "/v1/keys/bob/unlock",
        serde_json::to_vec(&json!({"secret": TOKEN_PIN})).unwrap(),
    );
    assert!(status != 200, "{v}");
    assert!(
        b.daemon_log().contains("pkcs11_modules") || v.to_string().contains("pkcs11_modules"),
        "{v}"
    );
}

#[test]
fn another_policy_file_cannot_widen_the_system_policy() {
    let mut b = Bridge::start_with_policy(NOW, Some("allowed_remember = [\"each-task\"]\n"));
    b.passphrase_key("acme", "alice");
    let extra = b.home().join("extra.toml");
    std::fs::write(&extra, "allowed_remember = [\"each-task\", \"weekly\"]\n").unwrap();
    b.signal("-TERM");
    b.restart_with(&["--policy", extra.to_str().unwrap()]);
    let r = unlock(&b, "alice", "weekly");
    assert_eq!(r.status.code(), Some(9), "{}", stderr(&r));
    // A named policy file that does not exist is an error, not "allow all".
    b.signal("-TERM");
    let r = b.cli(&["serve", "--policy", "/nonexistent/policy.toml"], None);
    assert!(!r.status.success());
    assert!(
        stderr(&r).contains("/nonexistent/policy.toml"),
        "{}",
        stderr(&r)
    );
}

#[test]
fn unlock_deadlines_follow_the_boot_clock_not_the_wall_clock() {
    let b = daily_alice();
    // The wall clock jumps two days ahead, the boot clock 10 s: unlocked.
    b.set_clocks(NOW + 2 * 86400, NOW + 10);
    let r = sign(&b, "alice", &[]);
    assert!(r.status.success(), "{}", stderr(&r));
    // The wall clock is set back ten days, the boot clock passes 24 h: locked.
    b.set_clocks(NOW - 10 * 86400, NOW + 86400 + 1);
    let r = sign(&b, "alice", &[]);
    assert_eq!(r.status.code(), Some(4), "{}", stderr(&r));
}

#[test]
fn wrong_secrets_back_off_exponentially_and_a_right_one_resets() {
    let b = Bridge::start(NOW);
    b.passphrase_key("acme", "alice");
    let wrong = |b: &Bridge| {
        b.cli(
            &["unlock", "alice", "--secret-stdin"],
            Some("not the passphrase"),
        )
    };
    assert_eq!(wrong(&b).status.code(), Some(5));
    let r = wrong(&b);
    assert_eq!(r.status.code(), Some(12), "{}", stderr(&r));
    assert!(stderr(&r).contains("try again in 1 s"), "{}", stderr(&r));
    b.set_time(NOW + 1);
    assert_eq!(wrong(&b).status.code(), Some(5));
    let (status, v) = call(
        &b,
        "POST",
        "/v1/keys/alice/unlock",
        serde_json::to_vec(&json!({"secret": "nope nope nope"})).unwrap(),
    );
    assert_eq!(
        (status, v["code"].as_str()),
        (429, Some("too_many_attempts"))
    );
    assert_eq!(v["retry_after"], json!(2));
    // Even the right secret waits its turn; then it resets the count.
    b.set_time(NOW + 3);
    assert!(unlock(&b, "alice", "each-task").status.success());
    assert_eq!(wrong(&b).status.code(), Some(5));
    b.set_time(NOW + 4);
    assert_eq!(wrong(&b).status.code(), Some(5), "back to a 1 s wait");
}

#[test]
fn ten_parallel_wrong_secrets_get_one_try() {
    let b = Bridge::start(NOW);
    b.passphrase_key("acme", "alice");
    let http = b.http();
    let statuses: Vec<u16> = rt().block_on(async move {
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let h = http.clone();
                tokio::spawn(async move {
                    let mut c = h.connect().await.unwrap();
                    c.request(
                        "POST",
                        "/v1/keys/alice/unlock",
                        Some(&json!({"secret": "a wrong passphrase"})),
                    )
                    .await
                    .unwrap()
                    .0
                })
            })
            .collect();
        let mut out = vec![];
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        9,
        "{statuses:?}"
    );
}

#[test]
fn the_bridge_signs_nothing_a_device_would_refuse_for_size() {
    let b = daily_alice();
    let before = audit_lines(&b);
    let body = json!({"key": "alice", "device": "d", "command": "run-script",
        "args": {"blob": "x".repeat(100_000)}});
    let (status, v) = call(&b, "POST", "/v1/sign", serde_json::to_vec(&body).unwrap());
    assert_eq!(status, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("65536"), "{v}");
    assert_eq!(audit_lines(&b), before, "nothing was signed or audited");
}

#[test]
fn duplicate_argument_keys_are_refused() {
    let b = daily_alice();
    let body = br#"{"key": "alice", "device": "d", "command": "run-script", "args": {"user": "alice", "user": "root"}}"#;
    let (status, v) = call(&b, "POST", "/v1/sign", body.to_vec());
    assert_eq!(status, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("given twice"), "{v}");
    let body = br#"{"key": "alice", "key": "alice", "device": "d", "command": "run-script"}"#;
    assert_eq!(call(&b, "POST", "/v1/sign", body.to_vec()).0, 400);
    assert_eq!(audit_lines(&b), 0);
}

#[test]
fn device_ids_have_one_grammar_in_api_and_cli() {
    let b = daily_alice();
    for bad in ["a/b", "..", ".", "", "tab\there", "nul\0"] {
        let (status, v) = call(
            &b,
            "POST",
            "/v1/sign",
            serde_json::to_vec(
                &json!({"key": "alice", "device": bad, "command": "remote-control"}),
            )
            .unwrap(),
        );
        assert_eq!(status, 400, "{bad:?}: {v}");
        let (status, v) = call(
            &b,
            "POST",
            "/v1/sign",
            serde_json::to_vec(
                &json!({"key": "alice", "devices": ["ok-1", bad], "command": "remote-control"}),
            )
            .unwrap(),
        );
        assert_eq!(status, 400, "{bad:?}: {v}");
    }
    let list = b.home().join("fleet.txt");
    std::fs::write(&list, "dev-1\n../etc/passwd\n").unwrap();
    let out = b.home().join("out");
    let r = b.cli(
        &[
            "sign",
            "--key",
            "alice",
            "--devices",
            list.to_str().unwrap(),
            "--command",
            "remote-control",
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert!(!r.status.success());
    assert!(stderr(&r).contains("line 2"), "{}", stderr(&r));
    assert!(!out.exists());
    assert_eq!(audit_lines(&b), 0);
}

#[test]
fn an_overflowing_ttl_is_refused_not_wrapped() {
    let b = daily_alice();
    for ttl in ["1152921504606846977h", "25h", "0", "-5", "5 parsecs"] {
        let r = sign(&b, "alice", &[&format!("--ttl={ttl}")]);
        assert!(!r.status.success(), "--ttl {ttl} signed");
        assert!(stderr(&r).contains("ttl"), "{}", stderr(&r));
    }
    assert!(sign(&b, "alice", &["--ttl", "1h 30m"]).status.success());
    assert_eq!(audit_lines(&b), 1);
}

/// `keybridge serve` in the foreground on `b`'s home: what it says when it
/// refuses to start.
fn serve_refusal(b: &Bridge, extra: &[&str]) -> Output {
    let mut args = vec![
        "serve",
        "--system-policy",
        b.system_policy().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = Command::new(bin("keybridge"))
        .env("KEYBRIDGE_HOME", b.home())
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve started: {}", stderr(&out));
    out
}

#[test]
fn symlinks_planted_in_the_state_folders_are_not_followed() {
    let mut b = Bridge::start(NOW);
    b.signal("-TERM");
    let victim = b.home().join("victim");
    for planted in ["state/audit.jsonl", "run/bridge.lock", "state/daemon.lock"] {
        std::fs::write(&victim, "precious\n").unwrap();
        let path = b.home().join(planted);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let r = serve_refusal(&b, &[]);
        assert!(
            stderr(&r).to_lowercase().contains("symbolic links"),
            "{planted}: {}",
            stderr(&r)
        );
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "precious\n",
            "{planted}"
        );
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn state_files_are_owner_only_whatever_the_umask() {
    let mut b = Bridge::start(NOW);
    b.signal("-TERM");
    for f in ["run/bridge.lock", "state/daemon.lock", "state/audit.jsonl"] {
        let _ = std::fs::remove_file(b.home().join(f));
    }
    let policy = b.system_policy().to_str().unwrap().to_owned();
    let mut child = Command::new("sh")
        .args([
            "-c",
            "umask 000 && exec \"$0\" serve --system-policy \"$1\"",
        ])
        .arg(bin("keybridge"))
        .arg(&policy)
        .env("KEYBRIDGE_HOME", b.home())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    poll_until(Duration::from_secs(20), || {
        b.cli(&["status"], None).status.success()
    });
    for f in ["run/bridge.lock", "state/daemon.lock", "state/audit.jsonl"] {
        let mode = std::fs::metadata(b.home().join(f)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    for d in ["run", "state", "state/keys"] {
        let mode = std::fs::metadata(b.home().join(d)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700, "{d}");
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

#[test]
fn two_daemons_cannot_share_a_home_through_different_sockets() {
    let b = Bridge::start(NOW);
    let other = b.home().join("other-run/bridge.sock");
    let r = serve_refusal(&b, &["--socket", other.to_str().unwrap()]);
    assert!(
        stderr(&r).contains("already running on the state folder"),
        "{}",
        stderr(&r)
    );
}
