//! Desktop notifications of signatures (`notify = true` in config.toml):
//! the real daemon against a private `dbus-daemon`, on which a stand-in
//! notification server owns `org.freedesktop.Notifications`, answers each
//! `Notify` as a real one does and records it.

use keybridge_tests::*;
use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zbus::{OwnedVariant, Variant};

const NOW: i64 = 1_800_000_000;

/// A command argument that must never reach a notification.
const SECRET_ARG: &str = "s3cret-arg-value-5f1e";

/// One `Notify` call as the server got it.
#[derive(Debug, Clone)]
struct Call {
    app_name: String,
    replaces_id: u32,
    app_icon: String,
    summary: String,
    body: String,
    actions: Vec<String>,
    hints: HashMap<String, OwnedVariant>,
    expire_timeout: i32,
}

impl Call {
    /// Summary and body, for `contains` checks.
    fn text(&self) -> String {
        format!("{}\n{}", self.summary, self.body)
    }
}

/// The stand-in notification server.
struct Server {
    calls: Arc<Mutex<Vec<Call>>>,
    /// Never answer (a server that hangs).
    hang: bool,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl Server {
    /// `Notify`: records the call, answers with its id.
    #[allow(clippy::too_many_arguments)]
    async fn notify(
        &self,
        app_name: String,
        replaces_id: u32,
        app_icon: String,
        summary: String,
        body: String,
        actions: Vec<String>,
        hints: HashMap<String, OwnedVariant>,
        expire_timeout: i32,
    ) -> u32 {
        let id = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(Call {
                app_name,
                replaces_id,
                app_icon,
                summary,
                body,
                actions,
                hints,
                expire_timeout,
            });
            calls.len()
        };
        if self.hang {
            std::future::pending::<()>().await;
        }
        u32::try_from(id).unwrap()
    }

    /// `GetCapabilities`: plain text bodies only.
    fn get_capabilities(&self) -> Vec<String> {
        vec!["body".into()]
    }
}

/// A private session bus (`dbus-daemon` with a minimal configuration: no
/// service activation, so nothing but the stand-in answers) and the
/// stand-in notification server on it.
struct Bus {
    daemon: Child,
    address: String,
    calls: Arc<Mutex<Vec<Call>>>,
    // The server's connection, then the runtime that runs it (dropped in
    // that order).
    _server: zbus::Connection,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Bus {
    /// A bus with a notification server (that hangs when `hang`); `None`
    /// (after saying SKIP) where dbus-daemon is not installed, outside CI.
    fn start(hang: bool) -> Option<Bus> {
        let program = "dbus-daemon";
        if Command::new(program).arg("--version").output().is_err() {
            assert!(
                !in_ci(),
                "dbus-daemon is not installed (Debian package dbus; cargo xtask deps)"
            );
            eprintln!("SKIP: dbus-daemon is not installed (Debian package dbus)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                dir.path().join("bus").display()
            ),
        )
        .unwrap();
        let mut daemon = Command::new(program)
            .arg(format!("--config-file={}", path_str(&config)))
            .args(["--nofork", "--print-address"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting dbus-daemon");
        // The address comes once the bus listens.
        let mut address = String::new();
        BufReader::new(daemon.stdout.take().unwrap())
            .read_line(&mut address)
            .unwrap();
        let address = address.trim().to_owned();
        assert!(address.starts_with("unix:"), "dbus-daemon said {address:?}");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let calls = Arc::new(Mutex::new(vec![]));
        let server = Server {
            calls: Arc::clone(&calls),
            hang,
        };
        let conn = runtime
            .block_on(
                zbus::connection::Builder::address(address.as_str())
                    .name("org.freedesktop.Notifications")
                    .serve_at("/org/freedesktop/Notifications", server)
                    .build(),
            )
            .expect("the stand-in notification server on the private bus");
        Some(Bus {
            daemon,
            address,
            calls,
            _server: conn,
            _runtime: runtime,
            _dir: dir,
        })
    }

    /// The calls so far.
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits until `n` calls came (at most 10 s); returns them all.
    fn wait_for(&self, n: usize) -> Vec<Call> {
        poll_until(Duration::from_secs(10), || self.calls().len() >= n);
        self.calls()
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// A daemon whose session bus is `address`, with `config` as its
/// config.toml (none when `None`).
fn bridge(address: &str, config: Option<&str>) -> Bridge {
    let mut b = Bridge::unstarted(
        NOW,
        None,
        &[("DBUS_SESSION_BUS_ADDRESS", Path::new(address))],
    );
    if let Some(text) = config {
        write_config(&b, text);
    }
    b.restart();
    b
}

fn write_config(b: &Bridge, text: &str) {
    let dir = b.home().join("config");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), text).unwrap();
}

/// Creates the passphrase key `alice` (account `acme`) and unlocks it for
/// a day; returns its kid.
fn key(b: &Bridge) -> String {
    let kid = b.passphrase_key("acme", "alice");
    b.ok(
        &["unlock", "alice", "--remember", "daily", "--secret-stdin"],
        Some(PASSPHRASE),
    );
    kid
}

/// Signs `run-script` for `device` with `alice`, with an argument that is
/// a secret.
fn sign(b: &Bridge, device: &str) -> Output {
    let out = b.home().join(format!("{device}.cose"));
    b.cli(
        &[
            "sign",
            "--key",
            "alice",
            "--device",
            device,
            "--command",
            "run-script",
            "--arg",
            &format!("token={SECRET_ARG}"),
            "--out",
            path_str(&out),
        ],
        None,
    )
}

fn assert_ok(b: &Bridge, o: &Output) {
    assert!(
        o.status.success(),
        "{}\n--- daemon ---\n{}",
        output_text(o),
        b.daemon_log()
    );
}

/// Asserts the fixed fields of a `Notify` call and that it holds no
/// secret.
fn assert_well_formed(call: &Call) {
    assert_eq!(call.app_name, "keybridge", "{call:?}");
    assert_eq!(call.replaces_id, 0, "{call:?}");
    assert_eq!(call.app_icon, "", "{call:?}");
    assert!(call.actions.is_empty(), "{call:?}");
    assert_eq!(call.expire_timeout, -1, "{call:?}");
    let urgency = call.hints.get("urgency").map(|v| &**v);
    assert!(matches!(urgency, Some(Variant::U8(1))), "{call:?}");
    let text = call.text();
    assert!(!text.contains(PASSPHRASE), "the passphrase: {call:?}");
    assert!(!text.contains(SECRET_ARG), "a command argument: {call:?}");
}

#[test]
fn each_signature_notifies_once_naming_the_command_the_key_and_the_device_or_batch() {
    let Some(bus) = Bus::start(false) else { return };
    let b = bridge(&bus.address, Some("notify = true\n"));
    let kid = key(&b);
    assert!(
        bus.calls().is_empty(),
        "no signature yet: {:?}",
        bus.calls()
    );

    assert_ok(&b, &sign(&b, "dev-1"));
    let calls = bus.wait_for(1);
    assert_eq!(calls.len(), 1, "{calls:?}");
    let one = &calls[0];
    assert_well_formed(one);
    assert_eq!(one.summary, "keybridge signed run-script", "{one:?}");
    for part in [
        "passphrase key",
        "\"alice\"",
        &kid[..16],
        "device dev-1",
        "agent alice",
        "account acme",
    ] {
        assert!(one.body.contains(part), "{part:?} missing: {one:?}");
    }

    // A batch: one signature, one notification, naming the batch's size.
    let list = b.home().join("devices.txt");
    std::fs::write(&list, "dev-a\ndev-b\ndev-c\n").unwrap();
    let out = b.home().join("batch");
    let r = b.cli(
        &[
            "sign",
            "--key",
            "alice",
            "--devices",
            path_str(&list),
            "--command",
            "run-script",
            "--arg",
            &format!("token={SECRET_ARG}"),
            "--out",
            path_str(&out),
        ],
        None,
    );
    assert_ok(&b, &r);
    let calls = bus.wait_for(2);
    assert_eq!(calls.len(), 2, "one per signature: {calls:?}");
    let batch = &calls[1];
    assert_well_formed(batch);
    assert_eq!(batch.summary, "keybridge signed run-script", "{batch:?}");
    assert!(batch.body.contains("batch of 3 devices"), "{batch:?}");
    assert!(batch.body.contains(&kid[..16]), "{batch:?}");
    assert!(!batch.body.contains("dev-a"), "{batch:?}");
}

#[test]
fn no_notification_unless_config_says_notify() {
    let Some(bus) = Bus::start(false) else { return };
    let mut b = bridge(&bus.address, None);
    key(&b);
    assert_ok(&b, &sign(&b, "dev-quiet"));
    // The same bus and server notify once the user asks for it: only the
    // signature made then shows.
    write_config(&b, "notify = true\n");
    b.restart();
    key_unlock_again(&b);
    assert_ok(&b, &sign(&b, "dev-loud"));
    let calls = bus.wait_for(1);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0].body.contains("dev-loud"), "{calls:?}");
    assert!(
        !calls.iter().any(|c| c.text().contains("dev-quiet")),
        "{calls:?}"
    );

    // `notify = false` is off too.
    write_config(&b, "notify = false\n");
    b.restart();
    key_unlock_again(&b);
    assert_ok(&b, &sign(&b, "dev-quiet-2"));
    write_config(&b, "notify = true\n");
    b.restart();
    key_unlock_again(&b);
    assert_ok(&b, &sign(&b, "dev-loud-2"));
    let calls = bus.wait_for(2);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[1].body.contains("dev-loud-2"), "{calls:?}");
}

/// Unlocks `alice` again (a restarted daemon forgets unlocks).
fn key_unlock_again(b: &Bridge) {
    b.ok(
        &["unlock", "alice", "--remember", "daily", "--secret-stdin"],
        Some(PASSPHRASE),
    );
}

#[test]
fn without_a_session_bus_signing_still_succeeds_quickly() {
    let home = tempfile::tempdir().unwrap();
    let missing = format!("unix:path={}", home.path().join("no-bus").display());
    let b = bridge(&missing, Some("notify = true\n"));
    key(&b);
    for device in ["dev-1", "dev-2", "dev-3"] {
        let started = Instant::now();
        assert_ok(&b, &sign(&b, device));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "signing took {took:?}");
    }
    assert_eq!(
        std::fs::read_to_string(b.home().join("state/audit.jsonl"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    // Said once, not once per signature.
    let said = poll_until(Duration::from_secs(5), || {
        b.daemon_log().contains("no session bus")
    });
    assert!(said, "{}", b.daemon_log());
    assert_eq!(
        b.daemon_log().matches("no session bus").count(),
        1,
        "{}",
        b.daemon_log()
    );
}

#[test]
fn a_notification_server_that_never_answers_does_not_hold_up_signing() {
    let Some(bus) = Bus::start(true) else { return };
    let mut b = bridge(&bus.address, Some("notify = true\n"));
    key(&b);
    // The first signature also connects to the bus.
    for device in ["dev-1", "dev-2"] {
        let started = Instant::now();
        assert_ok(&b, &sign(&b, device));
        let took = started.elapsed();
        // A daemon that waited for the answer would take its whole 2 s
        // deadline.
        assert!(
            took < keybridge::notify::DEADLINE,
            "signing took {took:?}: it waited for the notification"
        );
    }
    assert_eq!(bus.wait_for(2).len(), 2);
    // The daemon gives up on the server and says so, once.
    let said = poll_until(Duration::from_secs(10), || {
        b.daemon_log().contains("desktop notification failed")
    });
    assert!(said, "{}", b.daemon_log());
    // Nor its exit, with a notification on its way.
    assert_ok(&b, &sign(&b, "dev-3"));
    let started = Instant::now();
    assert!(b.signal("-TERM").success());
    let took = started.elapsed();
    assert!(took < keybridge::notify::DEADLINE, "stopping took {took:?}");
    let log = b.daemon_log();
    assert_eq!(
        log.matches("desktop notification failed").count(),
        1,
        "{log}"
    );
}
