//! Shell completions and man pages, generated from the one clap definition
//! in `cli`, so that they can never describe flags the binary lacks.
//!
//! Owns the names of the shipped files. It must never describe the command
//! line itself: everything it writes comes from `cli::command()`.

use std::io::{self, Write};
use std::path::Path;

use clap_complete::Shell;

use crate::cli::{self, CompletionsArgs};
use crate::error::{Error, Outcome};

/// `kvs completions SHELL`: the script on standard output.
pub fn run(args: CompletionsArgs) -> Result<Outcome, Error> {
    let mut out = io::stdout().lock();
    clap_complete::generate(args.shell, &mut cli::command(), "kvs", &mut out);
    crate::error::stdout_result(out.flush())
}

/// The shells `completions/` holds a script for.
pub const SHELLS: [Shell; 5] = [
    Shell::Bash,
    Shell::Zsh,
    Shell::Fish,
    Shell::Elvish,
    Shell::PowerShell,
];

/// Writes `out_dir/completions/` (one script per shell, named as each
/// shell expects) and `out_dir/man/` (`kvs.1` and one page per
/// subcommand). The repository's copies are made, and checked, by
/// `tests/shipped_files.rs`.
pub fn write_all(out_dir: &Path) -> io::Result<()> {
    let completions = out_dir.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in SHELLS {
        clap_complete::generate_to(shell, &mut cli::command(), "kvs", &completions)?;
    }
    let man = out_dir.join("man");
    std::fs::create_dir_all(&man)?;
    clap_mangen::generate_to(cli::command(), &man)
}
