//! The loopback listener for web consoles, from the attacker's side and
//! the console's: every gate (Host, Origin, preflight, pairing) with real
//! HTTP requests to a real daemon, and a console's unlock and sign whose
//! command a device verifies. (The headless-Chromium tests of the browser
//! side come with the JavaScript client.)

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use keybridge_tests::*;
use serde_json::{Value, json};
use std::time::Duration;

const NOW: i64 = 1_800_000_000;
const CONSOLE: &str = "https://console.example";
const OTHER: &str = "https://other.example";

/// A daemon with alice's passphrase key and the listener for two origins.
fn daemon() -> (Bridge, u16) {
    Bridge::start_console(NOW, &[CONSOLE, OTHER])
}

fn pair(b: &Bridge, origin: &str) -> (String, String) {
    b.pair(origin)
}

struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One request on a fresh TCP connection, headers as given (no defaults
/// but `host` when `headers` has none).
fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut req = hyper::Request::builder().method(method).uri(path);
        let host = format!("127.0.0.1:{port}");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req = req.header("host", &host);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = tokio::time::timeout(
            Duration::from_secs(30),
            sender.send_request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap()),
        )
        .await
        .unwrap()
        .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    })
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn a_paired_console_gets_cors_answers_and_the_gates_refuse_everyone_else() {
    let (b, port) = daemon();
    let (_, token) = pair(&b, CONSOLE);
    let auth = bearer(&token);

    // The paired console: CORS for its exact origin, never credentials.
    let ok = request(
        port,
        "GET",
        "/v1/status",
        &[("origin", CONSOLE), ("authorization", &auth)],
        "",
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.header("access-control-allow-origin"), Some(CONSOLE));
    assert_eq!(ok.header("vary"), Some("Origin"));
    assert_eq!(ok.header("cache-control"), Some("no-store"));
    assert_eq!(ok.header("access-control-allow-credentials"), None);
    assert!(ok.body.contains("\"keys\""));

    // Preflight: answered for the allowed origin, with the old Private
    // Network Access header when asked.
    let pre = request(
        port,
        "OPTIONS",
        "/v1/sign",
        &[
            ("origin", CONSOLE),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, content-type",
            ),
            ("access-control-request-private-network", "true"),
        ],
        "",
    );
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-origin"), Some(CONSOLE));
    assert_eq!(
        pre.header("access-control-allow-private-network"),
        Some("true")
    );
    assert!(
        pre.header("access-control-allow-headers")
            .unwrap()
            .contains("authorization")
    );

    // (case, headers, status, code, CORS headers?)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, u16, &'a str, bool);
    let cases: Vec<Case> = vec![
        (
            "an unknown origin",
            vec![
                ("origin", "https://evil.example".into()),
                ("authorization", auth.clone()),
            ],
            403,
            "origin_not_allowed",
            false,
        ),
        (
            "no origin (curl)",
            vec![("authorization", auth.clone())],
            403,
            "origin_not_allowed",
            false,
        ),
        (
            "an origin with a path",
            vec![
                ("origin", format!("{CONSOLE}/")),
                ("authorization", auth.clone()),
            ],
            403,
            "origin_not_allowed",
            false,
        ),
        (
            "a rebinding host name",
            vec![
                ("host", format!("evil.example:{port}")),
                ("origin", CONSOLE.into()),
                ("authorization", auth.clone()),
            ],
            403,
            "bad_host",
            false,
        ),
        (
            "another port in Host",
            vec![
                ("host", format!("127.0.0.1:{}", port.wrapping_add(1))),
                ("origin", CONSOLE.into()),
                ("authorization", auth.clone()),
            ],
            403,
            "bad_host",
            false,
        ),
        (
            "no token",
            vec![("origin", CONSOLE.into())],
            401,
            "not_paired",
            true,
        ),
        (
            "a made-up token",
            vec![
                ("origin", CONSOLE.into()),
                (
                    "authorization",
                    "Bearer kbp_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
                ),
            ],
            401,
            "not_paired",
            true,
        ),
        (
            "the token from another allowed origin",
            vec![("origin", OTHER.into()), ("authorization", auth.clone())],
            403,
            "token_other_origin",
            true,
        ),
        (
            "a token not as a bearer",
            vec![("origin", CONSOLE.into()), ("authorization", token.clone())],
            401,
            "not_paired",
            true,
        ),
    ];
    for (case, headers, status, code, cors) in cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let a = request(port, "GET", "/v1/status", &h, "");
        assert_eq!(a.status, status, "{case}: {}", a.body);
        assert_eq!(a.json()["code"], code, "{case}: {}", a.body);
        assert_eq!(
            a.header("access-control-allow-origin").is_some(),
            cors,
            "{case}"
        );
        assert!(!a.body.contains("\"keys\""), "{case}: {}", a.body);
    }

    // Only the signing interface is there: no key creation, no pairing.
    for (method, path) in [
        ("POST", "/v1/keys"),
        ("POST", "/v1/pairings"),
        ("GET", "/v1/pairings"),
        ("POST", "/v1/account/init"),
    ] {
        let a = request(
            port,
            method,
            path,
            &[("origin", CONSOLE), ("authorization", &auth)],
            "{}",
        );
        assert!(
            a.status == 404 || a.status == 405,
            "{method} {path}: {} {}",
            a.status,
            a.body
        );
    }

    // The token: in no log, not on disk.
    assert!(!b.daemon_log().contains(&token));
    let stored = std::fs::read_to_string(b.home().join("state/pairings.json")).unwrap();
    assert!(!stored.contains(&token) && stored.contains(CONSOLE));
    // The Unix socket API is unaffected.
    b.ok(&["status"], None);
}

#[test]
fn a_console_unlocks_and_signs_and_a_revoked_token_is_refused() {
    let (b, port) = daemon();
    let (id, token) = pair(&b, CONSOLE);
    let auth = bearer(&token);
    let headers = [
        ("origin", CONSOLE),
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let unlocked = request(
        port,
        "POST",
        "/v1/keys/alice/unlock",
        &headers,
        &json!({"secret": PASSPHRASE, "remember": "daily"}).to_string(),
    );
    assert_eq!(unlocked.status, 200, "{}", unlocked.body);
    assert!(!unlocked.body.contains(PASSPHRASE));
    let signed = request(
        port,
        "POST",
        "/v1/sign",
        &headers,
        &json!({"key": "alice", "device": "dev-1", "command": "remote-control"}).to_string(),
    );
    assert_eq!(signed.status, 200, "{}", signed.body);
    assert_eq!(signed.header("access-control-allow-origin"), Some(CONSOLE));
    // The device verifies what the console got.
    use base64::Engine as _;
    let env = base64::engine::general_purpose::STANDARD
        .decode(signed.json()["envelope"].as_str().unwrap())
        .unwrap();
    let log = b.account_log("acme", "alice");
    let dev = b.home().join("device");
    trust_device(&dev, &log, "dev-1");
    let cmd = b.home().join("console.cose");
    std::fs::write(&cmd, env).unwrap();
    let v = device(&dev, &["verify", path_str(&cmd), "--now", &NOW.to_string()]);
    assert!(v.status.success(), "{}", output_text(&v));

    // A wrong passphrase: refused, and the secret never comes back.
    let wrong = request(
        port,
        "POST",
        "/v1/keys/alice/unlock",
        &headers,
        &json!({"secret": "not-the-passphrase-0000"}).to_string(),
    );
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(!wrong.body.contains("not-the-passphrase"));

    // Revoked: refused at once, without a restart.
    b.ok(&["pair", "revoke", &id], None);
    let a = request(port, "GET", "/v1/keys", &headers, "");
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.json()["code"], "not_paired");
    let list = b.ok(&["pair", "list"], None);
    assert!(list.contains("no console is paired"), "{list}");
}

#[test]
fn the_listener_binds_to_loopback_only_and_needs_its_origins() {
    for (args, words) in [
        (
            vec!["--http", "0.0.0.0:0", "--allow-origin", CONSOLE],
            "loopback only",
        ),
        (
            vec!["--http", "192.168.1.10:0", "--allow-origin", CONSOLE],
            "loopback only",
        ),
        (vec!["--http", "127.0.0.1:0"], "--allow-origin"),
        (vec!["--allow-origin", CONSOLE], "goes with --http"),
        (
            vec![
                "--http",
                "127.0.0.1:0",
                "--allow-origin",
                "http://console.example",
            ],
            "https",
        ),
        (vec!["--http", "localhost"], "127.0.0.1:PORT"),
    ] {
        let d = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(bin("keybridge"))
            .arg("serve")
            .args(&args)
            .args(["--system-policy", "/nonexistent/policy.toml"])
            .env("KEYBRIDGE_HOME", d.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(
            output_text(&out).contains(words),
            "{args:?}: {}",
            output_text(&out)
        );
    }
}

#[test]
fn the_listener_and_its_origins_can_come_from_config_toml() {
    let mut b = Bridge::start(NOW);
    let config = b.home().join("config/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        format!("http = \"127.0.0.1:0\"\nallow_origins = [\"{CONSOLE}\"]\n"),
    )
    .unwrap();
    b.restart();
    let log = b.daemon_log();
    assert!(log.contains("console listener on loopback"), "{log}");
    assert!(log.contains(CONSOLE), "{log}");
    // A listener on another address in config: refused like --http.
    b.signal("-TERM");
    std::fs::write(
        &config,
        format!("http = \"0.0.0.0:0\"\nallow_origins = [\"{CONSOLE}\"]\n"),
    )
    .unwrap();
    let out = b.serve_command(&[], &[]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        b.daemon_log().contains("loopback only"),
        "{}",
        b.daemon_log()
    );
}
