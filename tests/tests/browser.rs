//! The browser side of the loopback listener: the JavaScript client
//! (clients/js/keybridge.js) and its demo console in real headless
//! Chromium, against a real daemon — a paired console unlocks and signs
//! (and a device verifies what the page got), everyone else gets a typed
//! error, and Chrome's Local Network Access is asked for and granted.
//!
//! Each test runs in a network namespace with only loopback up
//! ([`chromium::browser_test`]), with one Chromium.

use keybridge_tests::chromium::{self, Chromium, Page, StaticServer, browser_test};
use keybridge_tests::*;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

const NOW: i64 = 1_800_000_000;

/// A daemon with alice's passphrase key and the listener for `origins`;
/// its listener's URL.
fn daemon(origins: &[&str]) -> (Bridge, String) {
    let (b, port) = Bridge::start_console(NOW, origins);
    (b, format!("http://127.0.0.1:{port}"))
}

/// A pairing for `origin`: (id, token).
fn pair(b: &Bridge, origin: &str) -> (String, String) {
    b.pair(origin)
}

/// The demo console of `origin` set up for `bridge` (and `token`).
fn demo_url(origin: &str, bridge: &str, token: Option<&str>) -> String {
    let mut url =
        format!("{origin}/demo/index.html?bridge={bridge}&key=alice&device=dev-1&remember=daily");
    if let Some(t) = token {
        url += &format!("&token={t}");
    }
    url
}

/// Loads `url` in `page` and waits for the console's script.
fn load(chrome: &mut Chromium, page: &Page, url: &str) {
    chrome.navigate(page, url);
    chrome.wait_for(page, "window.demoReady === true", Duration::from_secs(20));
}

/// Runs a console action (`connect`, `unlock`, `sign`): `{ok, value}` or
/// `{ok: false, code, status, detail, name}`.
fn action(chrome: &mut Chromium, page: &Page, what: &str) -> Value {
    chrome
        .eval(page, &format!("demo.{what}()"))
        .unwrap_or_else(|e| panic!("demo.{what}(): {e}"))
}

/// Like [`action`], and insists it failed with `code`.
fn refused(chrome: &mut Chromium, page: &Page, what: &str, code: &str) -> Value {
    let r = action(chrome, page, what);
    assert_eq!(r["ok"], false, "{what}: {r}");
    assert_eq!(r["code"], code, "{what}: {r}");
    r
}

/// Like [`action`], and insists it succeeded.
fn done(chrome: &mut Chromium, page: &Page, what: &str) -> Value {
    let r = action(chrome, page, what);
    assert_eq!(
        r["ok"],
        true,
        "{what}: {r}\nconsole: {}\nnetwork failures: {:?}",
        chrome.console_text(),
        chrome.network_failures()
    );
    r["value"].clone()
}

/// Types the passphrase into the console and unlocks.
fn unlock(chrome: &mut Chromium, page: &Page, secret: &str) -> Value {
    chrome
        .eval(
            page,
            &format!(
                "document.getElementById('secret').value = {}",
                json!(secret)
            ),
        )
        .unwrap();
    action(chrome, page, "unlock")
}

/// Has a device that trusts the account verify the envelope the page
/// shows; puts the verdict into the page.
fn verify_in_page(chrome: &mut Chromium, page: &Page, dev: &Path, b: &Bridge, name: &str) {
    let env = chrome.eval(page, "demo.envelope").unwrap();
    let shown = chrome
        .eval(page, "document.getElementById('envelope').textContent")
        .unwrap();
    assert_eq!(env, shown);
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(env.as_str().expect("an envelope"))
        .unwrap();
    let file = b.home().join(format!("{name}.cose"));
    std::fs::write(&file, bytes).unwrap();
    let v = device(dev, &["verify", path_str(&file), "--now", &NOW.to_string()]);
    assert!(v.status.success(), "{}", output_text(&v));
    let out: Value =
        serde_json::from_slice(&v.stdout).unwrap_or_else(|e| panic!("{e}: {}", output_text(&v)));
    assert_eq!(out["accepted"], true, "{out}");
    assert_eq!(out["command"], "remote-control", "{out}");
    let verdict = format!(
        "accepted: {} from {}/{} (kid {}…), expires {}",
        out["command"].as_str().unwrap_or("?"),
        out["account"].as_str().unwrap_or("?"),
        out["agent"].as_str().unwrap_or("?"),
        out["kid"].as_str().unwrap_or("?").get(..16).unwrap_or("?"),
        out["expires"]
    );
    chrome
        .eval(
            page,
            &format!(
                "demo.showVerdict({}, true)",
                json!(format!("dev-1 {verdict}"))
            ),
        )
        .unwrap();
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_paired_console_signs_and_everyone_else_gets_a_typed_refusal() {
    browser_test(
        "a_paired_console_signs_and_everyone_else_gets_a_typed_refusal",
        || {
            let console = StaticServer::start(&chromium::clients_js(), None);
            let stranger = StaticServer::start(&chromium::clients_js(), None);
            let origin = console.origin();
            // Another allowed origin on the same server: the console's token
            // is not its.
            let other = format!("http://localhost:{}", console.port());
            let (b, bridge) = daemon(&[&origin, &other]);
            let (id, token) = pair(&b, &origin);
            let mut chrome = Chromium::start(&[]);

            // The paired console (loopback to loopback: no permission needed).
            let page = chrome.open("about:blank");
            load(
                &mut chrome,
                &page,
                &demo_url(&origin, &bridge, Some(&token)),
            );
            // The token left the address bar.
            let href = chrome.eval(&page, "location.href").unwrap();
            assert!(!href.to_string().contains("kbp_"), "{href}");
            let connected = done(&mut chrome, &page, "connect");
            assert_eq!(connected["keys"][0]["label"], "alice", "{connected}");
            assert_eq!(connected["keys"][0]["unlocked"], false, "{connected}");

            // Signing a locked key: typed.
            refused(&mut chrome, &page, "sign", "locked");
            let unlocked = unlock(&mut chrome, &page, PASSPHRASE);
            assert_eq!(unlocked["ok"], true, "{unlocked}");
            let signed = done(&mut chrome, &page, "sign");
            assert!(signed["envelope"].as_str().is_some_and(|e| e.len() > 100));

            // The device verifies what the page got.
            let log = b.account_log("acme", "alice");
            let dev = b.home().join("device");
            trust_device(&dev, &log, "dev-1");
            verify_in_page(&mut chrome, &page, &dev, &b, "http-console");
            // A batch from the page: the stream read as it comes
            // (`signBatch`), every envelope for its device, one signature.
            b.ok(
                &["unlock", "alice", "--remember", "daily", "--secret-stdin"],
                Some(PASSPHRASE),
            );
            let batch = chrome
                .eval(
                    &page,
                    &format!(
                        r#"(async () => {{
                          const {{ KeybridgeClient }} = await import("../keybridge.js");
                          const c = new KeybridgeClient({{ url: {}, token: {} }});
                          const ids = Array.from({{ length: 500 }}, (_, i) => `web-${{i}}`);
                          const got = {{}};
                          const t = await c.signBatch({{ key: "alice", command: "create-alert" }}, ids,
                            (d, e) => {{ got[d] = e; }});
                          let refused = null;
                          try {{
                            await c.signBatch({{ key: "alice", command: "create-alert" }}, ["a", "a"]);
                          }} catch (e) {{ refused = {{ code: e.code, detail: e.detail }}; }}
                          return {{ trailer: t, n: Object.keys(got).length, env: got["web-7"], refused }};
                        }})()"#,
                        json!(bridge),
                        json!(token)
                    ),
                )
                .unwrap();
            assert_eq!(batch["n"], 500, "{batch}");
            assert_eq!(batch["trailer"]["complete"], true, "{batch}");
            assert_eq!(batch["trailer"]["size"], 500, "{batch}");
            assert_eq!(batch["refused"]["code"], "bad_request", "{batch}");
            assert!(
                batch["refused"]["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("lines 2, 3")),
                "{batch}"
            );
            let web7 = b.home().join("device-web-7");
            trust_device(&web7, &log, "web-7");
            use base64::Engine as _;
            let file = b.home().join("web-7.cose");
            std::fs::write(
                &file,
                base64::engine::general_purpose::STANDARD
                    .decode(batch["env"].as_str().unwrap())
                    .unwrap(),
            )
            .unwrap();
            let v = device(
                &web7,
                &["verify", path_str(&file), "--now", &NOW.to_string()],
            );
            assert!(v.status.success(), "{}", output_text(&v));
            let shot = chromium::artifacts().join("browser-demo-console.png");
            chrome.screenshot(&page, &shot);
            eprintln!("screenshot: {}", shot.display());
            // The passphrase is nowhere in the page.
            let html = chrome
                .eval(
                    &page,
                    "document.documentElement.outerHTML + [...document.querySelectorAll('input')].map(i => i.value).join(' ')",
                )
                .unwrap();
            assert!(!html.to_string().contains(PASSPHRASE));
            assert!(!b.daemon_log().contains(PASSPHRASE));
            assert!(!b.daemon_log().contains(&token));

            // No token.
            load(&mut chrome, &page, &demo_url(&origin, &bridge, None));
            let r = refused(&mut chrome, &page, "connect", "origin_not_paired");
            assert_eq!(r["status"], 401, "{r}");
            assert_eq!(r["name"], "OriginNotPairedError", "{r}");

            // The console's token from another (allowed) origin.
            load(&mut chrome, &page, &demo_url(&other, &bridge, Some(&token)));
            let r = refused(&mut chrome, &page, "connect", "token_other_origin");
            assert_eq!(r["status"], 403, "{r}");

            // An origin the daemon does not allow: no CORS headers, so only
            // the client's probe tells it from a daemon not running.
            load(
                &mut chrome,
                &page,
                &demo_url(&stranger.origin(), &bridge, Some(&token)),
            );
            let r = refused(&mut chrome, &page, "connect", "origin_not_allowed");
            assert_eq!(r["name"], "OriginNotAllowedError", "{r}");
            assert!(
                b.daemon_log()
                    .contains("refused a request from an origin that is not allowed"),
                "{}",
                b.daemon_log()
            );

            // Nothing listening.
            let nowhere = format!("http://127.0.0.1:{}", closed_port());
            load(
                &mut chrome,
                &page,
                &demo_url(&origin, &nowhere, Some(&token)),
            );
            let r = refused(&mut chrome, &page, "connect", "bridge_not_running");
            assert_eq!(r["name"], "BridgeNotRunningError", "{r}");

            // Revoked: refused at once.
            load(
                &mut chrome,
                &page,
                &demo_url(&origin, &bridge, Some(&token)),
            );
            done(&mut chrome, &page, "connect");
            b.ok(&["pair", "revoke", &id], None);
            refused(&mut chrome, &page, "connect", "origin_not_paired");
            refused(&mut chrome, &page, "sign", "origin_not_paired");

            // The Unix socket API is unaffected.
            b.ok(&["status"], None);
            let r = b.sign_for("alice", "dev-1");
            assert!(r.status.success(), "{}", output_text(&r));

            // A wrong passphrase (paired again): typed, and never echoed.
            // Last: the daemon's backoff after it does not end on the
            // test's frozen clock.
            let (_, token) = pair(&b, &origin);
            load(
                &mut chrome,
                &page,
                &demo_url(&origin, &bridge, Some(&token)),
            );
            let wrong = unlock(&mut chrome, &page, "not-the-passphrase-0000");
            assert_eq!(wrong["ok"], false, "{wrong}");
            assert_eq!(wrong["status"], 401, "{wrong}");
            assert_eq!(wrong["name"], "UnlockRefusedError", "{wrong}");
            assert!(!wrong.to_string().contains("not-the-passphrase"), "{wrong}");
            let text = chrome.eval(&page, "document.body.innerText").unwrap();
            assert!(!text.to_string().contains("not-the-passphrase"), "{text}");
        },
    );
}

#[test]
fn local_network_access_is_refused_until_granted_over_http_and_https() {
    browser_test(
        "local_network_access_is_refused_until_granted_over_http_and_https",
        || {
            let console = StaticServer::start(&chromium::clients_js(), None);
            let certs = tempfile::tempdir().unwrap();
            let secure = StaticServer::start(
                &chromium::clients_js(),
                Some(chromium::self_signed_tls(certs.path())),
            );
            let (http_origin, https_origin) = (console.origin(), secure.origin());
            let (b, bridge) = daemon(&[&http_origin, &https_origin]);
            let (_, http_token) = pair(&b, &http_origin);
            let (_, https_token) = pair(&b, &https_origin);
            // Both consoles count as public web sites: the bridge on
            // loopback is then a more private address space, which Local
            // Network Access guards.
            let overrides = format!(
                "--ip-address-space-overrides=127.0.0.1:{}=public,127.0.0.1:{}=public",
                console.port(),
                secure.port()
            );
            let mut chrome = Chromium::start(&[&overrides, "--ignore-certificate-errors"]);

            let page = chrome.open("about:blank");
            load(
                &mut chrome,
                &page,
                &demo_url(&http_origin, &bridge, Some(&http_token)),
            );
            chrome.clear_events();
            let before = b.daemon_log().len();
            let r = refused(
                &mut chrome,
                &page,
                "connect",
                "local_network_permission_denied",
            );
            assert_eq!(r["name"], "LocalNetworkPermissionDeniedError", "{r}");
            let r = unlock(&mut chrome, &page, PASSPHRASE);
            assert_eq!(r["code"], "local_network_permission_denied", "{r}");
            let failures = chrome.network_failures();
            assert!(
                failures
                    .iter()
                    .any(|f| f.contains("ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS")),
                "{failures:?}"
            );
            let console_text = chrome.console_text();
            assert!(
                console_text.contains("`loopback` address space"),
                "{console_text}"
            );
            // Nothing reached the daemon: no new log line, the key still
            // locked.
            let after = b.daemon_log();
            assert_eq!(after.len(), before, "{}", &after[before..]);
            let keys: Value =
                serde_json::from_str(&b.ok(&["--json", "keys", "list"], None)).unwrap();
            assert!(!keys.to_string().contains("\"unlocked\":true"), "{keys}");

            // Granted: it signs.
            chrome.grant_loopback(&http_origin);
            done(&mut chrome, &page, "connect");
            let r = unlock(&mut chrome, &page, PASSPHRASE);
            assert_eq!(r["ok"], true, "{r}");
            done(&mut chrome, &page, "sign");
            let log = b.account_log("acme", "alice");
            let dev = b.home().join("device");
            trust_device(&dev, &log, "dev-1");
            verify_in_page(&mut chrome, &page, &dev, &b, "lna-http");

            // An HTTPS console calling the plain-HTTP loopback listener:
            // refused until granted too, then it signs.
            load(
                &mut chrome,
                &page,
                &demo_url(&https_origin, &bridge, Some(&https_token)),
            );
            refused(
                &mut chrome,
                &page,
                "connect",
                "local_network_permission_denied",
            );
            chrome.grant_loopback(&https_origin);
            done(&mut chrome, &page, "connect");
            done(&mut chrome, &page, "sign");
            verify_in_page(&mut chrome, &page, &dev, &b, "lna-https");
            let shot = chromium::artifacts().join("browser-demo-console-https.png");
            chrome.screenshot(&page, &shot);
            eprintln!("screenshot: {}", shot.display());
        },
    );
}
