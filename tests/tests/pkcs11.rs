//! PKCS#11 keys through the whole path: a real SoftHSM2 token, the real
//! daemon and CLI, the real `keybridge-device`, and `pkcs11-tool` /
//! `openssl` reading what keybridge made.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keybridge_protocol::{KeyLog, ReplayCache, Verifier};
use keybridge_tests::*;
use serde_json::{Value, json};
use std::path::Path;

const NOW: i64 = 1_800_000_000;

fn hsm_bridge() -> Option<(SoftHsm, Bridge)> {
    let hsm = SoftHsm::new()?;
    hsm.init_token("agent-token");
    let conf = hsm.conf();
    let b = Bridge::start_with_env(NOW, None, &[("SOFTHSM2_CONF", &conf)]);
    Some((hsm, b))
}

fn create(b: &Bridge, hsm: &SoftHsm, agent: &str, alg: &str, extra: &[&str]) -> String {
    let uri = hsm.uri("agent-token", agent);
    let mut args = vec![
        "--json",
        "keys",
        "create",
        "--backend",
        "pkcs11",
        "--account",
        "acme",
        "--agent",
        agent,
        "--label",
        agent,
        "--alg",
        alg,
        "--uri",
        &uri,
        "--secret-stdin",
    ];
    args.extend_from_slice(extra);
    let v: Value = serde_json::from_str(&b.ok(&args, Some(TOKEN_PIN))).unwrap();
    v["kid"].as_str().unwrap().to_owned()
}

/// `keybridge --json keys list --backend pkcs11 --module SOFTHSM_MODULE`.
fn token_listing(b: &Bridge) -> Value {
    let args = [
        "--json",
        "keys",
        "list",
        "--backend",
        "pkcs11",
        "--module",
        SOFTHSM_MODULE,
    ];
    serde_json::from_str(&b.ok(&args, None)).unwrap()
}

fn unlock(b: &Bridge, key: &str, mode: &str) {
    b.ok(
        &["unlock", key, "--remember", mode, "--secret-stdin"],
        Some(TOKEN_PIN),
    );
}

fn sign(b: &Bridge, key: &str, out: &Path) -> std::process::Output {
    b.cli(
        &[
            "sign",
            "--key",
            key,
            "--device",
            "dev-1",
            "--command",
            "deploy-unattended",
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    )
}

/// The account's log with `key` as first key; a device trusting it.
fn device_for(b: &Bridge, key: &str) -> std::path::PathBuf {
    let log = b.account_log("acme", key);
    let state = b.home().join(format!("device-{key}"));
    trust_device(&state, &log, "dev-1");
    state
}

fn verify(state: &Path, cmd: &Path) -> Value {
    let out = device(
        state,
        &["verify", cmd.to_str().unwrap(), "--now", &NOW.to_string()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn p256_and_ed25519_token_keys_sign_commands_devices_accept() {
    let Some((hsm, mut b)) = hsm_bridge() else {
        return;
    };
    for (agent, alg) in [("bob", "p256"), ("carol", "ed25519")] {
        let kid = create(&b, &hsm, agent, alg, &[]);
        unlock(&b, agent, "daily");
        let state = device_for(&b, agent);
        let out = b.home().join(format!("{agent}.cose"));
        assert!(sign(&b, agent, &out).status.success());
        let claims = verify(&state, &out);
        assert_eq!(claims["kid"], kid);
        assert_eq!(claims["alg"], alg);
        // Fresh accounts per key: move the log out of the way.
        std::fs::remove_file(b.home().join("acme.log")).unwrap();
        std::fs::remove_file(b.home().join("acme.recovery.age")).unwrap();
    }
    // The keys survive a daemon restart (locked), and sign again.
    b.signal("-TERM");
    b.restart();
    unlock(&b, "bob", "each-task");
    let out = b.home().join("again.cose");
    let r = sign(&b, "bob", &out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // The private key is sensitive and never extractable, as pkcs11-tool sees it.
    let objs = hsm.tool(
        "pkcs11-tool",
        &[
            "--module",
            SOFTHSM_MODULE,
            "--token-label",
            "agent-token",
            "--login",
            "--pin",
            TOKEN_PIN,
            "--list-objects",
            "--type",
            "privkey",
        ],
    );
    let text = String::from_utf8_lossy(&objs.stdout);
    assert_eq!(text.matches("Private Key Object").count(), 2, "{text}");
    assert!(
        text.contains("sensitive") && text.contains("never extractable"),
        "{text}"
    );
}

#[test]
fn exported_public_key_is_what_pkcs11_tool_reads() {
    let Some((hsm, b)) = hsm_bridge() else { return };
    create(&b, &hsm, "bob", "p256", &[]);
    let show: Value =
        serde_json::from_str(&b.ok(&["--json", "keys", "show", "bob"], None)).unwrap();
    let uri = show["uri"].as_str().unwrap();
    let id = uri
        .split("id=")
        .nth(1)
        .unwrap()
        .split(['?', ';'])
        .next()
        .unwrap()
        .replace('%', "");
    let der = b.home().join("pub.der");
    hsm.tool(
        "pkcs11-tool",
        &[
            "--module",
            SOFTHSM_MODULE,
            "--token-label",
            "agent-token",
            "--read-object",
            "--type",
            "pubkey",
            "--id",
            &id,
            "-o",
            der.to_str().unwrap(),
        ],
    );
    let pem = hsm.tool(
        "openssl",
        &[
            "pkey",
            "-pubin",
            "-inform",
            "DER",
            "-in",
            der.to_str().unwrap(),
        ],
    );
    let ours = b.ok(&["keys", "export", "bob", "--format", "pem"], None);
    assert_eq!(String::from_utf8_lossy(&pem.stdout).trim(), ours.trim());
}

#[test]
fn a_key_made_by_pkcs11_tool_opens_and_signs() {
    let Some((hsm, b)) = hsm_bridge() else { return };
    hsm.tool(
        "pkcs11-tool",
        &[
            "--module",
            SOFTHSM_MODULE,
            "--token-label",
            "agent-token",
            "--login",
            "--pin",
            TOKEN_PIN,
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "legacy",
            "--id",
            "01",
        ],
    );
    let kid = create(&b, &hsm, "legacy", "p256", &["--existing"]);
    unlock(&b, "legacy", "daily");
    let state = device_for(&b, "legacy");
    let out = b.home().join("legacy.cose");
    assert!(sign(&b, "legacy", &out).status.success());
    assert_eq!(verify(&state, &out)["kid"], kid);
}

#[test]
fn wrong_pin_is_reported_and_changes_nothing() {
    let Some((hsm, b)) = hsm_bridge() else { return };
    create(&b, &hsm, "bob", "p256", &[]);
    let r = b.cli(&["unlock", "bob", "--secret-stdin"], Some("000000"));
    assert_eq!(
        r.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let status: Value = serde_json::from_str(&b.ok(&["--json", "status"], None)).unwrap();
    assert_eq!(status["keys"][0]["unlocked"], false);
    // SoftHSM2 keeps no retry counter; it flags "count low" after a failure,
    // which a right PIN clears. The token is not locked.
    let listing = token_listing(&b);
    assert_eq!(listing[0]["pin_locked"], false);
    // Past the backoff after a wrong PIN, the right one works.
    b.set_time(NOW + 1);
    unlock(&b, "bob", "each-task");
    assert!(sign(&b, "bob", &b.home().join("ok.cose")).status.success());
}

#[test]
fn keys_list_shows_tokens_and_keys_like_pkcs11_tool() {
    let Some((hsm, b)) = hsm_bridge() else { return };
    let kid = create(&b, &hsm, "bob", "p256", &[]);
    let v = token_listing(&b);
    assert_eq!(v[0]["label"], "agent-token");
    assert_eq!(v[0]["keys"][0]["kid"], kid);
    assert_eq!(v[0]["keys"][0]["label"], "bob");
    assert!(
        v[0]["algorithms"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("p256")),
        "{v}"
    );
}

#[test]
fn a_token_that_disappears_gives_token_absent_and_works_when_back() {
    let Some((hsm, b)) = hsm_bridge() else { return };
    create(&b, &hsm, "bob", "p256", &[]);
    unlock(&b, "bob", "daily");
    let out = b.home().join("c.cose");
    assert!(sign(&b, "bob", &out).status.success());
    // Pull the token: move its folder away.
    let token_dir = std::fs::read_dir(hsm.tokens())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let away = b.home().join("token-away");
    std::fs::rename(&token_dir, &away).unwrap();
    let r = sign(&b, "bob", &out);
    assert_eq!(
        r.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(String::from_utf8_lossy(&r.stderr).contains("not present"));
    // The daemon stayed up.
    b.ok(&["status"], None);
    // Put it back: the next request reopens it (the module rescans at most
    // once a second).
    std::fs::rename(&away, &token_dir).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = sign(&b, "bob", &out);
    assert!(
        r.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&r.stderr),
        b.daemon_log()
    );
}

#[test]
fn eight_concurrent_clients_on_one_token_all_verify() {
    let Some((hsm, b)) = hsm_bridge() else { return };
    create(&b, &hsm, "bob", "p256", &[]);
    unlock(&b, "bob", "daily");
    b.account_log("acme", "bob");
    let log = KeyLog::from_bytes(&std::fs::read(b.home().join("acme.log")).unwrap()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let envs = rt.block_on(async {
        let mut tasks = vec![];
        for _ in 0..8 {
            let http = b.http();
            tasks.push(tokio::spawn(async move {
                let mut conn = http.connect().await.unwrap();
                let mut out = vec![];
                for _ in 0..40 {
                    let body =
                        json!({"key": "bob", "device": "dev-1", "command": "remote-control"});
                    let (status, v) = conn.request("POST", "/v1/sign", Some(&body)).await.unwrap();
                    assert_eq!(status, 200, "{v}");
                    out.push(B64.decode(v["envelope"].as_str().unwrap()).unwrap());
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
    assert_eq!(envs.len(), 320);
    let mut replay = ReplayCache::default();
    for env in &envs {
        Verifier::new(&log, "dev-1")
            .verify(env, None, NOW, &mut replay)
            .unwrap();
    }
}
