//! Tunnels for upgraded connections (websockets and other `101` switches).
//!
//! Once both sides have switched, bytes are copied in both directions until one side closes or the
//! request's total deadline passes. Per-request state that must live as long as the exchange (the
//! breaker slot, stats, the in-flight count) is handed to the tunnel through [`TunnelScope`], found
//! in the `101` response's extensions.

use std::any::Any;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Shared between the `101` response (so outer stages can add to it) and the tunnel task.
#[derive(Clone, Default)]
pub struct TunnelScope(Arc<Mutex<ScopeState>>);

#[derive(Default)]
struct ScopeState {
    held: Vec<Box<dyn Any + Send>>,
    deadline: Option<Instant>,
}

impl std::fmt::Debug for TunnelScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TunnelScope")
    }
}

impl TunnelScope {
    /// Spawns the tunnel between the two upgraded halves and returns its scope.
    pub fn start(downstream: OnUpgrade, upstream: OnUpgrade) -> Self {
        let scope = TunnelScope::default();
        let task_scope = scope.clone();
        tokio::spawn(async move {
            // Both resolve after the 101 has been written to the client, i.e. after every stage
            // has returned and registered what it holds.
            let (Ok(down), Ok(up)) = tokio::join!(downstream, upstream) else {
                return;
            };
            let mut down = TokioIo::new(down);
            let mut up = TokioIo::new(up);
            let deadline = task_scope.deadline();
            let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
            match deadline {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at.into(), copy).await;
                }
                None => {
                    let _ = copy.await;
                }
            }
            drop(task_scope);
        });
        scope
    }

    /// Keeps `value` alive until the tunnel ends.
    pub fn hold(&self, value: Box<dyn Any + Send>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .held
            .push(value);
    }

    /// Cuts the tunnel at `at` (the earliest deadline set wins).
    pub fn set_deadline(&self, at: Instant) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.deadline = Some(state.deadline.map_or(at, |d| d.min(at)));
    }

    fn deadline(&self) -> Option<Instant> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).deadline
    }
}
