//! The `queue-proxy` binary; see the library for everything it does.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    queue_proxy::app::main()
}
