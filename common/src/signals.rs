//! SIGTERM and SIGINT as one stream: the first starts a graceful shutdown, a second one is the
//! caller's cue to exit at once.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Receives SIGTERM and SIGINT. Create it first thing, so that a signal arriving during start-up
/// is handled rather than killing the process.
#[derive(Debug)]
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Installs the handlers.
    pub fn new() -> std::io::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT.
    pub async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
