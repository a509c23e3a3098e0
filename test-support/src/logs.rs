//! Log capture in unit tests that run beside other tests in one process.
//!
//! A test that captures its log lines with `tracing::subscriber::set_default` can miss an event
//! it expects. `tracing` caches each call site's interest process-wide, the first time the call
//! site runs anywhere, and while no more than one dispatcher is registered it asks only the
//! running thread's default dispatcher. A sibling test with no subscriber that reaches the call
//! site first therefore turns it off for every thread, the capturing one included (seen once in
//! CI: the activator's discovery test lost its `invalid discovery file` error line).
//!
//! [`keep_call_sites_enabled`] registers, once per process and for its lifetime, a dispatcher
//! that is interested in every call site only "sometimes" and in no event. From the first
//! capturing subscriber on, at least two dispatchers are registered, interest is combined over
//! all of them, and with this one among them it is never "never": every event asks the
//! emitting thread's own subscriber whether it wants it.

use std::sync::OnceLock;

use tracing::dispatcher::Dispatch;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};

/// Call before installing a capturing subscriber (see the module's documentation).
pub fn keep_call_sites_enabled() {
    static ANCHOR: OnceLock<Dispatch> = OnceLock::new();
    ANCHOR.get_or_init(|| Dispatch::new(AskEveryTime));
}

/// Wants nothing, and says so per event rather than per call site.
struct AskEveryTime;

impl Subscriber for AskEveryTime {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::sometimes()
    }

    fn enabled(&self, _: &Metadata<'_>) -> bool {
        false
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Never called: `enabled` is false for every span.
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, _: &Event<'_>) {}

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call site first reached, while a test captures, on a thread without a subscriber still
    /// logs on the capturing thread. Without the anchor, the one registered dispatcher would be
    /// the capture's, the interest would be asked of the other thread's (none) and cached as
    /// "never", and the capture would see nothing.
    #[test]
    fn a_call_site_first_reached_on_a_thread_without_a_subscriber_still_reaches_a_capture() {
        keep_call_sites_enabled();
        fn log() {
            tracing::warn!("the line a capturing test expects");
        }
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tracing::subscriber::with_default(Counter(seen.clone()), || {
            std::thread::spawn(log).join().unwrap();
            log();
        });
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// Counts the events it is given.
    struct Counter(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl Subscriber for Counter {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, _: &Event<'_>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
}
