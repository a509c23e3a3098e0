//! Child processes that cannot outlive the harness.
//!
//! Every child is started in its own process group (so a Ctrl-C at the terminal reaches only the
//! harness, which then stops the children in order) and with `PR_SET_PDEATHSIG = SIGKILL` on
//! Linux (so the kernel kills it if the harness dies without cleaning up: a panic under
//! `panic = "abort"`, a SIGKILL). The pids of live children are kept in a [`Registry`]; dropping
//! the registry's last handle SIGKILLs whatever is still registered.

use std::collections::HashSet;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::process::{Child, Command};

/// The pids of the children that are still running.
#[derive(Clone, Default)]
pub struct Registry(Arc<RegistryInner>);

#[derive(Default)]
struct RegistryInner {
    pids: Mutex<HashSet<u32>>,
}

impl Drop for RegistryInner {
    fn drop(&mut self) {
        let pids = self.pids.get_mut().unwrap_or_else(PoisonError::into_inner);
        for pid in pids.drain() {
            signal(pid, libc::SIGKILL);
        }
    }
}

impl Registry {
    /// Spawns `program` with `args` and `env` (and nothing inherited but `PATH`, `HOME` and `RUST_*`), its
    /// stdout and stderr appended to `log`, in a new process group, killed when the harness dies.
    pub fn spawn(
        &self,
        program: &Path,
        args: &[&str],
        env: &[(&str, String)],
        log: &Path,
    ) -> std::io::Result<Child> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut command = Command::new(program);
        command.args(args).env_clear();
        for name in ["PATH", "HOME", "RUST_BACKTRACE", "RUST_LOG"] {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .process_group(0)
            .kill_on_drop(true);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl and getppid are async-signal-safe; the closure allocates nothing.
        unsafe {
            let parent = libc::getpid();
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        if let Some(pid) = child.id() {
            self.lock().insert(pid);
        }
        Ok(child)
    }

    /// Forgets `pid` (it has been reaped).
    pub fn reaped(&self, pid: u32) {
        self.lock().remove(&pid);
    }

    /// SIGKILLs every registered child now.
    pub fn kill_all(&self) {
        for pid in self.lock().iter() {
            signal(*pid, libc::SIGKILL);
        }
    }

    /// How many children are registered as running.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no child is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u32>> {
        self.0.pids.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Sends `sig` to `pid` (errors such as "no such process" are ignored).
pub fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid > 0 {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// A short description of how a process ended (`exit code 1`, `killed by signal 9`).
pub fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropping_the_registry_kills_children() {
        let dir = std::env::temp_dir().join(format!("ls-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let registry = Registry::default();
        let mut child = registry
            .spawn(
                Path::new("/bin/sleep"),
                &["30"],
                &[("X", "1".into())],
                &dir.join("sleep.log"),
            )
            .unwrap();
        assert_eq!(registry.len(), 1);
        drop(registry);
        let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
            .await
            .expect("the child dies")
            .unwrap();
        assert_eq!(describe(&status), "killed by signal 9");
    }
}
