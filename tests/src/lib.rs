//! Fixtures for keybridge's end-to-end tests: the real `keybridge` daemon on
//! a real Unix socket in a temp folder, the real `keybridge-device`, and a
//! small HTTP client for driving the API concurrently.

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
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
    policy: PathBuf,
    clock: PathBuf,
}

impl Bridge {
    /// Starts a daemon with no policy file and the clock at `now`.
    pub fn start(now: i64) -> Self {
        Self::start_with_policy(now, None)
    }

    /// Starts a daemon whose system policy file says `policy`.
    pub fn start_with_policy(now: i64, policy: Option<&str>) -> Self {
        let home = tempfile::tempdir().expect("temp dir");
        let policy_path = home.path().join("policy.toml");
        if let Some(p) = policy {
            std::fs::write(&policy_path, p).unwrap();
        }
        let clock = home.path().join("clock");
        std::fs::write(&clock, now.to_string()).unwrap();
        let mut b = Bridge {
            home,
            child: None,
            policy: policy_path,
            clock,
        };
        b.restart();
        b
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
        let log = std::fs::File::create(self.home().join("daemon.log")).unwrap();
        let child = Command::new(bin("keybridge"))
            .args(["serve", "--policy"])
            .arg(&self.policy)
            .arg("--clock-file")
            .arg(&self.clock)
            .env("KEYBRIDGE_HOME", self.home())
            .env("KEYBRIDGE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting keybridge serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.cli(&["status"], None).status.success() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited with {status}: {}", self.daemon_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not come up: {}", self.daemon_log());
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

    /// Sets the daemon's clock.
    pub fn set_time(&self, now: i64) {
        std::fs::write(&self.clock, now.to_string()).unwrap();
    }

    /// Runs the `keybridge` CLI against this daemon, with `stdin`.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        run_with_stdin(
            Command::new(bin("keybridge"))
                .env("KEYBRIDGE_HOME", self.home())
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

    /// Creates a passphrase key for `account`/`agent` labelled `agent`;
    /// returns its kid.
    pub fn passphrase_key(&self, account: &str, agent: &str) -> String {
        let out = self.ok(
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
            Some(PASSPHRASE),
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        v["kid"].as_str().unwrap().to_owned()
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

    /// An HTTP client on this daemon's socket.
    pub fn http(&self) -> Http {
        Http {
            socket: self.socket(),
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

/// A keep-alive HTTP/1.1 connection to the daemon.
#[derive(Clone)]
pub struct Http {
    socket: PathBuf,
}

/// One open connection.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Http {
    /// Opens a connection.
    pub async fn connect(&self) -> std::io::Result<Conn> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(Conn { sender })
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
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let bytes = body
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default();
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "keybridge")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .unwrap();
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let v = serde_json::from_slice(&body).map_err(|e| format!("{e}: {body:?}"))?;
        Ok((status, v))
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

/// True when running under CI, where nothing may skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}
