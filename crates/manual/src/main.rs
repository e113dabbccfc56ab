//! `halite-manual DIR`: the man pages and shell completions of
//! `halite-master` and `halite-agent`, generated from their clap definitions
//! (`halite_master::args`, `halite_agent::args`) so that they cannot drift
//! from `--help`. packaging/build-debs.sh runs it; the packages ship the
//! output. A packaging-time tool: the daemons carry no generator.
//!
//! Exit codes: 0 written; 1 cannot write (the message names the path);
//! 2 bad command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap_complete::Shell;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: halite-manual DIR (writes DIR/man and DIR/completions)");
        return ExitCode::from(2);
    };
    let out = PathBuf::from(out);
    for command in [halite_master::args::command(), halite_agent::args::command()] {
        let name = command.get_name().to_owned();
        if let Err(error) = write(command, &out) {
            eprintln!("error: cannot write {name}'s manual into {}: {error}", out.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// Writes `<out>/man/<bin>.1` plus one page per subcommand
/// (`<bin>-<sub>.1`), and `<out>/completions/` for bash, zsh and fish.
fn write(mut command: clap::Command, out: &Path) -> std::io::Result<()> {
    let name = command.get_name().to_owned();
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    // `generate_to` builds the command itself with the help subcommand
    // disabled; building it here first would add `help` pages.
    clap_mangen::generate_to(command.clone(), &man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut command, &name, &completions)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn writes_pages_for_subcommands_but_not_hidden_ones_and_completions() {
        let command = clap::Command::new("tool")
            .about("A tool.")
            .subcommand(clap::Command::new("run").about("Runs."))
            .subcommand(clap::Command::new("secret").about("Hidden.").hide(true));
        let dir = tempfile::tempdir().unwrap();
        write(command, dir.path()).unwrap();
        assert_eq!(names(&dir.path().join("man")), ["tool-run.1", "tool.1"]);
        let page = std::fs::read_to_string(dir.path().join("man/tool.1")).unwrap();
        assert!(page.contains("Runs.") && !page.contains("Hidden."), "{page}");
        for file in ["tool.bash", "_tool", "tool.fish"] {
            let text = std::fs::read_to_string(dir.path().join("completions").join(file)).unwrap();
            assert!(text.contains("run"), "{file}: {text}");
        }
    }

    /// The files the packages' assets name (crates/*/Cargo.toml,
    /// `[package.metadata.deb]`) and packaging/check-debs.sh expects.
    #[test]
    fn both_binaries_get_the_pages_and_completions_the_packages_ship() {
        let dir = tempfile::tempdir().unwrap();
        for command in [halite_master::args::command(), halite_agent::args::command()] {
            write(command, dir.path()).unwrap();
        }
        let pages = names(&dir.path().join("man"));
        for page in ["halite-master.1", "halite-master-init.1", "halite-master-run.1", "halite-master-keys.1"]
            .into_iter()
            .chain(["halite-agent.1", "halite-agent-run.1"])
        {
            assert!(pages.iter().any(|p| p == page), "no {page} in {pages:?}");
        }
        let run = std::fs::read_to_string(dir.path().join("man/halite-agent-run.1")).unwrap();
        assert!(run.contains(".SH SYNOPSIS") && run.contains("ready id="), "{run}");
        for binary in ["halite-master", "halite-agent"] {
            for file in [format!("{binary}.bash"), format!("_{binary}"), format!("{binary}.fish")] {
                let text = std::fs::read_to_string(dir.path().join("completions").join(&file)).unwrap();
                assert!(text.contains("run"), "{file}: {text}");
            }
        }
    }
}
