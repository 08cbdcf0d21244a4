//! The bridge end to end: a real daemon on a real socket in a temp folder,
//! driven by the real CLI and by concurrent HTTP clients; commands verified
//! by the real `keybridge-device`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keybridge_protocol::{KeyLog, ReplayCache, Verifier};
use keybridge_tests::*;
use serde_json::{Value, json};
use std::path::Path;

const NOW: i64 = 1_800_000_000;

fn json_out(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

fn unlock(b: &Bridge, key: &str, mode: &str) {
    b.ok(
        &["unlock", key, "--remember", mode, "--secret-stdin"],
        Some(PASSPHRASE),
    );
}

/// A bridge with alice's passphrase key, unlocked daily, and her account's
/// genesis log trusted by a device state folder for `dev-1`.
fn setup() -> (Bridge, String, std::path::PathBuf) {
    let b = Bridge::start(NOW);
    let kid = b.passphrase_key("acme", "alice");
    unlock(&b, "alice", "daily");
    let log = b.account_log("acme", "alice");
    let state = b.home().join("device");
    trust_device(&state, &log, "dev-1");
    (b, kid, state)
}

fn verify_on_device(state: &Path, cmd: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["verify", cmd.to_str().unwrap(), "--now"];
    let now = NOW.to_string();
    args.push(&now);
    args.extend_from_slice(extra);
    device(state, &args)
}

/// `keybridge sign` of a remote-control command by alice for device `d`.
fn sign_alice(b: &Bridge, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "sign",
        "--key",
        "alice",
        "--device",
        "d",
        "--command",
        "remote-control",
        "--out",
    ];
    args.push(out.to_str().unwrap());
    args.extend_from_slice(extra);
    b.cli(&args, None)
}

#[test]
fn signed_command_verifies_on_the_device_with_its_body() {
    let (b, kid, state) = setup();
    let script = b.home().join("fix.sh");
    std::fs::write(&script, "systemctl restart agent\n").unwrap();
    let out = b.home().join("cmd.cose");
    b.ok(
        &[
            "sign",
            "--key",
            &kid[..8],
            "--device",
            "dev-1",
            "--command",
            "run-script",
            "--arg",
            "user=root",
            "--body",
            script.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    let v = verify_on_device(&state, &out, &["--body", script.to_str().unwrap()]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let claims: Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(claims["agent"], "alice");
    assert_eq!(claims["account"], "acme");
    assert_eq!(claims["command"], "run-script");
    assert_eq!(claims["args"]["user"], "root");
    assert_eq!(claims["kid"], kid);
    // The audit log has the signature (and the genesis event).
    let audit = json_out(&b.ok(&["--json", "audit"], None));
    let cmds: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["cmd"].as_str().unwrap())
        .collect();
    assert_eq!(cmds, ["key-log:genesis", "run-script"]);
}

#[test]
fn batch_signs_once_and_every_device_verifies_its_copy() {
    let (b, kid, _) = setup();
    let list = b.home().join("devices.txt");
    let out = b.home().join("batch");
    let args = [
        "sign",
        "--key",
        "alice",
        "--devices",
        list.to_str().unwrap(),
        "--command",
        "create-alert",
        "--out",
        out.to_str().unwrap(),
    ];
    // A device twice and a bad id: refused with their lines, nothing signed.
    std::fs::write(&list, "# fleet\ndev-a\ndev-b\n\ndev-c\ndev-a\na/b\n").unwrap();
    let r = b.cli(&args, None);
    assert!(!r.status.success());
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(e.contains("\"dev-a\" is on lines 2, 6"), "{e}");
    assert!(e.contains("line 7: device id \"a/b\""), "{e}");
    assert!(e.contains("nothing was signed"), "{e}");
    assert!(!out.exists());
    std::fs::write(&list, "# fleet\ndev-a\ndev-b\n\ndev-c\n").unwrap();
    b.ok(&args, None);
    // No temp file left behind.
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.ends_with(".cose") && !n.starts_with('.')),
        "{names:?}"
    );
    let log = b.home().join("acme.log");
    for id in ["dev-a", "dev-b", "dev-c"] {
        let state = b.home().join(format!("state-{id}"));
        trust_device(&state, &log, id);
        let v = verify_on_device(&state, &out.join(format!("{id}.cose")), &[]);
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
        let c: Value = serde_json::from_slice(&v.stdout).unwrap();
        assert_eq!(c["batch_size"], 3);
        assert_eq!(c["kid"], kid);
    }
    let audit = json_out(&b.ok(&["--json", "audit"], None));
    assert_eq!(
        audit[1]["batch_size"], 3,
        "one audit line for the whole batch"
    );
}

#[test]
fn each_task_unlock_allows_exactly_one_signature() {
    let b = Bridge::start(NOW);
    b.passphrase_key("acme", "alice");
    let out = b.home().join("c.cose");
    let sign = || sign_alice(&b, &out, &[]);
    // Locked from the start.
    assert_eq!(sign().status.code(), Some(4));
    unlock(&b, "alice", "each-task");
    assert!(sign().status.success());
    let again = sign();
    assert_eq!(
        again.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("locked"));
}

#[test]
fn daily_and_weekly_unlocks_expire_at_their_deadline() {
    for (mode, secs) in [("daily", 24 * 3600), ("weekly", 168 * 3600)] {
        let b = Bridge::start(NOW);
        b.passphrase_key("acme", "alice");
        unlock(&b, "alice", mode);
        let out = b.home().join("c.cose");
        let sign = || sign_alice(&b, &out, &[]).status.code();
        assert_eq!(sign(), Some(0));
        assert_eq!(sign(), Some(0), "{mode} allows several signatures");
        b.set_time(NOW + secs - 1);
        assert_eq!(sign(), Some(0), "{mode} still valid a second before");
        b.set_time(NOW + secs);
        assert_eq!(sign(), Some(4), "{mode} lapsed at its deadline");
        let status = json_out(&b.ok(&["--json", "status"], None));
        assert_eq!(status["keys"][0]["unlocked"], false);
    }
}

#[test]
fn an_unused_each_task_unlock_lapses_after_five_minutes() {
    let b = Bridge::start(NOW);
    b.passphrase_key("acme", "alice");
    unlock(&b, "alice", "each-task");
    b.set_time(NOW + 300);
    let out = b.home().join("c.cose");
    let r = sign_alice(&b, &out, &[]);
    assert_eq!(r.status.code(), Some(4));
}

#[test]
fn sigterm_under_load_answers_every_accepted_request() {
    let (mut b, _, _) = setup();
    let load = sign_load(b.http());
    wait_for_signatures(&b, 50);
    let status = b.signal("-TERM");
    assert!(status.success(), "{status}: {}", b.daemon_log());
    let ok = load.join().unwrap();
    assert!(ok > 0);
    // Every answered signature is in the audit log (plus the genesis line).
    let audit = std::fs::read_to_string(b.home().join("state/audit.jsonl")).unwrap();
    assert_eq!(audit.lines().count(), ok + 1);
    assert!(b.daemon_log().contains("keys locked"));
}

#[test]
fn explicit_lock_ends_a_daily_unlock() {
    let b = Bridge::start(NOW);
    b.passphrase_key("acme", "alice");
    unlock(&b, "alice", "daily");
    b.ok(&["lock", "alice"], None);
    let out = b.home().join("c.cose");
    let r = sign_alice(&b, &out, &[]);
    assert_eq!(r.status.code(), Some(4));
}

#[test]
fn policy_restricts_prompt_frequency_and_ttl() {
    let b = Bridge::start_with_policy(
        NOW,
        Some("allowed_remember = [\"each-task\", \"daily\"]\nmax_ttl = 600\n"),
    );
    b.passphrase_key("acme", "alice");
    let r = b.cli(
        &["unlock", "alice", "--remember", "weekly", "--secret-stdin"],
        Some(PASSPHRASE),
    );
    assert_eq!(
        r.status.code(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(String::from_utf8_lossy(&r.stderr).contains("not allowed"));
    // The user's config cannot widen it.
    std::fs::create_dir_all(b.home().join("config")).unwrap();
    std::fs::write(
        b.home().join("config/config.toml"),
        "allowed_remember = [\"weekly\", \"daily\"]\nmax_ttl = 86400\n",
    )
    .unwrap();
    unlock(&b, "alice", "daily");
    let out = b.home().join("c.cose");
    let sign = |ttl: &str| sign_alice(&b, &out, &["--ttl", ttl]);
    let r = sign("11m");
    assert_eq!(
        r.status.code(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(!out.exists(), "a refused command leaves no file");
    assert!(sign("10m").status.success());
}

#[test]
fn wrong_passphrase_changes_nothing() {
    let (b, kid, _) = setup();
    let before = std::fs::read(b.home().join(format!("state/keys/{kid}.json"))).unwrap();
    let r = b.cli(
        &["unlock", "alice", "--secret-stdin"],
        Some("not the passphrase"),
    );
    assert_eq!(r.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&r.stderr).contains("wrong"));
    // Still unlocked (daily) as before, same file, still signs.
    let status = json_out(&b.ok(&["--json", "status"], None));
    assert_eq!(status["keys"][0]["unlocked_mode"], "daily");
    assert_eq!(
        std::fs::read(b.home().join(format!("state/keys/{kid}.json"))).unwrap(),
        before
    );
    let out = b.home().join("c.cose");
    b.ok(
        &[
            "sign",
            "--key",
            "alice",
            "--device",
            "d",
            "--command",
            "create-group",
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    // And from locked: stays locked (after the backoff of the first
    // wrong attempt has passed).
    b.ok(&["lock", "alice"], None);
    b.set_time(NOW + 1);
    let r = b.cli(&["unlock", "alice", "--secret-stdin"], Some("still not it"));
    assert_eq!(r.status.code(), Some(5));
    let status = json_out(&b.ok(&["--json", "status"], None));
    assert_eq!(status["keys"][0]["unlocked"], false);
    // The daemon's log never saw the passphrases.
    let log = b.daemon_log();
    assert!(!log.contains(PASSPHRASE) && !log.contains("not the passphrase"));
}

#[test]
fn secrets_never_come_back_in_errors() {
    let b = Bridge::start(NOW);
    b.passphrase_key("acme", "alice");
    let secret = "hunter2-hunter2";
    rt().block_on(async {
        let mut c = b.http().connect().await.unwrap();
        // Every way a request carrying a secret can be refused: a malformed
        // body, an unknown field, a wrong type next to the secret, an
        // unknown backend, a bad URI, a taken label, a short passphrase.
        let bodies = [
            ("/v1/keys/alice/unlock", json!({"secret": secret, "remember": "forever"})),
            ("/v1/keys/alice/unlock", json!({"secret": secret, "extra": 1})),
            ("/v1/keys/alice/unlock", json!({"secret": [secret]})),
            ("/v1/keys/nobody/unlock", json!({"secret": secret})),
            ("/v1/keys", json!({"backend": "passphrase", "account": "acme", "agent": "x", "secret": secret, "remember": "forever"})),
            ("/v1/keys", json!({"backend": "floppy", "account": "acme", "agent": "x", "secret": secret})),
            ("/v1/keys", json!({"backend": "pkcs11", "account": "acme", "agent": "x", "secret": secret, "uri": format!("pkcs11:token=t?pin-value={secret}")})),
            ("/v1/keys", json!({"backend": "passphrase", "account": "acme", "agent": "x", "label": "alice", "secret": secret})),
            ("/v1/keys", json!({"backend": "passphrase", "account": "acme", "agent": "x", "secret": "q7z"})),
            ("/v1/keys", json!({"backend": "passphrase", "account": "acme", "agent": "x", "secret": {"nested": secret}})),
        ];
        for (path, body) in bodies {
            let (status, v) = c.request("POST", path, Some(&body)).await.unwrap();
            assert!((400..500).contains(&status), "{path} {body}: {status} {v}");
            assert!(v["code"].is_string(), "{v}");
            assert!(!v.to_string().contains(secret), "{path} {body}: {v}");
            assert!(!v.to_string().contains("q7z"), "{path} {body}: {v}");
        }
    });
    assert!(!b.daemon_log().contains(secret));
}

#[test]
fn problems_are_rfc9457_with_stable_codes() {
    let b = Bridge::start(NOW);
    b.passphrase_key("acme", "alice");
    rt().block_on(async {
        let mut c = b.http().connect().await.unwrap();
        let sign = json!({"key": "alice", "device": "d", "command": "run-script"});
        let (status, v) = c.request("POST", "/v1/sign", Some(&sign)).await.unwrap();
        assert_eq!((status, v["code"].as_str()), (423, Some("locked")));
        assert_eq!(v["status"], 423);
        assert!(v["type"].as_str().unwrap().starts_with("urn:keybridge:problem:"));
        let (status, v) = c
            .request("POST", "/v1/sign", Some(&json!({"key": "ffff", "device": "d", "command": "run-script"})))
            .await
            .unwrap();
        assert_eq!((status, v["code"].as_str()), (404, Some("unknown_key")));
        let (status, v) = c
            .request("POST", "/v1/sign", Some(&json!({"key": "alice", "device": "d", "command": "format-disk"})))
            .await
            .unwrap();
        assert_eq!((status, v["code"].as_str()), (400, Some("bad_request")));
        let (status, v) = c
            .request("POST", "/v1/sign", Some(&json!({"key": "alice", "device": "d", "devices": ["e"], "command": "run-script"})))
            .await
            .unwrap();
        assert_eq!((status, v["code"].as_str()), (400, Some("bad_request")));
    });
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn sixty_four_clients_times_two_hundred_signatures_all_verify_and_are_audited() {
    const CLIENTS: usize = 64;
    const EACH: usize = 200;
    let (b, _kid, _) = setup();
    let log = KeyLog::from_bytes(&std::fs::read(b.home().join("acme.log")).unwrap()).unwrap();
    let envelopes = rt().block_on(async {
        let mut tasks = vec![];
        for c in 0..CLIENTS {
            let http = b.http();
            tasks.push(tokio::spawn(async move {
                let mut conn = http.connect().await.unwrap();
                let mut out = Vec::with_capacity(EACH);
                for i in 0..EACH {
                    let body = json!({
                        "key": "alice", "device": format!("dev-{}", (c * EACH + i) % 7),
                        "command": "remote-control", "args": {"n": i as i64},
                    });
                    let (status, v) = conn.request("POST", "/v1/sign", Some(&body)).await.unwrap();
                    assert_eq!(status, 200, "{v}");
                    out.push((
                        format!("dev-{}", (c * EACH + i) % 7),
                        B64.decode(v["envelope"].as_str().unwrap()).unwrap(),
                    ));
                }
                out
            }));
        }
        let mut all = vec![];
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    assert_eq!(envelopes.len(), CLIENTS * EACH);
    let mut replay = ReplayCache::default();
    for (dev, env) in &envelopes {
        Verifier::new(&log, dev)
            .verify(env, None, NOW, &mut replay)
            .expect("every signature verifies, and every cti is fresh");
    }
    let audit = std::fs::read_to_string(b.home().join("state/audit.jsonl")).unwrap();
    // One genesis line plus one per signature, each a complete JSON object.
    assert_eq!(audit.lines().count(), 1 + CLIENTS * EACH);
    assert!(
        audit
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok())
    );
}

/// Waits (at most 30 s) until the audit log shows `n` signatures: load is
/// running, however slow the machine.
fn wait_for_signatures(b: &Bridge, n: usize) {
    let audit = b.home().join("state/audit.jsonl");
    assert!(
        poll_until(std::time::Duration::from_secs(30), || {
            std::fs::read_to_string(&audit).map_or(0, |a| a.lines().count()) > n
        }),
        "no load after 30 s"
    );
}

/// Eight clients signing on fresh connections until the daemon goes away;
/// the thread answers how many signatures came back. A request either gets
/// a whole answer or its connection is refused or closed before the request
/// was taken — never an error status, never half an answer.
fn sign_load(http: Http) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        rt().block_on(async {
            let mut tasks = vec![];
            for _ in 0..8 {
                let http = http.clone();
                tasks.push(tokio::spawn(async move {
                    let mut ok = 0usize;
                    loop {
                        let Ok(mut conn) = http.connect().await else {
                            return ok;
                        };
                        let body =
                            json!({"key": "alice", "device": "dev-1", "command": "remote-control"});
                        match conn.request("POST", "/v1/sign", Some(&body)).await {
                            Ok((200, v)) => {
                                assert!(v["envelope"].is_string());
                                ok += 1
                            }
                            Ok((status, v)) => panic!("{status}: {v}"),
                            Err(_) => return ok,
                        }
                    }
                }));
            }
            let mut ok = 0;
            for t in tasks {
                ok += t.await.unwrap();
            }
            ok
        })
    })
}

#[test]
fn kill_9_mid_load_loses_no_file_and_the_next_start_works() {
    let (mut b, kid, state) = setup();
    let load = sign_load(b.http());
    // Let load build up, then kill -9.
    wait_for_signatures(&b, 50);
    let status = b.signal("-9");
    assert!(!status.success());
    let signed = load.join().unwrap();
    assert!(signed > 0, "load was running");
    // Nothing lost: the key file parses, every audit line is whole.
    let key_file =
        std::fs::read_to_string(b.home().join(format!("state/keys/{kid}.json"))).unwrap();
    serde_json::from_str::<Value>(&key_file).unwrap();
    let audit = std::fs::read_to_string(b.home().join("state/audit.jsonl")).unwrap();
    assert!(
        audit.lines().count() > signed,
        "every answered signature was audited"
    );
    assert!(
        audit
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok())
    );
    // The stale socket is handled and the key is back (locked: kill -9 took
    // the unlock with it).
    b.restart();
    let keys = json_out(&b.ok(&["--json", "keys", "list"], None));
    assert_eq!(keys[0]["kid"], kid);
    assert_eq!(keys[0]["unlocked"], false);
    unlock(&b, "alice", "each-task");
    let out = b.home().join("after.cose");
    b.ok(
        &[
            "sign",
            "--key",
            "alice",
            "--device",
            "dev-1",
            "--command",
            "remote-control",
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    let v = verify_on_device(&state, &out, &[]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
}

#[test]
fn a_second_daemon_is_refused_and_sigterm_drains_and_cleans_up() {
    let (mut b, _, _) = setup();
    let second = b.cli(&["serve"], None);
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"));
    // SIGTERM: exits 0, socket removed, and the CLI says the daemon is gone.
    let status = b.signal("-TERM");
    assert!(status.success(), "{status}: {}", b.daemon_log());
    assert!(!b.socket().exists());
    let r = b.cli(&["status"], None);
    assert_eq!(r.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&r.stderr).contains("not running"));
}

#[test]
fn another_user_is_refused() {
    if rustix_uid() != 0 {
        assert!(
            !in_ci(),
            "CI runs as root; this test needs root to switch user"
        );
        eprintln!("SKIP another_user_is_refused: needs root (setpriv)");
        return;
    }
    let (b, _, _) = setup();
    use std::os::unix::fs::PermissionsExt as _;
    let mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    // A copy of the CLI that nobody can run wherever the checkout lives:
    // the home becomes traversable (0711), its files stay as they are.
    let cli = b.home().join("keybridge-cli");
    std::fs::copy(bin("keybridge"), &cli).unwrap();
    mode(&cli, 0o755);
    mode(b.home(), 0o711);
    let as_nobody = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&cli)
            .arg("--socket")
            .arg(b.socket())
            .args(args)
            .output()
            .expect("setpriv (util-linux)")
    };
    // Our CLI run by nobody refuses the socket folder (it is not nobody's)
    // before it sends anything.
    let r = as_nobody(&["status"]);
    assert_eq!(
        r.status.code(),
        Some(11),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(String::from_utf8_lossy(&r.stderr).contains("belongs to uid 0"));
    // With the file permissions opened, a client that does not check
    // (Debian's Python, raw HTTP) reaches the socket, and the daemon's
    // peer-uid check refuses it.
    mode(&b.home().join("run"), 0o777);
    mode(&b.socket(), 0o777);
    let raw = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args([
            "/usr/bin/python3",
            "-c",
            "import socket,sys\n\
             s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n\
             s.sendall(b'GET /v1/status HTTP/1.1\\r\\nHost: keybridge\\r\\nConnection: close\\r\\n\\r\\n')\n\
             print(s.recv(65536).decode())",
        ])
        .arg(b.socket())
        .output()
        .expect("setpriv and python3");
    let answer = String::from_utf8_lossy(&raw.stdout);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("\"forbidden\""), "{answer}");
    assert!(
        b.daemon_log()
            .contains("refused a connection from another user")
    );
}

fn rustix_uid() -> u32 {
    // The owner of a file we just created is us.
    use std::os::unix::fs::MetadataExt as _;
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().metadata().unwrap().uid()
}

#[test]
fn account_init_writes_a_genesis_log_and_an_age_recovery_file() {
    let (b, kid, _) = setup();
    let log = KeyLog::from_bytes(&std::fs::read(b.home().join("acme.log")).unwrap()).unwrap();
    assert_eq!(log.account(), "acme");
    assert_eq!(log.active_keys().next().unwrap().key.kid().to_hex(), kid);
    let sealed = std::fs::read(b.home().join("acme.recovery.age")).unwrap();
    let identity = age::scrypt::Identity::new(age::secrecy::SecretString::from(
        "recovery passphrase 1".to_owned(),
    ));
    let plain = age::decrypt(&identity, &sealed).unwrap();
    let v: Value = serde_json::from_slice(&plain).unwrap();
    let seed: [u8; 32] = keybridge_protocol::key::unhex(v["recovery_seed"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
    let public = keybridge_protocol::PublicKey::ed25519(sk.verifying_key().as_bytes()).unwrap();
    assert_eq!(
        log.recovery_key(),
        &public,
        "the file holds the log's recovery key"
    );
    // Wrong passphrase: age refuses.
    let wrong = age::scrypt::Identity::new(age::secrecy::SecretString::from(
        "nope nope nope".to_owned(),
    ));
    assert!(age::decrypt(&wrong, &sealed).is_err());
    // Existing files are never overwritten.
    let r = b.cli(
        &[
            "account",
            "init",
            "--account",
            "acme",
            "--key",
            "alice",
            "--log",
            b.home().join("acme.log").to_str().unwrap(),
            "--recovery-file",
            "/tmp/x.age",
            "--secret-stdin",
        ],
        Some("recovery passphrase 1"),
    );
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("refusing to overwrite"));
}

#[test]
fn the_daemon_not_running_gets_a_friendly_message() {
    let home = tempfile::tempdir().unwrap();
    let r = std::process::Command::new(bin("keybridge"))
        .env("KEYBRIDGE_HOME", home.path())
        .args(["keys", "list"])
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&r.stderr).contains("keybridge serve"));
}

/// An Ed25519 signer for building key logs by hand.
struct TestKey(ed25519_dalek::SigningKey);

impl TestKey {
    fn new(seed: u8) -> Self {
        TestKey(ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
    }
    fn public(&self) -> keybridge_protocol::PublicKey {
        keybridge_protocol::PublicKey::ed25519(self.0.verifying_key().as_bytes()).unwrap()
    }
    fn finish(&self, u: keybridge_protocol::Unsigned) -> Vec<u8> {
        use ed25519_dalek::Signer as _;
        let sig = self.0.sign(u.to_be_signed()).to_bytes();
        u.into_bytes(&sig).unwrap()
    }
}

#[test]
fn history_renders_the_key_log_with_owner_and_actor() {
    use keybridge_protocol::{KeyRequest, Op, Role};
    let b = Bridge::start(NOW);
    // alice (admin) approves bob, bob's key is revoked by alice, a request
    // of carol's is rejected: the owner of each key and the actor of each
    // event differ, and the history must say which is which.
    let (alice, bob, carol, recovery) = (
        TestKey::new(1),
        TestKey::new(2),
        TestKey::new(3),
        TestKey::new(4),
    );
    let mut log = KeyLog::from_bytes(&alice.finish(KeyLog::genesis(
        "acme",
        NOW,
        &alice.public(),
        "alice",
        &recovery.public(),
    )))
    .unwrap();
    let req = bob.finish(KeyRequest::unsigned(
        "acme",
        "bob",
        Role::Member,
        &bob.public(),
        NOW + 1,
    ));
    let add = Op::Add {
        key: bob.public(),
        agent: "bob".into(),
        role: Role::Member,
        req,
        replaces: None,
    };
    log.append(&alice.finish(log.next_event(NOW + 2, &add, &alice.public())))
        .unwrap();
    let carol_req = carol.finish(KeyRequest::unsigned(
        "acme",
        "carol",
        Role::Admin,
        &carol.public(),
        NOW + 3,
    ));
    let digest: [u8; 32] = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&carol_req).into()
    };
    let reject = Op::Reject {
        req: digest,
        reason: "unknown device".into(),
    };
    log.append(&alice.finish(log.next_event(NOW + 4, &reject, &alice.public())))
        .unwrap();
    let revoke = Op::Revoke {
        kid: bob.public().kid(),
    };
    log.append(&alice.finish(log.next_event(NOW + 5, &revoke, &alice.public())))
        .unwrap();
    let path = b.home().join("acme.log");
    std::fs::write(&path, log.to_bytes()).unwrap();

    let rows = json_out(&b.ok(
        &["--json", "history", "--log", path.to_str().unwrap()],
        None,
    ));
    let rows = rows.as_array().unwrap();
    let events: Vec<&str> = rows.iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        ["created", "requested", "approved", "rejected", "revoked"]
    );
    let ops: Vec<&str> = rows.iter().map(|r| r["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["genesis", "add", "add", "reject", "revoke"]);
    let bob_kid = bob.public().kid().to_hex();
    // The request: bob asked, at his time.
    assert_eq!(rows[1]["kid"], json!(bob_kid));
    assert_eq!(rows[1]["actor"], "bob");
    assert_eq!(rows[1]["time"], json!(NOW + 1));
    assert_eq!(rows[2]["kid"], json!(bob_kid));
    assert_eq!(rows[2]["owner"], "bob");
    assert_eq!(rows[2]["actor"], "alice");
    assert_eq!(rows[3]["owner"], Value::Null);
    assert_eq!(rows[3]["actor"], "alice");
    assert_eq!(rows[4]["kid"], json!(bob_kid));
    assert_eq!(rows[4]["owner"], "bob", "the revoked key was bob's");
    assert_eq!(rows[4]["actor"], "alice", "alice revoked it");
    assert_eq!(rows[4]["time"], json!(NOW + 5), "--json keeps unix seconds");
    let text = b.ok(&["history", "--log", path.to_str().unwrap()], None);
    assert!(
        text.contains("bob's key as member") && text.contains("revoked"),
        "{text}"
    );
    assert!(text.contains("alice"), "{text}");
    assert!(
        text.contains("2027-01-15T08:00:05Z"),
        "dates for people: {text}"
    );
}
