//! A PKCS#11 token on a TPM for the tests: the real tpm2-pkcs11 module
//! (`libtpm2_pkcs11.so`) with its token store in a temp folder, on a
//! private [`Swtpm`] behind a private resource manager (`tpm2-abrmd`) on a
//! private D-Bus session bus.
//!
//! ```ignore
//! use keybridge_tests::tpm2_pkcs11::Tpm2Pkcs11;
//! let Some(p11) = Tpm2Pkcs11::start() else {
//!     return; // SKIP outside CI when a component is missing
//! };
//! let token = p11.add_token("my token", "so-pin", "user-pin");
//! p11.pkcs11_tool_ok(&["--token-label", &token.label, "--keypairgen",
//!     "--key-type", "EC:prime256v1", "--id", "01", "--label", "k",
//!     "--login", "--pin", &token.user_pin]);
//! // … the daemon or a CLI run under test gets `p11.env()` …
//! ```
//!
//! Why the pieces:
//!
//! - **A resource manager.** swtpm has 3 transient object slots and no
//!   resource manager; tpm2-pkcs11 keeps its primary key, its session and
//!   every key it touched loaded, and `tpm2_ptool` fails with 0x902
//!   (`TPM_RC_OBJECT_MEMORY`) without one. `tpm2-abrmd` swaps objects in
//!   and out, and holds swtpm's one connection for as long as it runs: the
//!   [`Swtpm::tpm2`] helpers would wait forever, so use
//!   [`Tpm2Pkcs11::tpm2`], which goes through it.
//! - **A private session bus.** tpm2-abrmd is reached over D-Bus (the
//!   `tabrmd` TCTI) under one well-known name; each fixture runs its own
//!   `dbus-daemon` on a socket in its temp folder, with a configuration of
//!   its own (no service activation, nothing read from /etc/dbus-1), so
//!   fixtures in parallel tests never see each other's TPM.
//! - **A token store per fixture.** tpm2-pkcs11 keeps tokens, keys (as TPM
//!   blobs wrapped by the TPM) and PIN seals in a SQLite file found through
//!   `TPM2_PKCS11_STORE`; `tpm2_ptool init` makes the primary key's entry,
//!   `tpm2_ptool addtoken` each token ([`Tpm2Pkcs11::add_token`]).
//!
//! Things a test must know about tpm2-pkcs11 1.9.0 (Debian 12):
//!
//! - **Environment, once.** The module reads `TPM2_PKCS11_STORE`,
//!   `TPM2_PKCS11_TCTI` and `DBUS_SESSION_BUS_ADDRESS` at `C_Initialize`.
//!   Tools and daemons get them from [`Tpm2Pkcs11::env`]; a test that loads
//!   the module in its own process runs its body in a child process with
//!   [`Tpm2Pkcs11::run_isolated`].
//! - **Token flags.** Only `CKF_RNG`, `CKF_LOGIN_REQUIRED` (unless the user
//!   PIN is empty), `CKF_TOKEN_INITIALIZED` and `CKF_USER_PIN_INITIALIZED`;
//!   never `CKF_USER_PIN_COUNT_LOW`, `_FINAL_TRY` or `_LOCKED`. A wrong PIN
//!   is `CKR_PIN_INCORRECT` and counts as a TPM dictionary-attack failure:
//!   swtpm locks out after 3 ([`Tpm2Pkcs11::set_lockout`]), and then every
//!   PIN, the right one too, gets `CKR_PIN_LOCKED` for the whole TPM.
//! - **Key generation** is NIST EC (`CKM_EC_KEY_PAIR_GEN`) or RSA, no
//!   Ed25519 (`CKM_EC_EDWARDS_KEY_PAIR_GEN` is not listed); the module
//!   ties `CKA_VERIFY` to `CKA_DECRYPT` and `CKA_ENCRYPT` to `CKA_SIGN` and
//!   fails `C_GenerateKeyPair` with `CKR_GENERAL_ERROR` when a template asks
//!   for usages that contradict each other under that rule (a public key
//!   with `CKA_VERIFY` true for a private key with `CKA_DECRYPT` false).
//! - **Transient objects.** tpm2-abrmd allows 27 loaded objects per client
//!   connection (its default `--max-transients`, kept here as on a real
//!   machine), and the module keeps what it loads (two objects per key it
//!   generates) until `C_Finalize`: one process that generated and used 8
//!   keys got "out of memory for object contexts" (0x902) at the 9th.
//! - **Labels** are at most 32 bytes of UTF-8 (the module cuts longer ones
//!   silently); spaces, `#` and non-ASCII are fine.

use crate::swtpm::Swtpm;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The tpm2-pkcs11 module Debian installs (package libtpm2-pkcs11-1).
pub const MODULE: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so";

/// The TCTI of the module and of the tools: tpm2-abrmd on the session bus
/// that `DBUS_SESSION_BUS_ADDRESS` names.
pub const TCTI: &str = "tabrmd:bus_type=session";

/// The longest token label tpm2-pkcs11 keeps whole, in bytes of UTF-8
/// (`CK_TOKEN_INFO.label`).
pub const MAX_LABEL_BYTES: usize = 32;

/// How long `dbus-daemon` may take to listen.
const DBUS_LIMIT: Duration = Duration::from_secs(10);
/// How long tpm2-abrmd may take to own its bus name and reach swtpm.
const ABRMD_LIMIT: Duration = Duration::from_secs(20);

/// Programs the fixture runs (besides swtpm's, which [`Swtpm::start`]
/// checks), with the Debian packages that have them.
const PROGRAMS: [(&str, &str); 5] = [
    ("dbus-daemon", "dbus"),
    ("tpm2-abrmd", "tpm2-abrmd"),
    ("tpm2_ptool", "libtpm2-pkcs11-tools"),
    ("pkcs11-tool", "opensc"),
    ("tpm2_getcap", "tpm2-tools"),
];

/// The child-process variable of [`Tpm2Pkcs11::run_isolated`]: the
/// fixture's folder.
const CHILD_DIR_ENV: &str = "KEYBRIDGE_TESTS_TPM2_PKCS11_DIR";
/// The child-process variable of [`Tpm2Pkcs11::run_isolated`]: the primary
/// object id.
const CHILD_PRIMARY_ENV: &str = "KEYBRIDGE_TESTS_TPM2_PKCS11_PRIMARY";

/// The module path, [`MODULE`], as a path.
pub fn module() -> &'static Path {
    Path::new(MODULE)
}

/// A tpm2-pkcs11 token store on a private swtpm, resource manager and
/// session bus. Dropping it stops tpm2-abrmd, the bus and swtpm, and
/// removes the temp folder.
pub struct Tpm2Pkcs11 {
    /// The temp folder: `store/`, `work/`, the bus socket and the logs.
    dir: PathBuf,
    /// What `dbus-daemon --print-address` printed.
    bus_address: String,
    /// The id `tpm2_ptool init` gave the primary key (`--pid` of new
    /// tokens).
    primary: String,
    /// The processes; `None` in the child of [`Tpm2Pkcs11::run_isolated`],
    /// whose parent owns them.
    processes: Option<Processes>,
}

/// What the fixture started, stopped on drop (also when starting fails
/// half-way).
struct Processes {
    abrmd: Option<Child>,
    dbus: Option<Child>,
    /// Dropped (killed) after tpm2-abrmd, which holds its connection.
    tpm: Swtpm,
    /// Removed last.
    _dir: tempfile::TempDir,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for mut child in [self.abrmd.take(), self.dbus.take()].into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A token made by [`Tpm2Pkcs11::add_token`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tpm2Token {
    /// The token label (`CKA_LABEL` of the token, `token=` in a URI).
    pub label: String,
    /// The security officer's PIN.
    pub so_pin: String,
    /// The user's PIN.
    pub user_pin: String,
}

impl Tpm2Pkcs11 {
    /// Starts swtpm, a session bus and tpm2-abrmd, waits until the TPM
    /// answers through them, and makes an empty token store with a primary
    /// key (`tpm2_ptool init`); no token yet ([`Tpm2Pkcs11::add_token`]).
    /// `None`, with a loud SKIP line, when a program or the module is
    /// missing; under `CI=true` that is a panic. Panics, with the logs,
    /// when a component does not come up.
    pub fn start() -> Option<Tpm2Pkcs11> {
        let missing: Vec<String> = PROGRAMS
            .iter()
            .filter(|(p, _)| find_program(p).is_none())
            .map(|(p, package)| format!("{p} ({package})"))
            .chain((!module().exists()).then(|| format!("{MODULE} (libtpm2-pkcs11-1)")))
            .collect();
        if !missing.is_empty() {
            assert!(
                !crate::in_ci(),
                "tpm2-pkcs11 test components missing under CI: {missing:?} (run cargo xtask deps)"
            );
            eprintln!(
                "SKIP: tpm2-pkcs11 test components missing ({missing:?}); run `cargo xtask deps`"
            );
            return None;
        }
        let tpm = Swtpm::start()?;
        let dir = tempfile::Builder::new()
            .prefix("keybridge-tpm2-pkcs11-")
            .tempdir()
            .expect("creating the tpm2-pkcs11 temp folder");
        let path = dir.path().to_owned();
        for d in ["store", "work"] {
            std::fs::create_dir(path.join(d)).expect("creating a tpm2-pkcs11 folder");
        }
        let mut processes = Processes {
            abrmd: None,
            dbus: None,
            tpm,
            _dir: dir,
        };
        let bus_address = start_bus(&path, &mut processes);
        start_abrmd(&path, &bus_address, &mut processes);
        let mut fixture = Tpm2Pkcs11 {
            dir: path,
            bus_address,
            primary: String::new(),
            processes: Some(processes),
        };
        let init = fixture.ptool_ok(&["init"]);
        fixture.primary = init
            .lines()
            .find_map(|l| l.trim().strip_prefix("id:"))
            .map(|id| id.trim().to_owned())
            .unwrap_or_else(|| panic!("tpm2_ptool init printed no id:\n{init}"));
        Some(fixture)
    }

    /// [`Tpm2Pkcs11::start`] with one token made by
    /// [`Tpm2Pkcs11::add_token`].
    pub fn with_token(label: &str, so_pin: &str, user_pin: &str) -> Option<(Self, Tpm2Token)> {
        let fixture = Self::start()?;
        let token = fixture.add_token(label, so_pin, user_pin);
        Some((fixture, token))
    }

    /// Makes a token labelled `label` with these PINs (`tpm2_ptool
    /// addtoken`) under the store's primary key; it shows up in a slot of
    /// its own at the module's next `C_Initialize`. Labels are passed as one
    /// argument, so spaces, `#` and non-ASCII need no quoting. Panics, with
    /// the tool's output and the logs, when tpm2_ptool refuses (a label
    /// already taken), and on a label longer than [`MAX_LABEL_BYTES`] (the
    /// module would cut it).
    pub fn add_token(&self, label: &str, so_pin: &str, user_pin: &str) -> Tpm2Token {
        assert!(
            label.len() <= MAX_LABEL_BYTES,
            "token label {label:?} has {} bytes; tpm2-pkcs11 keeps {MAX_LABEL_BYTES}",
            label.len()
        );
        self.ptool_ok(&[
            "addtoken",
            &format!("--pid={}", self.primary),
            &format!("--label={label}"),
            &format!("--sopin={so_pin}"),
            &format!("--userpin={user_pin}"),
        ]);
        Tpm2Token {
            label: label.to_owned(),
            so_pin: so_pin.to_owned(),
            user_pin: user_pin.to_owned(),
        }
    }

    /// The environment that points tpm2-pkcs11 and the tpm2 tools at this
    /// fixture: `DBUS_SESSION_BUS_ADDRESS`, `TPM2_PKCS11_STORE`,
    /// `TPM2_PKCS11_TCTI`, `TPM2TOOLS_TCTI`, and `TPM2_PKCS11_LOG_LEVEL`
    /// (the caller's, else 1: errors and warnings on stderr; 2 traces every
    /// call).
    pub fn env(&self) -> Vec<(String, OsString)> {
        let level = std::env::var_os("TPM2_PKCS11_LOG_LEVEL").unwrap_or_else(|| "1".into());
        vec![
            (
                "DBUS_SESSION_BUS_ADDRESS".to_owned(),
                self.bus_address.clone().into(),
            ),
            (
                "TPM2_PKCS11_STORE".to_owned(),
                self.store_dir().into_os_string(),
            ),
            ("TPM2_PKCS11_TCTI".to_owned(), TCTI.into()),
            ("TPM2TOOLS_TCTI".to_owned(), TCTI.into()),
            ("TPM2_PKCS11_LOG_LEVEL".to_owned(), level),
        ]
    }

    /// The folder of the token store (`TPM2_PKCS11_STORE`).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// A scratch folder the tools run in: relative file names in their
    /// arguments (`-i data -o sig`) land here. Removed on drop.
    pub fn work_dir(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// The id of the store's primary key (`--pid` of `tpm2_ptool`).
    pub fn primary_id(&self) -> &str {
        &self.primary
    }

    /// The swtpm under it all, for its port and log; `None` in the child of
    /// [`Tpm2Pkcs11::run_isolated`]. Its own `tpm2` helpers would wait
    /// forever while tpm2-abrmd holds swtpm's one connection: use
    /// [`Tpm2Pkcs11::tpm2`].
    pub fn swtpm(&self) -> Option<&Swtpm> {
        self.processes.as_ref().map(|p| &p.tpm)
    }

    /// Runs `pkcs11-tool --module MODULE args…` (OpenSC's, from `PATH`) with
    /// [`Tpm2Pkcs11::env`], in [`Tpm2Pkcs11::work_dir`]; returns its output
    /// whatever its status.
    pub fn pkcs11_tool(&self, args: &[&str]) -> Output {
        let mut all = vec!["--module", MODULE];
        all.extend_from_slice(args);
        self.run("pkcs11-tool", &all)
    }

    /// [`Tpm2Pkcs11::pkcs11_tool`] that insists on success (panicking with
    /// its stderr and the logs); returns its stdout.
    pub fn pkcs11_tool_ok(&self, args: &[&str]) -> String {
        let out = self.pkcs11_tool(args);
        self.expect_success("pkcs11-tool", args, &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `tpm2_ptool args…` on this store; returns its output whatever
    /// its status.
    pub fn ptool(&self, args: &[&str]) -> Output {
        self.run("tpm2_ptool", args)
    }

    /// [`Tpm2Pkcs11::ptool`] that insists on success; returns its stdout.
    pub fn ptool_ok(&self, args: &[&str]) -> String {
        let out = self.ptool(args);
        self.expect_success("tpm2_ptool", args, &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `tpm2_<tool> args…` (a leading `tpm2_` in `tool` is allowed)
    /// through tpm2-abrmd, in [`Tpm2Pkcs11::work_dir`]; returns its output
    /// whatever its status. The resource manager flushes what a tool leaves
    /// loaded when it disconnects.
    pub fn tpm2(&self, tool: &str, args: &[&str]) -> Output {
        let program = if tool.starts_with("tpm2_") {
            tool.to_owned()
        } else {
            format!("tpm2_{tool}")
        };
        self.run(&program, args)
    }

    /// [`Tpm2Pkcs11::tpm2`] that insists on success; returns its stdout.
    pub fn tpm2_ok(&self, tool: &str, args: &[&str]) -> String {
        let out = self.tpm2(tool, args);
        self.expect_success(tool, args, &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sets the TPM's dictionary-attack parameters, which govern wrong
    /// PINs (`tpm2_dictionarylockout -s`, lockout auth empty): lockout
    /// after `max_tries` failures, one forgotten every `recovery_secs`, and
    /// `lockout_recovery_secs` after a failed lockout authorization. swtpm
    /// starts with 3, 1000 s, 1000 s.
    pub fn set_lockout(&self, max_tries: u32, recovery_secs: u32, lockout_recovery_secs: u32) {
        let (n, t, l) = (
            max_tries.to_string(),
            recovery_secs.to_string(),
            lockout_recovery_secs.to_string(),
        );
        self.tpm2_ok("dictionarylockout", &["-s", "-n", &n, "-t", &t, "-l", &l]);
    }

    /// Resets the TPM's failure counter, ending a lockout
    /// (`tpm2_dictionarylockout -c`).
    pub fn clear_lockout(&self) {
        self.tpm2_ok("dictionarylockout", &["-c"]);
    }

    /// A PKCS#11 URI of the token `label` with the path attributes `attrs`
    /// (`object=k;id=%01`, or none) and `module-path`; the label is
    /// percent-encoded (RFC 7512), so spaces, `#` and non-ASCII survive.
    pub fn token_uri(&self, label: &str, attrs: &str) -> String {
        let sep = if attrs.is_empty() { "" } else { ";" };
        format!(
            "pkcs11:token={}{sep}{attrs}?module-path={MODULE}",
            percent_encode(label)
        )
    }

    /// What tpm2-abrmd, dbus-daemon and swtpm logged (for failure
    /// messages).
    pub fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!(
            "--- tpm2-abrmd ---\n{}\n--- dbus-daemon ---\n{}\n--- swtpm ---\n{}",
            read("abrmd.log"),
            read("dbus.log"),
            self.swtpm().map(Swtpm::log).unwrap_or_default()
        )
    }

    /// Runs `body` in a child process of this test binary whose environment
    /// has [`Tpm2Pkcs11::env`] (and no `KEYBRIDGE_*` variable of the
    /// caller's), with a fixture that this process started and owns: the
    /// child re-runs just the test `test` (its name, as libtest knows it).
    /// For tests that load the module in their own process (through
    /// keybridge-backends or cryptoki), since it reads its environment at
    /// `C_Initialize` and tests may not change their own. In the child,
    /// [`Tpm2Pkcs11::add_token`], the tools and [`Tpm2Pkcs11::env`] work;
    /// [`Tpm2Pkcs11::swtpm`] is `None`. Skips (loudly) as
    /// [`Tpm2Pkcs11::start`]. Works under `cargo test` and `cargo nextest`.
    pub fn run_isolated(test: &str, body: impl FnOnce(&Tpm2Pkcs11)) {
        if let Some(dir) = std::env::var_os(CHILD_DIR_ENV) {
            let fixture = Tpm2Pkcs11 {
                dir: PathBuf::from(dir),
                bus_address: std::env::var("DBUS_SESSION_BUS_ADDRESS")
                    .expect("the parent sets DBUS_SESSION_BUS_ADDRESS"),
                primary: std::env::var(CHILD_PRIMARY_ENV).expect("the parent sets the primary id"),
                processes: None,
            };
            body(&fixture);
            return;
        }
        let Some(fixture) = Tpm2Pkcs11::start() else {
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
            .envs(fixture.env())
            .env(CHILD_DIR_ENV, &fixture.dir)
            .env(CHILD_PRIMARY_ENV, &fixture.primary);
        let out = child.output().expect("run the test binary");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Shown by `--nocapture`, and on failure.
        println!("{stdout}");
        eprintln!("{stderr}");
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{test} failed in its tpm2-pkcs11 process ({})\n{}",
            out.status,
            fixture.log()
        );
    }

    /// Runs `program args…` with this fixture's environment in the work
    /// folder.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let path = find_program(program).unwrap_or_else(|| panic!("{program} not found"));
        Command::new(&path)
            .args(args)
            .envs(self.env())
            .current_dir(self.work_dir())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", path.display()))
    }

    fn expect_success(&self, program: &str, args: &[&str], out: &Output) {
        assert!(
            out.status.success(),
            "{program} {args:?} failed ({}):\n{}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }
}

/// Starts `dbus-daemon` with a private configuration listening on
/// `dir/bus`, and waits until it prints its address (it does once it
/// listens), which it returns.
fn start_bus(dir: &Path, processes: &mut Processes) -> String {
    let socket = dir.join("bus");
    // sun_path holds 108 bytes with the NUL.
    assert!(
        socket.as_os_str().len() < 108,
        "the bus socket path {} is too long for a Unix socket; set TMPDIR to a shorter folder",
        socket.display()
    );
    let listen = format!("unix:path={}", dbus_escape(&socket));
    let config = dir.join("bus.conf");
    std::fs::write(
        &config,
        format!(
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n \
             \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
             <busconfig>\n  <type>session</type>\n  <listen>{}</listen>\n  \
             <auth>EXTERNAL</auth>\n  <policy context=\"default\">\n    \
             <allow send_destination=\"*\" eavesdrop=\"true\"/>\n    \
             <allow eavesdrop=\"true\"/>\n    <allow own=\"*\"/>\n  </policy>\n\
             </busconfig>\n",
            xml_escape(&listen)
        ),
    )
    .expect("writing the bus configuration");
    let address_file = dir.join("bus.address");
    let log = File::create(dir.join("dbus.log")).expect("creating dbus.log");
    let child = Command::new(find_program("dbus-daemon").expect("checked"))
        .arg(format!("--config-file={}", config.display()))
        .args(["--nofork", "--nopidfile", "--print-address"])
        .stdin(Stdio::null())
        .stdout(File::create(&address_file).expect("creating bus.address"))
        .stderr(log)
        .spawn()
        .expect("starting dbus-daemon");
    let dbus = processes.dbus.insert(child);
    let mut exited = None;
    let mut address = String::new();
    let up = crate::poll_until(DBUS_LIMIT, || {
        if let Ok(Some(status)) = dbus.try_wait() {
            exited = Some(status);
            return true;
        }
        let printed = std::fs::read_to_string(&address_file).unwrap_or_default();
        match printed.split_once('\n') {
            Some((line, _)) => {
                address = line.trim().to_owned();
                true
            }
            None => false,
        }
    });
    let log = || std::fs::read_to_string(dir.join("dbus.log")).unwrap_or_default();
    if let Some(status) = exited {
        panic!("dbus-daemon exited with {status}:\n{}", log());
    }
    assert!(
        up && !address.is_empty(),
        "dbus-daemon did not print its address within {DBUS_LIMIT:?}:\n{}",
        log()
    );
    address
}

/// Starts tpm2-abrmd on the session bus `address`, connected to swtpm, and
/// waits until `tpm2_getcap properties-fixed` answers through it.
fn start_abrmd(dir: &Path, address: &str, processes: &mut Processes) {
    let log_path = dir.join("abrmd.log");
    let log = File::create(&log_path).expect("creating abrmd.log");
    let child = Command::new(find_program("tpm2-abrmd").expect("checked"))
        .args(["--session", "--allow-root", "--logger=stdout"])
        .arg(format!("--tcti={}", processes.tpm.tcti()))
        .env("DBUS_SESSION_BUS_ADDRESS", address)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("starting tpm2-abrmd");
    let abrmd = processes.abrmd.insert(child);
    let mut exited = None;
    let mut last = String::new();
    let up = crate::poll_until(ABRMD_LIMIT, || {
        if let Ok(Some(status)) = abrmd.try_wait() {
            exited = Some(status);
            return true;
        }
        let out = Command::new("tpm2_getcap")
            .arg("properties-fixed")
            .env("TPM2TOOLS_TCTI", TCTI)
            .env("DBUS_SESSION_BUS_ADDRESS", address)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => true,
            Ok(o) => {
                last = String::from_utf8_lossy(&o.stderr).into_owned();
                false
            }
            Err(e) => {
                last = e.to_string();
                false
            }
        }
    });
    let logs = || {
        format!(
            "{}\n--- swtpm ---\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default(),
            processes.tpm.log()
        )
    };
    if let Some(status) = exited {
        panic!("tpm2-abrmd exited with {status}:\n{}", logs());
    }
    assert!(
        up,
        "the TPM did not answer through tpm2-abrmd within {ABRMD_LIMIT:?}: {last}\n{}",
        logs()
    );
}

/// The full path of `program`: on `PATH`, or in /usr/sbin or /sbin (where
/// Debian puts tpm2-abrmd, outside a user's `PATH`).
fn find_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// `path` as a D-Bus address value: bytes other than `[-0-9A-Za-z_/.*]`
/// as `%XX`.
fn dbus_escape(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    path.as_os_str()
        .as_bytes()
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-_/.*".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

/// `text` with XML's special characters escaped.
fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `text` percent-encoded but for RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dbus_addresses_escape_all_but_the_safe_bytes() {
        assert_eq!(
            dbus_escape(Path::new("/tmp/a-b_c.d/bus")),
            "/tmp/a-b_c.d/bus"
        );
        assert_eq!(dbus_escape(Path::new("/t mp/ü,=")), "/t%20mp/%c3%bc%2c%3d");
    }

    #[test]
    fn token_labels_are_percent_encoded_in_uris() {
        assert_eq!(
            percent_encode("my token #1 ü"),
            "my%20token%20%231%20%C3%BC"
        );
        assert_eq!(percent_encode("a-b.c_d~e"), "a-b.c_d~e");
    }

    #[test]
    fn xml_special_characters_are_escaped() {
        assert_eq!(xml_escape("a&b<c>\"d"), "a&amp;b&lt;c&gt;&quot;d");
    }
}
