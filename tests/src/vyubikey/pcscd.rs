//! The one pcscd the tests share, with a private reader config of
//! [`READERS`] vpcd readers, and the leases that give each virtual card a
//! reader of its own.
//!
//! Two readers, not more: Debian's vpcd driver keeps one connection per slot
//! number in global state (`VICC_MAX_SLOTS` = 2), so a second config entry
//! silently steals the first one's slots. Tests queue for the two readers;
//! a test that needs two cards claims both at once
//! ([`ReaderLease::claim_many`]) so that no two tests wait for each other.
//!
//! pcscd is one per machine (its socket is /run/pcscd/pcscd.comm), and
//! nextest runs every test in a process of its own: the first test to need it
//! starts it (under a lock file) and later ones, in any process, reuse it. A
//! pcscd started with any other config (the system one) is stopped first,
//! loudly. Each card claims a reader port with a lock file of its own, held
//! until the card is dropped.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The first vpcd port (reader 0). Debian's /etc/reader.conf.d/vpcd uses
/// 35963, but that is inside Linux's ephemeral range (32768–60999): vpcd
/// binds without SO_REUSEADDR, so when the shared pcscd has to be started
/// again the port can be held by any outgoing connection of a parallel test
/// (thousands of swtpm and HTTP connections in TIME_WAIT), and pcscd then
/// fails with "Address already in use". Below the range nothing takes it.
pub const FIRST_PORT: u16 = 32_690;
/// How many virtual readers the private config offers (vpcd's limit).
pub const READERS: u16 = 2;
/// Reader names start like a real YubiKey's, so that ykcs11 (which only looks
/// at readers whose name starts with "Yubico") and yubico-piv-tool see them.
pub const READER_PREFIX: &str = "Yubico YubiKey OTP+FIDO+CCID";

const PCSCD: &str = "/usr/sbin/pcscd";
const VPCD_DRIVER: &str = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so";
/// Where the config, the log and the lock files live. The version in the
/// name makes a pcscd started with an older layout count as foreign.
const STATE_DIR: &str = "/tmp/keybridge-vyubikey-v3";

/// A component the fixture needs is not installed.
#[derive(Debug)]
pub struct Missing(pub String);

fn state_dir() -> PathBuf {
    PathBuf::from(STATE_DIR)
}

fn config_path() -> PathBuf {
    state_dir().join("reader.conf")
}

/// The reader config: one vpcd entry, whose two slots listen on
/// [`FIRST_PORT`] and the next port.
fn config_text() -> String {
    format!(
        "FRIENDLYNAME \"{READER_PREFIX}\"\nDEVICENAME /dev/null:{FIRST_PORT}\n\
         LIBPATH {VPCD_DRIVER}\nCHANNELID {FIRST_PORT}\n"
    )
}

/// The PC/SC name of the reader whose card connects on `port`.
pub fn reader_name(port: u16) -> String {
    format!("{READER_PREFIX} 00 {:02X}", port - FIRST_PORT)
}

/// Takes `path`'s lock file, waiting at most `limit`.
fn lock(path: &Path, limit: Duration) -> Result<File, String> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let deadline = Instant::now() + limit;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(25));
            }
            Err(e) => return Err(format!("locking {}: {e}", path.display())),
        }
    }
}

/// Makes sure the shared pcscd runs with the private reader config and lists
/// all its readers. `Err(Missing)` when pcscd or vpcd is not installed; any
/// other failure panics with what went wrong.
pub fn ensure_running() -> Result<(), Missing> {
    for path in [PCSCD, VPCD_DRIVER] {
        if !Path::new(path).exists() {
            return Err(Missing(format!(
                "{path} is missing (Debian packages pcscd, vsmartcard-vpcd)"
            )));
        }
    }
    std::fs::create_dir_all(state_dir()).expect("creating the vyubikey state folder");
    let _guard = lock(&state_dir().join("pcscd.lock"), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    let conf = config_path();
    if std::fs::read_to_string(&conf).ok().as_deref() != Some(&config_text()) {
        std::fs::write(&conf, config_text()).expect("writing the reader config");
    }
    let conf_arg = conf.to_str().expect("a UTF-8 path").to_owned();
    // A test's private pcscd (see [`PrivatePcscd`]) is left alone.
    let running: Vec<_> = pcscd_processes()
        .into_iter()
        .filter(|(_, args)| !is_private(args))
        .collect();
    let ours = running.iter().any(|(_, args)| {
        args.windows(2)
            .any(|w| (w[0] == "-c" || w[0] == "--config") && w[1] == conf_arg)
    });
    // Ours, but slow to answer on a loaded machine: give it time before
    // restarting it (a restart cuts every other test's card off).
    if ours && readers_listed(Duration::from_secs(15)) {
        return Ok(());
    }
    for (pid, args) in &running {
        eprintln!(
            "vyubikey: stopping pcscd {pid} ({}): the tests need their own reader config",
            args.join(" ")
        );
        stop(*pid);
    }
    let log = File::create(state_dir().join("pcscd.log")).expect("creating pcscd.log");
    // setsid -f: pcscd outlives the test process that started it (others
    // use it too), in a session of its own so no process-group kill reaches
    // it, with no pipe of the test's left open.
    let status = Command::new("setsid")
        .args(["-f", PCSCD, "--foreground", "--config", &conf_arg])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .status()
        .expect("running setsid (util-linux)");
    assert!(status.success(), "starting pcscd failed: {status}");
    assert!(
        readers_listed(Duration::from_secs(10)),
        "pcscd did not list the {READERS} vpcd readers within 10 s (root is needed for \
         /run/pcscd; a systemd pcscd.socket must be stopped). Its log:\n{}",
        std::fs::read_to_string(state_dir().join("pcscd.log")).unwrap_or_default()
    );
    Ok(())
}

/// Running (not zombie) pcscd processes and their arguments.
fn pcscd_processes() -> Vec<(u32, Vec<String>)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let exe = Path::new(args.first()?).file_name()?.to_str()?.to_owned();
        (exe == "pcscd" && !is_zombie(pid)).then_some((pid, args))
    })
    .collect()
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Stops process `pid` (TERM, then KILL after 5 s) and waits until it is gone.
fn stop(pid: u32) {
    let gone = || !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid);
    for (signal, wait) in [("-TERM", 5), ("-KILL", 5)] {
        let _ = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status();
        if crate::poll_until(Duration::from_secs(wait), gone) {
            return;
        }
    }
    panic!("pcscd {pid} did not stop");
}

/// True once pcscd lists every reader of the private config (within `limit`).
fn readers_listed(limit: Duration) -> bool {
    crate::poll_until(limit, || {
        let Ok(ctx) = pcsc::Context::establish(pcsc::Scope::User) else {
            return false;
        };
        let Ok(names) = ctx.list_readers_owned() else {
            return false;
        };
        let names: Vec<String> = names
            .iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        (FIRST_PORT..FIRST_PORT + READERS).all(|p| names.contains(&reader_name(p)))
    })
}

/// The vpcd port of a [`PrivatePcscd`]'s reader (its second slot takes the
/// next port). Below Linux's ephemeral range (32768–60999): a restarted
/// pcscd must bind it again, and vpcd binds without SO_REUSEADDR, so a port
/// in that range can be taken meanwhile by any outgoing connection of a
/// parallel test (thousands of swtpm and HTTP connections in TIME_WAIT).
pub const PRIVATE_PORT: u16 = 32_700;

// The shared ports and the private one (and its second slot) lie below the
// ephemeral range and do not overlap.
const _: () = assert!(FIRST_PORT + READERS <= PRIVATE_PORT && PRIVATE_PORT + 1 < 32_768);

fn private_dir() -> PathBuf {
    state_dir().join("private")
}

fn private_config() -> PathBuf {
    private_dir().join("reader.conf")
}

/// Whether a pcscd's arguments name the private config.
fn is_private(args: &[String]) -> bool {
    let conf = private_config();
    args.iter().any(|a| Path::new(a) == conf)
}

/// A pcscd of one test's own, for tests that stop and restart pcscd (the
/// shared one must stay up for everyone else), with one vpcd reader on
/// [`PRIVATE_PORT`] named like the shared ones.
///
/// pcscd 1.9.9 always listens on /run/pcscd/pcscd.comm; this one runs in a
/// mount namespace of its own (`unshare -m`, root) where a private folder
/// is mounted over /run/pcscd, so its socket appears at
/// [`PrivatePcscd::socket`]. Clients reach it with `PCSCLITE_CSOCK_NAME`
/// set to that path — the daemon under test gets it in its environment; the
/// test process itself keeps talking to the shared pcscd (libpcsclite reads
/// the variable once per process), so cards in this reader are not waited
/// for through PC/SC here. One at a time per machine (a lock file).
pub struct PrivatePcscd {
    run: PathBuf,
    child: Option<std::process::Child>,
    _lock: File,
}

impl PrivatePcscd {
    /// Starts it. `None`, with a SKIP line, when pcscd or vpcd is missing
    /// (a panic under `CI=true`).
    pub fn start() -> Option<Self> {
        if let Err(Missing(what)) = ensure_running() {
            assert!(
                !crate::in_ci(),
                "private pcscd unavailable under CI: {what} (run cargo xtask deps)"
            );
            eprintln!("SKIP: private pcscd unavailable: {what}; run `cargo xtask deps`");
            return None;
        }
        std::fs::create_dir_all(private_dir()).expect("creating the private pcscd folder");
        let lock = lock(&state_dir().join("private.lock"), Duration::from_secs(300))
            .unwrap_or_else(|e| panic!("{e}"));
        // A test killed before its drop ran leaves its pcscd behind.
        for (pid, args) in pcscd_processes() {
            if is_private(&args) {
                stop(pid);
            }
        }
        std::fs::write(
            private_config(),
            format!(
                "FRIENDLYNAME \"{READER_PREFIX}\"\nDEVICENAME /dev/null:{PRIVATE_PORT}\n\
                 LIBPATH {VPCD_DRIVER}\nCHANNELID {PRIVATE_PORT}\n"
            ),
        )
        .expect("writing the private reader config");
        let run = private_dir().join("run");
        std::fs::create_dir_all(&run).expect("creating the private socket folder");
        let mut p = PrivatePcscd {
            run,
            child: None,
            _lock: lock,
        };
        p.run_pcscd();
        Some(p)
    }

    /// The socket clients reach it on (`PCSCLITE_CSOCK_NAME`).
    pub fn socket(&self) -> PathBuf {
        self.run.join("pcscd.comm")
    }

    /// The environment a process needs to use this pcscd.
    pub fn env(&self) -> (&'static str, PathBuf) {
        ("PCSCLITE_CSOCK_NAME", self.socket())
    }

    /// Stops pcscd (TERM) and waits until it is gone: every client's
    /// context and card handle goes with it, as in a restart.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(child.id());
            let _ = child.wait();
        }
    }

    /// Starts pcscd again after [`PrivatePcscd::stop`].
    pub fn restart(&mut self) {
        self.stop();
        self.run_pcscd();
    }

    fn run_pcscd(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        std::fs::create_dir_all("/run/pcscd").expect("creating /run/pcscd");
        let log = File::create(private_dir().join("pcscd.log")).expect("creating pcscd.log");
        let script = format!(
            "mount --bind '{}' /run/pcscd && exec {PCSCD} --foreground --config '{}'",
            self.run.display(),
            private_config().display()
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("running unshare (util-linux)");
        self.child = Some(child);
        let socket = self.socket();
        assert!(
            crate::poll_until(Duration::from_secs(10), || socket.exists()),
            "the private pcscd did not open {} within 10 s (root is needed). Its log:\n{}",
            socket.display(),
            std::fs::read_to_string(private_dir().join("pcscd.log")).unwrap_or_default()
        );
    }
}

impl Drop for PrivatePcscd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A reader port claimed for one card; released on drop.
#[derive(Debug)]
pub struct ReaderLease {
    port: u16,
    /// `None` for the reader of a [`PrivatePcscd`], whose own lock covers it.
    _lock: Option<File>,
}

impl ReaderLease {
    /// Claims a free reader, waiting at most `limit` for one.
    pub fn claim(limit: Duration) -> Result<Self, String> {
        Self::claim_many(1, limit).map(|mut v| v.remove(0))
    }

    /// Claims `n` readers at once (all or none, so that tests never hold
    /// one while waiting for another), waiting at most `limit`.
    pub fn claim_many(n: usize, limit: Duration) -> Result<Vec<Self>, String> {
        assert!(n <= usize::from(READERS), "only {READERS} virtual readers");
        let deadline = Instant::now() + limit;
        loop {
            let mut got = Vec::new();
            for port in FIRST_PORT..FIRST_PORT + READERS {
                let path = state_dir().join(format!("port-{port}.lock"));
                if got.len() < n
                    && let Ok(file) = lock(&path, Duration::ZERO)
                {
                    got.push(ReaderLease {
                        port,
                        _lock: Some(file),
                    });
                }
            }
            if got.len() == n {
                return Ok(got);
            }
            // Not all: give back what we took, so others can finish.
            drop(got);
            if Instant::now() >= deadline {
                return Err(format!(
                    "{n} of the {READERS} virtual readers did not come free within {limit:?}"
                ));
            }
            // A little jitter keeps two waiting processes from colliding.
            std::thread::sleep(Duration::from_millis(
                20 + u64::from(std::process::id() % 40),
            ));
        }
    }

    /// The reader of `pcscd` (held while it is).
    pub fn private(_pcscd: &PrivatePcscd) -> Self {
        ReaderLease {
            port: PRIVATE_PORT,
            _lock: None,
        }
    }

    /// Whether this is a [`PrivatePcscd`]'s reader (which the test process
    /// cannot watch through PC/SC).
    pub fn is_private(&self) -> bool {
        self.port == PRIVATE_PORT
    }

    /// The vpcd port of this reader.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The PC/SC reader name (a private pcscd's reader is its `00 00`).
    pub fn reader_name(&self) -> String {
        if self.is_private() {
            reader_name(FIRST_PORT)
        } else {
            reader_name(self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_names_follow_pcscd_slot_numbering() {
        assert_eq!(
            reader_name(FIRST_PORT),
            "Yubico YubiKey OTP+FIDO+CCID 00 00"
        );
        assert_eq!(
            reader_name(FIRST_PORT + 1),
            "Yubico YubiKey OTP+FIDO+CCID 00 01"
        );
        assert_eq!(config_text().matches("DEVICENAME").count(), 1);
    }
}
