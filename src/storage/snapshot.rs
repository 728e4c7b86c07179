//! The data-file format: JSON Lines, one `{"key":"...","value":"..."}` per
//! line, sorted by key, every line ending in `\n`.
//!
//! This is the only code that reads or writes that format. Reading reports
//! the file and physical line of anything it cannot accept and never skips a
//! line; writing replaces a file only by temp file, fsync, rename and
//! directory fsync, so a crash at any moment leaves the old file or the new
//! one, complete. It must never hold more than one line of input in memory
//! at once, and never decide where files live (that is `datadir`'s job).

use std::borrow::Cow;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rayon::iter::ParallelIterator;
use rayon::slice::ParallelSlice;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::storage::{fault, validate};

/// What a line is written as. Field order is the format's field order.
#[derive(Serialize)]
struct RecordOut<'a> {
    key: &'a str,
    value: &'a str,
}

/// What a line must parse as: exactly these two string fields. `Cow`
/// borrows from the line unless the JSON string has escapes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordIn<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(borrow)]
    value: Cow<'a, str>,
}

/// A data file, or other JSON Lines input, that cannot be accepted.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error("cannot read {source_name}: {error}")]
    Io {
        source_name: String,
        #[source]
        error: io::Error,
    },
    #[error("{source_name}, line {line}: {reason}")]
    Invalid {
        source_name: String,
        line: u64,
        reason: String,
    },
}

#[cfg(test)]
impl ReadError {
    /// The line at fault, when the fault is a line's content.
    pub fn line(&self) -> Option<u64> {
        match self {
            ReadError::Invalid { line, .. } => Some(*line),
            ReadError::Io { .. } => None,
        }
    }
}

/// A failed atomic replacement. The file it was meant to replace is as it
/// was before.
#[derive(Debug, Error)]
#[error("cannot save {}: {step} failed: {error}", target.display())]
pub struct WriteError {
    target: PathBuf,
    step: &'static str,
    #[source]
    error: io::Error,
}

/// The one step that fails after the rename.
const SYNC_DIR_STEP: &str = "syncing the directory";

impl WriteError {
    /// Whether the new file had already replaced the target (only the
    /// directory sync after the rename failed).
    pub fn replaced(&self) -> bool {
        self.step == SYNC_DIR_STEP
    }
}

/// What a read saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadSummary {
    /// Records accepted, repeated keys counted each time.
    pub records: u64,
    /// Bytes read, newlines included.
    pub bytes: u64,
}

/// What a write produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteSummary {
    pub records: u64,
    pub bytes: u64,
}

/// Where an atomic write of `target` stages its data. A file by this name
/// is only ever a leftover of an interrupted write, never data.
pub fn temp_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().map(OsString::from).unwrap_or_default();
    name.push(".tmp");
    target.with_file_name(name)
}

/// Reads the data file at `path`, calling `each` with every record in file
/// order. A missing file reads as empty: a new store has no file yet.
pub fn read_file(path: &Path, each: impl FnMut(&str, &str)) -> Result<ReadSummary, ReadError> {
    let name = path.display().to_string();
    match File::open(path) {
        Ok(file) => read(BufReader::with_capacity(1 << 20, file), &name, None, each),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(ReadSummary::default()),
        Err(error) => Err(ReadError::Io {
            source_name: name,
            error,
        }),
    }
}

/// Reads JSON Lines from `input`, calling `each` with every record in order.
/// `source_name` names the input in errors (a path, or "standard input").
///
/// Every record is checked by the same rules as the HTTP API (`validate`).
/// The value-size limit applies only when `max_value_bytes` is given: it is
/// an admission rule for data coming in (`kvs restore`), not a property of
/// the data, and a server must never refuse the file it saved itself.
pub fn read(
    mut input: impl BufRead,
    source_name: &str,
    max_value_bytes: Option<u64>,
    mut each: impl FnMut(&str, &str),
) -> Result<ReadSummary, ReadError> {
    let mut summary = ReadSummary::default();
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    // With a value limit, no valid line can be longer than this (a value
    // escaped at worst 6 bytes a byte, a key, and the JSON around them), so
    // an endless line is refused instead of filling memory.
    let max_line = max_value_bytes.map(|max| max.saturating_mul(6).saturating_add(4096));
    loop {
        buf.clear();
        let limit = max_line.unwrap_or(u64::MAX);
        let n = (&mut input)
            .take(limit)
            .read_until(b'\n', &mut buf)
            .map_err(|error| ReadError::Io {
                source_name: source_name.to_owned(),
                error,
            })?;
        if n == 0 {
            return Ok(summary);
        }
        line_no += 1;
        summary.bytes += n as u64;
        if n as u64 == limit && !buf.ends_with(b"\n") {
            return Err(ReadError::Invalid {
                source_name: source_name.to_owned(),
                line: line_no,
                reason: format!("longer than any valid record ({limit} bytes and no end in sight)"),
            });
        }
        let invalid = |reason: String| ReadError::Invalid {
            source_name: source_name.to_owned(),
            line: line_no,
            reason,
        };
        let line = std::str::from_utf8(&buf)
            .map_err(|e| invalid(format!("not valid UTF-8 (at byte {})", e.valid_up_to() + 1)))?;
        // Only ASCII whitespace: a line of, say, no-break spaces is not
        // blank, it is a bad record.
        if line.trim_ascii().is_empty() {
            continue;
        }
        let record = parse_line(line).map_err(invalid)?;
        if let Some(max) = max_value_bytes
            && record.value.len() as u64 > max
        {
            return Err(invalid(format!(
                "{} (key {}: {} bytes, more than the limit of {max}; see --max-value-bytes)",
                validate::ValueError::TooLarge,
                quote(&record.key),
                record.value.len()
            )));
        }
        each(&record.key, &record.value);
        summary.records += 1;
    }
}

fn parse_line(line: &str) -> Result<RecordIn<'_>, String> {
    let record: RecordIn = serde_json::from_str(line).map_err(|e| describe_json_error(&e))?;
    validate::key(&record.key).map_err(|e| format!("{e}: {}", quote(&record.key)))?;
    validate::value(&record.value).map_err(|e| format!("{e} (key {})", quote(&record.key)))?;
    Ok(record)
}

/// serde_json's message without its "at line 1 column N" suffix (every
/// input it sees is one line), with the column kept.
fn describe_json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let message = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(message, _)| message);
    let kind = match e.classify() {
        serde_json::error::Category::Data => "not a record of the data-file format",
        _ => "not valid JSON",
    };
    let at = match e.column() {
        0 => String::new(),
        column => format!(" at column {column}"),
    };
    format!("{kind}: {message}{at}; each line must be {{\"key\":\"...\",\"value\":\"...\"}}")
}

/// A key as shown in an error: JSON-quoted so that odd characters are
/// visible, and cut short so that a huge one does not flood the terminal.
fn quote(key: &str) -> String {
    const MAX_CHARS: usize = 64;
    match key.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}...", serde_json::Value::from(&key[..cut])),
        None => serde_json::Value::from(key).to_string(),
    }
}

/// Writes one record as a data-file line.
pub fn write_record(out: &mut impl Write, key: &str, value: &str) -> io::Result<()> {
    serde_json::to_writer(&mut *out, &RecordOut { key, value })?;
    out.write_all(b"\n")
}

/// Replaces `target` with the given records: writes `temp_path(target)`,
/// fsyncs it, renames it over `target` and fsyncs the directory. On error
/// the temp file is removed and `target` is untouched.
///
/// Serializing is most of a large save's time, so records are taken in
/// batches, each batch is serialized in pieces on every core while the
/// previous one is written, and the pieces go out in order: the file is
/// the same as a one-by-one write, and memory holds two batches at most.
pub fn write_atomic<'a>(
    target: &Path,
    records: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<WriteSummary, WriteError> {
    /// Records a batch holds: about 2 MiB of 100-byte values, so the two
    /// batches in memory are small beside the store.
    const BATCH: usize = 16 * 1024;
    /// Records one core serializes at a time.
    const PIECE: usize = 2 * 1024;
    replace_file(target, |out| {
        let mut records = records.into_iter();
        let mut summary = WriteSummary::default();
        let mut batch: Vec<(&str, &str)> = Vec::with_capacity(BATCH);
        let mut serialized: Vec<Vec<u8>> = Vec::new();
        loop {
            batch.clear();
            batch.extend(records.by_ref().take(BATCH));
            let (written, next) = rayon::join(
                || serialized.iter().try_for_each(|piece| out.write_all(piece)),
                || {
                    batch
                        .par_chunks(PIECE)
                        .map(|piece| {
                            let mut buf = Vec::with_capacity(piece.len() * 128);
                            for (key, value) in piece {
                                write_record(&mut buf, key, value)
                                    .expect("writing to memory cannot fail");
                            }
                            buf
                        })
                        .collect::<Vec<_>>()
                },
            );
            written?;
            serialized = next;
            summary.records += batch.len() as u64;
            if batch.is_empty() {
                break;
            }
        }
        summary.bytes = out.bytes;
        Ok(summary)
    })
}

/// Replaces `target` with whatever `fill` writes, by the same steps as
/// [`write_atomic`]: for the small JSON files beside the data (the cluster's
/// vote, its members, its partition), which must never be half-written
/// either.
pub fn replace_file<T>(
    target: &Path,
    fill: impl FnOnce(&mut CountingWriter<BufWriter<File>>) -> io::Result<T>,
) -> Result<T, WriteError> {
    let tmp = temp_path(target);
    let result = write_then_rename(target, &tmp, fill);
    if result.is_err() {
        // Best effort: a leftover temp file is harmless (the next start
        // removes it) but needlessly takes disk space.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_then_rename<T>(
    target: &Path,
    tmp: &Path,
    fill: impl FnOnce(&mut CountingWriter<BufWriter<File>>) -> io::Result<T>,
) -> Result<T, WriteError> {
    let fail = |step: &'static str| {
        move |error: io::Error| WriteError {
            target: target.to_owned(),
            step,
            error,
        }
    };
    let file = File::create(tmp).map_err(fail("creating the temp file"))?;
    // Keep the permissions an operator gave the file being replaced.
    if let Ok(existing) = std::fs::metadata(target) {
        file.set_permissions(existing.permissions())
            .map_err(fail("copying the file's permissions"))?;
    }
    let mut out = CountingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        bytes: 0,
    };
    let filled = fill(&mut out)
        .and_then(|filled| fault::io_point("snapshot-write").map(|()| filled))
        .map_err(fail("writing the temp file"))?;
    let file = out
        .inner
        .into_inner()
        .map_err(|e| fail("writing the temp file")(e.into_error()))?;
    file.sync_all().map_err(fail("syncing the temp file"))?;
    drop(file);
    fault::crash_point("snapshot:before-rename");
    fault::io_point("snapshot-rename")
        .and_then(|()| std::fs::rename(tmp, target))
        .map_err(fail("renaming the temp file"))?;
    sync_dir(target).map_err(fail(SYNC_DIR_STEP))?;
    Ok(filled)
}

/// Makes a rename in `file`'s directory durable.
pub fn sync_dir(file: &Path) -> io::Result<()> {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Counts bytes on their way to the file, for the save log line.
pub struct CountingWriter<W> {
    inner: W,
    bytes: u64,
}

impl<W> CountingWriter<W> {
    /// How many bytes were written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_str(text: &str) -> Result<Vec<(String, String)>, ReadError> {
        let mut out = Vec::new();
        read(text.as_bytes(), "input", None, |k, v| {
            out.push((k.to_owned(), v.to_owned()))
        })?;
        Ok(out)
    }

    #[test]
    fn round_trips_awkward_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.jsonl");
        let pairs = [
            ("a", "plain"),
            ("b", "quote \" and backslash \\"),
            ("c", "new\nline and\ttab and \r return"),
            ("d", "emoji 🦀 and ünïcödé and \u{0} nul"),
            ("e", "</script> and \u{2028} separator"),
        ];
        let summary = write_atomic(&path, pairs).unwrap();
        assert_eq!(summary.records, 5);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(summary.bytes, text.len() as u64);
        assert!(text.ends_with('\n'));
        assert_eq!(text.lines().count(), 5);
        assert!(text.starts_with("{\"key\":\"a\",\"value\":\"plain\"}\n"));
        let back = read_str(&text).unwrap();
        let expected: Vec<_> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(back, expected);
        assert!(!temp_path(&path).exists());
    }

    #[test]
    fn blank_lines_are_skipped_but_counted() {
        let text = "\n{\"key\":\"a\",\"value\":\"1\"}\n  \n{\"value\":\"2\",\"key\":\"b\"}";
        let pairs = read_str(text).unwrap();
        assert_eq!(pairs.len(), 2);
        let err = read_str("\n\n{\"key\":\"a\"}\n").unwrap_err();
        assert_eq!(err.line(), Some(3));
    }

    #[test]
    fn refuses_every_kind_of_bad_line_with_its_number() {
        let good = "{\"key\":\"a\",\"value\":\"1\"}\n";
        for (bad, needle) in [
            ("{\"key\":\"a\"", "not valid JSON"),
            ("{\"key\":\"a\"}", "missing field `value`"),
            (
                "{\"key\":\"a\",\"value\":\"1\",\"x\":1}",
                "unknown field `x`",
            ),
            ("{\"key\":\"a\",\"value\":1}", "invalid type"),
            (
                "{\"key\":\"a b\",\"value\":\"1\"}",
                "key contains invalid characters",
            ),
            ("{\"key\":\"\",\"value\":\"1\"}", "key cannot be empty"),
            ("{\"key\":\"a\",\"value\":\"\"}", "value cannot be empty"),
            ("[1,2]", "not a record"),
        ] {
            let text = format!("{good}{good}{bad}\n{good}");
            let err = read_str(&text).unwrap_err();
            assert_eq!(err.line(), Some(3), "{bad}");
            let msg = err.to_string();
            assert!(msg.starts_with("input, line 3: "), "{msg}");
            assert!(msg.contains(needle), "{bad}: {msg}");
        }
        let err = read(
            &b"{\"key\":\"a\",\"value\":\"\xff\"}\n"[..],
            "input",
            None,
            |_, _| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("not valid UTF-8"), "{err}");
    }

    #[test]
    fn the_value_limit_applies_only_when_asked() {
        let text = "{\"key\":\"a\",\"value\":\"12345\"}\n";
        read(text.as_bytes(), "input", Some(5), |_, _| {}).unwrap();
        let err = read(text.as_bytes(), "input", Some(4), |_, _| {}).unwrap_err();
        assert!(err.to_string().contains("line 1: value too large"), "{err}");
    }

    #[test]
    fn failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.jsonl");
        write_atomic(&path, [("a", "1")]).unwrap();
        let before = std::fs::read(&path).unwrap();
        // A directory where the temp file should go makes the write fail.
        std::fs::create_dir(temp_path(&path)).unwrap();
        let err = write_atomic(&path, [("b", "2")]).unwrap_err();
        assert!(err.to_string().contains("creating the temp file"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
}
