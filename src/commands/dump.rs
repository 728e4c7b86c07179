//! `kvs dump`: every pair, sorted by key, as a table or as JSON Lines.
//!
//! JSON Lines output is written through `snapshot`, so it is byte for byte
//! the data-file format. The data is held once (the sorted pairs) and
//! streamed out. It must never create, lock or change a file.

use std::io::{BufWriter, IsTerminal, Write};

use comfy_table::{ContentArrangement, Table, presets};

use crate::cli::{DumpArgs, DumpFormat};
use crate::commands::offline;
use crate::error::{Error, Outcome};
use crate::storage::snapshot;
use crate::storage::store::Sorted;

/// Table width when it cannot be read from the terminal.
const DEFAULT_WIDTH: usize = 100;
/// Narrower terminals get a table this wide, wrapping as the terminal will.
const MIN_WIDTH: usize = 40;

pub fn run(args: DumpArgs) -> Result<Outcome, Error> {
    let dir = offline::open_read_only(&args.dir.path)?;
    let pairs = offline::load_sorted(dir.layout(), &args.prefix)?;
    let stdout = std::io::stdout();
    let format = args.format.unwrap_or(if stdout.is_terminal() {
        DumpFormat::Table
    } else {
        DumpFormat::Jsonl
    });
    let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
    let written = match format {
        DumpFormat::Jsonl => pairs
            .iter()
            .try_for_each(|(key, value)| snapshot::write_record(&mut out, key, value)),
        DumpFormat::Table => writeln!(out, "{}", table(&pairs, &args.prefix)),
    };
    crate::error::stdout_result(written.and_then(|()| out.flush()))
}

/// One row per pair, fitted to the terminal: keys and values are shown on
/// one line each (control characters escaped) and shortened with an
/// ellipsis, so a long or multi-line value never breaks the layout.
fn table(pairs: &Sorted, prefix: &str) -> String {
    let mut table = Table::new();
    table
        .load_style(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(["KEY", "VALUE"]);
    // A terminal that reports no size (some ptys say 0 columns) gets the
    // default, as output that is not a terminal does.
    let width = table
        .width()
        .map(usize::from)
        .filter(|&w| w >= MIN_WIDTH)
        .unwrap_or(DEFAULT_WIDTH);
    table.set_width(u16::try_from(width).unwrap_or(u16::MAX));
    // Borders and padding take 7 columns; keys get at most a third.
    let key_width = (width / 3).max(10);
    let widest_key = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(3)
        .clamp(3, key_width);
    let value_width = width.saturating_sub(widest_key + 7).max(10);
    for (key, value) in pairs.iter() {
        table.add_row([one_line(key, key_width), one_line(value, value_width)]);
    }
    let count = match pairs.len() {
        1 => "1 key".to_owned(),
        n => format!("{n} keys"),
    };
    let scope = if prefix.is_empty() {
        String::new()
    } else {
        format!(" with prefix {prefix:?}")
    };
    format!("{table}\n{count}{scope}")
}

/// `text` on one line of at most `width` characters: control characters
/// shown as escapes, the rest cut with an ellipsis.
fn one_line(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut chars = 0;
    for c in text.chars() {
        let shown: String = match c {
            '\n' => "\\n".into(),
            '\t' => "\\t".into(),
            '\r' => "\\r".into(),
            c if c.is_control() => c.escape_unicode().to_string(),
            c => c.into(),
        };
        let n = shown.chars().count();
        if chars + n > width.saturating_sub(1) {
            out.push('…');
            return out;
        }
        out.push_str(&shown);
        chars += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_escapes_and_shortens() {
        assert_eq!(one_line("short", 10), "short");
        assert_eq!(one_line("a\nb\tc", 10), "a\\nb\\tc");
        assert_eq!(one_line("0123456789abc", 10), "012345678…");
        assert_eq!(one_line("🦀🦀🦀", 10), "🦀🦀🦀");
    }
}
