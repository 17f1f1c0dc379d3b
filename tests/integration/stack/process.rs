//! A child process whose output goes to a log file and which is killed when dropped.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::Duration,
};

pub struct Proc {
    name: String,
    child: Mutex<Child>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, bin: &Path, args: &[&str], dir: &Path) -> Proc {
        Self::spawn_env(name, bin, args, dir, &[])
    }

    pub fn spawn_env(name: &str, bin: &Path, args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let child = Command::new(bin)
            .args(args)
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({}): {e}", bin.display()));
        Proc { name: name.to_string(), child: Mutex::new(child), log }
    }

    /// Never poisoned: a panic elsewhere must not stop `Drop` from killing the child.
    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pid(&self) -> u32 {
        self.child().id()
    }

    /// Last lines of the process's output, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(40);
        format!("--- last lines of {} ---\n{}", self.name, lines[start..].join("\n"))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log tail if the process has exited.
    pub fn assert_running(&self) {
        let exited = self.child().try_wait();
        if let Ok(Some(status)) = exited {
            panic!("{} exited early with {status}\n{}", self.name, self.log_tail());
        }
    }

    /// `None` while running, the exit code otherwise.
    pub fn try_exit_code(&self) -> Option<i32> {
        self.child().try_wait().ok().flatten().map(|s| s.code().unwrap_or(-1))
    }

    /// True when the process exited because a port it wanted was taken: parallel tests pick
    /// free ports independently, so one may grab another's port between pick and bind.
    pub fn lost_port_race(&self) -> bool {
        self.try_exit_code().is_some() && self.log_text().to_lowercase().contains("address already in use")
    }

    /// Like `wait_for_port`, but `Err` with the log when the process exits first.
    pub async fn try_wait_for_port(&self, port: u16, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if self.try_exit_code().is_some() {
                return Err(self.log_tail());
            }
            assert!(tokio::time::Instant::now() < deadline, "{} did not listen on {port}", self.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    pub async fn wait_for_port(&self, port: u16, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            self.assert_running();
            assert!(tokio::time::Instant::now() < deadline, "{} did not listen on {port}", self.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit code.
    pub async fn terminate(&self, timeout: Duration) -> Option<i32> {
        let pid = self.pid();
        let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(code) = self.try_exit_code() {
                return Some(code);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill(&self) {
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
