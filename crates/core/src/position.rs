//! [`Position`]: where a source is. Totally ordered within one source, and stored next to the
//! log so that a restart resumes exactly after the last committed batch.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Key;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Position {
    /// A PostgreSQL log sequence number.
    Lsn(u64),
    /// A MySQL/MariaDB binlog file and byte offset, on the server with id `server` (file
    /// names and offsets are that server's own), and the same place as a GTID position
    /// (MariaDB's `domain-server-seq` list), which other servers of a replication topology
    /// understand: a restart on another server (a failover) resumes there.
    Binlog {
        file: String,
        offset: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gtid: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server: Option<u32>,
    },
    /// A GTID set (MySQL) or domain-server-seq list (MariaDB).
    Gtid(String),
    /// The id of the last drained row of a trigger change table.
    RowId(i64),
    /// A poll watermark: the last seen timestamp and, among rows sharing it, the last key.
    Watermark { time_us: i64, key: Key },
    /// A query-and-compare (`diff` or `incremental`) source: the start of its last complete
    /// run (microseconds since the epoch; 0: no run completed yet). Batches of a run in
    /// progress carry the previous run's position; the run's last batch carries its own.
    DiffRun {
        started_us: i64,
        /// `incremental`: the start of the last run that compared every row (and so found
        /// deletes); 0 when there was none, and for `diff` sources (every run does).
        #[serde(default, skip_serializing_if = "is_zero")]
        full_us: i64,
        /// `incremental`: per stream, the greatest value of its change column seen so far.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        marks: Vec<Mark>,
    },
    /// A hub's inbox of one agent (`tidesync serve`): the last seq of the agent's own log
    /// that the hub holds in its log. The agent's next push starts after it.
    Agent { seq: u64 },
    /// An initial snapshot in progress: the change stream resumes at `stream` once it is
    /// done; the tables the source lists before `table` are copied, and of `table` the rows
    /// up to and including key `after` (in the source's own text form and key order; `None`:
    /// none of it yet).
    Snapshot {
        stream: Box<Position>,
        table: String,
        after: Option<Key>,
    },
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// The watermark of one stream of an `incremental` source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mark {
    pub stream: String,
    pub value: MarkValue,
}

/// A change-column value: only kinds that order exactly.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkValue {
    Int(i64),
    /// Microseconds since the epoch, UTC.
    Timestamp(i64),
    /// Days since 1970-01-01.
    Date(i32),
    Text(String),
}

impl MarkValue {
    /// The mark of `value`; `None` for kinds a watermark cannot be (null, floats, ...).
    pub fn of(value: &crate::Value) -> Option<MarkValue> {
        use crate::Value;
        match value {
            Value::Int(i) => Some(MarkValue::Int(*i)),
            Value::Timestamp(t) => Some(MarkValue::Timestamp(*t)),
            Value::Date(d) => Some(MarkValue::Date(*d)),
            Value::Text(s) => Some(MarkValue::Text(s.clone())),
            _ => None,
        }
    }

    /// The value this mark stands for.
    pub fn value(&self) -> crate::Value {
        use crate::Value;
        match self {
            MarkValue::Int(i) => Value::Int(*i),
            MarkValue::Timestamp(t) => Value::Timestamp(*t),
            MarkValue::Date(d) => Value::Date(*d),
            MarkValue::Text(s) => Value::Text(s.clone()),
        }
    }
}

impl Position {
    /// Compares two positions of the same kind; positions of different kinds do not compare.
    pub fn partial_cmp_same_source(&self, other: &Position) -> Option<Ordering> {
        use Position::*;
        match (self, other) {
            (Lsn(a), Lsn(b)) => Some(a.cmp(b)),
            (RowId(a), RowId(b)) => Some(a.cmp(b)),
            (Agent { seq: a }, Agent { seq: b }) => Some(a.cmp(b)),
            (DiffRun { started_us: a, .. }, DiffRun { started_us: b, .. }) => Some(a.cmp(b)),
            (
                Binlog {
                    file: fa,
                    offset: oa,
                    server: sa,
                    ..
                },
                Binlog {
                    file: fb,
                    offset: ob,
                    server: sb,
                    ..
                },
            ) => {
                // Another server's file names and offsets say nothing about this one's.
                if sa.is_some() && sb.is_some() && sa != sb {
                    return None;
                }
                Some(binlog_file_cmp(fa, fb).then(oa.cmp(ob)))
            }
            (Watermark { time_us: a, .. }, Watermark { time_us: b, .. }) if a != b => {
                Some(a.cmp(b))
            }
            _ if self == other => Some(Ordering::Equal),
            _ => None,
        }
    }

    /// The JSON text stored in the `positions` table.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| unreachable!("position serializes: {e}"))
    }

    pub fn from_json(text: &str) -> Result<Position, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// Orders binlog file names as the server numbers them: `log.999999` before `log.1000000`
/// (the number after the last dot; names without one compare as text).
pub fn binlog_file_cmp(a: &str, b: &str) -> Ordering {
    let split = |f: &str| -> Option<(String, u64)> {
        let (base, n) = f.rsplit_once('.')?;
        Some((base.to_owned(), n.parse().ok()?))
    };
    match (split(a), split(b)) {
        (Some((ba, na)), Some((bb, nb))) => ba.cmp(&bb).then(na.cmp(&nb)),
        _ => a.cmp(b),
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Lsn(lsn) => write!(f, "lsn {:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF),
            Position::Binlog {
                file, offset, gtid, ..
            } => {
                write!(f, "binlog {file}:{offset}")?;
                match gtid {
                    Some(gtid) if !gtid.is_empty() => write!(f, " (gtid {gtid})"),
                    _ => Ok(()),
                }
            }
            Position::Gtid(set) => write!(f, "gtid {set}"),
            Position::RowId(id) => write!(f, "row id {id}"),
            Position::Agent { seq } => write!(f, "agent's log through seq {seq}"),
            Position::DiffRun { started_us: 0, .. } => f.write_str("no diff run completed yet"),
            Position::DiffRun {
                started_us, marks, ..
            } => {
                write!(
                    f,
                    "diff run started {}",
                    crate::time::format_timestamp(*started_us)
                )?;
                for m in marks {
                    write!(f, ", {} changed up to {}", m.stream, m.value.value())?;
                }
                Ok(())
            }
            Position::Watermark { time_us, key } => write!(
                f,
                "watermark {} {key}",
                crate::time::format_timestamp(*time_us)
            ),
            Position::Snapshot {
                stream,
                table,
                after,
            } => {
                write!(f, "snapshot of {table}")?;
                if let Some(key) = after {
                    write!(f, " after {key}")?;
                }
                write!(f, ", then {stream}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_through_json() {
        for p in [
            Position::Lsn(0x016B_3748),
            Position::Binlog {
                file: "binlog.000003".into(),
                offset: 4,
                gtid: None,
                server: None,
            },
            Position::Binlog {
                file: "binlog.000003".into(),
                offset: 4,
                gtid: Some("0-1-42,1-2-7".into()),
                server: Some(1),
            },
            Position::Gtid("0-1-42".into()),
            Position::RowId(9),
            Position::Watermark {
                time_us: 5,
                key: Key(vec![crate::Value::Int(3)]),
            },
            Position::Snapshot {
                stream: Box::new(Position::Lsn(7)),
                table: "public.items".into(),
                after: Some(Key(vec![crate::Value::Text("42".into())])),
            },
        ] {
            assert_eq!(Position::from_json(&p.to_json()).unwrap(), p);
        }
    }

    #[test]
    fn binlog_positions_without_gtid_read_back_and_servers_do_not_compare() {
        // As stored before positions had a GTID and a server.
        let old = Position::from_json(r#"{"binlog":{"file":"binlog.000002","offset":9}}"#).unwrap();
        let on = |server, offset| Position::Binlog {
            file: "binlog.000002".into(),
            offset,
            gtid: None,
            server,
        };
        assert_eq!(old, on(None, 9));
        assert_eq!(
            on(Some(1), 9).partial_cmp_same_source(&on(Some(1), 10)),
            Some(Ordering::Less)
        );
        assert_eq!(
            on(None, 9).partial_cmp_same_source(&on(Some(1), 10)),
            Some(Ordering::Less)
        );
        assert_eq!(
            on(Some(1), 9).partial_cmp_same_source(&on(Some(2), 10)),
            None
        );
    }

    #[test]
    fn lsn_displays_like_postgres() {
        assert_eq!(Position::Lsn(0x1_0000_00A0).to_string(), "lsn 1/A0");
    }

    #[test]
    fn positions_of_different_kinds_do_not_compare() {
        assert_eq!(
            Position::Lsn(1).partial_cmp_same_source(&Position::RowId(1)),
            None
        );
        assert_eq!(
            Position::RowId(1).partial_cmp_same_source(&Position::RowId(2)),
            Some(Ordering::Less)
        );
    }
}
