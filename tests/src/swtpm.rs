//! A software TPM 2.0 for the tests: a real `swtpm` (libtpms) on a pair of
//! loopback TCP ports, with its state in a temp folder, driven through the
//! real tpm2-tools and reachable by the real TSS (the `swtpm:` TCTI) and the
//! tpm2 OpenSSL provider.
//!
//! ```ignore
//! use keybridge_tests::swtpm::Swtpm;
//! let Some(tpm) = Swtpm::start() else {
//!     return; // SKIP outside CI when swtpm or tpm2-tools is missing
//! };
//! tpm.tpm2_ok("createprimary", &["-C", "o", "-c", "prim.ctx"]);
//! // … the backend under test opens `tpm.tcti()` …
//! ```
//!
//! Things a test must know about swtpm (0.7.1, libtpms 0.9):
//!
//! - **No resource manager.** Objects and sessions stay loaded after the
//!   client that loaded them disconnects, and the TPM has 3 transient object
//!   slots. tpm2-tools never flush what they load, so [`Swtpm::tpm2`] flushes
//!   every transient object and session after each tool — the backend's too.
//! - **One client at a time.** swtpm serves one connection on its command
//!   port; a second client (a tpm2 tool while the backend holds a TSS
//!   context open) waits until the first disconnects.
//! - **Dictionary-attack defaults:** lockout after 3 authorization failures,
//!   1000 s to recover one try, 1000 s after a failed lockout authorization.
//! - [`Swtpm::start`] makes a TPM with every PCR bank (sha1, sha256, sha384,
//!   sha512) active and no EK; [`Swtpm::start_with_ek_cert`] runs
//!   `swtpm_setup`, which also persists the EKs (two of the persistent
//!   slots) — it asks for all PCR banks too, so both kinds look alike.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// NV index of the RSA 2048 EK certificate (DER) that
/// [`Swtpm::start_with_ek_cert`] writes (TCG EK credential profile).
pub const EK_CERT_RSA_NV: u32 = 0x01c0_0002;
/// NV index of the ECC NIST P-384 EK certificate (DER).
pub const EK_CERT_ECC_NV: u32 = 0x01c0_0016;
/// NV index of the platform certificate.
pub const PLATFORM_CERT_NV: u32 = 0x01c0_8000;
/// Persistent handle of the RSA 2048 EK that `swtpm_setup` leaves behind.
pub const EK_RSA_HANDLE: u32 = 0x8101_0001;
/// Persistent handle of the ECC P-384 EK.
pub const EK_ECC_HANDLE: u32 = 0x8101_0016;

/// How long swtpm may take to listen and answer once started.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);
/// How long [`Swtpm::restart`] keeps trying to bind the same ports (another
/// process may briefly hold one of them as a client port).
const RESTART_LIMIT: Duration = Duration::from_secs(10);
/// Fresh port pairs [`Swtpm::start`] tries before giving up.
const PORT_ATTEMPTS: usize = 10;

const TPM_TOOLS: [&str; 3] = ["swtpm", "tpm2_getcap", "tpm2_flushcontext"];
const SETUP_TOOLS: [&str; 4] = ["swtpm_setup", "swtpm_ioctl", "swtpm_localca", "certtool"];

/// A running swtpm with its state in a temp folder; killed, and the folder
/// removed, on drop.
pub struct Swtpm {
    /// Holds everything: `state/`, `work/`, `swtpm.log`, and with an EK
    /// certificate the `swtpm_setup` configuration and the local CA.
    dir: tempfile::TempDir,
    state: PathBuf,
    work: PathBuf,
    /// The command port; the control port is the next one.
    port: u16,
    child: Option<Child>,
    ek_ca: Option<EkCa>,
}

/// The local CA `swtpm_localca` made: a root and the issuing CA under it.
struct EkCa {
    root: String,
    issuer: String,
}

impl Swtpm {
    /// Starts a fresh TPM 2.0 (manufactured by swtpm itself: no EK, no EK
    /// certificate, all PCR banks) and waits until it answers. `None`, with
    /// a loud SKIP line, when swtpm or tpm2-tools is missing; under
    /// `CI=true` that is a panic.
    pub fn start() -> Option<Swtpm> {
        Self::begin(false)
    }

    /// Starts a TPM 2.0 manufactured by `swtpm_setup` with an RSA 2048 and
    /// an ECC P-384 EK (persisted at [`EK_RSA_HANDLE`], [`EK_ECC_HANDLE`]),
    /// their certificates in NV ([`EK_CERT_RSA_NV`], [`EK_CERT_ECC_NV`]) and
    /// a platform certificate ([`PLATFORM_CERT_NV`]), all issued by a local
    /// CA made for this fixture alone ([`Swtpm::ek_ca_pem`]). The
    /// `swtpm_setup` and `swtpm_localca` configurations and the CA live in
    /// the temp folder; /etc, /var/lib and the user's config are never read
    /// or written. Skips and panics as [`Swtpm::start`] (it also needs
    /// swtpm-tools and gnutls-bin's certtool).
    pub fn start_with_ek_cert() -> Option<Swtpm> {
        Self::begin(true)
    }

    fn begin(with_ek_cert: bool) -> Option<Swtpm> {
        let needed: Vec<&str> = if with_ek_cert {
            TPM_TOOLS.iter().chain(&SETUP_TOOLS).copied().collect()
        } else {
            TPM_TOOLS.to_vec()
        };
        let missing: Vec<&str> = needed.into_iter().filter(|t| !on_path(t)).collect();
        if !missing.is_empty() {
            assert!(
                !crate::in_ci(),
                "swtpm test tools missing under CI: {missing:?} (run cargo xtask deps)"
            );
            eprintln!(
                "SKIP: swtpm test tools missing ({missing:?}; Debian packages swtpm, \
                 swtpm-tools, tpm2-tools, gnutls-bin); run `cargo xtask deps`"
            );
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("keybridge-swtpm-")
            .tempdir()
            .expect("creating the swtpm temp folder");
        let state = dir.path().join("state");
        let work = dir.path().join("work");
        for d in [&state, &work] {
            std::fs::create_dir(d).expect("creating a swtpm folder");
        }
        let ek_ca = with_ek_cert.then(|| manufacture(dir.path(), &state));
        let mut tpm = Swtpm {
            dir,
            state,
            work,
            port: 0,
            child: None,
            ek_ca,
        };
        tpm.launch_on_free_ports();
        Some(tpm)
    }

    /// The TSS TCTI configuration string of this TPM:
    /// `swtpm:host=127.0.0.1,port=P` (the control port is P+1). It stays
    /// the same across [`Swtpm::restart`].
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The command port (the control port is the next one).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder swtpm keeps the TPM's state in (`tpm2-00.permall`).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// A scratch folder the tools of [`Swtpm::tpm2`] run in: relative file
    /// names in their arguments (`-c prim.ctx`) land here. Removed on drop.
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    /// The process id of the running swtpm; `None` after [`Swtpm::kill`].
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What swtpm wrote to stdout and stderr, over all its runs.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills swtpm (SIGKILL: the TPM goes away mid-use, with no orderly
    /// shutdown) and returns once the process is gone and its ports are
    /// closed: open connections break and new ones are refused. Nothing
    /// happens when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts swtpm again (killing it first if it runs) from the same state
    /// folder on the same ports, so [`Swtpm::tcti`] is unchanged, and waits
    /// until it answers. What the TPM keeps across a power cycle (NV,
    /// persistent objects, hierarchy auths, DA state) survives; transient
    /// objects and sessions do not. Panics, with swtpm's log, when it does
    /// not come back within 10 s.
    pub fn restart(&mut self) {
        self.kill();
        let mut last = String::new();
        let up = crate::poll_until(RESTART_LIMIT, || match self.launch() {
            Ok(()) => true,
            Err(e) => {
                last = e;
                false
            }
        });
        assert!(
            up,
            "swtpm did not restart on port {} within {RESTART_LIMIT:?}: {last}\n--- swtpm log ---\n{}",
            self.port,
            self.log()
        );
    }

    /// Runs `tpm2_<tool> args…` (a leading `tpm2_` in `tool` is allowed)
    /// against this TPM, in [`Swtpm::work_dir`], and returns its output
    /// whatever its status. Afterwards, while swtpm runs, flushes all
    /// transient objects and sessions ([`Swtpm::flush_contexts`]), since
    /// tpm2-tools leak them and swtpm has only 3 object slots. Safe to call
    /// from several threads: swtpm serves one tool at a time.
    pub fn tpm2(&self, tool: &str, args: &[&str]) -> Output {
        let out = self.run(tool, args);
        self.flush_contexts();
        out
    }

    /// [`Swtpm::tpm2`] that insists on success (panicking with the tool's
    /// stderr and swtpm's log); returns its stdout.
    pub fn tpm2_ok(&self, tool: &str, args: &[&str]) -> String {
        let out = self.tpm2(tool, args);
        self.expect_success(tool, args, &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Flushes every transient object, loaded session and saved session
    /// (`tpm2_flushcontext -t`, `-l`, `-s`) — whoever loaded them, the
    /// backend under test included. Nothing happens while swtpm is killed;
    /// panics if a flush fails while it runs.
    pub fn flush_contexts(&self) {
        if self.child.is_none() {
            return;
        }
        for flag in ["-t", "-l", "-s"] {
            let args = [flag];
            let out = self.run("flushcontext", &args);
            self.expect_success("flushcontext", &args, &out);
        }
    }

    /// The handles of the transient objects loaded now
    /// (`tpm2_getcap handles-transient`); flushes nothing.
    pub fn transient_handles(&self) -> Vec<u32> {
        let args = ["handles-transient"];
        let out = self.run("getcap", &args);
        self.expect_success("getcap", &args, &out);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- 0x"))
            .map(|h| u32::from_str_radix(h.trim(), 16).expect("a hex handle"))
            .collect()
    }

    /// Sets the dictionary-attack parameters (`tpm2_dictionarylockout -s`,
    /// lockout auth empty): lockout after `max_tries` authorization
    /// failures, one failure forgotten every `recovery_secs`, and
    /// `lockout_recovery_secs` to wait after a failed lockout
    /// authorization. Panics if the TPM refuses.
    pub fn set_lockout(&self, max_tries: u32, recovery_secs: u32, lockout_recovery_secs: u32) {
        let (n, t, l) = (
            max_tries.to_string(),
            recovery_secs.to_string(),
            lockout_recovery_secs.to_string(),
        );
        let args = ["-s", "-n", &n, "-t", &t, "-l", &l];
        let out = self.run("dictionarylockout", &args);
        self.expect_success("dictionarylockout", &args, &out);
    }

    /// Resets the authorization failure counter, ending a lockout
    /// (`tpm2_dictionarylockout -c`, lockout auth empty). Panics if the TPM
    /// refuses.
    pub fn clear_lockout(&self) {
        let args = ["-c"];
        let out = self.run("dictionarylockout", &args);
        self.expect_success("dictionarylockout", &args, &out);
    }

    /// The local CA that issued the EK and platform certificates, as PEM:
    /// the issuing CA (`CN=swtpm-localca`) followed by its root
    /// (`CN=swtpm-localca-rootca`), ready for `openssl verify -CAfile`.
    /// `None` unless made by [`Swtpm::start_with_ek_cert`].
    pub fn ek_ca_pem(&self) -> Option<String> {
        self.ek_ca
            .as_ref()
            .map(|ca| format!("{}{}", ca.issuer, ca.root))
    }

    /// Just the root of [`Swtpm::ek_ca_pem`] (the trust anchor), as PEM.
    pub fn ek_root_ca_pem(&self) -> Option<String> {
        self.ek_ca.as_ref().map(|ca| ca.root.clone())
    }

    /// Just the issuing CA of [`Swtpm::ek_ca_pem`] (the intermediate that
    /// signed the EK certificates), as PEM.
    pub fn ek_issuing_ca_pem(&self) -> Option<String> {
        self.ek_ca.as_ref().map(|ca| ca.issuer.clone())
    }

    /// The environment variable and value that point the tpm2 OpenSSL
    /// provider (`openssl … -provider tpm2`) at this TPM:
    /// `("TPM2OPENSSL_TCTI", tcti)`.
    pub fn openssl_env(&self) -> (&'static str, String) {
        ("TPM2OPENSSL_TCTI", self.tcti())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("swtpm.log")
    }

    /// Runs a tpm2 tool against this TPM; no flush.
    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let program = if tool.starts_with("tpm2_") {
            tool.to_owned()
        } else {
            format!("tpm2_{tool}")
        };
        Command::new(&program)
            .args(args)
            .env("TPM2TOOLS_TCTI", self.tcti())
            .current_dir(&self.work)
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"))
    }

    fn expect_success(&self, tool: &str, args: &[&str], out: &Output) {
        assert!(
            out.status.success(),
            "tpm2 {tool} {args:?} failed ({}): {}\n--- swtpm log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Starts swtpm on a fresh pair of free ports, trying new ones when
    /// another process takes one first.
    fn launch_on_free_ports(&mut self) {
        let mut failures = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port_pair();
            match self.launch() {
                Ok(()) => return,
                Err(e) => failures.push(e),
            }
        }
        panic!(
            "swtpm did not start on any of {PORT_ATTEMPTS} port pairs: {failures:?}\n\
             --- swtpm log ---\n{}",
            self.log()
        );
    }

    /// Starts swtpm on `self.port` and waits until it answers. `Err` when
    /// it exits (typically: a port is taken); panics when it runs but does
    /// not answer within [`ANSWER_LIMIT`].
    fn launch(&mut self) -> Result<(), String> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("opening swtpm.log");
        let port = self.port;
        let _ = writeln!(
            log,
            "--- swtpm on 127.0.0.1:{port} (control {}) ---",
            port + 1
        );
        let child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .arg("--tpmstate")
            .arg(format!("dir={}", self.state.display()))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("starting swtpm");
        let pid = child.id();
        self.child = Some(child);
        let tcti = self.tcti();
        let mut exited = None;
        let child = self.child.as_mut().expect("just started");
        let up = crate::poll_until(ANSWER_LIMIT, || {
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    exited = Some(status.to_string());
                    return true;
                }
                Err(e) => {
                    exited = Some(e.to_string());
                    return true;
                }
            }
            // Our swtpm, not some other process on a port we thought free,
            // must hold both listening sockets before we ask it anything.
            listens_on(pid, &[port, port + 1]) && answers(&tcti)
        });
        if let Some(why) = exited {
            self.child = None;
            return Err(format!("swtpm on port {port} exited: {why}"));
        }
        if !up {
            self.kill();
            panic!(
                "swtpm on port {port} did not answer within {ANSWER_LIMIT:?}\n\
                 --- swtpm log ---\n{}",
                self.log()
            );
        }
        Ok(())
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether `program` is an executable file in a `PATH` folder.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// A port P on 127.0.0.1 that is free, with P+1 free too (the swtpm TCTI's
/// control port). Free now; the caller retries if swtpm loses the race.
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let first = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("binding a free port");
        let port = first.local_addr().expect("bound address").port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no pair of free adjacent loopback ports in 100 tries");
}

/// Whether process `pid` holds listening TCP sockets on all of `ports`:
/// their inodes in /proc/net/tcp are among the process's open files.
fn listens_on(pid: u32, ports: &[u16]) -> bool {
    use std::io::BufRead as _;
    let Ok(table) = std::fs::File::open("/proc/net/tcp") else {
        return false;
    };
    // Columns: sl local_address rem_address st tx:rx tr:when retrnsmt uid
    // timeout inode …; state 0A is LISTEN. The kernel lists every listening
    // socket before any other (its listening hash, then the established
    // one), so the scan stops at the first other state: the table holds
    // thousands of TIME_WAIT lines from the tools' connections, and reading
    // them all takes ~100 ms. (Stopping early can only miss a listener,
    // which makes the caller wait, never take a stranger for swtpm.)
    let mut wanted: Vec<(u16, String)> = Vec::new();
    for line in std::io::BufReader::new(table).lines().skip(1) {
        let Ok(line) = line else { return false };
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 10 || cols[3] != "0A" {
            break;
        }
        let port = cols[1]
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        if let Some(port) = port.filter(|p| ports.contains(p)) {
            wanted.push((port, format!("socket:[{}]", cols[9])));
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let open: Vec<PathBuf> = fds
        .filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .collect();
    ports.iter().all(|port| {
        wanted
            .iter()
            .any(|(p, inode)| p == port && open.iter().any(|o| o.as_os_str() == inode.as_str()))
    })
}

/// Whether the TPM at `tcti` answers `tpm2_getcap properties-fixed`.
fn answers(tcti: &str) -> bool {
    Command::new("tpm2_getcap")
        .arg("properties-fixed")
        .env("TPM2TOOLS_TCTI", tcti)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Manufactures the TPM state in `state` with `swtpm_setup`: EKs, their
/// certificates and a platform certificate from a local CA, with private
/// configuration files under `dir`. Returns the CA's certificates.
fn manufacture(dir: &Path, state: &Path) -> EkCa {
    let ca = dir.join("localca");
    // swtpm_setup makes its certificate scratch folder under TMPDIR.
    let tmp = dir.join("tmp");
    let config = dir.join("config");
    for d in [&ca, &tmp, &config] {
        std::fs::create_dir(d).expect("creating a swtpm_setup folder");
    }
    let setup_conf = config.join("swtpm_setup.conf");
    let localca_conf = config.join("swtpm-localca.conf");
    let localca_options = config.join("swtpm-localca.options");
    let write = |path: &Path, text: String| {
        std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    };
    write(
        &setup_conf,
        format!(
            "create_certs_tool = {}\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = {}\n",
            which("swtpm_localca").display(),
            localca_conf.display(),
            localca_options.display()
        ),
    );
    // A missing signing key makes swtpm_localca create a root CA and this
    // issuing CA under it, next to the key.
    write(
        &localca_conf,
        format!(
            "statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/issuercert.pem\n\
             certserial = {ca}/certserial\n",
            ca = ca.display()
        ),
    );
    write(
        &localca_options,
        "--platform-manufacturer keybridge\n--platform-version 1.0\n--platform-model swtpm\n"
            .to_owned(),
    );
    let out = Command::new("swtpm_setup")
        .args(["--tpm2", "--tpmstate"])
        .arg(state)
        .args([
            "--create-ek-cert",
            "--create-platform-cert",
            // RSA 2048 EK as always, plus an ECC P-384 one.
            "--ecc",
            // All banks, as a TPM swtpm makes by itself has.
            "--pcr-banks",
            "-",
            "--overwrite",
            "--config",
        ])
        .arg(&setup_conf)
        // Nothing of the user's: no ~/.config/swtpm_setup.conf and no
        // scratch files outside the temp folder.
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", &config)
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .output()
        .expect("running swtpm_setup");
    assert!(
        out.status.success(),
        "swtpm_setup failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |name: &str| {
        let path = ca.join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "swtpm_localca left no {}: {e}\n{}",
                path.display(),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    };
    EkCa {
        root: read("swtpm-localca-rootca-cert.pem"),
        issuer: read("issuercert.pem"),
    }
}

/// The full path of `program` on `PATH` (checked by [`on_path`] before).
fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{program} not on PATH"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_pairs_leave_room_for_the_control_port() {
        assert!(free_port_pair() < u16::MAX);
    }

    #[test]
    fn a_listener_of_this_process_is_found_in_proc() {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listens_on(std::process::id(), &[port]));
        assert!(!listens_on(std::process::id(), &[port, port + 1]));
        drop(l);
        assert!(!listens_on(std::process::id(), &[port]));
    }
}
