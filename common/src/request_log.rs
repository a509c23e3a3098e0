//! The request-log stage: one line per request, rendered with a template of the
//! [`go_text_template`] crate.

mod layer;
pub use layer::{PendingLine, RequestLine, RequestLogSettings, RequestLogger};
