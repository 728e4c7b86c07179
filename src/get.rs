//! `kvs get KEY`: one value from the data file, byte for byte.
//!
//! Streams the file once, keeping only the latest value seen for the key,
//! so it costs the same memory for a million keys as for ten. It must never
//! create, lock or change a file.

use std::io::{IsTerminal, Write};

use crate::cli::GetArgs;
use crate::error::{Error, Outcome};
use crate::{offline, snapshot, validate};

pub fn run(args: GetArgs) -> Result<Outcome, Error> {
    validate::key(&args.key).map_err(|reason| Error::InvalidKey {
        key: args.key.clone(),
        reason,
    })?;
    let dir = offline::open_read_only(&args.dir.path)?;
    let mut found: Option<String> = None;
    snapshot::read_file(&dir.layout().snapshot(), |key, value| {
        // Later lines win, as when the server loads the file.
        if key == args.key {
            found = Some(value.to_owned());
        }
    })
    .map_err(Error::Load)?;

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
