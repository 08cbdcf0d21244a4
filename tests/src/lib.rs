//! Fixtures for keybridge's end-to-end tests: the real `keybridge` daemon on
//! a real Unix socket in a temp folder, the real `keybridge-device`, and a
//! small HTTP client for driving the API concurrently.

pub mod activation;
pub mod bench;
pub mod chromium;
pub mod swtpm;
pub mod tpm2_pkcs11;
pub mod vyubikey;

use serde_json::Value;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The folder holding the workspace's built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // The test executable lives in target/<profile>/deps/.
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_owned();
        let profile_release = dir.ends_with("release");
        if !dir.join("keybridge").exists() || !dir.join("keybridge-device").exists() {
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args([
                "build",
                "--quiet",
                "-p",
                "keybridge",
                "-p",
                "keybridge-device",
                "--features",
                TEST_HOOKS,
            ]);
            if profile_release {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("running cargo build");
            assert!(status.success(), "building the binaries failed");
        }
        dir
    })
    .clone()
}

/// The cargo features the end-to-end tests need in the binaries: hidden
/// test hooks (a clock file, a system policy path, `verify --now`) that
/// shipped builds do not have. `cargo xtask test` builds with them.
pub const TEST_HOOKS: &str = "keybridge/test-hooks,keybridge-device/test-hooks";

/// Path of a workspace binary.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// A test passphrase, long enough for the passphrase backend.
pub const PASSPHRASE: &str = "correct horse battery staple";

/// A running daemon in its own `KEYBRIDGE_HOME`.
pub struct Bridge {
    home: tempfile::TempDir,
    child: Option<Child>,
    /// The system policy file the daemon reads instead of
    /// /etc/keybridge/policy.toml (absent unless a test writes it).
    system_policy: PathBuf,
    clock: PathBuf,
    env: Vec<(String, PathBuf)>,
}

impl Bridge {
    /// Starts a daemon with no policy file and the clock at `now`.
    pub fn start(now: i64) -> Self {
        Self::start_with_policy(now, None)
    }

    /// Starts a daemon whose system policy file says `policy` (the
    /// machine's /etc/keybridge/policy.toml is never read by tests).
    pub fn start_with_policy(now: i64, policy: Option<&str>) -> Self {
        Self::start_with_env(now, policy, &[])
    }

    /// Starts a daemon with extra environment (e.g. `SOFTHSM2_CONF`), which
    /// the CLI runs also get.
    pub fn start_with_env(now: i64, policy: Option<&str>, env: &[(&str, &Path)]) -> Self {
        let mut b = Self::unstarted(now, policy, env);
        b.restart();
        b
    }

    /// A home, a clock and a policy for a daemon that is not started: the
    /// CLI runs against `socket()` whoever serves it (a socket-activation
    /// test's launcher, [`activation::Activated`]).
    pub fn unstarted(now: i64, policy: Option<&str>, env: &[(&str, &Path)]) -> Self {
        let home = tempfile::tempdir().expect("temp dir");
        let policy_path = home.path().join("system-policy.toml");
        if let Some(p) = policy {
            std::fs::write(&policy_path, p).unwrap();
        }
        let clock = home.path().join("clock");
        std::fs::write(&clock, now.to_string()).unwrap();
        Bridge {
            home,
            child: None,
            system_policy: policy_path,
            clock,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_path_buf()))
                .collect(),
        }
    }

    /// The folder everything lives in.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// The daemon's socket.
    pub fn socket(&self) -> PathBuf {
        self.home().join("run/bridge.sock")
    }

    /// Starts the daemon (again) and waits until it answers.
    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    /// The system policy file the daemon reads.
    pub fn system_policy(&self) -> &Path {
        &self.system_policy
    }

    /// Starts the daemon (again) with extra `serve` arguments and waits
    /// until it answers. A daemon still running is stopped first (TERM):
    /// otherwise the readiness check would talk to the old one.
    pub fn restart_with(&mut self, extra: &[&str]) {
        if self
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
        {
            self.signal("-TERM");
        }
        let child = self
            .serve_command(&[], extra)
            .spawn()
            .expect("starting keybridge serve");
        self.child = Some(child);
        let up = poll_until(Duration::from_secs(20), || {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited with {status}: {}", self.daemon_log());
            }
            self.cli(&["status"], None).status.success()
        });
        assert!(up, "daemon did not come up: {}", self.daemon_log());
    }

    /// `program… keybridge serve …extra` with this home, clock, system
    /// policy and environment, its stderr to `daemon.log` (created afresh).
    /// `program` runs the daemon (a socket-activation launcher), or is
    /// empty.
    pub fn serve_command(&self, program: &[&str], extra: &[&str]) -> Command {
        let log = std::fs::File::create(self.home().join("daemon.log")).unwrap();
        let daemon = bin("keybridge");
        let mut cmd = match program.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&daemon);
                c
            }
            None => Command::new(&daemon),
        };
        cmd.args(["serve", "--system-policy"])
            .arg(&self.system_policy)
            .args(extra)
            .arg("--clock-file")
            .arg(&self.clock)
            .env("KEYBRIDGE_HOME", self.home())
            .env("KEYBRIDGE_LOG", "info")
            // Plain text: tests look for `field=value` in the log.
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        cmd
    }

    /// A daemon with alice's passphrase key (account acme) and the
    /// loopback listener for web consoles `origins` on a free port, which
    /// it returns (from the daemon's log).
    pub fn start_console(now: i64, origins: &[&str]) -> (Self, u16) {
        let mut b = Bridge::start(now);
        b.passphrase_key("acme", "alice");
        let mut args = vec!["--http", "127.0.0.1:0"];
        for o in origins {
            args.extend(["--allow-origin", o]);
        }
        b.restart_with(&args);
        let log = b.daemon_log();
        let port = log
            .lines()
            .find(|l| l.contains("console listener on loopback"))
            .and_then(|l| l.split("addr=127.0.0.1:").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in the log: {log}"));
        (b, port)
    }

    /// `keybridge pair --origin origin`: (id, token).
    pub fn pair(&self, origin: &str) -> (String, String) {
        let v: Value =
            serde_json::from_str(&self.ok(&["--json", "pair", "--origin", origin], None)).unwrap();
        let field = |k: &str| v[k].as_str().expect("a pairing field").to_owned();
        (field("id"), field("token"))
    }

    /// What the daemon logged.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.home().join("daemon.log")).unwrap_or_default()
    }

    /// The daemon process.
    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("daemon running")
    }

    /// Sends a signal to the daemon and waits for it to exit.
    pub fn signal(&mut self, sig: &str) -> std::process::ExitStatus {
        let pid = self.child().id().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(ok.success());
        let status = self.child().wait().unwrap();
        self.child = None;
        status
    }

    /// Sets the daemon's clocks (wall and boot) to `now`.
    pub fn set_time(&self, now: i64) {
        std::fs::write(&self.clock, now.to_string()).unwrap();
    }

    /// Sets the wall clock and the boot clock apart.
    pub fn set_clocks(&self, wall: i64, boot: i64) {
        std::fs::write(&self.clock, format!("{wall} {boot}")).unwrap();
    }

    /// Runs the `keybridge` CLI against this daemon, with `stdin`.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        run_with_stdin(
            Command::new(bin("keybridge"))
                .env("KEYBRIDGE_HOME", self.home())
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .args(args),
            stdin,
        )
    }

    /// Runs the CLI and insists it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.cli(args, stdin);
        assert!(
            out.status.success(),
            "keybridge {args:?} failed ({}): {}\n--- daemon ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.daemon_log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `keybridge sign` of a remote-control command for `device` with
    /// `key`; the envelope goes to `<home>/<key>.cose`.
    pub fn sign_for(&self, key: &str, device: &str) -> Output {
        let out = self.home().join(format!("{key}.cose"));
        self.cli(
            &[
                "sign",
                "--key",
                key,
                "--device",
                device,
                "--command",
                "remote-control",
                "--out",
                out.to_str().expect("a UTF-8 path"),
            ],
            None,
        )
    }

    /// Signs for `dev-1` with `key` and has a device that trusts `key`'s
    /// account (its genesis signed by `key`, account `acme`) verify it at
    /// `now`.
    pub fn sign_and_verify(&self, key: &str, now: i64) {
        let r = self.sign_for(key, "dev-1");
        assert!(
            r.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&r.stderr),
            self.daemon_log()
        );
        let state = self.home().join(format!("device-{key}"));
        if !state.exists() {
            let log = self.account_log("acme", key);
            trust_device(&state, &log, "dev-1");
        }
        let envelope = self.home().join(format!("{key}.cose"));
        let v = device(
            &state,
            &[
                "verify",
                envelope.to_str().expect("a UTF-8 path"),
                "--now",
                &now.to_string(),
            ],
        );
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    }

    /// Creates a passphrase key for `account`/`agent` labelled `agent`;
    /// returns its kid.
    pub fn passphrase_key(&self, account: &str, agent: &str) -> String {
        let out = self.create_passphrase(account, agent, PASSPHRASE);
        assert!(
            out.status.success(),
            "keys create failed: {}\n--- daemon ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.daemon_log()
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["kid"].as_str().unwrap().to_owned()
    }

    /// `keybridge --json keys create --backend passphrase` for
    /// `account`/`agent`, labelled `agent`, with `secret`: what it did.
    pub fn create_passphrase(&self, account: &str, agent: &str, secret: &str) -> Output {
        self.cli(
            &[
                "--json",
                "keys",
                "create",
                "--backend",
                "passphrase",
                "--account",
                account,
                "--agent",
                agent,
                "--label",
                agent,
                "--secret-stdin",
            ],
            Some(secret),
        )
    }

    /// Writes the account's genesis log (the key must be unlocked) into
    /// `home/ACCOUNT.log`; returns its path.
    pub fn account_log(&self, account: &str, key: &str) -> PathBuf {
        let log = self.home().join(format!("{account}.log"));
        let rec = self.home().join(format!("{account}.recovery.age"));
        self.ok(
            &[
                "account",
                "init",
                "--account",
                account,
                "--key",
                key,
                "--log",
                log.to_str().unwrap(),
                "--recovery-file",
                rec.to_str().unwrap(),
                "--secret-stdin",
            ],
            Some("recovery passphrase 1"),
        );
        log
    }

    /// `keybridge --json keys create --backend yubikey` of a key labelled
    /// (and owned by agent) `label` in account `acme` at `uri`; `stdin`
    /// carries the PIN (and, with `--management-key-stdin`, the key).
    pub fn create_yubikey_key(
        &self,
        label: &str,
        uri: &str,
        extra: &[&str],
        stdin: &str,
    ) -> Output {
        self.create_key("yubikey", label, uri, extra, stdin)
    }

    /// `keybridge --json keys create --backend BACKEND` for account `acme`,
    /// agent and label `label`, key `uri`, the secret (and more lines) on
    /// standard input.
    pub fn create_key(
        &self,
        backend: &str,
        label: &str,
        uri: &str,
        extra: &[&str],
        stdin: &str,
    ) -> Output {
        let mut args = vec![
            "--json",
            "keys",
            "create",
            "--backend",
            backend,
            "--account",
            "acme",
            "--agent",
            label,
            "--label",
            label,
            "--uri",
            uri,
            "--secret-stdin",
        ];
        args.extend_from_slice(extra);
        self.cli(&args, Some(stdin))
    }

    /// An HTTP client on this daemon's socket.
    pub fn http(&self) -> Http {
        Http {
            client: keybridge::client::Client::new(&self.socket()),
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The one polling helper: checks `ready` every 20 ms until it is true
/// (returns true) or `limit` has passed (returns false). Tests wait for
/// states this way, never for a fixed time.
pub fn poll_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` feeding `stdin`, collecting output.
pub fn run_with_stdin(cmd: &mut Command, stdin: Option<&str>) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning");
    {
        let mut pipe = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            let _ = writeln!(pipe, "{s}");
        }
    }
    child.wait_with_output().unwrap()
}

/// Keep-alive HTTP/1.1 connections to the daemon, through keybridge's own
/// client (the one the CLI uses), for tests that drive the API directly —
/// with hostile input too.
#[derive(Clone)]
pub struct Http {
    client: keybridge::client::Client,
}

/// One open connection.
pub struct Conn {
    conn: keybridge::client::Connection,
}

impl Http {
    /// Opens a connection.
    pub async fn connect(&self) -> std::io::Result<Conn> {
        let conn = self.client.connect().await.map_err(std::io::Error::other)?;
        Ok(Conn { conn })
    }

    /// The typed client.
    pub fn client(&self) -> &keybridge::client::Client {
        &self.client
    }
}

impl Conn {
    /// Sends one request; returns status and JSON body.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let bytes = body
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default();
        self.request_raw(method, path, bytes).await
    }

    /// Sends one request with a body of raw bytes (for input no JSON
    /// serializer would write, such as duplicate keys).
    pub async fn request_raw(
        &mut self,
        method: &str,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<(u16, Value), String> {
        let method = hyper::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let answer = self
            .conn
            .send(method, path, zeroize::Zeroizing::new(bytes))
            .await
            .map_err(|e| e.to_string())?;
        let v =
            serde_json::from_slice(&answer.body).map_err(|e| format!("{e}: {:?}", answer.body))?;
        Ok((answer.status, v))
    }
}

/// Runs `keybridge-device` with `args` on the state folder `state`.
pub fn device(state: &Path, args: &[&str]) -> Output {
    Command::new(bin("keybridge-device"))
        .arg("--state")
        .arg(state)
        .args(args)
        .output()
        .expect("running keybridge-device")
}

/// A device state folder `state` that trusts the key log `log` as device
/// `device_id` (`keybridge-device trust init`); panics if it refuses.
pub fn trust_device(state: &Path, log: &Path, device_id: &str) {
    let out = device(
        state,
        &[
            "trust",
            "init",
            log.to_str().unwrap(),
            "--device-id",
            device_id,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A program's standard output then standard error, for messages and
/// `contains` checks.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A test path as the `&str` a command line takes (test paths are UTF-8).
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// True when running under CI, where nothing may skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The SoftHSM2 module Debian installs.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The user PIN of test tokens.
pub const TOKEN_PIN: &str = "123456";

/// A SoftHSM2 token store in a temp folder (its own `SOFTHSM2_CONF`).
///
/// Tools run by the fixture get `SOFTHSM2_CONF` in their environment. A
/// test that loads the SoftHSM2 module in its own process (through
/// keybridge-backends or cryptoki) needs it in that process's environment,
/// read once at the module's first `C_Initialize`: such a test runs its body
/// in a child process with [`SoftHsm::run_isolated`] (see
/// [`softhsm_test!`]).
pub struct SoftHsm {
    dir: PathBuf,
    /// Removes the store with the fixture that made it; `None` in the child
    /// of [`SoftHsm::run_isolated`], whose parent owns the store.
    _owned: Option<tempfile::TempDir>,
}

impl SoftHsm {
    /// A fresh store, or `None` (with a loud SKIP) when SoftHSM2 or its
    /// tools are missing outside CI; under CI that is a failure.
    pub fn new() -> Option<Self> {
        let missing: Vec<&str> = ["softhsm2-util", "pkcs11-tool", "openssl"]
            .into_iter()
            .filter(|t| {
                Command::new("sh")
                    .args(["-c", &format!("command -v {t}")])
                    .output()
                    .map(|o| !o.status.success())
                    .unwrap_or(true)
            })
            .collect();
        if !missing.is_empty() || !Path::new(SOFTHSM_MODULE).exists() {
            assert!(
                !in_ci(),
                "SoftHSM2 test tools missing under CI: {missing:?} (run cargo xtask deps)"
            );
            eprintln!("SKIP: SoftHSM2 tools missing ({missing:?}); run `cargo xtask deps`");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("keybridge-softhsm-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("tokens")).unwrap();
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.path().join("tokens").display()
            ),
        )
        .unwrap();
        Some(SoftHsm {
            dir: dir.path().to_owned(),
            _owned: Some(dir),
        })
    }

    /// Runs `body` with a fresh store in a child process of this test
    /// binary whose environment has `SOFTHSM2_CONF` (and `env`, and no
    /// `KEYBRIDGE_*` variable of the caller's): the child re-runs just the
    /// test `test` (its name, as libtest knows it). Skips (loudly) when
    /// SoftHSM2 is missing, as [`SoftHsm::new`]: under CI that fails. Works
    /// under `cargo test` (each test its own child, in parallel) and
    /// `cargo nextest`.
    pub fn run_isolated(test: &str, env: &[(&str, &str)], body: impl FnOnce(&SoftHsm)) {
        const CHILD_ENV: &str = "KEYBRIDGE_TESTS_SOFTHSM_DIR";
        if let Some(dir) = std::env::var_os(CHILD_ENV) {
            body(&SoftHsm {
                dir: PathBuf::from(dir),
                _owned: None,
            });
            return;
        }
        let Some(hsm) = SoftHsm::new() else {
            return;
        };
        let mut child = Command::new(std::env::current_exe().expect("test binary"));
        child.args([test, "--exact", "--nocapture", "--test-threads=1"]);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("KEYBRIDGE_") {
                child.env_remove(name);
            }
        }
        child
            .env("SOFTHSM2_CONF", hsm.conf())
            .env(CHILD_ENV, hsm.dir())
            .envs(env.iter().copied());
        let out = child.output().expect("run the test binary");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Shown by `--nocapture`, and on failure.
        println!("{stdout}");
        eprintln!("{stderr}");
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{test} failed in its SoftHSM process ({})",
            out.status
        );
    }

    /// The store's folder (for scratch files too).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A file in the store's folder.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The `SOFTHSM2_CONF` path.
    pub fn conf(&self) -> PathBuf {
        self.dir.join("softhsm2.conf")
    }

    /// The token folder.
    pub fn tokens(&self) -> PathBuf {
        self.dir.join("tokens")
    }

    /// Runs a tool (softhsm2-util, pkcs11-tool, openssl) with this store.
    pub fn tool(&self, program: &str, args: &[&str]) -> Output {
        let out = Command::new(program)
            .env("SOFTHSM2_CONF", self.conf())
            .args(args)
            .output()
            .expect(program);
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs a tool with this store; returns its standard output.
    pub fn tool_text(&self, program: &str, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.tool(program, args).stdout).into_owned()
    }

    /// `pkcs11-tool --module SOFTHSM_MODULE …` with this store.
    pub fn pkcs11_tool(&self, args: &[&str]) -> String {
        self.tool_text(
            "pkcs11-tool",
            &[&["--module", SOFTHSM_MODULE][..], args].concat(),
        )
    }

    /// Initialises a token labelled `label` with [`TOKEN_PIN`]; returns it
    /// with its folder (which a test may move away to unplug the token).
    pub fn init_token(&self, label: &str) -> SoftHsmToken {
        let before = self.token_dirs();
        self.tool(
            "softhsm2-util",
            &[
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                "12345678",
                "--pin",
                TOKEN_PIN,
            ],
        );
        let mut new: Vec<PathBuf> = self
            .token_dirs()
            .into_iter()
            .filter(|d| !before.contains(d))
            .collect();
        assert_eq!(new.len(), 1, "one new token folder");
        SoftHsmToken {
            label: label.to_owned(),
            dir: new.remove(0),
        }
    }

    fn token_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.tokens())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    /// A key URI on token `label` for object `object`.
    pub fn uri(&self, label: &str, object: &str) -> String {
        format!("pkcs11:token={label};object={object}?module-path={SOFTHSM_MODULE}")
    }

    /// A URI on token `label` with the path attributes `attrs`
    /// (`object=…;id=…`, or none) and the module.
    pub fn token_uri(&self, label: &str, attrs: &str) -> String {
        let sep = if attrs.is_empty() { "" } else { ";" };
        format!("pkcs11:token={label}{sep}{attrs}?module-path={SOFTHSM_MODULE}")
    }
}

/// A token made by [`SoftHsm::init_token`].
#[derive(Debug, Clone)]
pub struct SoftHsmToken {
    /// The token label.
    pub label: String,
    /// Its folder under [`SoftHsm::tokens`].
    pub dir: PathBuf,
}

/// Declares a `#[test]` whose body runs with a fresh SoftHSM2 store in its
/// own process ([`SoftHsm::run_isolated`]), so that the SoftHSM2 module
/// keybridge loads in that process sees the store:
///
/// ```ignore
/// softhsm_test! {
///     fn a_key_signs(hsm) { hsm.init_token("t"); /* … */ }
/// }
/// softhsm_test! {
///     fn with_more_environment(hsm) with env &[("NAME", "value")] => { /* … */ }
/// }
/// ```
#[macro_export]
macro_rules! softhsm_test {
    ($(#[$meta:meta])* fn $name:ident($hsm:ident) $body:block) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            $crate::SoftHsm::run_isolated(stringify!($name), &[], |$hsm: &$crate::SoftHsm| $body)
        }
    };
    ($(#[$meta:meta])* fn $name:ident($hsm:ident) with env $env:expr => $body:block) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            $crate::SoftHsm::run_isolated(stringify!($name), $env, |$hsm: &$crate::SoftHsm| $body)
        }
    };
}
