//! Which request-serving worker the current thread is: [`knative_common::worker`], which the
//! activator's workers ([`crate::app`]) enter and whose index the breaker's grants and the
//! throttler read.

pub use knative_common::worker::{current, enter, NO_WORKER};
