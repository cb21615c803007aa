//! The `tidesync` child process: start, watch (memory, CPU, I/O from /proc), stop.
//!
//! No unsafe code: the child is stopped with `kill -TERM PID` (the same graceful stop as
//! Ctrl-C), and its peak memory is the kernel's own high-water mark of the resident set
//! (`VmHWM` in /proc/PID/status), read periodically and once more right before the stop.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running `tidesync run CONFIG`, its output going to a log file.
#[derive(Debug)]
pub struct Tidesync {
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
    /// The largest VmHWM seen, in kB.
    peak_kb: u64,
    /// The last CPU and I/O sample, kept because /proc/PID goes away when the child exits.
    last: Usage,
}

/// CPU time and bytes written by the child so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu: Duration,
    /// Bytes the child caused to be sent to the storage layer (`write_bytes` in /proc/PID/io).
    pub write_bytes: u64,
}

impl Tidesync {
    /// Starts `BINARY run CONFIG`; stdout and stderr are appended to `log`.
    pub fn start(binary: &Path, config: &Path, log: &Path) -> anyhow::Result<Tidesync> {
        Tidesync::spawn(binary, &[OsStr::new("run"), config.as_os_str()], log)
    }

    /// Starts `BINARY ARGS...` (e.g. `verify CONFIG`); stdout and stderr are appended to `log`.
    pub fn spawn(binary: &Path, args: &[&OsStr], log: &Path) -> anyhow::Result<Tidesync> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log file handle")?;
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} {}", binary.display(), shown.join(" ")))?;
        Ok(Tidesync {
            pid: child.id(),
            child: Some(child),
            log: log.to_owned(),
            peak_kb: 0,
            last: Usage::default(),
        })
    }

    /// The peak resident set seen so far, in bytes.
    pub fn peak_bytes(&self) -> u64 {
        self.peak_kb * 1024
    }

    /// The last CPU and I/O sample.
    pub fn usage(&self) -> Usage {
        self.last
    }

    /// Fails (with the end of the child's log) if the child has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("tidesync was already stopped");
        };
        if let Some(status) = child.try_wait().context("checking on tidesync")? {
            self.child = None;
            bail!(
                "tidesync exited unexpectedly ({status}); the end of its log ({}):\n{}",
                self.log.display(),
                log_tail(&self.log, 30)
            );
        }
        Ok(())
    }

    /// Reads VmHWM, CPU time and bytes written from /proc and keeps the peak.
    pub fn sample(&mut self) -> anyhow::Result<()> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .with_context(|| format!("reading /proc/{}/status", self.pid))?;
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .context("no VmHWM in /proc/PID/status")?;
        self.peak_kb = self.peak_kb.max(hwm);
        if let Some(cpu) = cpu_time(self.pid) {
            self.last.cpu = cpu;
        }
        if let Some(bytes) = write_bytes(&format!("/proc/{}/io", self.pid)) {
            self.last.write_bytes = bytes;
        }
        Ok(())
    }

    /// For a child that is expected to exit by itself (`tidesync verify`): samples it while it
    /// runs, and returns its exit status once it has exited (None while it runs).
    pub fn try_exit(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.child.is_none() {
            bail!("tidesync was already stopped");
        }
        // Sample first: once it has exited (a zombie), /proc/PID/status has no VmHWM any more.
        // A sample that loses that race is not an error; the previous one stands.
        let _ = self.sample();
        let Some(child) = self.child.as_mut() else {
            bail!("tidesync was already stopped");
        };
        match child.try_wait().context("checking on tidesync")? {
            Some(status) => {
                self.child = None;
                Ok(Some(status))
            }
            None => Ok(None),
        }
    }

    /// The log file its output goes to.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Samples one last time, sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.check_running()?;
        self.sample()?;
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .context("running kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {} failed: {status}", self.pid);
        }
        let status = self.wait(timeout)?;
        if !status.success() {
            bail!(
                "tidesync did not stop cleanly ({status}); the end of its log ({}):\n{}",
                self.log.display(),
                log_tail(&self.log, 30)
            );
        }
        Ok(())
    }

    fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self
            .child
            .as_mut()
            .context("tidesync was already stopped")?;
        loop {
            if let Some(status) = child.try_wait().context("waiting for tidesync")? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "tidesync did not exit within {} s of SIGTERM; the end of its log ({}):\n{}",
                    timeout.as_secs(),
                    self.log.display(),
                    log_tail(&self.log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Tidesync {
    /// A benchmark that fails half-way must not leave a tidesync running: SIGKILL it.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The memory of any process, from /proc/PID/status, in kB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// `VmHWM`: the peak resident set. For a PostgreSQL backend it includes the pages of
    /// shared_buffers the process has touched, so it overstates what the process itself holds.
    pub hwm_kb: u64,
    /// `RssAnon`: resident private (anonymous) memory now; for a PostgreSQL backend, its own
    /// memory without shared_buffers.
    pub anon_kb: u64,
}

/// The memory of process `pid` now; None if it is gone (or a zombie).
pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some(Memory {
        hwm_kb: field("VmHWM:")?,
        anon_kb: field("RssAnon:")?,
    })
}

/// The child's user + system CPU time, from /proc/PID/stat.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses; utime and stime
    // are fields 14 and 15 of the line, so 12th and 13th after the `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// `write_bytes` of a /proc/*/io file.
pub fn write_bytes(path: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we know of).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// The last `n` lines of a log file, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
