//! Running one server process: spawn with its output in a log file, wait until a probe
//! succeeds, stop with a signal and a deadline.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::TestkitError;
use crate::os_user::OsUser;
use crate::signal::{self, StopSignal};
use crate::util::scrub_env;

/// How often readiness probes and stop checks poll.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// How long a server may take to stop before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How many log lines errors quote.
const LOG_TAIL_LINES: usize = 40;

/// Everything needed to (re)start a server process.
#[derive(Debug)]
pub(crate) struct Spec {
    /// Human name used in errors, e.g. "PostgreSQL".
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    /// Inherited environment variables with these prefixes are removed.
    pub scrub_env_prefixes: &'static [&'static str],
    /// Run as this user instead of the current one.
    pub user: Option<OsUser>,
    /// Working directory.
    pub cwd: PathBuf,
    /// stdout and stderr are appended here.
    pub log_path: PathBuf,
    pub stop_signal: StopSignal,
    pub ready_timeout: Duration,
}

impl Spec {
    pub fn new(name: &'static str, program: &Path, cwd: &Path, log_path: PathBuf) -> Self {
        Self {
            name,
            program: program.to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            scrub_env_prefixes: &[],
            user: None,
            cwd: cwd.to_path_buf(),
            log_path,
            stop_signal: StopSignal::Term,
            ready_timeout: Duration::from_secs(30),
        }
    }

    pub fn arg(&mut self, arg: impl Into<OsString>) -> &mut Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> &mut Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// A server process that may be running or stopped; dropping it stops it.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    spec: Spec,
    child: Option<Child>,
    /// Length of the log file when the current run started: errors quote only what follows.
    log_offset: u64,
}

impl ServerProcess {
    pub fn new(spec: Spec) -> Self {
        Self {
            spec,
            child: None,
            log_offset: 0,
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.spec.log_path
    }

    /// The pid of the running process, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running (it may have died on its own since it started).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_)) | Err(_)) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Spawns the process and polls `probe` until it succeeds, the process exits or the
    /// spec's deadline passes. On failure the process is stopped again. Does nothing if the
    /// process is already running.
    pub fn start(
        &mut self,
        mut probe: impl FnMut() -> Result<(), String>,
    ) -> Result<(), TestkitError> {
        if self.is_running() {
            return Ok(());
        }
        let spec = &self.spec;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_path)
            .map_err(|e| TestkitError::io(format!("opening log {}", spec.log_path.display()), e))?;
        self.log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let stdout = log
            .try_clone()
            .map_err(|e| TestkitError::io("duplicating the log file handle", e))?;

        let mut command = Command::new(&spec.program);
        scrub_env(&mut command, spec.scrub_env_prefixes);
        command
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log);
        if let Some(user) = &spec.user {
            command.uid(user.uid).gid(user.gid);
        }
        let child = command
            .spawn()
            .map_err(|e| TestkitError::io(format!("starting {}", spec.program.display()), e))?;
        self.child = Some(child);

        let result = self.wait_ready(&mut probe);
        if result.is_err() {
            // Best effort: the readiness error is the one worth reporting.
            let _ = self.stop();
        }
        result
    }

    fn wait_ready(
        &mut self,
        probe: &mut impl FnMut() -> Result<(), String>,
    ) -> Result<(), TestkitError> {
        let started = Instant::now();
        let deadline = started + self.spec.ready_timeout;
        loop {
            self.fail_if_exited()?;
            let last_error = match probe() {
                Ok(()) => {
                    // Something else may have answered on the port (the server lost the race
                    // for it and is exiting): only a live server counts as ready.
                    return self.fail_if_exited();
                }
                Err(error) => error,
            };
            if Instant::now() >= deadline {
                return Err(TestkitError::NotReady {
                    server: self.spec.name,
                    waited: started.elapsed(),
                    last_error,
                    log_path: self.spec.log_path.clone(),
                    log_tail: self.log_tail(),
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// [`TestkitError::ExitedEarly`] if the process has exited (or was never started).
    fn fail_if_exited(&mut self) -> Result<(), TestkitError> {
        let name = self.spec.name;
        let Some(child) = self.child.as_mut() else {
            return Err(TestkitError::io(
                format!("waiting for {name}"),
                std::io::Error::other("process is not running"),
            ));
        };
        let exited = child
            .try_wait()
            .map_err(|e| TestkitError::io(format!("checking on {name}"), e))?;
        match exited {
            None => Ok(()),
            Some(status) => {
                self.child = None;
                Err(TestkitError::ExitedEarly {
                    server: name,
                    status,
                    log_path: self.spec.log_path.clone(),
                    log_tail: self.log_tail(),
                })
            }
        }
    }

    /// Asks the process to stop, kills it if it is still running after a deadline, and
    /// reaps it. Does nothing if it is not running.
    pub fn stop(&mut self) -> Result<(), TestkitError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let name = self.spec.name;
        let io_error = |e| TestkitError::io(format!("stopping {name}"), e);
        if child.try_wait().map_err(io_error)?.is_some() {
            return Ok(());
        }
        if let Err(error) = signal::send(&child, self.spec.stop_signal) {
            eprintln!("tidesync-testkit: cannot signal {name} ({error}); killing it");
            child.kill().map_err(io_error)?;
            child.wait().map_err(io_error)?;
            return Ok(());
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while child.try_wait().map_err(io_error)?.is_none() {
            if Instant::now() >= deadline {
                eprintln!(
                    "tidesync-testkit: {name} (pid {}) did not stop within {STOP_TIMEOUT:?}; killing it",
                    child.id()
                );
                child.kill().map_err(io_error)?;
                child.wait().map_err(io_error)?;
                break;
            }
            thread::sleep(POLL_INTERVAL);
        }
        Ok(())
    }

    /// The last lines logged since the current run started.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        let read = OpenOptions::new()
            .read(true)
            .open(&self.spec.log_path)
            .and_then(|mut file| {
                file.seek(SeekFrom::Start(self.log_offset))?;
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes)?;
                text = String::from_utf8_lossy(&bytes).into_owned();
                Ok(())
            });
        if let Err(error) = read {
            return format!("(could not read the log: {error})");
        }
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            return String::from("(the log is empty)");
        }
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            eprintln!("tidesync-testkit: {error}");
        }
    }
}
