//! `kvs get KEY`: one value from the data file, byte for byte.
//!
//! Streams the data file and the logs once, keeping only the latest value
//! seen for the key, so it costs the same memory for a million keys as for
//! ten. It must never
//! create, lock or change a file.

use std::io::{IsTerminal, Write};

use crate::cli::GetArgs;
use crate::commands::offline;
use crate::commands::offline::Replay;
use crate::error::{Error, Outcome};
use crate::storage::validate;
use crate::storage::wal::Op;

pub fn run(args: GetArgs) -> Result<Outcome, Error> {
    validate::key(&args.key).map_err(|reason| Error::InvalidKey {
        key: args.key.clone(),
        reason,
    })?;
    let dir = offline::open_read_only(&args.dir.path)?;
    let mut lookup = Lookup {
        key: &args.key,
        found: None,
    };
    offline::read_all(dir.layout(), &mut lookup)?;
    let found = lookup.found;

    let Some(value) = found else {
        eprintln!("key not found: {}", args.key);
        return Ok(Outcome::NotFound);
    };
    let stdout = std::io::stdout();
    let terminal = stdout.is_terminal();
    let mut out = stdout.lock();
    let written = out
        .write_all(value.as_bytes())
        // A prompt should not end up glued to the value on a terminal;
        // in a pipe the bytes must be exactly the value.
        .and_then(|()| {
            if terminal {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    crate::error::stdout_result(written)
}

/// Follows one key through the data file and the logs: later lines and
/// records win, as when the server loads the data.
struct Lookup<'a> {
    key: &'a str,
    found: Option<String>,
}

impl Replay for Lookup<'_> {
    fn restart(&mut self) {
        self.found = None;
    }

    fn pair(&mut self, key: &str, value: &str) {
        if key == self.key {
            self.found = Some(value.to_owned());
        }
    }

    fn op(&mut self, op: Op<'_>) {
        match op {
            Op::Set { key, value } if key == self.key => self.found = Some(value.into_owned()),
            Op::Delete { key } if key == self.key => self.found = None,
            Op::Clear => self.found = None,
            _ => {}
        }
    }
}
