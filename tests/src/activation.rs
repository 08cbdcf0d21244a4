//! A stand-in for systemd's socket activation, small enough to read: a
//! launcher (Python, from Debian's python3) that binds the daemon's socket
//! as `keybridge.socket` would, and on each connection while no daemon runs
//! starts `keybridge serve` the way systemd does — the listening socket as
//! descriptor 3, `LISTEN_FDS=1`, `LISTEN_PID` = the daemon's own pid,
//! `NOTIFY_SOCKET` = a datagram socket it reads — waits for it to exit, and
//! does it again on the next connection. What happens is written to an
//! events file, one line each: `listening`, `started PID`, `notify
//! READY=1`, `exited CODE`.
//!
//! Real systemd cannot run in a test (no user manager here); Debian's
//! `systemd-socket-activate` passes a socket the same way but starts the
//! program once, so the tests use both.

use crate::{Bridge, in_ci, poll_until};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

const LAUNCHER: &str = r#"
import os, select, signal, socket, sys

sock_path, notify_path, events_path = sys.argv[1:4]
argv = sys.argv[4:]

def event(line):
    with open(events_path, "a") as f:
        f.write(line + "\n")

listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sock_path)
os.chmod(sock_path, 0o600)
listener.listen(128)
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.bind(notify_path)
child = None

def stop(signum, frame):
    if child:
        try:
            os.kill(child, signal.SIGTERM)
            os.waitpid(child, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)

def forward(timeout):
    r, _, _ = select.select([notify], [], [], timeout)
    if r:
        event("notify " + notify.recv(4096).decode().strip().replace("\n", " "))

event("listening")
while True:
    r, _, _ = select.select([listener, notify], [], [])
    if notify in r:
        forward(0)
        continue
    pid = os.fork()
    if pid == 0:
        os.dup2(listener.fileno(), 3)
        os.set_inheritable(3, True)
        os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), NOTIFY_SOCKET=notify_path)
        os.execv(argv[0], argv)
    child = pid
    event(f"started {pid}")
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        forward(0.05)
    child = None
    forward(0)
    event(f"exited {os.waitstatus_to_exitcode(status)}")
"#;

/// A daemon started by socket activation, again after each exit.
pub struct Activated {
    /// The home, clock and policy; its CLI talks to the launcher's socket.
    pub bridge: Bridge,
    launcher: Child,
    events: PathBuf,
}

impl Activated {
    /// Binds the socket of a fresh [`Bridge::unstarted`] home and waits
    /// for connections; each starts `keybridge serve extra…` if none runs.
    /// `None` (with a SKIP line) without python3 — under `CI=true` that
    /// panics instead.
    pub fn start(now: i64, extra: &[&str]) -> Option<Self> {
        if Command::new("python3").arg("-c").arg("").status().is_err() {
            assert!(!in_ci(), "python3 is missing under CI (cargo xtask deps)");
            eprintln!("SKIP: python3 is missing (Debian package python3)");
            return None;
        }
        let bridge = Bridge::unstarted(now, None, &[]);
        let home = bridge.home().to_owned();
        let run = home.join("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let script = home.join("launcher.py");
        std::fs::write(&script, LAUNCHER).unwrap();
        let events = home.join("events");
        let (socket, notify) = (bridge.socket(), home.join("notify.sock"));
        let launcher = bridge
            .serve_command(
                &[
                    "python3",
                    script.to_str().unwrap(),
                    socket.to_str().unwrap(),
                    notify.to_str().unwrap(),
                    events.to_str().unwrap(),
                ],
                extra,
            )
            .spawn()
            .expect("starting the launcher");
        let a = Activated {
            bridge,
            launcher,
            events,
        };
        assert!(
            a.wait_for("listening", 1, Duration::from_secs(20)),
            "the launcher did not bind: {}",
            a.bridge.daemon_log()
        );
        Some(a)
    }

    /// The events so far.
    pub fn events(&self) -> Vec<String> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// How many events start with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| e.starts_with(prefix))
            .count()
    }

    /// Waits until `n` events start with `prefix`.
    pub fn wait_for(&self, prefix: &str, n: usize, limit: Duration) -> bool {
        poll_until(limit, || self.count(prefix) >= n)
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        // The launcher stops the daemon it runs on TERM.
        let _ = Command::new("kill")
            .args(["-TERM", &self.launcher.id().to_string()])
            .status();
        if !poll_until(Duration::from_secs(30), || {
            self.launcher.try_wait().ok().flatten().is_some()
        }) {
            let _ = self.launcher.kill();
            let _ = self.launcher.wait();
        }
    }
}
