//! Raising the Argon2id costs of a passphrase key, end to end: `keys create
//! --kdf-memory/--kdf-passes/--kdf-lanes` through the API to the backend,
//! the costs shown so that the agent can write them down, the same flags
//! making the same key in another home (and other flags another key),
//! costs out of range refused with nothing created, the policy's floor
//! (`min_kdf_memory_mib`, `min_kdf_passes`) refusing new keys below it and
//! warning of old ones, and a key record edited to tiny costs refused when
//! the daemon loads it.

use keybridge_tests::*;
use serde_json::{Value, json};
use std::process::Output;
use std::time::Instant;

const NOW: i64 = 1_800_000_000;

fn json_out(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `keybridge --json keys create --backend passphrase` of a key of
/// `agent` in acme, labelled `label`, with `flags`.
fn create(b: &Bridge, agent: &str, label: &str, flags: &[&str]) -> Output {
    let mut args = vec![
        "--json",
        "keys",
        "create",
        "--backend",
        "passphrase",
        "--account",
        "acme",
        "--agent",
        agent,
        "--label",
        label,
        "--secret-stdin",
    ];
    args.extend_from_slice(flags);
    b.cli(&args, Some(PASSPHRASE))
}

/// [`create`] that must succeed; the answer.
fn created(b: &Bridge, agent: &str, label: &str, flags: &[&str]) -> Value {
    let out = create(b, agent, label, flags);
    assert!(
        out.status.success(),
        "{flags:?}: {}\n{}",
        stderr(&out),
        b.daemon_log()
    );
    json_out(&String::from_utf8(out.stdout).unwrap())
}

/// The daemon's keys (`keys list --json`).
fn keys(b: &Bridge) -> Vec<Value> {
    json_out(&b.ok(&["--json", "keys", "list"], None))
        .as_array()
        .unwrap()
        .clone()
}

const RAISED: [&str; 4] = ["--kdf-memory", "256MiB", "--kdf-passes", "4"];

#[test]
fn a_key_with_raised_costs_shows_them_unlocks_signs_and_verifies() {
    let b = Bridge::start(NOW);
    let key = created(&b, "alice", "alice", &RAISED);
    let kid = key["kid"].as_str().unwrap().to_owned();
    assert_eq!(key["new"], true);
    assert_eq!(
        key["kdf"],
        json!({"memory_kib": 262144, "passes": 4, "lanes": 1}),
        "{key:#}"
    );

    // Shown where an agent looks: keys list --json, keys show (both forms).
    let listed = keys(&b);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["kdf"], key["kdf"]);
    let shown = json_out(&b.ok(&["--json", "keys", "show", &kid[..12]], None));
    assert_eq!(shown["kdf"], key["kdf"]);
    assert_eq!(shown["params"]["m_kib"], 262144);
    assert_eq!(shown["params"]["t"], 4);
    assert_eq!(shown["params"]["p"], 1);
    let human = b.ok(&["keys", "show", "alice"], None);
    assert!(
        human.contains("kdf: Argon2id 256 MiB, 4 passes, 1 lane"),
        "{human}"
    );
    assert!(
        human.contains("write these down with your passphrase"),
        "{human}"
    );
    assert!(
        human.contains("recreate with: --kdf-memory 256MiB --kdf-passes 4 --kdf-lanes 1"),
        "{human}"
    );

    // A wrong passphrase is still wrong, after the whole derivation.
    let wrong = b.cli(
        &["unlock", "alice", "--secret-stdin"],
        Some("not the passphrase"),
    );
    assert_eq!(wrong.status.code(), Some(5), "{}", stderr(&wrong));
    // Past the backoff of that wrong attempt.
    let now = NOW + 1;
    b.set_time(now);

    let started = Instant::now();
    b.ok(
        &["unlock", "alice", "--remember", "daily", "--secret-stdin"],
        Some(PASSPHRASE),
    );
    eprintln!(
        "unlock of a 256 MiB, 4-pass key: {:?} (CLI + daemon, this build)",
        started.elapsed()
    );
    b.sign_and_verify("alice", now);
}

#[test]
fn the_same_flags_make_the_same_key_in_another_home_and_other_flags_another_key() {
    let first = Bridge::start(NOW);
    let kid = created(&first, "alice", "alice", &RAISED)["kid"]
        .as_str()
        .unwrap()
        .to_owned();

    // A new machine: the same passphrase, account, agent and flags.
    let second = Bridge::start(NOW);
    let again = created(&second, "alice", "alice", &RAISED);
    assert_eq!(again["kid"], kid.as_str(), "the same key again");
    assert_eq!(again["new"], true, "new in this home");
    // Spelt another way, the same costs: the same key.
    let mut kids = vec![kid.clone()];
    let same = created(
        &second,
        "alice",
        "alice-same",
        &[
            "--kdf-memory",
            "262144KiB",
            "--kdf-passes",
            "4",
            "--kdf-lanes",
            "1",
        ],
    );
    assert_eq!(same["kid"], kid.as_str());
    assert_eq!(same["new"], false, "already present");

    // Any other cost is another key, and so are the defaults.
    for (label, flags) in [
        ("defaults", &[][..]),
        (
            "more-passes",
            &["--kdf-memory", "256MiB", "--kdf-passes", "5"][..],
        ),
        (
            "more-memory",
            &["--kdf-memory", "320MiB", "--kdf-passes", "4"][..],
        ),
        (
            "two-lanes",
            &[
                RAISED[0],
                RAISED[1],
                RAISED[2],
                RAISED[3],
                "--kdf-lanes",
                "2",
            ][..],
        ),
    ] {
        let other = created(&second, "alice", label, flags);
        let other_kid = other["kid"].as_str().unwrap().to_owned();
        assert!(!kids.contains(&other_kid), "{label}: {other:#}");
        kids.push(other_kid);
    }
    assert_eq!(keys(&second).len(), 5);
}

#[test]
fn costs_below_the_defaults_or_above_the_bounds_are_refused_and_nothing_is_created() {
    let b = Bridge::start(NOW);
    // The CLI refuses before it asks for the passphrase (a usage error).
    for (flags, says) in [
        (&["--kdf-memory", "32MiB"][..], "allowed 64 MiB to 1 GiB"),
        (&["--kdf-memory", "2GiB"][..], "allowed 64 MiB to 1 GiB"),
        (&["--kdf-memory", "256"][..], "no unit"),
        (&["--kdf-memory", "256MB"][..], "KiB, MiB or GiB"),
        (&["--kdf-passes", "2"][..], "allowed 3 to 64"),
        (&["--kdf-passes", "65"][..], "allowed 3 to 64"),
        (&["--kdf-lanes", "0"][..], "allowed 1 to 16"),
        (&["--kdf-lanes", "17"][..], "allowed 1 to 16"),
    ] {
        let out = create(&b, "alice", "alice", flags);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{flags:?}: {}", stderr(&out));
    }
    // Costs are for passphrase keys only.
    let out = b.cli(
        &[
            "keys",
            "create",
            "--backend",
            "pkcs11",
            "--account",
            "acme",
            "--agent",
            "alice",
            "--uri",
            "pkcs11:token=t;object=k?module-path=/usr/lib/softhsm/libsofthsm2.so",
            "--kdf-passes",
            "4",
            "--secret-stdin",
        ],
        Some("123456"),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("are for --backend passphrase"),
        "{}",
        stderr(&out)
    );

    // The API refuses the same, whoever the client is (400 bad_request).
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = b.http().connect().await.unwrap();
        for (costs, says) in [
            (
                json!({"kdf_memory_kib": 8}),
                "Argon2id memory 8 KiB is out of range: allowed 64 MiB to 1 GiB",
            ),
            (
                json!({"kdf_memory_kib": 2 * 1024 * 1024}),
                "Argon2id memory 2 GiB is out of range: allowed 64 MiB to 1 GiB",
            ),
            (
                json!({"kdf_passes": 1}),
                "Argon2id passes 1 is out of range: allowed 3 to 64",
            ),
            (
                json!({"kdf_lanes": 64}),
                "Argon2id lanes 64 is out of range: allowed 1 to 16",
            ),
        ] {
            let mut body = json!({
                "backend": "passphrase", "account": "acme", "agent": "alice",
                "secret": PASSPHRASE,
            });
            body.as_object_mut()
                .unwrap()
                .extend(costs.as_object().unwrap().clone());
            let (status, problem) = c.request("POST", "/v1/keys", Some(&body)).await.unwrap();
            assert_eq!(status, 400, "{problem:#}");
            assert_eq!(problem["code"], "bad_request");
            assert_eq!(problem["detail"], says);
        }
        // Costs for a hardware key: refused too.
        let (status, problem) = c
            .request(
                "POST",
                "/v1/keys",
                Some(&json!({
                    "backend": "tpm", "account": "acme", "agent": "alice",
                    "uri": "tpm:handle=0x81000101", "secret": "1234", "kdf_passes": 4,
                })),
            )
            .await
            .unwrap();
        assert_eq!(status, 400, "{problem:#}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("for passphrase keys"),
            "{problem:#}"
        );
    });

    // Nothing was created: no key served, no record written.
    assert!(keys(&b).is_empty());
    let records = std::fs::read_dir(b.home().join("state/keys"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(records, 0);
}

#[test]
fn the_policy_floor_refuses_new_keys_below_it_naming_its_file_and_warns_of_older_ones() {
    let mut b = Bridge::start(NOW);
    // Made before the administrator raised the floor.
    let old = created(&b, "alice", "alice", &[]);
    assert_eq!(
        old["kdf"],
        json!({"memory_kib": 65536, "passes": 3, "lanes": 1})
    );
    let strong = created(&b, "carol", "carol", &RAISED);
    assert!(strong["kdf"].get("below_policy").is_none());

    std::fs::write(
        b.system_policy(),
        "min_kdf_memory_mib = 256\nmin_kdf_passes = 4\n",
    )
    .unwrap();
    b.restart();
    let policy = b.system_policy().display().to_string();

    // A new key below the floor: policy_denied (exit 9), the file named.
    for flags in [
        &[][..],
        &["--kdf-memory", "256MiB"][..],
        &["--kdf-passes", "4"][..],
    ] {
        let out = create(&b, "bob", "bob", flags);
        assert_eq!(out.status.code(), Some(9), "{flags:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(&policy), "{flags:?}: {err}");
        assert!(err.contains("min_kdf_"), "{flags:?}: {err}");
        assert!(
            err.contains("--kdf-memory 256MiB --kdf-passes 4"),
            "{flags:?}: {err}"
        );
    }
    let err = stderr(&create(&b, "bob", "bob", &[]));
    assert!(
        err.contains(&format!(
            "Argon2id memory 64 MiB is below min_kdf_memory_mib = 256 of {policy}"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "Argon2id passes 3 is below min_kdf_passes = 4 of {policy}"
        )),
        "{err}"
    );
    assert_eq!(keys(&b).len(), 2, "nothing created");
    // At the floor: created.
    let bob = created(&b, "bob", "bob", &RAISED);
    assert!(bob["kdf"].get("below_policy").is_none(), "{bob:#}");

    // The old key: a warning in status and doctor, never a refusal.
    let status = json_out(&b.ok(&["--json", "status"], None));
    assert_eq!(status["policy"]["kdf_floor"]["min_kdf_memory_mib"], 256);
    let view = |label: &str| {
        status["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["label"] == label)
            .unwrap()
            .clone()
    };
    let below = view("alice")["kdf"]["below_policy"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(below.contains("min_kdf_memory_mib = 256"), "{below}");
    assert!(view("carol")["kdf"].get("below_policy").is_none());
    let human = b.ok(&["status"], None);
    assert!(human.contains("WARNING: key alice:"), "{human}");
    assert!(human.contains("still signs"), "{human}");
    assert!(!human.contains("WARNING: key carol"), "{human}");

    let doctor = b.cli(
        &[
            "--json",
            "doctor",
            "--system-policy",
            &policy,
            "--tpm-device",
            "/nonexistent/tpmrm0",
        ],
        None,
    );
    let v = json_out(&String::from_utf8(doctor.stdout).unwrap());
    let kdf: Vec<&Value> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == "kdf")
        .collect();
    assert_eq!(kdf.len(), 1, "{v:#}");
    assert_eq!(kdf[0]["outcome"], "warn", "{v:#}");
    assert!(
        kdf[0]["detail"].as_str().unwrap().contains("alice"),
        "{v:#}"
    );
    assert!(
        kdf[0]["fix"].as_str().unwrap().contains("--replaces alice"),
        "{v:#}"
    );

    // It still signs.
    b.ok(
        &["unlock", "alice", "--remember", "daily", "--secret-stdin"],
        Some(PASSPHRASE),
    );
    b.sign_and_verify("alice", NOW);
}

#[test]
fn a_key_record_edited_to_tiny_costs_is_refused_when_loaded() {
    let mut b = Bridge::start(NOW);
    let kid = created(&b, "alice", "alice", &RAISED)["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    b.signal("-TERM");
    // Someone with write access to the state folder makes guessing cheap
    // for the next key unlocked here… or so they hope.
    let record = b.home().join(format!("state/keys/{kid}.json"));
    let mut stored = json_out(&std::fs::read_to_string(&record).unwrap());
    assert_eq!(stored["record"]["params"]["m_kib"], 262144);
    stored["record"]["params"]["m_kib"] = 8.into();
    stored["record"]["params"]["t"] = 1.into();
    std::fs::write(&record, serde_json::to_vec_pretty(&stored).unwrap()).unwrap();
    b.restart();

    // The key is not served: not listed, no unlock derives with 8 KiB.
    assert!(keys(&b).is_empty(), "{:?}", keys(&b));
    let out = b.cli(&["unlock", "alice", "--secret-stdin"], Some(PASSPHRASE));
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    // The daemon says which file and why.
    let log = b.daemon_log();
    assert!(log.contains(&format!("{kid}.json")), "{log}");
    assert!(
        log.contains("Argon2id memory 8 KiB is out of range: allowed 64 MiB to 1 GiB"),
        "{log}"
    );
    assert!(log.contains("it was edited"), "{log}");
}
