//! Turns SIGTERM and SIGINT into futures the server can wait on.
//!
//! Owns the process's one termination handler (ctrlc, installed once from
//! `main`). The first signal means "shut down gracefully"; a second means
//! "stop waiting for requests in flight". Neither ever skips the final
//! save: this module only reports signals, it never exits the process.

use std::future::Future;

use tokio::sync::watch;

/// Counts termination signals received so far.
#[derive(Clone)]
pub struct Signals {
    count: watch::Receiver<u32>,
}

impl Signals {
    /// Installs the handler for SIGINT, SIGTERM and SIGHUP. Call once:
    /// ctrlc refuses a second handler.
    pub fn install() -> Result<Signals, ctrlc::Error> {
        let (tx, count) = watch::channel(0u32);
        ctrlc::set_handler(move || tx.send_modify(|n| *n += 1))?;
        Ok(Signals { count })
    }

    /// Resolves once `n` signals have arrived (at once if they already have).
    pub fn nth(&self, n: u32) -> impl Future<Output = ()> + Send + 'static {
        let mut count = self.count.clone();
        async move {
            if count.wait_for(|c| *c >= n).await.is_err() {
                // The handler owns the sender for the life of the process,
                // so this is unreachable; waiting forever is the safe answer.
                std::future::pending::<()>().await;
            }
        }
    }
}
