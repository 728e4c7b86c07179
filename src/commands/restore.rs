//! `kvs restore [FILE|-]`: seed or replace the data file from JSON Lines.
//!
//! Reads and validates the whole input first (through `snapshot`, by the
//! HTTP API's rules), and only then replaces the data file atomically,
//! holding the directory's lock so no server can start meanwhile. It must
//! never write anything when any input line is bad, and never overwrite a
//! data file it could not read.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read};
use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::RestoreArgs;
use crate::commands::offline;
use crate::error::{Error, Outcome};
use crate::storage::datadir::{Layout, Locked};
use crate::storage::store::Builder;
use crate::storage::{fault, snapshot, wal};

/// Inputs at least this large get a progress bar (on a terminal).
const PROGRESS_FROM_BYTES: u64 = 16 << 20;

pub fn run(args: RestoreArgs) -> Result<Outcome, Error> {
    // Checked before the lock is taken, so the refusal changes nothing.
    if crate::storage::datadir::Layout::new(&args.dir.path).is_cluster_member() {
        return Err(Error::RestoreCluster {
            dir: args.dir.path.clone(),
        });
    }
    let dir = Locked::open(&args.dir.path)?;
    let layout = dir.layout();

    // The current data: the data file with the logs replayed. Reading it
    // also means a data file or log that cannot be parsed is never
    // overwritten unseen, even with --force.
    let current = offline::load_sorted(layout, "")?;
    if !args.merge && !current.is_empty() && !args.force {
        return Err(Error::NotEmpty {
            dir: args.dir.path.clone(),
            keys: current.len(),
        });
    }
    let mut pairs = Builder::new();
    if args.merge {
        for (key, value) in current.iter() {
            pairs.push(key, value);
        }
    }
    drop(current);

    let input = open_input(&args.input)?;
    let progress = progress_bar(input.size);
    let reader = BufReader::with_capacity(1 << 20, progress.wrap_read(input.reader));
    read_input(reader, &input.name, args.max_value_bytes, &mut pairs)?;
    progress.finish_and_clear();

    // Only now that the input is known to be good is anything written.
    fold_logs(layout)?;
    let sorted = pairs.into_sorted();
    snapshot::write_atomic(&layout.snapshot(), sorted.iter())?;
    fault::crash_point("restore:after-write");
    println!(
        "restored {} keys into {}",
        sorted.len(),
        args.dir.path.display()
    );
    Ok(Outcome::Success)
}

/// If there are logs (a server crashed), writes the data file with them
/// replayed and removes them. Replacing the data file while logs remain
/// would let the next start replay old writes over the restored data;
/// folding first keeps the state the same at every step. The data is read
/// again rather than kept from before: this is rare, and holding it would
/// double what every restore keeps in memory.
fn fold_logs(layout: &Layout) -> Result<(), Error> {
    if !(layout.wal_prev().exists() || layout.wal().exists()) {
        return Ok(());
    }
    let current = offline::load_sorted(layout, "")?;
    wal::fold_into_data_file(layout, current.iter())?;
    Ok(())
}

/// Where the pairs come from.
struct Input {
    reader: Box<dyn Read>,
    /// How errors name it: the path, or "standard input".
    name: String,
    /// Its size, when known, for the progress bar.
    size: Option<u64>,
}

fn open_input(path: &Path) -> Result<Input, Error> {
    if path == Path::new("-") {
        return Ok(Input {
            reader: Box::new(io::stdin()),
            name: "standard input".into(),
            size: None,
        });
    }
    let file = File::open(path).map_err(|error| Error::File {
        path: path.to_owned(),
        error,
    })?;
    let size = file.metadata().ok().map(|m| m.len());
    Ok(Input {
        reader: Box::new(file),
        name: path.display().to_string(),
        size,
    })
}

fn read_input(
    input: impl BufRead,
    name: &str,
    max_value_bytes: u64,
    pairs: &mut Builder,
) -> Result<(), Error> {
    snapshot::read(input, name, Some(max_value_bytes), |key, value| {
        pairs.push(key, value)
    })
    .map_err(Error::Input)?;
    Ok(())
}

/// A bar for a large file, a byte counter for standard input, on stderr
/// only when it is a terminal; otherwise a bar that never draws.
fn progress_bar(size: Option<u64>) -> ProgressBar {
    if !io::stderr().is_terminal() || size.is_some_and(|s| s < PROGRESS_FROM_BYTES) {
        return ProgressBar::hidden();
    }
    match size {
        Some(size) => ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr())
            .with_style(
                ProgressStyle::with_template(
                    "reading {bar:40} {binary_bytes}/{binary_total_bytes} ({eta} left)",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template(
                "reading {spinner} {binary_bytes} ({binary_bytes_per_sec})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    }
}
