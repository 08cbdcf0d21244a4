//! The harness the end-to-end benchmark drivers share (`bridge_bench`,
//! `pkcs11_bench`): child processes that die with the driver, one client
//! loop with its timing for every target (keep-alive HTTP/1.1 to keybridge,
//! the ssh-agent protocol to OpenSSH's agent), the few ssh-agent messages
//! the drivers need, and the keybridge daemon in its own `KEYBRIDGE_HOME`.
//!
//! Errors are `anyhow`: these are the insides of two `main`s.

use ::keybridge::client::{Client, Connection};
use anyhow::{Context as _, Result, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hyper::body::Bytes;
use serde_json::{Value, json};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;
use zeroize::Zeroizing;

/// A child process, killed and reaped when dropped.
pub struct Proc {
    /// What error messages call it.
    pub name: &'static str,
    /// The process.
    pub child: Child,
}

impl Proc {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until something listens on `socket` (or the process dies).
    pub async fn wait_for(&mut self, socket: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if UnixStream::connect(socket).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited with {status}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("{} did not listen on {}", self.name, socket.display())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` with `stdin` (a line) and insists it succeeds; returns stdout.
pub fn run_ok(cmd: &mut Command, stdin: Option<&str>) -> Result<String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    {
        let mut pipe = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            writeln!(pipe, "{s}")?;
        }
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// CPU time used so far by every thread of `pid` (`/proc/PID/task/*/schedstat`,
/// nanoseconds). Threads that already exited are not counted; the servers
/// here keep theirs.
pub fn cpu_time(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// What the harness drives: the only part that differs between targets is
/// how a request is encoded and its answer checked.
#[derive(Clone)]
pub enum Target {
    /// `POST /v1/sign` with `body`; the JSON answer must carry `field`.
    Http {
        /// The server's Unix socket.
        socket: PathBuf,
        /// The request body, sent as is.
        body: Bytes,
        /// The string field a 200 answer must carry.
        field: &'static str,
    },
    /// An ssh-agent sign request, already framed.
    Agent {
        /// The agent's Unix socket.
        socket: PathBuf,
        /// `SSH2_AGENTC_SIGN_REQUEST`, framed.
        request: Bytes,
        /// The key's type (`ssh-ed25519`, `ecdsa-sha2-nistp256`): the
        /// signature's must be the same.
        key_type: Bytes,
    },
}

/// One open keep-alive connection to a target.
enum Conn {
    Http {
        sender: Connection,
        body: Bytes,
        field: &'static str,
    },
    Agent {
        stream: UnixStream,
        request: Bytes,
        key_type: Bytes,
        answer: Vec<u8>,
    },
}

/// Opens an HTTP/1.1 connection on `socket` with keybridge's own client
/// (the one the CLI uses), for every HTTP target alike.
pub async fn http_connect(socket: &Path) -> Result<Connection> {
    Client::new(socket)
        .connect()
        .await
        .with_context(|| format!("connecting to {}", socket.display()))
}

/// Sends one request; returns the status, the body, and when the answer's
/// head arrived.
pub async fn http_request(
    conn: &mut Connection,
    method: &str,
    path: &str,
    body: Bytes,
) -> Result<(u16, Bytes, Instant)> {
    let method = hyper::Method::from_bytes(method.as_bytes())?;
    let answer = conn
        .send(method, path, Zeroizing::new(body.to_vec()))
        .await?;
    Ok((answer.status, answer.body, answer.head_at))
}

/// The JSON body of a 200 answer, or the error it was.
pub fn json_ok(status: u16, body: &[u8]) -> Result<Value> {
    ensure!(
        status == 200,
        "HTTP {status}: {}",
        String::from_utf8_lossy(body)
    );
    serde_json::from_slice(body).with_context(|| String::from_utf8_lossy(body).into_owned())
}

impl Target {
    /// An ssh-agent target signing `data` with the key whose public blob is
    /// `key_blob`.
    pub fn agent(socket: &Path, key_blob: &[u8], data: &[u8]) -> Result<Target> {
        Ok(Target::Agent {
            socket: socket.to_owned(),
            request: Bytes::from(ssh_agent::sign_request(key_blob, data)),
            key_type: Bytes::copy_from_slice(ssh_agent::key_type(key_blob)?),
        })
    }

    async fn connect(&self) -> Result<Conn> {
        Ok(match self {
            Target::Http {
                socket,
                body,
                field,
            } => Conn::Http {
                sender: http_connect(socket).await?,
                body: body.clone(),
                field,
            },
            Target::Agent {
                socket,
                request,
                key_type,
            } => Conn::Agent {
                stream: UnixStream::connect(socket).await?,
                request: request.clone(),
                key_type: key_type.clone(),
                answer: vec![],
            },
        })
    }
}

impl Conn {
    /// One signature, checked.
    async fn sign(&mut self) -> Result<()> {
        match self {
            Conn::Http {
                sender,
                body,
                field,
            } => {
                let (status, bytes, _) =
                    http_request(sender, "POST", "/v1/sign", body.clone()).await?;
                let v = json_ok(status, &bytes)?;
                ensure!(v[*field].is_string(), "no {field} in {v}");
            }
            Conn::Agent {
                stream,
                request,
                key_type,
                answer,
            } => {
                stream.write_all(request).await?;
                ssh_agent::read_message(stream, answer).await?;
                ssh_agent::check_sign_response(answer, key_type)?;
            }
        }
        Ok(())
    }
}

/// One measurement: `conns` connections signing as fast as they are
/// answered, for a fixed time.
pub struct Measurement {
    /// Concurrent connections (for a loop without connections, its threads).
    pub conns: usize,
    /// Signatures completed.
    pub requests: usize,
    /// From the start until the last connection finished.
    pub elapsed: Duration,
    /// One per signature; sorted.
    pub latencies: Vec<Duration>,
    /// CPU the server processes used meanwhile.
    pub server_cpu: Duration,
    /// CPU this (client) process used meanwhile.
    pub client_cpu: Duration,
}

/// Drives `target` with `conns` keep-alive connections for `length`; the
/// server's CPU is that of the processes `server_pids` (e.g. an agent and
/// its helper).
pub async fn measure(
    target: &Target,
    conns: usize,
    length: Duration,
    server_pids: &[u32],
) -> Result<Measurement> {
    let mut open = vec![];
    for _ in 0..conns {
        open.push(target.connect().await?);
    }
    let server_time = || server_pids.iter().map(|p| cpu_time(*p)).sum::<Duration>();
    let server0 = server_time();
    let client0 = cpu_time(std::process::id());
    let start = Instant::now();
    let deadline = start + length;
    let tasks: Vec<_> = open
        .into_iter()
        .map(|mut conn| {
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 16);
                loop {
                    let t = Instant::now();
                    if t >= deadline {
                        break;
                    }
                    conn.sign().await?;
                    latencies.push(t.elapsed());
                }
                anyhow::Ok((latencies, Instant::now()))
            })
        })
        .collect();
    let mut latencies = vec![];
    let mut end = start;
    for task in tasks {
        let (l, done) = task.await??;
        latencies.extend(l);
        end = end.max(done);
    }
    let server_cpu = server_time().saturating_sub(server0);
    let client_cpu = cpu_time(std::process::id()).saturating_sub(client0);
    latencies.sort_unstable();
    ensure!(!latencies.is_empty(), "no request completed");
    Ok(Measurement {
        conns,
        requests: latencies.len(),
        elapsed: end - start,
        latencies,
        server_cpu,
        client_cpu,
    })
}

impl Measurement {
    /// Two measurements of the same target as one.
    pub fn merge(mut self, other: Measurement) -> Measurement {
        self.requests += other.requests;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.latencies.sort_unstable();
        self.server_cpu += other.server_cpu;
        self.client_cpu += other.client_cpu;
        self
    }

    /// `other` merged into `pool`, which may be empty.
    pub fn pool(pool: &mut Option<Measurement>, other: Measurement) {
        *pool = Some(match pool.take() {
            None => other,
            Some(p) => p.merge(other),
        });
    }

    /// Signatures per second.
    pub fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// The `p`-quantile (nearest rank), in microseconds.
    pub fn quantile_us(&self, p: f64) -> f64 {
        let n = self.latencies.len();
        let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
        self.latencies[rank - 1].as_secs_f64() * 1e6
    }

    /// Server CPU per signature, in microseconds.
    pub fn server_cpu_us(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.requests as f64
    }

    /// Client CPU per signature, in microseconds.
    pub fn client_cpu_us(&self) -> f64 {
        self.client_cpu.as_secs_f64() * 1e6 / self.requests as f64
    }

    /// The table's header, matching [`line`](Self::line).
    pub fn header() -> String {
        format!(
            "{:<10} {:>5} {:>10} {:>9} {:>9} {:>10} {:>10}",
            "target", "conns", "sig/s", "p50 us", "p99 us", "srv cpu/sig", "cli cpu/sig"
        )
    }

    /// One table row.
    pub fn line(&self, name: &str) -> String {
        format!(
            "{name:<10} {:>5} {:>10.0} {:>9.1} {:>9.1} {:>10.1} {:>10.1}",
            self.conns,
            self.throughput(),
            self.quantile_us(0.50),
            self.quantile_us(0.99),
            self.server_cpu_us(),
            self.client_cpu_us(),
        )
    }

    /// The row as JSON.
    pub fn to_json(&self, name: &str) -> Value {
        json!({
            "target": name,
            "connections": self.conns,
            "requests": self.requests,
            "seconds": self.elapsed.as_secs_f64(),
            "signatures_per_s": self.throughput(),
            "p50_us": self.quantile_us(0.50),
            "p99_us": self.quantile_us(0.99),
            "server_cpu_us_per_sig": self.server_cpu_us(),
            "client_cpu_us_per_sig": self.client_cpu_us(),
        })
    }
}

/// A goal, its measured ratio or figure, and whether it is met.
pub struct Goal {
    /// What is compared.
    pub name: &'static str,
    /// The ratio or figure.
    pub measured: f64,
    /// The goal.
    pub target: f64,
    /// True if `measured` must be at least `target`, false if at most.
    pub at_least: bool,
    /// The figures behind the ratio.
    pub detail: String,
}

impl Goal {
    /// Whether the measurement meets the goal.
    pub fn met(&self) -> bool {
        if self.at_least {
            self.measured >= self.target
        } else {
            self.measured <= self.target
        }
    }

    /// One line of the summary.
    pub fn line(&self) -> String {
        format!(
            "  {:<38} {:>8.2}  goal {} {:<5} {:<6} ({})",
            self.name,
            self.measured,
            if self.at_least { ">=" } else { "<=" },
            self.target,
            if self.met() { "met" } else { "MISSED" },
            self.detail
        )
    }

    /// The goal as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "goal": self.name,
            "measured": self.measured,
            "target": self.target,
            "at_least": self.at_least,
            "met": self.met(),
            "detail": self.detail,
        })
    }
}

/// OpenSSH's agent and the few messages of its protocol
/// (draft-miller-ssh-agent) the benchmarks need.
///
/// Hand-written rather than a crate: it is a dozen lines of framing (a
/// `uint32` length, a type byte, SSH `string`s and a `uint32`), and an agent
/// client crate would bring its own transport and key types into the one
/// loop whose cost we are measuring.
pub mod ssh_agent {
    use super::*;

    const FAILURE: u8 = 5;
    const REQUEST_IDENTITIES: u8 = 11;
    const IDENTITIES_ANSWER: u8 = 12;
    const SIGN_REQUEST: u8 = 13;
    const SIGN_RESPONSE: u8 = 14;
    /// Largest answer we accept (the agent's own limit is 256 KiB).
    const MAX_MESSAGE: usize = 256 * 1024;

    /// A running `ssh-agent -D`.
    pub struct Agent {
        /// The agent process.
        pub proc: Proc,
        /// Its socket.
        pub socket: PathBuf,
    }

    /// Starts `ssh-agent -D -a DIR/agent.sock ARGS` with `env` added (its
    /// log in `DIR/agent.log`) and waits for its socket.
    pub async fn start(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Result<Agent> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.log"))?)
            .spawn()
            .context("starting ssh-agent (openssh-client)")?;
        let mut proc = Proc {
            name: "ssh-agent",
            child,
        };
        proc.wait_for(&socket).await?;
        Ok(Agent { proc, socket })
    }

    /// The public key blobs the agent holds (`SSH2_AGENTC_REQUEST_IDENTITIES`).
    pub async fn identities(socket: &Path) -> Result<Vec<Vec<u8>>> {
        let mut stream = UnixStream::connect(socket).await?;
        stream.write_all(&frame(vec![REQUEST_IDENTITIES])).await?;
        let mut answer = vec![];
        read_message(&mut stream, &mut answer).await?;
        let mut rest = answer.as_slice();
        ensure!(
            take(&mut rest, 1)? == [IDENTITIES_ANSWER],
            "not an identities answer"
        );
        let n = take_u32(&mut rest)?;
        (0..n)
            .map(|_| {
                let blob = take_string(&mut rest)?.to_vec();
                let _comment = take_string(&mut rest)?;
                Ok(blob)
            })
            .collect()
    }

    /// The key type a public key blob starts with.
    pub fn key_type(blob: &[u8]) -> Result<&[u8]> {
        take_string(&mut &blob[..])
    }

    /// `uint32 length || body`.
    fn frame(body: Vec<u8>) -> Vec<u8> {
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    fn put_string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend((s.len() as u32).to_be_bytes());
        out.extend(s);
    }

    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
        ensure!(rest.len() >= n, "agent message truncated");
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Ok(head)
    }

    fn take_u32(rest: &mut &[u8]) -> Result<u32> {
        Ok(u32::from_be_bytes(take(rest, 4)?.try_into()?))
    }

    fn take_string<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8]> {
        let n = take_u32(rest)? as usize;
        take(rest, n)
    }

    /// `SSH2_AGENTC_SIGN_REQUEST`: key blob, data, flags 0 (what Ed25519 and
    /// ECDSA keys take; the flags only choose RSA's hash).
    pub fn sign_request(key_blob: &[u8], data: &[u8]) -> Vec<u8> {
        let mut body = vec![SIGN_REQUEST];
        put_string(&mut body, key_blob);
        put_string(&mut body, data);
        body.extend(0u32.to_be_bytes());
        frame(body)
    }

    /// Reads one message's body into `buf`.
    pub async fn read_message(stream: &mut UnixStream, buf: &mut Vec<u8>) -> Result<()> {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        ensure!(
            (1..=MAX_MESSAGE).contains(&len),
            "agent message of {len} bytes"
        );
        buf.resize(len, 0);
        stream.read_exact(buf).await?;
        Ok(())
    }

    /// Checks an `SSH2_AGENT_SIGN_RESPONSE` carries a signature of
    /// `key_type`: 64 bytes for `ssh-ed25519`, two `mpint`s (r, s) of at most
    /// 33 bytes for `ecdsa-sha2-nistp256` (RFC 5656 §3.1.2).
    pub fn check_sign_response(msg: &[u8], key_type: &[u8]) -> Result<()> {
        let mut rest = msg;
        match take(&mut rest, 1)?[0] {
            SIGN_RESPONSE => {}
            FAILURE => bail!("ssh-agent answered SSH_AGENT_FAILURE"),
            other => bail!("ssh-agent answered message type {other}"),
        }
        let mut sig = take_string(&mut rest)?;
        let sig_type = take_string(&mut sig)?;
        ensure!(
            sig_type == key_type,
            "not {}",
            String::from_utf8_lossy(key_type)
        );
        let blob = take_string(&mut sig)?;
        match key_type {
            b"ssh-ed25519" => ensure!(blob.len() == 64, "not a 64-byte signature"),
            b"ecdsa-sha2-nistp256" => {
                let mut blob = blob;
                for part in ["r", "s"] {
                    let n = take_string(&mut blob)?.len();
                    ensure!((1..=33).contains(&n), "ECDSA {part} of {n} bytes");
                }
                ensure!(blob.is_empty(), "trailing bytes after ECDSA s");
            }
            _ => {}
        }
        Ok(())
    }
}

/// keybridge: the release daemon in its own `KEYBRIDGE_HOME`.
pub mod keybridge {
    use super::*;
    use keybridge_protocol::{PublicKey, UnsignedCommand};

    /// The running daemon.
    pub struct Bridge {
        /// `keybridge serve`.
        pub proc: Proc,
        /// The `keybridge` binary.
        pub bin: PathBuf,
        /// Its `KEYBRIDGE_HOME`.
        pub home: PathBuf,
        /// Its socket.
        pub socket: PathBuf,
        /// Extra environment of the daemon and the CLI runs.
        pub env: Vec<(String, PathBuf)>,
    }

    /// Starts `BIN_DIR/keybridge serve` (no policy file, system clock, log
    /// in `HOME/daemon.log`) with `env` added, and waits until it answers
    /// `GET /v1/status`.
    pub async fn serve(bin_dir: &Path, home: &Path, env: &[(&str, &Path)]) -> Result<Bridge> {
        let bin = bin_dir.join("keybridge");
        ensure!(
            bin.exists(),
            "{} is not built (cargo build --release -p keybridge)",
            bin.display()
        );
        std::fs::create_dir_all(home)?;
        let log = std::fs::File::create(home.join("daemon.log"))?;
        let child = Command::new(&bin)
            .arg("serve")
            .env("KEYBRIDGE_HOME", home)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut proc = Proc {
            name: "keybridge serve",
            child,
        };
        let socket = home.join("run").join("bridge.sock");
        proc.wait_for(&socket).await?;
        let mut sender = http_connect(&socket).await?;
        let (status, body, _) =
            http_request(&mut sender, "GET", "/v1/status", Bytes::new()).await?;
        json_ok(status, &body).context("GET /v1/status")?;
        Ok(Bridge {
            proc,
            bin,
            home: home.to_owned(),
            socket,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_path_buf()))
                .collect(),
        })
    }

    impl Bridge {
        /// Runs the CLI against this daemon with `stdin` (a line); insists it
        /// succeeds and returns its stdout.
        pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
            let mut cmd = Command::new(&self.bin);
            cmd.env("KEYBRIDGE_HOME", &self.home)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .args(args);
            run_ok(&mut cmd, stdin)
        }

        /// Warnings or errors the daemon logged, if any.
        pub fn log_problems(&self) -> Result<Option<String>> {
            let log = std::fs::read_to_string(self.home.join("daemon.log"))?;
            let bad: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .collect();
            Ok((!bad.is_empty()).then(|| {
                format!(
                    "the daemon logged {} warnings/errors, first: {}",
                    bad.len(),
                    bad[0]
                )
            }))
        }
    }

    /// `GET /v1/keys/{key}`: the key's record with its public key.
    pub async fn key(socket: &Path, key: &str) -> Result<Value> {
        let mut sender = http_connect(socket).await?;
        let path = format!("/v1/keys/{key}");
        let (status, body, _) = http_request(&mut sender, "GET", &path, Bytes::new()).await?;
        json_ok(status, &body).with_context(|| format!("GET {path}"))
    }

    /// The public key of a [`key`] record.
    pub fn public_key(record: &Value) -> Result<PublicKey> {
        PublicKey::from_spki_pem(record["public_key"]["pem"].as_str().context("pem")?)
            .map_err(|e| anyhow::anyhow!("public key: {e}"))
    }

    /// Signs once with `request` (a single-device `POST /v1/sign` body for
    /// `key`) and rebuilds, from the envelope and the key's public key, the
    /// `Sig_structure` keybridge signed; checks the signature over it.
    pub async fn signed_bytes(socket: &Path, key: &str, request: &'static str) -> Result<Vec<u8>> {
        let mut sender = http_connect(socket).await?;
        let (status, body, _) = http_request(
            &mut sender,
            "POST",
            "/v1/sign",
            Bytes::from_static(request.as_bytes()),
        )
        .await?;
        let v = json_ok(status, &body).context("POST /v1/sign")?;
        let envelope = B64.decode(v["envelope"].as_str().context("no envelope")?)?;
        let public = public_key(&self::key(socket, key).await?)?;
        let (_, claims) = keybridge_protocol::command::inspect(&envelope)
            .map_err(|e| anyhow::anyhow!("envelope: {e}"))?;
        let unsigned =
            UnsignedCommand::new(&claims, &public).map_err(|e| anyhow::anyhow!("claims: {e}"))?;
        let tbs = unsigned.to_be_signed().to_vec();
        // Both algorithms sign with 64 bytes (Ed25519; ES256 r‖s), last in
        // the envelope.
        let signature = &envelope[envelope.len() - 64..];
        public
            .verify(public.algorithm(), &tbs, signature)
            .map_err(|_| anyhow::anyhow!("the envelope's signature does not verify"))?;
        Ok(tbs)
    }

    /// The audit log's lines, parsed.
    pub fn audit_lines(home: &Path) -> Result<Vec<Value>> {
        let path = home.join("state").join("audit.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            r => r.with_context(|| path.display().to_string())?,
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("audit line {l}")))
            .collect()
    }
}

/// Reads a bench binary's own arguments, `[--secs SECONDS]`: the length of
/// each measurement, `default` when not given.
pub fn secs_arg(name: &str, args: &[String], default: Duration) -> Result<Duration> {
    match args {
        [] => Ok(default),
        [flag, secs] if flag == "--secs" => match secs.parse::<f64>() {
            Ok(s) if s > 0.0 => Ok(Duration::from_secs_f64(s)),
            _ => Err(anyhow::anyhow!("usage: {name} [--secs SECONDS]")),
        },
        _ => Err(anyhow::anyhow!("usage: {name} [--secs SECONDS]")),
    }
}

/// A bench binary's exit: 0, or 1 with the error on stderr.
pub fn exit(name: &str, outcome: Result<()>) -> std::process::ExitCode {
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The measurement of target `name` at `conns` connections among `rows`.
pub fn row<'a>(
    rows: &'a [(&'static str, Measurement)],
    name: &str,
    conns: usize,
) -> &'a Measurement {
    &rows
        .iter()
        .find(|(n, m)| *n == name && m.conns == conns)
        .expect("every target is measured at every concurrency")
        .1
}
