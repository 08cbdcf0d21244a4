//! The fleet-scale batch benchmark: `keybridge sign --devices FILE --out
//! OUT` as a user runs it, whole processes (the release `keybridge`, found
//! next to this binary), against the floors of the same work measured in
//! the same run.
//!
//! Setup, as a user does it: a temp `KEYBRIDGE_HOME`, `keybridge serve`, a
//! passphrase key `alice` of account `acme`, the account's key log
//! (`account init`, which spends one unlock) and a `daily` unlock. Device
//! lists of 10,000, 100,000 and 1,000,000 ids (`host-0000000`, shuffled).
//!
//! For each size and sink, the wall time of the CLI process, its peak RSS
//! (`ru_maxrss` by `wait4`, through `/usr/bin/time -f %M` when the `time`
//! package is installed, else `VmHWM` polled every 5 ms) and the daemon's
//! (`VmHWM`, reset through `/proc/PID/clear_refs` before each run, so the
//! key's Argon2 unlock does not hide the batch):
//!
//! - `--out FILE.jsonl`, against `dd if=/dev/zero bs=1M conv=fsync` of the
//!   same size (rounded up to a MiB);
//! - `--out DIR`, one `ID.cose` per device, against a plain loop in this
//!   process writing the same number of files of the same sizes into a
//!   staging folder of the same file system (`create_new` + `write_all`),
//!   one `sync -f` (syncfs) and one rename into place: the durability the
//!   CLI gives. On the work file system (a disk), and on tmpfs
//!   (`/dev/shm`, when it has room) to show our cost apart from the disk's.
//! - the tree alone: `Batch::new(ids)` (checking, sorting, hashing the
//!   RFC 6962 tree), timed in process, for every size.
//! - what the daemon's wipe of freed memory costs (`keybridge serve` runs
//!   with glibc's tcache off and `perturb` on, so that secrets C libraries
//!   free are overwritten): 1,000,000 devices to one file from a second
//!   daemon, set up the same way but started with
//!   `GLIBC_TUNABLES=glibc.malloc.perturb=0`, taking turns with ours. Both
//!   daemons' settings are read back from `/proc/PID/environ`.
//!
//! Reps: 5 at 10,000, 3 at 100,000 and for the 1,000,000 stream, 1 for
//! the 1,000,000 folders. Creating files on a shared VM disk is erratic,
//! so floor and ours take turns, ours first in even reps and the floor
//! first in odd ones (a drift falls on both), and medians are reported.
//! A stream file, and anything on tmpfs, is deleted (and the file systems
//! synced) before the next run. The folders on the disk are all kept until
//! the end, then deleted by several threads: ext4 without a journal (this
//! VM's) skips inodes freed in the last 30 s, rescanning them for every
//! new file, so files created just after 100,000 were deleted take 10x as
//! long (`recently_deleted` tops a profile), which no user's folder sees.
//! The floor of 1,000,000 files on the disk is measured only with
//! `--million-floor` (another minute to write and one to delete): the
//! 100,000 runs on the same disk and the 1,000,000 runs on tmpfs give the
//! ratio.
//!
//! Every run is checked, and a failed check exits non-zero: the summary's
//! size and root are the tree's; a folder has exactly N files; a stream
//! has N lines and its trailer. The first stream of every size is checked
//! whole: every envelope's inclusion proof against the trailer's root for
//! its own id (and leaf index), the signed bytes identical in every
//! envelope, and 20 envelopes fully verified as their device does it
//! against the account's key log; 20 files of every folder too.
//!
//! `cargo xtask bench` runs it (release build; about 5 minutes) and it
//! writes `target/bench/fleet.json`. A missed goal is reported, not
//! failed.

use anyhow::{Context as _, Result, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keybridge_protocol::ciborium::value::Value as Cbor;
use keybridge_protocol::key::{hex, unhex};
use keybridge_protocol::{Batch, BatchRoot, InclusionProof, KeyLog, ReplayCache, Verifier};
use keybridge_tests::PASSPHRASE;
use keybridge_tests::bench::{Goal, exit, keybridge};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Batch sizes.
const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];
/// Envelopes fully verified per checked stream or folder.
const SAMPLES: usize = 20;
/// The size at which a daemon that does not wipe freed memory takes turns
/// with ours (the one file sink), and that row's name.
const WIPE_N: usize = 1_000_000;
const WIPE_SINK: &str = "file, wipe off";
/// The daemon's `GLIBC_TUNABLES` for that row: any `perturb` setting keeps
/// `keybridge serve` from turning on its wipe (tcache off, perturb), and 0
/// is glibc's default.
const UNWIPED: &str = "glibc.malloc.perturb=0";
/// Threads deleting the disk's folders at the end.
const DELETERS: usize = 4;
/// Room a folder run needs per file, with some to spare (a block or a
/// page of data, the inode and the dentry).
const BYTES_PER_FILE: u64 = 8 * 1024;

mod goal {
    /// 1,000,000 devices to one `.jsonl` file, seconds, at most.
    pub const FILE_1M_S: f64 = 10.0;
    /// 1,000,000 devices to a folder, seconds, at most.
    pub const DIR_1M_S: f64 = 30.0;
    /// 10,000 devices to a folder, seconds, at most.
    pub const DIR_10K_S: f64 = 0.5;
    /// Peak RSS of the daemon and of the CLI at 1,000,000, MiB, at most.
    pub const RSS_MIB: f64 = 128.0;
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.as_slice() {
        [] => bench(false),
        [flag] if flag == "--million-floor" => bench(true),
        _ => Err(anyhow::anyhow!("usage: fleet_bench [--million-floor]")),
    };
    exit("fleet_bench", outcome)
}

/// Runs at each size: measured pairs (floor, ours).
fn reps(n: usize) -> usize {
    match n {
        ..=10_000 => 5,
        _ => 3,
    }
}

/// Device `i` of a batch (sorted order is numeric order).
fn device(i: usize) -> String {
    format!("host-{i:07}")
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn now() -> Result<i64> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64)
}

/// `VmHWM` of `pid`, KiB; `None` once it has exited.
fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line["VmHWM:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Runs `cmd` and insists it succeeds.
fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The output of `cmd`, which must succeed.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The file system type of `path` (`stat -f`: `tmpfs`, `ext2/ext3`, …).
fn fs_type(path: &Path) -> Result<String> {
    Ok(
        output(Command::new("stat").args(["-f", "-c", "%T"]).arg(path))?
            .trim()
            .to_owned(),
    )
}

/// Free bytes and free inodes of the file system of `path` (`df`).
fn fs_free(path: &Path) -> Result<(u64, u64)> {
    let text = output(
        Command::new("df")
            .args(["-B1", "--output=avail,iavail"])
            .arg(path),
    )?;
    let row = text.lines().nth(1).context("df printed no row")?;
    let mut fields = row.split_whitespace().map(str::parse::<u64>);
    match (fields.next(), fields.next()) {
        (Some(Ok(bytes)), Some(Ok(inodes))) => Ok((bytes, inodes)),
        _ => bail!("df: {row:?}"),
    }
}

/// `MemAvailable`, bytes.
fn mem_available() -> Result<u64> {
    let info = std::fs::read_to_string("/proc/meminfo")?;
    let line = info
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .context("no MemAvailable")?;
    Ok(line["MemAvailable:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()?
        * 1024)
}

/// A stream file after the first run of its size: `n` lines and its
/// trailer, and within 1% of the first run's `bytes`.
fn check_size(out: &Path, n: usize, bytes: u64) -> Result<()> {
    let len = std::fs::metadata(out)?.len();
    let lines = count_lines(out)?;
    ensure!(
        lines == n + 1,
        "{}: {lines} lines, not {}",
        out.display(),
        n + 1
    );
    ensure!(
        len.abs_diff(bytes) < bytes / 100 + 1024,
        "{}: {len} bytes, the first run's {bytes}",
        out.display(),
    );
    Ok(())
}

/// Deletes `path` (a file or a folder) if it is there and syncs every
/// file system: a deletion's work (on a disk mounted with `discard`, one
/// discard per freed extent) is done before the next measurement. Returns
/// how long it took.
fn settle(path: &Path) -> Result<f64> {
    let start = Instant::now();
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path)?,
        Ok(_) => std::fs::remove_file(path)?,
        Err(_) => {}
    }
    sync_all()?;
    let took = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    Ok(took)
}

fn sync_all() -> Result<()> {
    run_quiet(&mut Command::new("sync"))
}

/// The daemon and how the CLI is run against it.
struct Bench {
    bridge: keybridge::Bridge,
    /// The key log of account `acme` (genesis by alice).
    key_log: KeyLog,
    /// `/usr/bin/time`, when installed: the CLI's `ru_maxrss`.
    time: Option<PathBuf>,
    /// Where `/usr/bin/time` writes.
    rss_file: PathBuf,
}

/// One `keybridge sign --devices` run.
struct Run {
    wall: Duration,
    cli_kib: u64,
    daemon_kib: u64,
}

impl Bench {
    /// Starts `keybridge serve` in `home` with `env` added, creates the
    /// passphrase key alice, the account's key log (which spends one
    /// unlock) and a daily unlock.
    fn start(bin_dir: &Path, home: &Path, work: &Path, env: &[(&str, &Path)]) -> Result<Bench> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let bridge = rt
            .block_on(keybridge::serve(bin_dir, home, env))
            .context("starting keybridge serve")?;
        drop(rt);
        bridge.cli(
            &[
                "keys",
                "create",
                "--backend",
                "passphrase",
                "--account",
                "acme",
                "--agent",
                "alice",
                "--label",
                "alice",
                "--secret-stdin",
            ],
            Some(PASSPHRASE),
        )?;
        // The account's genesis spends one signature's unlock…
        let unlock = |mode: &str| {
            bridge.cli(
                &["unlock", "alice", "--remember", mode, "--secret-stdin"],
                Some(PASSPHRASE),
            )
        };
        unlock("each-task")?;
        let log = home.join("acme.log");
        bridge.cli(
            &[
                "account",
                "init",
                "--account",
                "acme",
                "--key",
                "alice",
                "--log",
                log.to_str().context("a UTF-8 path")?,
                "--recovery-file",
                home.join("acme.recovery.age")
                    .to_str()
                    .context("a UTF-8 path")?,
                "--secret-stdin",
            ],
            Some("recovery passphrase 1"),
        )?;
        // …the batches share a daily one.
        unlock("daily")?;
        let key_log = KeyLog::from_bytes(&std::fs::read(&log)?)?;
        let time = Path::new("/usr/bin/time");
        Ok(Bench {
            key_log,
            time: time.exists().then(|| time.to_owned()),
            rss_file: work.join("cli.rss"),
            bridge,
        })
    }

    /// `keybridge sign --json --key alice --devices LIST --command
    /// run-script --out OUT`, timed, with the peak RSS of both processes;
    /// its summary must be the batch `n`, `root`.
    fn sign(&self, list: &Path, out: &Path, n: usize, root: &str) -> Result<Run> {
        let daemon = self.bridge.proc.pid();
        // Resets the daemon's VmHWM to its current RSS.
        std::fs::write(format!("/proc/{daemon}/clear_refs"), "5")
            .context("resetting the daemon's peak RSS (/proc/PID/clear_refs)")?;
        let mut cmd = match &self.time {
            Some(time) => {
                let _ = std::fs::remove_file(&self.rss_file);
                let mut c = Command::new(time);
                c.args(["-f", "%M", "-o"])
                    .arg(&self.rss_file)
                    .arg(&self.bridge.bin);
                c
            }
            None => Command::new(&self.bridge.bin),
        };
        cmd.env("KEYBRIDGE_HOME", &self.bridge.home)
            .args([
                "sign",
                "--json",
                "--key",
                "alice",
                "--devices",
                list.to_str().context("a UTF-8 path")?,
                "--command",
                "run-script",
                "--out",
                out.to_str().context("a UTF-8 path")?,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let (out_put, wall, cli_kib) = if self.time.is_some() {
            let o = cmd.output().context("running keybridge sign")?;
            let wall = start.elapsed();
            let text = std::fs::read_to_string(&self.rss_file).unwrap_or_default();
            let kib = text
                .lines()
                .last()
                .and_then(|l| l.trim().parse::<u64>().ok())
                .with_context(|| format!("/usr/bin/time wrote {text:?}"));
            (o, wall, kib)
        } else {
            let mut child = cmd.spawn().context("running keybridge sign")?;
            let pid = child.id();
            let mut peak = 0;
            let wall = loop {
                if child.try_wait()?.is_some() {
                    break start.elapsed();
                }
                if let Some(k) = vm_hwm(pid) {
                    peak = peak.max(k);
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            (child.wait_with_output()?, wall, Ok(peak))
        };
        let daemon_kib = vm_hwm(daemon).context("the daemon exited")?;
        ensure!(
            out_put.status.success(),
            "keybridge sign --devices {} --out {} failed ({}): {}",
            list.display(),
            out.display(),
            out_put.status,
            String::from_utf8_lossy(&out_put.stderr)
        );
        let summary: Value = serde_json::from_slice(&out_put.stdout).with_context(|| {
            format!(
                "the summary of keybridge sign: {}",
                String::from_utf8_lossy(&out_put.stdout)
            )
        })?;
        ensure!(
            summary["devices"] == n && summary["root"] == root,
            "keybridge sign answered {summary}, not {n} devices with root {root}"
        );
        Ok(Run {
            wall,
            cli_kib: cli_kib?,
            daemon_kib,
        })
    }

    /// `SAMPLES` envelopes (spread over the sorted ids) verified as their
    /// device does it, now; `read(i)` gives device `i`'s envelope.
    fn verify_sample(&self, n: usize, read: impl Fn(usize) -> Result<Vec<u8>>) -> Result<()> {
        let now = now()?;
        for k in 0..SAMPLES {
            let i = k * n / SAMPLES + k % 7;
            let id = device(i);
            Verifier::new(&self.key_log, &id)
                .verify(&read(i)?, None, now, &mut ReplayCache::default())
                .map_err(|e| anyhow::anyhow!("{id}: the device refused its envelope: {e}"))?;
        }
        Ok(())
    }
}

/// What the folder floor writes: each device's envelope length (sorted
/// order) and one envelope to take bytes from.
struct Sizes {
    lengths: Vec<u32>,
    template: Vec<u8>,
}

/// Checks a whole `.jsonl` stream of the batch `n`, `root`: every line's
/// device, its proof against the trailer's root, the signed bytes the same
/// everywhere, a sample fully verified. Returns the envelopes' sizes.
fn check_stream(bench: &Bench, path: &Path, n: usize, root: &str) -> Result<Sizes> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let lines: Vec<&str> = text.lines().collect();
    ensure!(
        lines.len() == n + 1,
        "{}: {} lines, not {} envelopes and the trailer",
        path.display(),
        lines.len(),
        n
    );
    let trailer: Value = serde_json::from_str(lines[n]).context("the trailer")?;
    ensure!(
        trailer["complete"] == true && trailer["size"] == n && trailer["root"] == root,
        "trailer {trailer}, not complete with {n} devices and root {root}"
    );
    let signed = BatchRoot {
        size: n as u64,
        root: unhex(root)
            .and_then(|r| r.try_into().ok())
            .context("a 32-byte root")?,
    };
    let threads = std::thread::available_parallelism().map_or(2, |p| p.get());
    let chunk = n.div_ceil(threads);
    let parts: Vec<Result<Checked>> = std::thread::scope(|s| {
        let handles: Vec<_> = lines[..n]
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| {
                let signed = &signed;
                s.spawn(move || check_lines(part, c * chunk, signed))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a check thread panicked"))
            .collect()
    });
    let mut reference: Option<Vec<Cbor>> = None;
    let mut lengths = Vec::with_capacity(n);
    let mut template = vec![];
    for part in parts {
        let part = part?;
        match &reference {
            None => reference = Some(part.signed),
            Some(first) => ensure!(
                *first == part.signed,
                "the envelopes do not all carry the same signed bytes"
            ),
        }
        lengths.extend(part.lengths);
        if part.longest.len() > template.len() {
            template = part.longest;
        }
    }
    bench.verify_sample(n, |i| {
        let line: Value = serde_json::from_str(lines[i])?;
        Ok(B64.decode(line["envelope"].as_str().context("no envelope")?)?)
    })?;
    Ok(Sizes { lengths, template })
}

/// What [`check_lines`] found in its lines.
struct Checked {
    /// The envelope's items but the unprotected header (Null): protected,
    /// payload, signature, the same in every line.
    signed: Vec<Cbor>,
    /// Each envelope's length.
    lengths: Vec<u32>,
    /// The longest envelope.
    longest: Vec<u8>,
}

/// Checks the stream lines `part`, the first being device `first`: its
/// own id, its own proof to `signed`, the same signed bytes in each.
fn check_lines(part: &[&str], first: usize, signed: &BatchRoot) -> Result<Checked> {
    let mut reference: Option<Vec<Cbor>> = None;
    let mut lengths = Vec::with_capacity(part.len());
    let mut longest = vec![];
    for (k, line) in part.iter().enumerate() {
        let i = first + k;
        let id = device(i);
        let v: Value = serde_json::from_str(line).with_context(|| format!("line {}", i + 1))?;
        ensure!(
            v["device"] == id.as_str(),
            "line {}: {} not {id}",
            i + 1,
            v["device"]
        );
        let env = B64.decode(v["envelope"].as_str().context("no envelope")?)?;
        let cose: Cbor = keybridge_protocol::ciborium::from_reader(env.as_slice())
            .with_context(|| format!("{id}: envelope"))?;
        let Cbor::Tag(18, inner) = cose else {
            bail!("{id}: not a COSE_Sign1")
        };
        let Cbor::Array(mut items) = *inner else {
            bail!("{id}: not an array")
        };
        ensure!(items.len() == 4, "{id}: {} items", items.len());
        let proof = match &items[1] {
            Cbor::Map(m) => match m.as_slice() {
                [(Cbor::Text(label), proof)] if label == "kbp" => {
                    InclusionProof::from_value(proof).with_context(|| format!("{id}: proof"))?
                }
                _ => bail!("{id}: the unprotected header is not one proof"),
            },
            _ => bail!("{id}: no unprotected header"),
        };
        ensure!(
            proof.leaf_index == i as u64,
            "{id}: leaf index {}",
            proof.leaf_index
        );
        ensure!(
            proof.verify_signed(&id, signed),
            "{id}: the proof does not lead to the signed root"
        );
        items[1] = Cbor::Null;
        match &reference {
            None => reference = Some(items),
            Some(r) => ensure!(*r == items, "{id}: other signed bytes"),
        }
        lengths.push(env.len() as u32);
        if env.len() > longest.len() {
            longest = env;
        }
    }
    Ok(Checked {
        signed: reference.context("no lines")?,
        lengths,
        longest,
    })
}

/// Checks an output folder: exactly the `n` files, a sample verifying.
fn check_folder(bench: &Bench, dir: &Path, n: usize) -> Result<()> {
    let count = std::fs::read_dir(dir)
        .with_context(|| dir.display().to_string())?
        .count();
    ensure!(count == n, "{}: {count} files, not {n}", dir.display());
    bench.verify_sample(n, |i| {
        let path = dir.join(format!("{}.cose", device(i)));
        std::fs::read(&path).with_context(|| path.display().to_string())
    })
}

/// The folder floor: `n` files of the sizes of ours, written by a plain
/// loop into a staging folder in `parent`, one syncfs, one rename to
/// `parent/floor`; checked. Seconds.
fn folder_floor(parent: &Path, n: usize, sizes: &Sizes) -> Result<f64> {
    ensure!(sizes.lengths.len() == n, "the floor has {n} sizes");
    let staging = parent.join(".floor.partial");
    let target = parent.join("floor");
    let start = Instant::now();
    std::fs::create_dir(&staging)?;
    for (i, len) in sizes.lengths.iter().enumerate() {
        let path = staging.join(format!("{}.cose", device(i)));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?
            .write_all(&sizes.template[..*len as usize])?;
    }
    run_quiet(Command::new("sync").arg("-f").arg(&staging))?;
    std::fs::rename(&staging, &target)?;
    let took = start.elapsed().as_secs_f64();
    let files = std::fs::read_dir(&target)?.count();
    ensure!(files == n, "the floor wrote {files} files, not {n}");
    Ok(took)
}

/// The file floor: `dd` of `bytes` (rounded up to a MiB) with an fsync.
/// Seconds.
fn file_floor(path: &Path, bytes: u64) -> Result<f64> {
    let count = bytes.div_ceil(1 << 20);
    let start = Instant::now();
    run_quiet(
        Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", path.display()))
            .args(["bs=1M", &format!("count={count}"), "conv=fsync"]),
    )?;
    Ok(start.elapsed().as_secs_f64())
}

/// One measured sink at one size.
struct Row {
    sink: &'static str,
    fs: String,
    n: usize,
    floor_name: &'static str,
    ours: Vec<f64>,
    floor: Vec<f64>,
    cli_kib: u64,
    daemon_kib: u64,
    /// Bytes of our output (the stream file, or the envelopes' sum).
    bytes: u64,
}

impl Row {
    fn new(sink: &'static str, fs: &str, n: usize, floor_name: &'static str) -> Row {
        Row {
            sink,
            fs: fs.to_owned(),
            n,
            floor_name,
            ours: vec![],
            floor: vec![],
            cli_kib: 0,
            daemon_kib: 0,
            bytes: 0,
        }
    }

    fn add(&mut self, run: &Run) {
        self.ours.push(run.wall.as_secs_f64());
        self.cli_kib = self.cli_kib.max(run.cli_kib);
        self.daemon_kib = self.daemon_kib.max(run.daemon_kib);
    }

    fn ours_s(&self) -> f64 {
        median(&self.ours)
    }

    fn floor_s(&self) -> f64 {
        median(&self.floor)
    }

    fn to_json(&self, tree_s: f64) -> Value {
        json!({
            "sink": self.sink,
            "file_system": self.fs,
            "devices": self.n,
            "reps": self.ours.len(),
            "ours_s": self.ours,
            "ours_median_s": self.ours_s(),
            "floor": self.floor_name,
            "floor_s": self.floor,
            "floor_median_s": self.floor_s(),
            "ours_over_floor": self.ours_s() / self.floor_s(),
            "tree_median_s": tree_s,
            "ours_over_tree": self.ours_s() / tree_s,
            "cli_peak_rss_mib": mib(self.cli_kib),
            "daemon_peak_rss_mib": mib(self.daemon_kib),
            "output_bytes": self.bytes,
        })
    }
}

/// The whole benchmark; `million_floor`: also the floor of 1,000,000 files
/// on the disk.
fn bench(million_floor: bool) -> Result<()> {
    let begun = Instant::now();
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().context("executable folder")?.to_owned();
    let target_dir = bin_dir.parent().context("target folder")?.to_owned();

    // The work folder must be on a disk: the temp folder unless it is a
    // tmpfs, then the target folder.
    let mut work_parent = std::env::temp_dir();
    if fs_type(&work_parent)? == "tmpfs" {
        work_parent = target_dir.join("bench");
        std::fs::create_dir_all(&work_parent)?;
    }
    let tmp = tempfile::Builder::new()
        .prefix("kbf")
        .tempdir_in(&work_parent)?;
    let work = tmp.path();
    let work_fs = fs_type(work)?;
    // tmpfs, when there is one (its room is checked before each size).
    let shm = Path::new("/dev/shm");
    let tmpfs = if shm.is_dir() && fs_type(shm)? == "tmpfs" {
        Some(tempfile::Builder::new().prefix("kbf").tempdir_in(shm)?)
    } else {
        None
    };
    let mut notes: Vec<String> = vec![];

    // The daemon, the key, the key log, the daily unlock; and a second
    // daemon whose freed memory is not wiped, to show what the wipe costs.
    let bench = Bench::start(&bin_dir, &work.join("home"), work, &[])?;
    let unwiped = Bench::start(
        &bin_dir,
        &work.join("home-unwiped"),
        work,
        &[("GLIBC_TUNABLES", Path::new(UNWIPED))],
    )?;
    for (b, wiped) in [(&bench, true), (&unwiped, false)] {
        let pid = b.bridge.proc.pid();
        // glibc cuts GLIBC_TUNABLES at its colons in place, as it parses it.
        let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
        let environ = String::from_utf8_lossy(&environ);
        ensure!(
            environ.contains("glibc.malloc.perturb=165") == wiped,
            "keybridge serve (pid {pid}) runs with {:?}: the wipe should be {}",
            environ
                .split('\0')
                .filter(|v| v.contains("glibc."))
                .collect::<Vec<_>>(),
            if wiped { "on" } else { "off" }
        );
    }
    let cli_rss_method = if bench.time.is_some() {
        "ru_maxrss (wait4, /usr/bin/time -f %M)"
    } else {
        "VmHWM polled every 5 ms (/usr/bin/time is not installed: apt install time)"
    };
    println!(
        "keybridge {} (pid {}), key alice unlocked daily; work in {} ({work_fs}){}; \
         CLI peak RSS: {cli_rss_method}",
        bench.bridge.bin.display(),
        bench.bridge.proc.pid(),
        work.display(),
        tmpfs
            .as_ref()
            .map(|t| format!(", tmpfs runs in {}", t.path().display()))
            .unwrap_or_default(),
    );

    // The lists, and the tree alone for each.
    let mut lists = BTreeMap::new();
    let mut roots = BTreeMap::new();
    let mut tree: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for n in SIZES {
        let ids: Vec<String> = (0..n).map(|i| device((i * 7919) % n)).collect();
        let list = work.join(format!("list-{n}.txt"));
        let mut text = ids.join("\n");
        text.push('\n');
        std::fs::write(&list, text)?;
        lists.insert(n, list);
        for _ in 0..reps(n) {
            let start = Instant::now();
            let batch = Batch::new(&ids)?;
            let took = start.elapsed().as_secs_f64();
            tree.entry(n).or_default().push(took);
            roots.insert(n, hex(&batch.root()));
        }
        println!(
            "{n} devices: Batch::new (check, sort, hash the tree) median {:.3} s",
            median(&tree[&n])
        );
    }
    sync_all()?;

    let mut rows: Vec<Row> = vec![];
    let mut sizes: BTreeMap<usize, Sizes> = BTreeMap::new();

    // 1. One .jsonl file, against dd of the same size. Ours goes first in
    // even reps and the floor in odd ones, so that a drift of the machine
    // falls on both. At WIPE_N the daemon that does not wipe freed memory
    // takes turns with ours the same way.
    let mut unwiped_row = Row::new(WIPE_SINK, &work_fs, WIPE_N, "dd bs=1M conv=fsync");
    for n in SIZES {
        let (list, root) = (&lists[&n], &roots[&n]);
        let mut row = Row::new("one .jsonl file", &work_fs, n, "dd bs=1M conv=fsync");
        let out = work.join(format!("fleet-{n}.jsonl"));
        let dd = work.join(format!("dd-{n}"));
        for rep in 0..reps(n) {
            if rep % 2 == 1 {
                row.floor.push(file_floor(&dd, row.bytes)?);
                settle(&dd)?;
            }
            if n == WIPE_N && rep % 2 == 1 {
                unwiped_row.add(&unwiped.sign(list, &out, n, root)?);
                check_size(&out, n, row.bytes)?;
                settle(&out)?;
            }
            let run = bench.sign(list, &out, n, root)?;
            let len = std::fs::metadata(&out)?.len();
            if rep == 0 {
                // Checked whole once; the sizes of its envelopes are what
                // the folder floor writes.
                let started = Instant::now();
                sizes.insert(n, check_stream(&bench, &out, n, root)?);
                println!(
                    "{n} devices to a file: every envelope's proof and signed bytes checked, \
                     {SAMPLES} verified as their device does ({:.1} s)",
                    started.elapsed().as_secs_f64(),
                );
                row.bytes = len;
            } else {
                check_size(&out, n, row.bytes)?;
            }
            row.add(&run);
            settle(&out)?;
            if n == WIPE_N && rep % 2 == 0 {
                unwiped_row.add(&unwiped.sign(list, &out, n, root)?);
                check_size(&out, n, row.bytes)?;
                settle(&out)?;
            }
            if rep % 2 == 0 {
                row.floor.push(file_floor(&dd, row.bytes)?);
                settle(&dd)?;
            }
        }
        if n == WIPE_N {
            unwiped_row.floor.clone_from(&row.floor);
            unwiped_row.bytes = row.bytes;
            println!("{}", line(&row, median(&tree[&n])));
            println!("{}", line(&unwiped_row, median(&tree[&n])));
            rows.push(row);
            rows.push(std::mem::replace(
                &mut unwiped_row,
                Row::new(WIPE_SINK, &work_fs, 0, ""),
            ));
        } else {
            println!("{}", line(&row, median(&tree[&n])));
            rows.push(row);
        }
    }
    if let Some(problem) = unwiped.bridge.log_problems()? {
        notes.push(format!("the daemon without the wipe: {problem}"));
    }
    drop(unwiped);

    // 2. A folder, on the disk and on tmpfs, against the plain loop: (size,
    // parent, reps, with the floor). On the disk every folder is kept until
    // the end: ext4 without a journal (this VM's) does not hand out an inode
    // freed in the last 30 s, and skipping over them, each create rescans
    // the group: right after deleting 100,000 files, creating files is 10x
    // slower (`recently_deleted` in a profile). A user's folder is not
    // written on such a file system; nor is ours here.
    let mut plan: Vec<(usize, &Path, usize, bool)> = vec![
        (10_000, work, reps(10_000), true),
        (100_000, work, reps(100_000), true),
    ];
    let on_disk: u64 = plan
        .iter()
        .map(|(n, _, r, _)| (*n * *r * 2) as u64)
        .sum::<u64>()
        + if million_floor { 2_000_000 } else { 1_000_000 };
    let (disk_bytes, disk_inodes) = fs_free(work)?;
    if disk_bytes >= on_disk * BYTES_PER_FILE && disk_inodes >= on_disk + 1000 {
        plan.push((1_000_000, work, 1, million_floor));
        if !million_floor {
            notes.push(
                "the floor of 1,000,000 files on the disk is not measured (a minute to write \
                 and one to delete): fleet_bench --million-floor"
                    .into(),
            );
        }
    } else {
        notes.push(format!(
            "the disk run of 1,000,000 files is skipped: {} GB free, {disk_inodes} inodes",
            disk_bytes / 1_000_000_000
        ));
    }
    match &tmpfs {
        None => notes.push("no tmpfs at /dev/shm: the tmpfs runs are skipped".into()),
        Some(t) => {
            for n in [100_000, 1_000_000] {
                let need = n as u64 * BYTES_PER_FILE;
                let (bytes, inodes) = fs_free(t.path())?;
                let mem = mem_available()?;
                if bytes >= need && mem >= need && inodes >= n as u64 + 100 {
                    plan.push((n, t.path(), if n >= 1_000_000 { 1 } else { reps(n) }, true));
                } else {
                    notes.push(format!(
                        "the tmpfs run of {n} files is skipped: {} MB free, {} MB of memory \
                         available, {inodes} inodes; it needs {} MB",
                        bytes / 1_000_000,
                        mem / 1_000_000,
                        need / 1_000_000
                    ));
                }
            }
        }
    }
    let folders = work.join("folders");
    std::fs::create_dir(&folders)?;
    for (n, parent, reps, with_floor) in plan {
        let (list, root) = (&lists[&n], &roots[&n]);
        let fs = fs_type(parent)?;
        let on_tmpfs = fs == "tmpfs";
        let sink = if on_tmpfs {
            "folder on tmpfs"
        } else {
            "folder on disk"
        };
        let mut row = Row::new(sink, &fs, n, "loop create+write, syncfs");
        let sz = &sizes[&n];
        row.bytes = sz.lengths.iter().map(|l| u64::from(*l)).sum();
        for rep in 0..reps {
            let base = if on_tmpfs { parent } else { &folders }.join(format!("{n}-{rep}"));
            std::fs::create_dir(&base)?;
            let floor = |row: &mut Row| -> Result<()> {
                row.floor.push(folder_floor(&base, n, sz)?);
                if on_tmpfs {
                    settle(&base.join("floor"))?;
                }
                Ok(())
            };
            if with_floor && rep % 2 == 1 {
                floor(&mut row)?;
            }
            let out = base.join("out");
            let run = bench.sign(list, &out, n, root)?;
            check_folder(&bench, &out, n)?;
            let beside: Vec<_> = std::fs::read_dir(&base)?
                .filter_map(Result::ok)
                .map(|e| e.file_name())
                .filter(|f| f != "out" && f != "floor")
                .collect();
            ensure!(beside.is_empty(), "left beside the folder: {beside:?}");
            row.add(&run);
            if on_tmpfs {
                settle(&out)?;
            }
            if with_floor && rep % 2 == 0 {
                floor(&mut row)?;
            }
            if on_tmpfs {
                settle(&base)?;
            }
        }
        println!("{}", line(&row, median(&tree[&n])));
        rows.push(row);
    }

    if let Some(problem) = bench.bridge.log_problems()? {
        notes.push(problem);
    }
    let measured = begun.elapsed();
    let cleaning = Instant::now();
    let deleted = delete_all(&folders)?;
    let cleanup = cleaning.elapsed();
    println!(
        "deleted the {deleted} files on the disk in {:.1} s ({DELETERS} threads)",
        cleanup.as_secs_f64()
    );
    let took = begun.elapsed();

    // The table, the goals, the JSON.
    println!(
        "\n== keybridge sign --devices: whole processes, medians of the reps; \
         floors measured in turn with ours =="
    );
    println!("{}", header());
    for row in &rows {
        println!("{}", line(row, median(&tree[&row.n])));
    }
    println!("tree alone (Batch::new, in process), median s:");
    for (n, t) in &tree {
        println!("  {n:>9}  {:.3}  runs {}", median(t), fmt_runs(t));
    }
    for row in &rows {
        println!(
            "runs {:<16} {:>9}: ours {}  floor {}",
            row.sink,
            row.n,
            fmt_runs(&row.ours),
            fmt_runs(&row.floor),
        );
    }
    let find = |sink: &str, n: usize| rows.iter().find(|r| r.sink == sink && r.n == n);
    let figure = |sink: &str, n: usize| find(sink, n).map_or(f64::NAN, Row::ours_s);
    let file_1m = find("one .jsonl file", 1_000_000);
    let at_1m: Vec<&Row> = rows.iter().filter(|r| r.n == 1_000_000).collect();
    let daemon_1m = at_1m.iter().map(|r| r.daemon_kib).max().unwrap_or(0);
    let cli_1m = at_1m.iter().map(|r| r.cli_kib).max().unwrap_or(0);
    let goals = [
        Goal {
            name: "1,000,000 devices to one file (s)",
            measured: figure("one .jsonl file", 1_000_000),
            target: goal::FILE_1M_S,
            at_least: false,
            detail: format!(
                "dd of the same {:.0} MB: {:.2} s; with the daemon's wipe of freed memory \
                 off: {:.2} s (the wipe costs {:.2}x)",
                file_1m.map_or(0.0, |r| r.bytes as f64 / 1e6),
                file_1m.map_or(f64::NAN, Row::floor_s),
                figure(WIPE_SINK, WIPE_N),
                figure("one .jsonl file", WIPE_N) / figure(WIPE_SINK, WIPE_N),
            ),
        },
        Goal {
            name: "1,000,000 devices to a folder (s)",
            measured: figure("folder on disk", 1_000_000),
            target: goal::DIR_1M_S,
            at_least: false,
            detail: format!(
                "floor {}; 100,000 on disk {:.2}x floor; on tmpfs {:.1} s, floor {:.1} s",
                find("folder on disk", 1_000_000)
                    .map(Row::floor_s)
                    .filter(|f| !f.is_nan())
                    .map_or("not measured".into(), |f| format!("{f:.1} s")),
                find("folder on disk", 100_000).map_or(f64::NAN, |r| r.ours_s() / r.floor_s()),
                figure("folder on tmpfs", 1_000_000),
                find("folder on tmpfs", 1_000_000).map_or(f64::NAN, Row::floor_s),
            ),
        },
        Goal {
            name: "10,000 devices to a folder (s)",
            measured: figure("folder on disk", 10_000),
            target: goal::DIR_10K_S,
            at_least: false,
            detail: format!(
                "floor {:.2} s",
                find("folder on disk", 10_000).map_or(f64::NAN, Row::floor_s)
            ),
        },
        Goal {
            name: "daemon peak RSS at 1,000,000 (MiB)",
            measured: mib(daemon_1m),
            target: goal::RSS_MIB,
            at_least: false,
            detail: "VmHWM, reset before each run".into(),
        },
        Goal {
            name: "CLI peak RSS at 1,000,000 (MiB)",
            measured: mib(cli_1m),
            target: goal::RSS_MIB,
            at_least: false,
            detail: cli_rss_method.into(),
        },
    ];
    println!("\ngoals:");
    for g in &goals {
        println!("{} {}", if g.met() { "✔" } else { "✘" }, g.line());
    }
    for n in &notes {
        println!("NOTE: {n}");
    }
    println!(
        "total {:.0} s: measuring {:.0} s, deleting the disk's folders {:.0} s",
        took.as_secs_f64(),
        measured.as_secs_f64(),
        cleanup.as_secs_f64()
    );

    let out = target_dir.join("bench").join("fleet.json");
    std::fs::create_dir_all(out.parent().context("bench folder")?)?;
    std::fs::write(
        &out,
        serde_json::to_vec_pretty(&json!({
            "work_file_system": work_fs,
            "cli_rss": cli_rss_method,
            "daemon_rss": "VmHWM after the CLI exited, reset through clear_refs before each run",
            "tree_s": tree.iter().map(|(n, t)| (n.to_string(), json!({
                "runs": t, "median": median(t),
            }))).collect::<serde_json::Map<_, _>>(),
            "rows": rows.iter().map(|r| r.to_json(median(&tree[&r.n]))).collect::<Vec<_>>(),
            "goals": goals.iter().map(Goal::to_json).collect::<Vec<_>>(),
            "notes": notes,
            "total_s": took.as_secs_f64(),
            "measuring_s": measured.as_secs_f64(),
            "deleting_s": cleanup.as_secs_f64(),
        }))?,
    )?;
    println!("wrote {}", out.display());
    Ok(())
}

/// Deletes `root` and everything in it, the files by [`DELETERS`] threads
/// (an unlink waits for its discards outside the folder's lock, so they
/// overlap), and syncs. Returns the number of files.
fn delete_all(root: &Path) -> Result<usize> {
    let mut files = vec![];
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    let chunk = files.len().div_ceil(DELETERS).max(1);
    std::thread::scope(|s| {
        let threads: Vec<_> = files
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().try_for_each(std::fs::remove_file)))
            .collect();
        threads
            .into_iter()
            .try_for_each(|t| t.join().expect("a deleting thread panicked"))
    })?;
    std::fs::remove_dir_all(root)?;
    sync_all()?;
    Ok(files.len())
}

/// Lines (newlines) in the file at `path`.
fn count_lines(path: &Path) -> Result<usize> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let mut buf = vec![0u8; 1 << 20];
    let mut lines = 0;
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(lines),
            got => lines += buf[..got].iter().filter(|b| **b == b'\n').count(),
        }
    }
}

fn fmt_runs(v: &[f64]) -> String {
    let parts: Vec<String> = v.iter().map(|s| format!("{s:.3}")).collect();
    format!("[{}]", parts.join(", "))
}

fn header() -> String {
    format!(
        "{:<16} {:>9} {:>4} {:>8} {:>8} {:>7} {:>7} {:>7} {:>8} {:>8}  floor",
        "sink",
        "devices",
        "reps",
        "ours s",
        "floor s",
        "/floor",
        "tree s",
        "/tree",
        "CLI MiB",
        "dmn MiB"
    )
}

/// `v` with `precision` decimals right-aligned in `width`, or a dash.
fn num(v: f64, width: usize, precision: usize) -> String {
    if v.is_finite() {
        format!("{v:>width$.precision$}")
    } else {
        format!("{:>width$}", "-")
    }
}

fn line(r: &Row, tree_s: f64) -> String {
    format!(
        "{:<16} {:>9} {:>4} {} {} {} {} {} {} {}  {}",
        r.sink,
        r.n,
        r.ours.len(),
        num(r.ours_s(), 8, 3),
        num(r.floor_s(), 8, 3),
        num(r.ours_s() / r.floor_s(), 7, 2),
        num(tree_s, 7, 3),
        num(r.ours_s() / tree_s, 7, 1),
        num(mib(r.cli_kib), 8, 1),
        num(mib(r.daemon_kib), 8, 1),
        if r.floor.is_empty() {
            "(not measured)"
        } else {
            r.floor_name
        }
    )
}
