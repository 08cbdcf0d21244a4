//! keybridge on a workstation (README, "Installing on a workstation"): the
//! daemon started by socket activation the way systemd starts it, readiness
//! reported over `NOTIFY_SOCKET`, an idle exit that locks every key and
//! releases the card, and the systemd user units `keybridge install
//! --user` writes. Serials 97_000_00n are this file's.

use keybridge_tests::activation::Activated;
use keybridge_tests::vyubikey::CardConfig;
use keybridge_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use keybridge_tests::{output_text as text, path_str as s};

const NOW: i64 = 1_800_000_000;

#[test]
fn the_first_connection_starts_the_daemon_and_an_idle_one_exits_until_the_next() {
    let Some(a) = Activated::start(NOW, &["--idle-exit", "2s"]) else {
        return;
    };
    // Nothing runs until a client connects.
    assert_eq!(a.count("started"), 0, "{:?}", a.events());
    a.bridge.ok(&["status"], None);
    assert!(
        a.wait_for("notify READY=1", 1, Duration::from_secs(10)),
        "{:?}",
        a.events()
    );
    // Idle for 2 s: it exits cleanly, telling systemd it stops; the socket
    // stays (systemd owns it).
    assert!(
        a.wait_for("exited 0", 1, Duration::from_secs(30)),
        "{:?}\n{}",
        a.events(),
        a.bridge.daemon_log()
    );
    assert!(a.count("notify STOPPING=1") >= 1, "{:?}", a.events());
    assert!(a.bridge.socket().exists());
    let log = a.bridge.daemon_log();
    assert!(log.contains("idle: exiting"), "{log}");
    assert!(log.contains("activated=true"), "{log}");
    // The next client starts it again, on the same socket.
    let status = a.bridge.ok(&["--json", "status"], None);
    assert!(status.contains("\"keys\""), "{status}");
    assert_eq!(a.count("started"), 2, "{:?}", a.events());
}

#[test]
fn a_connection_held_open_keeps_the_daemon_from_idling_out() {
    let Some(a) = Activated::start(NOW, &["--idle-exit", "1s"]) else {
        return;
    };
    a.bridge.ok(&["status"], None);
    // A client that keeps its connection (the API's keep-alive) for 3 s:
    // no exit while it is open.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = keybridge::client::Client::new(&a.bridge.socket());
        let mut conn = client.connect().await.unwrap();
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            conn.call::<serde_json::Value>(hyper::Method::GET, "/v1/status", None::<&()>)
                .await
                .unwrap();
        }
        assert_eq!(a.count("exited"), 0, "{:?}", a.events());
    });
    // The client's connection task lives in its runtime: closed with it.
    drop(rt);
    assert!(
        a.wait_for("exited 0", 1, Duration::from_secs(30)),
        "{:?}",
        a.events()
    );
}

#[test]
fn an_idle_exit_locks_the_keys_and_releases_the_yubikey() {
    let Some(card) = CardConfig::new(97_000_001).insert() else {
        return;
    };
    let Some(a) = Activated::start(NOW, &["--idle-exit", "3s"]) else {
        return;
    };
    let b = &a.bridge;
    let uri = format!("yubikey:serial={};slot=9c", card.serial());
    let r = b.create_yubikey_key("yk", &uri, &["--default-management-key"], "123456");
    assert!(r.status.success(), "{}", text(&r));
    b.ok(
        &["unlock", "yk", "--remember", "daily", "--secret-stdin"],
        Some("123456"),
    );
    let signed = b.sign_for("yk", "dev-1");
    assert!(signed.status.success(), "{}", text(&signed));
    // While unlocked the daemon keeps the card open: another program
    // cannot take it exclusively.
    assert!(card.hold_exclusive().is_err());
    assert!(
        a.wait_for("exited 0", 1, Duration::from_secs(30)),
        "{:?}\n{}",
        a.events(),
        b.daemon_log()
    );
    // Gone: the card is free, and the key is locked in the next daemon.
    drop(card.hold_exclusive().expect("the card is released"));
    let keys: serde_json::Value =
        serde_json::from_str(&b.ok(&["--json", "keys", "list"], None)).unwrap();
    let yk = keys
        .as_array()
        .and_then(|k| k.iter().find(|k| k["label"] == "yk"))
        .unwrap_or_else(|| panic!("{keys}"));
    assert_eq!(yk["unlocked"], false, "{yk}");
}

#[test]
fn systemd_socket_activate_passes_the_socket_as_systemd_does() {
    if Command::new("systemd-socket-activate")
        .arg("--help")
        .output()
        .is_err()
    {
        assert!(!in_ci(), "systemd-socket-activate missing under CI");
        eprintln!("SKIP: systemd-socket-activate is missing (Debian package systemd)");
        return;
    }
    let b = Bridge::unstarted(NOW, None, &[]);
    let run = b.home().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let socket = b.socket();
    let listen = format!("--listen={}", s(&socket));
    // It passes only the environment it is told to.
    let mut child = b
        .serve_command(
            &[
                "systemd-socket-activate",
                &listen,
                "-E",
                "KEYBRIDGE_HOME",
                "-E",
                "KEYBRIDGE_LOG",
                "-E",
                "NO_COLOR",
            ],
            &[],
        )
        .spawn()
        .unwrap();
    assert!(poll_until(Duration::from_secs(10), || socket.exists()));
    let status = b.cli(&["status"], None);
    let log = b.daemon_log();
    let _ = child.kill();
    let _ = child.wait();
    assert!(status.status.success(), "{}\n{log}", text(&status));
    assert!(log.contains("activated=true"), "{log}");
    assert!(!log.contains("another path"), "{log}");
}

#[test]
fn listen_variables_meant_for_another_process_or_too_many_sockets_are_refused() {
    let b = Bridge::unstarted(NOW, None, &[]);
    // LISTEN_PID of another process: not ours, the daemon binds its own.
    let mut child = b
        .serve_command(&[], &[])
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1")
        .spawn()
        .unwrap();
    let up = poll_until(Duration::from_secs(20), || {
        b.cli(&["status"], None).status.success()
    });
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert!(up, "{}", b.daemon_log());
    assert!(
        b.daemon_log().contains("activated=false"),
        "{}",
        b.daemon_log()
    );
    // Our pid with two sockets: refused before anything is read.
    let mut cmd = b.serve_command(
        &["sh", "-c", r#"LISTEN_PID=$$ LISTEN_FDS=2 exec "$0" "$@""#],
        &[],
    );
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let log = b.daemon_log();
    assert!(log.contains("passed 2 sockets"), "{log}");
}

/// `keybridge install --user` with `args`, in `home`.
fn install(home: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("keybridge"))
        .args(["install", "--user"])
        .args(args)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("KEYBRIDGE_HOME", home)
        .output()
        .unwrap()
}

#[test]
fn install_writes_user_units_that_systemd_accepts() {
    let home = tempfile::tempdir().unwrap();
    let printed = install(home.path(), &["--print", "--idle-exit", "15min"]);
    assert!(printed.status.success(), "{}", text(&printed));
    let printed = String::from_utf8(printed.stdout).unwrap();
    for line in [
        "ListenStream=%t/keybridge/bridge.sock",
        "SocketMode=0600",
        "Type=notify",
        "serve --idle-exit 900s",
        "NoNewPrivileges=yes",
        "Also=keybridge.socket",
    ] {
        assert!(printed.contains(line), "{line}: {printed}");
    }
    assert!(!home.path().join("config").exists(), "--print wrote files");

    let out = install(home.path(), &["--no-enable"]);
    assert!(out.status.success(), "{}", text(&out));
    let dir = home.path().join("config/systemd/user");
    let socket = std::fs::read_to_string(dir.join("keybridge.socket")).unwrap();
    let service = std::fs::read_to_string(dir.join("keybridge.service")).unwrap();
    assert!(socket.contains("[Socket]"), "{socket}");
    let exec = format!("ExecStart={} serve\n", bin("keybridge").display());
    assert!(service.contains(&exec), "{service}");
    // systemd's own checker reads them (Debian's systemd-analyze).
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(!in_ci(), "systemd-analyze missing under CI");
        eprintln!("SKIP: systemd-analyze is missing (Debian package systemd)");
        return;
    }
    let v = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.join("keybridge.socket"))
        .arg(dir.join("keybridge.service"))
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", text(&v));
    // Without --user, nothing: keybridge installs per user.
    let out = Command::new(bin("keybridge"))
        .arg("install")
        .env("XDG_CONFIG_HOME", home.path().join("other"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("--user"), "{}", text(&out));
}
