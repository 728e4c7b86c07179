//! Sends the Raft engine's log records (slog) to the server's log
//! (tracing), so elections, votes and step-downs appear in the same stream
//! as everything else, one line each.
//!
//! Owns only that translation. It must never drop a record above debug.

use std::fmt::{self, Write};

use slog::{Drain, KV, Key, Level, OwnedKVList, Record, Serializer};

/// A slog drain that writes to tracing.
pub struct ToTracing;

impl Drain for ToTracing {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, _values: &OwnedKVList) -> Result<(), slog::Never> {
        let enabled = match record.level() {
            Level::Critical | Level::Error => tracing::enabled!(tracing::Level::ERROR),
            Level::Warning => tracing::enabled!(tracing::Level::WARN),
            Level::Info => tracing::enabled!(tracing::Level::INFO),
            Level::Debug | Level::Trace => tracing::enabled!(tracing::Level::DEBUG),
        };
        if !enabled {
            return Ok(());
        }
        let mut line = format!("raft: {}", record.msg());
        let _ = record.kv().serialize(record, &mut Fields(&mut line));
        match record.level() {
            Level::Critical | Level::Error => tracing::error!("{line}"),
            Level::Warning => tracing::warn!("{line}"),
            Level::Info => tracing::info!("{line}"),
            Level::Debug | Level::Trace => tracing::debug!("{line}"),
        }
        Ok(())
    }
}

/// Appends `, key: value` for each field of a record.
struct Fields<'a>(&'a mut String);

impl Serializer for Fields<'_> {
    fn emit_arguments(&mut self, key: Key, value: &fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, ", {key}: {value}");
        Ok(())
    }
}

/// The logger to hand the engine.
pub fn logger() -> slog::Logger {
    slog::Logger::root(ToTracing, slog::o!())
}
