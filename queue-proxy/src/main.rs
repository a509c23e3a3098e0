//! The `queue-proxy` binary; see the library for everything it does.
#![forbid(unsafe_code)]

/// jemalloc instead of glibc's malloc: its size-class pages keep long-lived small allocations
/// apart from short-lived buffers, and its background thread returns freed pages to the kernel
/// (configured in `.cargo/config.toml`), so memory goes back after bursts of connections.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    queue_proxy::app::main()
}
