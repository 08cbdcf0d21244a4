//! Headless Chromium driven over the Chrome DevTools Protocol, for the
//! tests of the JavaScript client and the demo console (clients/js), and
//! the small static HTTP(S) server that serves them.
//!
//! The protocol runs over `--remote-debugging-pipe` (file descriptors 3
//! and 4, JSON messages ended by a NUL byte), not a websocket on
//! `--remote-debugging-port`: no websocket client, no port to find, and no
//! debugging endpoint on loopback that any local process (or a page) could
//! reach while the test runs. `sh` maps the child's piped stdin and stdout
//! onto 3 and 4 (the workspace forbids the `unsafe` a `pre_exec` would
//! need).
//!
//! [`browser_test`] runs a test in a network namespace of its own with
//! only loopback up (`unshare -n`, when the machine allows): the daemon,
//! the static servers and Chromium all live in it, so they share one
//! loopback and nothing reaches a real network.

use crate::in_ci;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// How long one protocol call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const NETNS_ENV: &str = "KEYBRIDGE_TESTS_NETNS";

/// Whether Chromium is there; a loud SKIP when not (outside CI: under CI
/// that is a failure).
pub fn available() -> bool {
    if Path::new(CHROMIUM).exists() {
        return true;
    }
    assert!(
        !in_ci(),
        "{CHROMIUM} missing under CI (run cargo xtask deps)"
    );
    eprintln!("SKIP: {CHROMIUM} missing; run `cargo xtask deps`");
    false
}

/// Runs the browser test `test` (its name, as libtest knows it): skips
/// when Chromium is missing ([`available`]); otherwise runs `body` in a
/// child process of this test binary in a fresh network namespace with
/// only loopback up, when `unshare -n` works here (root, or user
/// namespaces), else right here with a note.
pub fn browser_test(test: &str, body: impl FnOnce()) {
    if std::env::var_os(NETNS_ENV).is_some() {
        body();
        return;
    }
    if !available() {
        return;
    }
    let netns = Command::new("unshare")
        .args(["-n", "ip", "link", "set", "lo", "up"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !netns {
        eprintln!(
            "note: no network namespace here (unshare -n); the browser test runs on the host's network"
        );
        body();
        return;
    }
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(std::env::current_exe().expect("test binary"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(NETNS_ENV, "1")
        .output()
        .expect("unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} failed in its network namespace ({})",
        out.status
    );
}

/// A headless Chromium with a fresh profile.
pub struct Chromium {
    child: Child,
    to: ChildStdin,
    from: mpsc::Receiver<Value>,
    next_id: u64,
    /// Every event so far (console messages, network failures …).
    events: Vec<Value>,
    profile: tempfile::TempDir,
}

/// A tab, attached (its protocol session).
#[derive(Debug, Clone)]
pub struct Page {
    /// The flat-mode session id.
    pub session: String,
    /// The target id.
    pub target: String,
}

impl Chromium {
    /// Starts Chromium with `extra` switches (after the usual headless
    /// ones). Call [`available`] (or [`browser_test`]) first.
    pub fn start(extra: &[&str]) -> Self {
        let profile = tempfile::Builder::new()
            .prefix("keybridge-chromium-")
            .tempdir()
            .unwrap();
        let log = std::fs::File::create(profile.path().join("chromium.log")).unwrap();
        let mut child = Command::new("sh")
            .args([
                "-c",
                "exec \"$0\" \"$@\" 3<&0 4>&1 0</dev/null 1>&2",
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--mute-audio",
                "--hide-scrollbars",
                "--window-size=1000,820",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting chromium");
        let to = child.stdin.take().unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let (tx, from) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                let Ok(v) = serde_json::from_slice::<Value>(&buf) else {
                    continue;
                };
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        let mut c = Chromium {
            child,
            to,
            from,
            next_id: 0,
            events: vec![],
            profile,
        };
        let v = c.call(None, "Browser.getVersion", json!({}));
        let v = v.unwrap_or_else(|e| panic!("chromium does not answer: {e}\n{}", c.log()));
        eprintln!("chromium: {}", v["product"]);
        c
    }

    /// What Chromium wrote on stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.profile.path().join("chromium.log")).unwrap_or_default()
    }

    /// One protocol call (in `session`, or the browser's); its result, or
    /// the protocol error.
    pub fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to
            .write_all(&bytes)
            .and_then(|()| self.to.flush())
            .map_err(|e| format!("{method}: chromium is gone: {e}"))?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self
                .from
                .recv_timeout(left)
                .map_err(|e| format!("{method}: no answer ({e})"))?;
            if m["id"] == json!(id) {
                if let Some(e) = m.get("error") {
                    return Err(format!("{method}: {e}"));
                }
                return Ok(m["result"].clone());
            }
            if m.get("method").is_some() {
                self.events.push(m);
            }
        }
    }

    /// Opens a tab on `url`, with console, log and network events on.
    pub fn open(&mut self, url: &str) -> Page {
        let target = self
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .unwrap()["targetId"]
            .as_str()
            .unwrap()
            .to_owned();
        let session = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .unwrap()["sessionId"]
            .as_str()
            .unwrap()
            .to_owned();
        for domain in ["Runtime", "Log", "Network", "Page"] {
            self.call(Some(&session), &format!("{domain}.enable"), json!({}))
                .unwrap();
        }
        self.call(
            Some(&session),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1000, "height": 820, "deviceScaleFactor": 1, "mobile": false}),
        )
        .unwrap();
        let page = Page { session, target };
        self.navigate(&page, url);
        page
    }

    /// Loads `url` in `page`.
    pub fn navigate(&mut self, page: &Page, url: &str) {
        let r = self
            .call(Some(&page.session), "Page.navigate", json!({"url": url}))
            .unwrap();
        assert!(r.get("errorText").is_none(), "navigating to {url}: {r}");
    }

    /// Evaluates `js` in `page` (a promise is awaited); its value (JSON),
    /// or the exception's text.
    pub fn eval(&mut self, page: &Page, js: &str) -> Result<Value, String> {
        let r = self.call(
            Some(&page.session),
            "Runtime.evaluate",
            json!({"expression": js, "awaitPromise": true, "returnByValue": true}),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(e["exception"]["description"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| e.to_string()));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Waits until `js` is true in `page` (e.g. the page's script ran).
    pub fn wait_for(&mut self, page: &Page, js: &str, limit: Duration) {
        let end = Instant::now() + limit;
        loop {
            if self.eval(page, js).is_ok_and(|v| v == json!(true)) {
                return;
            }
            assert!(
                Instant::now() < end,
                "the page never had {js}\nconsole: {}\nnetwork failures: {:?}",
                self.console_text(),
                self.network_failures()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Grants `origin` Chrome's Local Network Access permission for the
    /// loopback address space (`loopback-network` in Chromium 145+; its
    /// `Browser.grantPermissions` name is `loopbackNetwork`).
    pub fn grant_loopback(&mut self, origin: &str) {
        self.call(
            None,
            "Browser.setPermission",
            json!({"permission": {"name": "loopback-network"}, "setting": "granted", "origin": origin}),
        )
        .unwrap();
    }

    /// A PNG of `page`, written to `path`.
    pub fn screenshot(&mut self, page: &Page, path: &Path) {
        let r = self
            .call(
                Some(&page.session),
                "Page.captureScreenshot",
                json!({"format": "png"}),
            )
            .unwrap();
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }

    /// Reads the events that came in since the last call.
    fn drain(&mut self) {
        while let Ok(m) = self.from.try_recv() {
            if m.get("method").is_some() {
                self.events.push(m);
            }
        }
    }

    /// Every console message and log entry so far, one a line.
    pub fn console_text(&mut self) -> String {
        self.drain();
        let mut out = String::new();
        for e in &self.events {
            match e["method"].as_str() {
                Some("Log.entryAdded") => {
                    let entry = &e["params"]["entry"];
                    out += &format!(
                        "[{} {}] {} {}\n",
                        entry["source"].as_str().unwrap_or(""),
                        entry["level"].as_str().unwrap_or(""),
                        entry["text"].as_str().unwrap_or(""),
                        entry["url"].as_str().unwrap_or("")
                    );
                }
                Some("Runtime.consoleAPICalled") => {
                    let args: Vec<String> = e["params"]["args"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| {
                            a["value"]
                                .as_str()
                                .map(str::to_owned)
                                .unwrap_or_else(|| a["value"].to_string())
                        })
                        .collect();
                    out += &format!("[console {}] {}\n", e["params"]["type"], args.join(" "));
                }
                _ => {}
            }
        }
        out
    }

    /// Every failed request so far: `URL ERROR_TEXT [CORS_ERROR]`.
    pub fn network_failures(&mut self) -> Vec<String> {
        self.drain();
        let mut urls = HashMap::new();
        let mut out = vec![];
        for e in &self.events {
            let p = &e["params"];
            match e["method"].as_str() {
                Some("Network.requestWillBeSent") => {
                    urls.insert(
                        p["requestId"].as_str().unwrap_or("").to_owned(),
                        p["request"]["url"].as_str().unwrap_or("").to_owned(),
                    );
                }
                Some("Network.loadingFailed") => {
                    let id = p["requestId"].as_str().unwrap_or("");
                    out.push(format!(
                        "{} {} {} {}",
                        urls.get(id).map(String::as_str).unwrap_or("?"),
                        p["type"].as_str().unwrap_or(""),
                        p["errorText"].as_str().unwrap_or(""),
                        p["corsErrorStatus"]["corsError"].as_str().unwrap_or("")
                    ));
                }
                _ => {}
            }
        }
        out
    }

    /// Forgets the events so far.
    pub fn clear_events(&mut self) {
        self.drain();
        self.events.clear();
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.call(None, "Browser.close", json!({}));
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A static file server on 127.0.0.1 (HTTP, or HTTPS with a
/// certificate), one thread a connection, `Connection: close`.
pub struct StaticServer {
    port: u16,
    tls: bool,
    stop: Arc<AtomicBool>,
}

impl StaticServer {
    /// Serves the files under `root` on a free port; over TLS with `tls`.
    pub fn start(root: &Path, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let root = root.to_owned();
        let https = tls.is_some();
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(tcp) = conn else { continue };
                let root = root.clone();
                let tls = tls.clone();
                std::thread::spawn(move || {
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                    match tls {
                        None => serve(tcp, &root),
                        Some(cfg) => {
                            let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                                return;
                            };
                            serve(rustls::StreamOwned::new(conn, tcp), &root);
                        }
                    }
                });
            }
        });
        StaticServer {
            port,
            tls: https,
            stop,
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` (or https).
    pub fn origin(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Answers one request on `stream` with a file under `root`.
fn serve<S: Read + Write>(mut stream: S, root: &Path) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) if head.len() < 16 * 1024 => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split(['?', '#']).next().unwrap_or("/");
    let file = (method == "GET" && path.starts_with('/') && !path.contains(".."))
        .then(|| root.join(&path[1..]))
        .filter(|p| p.is_file());
    let (status, kind, body) = match file {
        Some(f) => {
            let kind = match f.extension().and_then(|e| e.to_str()) {
                Some("html") => "text/html; charset=utf-8",
                Some("js") => "text/javascript; charset=utf-8",
                Some("css") => "text/css",
                _ => "application/octet-stream",
            };
            ("200 OK", kind, std::fs::read(f).unwrap_or_default())
        }
        None => ("404 Not Found", "text/plain", b"not found".to_vec()),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(&body);
    let _ = stream.flush();
}

/// A TLS configuration with a self-signed certificate for 127.0.0.1 and
/// localhost, made with the openssl CLI in `dir`.
pub fn self_signed_tls(dir: &Path) -> Arc<rustls::ServerConfig> {
    let (cert, key) = (dir.join("console-cert.pem"), dir.join("console-key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    Arc::new(cfg)
}

/// The JavaScript client's folder (clients/js), which the static server
/// serves: the demo console is `/demo/index.html`.
pub fn clients_js() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js")
}

/// target/test-artifacts (screenshots).
pub fn artifacts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts")
}
