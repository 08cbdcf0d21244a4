//! The bridge's end-to-end benchmark (issue 3).
//!
//! Three signers on Unix sockets in one temp folder, driven by one client
//! harness (same connections, concurrency and timing loop; only the request
//! encoding differs):
//!
//! 1. `keybridge serve` with a passphrase key unlocked `daily`:
//!    `POST /v1/sign` for one device over keep-alive HTTP/1.1;
//! 2. OpenSSH's `ssh-agent` holding an Ed25519 key: `SSH2_AGENTC_SIGN_REQUEST`
//!    over the same number of bytes as keybridge's `Sig_structure`;
//! 3. the floor: a bare hyper HTTP/1.1 server that signs those bytes with
//!    ed25519-dalek and answers `{"signature": BASE64}`, i.e. the least any
//!    signing HTTP service can cost. It is this program started again as
//!    `bridge_bench --floor SOCK HEX`, so that it never shares a runtime, a
//!    thread pool or an allocator with the client.
//!
//! Then one command for 10,000 devices through the API (end to end, median
//! of a few runs, checked against the audit log) and the daemon's resident
//! memory, idle and after the load.
//!
//! `cargo xtask bench` builds the release binaries and runs this; it finds
//! `keybridge` next to itself. It prints a table and the ratios against the
//! goals and writes them to `target/bench/bridge.json`. A missed goal is
//! reported, not failed (exit 0); a target that does not start or a request
//! answered with an error exits non-zero.

use anyhow::{Context as _, Result, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use keybridge_protocol::key::{hex, unhex};
use keybridge_tests::bench::{
    Goal, Measurement, Proc, Target, cpu_time, exit, http_connect, http_request, json_ok,
    keybridge, measure, run_ok, secs_arg, ssh_agent,
};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The passphrase of the benchmark key.
const PASSPHRASE: &str = "correct horse battery staple";
/// Devices in the batch command.
const BATCH_DEVICES: usize = 10_000;
/// Measured batch runs (after one warm-up run).
const BATCH_RUNS: usize = 5;
/// Concurrent keep-alive connections per measurement.
const CONNECTIONS: [usize; 2] = [1, 8];
/// Rounds each measurement is split into, taking turns between targets.
const ROUNDS: usize = 3;
/// Warm-up before each target's measurements.
const WARM_UP: Duration = Duration::from_millis(500);
/// The body every single-device request sends, to keybridge and the floor.
const SIGN_REQUEST: &str = r#"{"key":"agent-a","device":"device-00042","command":"remote-control","args":{"mode":"view","session":"c0ffee"},"ttl":300}"#;

/// Goals of issue 3.
mod goal {
    /// keybridge's throughput at 8 connections over ssh-agent's, at least.
    pub const SPEEDUP_VS_AGENT: f64 = 10.0;
    /// keybridge's p50 at 1 connection over the floor's, at most.
    pub const P50_VS_FLOOR: f64 = 1.5;
    /// A 10,000-device batch end to end, at most.
    pub const BATCH_MS: f64 = 50.0;
    /// The idle daemon's resident memory, at most.
    pub const IDLE_RSS_MIB: f64 = 15.0;
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("--floor") => match (args.get(1), args.get(2).and_then(|h| unhex(h))) {
            (Some(sock), Some(msg)) => floor::serve(Path::new(sock), msg),
            _ => Err(anyhow::anyhow!("usage: bridge_bench --floor SOCK HEX")),
        },
        _ => secs_arg("bridge_bench", &args, Duration::from_secs(3)).and_then(bench),
    };
    exit("bridge_bench", outcome)
}

/// The whole benchmark; `secs` is the length of each measurement.
fn bench(secs: Duration) -> Result<()> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let bin_dir = exe.parent().context("executable folder")?.to_owned();
    let target_dir = bin_dir.parent().context("target folder")?.to_owned();
    let tmp = tempfile::Builder::new()
        .prefix("kbb")
        .tempdir()
        .context("temp folder")?;
    // The client is one thread: the machine has few cores and the servers
    // need them; every target gets the same client.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(run(&exe, &bin_dir, tmp.path(), secs))?;
    let out = target_dir.join("bench").join("bridge.json");
    std::fs::create_dir_all(out.parent().unwrap())?;
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)?;
    println!("\nwrote {}", out.display());
    Ok(())
}

async fn run(exe: &Path, bin_dir: &Path, tmp: &Path, secs: Duration) -> Result<Value> {
    // keybridge, its key, and the exact bytes it signs.
    let kb = start_keybridge(bin_dir, &tmp.join("kb"))
        .await
        .context("starting keybridge")?;
    let kb_target = Target::Http {
        socket: kb.socket.clone(),
        body: Bytes::from_static(SIGN_REQUEST.as_bytes()),
        field: "envelope",
    };
    let tbs = keybridge::signed_bytes(&kb.socket, "agent-a", SIGN_REQUEST).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = Memory::of(kb.proc.pid())?;
    println!(
        "keybridge {} (pid {}), key created and unlocked; Sig_structure {} bytes; \
         idle RSS {:.1} MiB",
        bin_dir.join("keybridge").display(),
        kb.proc.pid(),
        tbs.len(),
        idle.rss_mib()
    );

    let (agent, key_blob) = start_agent(&tmp.join("agent"))
        .await
        .context("starting ssh-agent")?;
    let agent_target = Target::agent(&agent.socket, &key_blob, &tbs)?;
    let floor = floor::start(exe, &tmp.join("floor.sock"), &tbs)
        .await
        .context("starting the floor")?;
    let floor_target = Target::Http {
        socket: floor.socket.clone(),
        body: Bytes::from_static(SIGN_REQUEST.as_bytes()),
        field: "signature",
    };

    let targets = [
        ("keybridge", &kb_target, kb.proc.pid()),
        ("ssh-agent", &agent_target, agent.proc.pid()),
        ("floor", &floor_target, floor.proc.pid()),
    ];
    let audit_before = keybridge::audit_lines(&kb.home)?.len();
    let mut kb_signatures = 0;
    for (name, target, pid) in targets {
        let warm = measure(target, 8, WARM_UP, &[pid])
            .await
            .with_context(|| format!("{name}: warm-up"))?;
        if name == "keybridge" {
            kb_signatures += warm.requests;
        }
    }
    // Each measurement is split into rounds that take turns between the
    // targets, so that a slow spell of the machine (a shared VM) falls on
    // all of them rather than on whichever ran at that moment.
    let mut rows = vec![];
    println!(
        "{:<10} {:>5} {:>10} {:>9} {:>9} {:>10} {:>10}",
        "target", "conns", "sig/s", "p50 us", "p99 us", "srv cpu/sig", "cli cpu/sig"
    );
    for conns in CONNECTIONS {
        let mut pooled: Vec<Option<Measurement>> = targets.iter().map(|_| None).collect();
        for _ in 0..ROUNDS {
            for ((name, target, pid), pool) in targets.iter().zip(&mut pooled) {
                let m = measure(target, conns, secs / ROUNDS as u32, &[*pid])
                    .await
                    .with_context(|| format!("{name}: {conns} connection(s)"))?;
                if *name == "keybridge" {
                    kb_signatures += m.requests;
                }
                *pool = Some(match pool.take() {
                    None => m,
                    Some(p) => p.merge(m),
                });
            }
        }
        for ((name, _, _), m) in targets.iter().zip(pooled) {
            let m = m.expect("at least one round");
            println!("{}", m.line(name));
            rows.push((*name, m));
        }
    }
    // Every signature must have its audit line.
    let audit_after = keybridge::audit_lines(&kb.home)?.len();
    let mut problems = vec![];
    if audit_after - audit_before != kb_signatures {
        problems.push(format!(
            "keybridge answered {kb_signatures} signatures but appended {} audit lines",
            audit_after - audit_before
        ));
    }

    // Memory after many small signatures, before the one large answer.
    let signed = Memory::of(kb.proc.pid())?;
    let batch = batch(&kb.socket, &kb.home, kb.proc.pid()).await?;
    println!(
        "batch of {BATCH_DEVICES}: median {:.1} ms (min {:.1}, max {:.1}); \
         one audit line each, batch_size {BATCH_DEVICES}",
        batch.median_ms(),
        batch.runs_ms().first().unwrap(),
        batch.runs_ms().last().unwrap(),
    );
    let loaded = Memory::of(kb.proc.pid())?;
    let agent_mem = Memory::of(agent.proc.pid())?;
    let floor_mem = Memory::of(floor.proc.pid())?;

    if let Some(log) = kb.log_problems()? {
        problems.push(log);
    }
    let summary = Summary {
        rows,
        batch,
        idle,
        signed,
        loaded,
        agent_mem,
        floor_mem,
        tbs_len: tbs.len(),
        secs,
        problems,
    };
    summary.print();
    Ok(summary.to_json())
}

/// Resident memory of a process, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss_kib: u64,
    peak_kib: u64,
}

impl Memory {
    fn of(pid: u32) -> Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
            Ok(line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()?)
        };
        Ok(Memory {
            rss_kib: field("VmRSS:")?,
            peak_kib: field("VmHWM:")?,
        })
    }

    fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }

    fn peak_mib(&self) -> f64 {
        self.peak_kib as f64 / 1024.0
    }
}

/// Minor page faults of `pid` so far (`/proc/PID/stat`, field 10).
fn minor_faults(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which may hold spaces: state is
            // field 3, minflt field 10.
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().nth(7)?.parse().ok()
        })
        .unwrap_or(0)
}

/// The batch runs, each split at the response head and after the body.
struct Batch {
    /// (head, body received, parsed), from the request's start; sorted by
    /// total.
    runs: Vec<[Duration; 3]>,
    request_bytes: usize,
    response_bytes: usize,
    server_cpu: Duration,
    /// The daemon's minor page faults per batch.
    faults: u64,
}

impl Batch {
    fn runs_ms(&self) -> Vec<f64> {
        self.runs.iter().map(|r| r[2].as_secs_f64() * 1e3).collect()
    }

    fn median(&self) -> [Duration; 3] {
        self.runs[self.runs.len() / 2]
    }

    fn median_ms(&self) -> f64 {
        self.median()[2].as_secs_f64() * 1e3
    }
}

/// Signs one command for [`BATCH_DEVICES`] devices, one warm-up and
/// [`BATCH_RUNS`] measured times; each must add exactly one audit line
/// saying so.
async fn batch(socket: &Path, home: &Path, pid: u32) -> Result<Batch> {
    let devices: Vec<String> = (0..BATCH_DEVICES)
        .map(|i| format!("device-{i:05}"))
        .collect();
    let body = Bytes::from(serde_json::to_vec(&json!({
        "key": "agent-a",
        "devices": devices,
        "command": "create-alert",
        "args": {"level": "info"},
        "ttl": 300,
    }))?);
    let mut sender = http_connect(socket).await?;
    let mut runs = vec![];
    let mut response_bytes = 0;
    let mut server_cpu = Duration::ZERO;
    let mut faults = 0;
    for i in 0..=BATCH_RUNS {
        let lines = keybridge::audit_lines(home)?.len();
        let cpu0 = cpu_time(pid);
        let faults0 = minor_faults(pid);
        let start = Instant::now();
        let (status, bytes, head) = http_request(&mut sender, "POST", "/v1/sign", body.clone())
            .await
            .context("batch")?;
        let received = Instant::now();
        let v = json_ok(status, &bytes).context("batch")?;
        let parsed = Instant::now();
        let cpu = cpu_time(pid).saturating_sub(cpu0);
        let run_faults = minor_faults(pid).saturating_sub(faults0);
        let envelopes = v["envelopes"].as_object().context("no envelopes")?;
        ensure!(
            envelopes.len() == BATCH_DEVICES && v["root"].is_string(),
            "batch answered {} envelopes",
            envelopes.len()
        );
        let audit = keybridge::audit_lines(home)?;
        ensure!(
            audit.len() == lines + 1,
            "a batch added {} audit lines, not one",
            audit.len() - lines
        );
        let last = audit.last().unwrap();
        ensure!(
            last["batch_size"] == BATCH_DEVICES,
            "last audit line is not the batch: {last}"
        );
        if i > 0 {
            runs.push([head - start, received - start, parsed - start]);
            server_cpu += cpu;
            faults += run_faults;
        }
        response_bytes = bytes.len();
    }
    runs.sort_by_key(|r| r[2]);
    Ok(Batch {
        runs,
        request_bytes: body.len(),
        response_bytes,
        server_cpu: server_cpu / BATCH_RUNS as u32,
        faults: faults / BATCH_RUNS as u64,
    })
}

/// Starts keybridge, creates the passphrase key `agent-a` (agent `a`; a
/// label must not look like a kid prefix) and unlocks it daily.
async fn start_keybridge(bin_dir: &Path, home: &Path) -> Result<keybridge::Bridge> {
    let kb = keybridge::serve(bin_dir, home, &[]).await?;
    kb.cli(
        &[
            "--json",
            "keys",
            "create",
            "--backend",
            "passphrase",
            "--account",
            "bench",
            "--agent",
            "a",
            "--label",
            "agent-a",
            "--secret-stdin",
        ],
        Some(PASSPHRASE),
    )?;
    kb.cli(
        &["unlock", "agent-a", "--remember", "daily", "--secret-stdin"],
        Some(PASSPHRASE),
    )?;
    Ok(kb)
}

/// Starts `ssh-agent -D`, adds a fresh Ed25519 key, and asks the agent for
/// its public blob.
async fn start_agent(dir: &Path) -> Result<(ssh_agent::Agent, Vec<u8>)> {
    let agent = ssh_agent::start(dir, &[], &[]).await?;
    let key = dir.join("id_ed25519");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f"])
            .arg(&key),
        None,
    )?;
    run_ok(
        Command::new("ssh-add")
            .arg("-q")
            .arg(&key)
            .env("SSH_AUTH_SOCK", &agent.socket),
        None,
    )?;
    let key_blob = ssh_agent::identities(&agent.socket)
        .await?
        .into_iter()
        .next()
        .context("the agent holds no key")?;
    ensure!(
        ssh_agent::key_type(&key_blob)? == b"ssh-ed25519",
        "the agent's key is not Ed25519"
    );
    Ok((agent, key_blob))
}

/// The floor: HTTP/1.1 and one Ed25519 signature, nothing else.
mod floor {
    use super::*;
    use ed25519_dalek::{Signer as _, SigningKey};
    use hyper::body::Incoming;
    use std::sync::Arc;

    /// The floor process.
    pub struct Floor {
        pub proc: Proc,
        pub socket: PathBuf,
    }

    /// Starts this executable as `--floor socket HEX(tbs)`.
    pub async fn start(exe: &Path, socket: &Path, tbs: &[u8]) -> Result<Floor> {
        let child = Command::new(exe)
            .arg("--floor")
            .arg(socket)
            .arg(hex(tbs))
            .stdin(Stdio::null())
            .spawn()?;
        let mut proc = Proc {
            name: "floor",
            child,
        };
        proc.wait_for(socket).await?;
        Ok(Floor {
            proc,
            socket: socket.to_owned(),
        })
    }

    /// Serves until killed: every request, whatever it says, is answered
    /// with `{"signature": BASE64}` over `msg`.
    pub fn serve(socket: &Path, msg: Vec<u8>) -> Result<()> {
        // A fixed key: the floor measures the work, not the key.
        let key = Arc::new(SigningKey::from_bytes(&[7; 32]));
        let msg: Arc<[u8]> = msg.into();
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(async {
                let listener = tokio::net::UnixListener::bind(socket)?;
                loop {
                    let (stream, _) = listener.accept().await?;
                    let (key, msg) = (key.clone(), msg.clone());
                    let service =
                        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                            let (key, msg) = (key.clone(), msg.clone());
                            async move {
                                // Read the request as any server must.
                                req.into_body().collect().await?;
                                let sig = key.sign(&msg).to_bytes();
                                let body = format!(r#"{{"signature":"{}"}}"#, B64.encode(sig));
                                hyper::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .map_err(anyhow::Error::from)
                            }
                        });
                    tokio::spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
    }
}

/// Everything measured, printed and as JSON.
struct Summary {
    rows: Vec<(&'static str, Measurement)>,
    batch: Batch,
    idle: Memory,
    /// After the single-device measurements.
    signed: Memory,
    /// After the batches too.
    loaded: Memory,
    agent_mem: Memory,
    floor_mem: Memory,
    tbs_len: usize,
    secs: Duration,
    problems: Vec<String>,
}

impl Summary {
    fn row(&self, name: &str, conns: usize) -> &Measurement {
        keybridge_tests::bench::row(&self.rows, name, conns)
    }

    fn goals(&self) -> Vec<Goal> {
        let kb8 = self.row("keybridge", 8).throughput();
        let agent8 = self.row("ssh-agent", 8).throughput();
        let kb1 = self.row("keybridge", 1).quantile_us(0.5);
        let floor1 = self.row("floor", 1).quantile_us(0.5);
        vec![
            Goal {
                name: "throughput at 8 conns vs ssh-agent",
                measured: kb8 / agent8,
                target: goal::SPEEDUP_VS_AGENT,
                at_least: true,
                detail: format!("{kb8:.0} / {agent8:.0} sig/s"),
            },
            Goal {
                name: "p50 at 1 conn vs floor",
                measured: kb1 / floor1,
                target: goal::P50_VS_FLOOR,
                at_least: false,
                detail: format!("{kb1:.1} / {floor1:.1} us"),
            },
            Goal {
                name: "batch of 10,000 devices (ms)",
                measured: self.batch.median_ms(),
                target: goal::BATCH_MS,
                at_least: false,
                detail: format!("median of {BATCH_RUNS}"),
            },
            Goal {
                name: "idle daemon RSS (MiB)",
                measured: self.idle.rss_mib(),
                target: goal::IDLE_RSS_MIB,
                at_least: false,
                detail: format!(
                    "{:.1} MiB after signing, {:.1} after batches, peak {:.1}",
                    self.signed.rss_mib(),
                    self.loaded.rss_mib(),
                    self.loaded.peak_mib()
                ),
            },
        ]
    }

    fn print(&self) {
        println!(
            "\n== keybridge bridge benchmark: {:.1} s per measurement in {ROUNDS} interleaved \
             rounds, {}-byte Sig_structure ==\n",
            self.secs.as_secs_f64(),
            self.tbs_len
        );
        println!(
            "{:<10} {:>5} {:>10} {:>9} {:>9} {:>10} {:>10}",
            "target", "conns", "sig/s", "p50 us", "p99 us", "srv cpu/sig", "cli cpu/sig"
        );
        for (name, m) in &self.rows {
            println!("{}", m.line(name));
        }
        let [head, body, parsed] = self.batch.median();
        println!(
            "\nbatch {BATCH_DEVICES} devices (median of {BATCH_RUNS}): {:.1} ms end to end \
             = {:.1} ms to the response head + {:.1} ms body + {:.1} ms JSON parse; \
             runs {:?} ms; request {} KiB, response {} KiB; per batch the daemon used \
             {:.1} ms CPU and took {} minor page faults",
            parsed.as_secs_f64() * 1e3,
            head.as_secs_f64() * 1e3,
            (body - head).as_secs_f64() * 1e3,
            (parsed - body).as_secs_f64() * 1e3,
            self.batch
                .runs_ms()
                .iter()
                .map(|r| (r * 10.0).round() / 10.0)
                .collect::<Vec<_>>(),
            self.batch.request_bytes / 1024,
            self.batch.response_bytes / 1024,
            self.batch.server_cpu.as_secs_f64() * 1e3,
            self.batch.faults,
        );
        println!(
            "RSS: keybridge idle {:.1} MiB, after the single-device load {:.1} MiB, \
             after the batches {:.1} MiB (peak {:.1}); ssh-agent {:.1} MiB; floor {:.1} MiB",
            self.idle.rss_mib(),
            self.signed.rss_mib(),
            self.loaded.rss_mib(),
            self.loaded.peak_mib(),
            self.agent_mem.rss_mib(),
            self.floor_mem.rss_mib(),
        );
        println!("\ngoals:");
        for g in self.goals() {
            println!("{}", g.line());
        }
        for p in &self.problems {
            println!("PROBLEM: {p}");
        }
    }

    fn to_json(&self) -> Value {
        let [head, body, parsed] = self.batch.median();
        json!({
            "seconds_per_measurement": self.secs.as_secs_f64(),
            "sig_structure_bytes": self.tbs_len,
            "throughput": self.rows.iter().map(|(n, m)| m.to_json(n)).collect::<Vec<_>>(),
            "batch": {
                "devices": BATCH_DEVICES,
                "runs_ms": self.batch.runs_ms(),
                "median_ms": parsed.as_secs_f64() * 1e3,
                "median_head_ms": head.as_secs_f64() * 1e3,
                "median_body_ms": (body - head).as_secs_f64() * 1e3,
                "median_parse_ms": (parsed - body).as_secs_f64() * 1e3,
                "request_bytes": self.batch.request_bytes,
                "response_bytes": self.batch.response_bytes,
                "daemon_cpu_ms": self.batch.server_cpu.as_secs_f64() * 1e3,
                "daemon_minor_faults": self.batch.faults,
                "audit_lines_per_batch": 1,
            },
            "rss_mib": {
                "keybridge_idle": self.idle.rss_mib(),
                "keybridge_after_signing": self.signed.rss_mib(),
                "keybridge_after_batches": self.loaded.rss_mib(),
                "keybridge_peak": self.loaded.peak_mib(),
                "ssh_agent": self.agent_mem.rss_mib(),
                "floor": self.floor_mem.rss_mib(),
            },
            "goals": self.goals().iter().map(Goal::to_json).collect::<Vec<_>>(),
            "problems": self.problems,
        })
    }
}
