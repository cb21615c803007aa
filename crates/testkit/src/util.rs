//! Small helpers shared by the server modules.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

use crate::TestkitError;
use crate::os_user::OsUser;

/// The address every server listens on.
pub(crate) const HOST: &str = "127.0.0.1";

/// How many ports to try when a server loses the race for its port.
const PORT_ATTEMPTS: usize = 3;

/// Timeout for the readiness probes' connects, reads and writes.
const PROBE_IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// The kernel picks it (bind to port 0); ports already handed out by this process are never
/// returned twice, so parallel tests in one binary do not collide with each other. Another
/// process may still grab it before the server binds it: the `start` functions detect that
/// and retry on a new port.
///
/// # Panics
///
/// If no loopback port can be bound at all.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("cannot bind any port on 127.0.0.1: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("cannot read the bound address: {e}"))
            .port();
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// Calls `start` with fresh ports until it succeeds or fails for another reason than its
/// port being taken.
pub(crate) fn with_port_retry<T>(
    mut start: impl FnMut(u16) -> Result<T, TestkitError>,
) -> Result<T, TestkitError> {
    let mut attempt = 1;
    loop {
        match start(free_port()) {
            Err(error) if error.is_port_conflict() && attempt < PORT_ATTEMPTS => attempt += 1,
            result => return result,
        }
    }
}

/// Fails with the Debian package to install when `path` is not an executable file.
pub(crate) fn require_binary(
    program: &'static str,
    path: &Path,
    package: &'static str,
) -> Result<(), TestkitError> {
    let executable =
        fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if executable {
        Ok(())
    } else {
        Err(TestkitError::MissingBinary {
            program,
            path: path.to_path_buf(),
            package,
        })
    }
}

/// Creates the server's private temporary folder. When `owner` is given (we run as root and
/// the server runs as its own account), the folder is handed to that account and made
/// traversable, so the server can create its data, socket and pid files in it.
pub(crate) fn temp_dir(prefix: &str, owner: Option<&OsUser>) -> Result<TempDir, TestkitError> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| TestkitError::io("creating a temporary folder", e))?;
    if let Some(owner) = owner {
        let path = dir.path();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .map_err(|e| TestkitError::io(format!("chmod 0755 {}", path.display()), e))?;
        std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid))
            .map_err(|e| TestkitError::io(format!("chown {}", path.display()), e))?;
    }
    Ok(dir)
}

/// Removes environment variables starting with one of `prefixes` (e.g. `PG`, so a developer's
/// `PGSSLMODE` cannot change how psql talks to the test server).
pub(crate) fn scrub_env(command: &mut Command, prefixes: &[&str]) {
    for (key, _) in std::env::vars_os() {
        if let Some(key_str) = key.to_str()
            && prefixes.iter().any(|prefix| key_str.starts_with(prefix))
        {
            command.env_remove(&key);
        }
    }
}

/// Runs a client command, feeding it `stdin`, and returns its stdout without the final
/// newline. A non-zero exit becomes [`TestkitError::CommandFailed`] with both outputs.
pub(crate) fn run_command(command: &mut Command, stdin: &str) -> Result<String, TestkitError> {
    let description = describe(command);
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| TestkitError::io(format!("running `{description}`"), e))?;
    let input = child.stdin.take();
    let output = thread::scope(|scope| {
        // Write from another thread so a large output cannot block a large input.
        if let Some(mut input) = input {
            scope.spawn(move || {
                // A command that exits without reading its input is reported by its status.
                let _ = input.write_all(stdin.as_bytes());
            });
        }
        child.wait_with_output()
    })
    .map_err(|e| TestkitError::io(format!("running `{description}`"), e))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout
            .strip_suffix('\n')
            .map(str::to_owned)
            .unwrap_or(stdout))
    } else {
        Err(TestkitError::CommandFailed {
            command: description,
            status: output.status,
            stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// The command line, without the environment (which may hold passwords).
fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Connects to `127.0.0.1:port` with short timeouts, for readiness probes.
pub(crate) fn probe_connect(port: u16) -> Result<TcpStream, String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&address, PROBE_IO_TIMEOUT)
        .map_err(|e| format!("connect to {address}: {e}"))?;
    stream
        .set_read_timeout(Some(PROBE_IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(PROBE_IO_TIMEOUT)))
        .map_err(|e| format!("set timeouts on {address}: {e}"))?;
    Ok(stream)
}

/// Sends `request` and returns the first line of the answer, without its `\r\n`.
pub(crate) fn probe_line(port: u16, request: &[u8]) -> Result<String, String> {
    let mut stream = probe_connect(port)?;
    stream
        .write_all(request)
        .map_err(|e| format!("write: {e}"))?;
    read_line(&mut BufReader::new(stream))
}

/// Reads one `\n`-terminated line, without its line ending.
pub(crate) fn read_line(reader: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err(String::from("connection closed")),
        Ok(_) => Ok(line.trim_end_matches(['\r', '\n']).to_owned()),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for URL user names,
/// passwords and paths.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_never_hands_out_a_port_twice() {
        let ports: HashSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
    }

    #[test]
    fn percent_encode_keeps_unreserved_characters_only() {
        assert_eq!(percent_encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(percent_encode("/"), "%2F");
        assert_eq!(percent_encode("p@ss word"), "p%40ss%20word");
    }
}
