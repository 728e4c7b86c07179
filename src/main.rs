//! The `kvs` binary: parse the command line, run one subcommand, turn its
//! result into an exit code, and (in builds that ask for one) name the
//! global allocator. Nothing else lives here.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use kvs::cli::{Cli, Command};
use kvs::commands::{completions, dump, get, restore, serve};
use kvs::error::{self, Error, Outcome};
use kvs::shutdown;

// Other allocators than glibc's, built only on request to compare them
// (see the `allocator-*` features in Cargo.toml).
#[cfg(all(feature = "allocator-mimalloc", feature = "allocator-jemalloc"))]
compile_error!("choose one of the features allocator-mimalloc and allocator-jemalloc");

#[cfg(feature = "allocator-mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "allocator-jemalloc", not(feature = "allocator-mimalloc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(outcome) => outcome.into(),
        Err(e) => {
            eprintln!("kvs: error: {e}");
            ExitCode::from(error::FAILURE)
        }
    }
}

fn run(cli: Cli) -> Result<Outcome, Error> {
    match cli.command {
        Command::Serve(args) => {
            init_logging(args.log_level.into());
            // Installed before the data is loaded, so a signal that comes
            // while loading still ends in an orderly save and exit 0.
            let signals = shutdown::Signals::install()?;
            serve::run(args, signals)?;
            Ok(Outcome::Success)
        }
        Command::Get(args) => get::run(args),
        Command::Dump(args) => dump::run(args),
        Command::Restore(args) => restore::run(args),
        Command::Completions(args) => completions::run(args),
    }
}

/// Log lines go to stderr, one event a line, with a UTC timestamp.
fn init_logging(level: tracing::Level) {
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
