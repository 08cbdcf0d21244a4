//! `keybridge completions SHELL`: the shell's completion script, generated
//! by `clap_complete` from the command line's own definition ([`Cli`]), so
//! it always knows every subcommand and option. It needs no daemon and
//! reads no file. (The man pages come from the same definition:
//! `cargo xtask man`.)

use super::Cli;
use anyhow::Context as _;
use clap::CommandFactory as _;
use std::io::Write as _;

/// The end of `keybridge completions --help`: where each shell looks.
pub(super) const AFTER_HELP: &str = "\
Examples:
  keybridge completions bash > ~/.local/share/bash-completion/completions/keybridge
  keybridge completions zsh > ~/.zfunc/_keybridge    (with fpath+=(~/.zfunc) before compinit)
  keybridge completions fish > ~/.config/fish/completions/keybridge.fish";

/// Writes the completion script for `shell` to standard output.
pub(super) fn run(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let script = script(shell);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .context("writing the completion script")
}

/// The completion script for `shell`.
fn script(shell: clap_complete::Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_the_binary() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let script = String::from_utf8(script(shell)).expect("UTF-8");
            assert!(script.contains("keybridge"), "{shell}");
            assert!(script.contains("completions"), "{shell}");
        }
    }
}
