//! `knative-local`: a local harness, not a product component. One command runs the whole data
//! plane on loopback: the real `activator` (file discovery), an autoscaler stand-in, and 0..N
//! instances of a sample revision (sample app + real `queue-proxy`). See the crate documentation
//! and the README's "local stack" section.
//!
//! It builds the binaries it needs first (`cargo build` with the profile it was built with).

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use local_stack::demo::{self, DemoConfig};
use local_stack::stack::{REVISION, REVISION_HOST};
use local_stack::{Stack, StackConfig};

/// The activator port the stack prefers (upstream's); a free one is used if it is taken.
const PREFERRED_PORT: u16 = 8012;

const USAGE: &str = "\
knative-local: the Knative data plane on loopback (local harness, not a product component)

usage: cargo run --release -p local-stack -- [options]

  --demo                   run a scripted scenario, print a report, exit 0 if every check passed
  --port N                 activator port (default 8012, or a free one if 8012 is taken)
  --cc N                   containerConcurrency of the sample revision (default 2)
  --target X               concurrency per instance the stand-in aims for (default: cc)
  --max-scale N            most instances (default 5)
  --initial-scale N        instances started with the stack (default 1; they prove the app starts)
  --stable-window SECS     scale-down uses the highest wish over this window (default 6)
  --scale-to-zero-grace SECS  idle time before the last instance goes (default 8)
  --drain-quiet SECS       queue-proxy drain quiet period (default 1)
  --timeout SECS           revision timeoutSeconds (default 60)
  --app PATH               user container to run instead of sample-app (must listen on $PORT)
  --no-build               do not run cargo build first
  -h, --help               this text
";

struct Args {
    demo: bool,
    port: Option<u16>,
    build: bool,
    config: StackConfig,
    target: Option<f64>,
}

fn parse_args(bin_dir: PathBuf, run_dir: PathBuf) -> Result<Option<Args>> {
    let mut args = Args {
        demo: false,
        port: None,
        build: true,
        config: StackConfig::new(bin_dir, run_dir),
        target: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |what: &str| -> Result<String> {
            it.next()
                .with_context(|| format!("{flag} needs {what}; see --help"))
        };
        fn num<T: std::str::FromStr>(flag: &str, text: String) -> Result<T> {
            text.parse()
                .map_err(|_| anyhow::anyhow!("{flag}: {text:?} is not a valid number"))
        }
        let s = &mut args.config.scaling;
        match flag.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "--demo" => args.demo = true,
            "--no-build" => args.build = false,
            "--port" => args.port = Some(num(&flag, value("a port")?)?),
            "--cc" => args.config.cc = num(&flag, value("a number")?)?,
            "--target" => args.target = Some(num(&flag, value("a number")?)?),
            "--max-scale" => s.max_scale = num(&flag, value("a number")?)?,
            "--initial-scale" => s.initial_scale = num(&flag, value("a number")?)?,
            "--stable-window" => {
                s.stable_window = Duration::from_secs(num(&flag, value("seconds")?)?)
            }
            "--scale-to-zero-grace" => {
                s.scale_to_zero_grace = Duration::from_secs(num(&flag, value("seconds")?)?)
            }
            "--drain-quiet" => args.config.drain_quiet_seconds = num(&flag, value("seconds")?)?,
            "--timeout" => args.config.timeout_seconds = num(&flag, value("seconds")?)?,
            "--app" => args.config.app = Some(PathBuf::from(value("a path")?)),
            other => bail!("unknown option {other:?}; see --help"),
        }
    }
    if args.config.cc == 0 || args.config.cc > 1000 {
        bail!("--cc must be between 1 and 1000");
    }
    if args.config.timeout_seconds == 0 {
        bail!("--timeout must be at least 1");
    }
    if args.port == Some(0) {
        bail!("--port must be between 1 and 65535");
    }
    let target = args.target.unwrap_or(f64::from(args.config.cc));
    if !(target > 0.0 && target.is_finite()) {
        bail!("--target must be a positive number");
    }
    args.config.scaling.target = target;
    if args.config.scaling.max_scale == 0 {
        bail!("--max-scale must be at least 1");
    }
    args.config.scaling.initial_scale = args
        .config
        .scaling
        .initial_scale
        .min(args.config.scaling.max_scale);
    Ok(Some(args))
}

/// Builds the three binaries with the profile this executable was built with.
fn build(bin_dir: &std::path::Path) -> Result<()> {
    let release = bin_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(&cargo);
    command.arg("build").arg("-q");
    if release {
        command.arg("--release");
    }
    command.args(["-p", "activator", "-p", "queue-proxy", "-p", "sample-app"]);
    command.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let how = format!(
        "cargo build{} -p activator -p queue-proxy -p sample-app",
        if release { " --release" } else { "" }
    );
    println!("building: {how}");
    let status = command.status().with_context(|| {
        format!("could not run {cargo}; build the binaries yourself: `{how}`, then pass --no-build")
    })?;
    if !status.success() {
        bail!("`{how}` failed ({status}); fix the build and run again");
    }
    Ok(())
}

fn print_banner(stack: &Stack, log_dir: &std::path::Path) {
    let a = stack.activator_addr();
    let c = stack.config();
    let s = &c.scaling;
    println!(
        "\nKnative data plane on loopback: a local harness, not a product component
--------------------------------------------------------------------------
Send requests to the activator (the Host names the revision):
  curl -H 'Host: {REVISION_HOST}' http://{a}/
  curl -H 'Host: {REVISION_HOST}' 'http://{a}/sleep?ms=2000'
  for i in $(seq 30); do curl -s -o /dev/null -w '%{{http_code}} ' -H 'Host: {REVISION_HOST}' 'http://{a}/sleep?ms=3000' & done; wait   # scale-up
  curl --http2-prior-knowledge -i -H 'Host: {REVISION_HOST}' http://{a}/trailers   # h2c, trailers
  curl -H 'Host: {REVISION_HOST}' http://{a}/concurrency   # the instance that answers: its highest concurrency

Revision          default/{REVISION}: containerConcurrency {cc}, timeoutSeconds {t}
Activator         http://{a} (h2c also on {h2c}), pid {pid}
Autoscaler        stand-in at {ws}: activator stats (websocket) + each queue-proxy's stats port;
                  wants ceil(concurrency / {target}) instances (1..={max}), scales down over a {sw:?}
                  window and to zero after {grace:?} idle
Discovery file    {disc}   (watch it: watch -n 0.5 cat {disc})
Logs              {logs}/*.log

What to watch: the lines below show every scale decision, each instance starting (notReady),
ready, draining and stopped (with the highest concurrency its app saw, never above {cc}).
Ctrl-C stops everything: activator first, then each instance drains; no process is left behind.
",
        cc = c.cc,
        t = c.timeout_seconds,
        h2c = stack.activator_h2c_addr(),
        pid = stack.activator_pid(),
        ws = stack.stats_endpoint().url(),
        target = s.target,
        max = s.max_scale,
        sw = s.stable_window,
        grace = s.scale_to_zero_grace,
        disc = stack.discovery_file().display(),
        logs = log_dir.display(),
    );
}

async fn run() -> Result<bool> {
    // Handlers first: a Ctrl-C during start-up must also stop what was started.
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let exe = std::env::current_exe().context("cannot locate this executable")?;
    let bin_dir = exe
        .parent()
        .context("this executable has no directory")?
        .to_path_buf();
    let run_dir = bin_dir
        .join("knative-local-runs")
        .join(format!("run-{}", std::process::id()));
    let Some(mut args) = parse_args(bin_dir.clone(), run_dir.clone())? else {
        return Ok(true);
    };
    if args.build {
        build(&bin_dir)?;
    }
    args.config.activator_port = match args.port {
        Some(port) => Some(port),
        None if std::net::TcpListener::bind(("127.0.0.1", PREFERRED_PORT)).is_ok() => {
            Some(PREFERRED_PORT)
        }
        None => {
            println!("port {PREFERRED_PORT} is in use; the activator gets a free port instead (or pass --port N)");
            None
        }
    };
    let t0 = Instant::now();
    println!(
        "starting the activator, the autoscaler stand-in and {} instance(s) ...",
        args.config.scaling.initial_scale
    );
    let stack = tokio::select! {
        stack = Stack::start(args.config) => stack?,
        // Dropping the unfinished start kills whatever it had started.
        _ = interrupt.recv() => bail!("interrupted during start-up; everything started was stopped"),
        _ = terminate.recv() => bail!("terminated during start-up; everything started was stopped"),
    };
    let mut events = stack.subscribe();
    for event in stack.events() {
        println!(
            "[{:5.1}s] {}",
            event.at.duration_since(t0).as_secs_f64(),
            event.kind
        );
    }
    print_banner(&stack, &run_dir);

    let printer_t0 = t0;
    let printer = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            println!(
                "[{:5.1}s] {}",
                event.at.duration_since(printer_t0).as_secs_f64(),
                event.kind
            );
        }
    });
    let demo_config = DemoConfig::default();
    let outcome: Result<bool> = tokio::select! {
        _ = interrupt.recv() => { println!("\nCtrl-C: stopping"); Ok(true) }
        _ = terminate.recv() => { println!("\nSIGTERM: stopping"); Ok(true) }
        passed = demo::run(&stack, &demo_config), if args.demo => Ok(passed),
        how = async {
            loop {
                if let Some(how) = stack.activator_exit() { return how; }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        } => Err(anyhow::anyhow!("the activator exited unexpectedly ({how}); see {}/activator.log", run_dir.display())),
    };
    let shutdown = stack.shutdown();
    tokio::pin!(shutdown);
    let stopped = tokio::select! {
        result = &mut shutdown => result,
        _ = interrupt.recv() => Err("second Ctrl-C: killed everything".to_owned()),
    };
    printer.abort();
    match &stopped {
        Ok(()) => println!("stopped: every process exited, ports freed"),
        Err(problem) => println!("stopped, with problems: {problem}"),
    }
    let passed = outcome?;
    if passed && stopped.is_ok() {
        let _ = std::fs::remove_dir_all(&run_dir);
    } else {
        println!("logs kept in {}", run_dir.display());
    }
    Ok(passed && stopped.is_ok())
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("knative-local: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("knative-local: {error:#}");
            ExitCode::from(1)
        }
    }
}
