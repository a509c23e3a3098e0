//! The `activator` binary; see the library for everything it does.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    activator::app::main()
}
