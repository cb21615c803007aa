//! The one error type of the crate.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Why a server could not be started, stopped or queried.
///
/// Every variant says what to do next: which Debian package to install, or the tail of the
/// server's log when it died or never became ready.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// A program the server needs is not installed.
    #[error(
        "{program} not found at {}: install the Debian package `{package}` \
         (apt-get install -y {package}, or run .ci/install-servers.sh)",
        path.display()
    )]
    MissingBinary {
        /// The program's name, e.g. `memcached`.
        program: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// The Debian package that provides it.
        package: &'static str,
    },

    /// The OS account a server must run as does not exist.
    #[error(
        "OS user `{user}` not found in /etc/passwd: install the Debian package `{package}` \
         (apt-get install -y {package}), which creates it"
    )]
    MissingUser {
        /// The account name, e.g. `postgres`.
        user: &'static str,
        /// The Debian package whose installation creates it.
        package: &'static str,
    },

    /// A file-system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The server process exited while we waited for it to become ready.
    #[error(
        "{server} exited during startup ({status}); last lines of {}:\n{log_tail}",
        log_path.display()
    )]
    ExitedEarly {
        /// Which server.
        server: &'static str,
        /// How it exited.
        status: ExitStatus,
        /// Its log file.
        log_path: PathBuf,
        /// The last lines it logged during this start.
        log_tail: String,
    },

    /// The server kept running but did not answer its readiness probe in time.
    #[error(
        "{server} did not become ready within {waited:?} (last probe error: {last_error}); \
         last lines of {}:\n{log_tail}",
        log_path.display()
    )]
    NotReady {
        /// Which server.
        server: &'static str,
        /// How long we waited.
        waited: Duration,
        /// What the last probe reported.
        last_error: String,
        /// Its log file.
        log_path: PathBuf,
        /// The last lines it logged during this start.
        log_tail: String,
    },

    /// A helper command (initdb, psql, mariadb, rabbitmqctl, ...) failed.
    #[error(
        "`{command}` failed ({status}){}{}",
        section("stderr", stderr),
        section("stdout", stdout)
    )]
    CommandFailed {
        /// The command line (without environment).
        command: String,
        /// How it exited.
        status: ExitStatus,
        /// What it printed on stdout.
        stdout: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

impl TestkitError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// True when the server died because its port was taken between [`crate::free_port`]
    /// and its own `bind`; starting again on another port will then most likely work.
    pub fn is_port_conflict(&self) -> bool {
        match self {
            Self::ExitedEarly { log_tail, .. } => {
                let tail = log_tail.to_ascii_lowercase();
                [
                    "address already in use",
                    "eaddrinuse",
                    "already a epmd running",
                ]
                .iter()
                .any(|symptom| tail.contains(symptom))
            }
            _ => false,
        }
    }
}

fn section(name: &str, text: &str) -> String {
    let text = text.trim_end();
    if text.is_empty() {
        String::new()
    } else {
        format!("\n{name}:\n{text}")
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::path::PathBuf;
    use std::process::ExitStatus;

    use super::TestkitError;

    fn exited_early(log_tail: &str) -> TestkitError {
        TestkitError::ExitedEarly {
            server: "Redis",
            status: ExitStatus::from_raw(256),
            log_path: PathBuf::from("/tmp/x/redis.log"),
            log_tail: log_tail.to_owned(),
        }
    }

    #[test]
    fn missing_binary_names_the_package_to_install() {
        let error = crate::util::require_binary(
            "memcached",
            std::path::Path::new("/nonexistent/memcached"),
            "memcached",
        )
        .expect_err("not installed");
        assert_eq!(
            error.to_string(),
            "memcached not found at /nonexistent/memcached: install the Debian package \
             `memcached` (apt-get install -y memcached, or run .ci/install-servers.sh)"
        );
    }

    #[test]
    fn exited_early_quotes_the_log() {
        let message = exited_early("FATAL: bad things").to_string();
        assert!(
            message.starts_with("Redis exited during startup (exit status: 1)"),
            "{message}"
        );
        assert!(
            message.ends_with("/tmp/x/redis.log:\nFATAL: bad things"),
            "{message}"
        );
    }

    #[test]
    fn port_conflicts_are_recognised_from_the_log() {
        assert!(exited_early("bind: Address already in use").is_port_conflict());
        assert!(exited_early("{listen_error,eaddrinuse}").is_port_conflict());
        assert!(!exited_early("invalid value for parameter").is_port_conflict());
    }
}
