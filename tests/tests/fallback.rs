//! Signing as an agent with the best key at hand (`sign --agent`): a real
//! SoftHSM2 token key and a passphrase key of one agent, the real daemon
//! and CLI, and the real `keybridge-device` checking what fell back.

use keybridge_tests::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Output;

const NOW: i64 = 1_800_000_000;
const TOKEN: &str = "fallback-token";

/// A daemon (system policy `policy`) that sees a SoftHSM2 store with one
/// token, and an agent `alice` of `acme` with a key on that token
/// (`alice-tok`) and a passphrase key (`alice-pass`).
struct Agent {
    b: Bridge,
    hsm: SoftHsm,
    token_dir: PathBuf,
    tok: String,
    pass: String,
}

impl Agent {
    fn new(policy: Option<&str>) -> Option<Agent> {
        let hsm = SoftHsm::new()?;
        let token = hsm.init_token(TOKEN);
        let conf = hsm.conf();
        let b = Bridge::start_with_env(NOW, policy, &[("SOFTHSM2_CONF", &conf)]);
        let uri = hsm.uri(TOKEN, "alice-tok");
        let tok = create(&b, "pkcs11", "alice-tok", &["--uri", &uri], TOKEN_PIN);
        let pass = create(&b, "passphrase", "alice-pass", &[], PASSPHRASE);
        Some(Agent {
            b,
            hsm,
            token_dir: token.dir,
            tok,
            pass,
        })
    }

    fn away(&self) -> PathBuf {
        self.hsm.file("token-away")
    }

    /// Pulls the token out: its folder moves away.
    fn pull_token(&self) {
        std::fs::rename(&self.token_dir, self.away()).unwrap();
    }

    /// Puts it back; the module looks for tokens again at most once a
    /// second, so the next look must come after that.
    fn plug_token(&self) {
        std::fs::rename(self.away(), &self.token_dir).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }

    fn unlock(&self, key: &str, mode: &str) {
        let secret = if key == "alice-tok" {
            TOKEN_PIN
        } else {
            PASSPHRASE
        };
        self.b.ok(
            &["unlock", key, "--remember", mode, "--secret-stdin"],
            Some(secret),
        );
    }

    /// `keybridge sign --agent alice` of a `cmd` for dev-1 into `out`.
    fn sign(&self, cmd: &str, out: &Path, extra: &[&str]) -> Output {
        let out = out.to_str().unwrap();
        let mut args = vec![
            "sign",
            "--agent",
            "alice",
            "--device",
            "dev-1",
            "--command",
            cmd,
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        self.b.cli(&args, None)
    }

    fn unlocked(&self, key: &str) -> bool {
        let v: Value =
            serde_json::from_str(&self.b.ok(&["--json", "keys", "show", key], None)).unwrap();
        v["unlocked"].as_bool().unwrap()
    }

    /// The signatures' audit lines (key-log events left out).
    fn audit(&self) -> Vec<Value> {
        let v: Value = serde_json::from_str(&self.b.ok(&["--json", "audit"], None)).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter(|e| !e["cmd"].as_str().unwrap().starts_with("key-log:"))
            .cloned()
            .collect()
    }
}

/// `keys create` of a key of agent `alice` in `acme`; returns its kid.
fn create(b: &Bridge, backend: &str, label: &str, extra: &[&str], secret: &str) -> String {
    let mut args = vec![
        "--json",
        "keys",
        "create",
        "--backend",
        backend,
        "--account",
        "acme",
        "--agent",
        "alice",
        "--label",
        label,
        "--secret-stdin",
    ];
    args.extend_from_slice(extra);
    let v: Value = serde_json::from_str(&b.ok(&args, Some(secret))).unwrap();
    v["kid"].as_str().unwrap().to_owned()
}

use keybridge_tests::output_text as text;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `POST /v1/sign` with `body`: status and answer.
fn api_sign(b: &Bridge, body: &Value) -> (u16, Value) {
    rt().block_on(async {
        let mut c = b.http().connect().await.unwrap();
        c.request("POST", "/v1/sign", Some(body)).await.unwrap()
    })
}

#[test]
fn the_token_key_signs_while_present_and_the_passphrase_key_when_the_token_is_gone() {
    let Some(a) = Agent::new(None) else { return };
    let out = a.b.home().join("c.cose");
    // The account's log: the passphrase key is its first key (devices
    // check what fell back against it). It stays unlocked (daily).
    a.unlock("alice-pass", "daily");
    let log = a.b.account_log("acme", "alice-pass");

    // The token is there, its key locked: `locked`, naming it, never a
    // silent fall to the unlocked passphrase key.
    let r = a.sign("create-alert", &out, &[]);
    assert_eq!(r.status.code(), Some(4), "{}", text(&r));
    assert!(
        text(&r).contains("alice-tok") && text(&r).contains(&a.tok[..12]),
        "{}",
        text(&r)
    );
    assert!(!out.exists(), "nothing was signed");
    assert!(a.audit().is_empty());
    let (status, v) = api_sign(
        &a.b,
        &json!({"agent": "alice", "device": "dev-1", "command": "create-alert"}),
    );
    assert_eq!((status, v["code"].as_str()), (423, Some("locked")), "{v}");
    assert_eq!(v["kid"], a.tok.as_str());

    // Unlocked (one signature): the token key signs, and spends its unlock.
    a.unlock("alice-tok", "each-task");
    let r = a.sign("create-alert", &out, &["--json"]);
    assert!(r.status.success(), "{}\n{}", text(&r), a.b.daemon_log());
    let v: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["kid"], a.tok.as_str());
    assert_eq!(v["backend"], "pkcs11");
    assert_eq!(v["label"], "alice-tok");
    assert_eq!(v["fallback"], false);
    assert!(v.get("skipped").is_none(), "{v}");
    assert!(!a.unlocked("alice-tok"));
    assert!(
        a.unlocked("alice-pass"),
        "the key that did not sign kept its unlock"
    );
    let audit = a.audit();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["kid"], a.tok.as_str());
    assert_eq!(audit[0]["backend"], "pkcs11");
    assert!(audit[0].get("fallback").is_none(), "{}", audit[0]);

    // Unlocked again, then the token goes: the passphrase key signs, the
    // answer and the audit line say so, and the token key's one-signature
    // unlock is not spent by a token that is not there.
    a.unlock("alice-tok", "each-task");
    a.pull_token();
    let r = a.sign("create-alert", &out, &[]);
    assert!(r.status.success(), "{}\n{}", text(&r), a.b.daemon_log());
    let line = String::from_utf8_lossy(&r.stdout);
    assert!(
        line.contains("with the passphrase key \"alice-pass\"")
            && line.contains("the pkcs11 key \"alice-tok\"")
            && line.contains("is not present"),
        "{line}"
    );
    assert!(
        a.unlocked("alice-tok"),
        "only the key that signs uses its unlock"
    );
    let audit = a.audit();
    let last = audit.last().unwrap();
    assert_eq!(last["kid"], a.pass.as_str());
    assert_eq!(last["backend"], "passphrase");
    assert_eq!(last["fallback"], true);
    assert_eq!(last["skipped"], json!([a.tok]));
    assert_eq!(last["cmd"], "create-alert");
    assert_eq!(last["audience"], "dev-1");

    // What fell back is an ordinary command: a device verifies it.
    let state = a.b.home().join("device");
    trust_device(&state, &log, "dev-1");
    let v = device(
        &state,
        &["verify", out.to_str().unwrap(), "--now", &NOW.to_string()],
    );
    assert!(v.status.success(), "{}", text(&v));
    let claims: Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(
        (claims["kid"].as_str(), claims["agent"].as_str()),
        (Some(a.pass.as_str()), Some("alice")),
        "{claims}"
    );

    // The API's answer names the key that signed and the one passed over.
    let (status, v) = api_sign(
        &a.b,
        &json!({"agent": "alice", "device": "dev-1", "command": "create-alert"}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["kid"], a.pass.as_str());
    assert_eq!(v["backend"], "passphrase");
    assert_eq!(v["label"], "alice-pass");
    assert_eq!(v["fallback"], true);
    assert_eq!(v["skipped"][0]["kid"], a.tok.as_str());
    assert_eq!(v["skipped"][0]["backend"], "pkcs11");
    assert!(v["skipped"][0]["why"].is_string(), "{v}");
    // A batch answer says the same.
    let (status, v) = api_sign(
        &a.b,
        &json!({"agent": "alice", "devices": ["dev-1", "dev-2"], "command": "create-alert"}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["kid"], a.pass.as_str());
    assert_eq!(v["fallback"], true);
    assert_eq!(v["skipped"][0]["kid"], a.tok.as_str());
    assert_eq!(v["envelopes"].as_object().unwrap().len(), 2);
    assert_eq!(a.audit().last().unwrap()["batch_size"], 2);

    // Locked while the token is away: absent is absent, locked or not.
    a.b.ok(&["lock", "alice-tok"], None);
    let r = a.sign("create-alert", &out, &["--json"]);
    assert!(r.status.success(), "{}", text(&r));
    let v: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(
        (v["kid"].as_str(), v["fallback"].as_bool()),
        (Some(a.pass.as_str()), Some(true))
    );

    // Back, still locked: `locked` again, nothing signed.
    a.plug_token();
    let before = a.audit().len();
    let r = a.sign("create-alert", &out, &[]);
    assert_eq!(r.status.code(), Some(4), "{}", text(&r));
    assert!(text(&r).contains("alice-tok"), "{}", text(&r));
    assert_eq!(a.audit().len(), before);
    a.unlock("alice-tok", "daily");
    let r = a.sign("create-alert", &out, &["--json"]);
    assert!(r.status.success(), "{}", text(&r));
    let v: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(
        (v["kid"].as_str(), v["fallback"].as_bool()),
        (Some(a.tok.as_str()), Some(false))
    );
}

#[test]
fn a_policy_that_forbids_fallback_for_a_command_kind_refuses_it() {
    let Some(a) = Agent::new(Some("no_fallback = [\"deploy-unattended\"]\n")) else {
        return;
    };
    let out = a.b.home().join("d.cose");
    a.unlock("alice-pass", "daily");
    a.unlock("alice-tok", "daily");
    // The first key is there: no fallback, nothing to refuse.
    let r = a.sign("deploy-unattended", &out, &["--json"]);
    assert!(r.status.success(), "{}", text(&r));
    let v: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["kid"], a.tok.as_str());

    a.pull_token();
    std::fs::remove_file(&out).unwrap();
    let before = a.audit().len();
    let r = a.sign("deploy-unattended", &out, &[]);
    assert_eq!(r.status.code(), Some(9), "{}", text(&r));
    let said = text(&r);
    assert!(
        said.contains("alice-tok")
            && said.contains("no_fallback")
            && said.contains("deploy-unattended"),
        "{said}"
    );
    assert!(!out.exists(), "nothing was signed");
    assert_eq!(a.audit().len(), before);
    // Other kinds still fall back.
    let r = a.sign("create-alert", &out, &["--json"]);
    assert!(r.status.success(), "{}", text(&r));
    let v: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(
        (v["kid"].as_str(), v["fallback"].as_bool()),
        (Some(a.pass.as_str()), Some(true))
    );
    // Naming the passphrase key is not a fallback: the policy governs the
    // choice by agent only.
    let r = a.b.cli(
        &[
            "sign",
            "--key",
            "alice-pass",
            "--device",
            "dev-1",
            "--command",
            "deploy-unattended",
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert!(r.status.success(), "{}", text(&r));
}

#[test]
fn the_users_fallback_order_chooses_and_every_key_gone_is_token_absent() {
    let Some(mut a) = Agent::new(None) else {
        return;
    };
    let out = a.b.home().join("o.cose");
    // The user prefers the passphrase key: it signs first, no fallback.
    let config = a.b.home().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.toml"),
        "fallback_order = [\"passphrase\", \"pkcs11\"]\n",
    )
    .unwrap();
    a.b.restart();
    a.unlock("alice-pass", "daily");
    a.unlock("alice-tok", "daily");
    let r = a.sign("create-alert", &out, &["--json"]);
    assert!(r.status.success(), "{}", text(&r));
    let v: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(
        (v["kid"].as_str(), v["fallback"].as_bool()),
        (Some(a.pass.as_str()), Some(false))
    );

    // Only the token's backend: with the token gone, nothing is at hand.
    std::fs::write(
        config.join("config.toml"),
        "fallback_order = [\"pkcs11\"]\n",
    )
    .unwrap();
    a.b.restart();
    a.unlock("alice-tok", "daily");
    a.pull_token();
    let r = a.sign("create-alert", &out, &[]);
    assert_eq!(r.status.code(), Some(7), "{}", text(&r));
    assert!(text(&r).contains("alice-tok"), "{}", text(&r));
}

#[test]
fn requests_by_agent_are_checked() {
    let b = Bridge::start(NOW);
    b.passphrase_key("acme", "sam");
    b.ok(
        &[
            "keys",
            "create",
            "--backend",
            "passphrase",
            "--account",
            "other",
            "--agent",
            "sam",
            "--label",
            "sam-other",
            "--secret-stdin",
        ],
        Some(PASSPHRASE),
    );
    b.ok(
        &["unlock", "sam", "--remember", "daily", "--secret-stdin"],
        Some(PASSPHRASE),
    );
    let out = b.home().join("s.cose");
    let sign = |extra: &[&str]| {
        let mut args = vec![
            "sign",
            "--device",
            "dev-1",
            "--command",
            "create-alert",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        b.cli(&args, None)
    };
    // An agent nobody has: unknown_key.
    let r = sign(&["--agent", "nobody"]);
    assert_eq!(r.status.code(), Some(10), "{}", text(&r));
    // An agent in two accounts: say which; then it signs.
    let r = sign(&["--agent", "sam"]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(
        text(&r).contains("\"acme\"")
            && text(&r).contains("\"other\"")
            && text(&r).contains("--account"),
        "{}",
        text(&r)
    );
    let r = sign(&["--agent", "sam", "--account", "acme", "--json"]);
    assert!(r.status.success(), "{}", text(&r));
    let v: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(
        (v["label"].as_str(), v["fallback"].as_bool()),
        (Some("sam"), Some(false))
    );
    let r = sign(&["--agent", "sam", "--account", "nowhere"]);
    assert_eq!(r.status.code(), Some(10), "{}", text(&r));
    // The CLI takes one of --key and --agent.
    assert!(!sign(&["--agent", "sam", "--key", "sam"]).status.success());
    assert!(!sign(&[]).status.success());

    // The API: exactly one of key and agent, account only with agent,
    // names bounded.
    let long = "a".repeat(5000);
    for body in [
        json!({"key": "sam", "agent": "sam", "device": "d", "command": "create-alert"}),
        json!({"device": "d", "command": "create-alert"}),
        json!({"key": "sam", "account": "acme", "device": "d", "command": "create-alert"}),
        json!({"agent": "sam", "device": "d", "command": "create-alert"}),
        json!({"agent": "", "device": "d", "command": "create-alert"}),
        json!({"agent": long, "device": "d", "command": "create-alert"}),
        json!({"agent": "sam", "account": "", "device": "d", "command": "create-alert"}),
        json!({"agent": "sam", "account": "acme", "device": "d", "command": "format-disk"}),
    ] {
        let (status, v) = api_sign(&b, &body);
        assert_eq!(
            (status, v["code"].as_str()),
            (400, Some("bad_request")),
            "{body}: {v}"
        );
        assert!(
            !v["detail"].as_str().unwrap().contains(&long),
            "bounded echo: {v}"
        );
    }
    let (status, v) = api_sign(
        &b,
        &json!({"agent": "nobody", "device": "d", "command": "create-alert"}),
    );
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("unknown_key")),
        "{v}"
    );
    // A request by key answers as before, and says which key signed.
    let (status, v) = api_sign(
        &b,
        &json!({"key": "sam", "device": "d", "command": "create-alert"}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["backend"].as_str(), v["fallback"].as_bool()),
        (Some("passphrase"), Some(false))
    );
}
