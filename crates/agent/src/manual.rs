//! Man pages and shell completions generated from a binary's clap
//! definitions, so that they cannot drift from `--help`. Both binaries
//! answer `--generate-manual DIR` (packaging/build-debs.sh runs them); the
//! packages ship the output. Generated files are build outputs, not sources.

use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// The flag packaging passes as the first argument. It is checked before
/// clap parses, not declared to clap, so that it shows up in no page and no
/// completion (bash completions list even hidden subcommands).
pub const FLAG: &str = "--generate-manual";

/// `Some(DIR)` when the binary was run as `<bin> --generate-manual DIR`.
pub fn requested() -> Option<PathBuf> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != FLAG {
        return None;
    }
    args.next().map(PathBuf::from)
}

/// Writes `<out>/man/<bin>.1` plus one page per subcommand
/// (`<bin>-<sub>.1`), and `<out>/completions/` for bash, zsh and fish.
pub fn write(mut command: clap::Command, out: &Path) -> std::io::Result<()> {
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

    #[test]
    fn writes_pages_for_subcommands_but_not_hidden_ones_and_completions() {
        let command = clap::Command::new("tool")
            .about("A tool.")
            .subcommand(clap::Command::new("run").about("Runs."))
            .subcommand(clap::Command::new("secret").about("Hidden.").hide(true));
        let dir = tempfile::tempdir().unwrap();
        write(command, dir.path()).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("man"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["tool-run.1", "tool.1"]);
        let page = std::fs::read_to_string(dir.path().join("man/tool.1")).unwrap();
        assert!(page.contains("Runs.") && !page.contains("Hidden."), "{page}");
        for file in ["tool.bash", "_tool", "tool.fish"] {
            let text = std::fs::read_to_string(dir.path().join("completions").join(file)).unwrap();
            assert!(text.contains("run"), "{file}: {text}");
        }
    }
}
