//! `knative-local`: a local harness, not a product component. It starts the sample app and, in
//! front of it, the real `queue-proxy` binary with the environment the Knative controller would
//! inject, all on loopback ports, prints where to send requests, and on Ctrl-C drains the
//! queue-proxy gracefully (SIGTERM, as the kubelet does) and stops everything.
//!
//! It builds the binaries it needs first (`cargo build --release`), so one command is enough.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Ports the demo prefers; any that is taken is replaced by a free one.
const PREFERRED_QUEUE_PORT: u16 = 8012;
const PREFERRED_APP_PORT: u16 = 8080;

fn port_or_free(preferred: u16) -> Result<u16> {
    if TcpListener::bind(("127.0.0.1", preferred)).is_ok() {
        return Ok(preferred);
    }
    println!("port {preferred} is taken; using a free one instead");
    free_port()
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind(("127.0.0.1", 0)).context("no free loopback port")?;
    Ok(l.local_addr()?.port())
}

fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate this executable")?;
    Ok(exe
        .parent()
        .context("executable has no directory")?
        .to_path_buf())
}

fn build_binaries() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-q", "-p", "queue-proxy", "-p", "sample-app"])
        .status()
        .context("could not run cargo to build queue-proxy and sample-app; run `cargo build --release --workspace`")?;
    if !status.success() {
        bail!("building queue-proxy and sample-app failed; run `cargo build --release --workspace` to see why");
    }
    Ok(())
}

fn wait_listening(port: u16, child: &mut Child, what: &str) -> Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(start.elapsed());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited during start-up ({status})");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!("{what} did not listen on port {port} within 10 s")
}

struct Stack {
    children: Vec<(String, Child)>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, child) in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn run() -> Result<()> {
    build_binaries()?;
    let bin = target_dir()?;
    let app_port = port_or_free(PREFERRED_APP_PORT)?;
    let queue_port = port_or_free(PREFERRED_QUEUE_PORT)?;
    let (admin_port, stats_port, tls_port) = (free_port()?, free_port()?, free_port()?);
    let mut stack = Stack {
        children: Vec::new(),
    };

    let mut app = Command::new(bin.join("sample-app"))
        .process_group(0)
        .env("PORT", app_port.to_string())
        .spawn()
        .context("cannot start sample-app")?;
    wait_listening(app_port, &mut app, "sample-app")?;
    stack.children.push(("sample-app".into(), app));

    let mut queue = Command::new(bin.join("queue-proxy"))
        .process_group(0)
        .envs([
            ("SERVING_NAMESPACE", "default".to_owned()),
            ("SERVING_SERVICE", "hello".to_owned()),
            ("SERVING_CONFIGURATION", "hello".to_owned()),
            ("SERVING_REVISION", "hello-00001".to_owned()),
            ("SERVING_POD", "hello-00001-deployment-local".to_owned()),
            ("SERVING_POD_IP", "127.0.0.1".to_owned()),
            ("QUEUE_SERVING_PORT", queue_port.to_string()),
            ("QUEUE_SERVING_TLS_PORT", tls_port.to_string()),
            ("USER_PORT", app_port.to_string()),
            ("CONTAINER_CONCURRENCY", "2".to_owned()),
            ("REVISION_TIMEOUT_SECONDS", "30".to_owned()),
            ("SERVING_READINESS_PROBE", format!(r#"{{"tcpSocket":{{"port":{app_port},"host":"127.0.0.1"}},"successThreshold":1}}"#)),
            ("SERVING_LOGGING_CONFIG", String::new()),
            ("SERVING_LOGGING_LEVEL", "info".to_owned()),
            ("QUEUE_ADMIN_PORT", admin_port.to_string()),
            ("QUEUE_STATS_PORT", stats_port.to_string()),
            ("QUEUE_DRAIN_QUIET_PERIOD_SECONDS", "2".to_owned()),
        ])
        .spawn()
        .context("cannot start queue-proxy")?;
    let startup = wait_listening(queue_port, &mut queue, "queue-proxy")?;
    let queue_pid = queue.id();
    stack.children.push(("queue-proxy".into(), queue));

    println!(
        "\nKnative data plane, local harness (no cluster)\n\
         ------------------------------------------------\n\
         sample app (user container) : http://127.0.0.1:{app_port}\n\
         queue-proxy (send requests) : http://127.0.0.1:{queue_port}   [up in {:.1} ms, containerConcurrency=2, timeout 30 s]\n\
         autoscaler stats (protobuf) : http://127.0.0.1:{stats_port}/metrics\n\
         drain hook (preStop)        : http://127.0.0.1:{admin_port}/wait-for-drain\n\n\
         Try:\n\
         \x20 curl http://127.0.0.1:{queue_port}/\n\
         \x20 curl -H 'User-Agent: kube-probe/1.29' -H 'K-Network-Probe: queue' http://127.0.0.1:{queue_port}/   # readiness: 200 queue\n\
         \x20 for i in $(seq 30); do curl -s -o /dev/null -w '%{{http_code}}\\n' 'http://127.0.0.1:{queue_port}/sleep?ms=2000' & done; wait   # 2 run, 20 queue, 8 get 503\n\
         \x20 curl --http2-prior-knowledge http://127.0.0.1:{queue_port}/trailers -i   # h2c with trailers\n\n\
         Ctrl-C drains the queue-proxy gracefully (SIGTERM) and stops everything.\n",
        startup.as_secs_f64() * 1000.0
    );

    wait_for_stop(&mut stack)?;
    println!("\nstopping: SIGTERM to the queue-proxy (drain), then the app");
    let _ = Command::new("kill")
        .args(["-TERM", &queue_pid.to_string()])
        .status();
    if let Some((_, queue)) = stack.children.iter_mut().find(|(n, _)| n == "queue-proxy") {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = queue.try_wait()? {
                println!("queue-proxy exited: {status}");
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// Blocks until Ctrl-C or SIGTERM, failing if a child exits on its own meanwhile.
fn wait_for_stop(stack: &mut Stack) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal runtime")?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = interrupt.recv() => return Ok(()),
                _ = terminate.recv() => return Ok(()),
                _ = tick.tick() => {
                    for (name, child) in stack.children.iter_mut() {
                        if let Some(status) = child.try_wait()? {
                            bail!("{name} exited unexpectedly ({status})");
                        }
                    }
                }
            }
        }
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("knative-local: {error:#}");
            ExitCode::from(1)
        }
    }
}
