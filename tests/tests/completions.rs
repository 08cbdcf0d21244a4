//! Shell completions and man pages, made from the clap definitions of both
//! binaries: `keybridge completions SHELL`, `keybridge-device completions
//! SHELL` and `cargo xtask man`.
//!
//! Every subcommand, nested ones too, is in each script and has its page.
//! The bridge's subcommands come from its `Cli` (the library); the
//! device's, a binary only, from its `--help` at each level — the same
//! reading of the bridge's `--help` must give its `Cli`'s list. Bash must
//! parse the scripts and, sourced, complete each level's subcommands; zsh
//! (`zsh -n`) and fish (`fish --no-execute`, and `complete -C`) check theirs
//! when installed, and are skipped otherwise. man-db (`man --warnings`) and
//! groff (`groff -ww`) must render each page without a warning.

use clap::CommandFactory as _;
use keybridge_tests::{bin, output_text, path_str};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The shells whose scripts are checked.
const SHELLS: [&str; 3] = ["bash", "zsh", "fish"];

/// A subcommand as the words after the binary's name (`["keys", "create"]`).
type Words = Vec<String>;

/// The visible subcommands of `cmd` under `at`, at any depth.
fn walk(cmd: &clap::Command, at: &[String], out: &mut Vec<Words>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let mut words = at.to_vec();
        words.push(sub.get_name().to_owned());
        out.push(words.clone());
        walk(sub, &words, out);
    }
}

/// The bridge's subcommands, from its command-line definition.
fn bridge_subcommands() -> Vec<Words> {
    let mut out = vec![];
    walk(&keybridge::cli::Cli::command(), &[], &mut out);
    out
}

/// The subcommands `BINARY AT… --help` lists under `Commands:`, and theirs,
/// at any depth (not `help`).
fn help_subcommands(binary: &str, at: &[String], out: &mut Vec<Words>) {
    let o = Command::new(bin(binary))
        .args(at)
        .arg("--help")
        .output()
        .expect("running --help");
    assert!(
        o.status.success(),
        "{binary} {at:?} --help: {}",
        output_text(&o)
    );
    let help = String::from_utf8(o.stdout).expect("UTF-8 help");
    let listed = help
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty());
    for line in listed {
        // `  name  what it does`; a wrapped description is indented further.
        let Some(entry) = line.strip_prefix("  ").filter(|e| !e.starts_with(' ')) else {
            continue;
        };
        let name = entry.split_whitespace().next().expect("a name");
        if name == "help" {
            continue;
        }
        let mut words = at.to_vec();
        words.push(name.to_owned());
        out.push(words.clone());
        help_subcommands(binary, &words, out);
    }
}

/// The device's subcommands, from its `--help`.
fn device_subcommands() -> Vec<Words> {
    let mut out = vec![];
    help_subcommands("keybridge-device", &[], &mut out);
    out
}

fn sorted(words: &[Words]) -> Vec<Words> {
    let mut words = words.to_vec();
    words.sort();
    words
}

/// True if `program` runs (`program --version`).
fn installed(program: &str) -> bool {
    let there = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    // `cargo xtask deps` installs every one of them: under CI none is
    // skipped.
    assert!(
        there || !keybridge_tests::in_ci(),
        "{program} is missing under CI (cargo xtask deps)"
    );
    there
}

/// `binary completions shell`, run with no daemon, in an empty home and
/// with a socket that does not exist: the script, and nothing on stderr
/// nor in the home.
fn completion_script(binary: &str, shell: &str) -> String {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin(binary));
    if binary == "keybridge" {
        cmd.arg("--socket").arg(home.path().join("run/none.sock"));
    }
    let o = cmd
        .args(["completions", shell])
        .env("KEYBRIDGE_HOME", home.path())
        .env("XDG_RUNTIME_DIR", home.path())
        .stdin(Stdio::null())
        .output()
        .expect("running completions");
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "{binary} completions {shell}: {}",
        output_text(&o)
    );
    assert_eq!(
        std::fs::read_dir(home.path()).unwrap().count(),
        0,
        "{binary} completions {shell} wrote into its home"
    );
    let script = String::from_utf8(o.stdout).expect("a UTF-8 script");
    assert!(script.ends_with('\n'), "{binary} {shell}: no final newline");
    script
}

/// The words of a script: names, options, subcommand names.
fn tokens(script: &str) -> BTreeSet<&str> {
    script
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .filter(|t| !t.is_empty())
        .collect()
}

/// Fails with the command's output unless it succeeded with nothing on
/// stderr.
fn assert_clean(what: &str, o: &Output) {
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "{what}: {}",
        output_text(o)
    );
}

/// The candidates bash's completion offers after `words` (the binary's name
/// first), with the script in `file` sourced.
fn bash_complete(file: &Path, words: &[&str]) -> BTreeSet<String> {
    const DRIVER: &str = r#"
source "$1" || exit 1
shift
spec=$(complete -p "$1") || exit 1
f=${spec#*-F }
f=${f%% *}
COMP_WORDS=("$@" "")
COMP_CWORD=$#
COMP_LINE="$* "
COMP_POINT=${#COMP_LINE}
"$f" "$1" "" "${!#}"
printf '%s\n' "${COMPREPLY[@]}"
"#;
    let o = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", DRIVER, "bash"])
        .arg(file)
        .args(words)
        .stdin(Stdio::null())
        .output()
        .expect("running bash");
    assert!(
        o.status.success(),
        "bash completing {words:?}: {}",
        output_text(&o)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The candidates fish's completion offers for the command line `line`,
/// with the script in `file` sourced (no user configuration).
fn fish_complete(file: &Path, line: &str) -> BTreeSet<String> {
    let home = tempfile::tempdir().unwrap();
    let o = Command::new("fish")
        .arg("-c")
        .arg(format!("source {}; complete -C '{line}'", path_str(file)))
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .env("XDG_DATA_HOME", home.path().join("data"))
        .stdin(Stdio::null())
        .output()
        .expect("running fish");
    assert!(
        o.status.success(),
        "fish completing {line:?}: {}",
        output_text(&o)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.split('\t').next().unwrap_or_default().to_owned())
        .collect()
}

/// Each shell's script for `binary`: it names every subcommand in
/// `subcommands` and none of `hidden`, the shell parses it, and bash (and
/// fish, when installed) offers each level's subcommands.
fn check_completions(binary: &str, subcommands: &[Words], hidden: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    // The levels that have subcommands, and what they offer.
    let mut levels: Vec<(Words, Vec<&str>)> = vec![(vec![], vec![])];
    for words in subcommands {
        let (leaf, parent) = words.split_last().unwrap();
        match levels.iter_mut().find(|(at, _)| at.as_slice() == parent) {
            Some((_, children)) => children.push(leaf),
            None => levels.push((parent.to_vec(), vec![leaf])),
        }
    }
    for shell in SHELLS {
        let script = completion_script(binary, shell);
        let words = tokens(&script);
        for sub in subcommands {
            let name = sub.last().unwrap().as_str();
            assert!(
                words.contains(name),
                "{binary} {shell} completions lack {sub:?}"
            );
        }
        for name in hidden {
            assert!(
                !words.contains(name),
                "{binary} {shell} completions offer hidden {name:?}"
            );
        }
        let file = dir.path().join(format!("{binary}.{shell}"));
        std::fs::write(&file, &script).unwrap();
        let check: &[&str] = match shell {
            "bash" => &["bash", "-n"],
            "zsh" => &["zsh", "-n"],
            _ => &["fish", "--no-execute"],
        };
        if !installed(check[0]) {
            eprintln!(
                "{} not installed: {binary}'s {shell} script not parsed",
                check[0]
            );
            continue;
        }
        let o = Command::new(check[0])
            .args(&check[1..])
            .arg(&file)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_clean(&format!("{} {binary}.{shell}", check.join(" ")), &o);

        for (at, children) in &levels {
            let offered = match shell {
                "bash" => {
                    let line: Vec<&str> = std::iter::once(binary)
                        .chain(at.iter().map(String::as_str))
                        .collect();
                    bash_complete(&file, &line)
                }
                "fish" => fish_complete(&file, &format!("{binary} {} ", at.join(" "))),
                _ => continue,
            };
            for child in children {
                assert!(
                    offered.contains(*child),
                    "{shell}: `{binary} {} <TAB>` does not offer {child:?}: {offered:?}",
                    at.join(" ")
                );
            }
            if at.is_empty() {
                for name in hidden {
                    assert!(
                        !offered.contains(*name),
                        "{shell}: `{binary} <TAB>` offers hidden {name:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_help_lists_what_the_bridge_defines() {
    // The device's subcommands are read from its `--help`; the same
    // reading of the bridge's gives the list its definition has.
    let mut from_help = vec![];
    help_subcommands("keybridge", &[], &mut from_help);
    let defined = bridge_subcommands();
    assert_eq!(sorted(&from_help), sorted(&defined));
    assert!(defined.contains(&vec!["keys".to_owned(), "create".to_owned()]));
    assert!(defined.contains(&vec!["completions".to_owned()]));
}

#[test]
fn bridge_completions_name_every_subcommand_and_need_no_daemon() {
    check_completions("keybridge", &bridge_subcommands(), &[]);
}

#[test]
fn device_completions_name_every_subcommand_but_the_hidden_man() {
    let subcommands = device_subcommands();
    for words in [
        &["trust", "update"][..],
        &["policy", "set"],
        &["completions"],
    ] {
        let words: Words = words.iter().map(|w| w.to_string()).collect();
        assert!(subcommands.contains(&words), "{words:?}: {subcommands:?}");
    }
    check_completions("keybridge-device", &subcommands, &["man"]);
}

#[test]
fn xtask_man_writes_a_clean_page_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let o = Command::new(env!("CARGO"))
        .current_dir(root)
        .args(["xtask", "man", "--out"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("running cargo xtask man");
    assert!(o.status.success(), "cargo xtask man: {}", output_text(&o));

    let page = |binary: &str, words: &[String]| {
        std::iter::once(binary)
            .chain(words.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join("-")
            + ".1"
    };
    let mut expected: BTreeSet<String> = ["keybridge.1", "keybridge-device.1"]
        .map(String::from)
        .into();
    expected.extend(bridge_subcommands().iter().map(|w| page("keybridge", w)));
    expected.extend(
        device_subcommands()
            .iter()
            .map(|w| page("keybridge-device", w)),
    );
    assert!(expected.contains("keybridge-keys-create.1"));
    assert!(expected.contains("keybridge-device-trust-update.1"));

    let written: BTreeSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(written, expected, "the pages written");
    // And it says which.
    let stdout = String::from_utf8_lossy(&o.stdout);
    let listed: BTreeSet<String> = stdout
        .lines()
        .filter_map(|l| Path::new(l.trim()).strip_prefix(dir.path()).ok())
        .map(|p| p.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, expected, "the pages listed: {stdout}");

    let man = installed("man");
    let groff = installed("groff");
    if !man && !groff {
        eprintln!("neither man nor groff installed: the pages are not rendered");
    }
    for name in &expected {
        let file = dir.path().join(name);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains(".TH "), "{name}: no title");
        if man {
            let o = Command::new("man")
                .args(["--warnings", "-l", "-Tutf8"])
                .arg(&file)
                .env("LC_ALL", "C.UTF-8")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .output()
                .unwrap();
            assert_clean(&format!("man --warnings -l {name}"), &o);
        }
        if groff {
            // -k: preconv, for the pages' UTF-8 (…, —).
            let o = Command::new("groff")
                .args(["-k", "-man", "-z", "-ww"])
                .arg(&file)
                .env("LC_ALL", "C.UTF-8")
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert_clean(&format!("groff -k -man -z -ww {name}"), &o);
        }
    }
}
