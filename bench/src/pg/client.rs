//! A SQL connection to one of the benchmark's servers (tokio-postgres, no TLS: loopback only),
//! and WAL positions.
//!
//! Every connection sets `TimeZone = UTC` and `DateStyle = ISO`, so a row's text (which the
//! checksums hash) is the same on both servers whatever their defaults.

use std::fmt;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection. Its I/O task runs until the connection is dropped.
#[derive(Debug)]
pub struct Db {
    client: Client,
    io: JoinHandle<()>,
}

impl Db {
    /// Connects to `url` (`postgres://user@host:port/db`); `label` names the server in errors.
    pub async fn connect(url: &str, label: &str) -> anyhow::Result<Db> {
        let (client, connection) =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio_postgres::connect(url, NoTls))
                .await
                .with_context(|| format!("connecting to the {label} server: timed out"))?
                .with_context(|| format!("connecting to the {label} server ({url})"))?;
        // The connection's I/O task. It ends when the client is dropped; an error it ends with
        // shows as the failure of the query that was waiting on it.
        let io = tokio::spawn(async move {
            let _ = connection.await;
        });
        client
            .batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'")
            .await
            .with_context(|| format!("setting up a session on the {label} server"))?;
        Ok(Db { client, io })
    }
}

impl std::ops::Deref for Db {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.io.abort();
    }
}

/// A WAL position (`pg_lsn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses PostgreSQL's `X/Y` (two hex numbers: the high and low 32 bits).
    pub fn parse(text: &str) -> anyhow::Result<Lsn> {
        let Some((hi, lo)) = text.trim().split_once('/') else {
            bail!("not a pg_lsn (expected X/Y): {text:?}");
        };
        let hi = u64::from_str_radix(hi, 16).with_context(|| format!("pg_lsn {text:?}"))?;
        let lo = u64::from_str_radix(lo, 16).with_context(|| format!("pg_lsn {text:?}"))?;
        if hi > u64::from(u32::MAX) || lo > u64::from(u32::MAX) {
            bail!("pg_lsn out of range: {text:?}");
        }
        Ok(Lsn(hi << 32 | lo))
    }

    /// Bytes of WAL from `earlier` to this position.
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The server's current WAL write position (`pg_current_wal_lsn()`).
pub async fn current_lsn(db: &Db) -> anyhow::Result<Lsn> {
    let row = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .context("reading pg_current_wal_lsn()")?;
    Lsn::parse(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_and_orders() -> anyhow::Result<()> {
        let a = Lsn::parse("16/B374D848")?;
        assert_eq!(a.0, 0x16_B374_D848);
        assert_eq!(a.to_string(), "16/B374D848");
        assert_eq!(Lsn::parse("0/0")?, Lsn(0));
        assert!(Lsn::parse("1/0")? > Lsn::parse("0/FFFFFFFF")?);
        assert_eq!(Lsn::parse("0/10")?.bytes_since(Lsn(4)), 12);
        assert!(Lsn::parse("garbage").is_err());
        assert!(Lsn::parse("1/G").is_err());
        assert!(Lsn::parse("100000000/0").is_err());
        Ok(())
    }
}
