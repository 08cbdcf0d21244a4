//! The PKCS#11 benchmark (issue 4): what keybridge costs on top of the token.
//!
//! One SoftHSM2 token in a temp folder and one P-256 key, generated on it
//! through the daemon (`keys create --backend pkcs11`) and unlocked `daily`;
//! then three ways of signing with that same key, timed in one run:
//!
//! 1. `keybridge serve`: `POST /v1/sign` for one device over keep-alive
//!    HTTP/1.1, 1 and 8 connections;
//! 2. OpenSSH's `ssh-agent` holding the token (`ssh-add -s`, the PIN through
//!    `SSH_ASKPASS`; the agent signs in its `ssh-pkcs11-helper`):
//!    `SSH2_AGENTC_SIGN_REQUEST` over the same bytes as keybridge's
//!    `Sig_structure`, through the same client harness, 1 and 8 connections;
//! 3. the raw loop: `C_Sign` with `CKM_ECDSA` over SHA-256 of those bytes,
//!    hashed on the host as keybridge does, one thread, logged in once. It
//!    is this program started again as `pkcs11_bench --raw ...` with
//!    `SOFTHSM2_CONF` in its environment (this process never sets its own),
//!    so that the module never shares a process with the client; it measures
//!    when told on its standard input, taking turns with the other targets.
//!
//! Goals: keybridge at least 0.85 × the raw loop (at 1 and at 8 connections,
//! each against the single-threaded loop) and at least 1.0 × ssh-agent at
//! the same number of connections.
//!
//! `cargo xtask bench` builds the release binaries and runs this; it finds
//! `keybridge` next to itself and writes `target/bench/pkcs11.json`. A missed
//! goal is reported, not failed (exit 0); a target that does not start or a
//! signature that fails exits non-zero.

use anyhow::{Context as _, Result, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hyper::body::Bytes;
use keybridge_protocol::key::{hex, unhex};
use keybridge_protocol::{Algorithm, PublicKey};
use keybridge_tests::bench::{
    Goal, Measurement, Proc, Target, exit, keybridge, measure, secs_arg, ssh_agent,
};
use keybridge_tests::{SOFTHSM_MODULE, SoftHsm, TOKEN_PIN};
use serde_json::{Value, json};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The token's label.
const TOKEN: &str = "keybridge-bench";
/// The key's object label on the token, and its keybridge label.
const OBJECT: &str = "bench";
/// Concurrent keep-alive connections per measurement.
const CONNECTIONS: [usize; 2] = [1, 8];
/// Rounds each measurement is split into, taking turns between targets.
const ROUNDS: usize = 3;
/// Warm-up before each target's measurements.
const WARM_UP: Duration = Duration::from_millis(500);
/// The body every request sends to keybridge.
const SIGN_REQUEST: &str = r#"{"key":"bench","device":"device-00042","command":"remote-control","args":{"mode":"view","session":"c0ffee"},"ttl":300}"#;

/// Goals of issue 4.
mod goal {
    /// keybridge's throughput over the raw cryptoki loop's, at least.
    pub const VS_RAW: f64 = 0.85;
    /// keybridge's throughput over ssh-agent's at as many connections, at
    /// least.
    pub const VS_AGENT: f64 = 1.0;
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("--raw") => match (args.get(1), args.get(2), args.get(3), args.get(4)) {
            (Some(module), Some(token), Some(object), Some(tbs)) => match unhex(tbs) {
                Some(tbs) => raw::serve(Path::new(module), token, object, &tbs),
                None => Err(anyhow::anyhow!("--raw: TBS is not hex")),
            },
            _ => Err(anyhow::anyhow!(
                "usage: pkcs11_bench --raw MODULE TOKEN OBJECT HEX (PIN on stdin)"
            )),
        },
        _ => secs_arg("pkcs11_bench", &args, Duration::from_secs(4)).and_then(bench),
    };
    exit("pkcs11_bench", outcome)
}

/// The whole benchmark; `secs` is the length of each measurement.
fn bench(secs: Duration) -> Result<()> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let bin_dir = exe.parent().context("executable folder")?.to_owned();
    let target_dir = bin_dir.parent().context("target folder")?.to_owned();
    let hsm = SoftHsm::new()
        .context("SoftHSM2 or its tools are missing (cargo xtask deps installs them)")?;
    hsm.init_token(TOKEN);
    let tmp = tempfile::Builder::new()
        .prefix("kbp")
        .tempdir()
        .context("temp folder")?;
    // The client is one thread, as in bridge_bench: every target gets the
    // same client, and the servers get the other core.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(run(&exe, &bin_dir, tmp.path(), &hsm, secs))?;
    let out = target_dir.join("bench").join("pkcs11.json");
    std::fs::create_dir_all(out.parent().unwrap())?;
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)?;
    println!("\nwrote {}", out.display());
    Ok(())
}

async fn run(
    exe: &Path,
    bin_dir: &Path,
    tmp: &Path,
    hsm: &SoftHsm,
    secs: Duration,
) -> Result<Value> {
    let conf = hsm.conf();
    let env = [("SOFTHSM2_CONF", conf.as_path())];

    // keybridge, the key it generates on the token, and the bytes it signs.
    let kb = keybridge::serve(bin_dir, &tmp.join("kb"), &env)
        .await
        .context("starting keybridge")?;
    let uri = hsm.uri(TOKEN, OBJECT);
    kb.cli(
        &[
            "--json",
            "keys",
            "create",
            "--backend",
            "pkcs11",
            "--account",
            "bench",
            "--agent",
            "hsm",
            "--label",
            OBJECT,
            "--alg",
            "p256",
            "--uri",
            &uri,
            "--secret-stdin",
        ],
        Some(TOKEN_PIN),
    )
    .context("creating the key on the token")?;
    kb.cli(
        &["unlock", OBJECT, "--remember", "daily", "--secret-stdin"],
        Some(TOKEN_PIN),
    )?;
    let public = keybridge::public_key(&keybridge::key(&kb.socket, OBJECT).await?)?;
    ensure!(
        public.algorithm() == Algorithm::Es256,
        "the key is not P-256"
    );
    let tbs = keybridge::signed_bytes(&kb.socket, OBJECT, SIGN_REQUEST).await?;
    let kb_target = Target::Http {
        socket: kb.socket.clone(),
        body: Bytes::from_static(SIGN_REQUEST.as_bytes()),
        field: "envelope",
    };
    println!(
        "keybridge {} (pid {}), P-256 key {uri} created on the token and unlocked; \
         Sig_structure {} bytes",
        bin_dir.join("keybridge").display(),
        kb.proc.pid(),
        tbs.len(),
    );

    let (agent, helper) = start_agent(&tmp.join("agent"), &conf).await?;
    let agent_target = Target::agent(&agent.socket, &agent_blob(&agent, &public).await?, &tbs)?;
    println!(
        "ssh-agent (pid {}) holds the token through ssh-pkcs11-helper (pid {helper})",
        agent.proc.pid()
    );

    let mut raw = raw::Loop::start(exe, &conf, &tbs, &public).context("starting the raw loop")?;
    println!("raw cryptoki loop (pid {}) logged in", raw.proc.pid());

    let targets = [
        ("keybridge", &kb_target, vec![kb.proc.pid()]),
        ("ssh-agent", &agent_target, vec![agent.proc.pid(), helper]),
    ];
    let audit_before = keybridge::audit_lines(&kb.home)?.len();
    let mut kb_signatures = 0;
    for (name, target, pids) in &targets {
        let warm = measure(target, 8, WARM_UP, pids)
            .await
            .with_context(|| format!("{name}: warm-up"))?;
        if *name == "keybridge" {
            kb_signatures += warm.requests;
        }
    }
    raw.measure(WARM_UP).context("raw loop: warm-up")?;

    // Each measurement is split into rounds that take turns between the
    // targets (the raw loop in every round of both blocks), so that a slow
    // spell of the machine falls on all of them.
    let mut rows = vec![];
    let mut raw_pool = None;
    println!("{}", Measurement::header());
    for conns in CONNECTIONS {
        let mut pooled: Vec<Option<Measurement>> = targets.iter().map(|_| None).collect();
        for _ in 0..ROUNDS {
            for ((name, target, pids), pool) in targets.iter().zip(&mut pooled) {
                let m = measure(target, conns, secs / ROUNDS as u32, pids)
                    .await
                    .with_context(|| format!("{name}: {conns} connection(s)"))?;
                if *name == "keybridge" {
                    kb_signatures += m.requests;
                }
                Measurement::pool(pool, m);
            }
            let m = raw.measure(secs / ROUNDS as u32).context("raw loop")?;
            Measurement::pool(&mut raw_pool, m);
        }
        for ((name, _, _), m) in targets.iter().zip(pooled) {
            let m = m.expect("at least one round");
            println!("{}", m.line(name));
            rows.push((*name, m));
        }
    }
    let raw_row = raw_pool.expect("at least one round");
    println!("{}", raw_row.line("cryptoki"));
    rows.push(("cryptoki", raw_row));

    // Every signature must have its audit line.
    let audit_after = keybridge::audit_lines(&kb.home)?.len();
    let mut problems = vec![];
    if audit_after - audit_before != kb_signatures {
        problems.push(format!(
            "keybridge answered {kb_signatures} signatures but appended {} audit lines",
            audit_after - audit_before
        ));
    }
    if let Some(log) = kb.log_problems()? {
        problems.push(log);
    }
    raw.finish().context("raw loop")?;
    let summary = Summary {
        rows,
        tbs_len: tbs.len(),
        secs,
        problems,
    };
    summary.print();
    Ok(summary.to_json(&uri))
}

/// Starts `ssh-agent` allowing the SoftHSM2 module, and adds the token
/// with `ssh-add -s` (PIN through `SSH_ASKPASS`). Returns the agent and the
/// pid of its `ssh-pkcs11-helper`, which does the signing.
async fn start_agent(dir: &Path, conf: &Path) -> Result<(ssh_agent::Agent, u32)> {
    // ssh-agent matches the allowlist against the module's real path, and
    // Debian's /usr/lib/softhsm/libsofthsm2.so is a symlink into the
    // multiarch folder.
    let real = std::fs::canonicalize(SOFTHSM_MODULE)
        .with_context(|| format!("resolving {SOFTHSM_MODULE}"))?;
    let allow = format!("/usr/lib/softhsm/*,{}", real.display());
    let env = [("SOFTHSM2_CONF", conf)];
    let agent = ssh_agent::start(dir, &["-P", &allow], &env)
        .await
        .context("starting ssh-agent")?;
    let askpass = dir.join("askpass.sh");
    std::fs::write(&askpass, format!("#!/bin/sh\necho '{TOKEN_PIN}'\n"))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700))?;
    }
    let out = Command::new("ssh-add")
        .arg("-s")
        .arg(SOFTHSM_MODULE)
        .env("SSH_AUTH_SOCK", &agent.socket)
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .env("SOFTHSM2_CONF", conf)
        .stdin(Stdio::null())
        .output()
        .context("running ssh-add -s")?;
    ensure!(
        out.status.success(),
        "ssh-add -s {SOFTHSM_MODULE} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
    );
    let helper = children(agent.proc.pid())
        .into_iter()
        .next()
        .context("ssh-agent has no ssh-pkcs11-helper child")?;
    Ok((agent, helper))
}

/// The agent's ecdsa-sha2-nistp256 identity that is our key.
async fn agent_blob(agent: &ssh_agent::Agent, public: &PublicKey) -> Result<Vec<u8>> {
    let ours = public.to_openssh("");
    let ours = B64.decode(
        ours.split_whitespace()
            .nth(1)
            .context("OpenSSH public key line")?,
    )?;
    let ids = ssh_agent::identities(&agent.socket).await?;
    let types: Vec<String> = ids
        .iter()
        .map(|b| String::from_utf8_lossy(ssh_agent::key_type(b).unwrap_or(b"?")).into_owned())
        .collect();
    ids.into_iter()
        .find(|b| *b == ours)
        .with_context(|| format!("the agent does not hold our P-256 key (it holds {types:?})"))
}

/// The processes whose parent is `pid` (from `/proc/*/stat`).
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| {
                    // After the command name, which may hold spaces: state,
                    // then the parent's pid.
                    let rest = &s[s.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// The raw loop: cryptoki straight on the module, nothing else.
mod raw {
    use super::*;
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    use sha2::{Digest as _, Sha256};

    /// The child process, driven over its standard input and output: one
    /// line with a number of seconds starts a measurement, and one JSON line
    /// answers it.
    pub struct Loop {
        pub proc: Proc,
        input: ChildStdin,
        output: BufReader<ChildStdout>,
    }

    impl Loop {
        /// Starts `EXE --raw ...` with `SOFTHSM2_CONF=conf`, gives it the PIN,
        /// and checks that its first signature is one of `public`'s over
        /// `tbs`, i.e. that it signs with the bridge's key.
        pub fn start(exe: &Path, conf: &Path, tbs: &[u8], public: &PublicKey) -> Result<Loop> {
            let mut child = Command::new(exe)
                .args(["--raw", SOFTHSM_MODULE, TOKEN, OBJECT])
                .arg(hex(tbs))
                .env("SOFTHSM2_CONF", conf)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            let input = child.stdin.take().unwrap();
            let output = BufReader::new(child.stdout.take().unwrap());
            let mut raw = Loop {
                proc: Proc {
                    name: "raw loop",
                    child,
                },
                input,
                output,
            };
            writeln!(raw.input, "{TOKEN_PIN}")?;
            let ready = raw.answer()?;
            let signature = unhex(ready["signature"].as_str().context("no signature")?)
                .context("signature is not hex")?;
            let signature = p256::ecdsa::Signature::from_slice(&signature)
                .context("not a P-256 signature")?
                .normalize_s()
                .to_bytes();
            public
                .verify(Algorithm::Es256, tbs, &signature)
                .map_err(|_| anyhow::anyhow!("the raw loop does not sign with the bridge's key"))?;
            Ok(raw)
        }

        /// One measurement of `length`. Blocking: nothing else runs on the
        /// client meanwhile.
        pub fn measure(&mut self, length: Duration) -> Result<Measurement> {
            writeln!(self.input, "{}", length.as_secs_f64())?;
            let v = self.answer()?;
            let number = |field: &str| v[field].as_u64().with_context(|| format!("no {field}"));
            let mut latencies: Vec<Duration> = v["latencies_ns"]
                .as_array()
                .context("no latencies")?
                .iter()
                .map(|l| l.as_u64().map(Duration::from_nanos))
                .collect::<Option<_>>()
                .context("bad latency")?;
            latencies.sort_unstable();
            ensure!(!latencies.is_empty(), "no signature completed");
            Ok(Measurement {
                conns: 1,
                requests: latencies.len(),
                elapsed: Duration::from_nanos(number("elapsed_ns")?),
                latencies,
                server_cpu: Duration::from_nanos(number("cpu_ns")?),
                client_cpu: Duration::ZERO,
            })
        }

        /// Closes its input (it logs out and exits) and checks it succeeded.
        pub fn finish(mut self) -> Result<()> {
            drop(self.input);
            let status = self.proc.child.wait()?;
            ensure!(status.success(), "the raw loop exited with {status}");
            Ok(())
        }

        fn answer(&mut self) -> Result<Value> {
            let mut line = String::new();
            self.output.read_line(&mut line)?;
            if line.is_empty() {
                let status = self.proc.child.wait()?;
                bail!("the raw loop exited with {status}");
            }
            Ok(serde_json::from_str(&line)?)
        }
    }

    /// The child's side: reads the PIN, logs in on token `token` of
    /// `module`, finds the private key labelled `object`, signs once (the
    /// "ready" line), then measures whenever asked until its input closes.
    pub fn serve(module: &Path, token: &str, object: &str, tbs: &[u8]) -> Result<()> {
        let mut input = std::io::stdin().lock();
        let mut pin = String::new();
        input.read_line(&mut pin)?;
        let pin = AuthPin::from(pin.trim_end_matches(['\r', '\n']));

        let ctx = Pkcs11::new(module).with_context(|| format!("loading {}", module.display()))?;
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .context("C_Initialize")?;
        let slot = ctx
            .get_slots_with_token()
            .context("C_GetSlotList")?
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .is_ok_and(|i| i.label().trim_end() == token)
            })
            .with_context(|| format!("no token {token:?}"))?;
        let session = ctx.open_ro_session(slot).context("C_OpenSession")?;
        session
            .login(UserType::User, Some(&pin))
            .context("C_Login")?;
        let keys = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(object.as_bytes().to_vec()),
            ])
            .context("C_FindObjects")?;
        let [key] = keys[..] else {
            bail!("{} private keys labelled {object:?}", keys.len());
        };
        // What keybridge does per signature: SHA-256 on the host, then
        // C_Sign with CKM_ECDSA over the digest.
        let sign = || {
            session
                .sign(&Mechanism::Ecdsa, key, &Sha256::digest(tbs))
                .context("C_Sign")
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", json!({ "signature": hex(&sign()?) }))?;
        out.flush()?;

        let me = std::process::id();
        for line in input.lines() {
            let secs: f64 = line?.trim().parse().context("seconds")?;
            let length = Duration::from_secs_f64(secs);
            let mut latencies: Vec<u64> = Vec::with_capacity(1 << 16);
            let cpu0 = keybridge_tests::bench::cpu_time(me);
            let start = Instant::now();
            let deadline = start + length;
            loop {
                let t = Instant::now();
                if t >= deadline {
                    break;
                }
                sign()?;
                latencies.push(t.elapsed().as_nanos() as u64);
            }
            let elapsed = start.elapsed();
            let cpu = keybridge_tests::bench::cpu_time(me).saturating_sub(cpu0);
            let answer = json!({
                "elapsed_ns": elapsed.as_nanos() as u64,
                "cpu_ns": cpu.as_nanos() as u64,
                "latencies_ns": latencies,
            });
            writeln!(out, "{answer}")?;
            out.flush()?;
        }
        session.logout().context("C_Logout")?;
        Ok(())
    }
}

/// Everything measured, printed and as JSON.
struct Summary {
    rows: Vec<(&'static str, Measurement)>,
    tbs_len: usize,
    secs: Duration,
    problems: Vec<String>,
}

impl Summary {
    fn row(&self, name: &str, conns: usize) -> &Measurement {
        keybridge_tests::bench::row(&self.rows, name, conns)
    }

    fn goals(&self) -> Vec<Goal> {
        let raw = self.row("cryptoki", 1).throughput();
        let mut goals = vec![];
        for conns in CONNECTIONS {
            let kb = self.row("keybridge", conns).throughput();
            goals.push(Goal {
                name: if conns == 1 {
                    "keybridge 1 conn vs raw cryptoki"
                } else {
                    "keybridge 8 conns vs raw cryptoki"
                },
                measured: kb / raw,
                target: goal::VS_RAW,
                at_least: true,
                detail: format!("{kb:.0} / {raw:.0} sig/s, raw single-threaded"),
            });
        }
        for conns in CONNECTIONS {
            let kb = self.row("keybridge", conns).throughput();
            let agent = self.row("ssh-agent", conns).throughput();
            goals.push(Goal {
                name: if conns == 1 {
                    "keybridge vs ssh-agent, 1 conn"
                } else {
                    "keybridge vs ssh-agent, 8 conns"
                },
                measured: kb / agent,
                target: goal::VS_AGENT,
                at_least: true,
                detail: format!("{kb:.0} / {agent:.0} sig/s"),
            });
        }
        goals
    }

    fn print(&self) {
        println!(
            "\n== keybridge PKCS#11 benchmark: SoftHSM2 P-256 key, {:.1} s per measurement \
             in {ROUNDS} interleaved rounds, {}-byte Sig_structure ==\n",
            self.secs.as_secs_f64(),
            self.tbs_len
        );
        println!("{}", Measurement::header());
        for (name, m) in &self.rows {
            println!("{}", m.line(name));
        }
        let raw = self.row("cryptoki", 1);
        println!(
            "\ncryptoki: one thread, C_Sign(CKM_ECDSA) over a host SHA-256, measured in \
             every round of both blocks; its srv cpu is the loop's own.\n\
             ssh-agent's srv cpu counts the agent and its ssh-pkcs11-helper."
        );
        for conns in CONNECTIONS {
            let kb = self.row("keybridge", conns);
            println!(
                "keybridge at {conns} conn(s): {:.1} us daemon CPU per signature, \
                 {:.1} us more than the raw loop's {:.1}",
                kb.server_cpu_us(),
                kb.server_cpu_us() - raw.server_cpu_us(),
                raw.server_cpu_us()
            );
        }
        println!("\ngoals:");
        for g in self.goals() {
            println!("{}", g.line());
        }
        for p in &self.problems {
            println!("PROBLEM: {p}");
        }
    }

    fn to_json(&self, uri: &str) -> Value {
        json!({
            "seconds_per_measurement": self.secs.as_secs_f64(),
            "rounds": ROUNDS,
            "sig_structure_bytes": self.tbs_len,
            "key": {"uri": uri, "alg": "p256", "token": "SoftHSM2"},
            "throughput": self.rows.iter().map(|(n, m)| m.to_json(n)).collect::<Vec<_>>(),
            "goals": self.goals().iter().map(Goal::to_json).collect::<Vec<_>>(),
            "problems": self.problems,
        })
    }
}
