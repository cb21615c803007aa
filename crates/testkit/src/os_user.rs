//! Looking up the OS accounts that servers refuse to run without (when we are root).

use std::fs;

use crate::TestkitError;

/// A user from /etc/passwd.
#[derive(Debug, Clone)]
pub(crate) struct OsUser {
    pub uid: u32,
    pub gid: u32,
}

/// Finds `name` in /etc/passwd; `package` is the Debian package that creates it.
pub(crate) fn lookup(name: &'static str, package: &'static str) -> Result<OsUser, TestkitError> {
    let passwd = fs::read_to_string("/etc/passwd")
        .map_err(|e| TestkitError::io("reading /etc/passwd", e))?;
    parse(&passwd, name).ok_or(TestkitError::MissingUser {
        user: name,
        package,
    })
}

fn parse(passwd: &str, name: &str) -> Option<OsUser> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(OsUser { uid, gid })
    })
}

/// Whether this process runs as root (and so must hand servers to their own accounts).
pub(crate) fn running_as_root() -> bool {
    // The owner of /proc/self is the effective uid of this process.
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_uid_and_gid_of_the_named_user() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n";
        let user = parse(passwd, "postgres").expect("postgres is listed");
        assert_eq!((user.uid, user.gid), (101, 104));
        assert!(parse(passwd, "mysql").is_none());
        assert!(parse(passwd, "postgre").is_none());
    }
}
