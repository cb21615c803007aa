//! Decoder for PostgreSQL's `pgoutput` logical replication messages, protocol version 1.
//!
//! Each XLogData payload of a logical replication stream carries one message. [`decode`] turns
//! those bytes into a [`PgOutputMessage`] and nothing else: it keeps no state, does no I/O and
//! does not interpret column values (see [`super::text::text_to_value`] for that). Pairing tuples
//! with the column list of the last `Relation` message for the same oid is the caller's job.
//!
//! Layout: PostgreSQL documentation, "Logical Replication Message Formats"
//! (`protocol-logicalrep-message-formats.html`), protocol version 1. Integers are big-endian,
//! strings are NUL-terminated, LSNs are `Int64`, timestamps are `Int64` microseconds since
//! 2000-01-01 UTC. Version 2 and later add a transaction id after the kind byte of streamed
//! messages and new message kinds; we never ask for those versions, so their kinds are
//! rejected with an error that names the version.
//!
//! Invariants:
//! - Never panics and never allocates more than the input could hold: every length and count is
//!   checked against the remaining bytes before anything is allocated for it.
//! - Strict: unknown flag bits, unknown replica identities, trailing bytes and truncated input
//!   are errors, never skipped. (PostgreSQL's own subscriber rejects non-zero commit flags the
//!   same way.) A message the decoder accepts re-encodes to exactly the same bytes.
//! - An unchanged TOASTed value ([`TupleValue::Unchanged`]) is not a null: the row's value did not
//!   change and was not sent, so a sink must keep what it has.
//! - Errors name the message kind, the byte offset (0 is the kind byte) and what was expected.
//!
//! Column values stay bytes ([`TupleValue::Text`] is a `Vec<u8>`): the decoder checks framing,
//! and the caller, which knows the column name and type, reports bad values better.

use std::fmt;
use std::str::FromStr;

use tidesync_core::Position;

/// Microseconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01T00:00:00Z.
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800 * 1_000_000;

/// Converts a PostgreSQL timestamp (microseconds since 2000-01-01 UTC) into microseconds since
/// the Unix epoch, the unit of [`tidesync_core::Value::Timestamp`]. `None` when the result does
/// not fit an `i64` (only PostgreSQL's `infinity`, `i64::MAX`, comes close).
pub fn pg_micros_to_unix_micros(pg_micros: i64) -> Option<i64> {
    pg_micros.checked_add(PG_EPOCH_UNIX_MICROS)
}

/// A PostgreSQL log sequence number: a byte position in the write-ahead log.
///
/// Displays and parses like PostgreSQL's `pg_lsn`: two hexadecimal numbers of up to 8 digits,
/// the high and low 32 bits, separated by `/` (`16/B374D848`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// A text that is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid LSN `{text}`: expected two hexadecimal numbers of 1 to 8 digits separated by `/`, like `16/B374D848`"
)]
pub struct ParseLsnError {
    pub text: String,
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    /// Accepts what PostgreSQL's `pg_lsn_in` accepts: 1 to 8 hex digits (either case), `/`,
    /// 1 to 8 hex digits, nothing else (no sign, no spaces).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let half = |s: &str| {
            if (1..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                u64::from_str_radix(s, 16).ok()
            } else {
                None
            }
        };
        text.split_once('/')
            .and_then(|(hi, lo)| Some((half(hi)? << 32) | half(lo)?))
            .map(Lsn)
            .ok_or_else(|| ParseLsnError {
                text: text.to_owned(),
            })
    }
}

impl From<Lsn> for Position {
    fn from(lsn: Lsn) -> Self {
        Position::Lsn(lsn.0)
    }
}

/// A PostgreSQL object id (of a relation or a type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Oid(pub u32);

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A PostgreSQL transaction id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Xid(pub u32);

impl fmt::Display for Xid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutputMessage {
    /// `B`: a transaction starts. Its changes follow, then a `Commit`.
    Begin {
        /// The LSN of the transaction's commit record (the `commit_lsn` of its `Commit`).
        final_lsn: Lsn,
        /// Commit time, microseconds since the Unix epoch.
        commit_time_us: i64,
        xid: Xid,
    },
    /// `C`: the transaction started by the last `Begin` committed.
    Commit {
        commit_lsn: Lsn,
        /// The end of the transaction in the WAL: the position to confirm once the
        /// transaction is durably stored, and to restart from.
        end_lsn: Lsn,
        /// Commit time, microseconds since the Unix epoch.
        commit_time_us: i64,
    },
    /// `O`: the transaction came from another node (it was itself replicated).
    Origin {
        /// The LSN of the commit on the origin server.
        commit_lsn: Lsn,
        name: String,
    },
    /// `M`: a `pg_logical_emit_message()` call (only sent with the `messages` option).
    Message {
        /// Part of the surrounding transaction, rather than emitted immediately.
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Vec<u8>,
    },
    /// `R`: the shape of a relation; sent before its first change in a session and again
    /// after its schema changed.
    Relation(Relation),
    /// `Y`: the name of a non-built-in type used by a relation's column.
    Type {
        oid: Oid,
        /// Empty for `pg_catalog`.
        namespace: String,
        name: String,
    },
    /// `I`: a row was inserted.
    Insert { rel: Oid, new: Tuple },
    /// `U`: a row was updated. `old` is present only when the replica identity key changed
    /// ([`OldTuple::Key`]) or the table has `REPLICA IDENTITY FULL` ([`OldTuple::Full`]);
    /// otherwise the key is taken from `new`.
    Update {
        rel: Oid,
        old: Option<OldTuple>,
        new: Tuple,
    },
    /// `D`: a row was deleted; `old` holds its key or, with `REPLICA IDENTITY FULL`, the row.
    Delete { rel: Oid, old: OldTuple },
    /// `T`: relations were truncated.
    Truncate {
        rels: Vec<Oid>,
        cascade: bool,
        restart_identity: bool,
    },
}

impl PgOutputMessage {
    pub fn kind(&self) -> MessageKind {
        match self {
            PgOutputMessage::Begin { .. } => MessageKind::Begin,
            PgOutputMessage::Commit { .. } => MessageKind::Commit,
            PgOutputMessage::Origin { .. } => MessageKind::Origin,
            PgOutputMessage::Message { .. } => MessageKind::Message,
            PgOutputMessage::Relation(_) => MessageKind::Relation,
            PgOutputMessage::Type { .. } => MessageKind::Type,
            PgOutputMessage::Insert { .. } => MessageKind::Insert,
            PgOutputMessage::Update { .. } => MessageKind::Update,
            PgOutputMessage::Delete { .. } => MessageKind::Delete,
            PgOutputMessage::Truncate { .. } => MessageKind::Truncate,
        }
    }
}

/// The shape of a published relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: Oid,
    /// Empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    /// In the order of the values of every tuple for this relation.
    pub columns: Vec<RelationColumn>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity (the key that old tuples carry).
    pub part_of_key: bool,
    pub name: String,
    pub type_oid: Oid,
    /// `atttypmod`: e.g. the length of a `varchar(n)` plus 4; -1 when there is none.
    pub type_modifier: i32,
}

/// `REPLICA IDENTITY` of a relation: which columns old tuples carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: the primary key.
    Default,
    /// `n`: nothing; updates and deletes carry no old values.
    Nothing,
    /// `f`: every column.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            _ => return None,
        })
    }

    /// The byte PostgreSQL sends (`pg_class.relreplident`).
    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }
}

/// The values of one row, one per column of the relation, in column order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple(pub Vec<TupleValue>);

/// One column value of a [`Tuple`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// `n`: SQL NULL.
    Null,
    /// `u`: an unchanged TOASTed value that was not sent. Not a null: keep the stored value.
    Unchanged,
    /// `t`: the type's text output (in the connection's client encoding).
    Text(Vec<u8>),
    /// `b`: the type's binary send format (only with the `binary` option).
    Binary(Vec<u8>),
}

/// The old row carried by an `Update` or a `Delete`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: the replica identity key. PostgreSQL sends a value for every column, with `n`
    /// (null) for columns outside the key.
    Key(Tuple),
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(Tuple),
}

impl OldTuple {
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// The kind of a protocol version 1 message, named as in PostgreSQL's documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    Begin,
    Commit,
    Origin,
    Message,
    Relation,
    Type,
    Insert,
    Update,
    Delete,
    Truncate,
}

impl MessageKind {
    /// The kind byte that starts the message.
    pub fn byte(self) -> u8 {
        match self {
            MessageKind::Begin => b'B',
            MessageKind::Commit => b'C',
            MessageKind::Origin => b'O',
            MessageKind::Message => b'M',
            MessageKind::Relation => b'R',
            MessageKind::Type => b'Y',
            MessageKind::Insert => b'I',
            MessageKind::Update => b'U',
            MessageKind::Delete => b'D',
            MessageKind::Truncate => b'T',
        }
    }

    fn from_byte(byte: u8) -> Result<Self, PgOutputError> {
        Ok(match byte {
            b'B' => MessageKind::Begin,
            b'C' => MessageKind::Commit,
            b'O' => MessageKind::Origin,
            b'M' => MessageKind::Message,
            b'R' => MessageKind::Relation,
            b'Y' => MessageKind::Type,
            b'I' => MessageKind::Insert,
            b'U' => MessageKind::Update,
            b'D' => MessageKind::Delete,
            b'T' => MessageKind::Truncate,
            // Streaming of in-progress transactions (version 2) and two-phase commit
            // (version 3): only sent when a client asks for those versions.
            b'S' | b'E' | b'c' | b'A' | b'b' | b'P' | b'K' | b'r' | b'p' => {
                let (name, version) = match byte {
                    b'S' => ("Stream Start", 2),
                    b'E' => ("Stream Stop", 2),
                    b'c' => ("Stream Commit", 2),
                    b'A' => ("Stream Abort", 2),
                    b'b' => ("Begin Prepare", 3),
                    b'P' => ("Prepare", 3),
                    b'K' => ("Commit Prepared", 3),
                    b'r' => ("Rollback Prepared", 3),
                    _ => ("Stream Prepare", 3),
                };
                return Err(PgOutputError::LaterProtocol {
                    kind: byte,
                    name,
                    version,
                });
            }
            _ => return Err(PgOutputError::UnknownKind { kind: byte }),
        })
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MessageKind::Begin => "Begin",
            MessageKind::Commit => "Commit",
            MessageKind::Origin => "Origin",
            MessageKind::Message => "Message",
            MessageKind::Relation => "Relation",
            MessageKind::Type => "Type",
            MessageKind::Insert => "Insert",
            MessageKind::Update => "Update",
            MessageKind::Delete => "Delete",
            MessageKind::Truncate => "Truncate",
        })
    }
}

/// Why a pgoutput message did not decode. Always a definite error: the same bytes will fail
/// the same way again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgOutputError {
    #[error("empty message: expected a message kind byte")]
    Empty,
    #[error("unknown message kind {kind:#04x}")]
    UnknownKind { kind: u8 },
    #[error(
        "message kind {kind:#04x} ({name}) needs pgoutput protocol version {version} or later, but the stream uses version 1"
    )]
    LaterProtocol {
        kind: u8,
        name: &'static str,
        version: u8,
    },
    #[error("{kind} message at byte {offset}: {problem}")]
    Malformed {
        kind: MessageKind,
        /// Offset into the message; 0 is the kind byte.
        offset: usize,
        problem: Problem,
    },
}

/// What was wrong at the offset of a [`PgOutputError::Malformed`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("truncated in {what}: needs {needed} bytes, {remaining} remain")]
    Truncated {
        what: Field,
        needed: usize,
        remaining: usize,
    },
    #[error("{what}: {count} needs at least {needed} bytes, {remaining} remain")]
    CountExceedsInput {
        what: Field,
        count: usize,
        needed: usize,
        remaining: usize,
    },
    #[error("{what}: string not NUL-terminated")]
    Unterminated { what: Field },
    #[error("{what}: invalid UTF-8")]
    InvalidUtf8 { what: Field },
    #[error("{what}: expected {expected}, found {}", show_byte(*.found))]
    Unexpected {
        what: Field,
        expected: &'static str,
        found: u8,
    },
    #[error("{what}: expected {expected}, found {value:#04x}")]
    UnknownBits {
        what: Field,
        expected: &'static str,
        value: u8,
    },
    #[error("{what}: negative length {value}")]
    NegativeLength { what: Field, value: i32 },
    #[error("{what}: negative count {value}")]
    NegativeCount { what: Field, value: i32 },
    #[error(
        "commit timestamp: {pg_micros} microseconds after 2000-01-01 is beyond the range of Unix microseconds"
    )]
    TimestampOutOfRange { pg_micros: i64 },
    #[error("{count} trailing bytes after the end of the message")]
    TrailingBytes { count: usize },
}

/// The field a [`Problem`] was found in: a name, and for tuple values the column index
/// (counted from 0, in the order of the relation's columns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub column: Option<u16>,
}

impl Field {
    const fn named(name: &'static str) -> Self {
        Field { name, column: None }
    }

    const fn column(index: u16, name: &'static str) -> Self {
        Field {
            name,
            column: Some(index),
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.column {
            Some(index) => write!(f, "column {index} {}", self.name),
            None => f.write_str(self.name),
        }
    }
}

/// `'X'` for a printable ASCII byte, `0x00` otherwise.
fn show_byte(byte: u8) -> String {
    if byte.is_ascii_graphic() || byte == b' ' {
        format!("'{}'", char::from(byte))
    } else {
        format!("{byte:#04x}")
    }
}

/// Decodes one pgoutput message (the payload of one XLogData message).
pub fn decode(bytes: &[u8]) -> Result<PgOutputMessage, PgOutputError> {
    let (&kind_byte, _) = bytes.split_first().ok_or(PgOutputError::Empty)?;
    let kind = MessageKind::from_byte(kind_byte)?;
    let mut r = Reader {
        bytes,
        pos: 1,
        kind,
    };
    let message = match kind {
        MessageKind::Begin => PgOutputMessage::Begin {
            final_lsn: r.lsn("final LSN")?,
            commit_time_us: r.timestamp()?,
            xid: Xid(r.u32(Field::named("xid"))?),
        },
        MessageKind::Commit => {
            let at = r.pos;
            let flags = r.u8(Field::named("commit flags"))?;
            if flags != 0 {
                return Err(r.fail(
                    at,
                    Problem::UnknownBits {
                        what: Field::named("commit flags"),
                        expected: "0",
                        value: flags,
                    },
                ));
            }
            PgOutputMessage::Commit {
                commit_lsn: r.lsn("commit LSN")?,
                end_lsn: r.lsn("end LSN")?,
                commit_time_us: r.timestamp()?,
            }
        }
        MessageKind::Origin => PgOutputMessage::Origin {
            commit_lsn: r.lsn("origin commit LSN")?,
            name: r.string(Field::named("origin name"))?,
        },
        MessageKind::Message => {
            let at = r.pos;
            let flags = r.u8(Field::named("message flags"))?;
            let transactional = match flags {
                0 => false,
                1 => true,
                _ => {
                    return Err(r.fail(
                        at,
                        Problem::UnknownBits {
                            what: Field::named("message flags"),
                            expected: "0 or 1 (transactional)",
                            value: flags,
                        },
                    ));
                }
            };
            PgOutputMessage::Message {
                transactional,
                lsn: r.lsn("message LSN")?,
                prefix: r.string(Field::named("prefix"))?,
                content: r.counted_bytes(Field::named("content"))?.to_vec(),
            }
        }
        MessageKind::Relation => PgOutputMessage::Relation(r.relation()?),
        MessageKind::Type => PgOutputMessage::Type {
            oid: r.oid("type oid")?,
            namespace: r.string(Field::named("namespace"))?,
            name: r.string(Field::named("type name"))?,
        },
        MessageKind::Insert => {
            let rel = r.oid("relation oid")?;
            r.expect_marker(b'N', "'N'")?;
            PgOutputMessage::Insert {
                rel,
                new: r.tuple()?,
            }
        }
        MessageKind::Update => {
            let rel = r.oid("relation oid")?;
            let at = r.pos;
            let old = match r.u8(Field::named("tuple marker"))? {
                b'K' => Some(OldTuple::Key(r.tuple()?)),
                b'O' => Some(OldTuple::Full(r.tuple()?)),
                b'N' => {
                    r.pos = at;
                    None
                }
                other => return Err(r.unexpected(at, "tuple marker", "'K', 'O' or 'N'", other)),
            };
            r.expect_marker(b'N', "'N'")?;
            PgOutputMessage::Update {
                rel,
                old,
                new: r.tuple()?,
            }
        }
        MessageKind::Delete => {
            let rel = r.oid("relation oid")?;
            let at = r.pos;
            let old = match r.u8(Field::named("tuple marker"))? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                other => return Err(r.unexpected(at, "tuple marker", "'K' or 'O'", other)),
            };
            PgOutputMessage::Delete { rel, old }
        }
        MessageKind::Truncate => r.truncate()?,
    };
    r.finish()?;
    Ok(message)
}

/// A cursor over one message. `pos <= bytes.len()` always holds.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    kind: MessageKind,
}

impl<'a> Reader<'a> {
    fn fail(&self, offset: usize, problem: Problem) -> PgOutputError {
        PgOutputError::Malformed {
            kind: self.kind,
            offset,
            problem,
        }
    }

    fn unexpected(
        &self,
        at: usize,
        what: &'static str,
        expected: &'static str,
        found: u8,
    ) -> PgOutputError {
        self.fail(
            at,
            Problem::Unexpected {
                what: Field::named(what),
                expected,
                found,
            },
        )
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.pos..).unwrap_or_default()
    }

    fn take(&mut self, n: usize, what: Field) -> Result<&'a [u8], PgOutputError> {
        let rest = self.rest();
        match rest.get(..n) {
            Some(taken) => {
                self.pos += n;
                Ok(taken)
            }
            None => Err(self.fail(
                self.pos,
                Problem::Truncated {
                    what,
                    needed: n,
                    remaining: rest.len(),
                },
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: Field) -> Result<[u8; N], PgOutputError> {
        let rest = self.rest();
        match rest.first_chunk::<N>() {
            Some(chunk) => {
                self.pos += N;
                Ok(*chunk)
            }
            None => Err(self.fail(
                self.pos,
                Problem::Truncated {
                    what,
                    needed: N,
                    remaining: rest.len(),
                },
            )),
        }
    }

    fn u8(&mut self, what: Field) -> Result<u8, PgOutputError> {
        Ok(u8::from_be_bytes(self.array(what)?))
    }

    fn u16(&mut self, what: Field) -> Result<u16, PgOutputError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: Field) -> Result<i32, PgOutputError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: Field) -> Result<u32, PgOutputError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: Field) -> Result<i64, PgOutputError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    fn lsn(&mut self, what: &'static str) -> Result<Lsn, PgOutputError> {
        Ok(Lsn(u64::from_be_bytes(self.array(Field::named(what))?)))
    }

    fn oid(&mut self, what: &'static str) -> Result<Oid, PgOutputError> {
        Ok(Oid(self.u32(Field::named(what))?))
    }

    /// A commit timestamp, converted to Unix microseconds.
    fn timestamp(&mut self) -> Result<i64, PgOutputError> {
        let at = self.pos;
        let pg_micros = self.i64(Field::named("commit timestamp"))?;
        pg_micros_to_unix_micros(pg_micros)
            .ok_or_else(|| self.fail(at, Problem::TimestampOutOfRange { pg_micros }))
    }

    /// A NUL-terminated UTF-8 string (PostgreSQL's `String`).
    fn string(&mut self, what: Field) -> Result<String, PgOutputError> {
        let at = self.pos;
        let rest = self.rest();
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.fail(at, Problem::Unterminated { what }))?;
        let text = std::str::from_utf8(rest.get(..nul).unwrap_or_default())
            .map_err(|e| self.fail(at + e.valid_up_to(), Problem::InvalidUtf8 { what }))?;
        self.pos = at + nul + 1;
        Ok(text.to_owned())
    }

    /// An `Int32` length followed by that many bytes.
    fn counted_bytes(&mut self, what: Field) -> Result<&'a [u8], PgOutputError> {
        let at = self.pos;
        let len = self.i32(what)?;
        let len = usize::try_from(len)
            .map_err(|_| self.fail(at, Problem::NegativeLength { what, value: len }))?;
        self.take(len, what)
    }

    /// Checks that `count` items of at least `min_bytes` each fit in the rest of the input,
    /// before anything is allocated for them.
    fn check_count(
        &self,
        at: usize,
        count: usize,
        min_bytes: usize,
        what: Field,
    ) -> Result<(), PgOutputError> {
        let needed = count.saturating_mul(min_bytes);
        let remaining = self.rest().len();
        if needed > remaining {
            return Err(self.fail(
                at,
                Problem::CountExceedsInput {
                    what,
                    count,
                    needed,
                    remaining,
                },
            ));
        }
        Ok(())
    }

    fn expect_marker(&mut self, marker: u8, expected: &'static str) -> Result<(), PgOutputError> {
        let at = self.pos;
        let found = self.u8(Field::named("tuple marker"))?;
        if found == marker {
            Ok(())
        } else {
            Err(self.unexpected(at, "tuple marker", expected, found))
        }
    }

    /// TupleData: `Int16` column count, then per column a kind byte and, for `t` and `b`,
    /// an `Int32` length and the bytes.
    fn tuple(&mut self) -> Result<Tuple, PgOutputError> {
        let at = self.pos;
        let what = Field::named("tuple column count");
        let count = self.u16(what)?;
        self.check_count(at, usize::from(count), 1, what)?;
        let mut values = Vec::with_capacity(usize::from(count));
        for index in 0..count {
            let kind_at = self.pos;
            let value = match self.u8(Field::column(index, "kind"))? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::Unchanged,
                b't' => {
                    TupleValue::Text(self.counted_bytes(Field::column(index, "text"))?.to_vec())
                }
                b'b' => TupleValue::Binary(
                    self.counted_bytes(Field::column(index, "binary value"))?
                        .to_vec(),
                ),
                other => {
                    return Err(self.fail(
                        kind_at,
                        Problem::Unexpected {
                            what: Field::column(index, "kind"),
                            expected: "'n', 'u', 't' or 'b'",
                            found: other,
                        },
                    ));
                }
            };
            values.push(value);
        }
        Ok(Tuple(values))
    }

    fn relation(&mut self) -> Result<Relation, PgOutputError> {
        let oid = self.oid("relation oid")?;
        let namespace = self.string(Field::named("namespace"))?;
        let name = self.string(Field::named("relation name"))?;
        let at = self.pos;
        let identity = self.u8(Field::named("replica identity"))?;
        let replica_identity = ReplicaIdentity::from_byte(identity).ok_or_else(|| {
            self.unexpected(at, "replica identity", "'d', 'n', 'f' or 'i'", identity)
        })?;
        let at = self.pos;
        let what = Field::named("relation column count");
        let count = self.u16(what)?;
        // Flags (1), a name of at least its NUL (1), type oid (4), type modifier (4).
        self.check_count(at, usize::from(count), 10, what)?;
        let mut columns = Vec::with_capacity(usize::from(count));
        for index in 0..count {
            let at = self.pos;
            let flags = self.u8(Field::column(index, "flags"))?;
            let part_of_key = match flags {
                0 => false,
                1 => true,
                _ => {
                    return Err(self.fail(
                        at,
                        Problem::UnknownBits {
                            what: Field::column(index, "flags"),
                            expected: "0 or 1 (part of the key)",
                            value: flags,
                        },
                    ));
                }
            };
            columns.push(RelationColumn {
                part_of_key,
                name: self.string(Field::column(index, "name"))?,
                type_oid: Oid(self.u32(Field::column(index, "type oid"))?),
                type_modifier: self.i32(Field::column(index, "type modifier"))?,
            });
        }
        Ok(Relation {
            oid,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    fn truncate(&mut self) -> Result<PgOutputMessage, PgOutputError> {
        let count_at = self.pos;
        let what = Field::named("relation count");
        let count = self.i32(what)?;
        let count = usize::try_from(count)
            .map_err(|_| self.fail(count_at, Problem::NegativeCount { what, value: count }))?;
        let at = self.pos;
        let options = self.u8(Field::named("truncate options"))?;
        // TRUNCATE_CASCADE (1) and TRUNCATE_RESTART_SEQS (2) in PostgreSQL's logicalproto.h.
        if options & !0b11 != 0 {
            return Err(self.fail(
                at,
                Problem::UnknownBits {
                    what: Field::named("truncate options"),
                    expected: "bits 1 (CASCADE) and 2 (RESTART IDENTITY) only",
                    value: options,
                },
            ));
        }
        self.check_count(count_at, count, 4, what)?;
        let mut rels = Vec::with_capacity(count);
        for _ in 0..count {
            rels.push(self.oid("truncated relation oid")?);
        }
        Ok(PgOutputMessage::Truncate {
            rels,
            cascade: options & 1 != 0,
            restart_identity: options & 2 != 0,
        })
    }

    fn finish(&self) -> Result<(), PgOutputError> {
        match self.rest().len() {
            0 => Ok(()),
            count => Err(self.fail(self.pos, Problem::TrailingBytes { count })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// PostgreSQL's encoding of `msg`, following the same spec layout as [`decode`].
    fn encode(msg: &PgOutputMessage) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        fn pg_time(out: &mut Vec<u8>, unix_us: i64) {
            out.extend((unix_us - PG_EPOCH_UNIX_MICROS).to_be_bytes());
        }
        fn tuple(out: &mut Vec<u8>, t: &Tuple) {
            out.extend(u16::try_from(t.0.len()).unwrap().to_be_bytes());
            for value in &t.0 {
                match value {
                    TupleValue::Null => out.push(b'n'),
                    TupleValue::Unchanged => out.push(b'u'),
                    TupleValue::Text(b) | TupleValue::Binary(b) => {
                        out.push(if matches!(value, TupleValue::Text(_)) {
                            b't'
                        } else {
                            b'b'
                        });
                        out.extend(i32::try_from(b.len()).unwrap().to_be_bytes());
                        out.extend_from_slice(b);
                    }
                }
            }
        }
        fn old(out: &mut Vec<u8>, old: &OldTuple) {
            match old {
                OldTuple::Key(t) => {
                    out.push(b'K');
                    tuple(out, t);
                }
                OldTuple::Full(t) => {
                    out.push(b'O');
                    tuple(out, t);
                }
            }
        }

        let mut out = vec![msg.kind().byte()];
        match msg {
            PgOutputMessage::Begin {
                final_lsn,
                commit_time_us,
                xid,
            } => {
                out.extend(final_lsn.0.to_be_bytes());
                pg_time(&mut out, *commit_time_us);
                out.extend(xid.0.to_be_bytes());
            }
            PgOutputMessage::Commit {
                commit_lsn,
                end_lsn,
                commit_time_us,
            } => {
                out.push(0);
                out.extend(commit_lsn.0.to_be_bytes());
                out.extend(end_lsn.0.to_be_bytes());
                pg_time(&mut out, *commit_time_us);
            }
            PgOutputMessage::Origin { commit_lsn, name } => {
                out.extend(commit_lsn.0.to_be_bytes());
                string(&mut out, name);
            }
            PgOutputMessage::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => {
                out.push(u8::from(*transactional));
                out.extend(lsn.0.to_be_bytes());
                string(&mut out, prefix);
                out.extend(i32::try_from(content.len()).unwrap().to_be_bytes());
                out.extend_from_slice(content);
            }
            PgOutputMessage::Relation(rel) => {
                out.extend(rel.oid.0.to_be_bytes());
                string(&mut out, &rel.namespace);
                string(&mut out, &rel.name);
                out.push(rel.replica_identity.as_byte());
                out.extend(u16::try_from(rel.columns.len()).unwrap().to_be_bytes());
                for c in &rel.columns {
                    out.push(u8::from(c.part_of_key));
                    string(&mut out, &c.name);
                    out.extend(c.type_oid.0.to_be_bytes());
                    out.extend(c.type_modifier.to_be_bytes());
                }
            }
            PgOutputMessage::Type {
                oid,
                namespace,
                name,
            } => {
                out.extend(oid.0.to_be_bytes());
                string(&mut out, namespace);
                string(&mut out, name);
            }
            PgOutputMessage::Insert { rel, new } => {
                out.extend(rel.0.to_be_bytes());
                out.push(b'N');
                tuple(&mut out, new);
            }
            PgOutputMessage::Update { rel, old: o, new } => {
                out.extend(rel.0.to_be_bytes());
                if let Some(o) = o {
                    old(&mut out, o);
                }
                out.push(b'N');
                tuple(&mut out, new);
            }
            PgOutputMessage::Delete { rel, old: o } => {
                out.extend(rel.0.to_be_bytes());
                old(&mut out, o);
            }
            PgOutputMessage::Truncate {
                rels,
                cascade,
                restart_identity,
            } => {
                out.extend(i32::try_from(rels.len()).unwrap().to_be_bytes());
                out.push(u8::from(*cascade) | (u8::from(*restart_identity) << 1));
                for rel in rels {
                    out.extend(rel.0.to_be_bytes());
                }
            }
        }
        out
    }

    fn name() -> impl Strategy<Value = String> {
        "[^\u{0}]{0,12}"
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..24)
    }

    /// Every Unix microsecond whose PostgreSQL form fits an `Int64`.
    fn commit_time_us() -> impl Strategy<Value = i64> {
        (i64::MIN + PG_EPOCH_UNIX_MICROS)..=i64::MAX
    }

    fn tuple() -> impl Strategy<Value = Tuple> {
        let value = prop_oneof![
            Just(TupleValue::Null),
            Just(TupleValue::Unchanged),
            bytes().prop_map(TupleValue::Text),
            bytes().prop_map(TupleValue::Binary),
        ];
        proptest::collection::vec(value, 0..6).prop_map(Tuple)
    }

    fn old_tuple() -> impl Strategy<Value = OldTuple> {
        prop_oneof![
            tuple().prop_map(OldTuple::Key),
            tuple().prop_map(OldTuple::Full)
        ]
    }

    fn relation() -> impl Strategy<Value = Relation> {
        let identity = prop_oneof![
            Just(ReplicaIdentity::Default),
            Just(ReplicaIdentity::Nothing),
            Just(ReplicaIdentity::Full),
            Just(ReplicaIdentity::Index),
        ];
        let column = (any::<bool>(), name(), any::<u32>(), any::<i32>()).prop_map(
            |(part_of_key, name, type_oid, type_modifier)| RelationColumn {
                part_of_key,
                name,
                type_oid: Oid(type_oid),
                type_modifier,
            },
        );
        (
            any::<u32>(),
            name(),
            name(),
            identity,
            proptest::collection::vec(column, 0..5),
        )
            .prop_map(
                |(oid, namespace, name, replica_identity, columns)| Relation {
                    oid: Oid(oid),
                    namespace,
                    name,
                    replica_identity,
                    columns,
                },
            )
    }

    fn message() -> impl Strategy<Value = PgOutputMessage> {
        let lsn = || any::<u64>().prop_map(Lsn);
        let oid = || any::<u32>().prop_map(Oid);
        prop_oneof![
            (lsn(), commit_time_us(), any::<u32>()).prop_map(|(final_lsn, t, xid)| {
                PgOutputMessage::Begin {
                    final_lsn,
                    commit_time_us: t,
                    xid: Xid(xid),
                }
            }),
            (lsn(), lsn(), commit_time_us()).prop_map(|(commit_lsn, end_lsn, t)| {
                PgOutputMessage::Commit {
                    commit_lsn,
                    end_lsn,
                    commit_time_us: t,
                }
            }),
            (lsn(), name())
                .prop_map(|(commit_lsn, name)| PgOutputMessage::Origin { commit_lsn, name }),
            (any::<bool>(), lsn(), name(), bytes()).prop_map(
                |(transactional, lsn, prefix, content)| PgOutputMessage::Message {
                    transactional,
                    lsn,
                    prefix,
                    content,
                }
            ),
            relation().prop_map(PgOutputMessage::Relation),
            (oid(), name(), name()).prop_map(|(oid, namespace, name)| PgOutputMessage::Type {
                oid,
                namespace,
                name
            }),
            (oid(), tuple()).prop_map(|(rel, new)| PgOutputMessage::Insert { rel, new }),
            (oid(), proptest::option::of(old_tuple()), tuple())
                .prop_map(|(rel, old, new)| PgOutputMessage::Update { rel, old, new }),
            (oid(), old_tuple()).prop_map(|(rel, old)| PgOutputMessage::Delete { rel, old }),
            (
                proptest::collection::vec(oid(), 0..5),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(rels, cascade, restart_identity)| {
                    PgOutputMessage::Truncate {
                        rels,
                        cascade,
                        restart_identity,
                    }
                }),
        ]
    }

    /// Concatenates spec fields written out by hand.
    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn malformed(bytes: &[u8]) -> (MessageKind, usize, Problem) {
        match decode(bytes) {
            Err(PgOutputError::Malformed {
                kind,
                offset,
                problem,
            }) => (kind, offset, problem),
            other => panic!("expected a malformed-message error, got {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(msg in message()) {
            prop_assert_eq!(decode(&encode(&msg)), Ok(msg));
        }

        #[test]
        fn random_bytes_error_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }

        /// Random tails after a valid kind byte reach deeper into each message's decoder.
        #[test]
        fn random_bodies_error_without_panicking(
            kind in proptest::sample::select(b"BCOMRYIUDT".to_vec()),
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = vec![kind];
            bytes.extend(body);
            if let Ok(msg) = decode(&bytes) {
                // Strict decoding: whatever is accepted re-encodes to the same bytes.
                prop_assert_eq!(encode(&msg), bytes);
            }
        }

        /// pgoutput messages are prefix-free: a cut-off message never decodes.
        #[test]
        fn every_truncation_of_a_valid_message_is_an_error(msg in message()) {
            let bytes = encode(&msg);
            for len in 0..bytes.len() {
                let err = decode(&bytes[..len]);
                prop_assert!(err.is_err(), "prefix of {} bytes decoded: {:?}", len, err);
            }
        }

        #[test]
        fn a_byte_after_a_valid_message_is_an_error(msg in message(), extra in any::<u8>()) {
            let mut bytes = encode(&msg);
            let end = bytes.len();
            bytes.push(extra);
            let (kind, offset, problem) = malformed(&bytes);
            prop_assert_eq!(kind, msg.kind());
            prop_assert_eq!(offset, end);
            prop_assert_eq!(problem, Problem::TrailingBytes { count: 1 });
        }

        #[test]
        fn lsn_text_round_trips(n in any::<u64>()) {
            prop_assert_eq!(Lsn(n).to_string().parse::<Lsn>(), Ok(Lsn(n)));
        }
    }

    // Hand-written messages, field by field as in the spec.

    #[test]
    fn begin_from_spec_layout() {
        let bytes = cat(&[
            b"B",
            &0x0000_0016_B374_D848_u64.to_be_bytes(), // final LSN
            &1_000_000_i64.to_be_bytes(),             // 2000-01-01 00:00:01 UTC
            &750_u32.to_be_bytes(),                   // xid
        ]);
        assert_eq!(
            decode(&bytes).unwrap(),
            PgOutputMessage::Begin {
                final_lsn: Lsn(0x16_B374_D848),
                commit_time_us: 946_684_801_000_000,
                xid: Xid(750),
            }
        );
    }

    #[test]
    fn commit_from_spec_layout() {
        let bytes = cat(&[
            b"C",
            &[0], // flags
            &0x16B_3748_u64.to_be_bytes(),
            &0x16B_3778_u64.to_be_bytes(),
            &(-1_i64).to_be_bytes(), // one microsecond before 2000-01-01
        ]);
        assert_eq!(
            decode(&bytes).unwrap(),
            PgOutputMessage::Commit {
                commit_lsn: Lsn(0x16B_3748),
                end_lsn: Lsn(0x16B_3778),
                commit_time_us: 946_684_799_999_999,
            }
        );
    }

    #[test]
    fn origin_from_spec_layout() {
        let bytes = cat(&[b"O", &7_u64.to_be_bytes(), b"pg_16390\0"]);
        assert_eq!(
            decode(&bytes).unwrap(),
            PgOutputMessage::Origin {
                commit_lsn: Lsn(7),
                name: "pg_16390".into(),
            }
        );
    }

    #[test]
    fn message_from_spec_layout() {
        let bytes = cat(&[
            b"M",
            &[1], // transactional
            &0x20_u64.to_be_bytes(),
            b"tidesync\0",
            &3_i32.to_be_bytes(),
            b"a\0b",
        ]);
        assert_eq!(
            decode(&bytes).unwrap(),
            PgOutputMessage::Message {
                transactional: true,
                lsn: Lsn(0x20),
                prefix: "tidesync".into(),
                content: b"a\0b".to_vec(),
            }
        );
    }

    #[test]
    fn relation_with_two_columns_from_spec_layout() {
        let bytes = cat(&[
            b"R",
            &16_385_u32.to_be_bytes(),
            b"public\0",
            b"orders\0",
            b"d",
            &2_u16.to_be_bytes(),
            &[1],
            b"id\0",
            &20_u32.to_be_bytes(), // int8
            &(-1_i32).to_be_bytes(),
            &[0],
            b"note\0",
            &1043_u32.to_be_bytes(), // varchar(20)
            &24_i32.to_be_bytes(),
        ]);
        assert_eq!(
            decode(&bytes).unwrap(),
            PgOutputMessage::Relation(Relation {
                oid: Oid(16_385),
                namespace: "public".into(),
                name: "orders".into(),
                replica_identity: ReplicaIdentity::Default,
                columns: vec![
                    RelationColumn {
                        part_of_key: true,
                        name: "id".into(),
                        type_oid: Oid(20),
                        type_modifier: -1,
                    },
                    RelationColumn {
                        part_of_key: false,
                        name: "note".into(),
                        type_oid: Oid(1043),
                        type_modifier: 24,
                    },
                ],
            })
        );
    }

    #[test]
    fn type_from_spec_layout() {
        let bytes = cat(&[b"Y", &16_400_u32.to_be_bytes(), b"public\0", b"mood\0"]);
        assert_eq!(
            decode(&bytes).unwrap(),
            PgOutputMessage::Type {
                oid: Oid(16_400),
                namespace: "public".into(),
                name: "mood".into(),
            }
        );
    }

    #[test]
    fn insert_keeps_unchanged_toast_column_apart_from_null() {
        let bytes = cat(&[
            b"I",
            &16_385_u32.to_be_bytes(),
            b"N",
            &4_u16.to_be_bytes(),
            b"t",
            &2_i32.to_be_bytes(),
            b"42",
            b"n",
            b"u",
            b"b",
            &1_i32.to_be_bytes(),
            &[0xff],
        ]);
        assert_eq!(
            decode(&bytes).unwrap(),
            PgOutputMessage::Insert {
                rel: Oid(16_385),
                new: Tuple(vec![
                    TupleValue::Text(b"42".to_vec()),
                    TupleValue::Null,
                    TupleValue::Unchanged,
                    TupleValue::Binary(vec![0xff]),
                ]),
            }
        );
    }

    #[test]
    fn update_with_key_old_tuple_from_spec_layout() {
        let bytes = cat(&[
            b"U",
            &16_385_u32.to_be_bytes(),
            b"K",
            &2_u16.to_be_bytes(),
            b"t",
            &1_i32.to_be_bytes(),
            b"1",
            b"n",
            b"N",
            &2_u16.to_be_bytes(),
            b"t",
            &1_i32.to_be_bytes(),
            b"2",
            b"u",
        ]);
        assert_eq!(
            decode(&bytes).unwrap(),
            PgOutputMessage::Update {
                rel: Oid(16_385),
                old: Some(OldTuple::Key(Tuple(vec![
                    TupleValue::Text(b"1".to_vec()),
                    TupleValue::Null,
                ]))),
                new: Tuple(vec![TupleValue::Text(b"2".to_vec()), TupleValue::Unchanged]),
            }
        );
    }

    #[test]
    fn update_without_old_tuple_from_spec_layout() {
        let bytes = cat(&[b"U", &9_u32.to_be_bytes(), b"N", &1_u16.to_be_bytes(), b"n"]);
        assert_eq!(
            decode(&bytes).unwrap(),
            PgOutputMessage::Update {
                rel: Oid(9),
                old: None,
                new: Tuple(vec![TupleValue::Null]),
            }
        );
    }

    #[test]
    fn delete_with_full_old_row_from_spec_layout() {
        let bytes = cat(&[
            b"D",
            &9_u32.to_be_bytes(),
            b"O",
            &1_u16.to_be_bytes(),
            b"t",
            &0_i32.to_be_bytes(),
        ]);
        assert_eq!(
            decode(&bytes).unwrap(),
            PgOutputMessage::Delete {
                rel: Oid(9),
                old: OldTuple::Full(Tuple(vec![TupleValue::Text(Vec::new())])),
            }
        );
    }

    #[test]
    fn truncate_with_cascade_and_restart_identity_from_spec_layout() {
        let bytes = cat(&[
            b"T",
            &2_i32.to_be_bytes(),
            &[3],
            &16_385_u32.to_be_bytes(),
            &16_390_u32.to_be_bytes(),
        ]);
        assert_eq!(
            decode(&bytes).unwrap(),
            PgOutputMessage::Truncate {
                rels: vec![Oid(16_385), Oid(16_390)],
                cascade: true,
                restart_identity: true,
            }
        );
    }

    // Errors.

    #[test]
    fn empty_input_is_an_error() {
        assert_eq!(decode(&[]), Err(PgOutputError::Empty));
    }

    #[test]
    fn unknown_kind_names_the_byte() {
        let err = decode(b"Zabc").unwrap_err();
        assert_eq!(err.to_string(), "unknown message kind 0x5a");
    }

    #[test]
    fn streaming_kind_names_the_protocol_version() {
        let err = decode(b"S\0\0\0\x01\x01").unwrap_err();
        assert_eq!(
            err.to_string(),
            "message kind 0x53 (Stream Start) needs pgoutput protocol version 2 or later, but the stream uses version 1"
        );
    }

    #[test]
    fn insert_without_new_tuple_marker_names_what_was_found() {
        let bytes = cat(&[b"I", &1_u32.to_be_bytes(), b"X", &0_u16.to_be_bytes()]);
        assert_eq!(
            decode(&bytes).unwrap_err().to_string(),
            "Insert message at byte 5: tuple marker: expected 'N', found 'X'"
        );
    }

    #[test]
    fn unterminated_string_names_the_field_and_offset() {
        let bytes = cat(&[b"R", &1_u32.to_be_bytes(), b"public\0", b"orders"]);
        assert_eq!(
            decode(&bytes).unwrap_err().to_string(),
            "Relation message at byte 12: relation name: string not NUL-terminated"
        );
    }

    #[test]
    fn invalid_utf8_name_points_at_the_bad_byte() {
        let bytes = cat(&[b"Y", &1_u32.to_be_bytes(), b"ok\0", b"m\xffd\0"]);
        assert_eq!(
            decode(&bytes).unwrap_err().to_string(),
            "Type message at byte 9: type name: invalid UTF-8"
        );
    }

    #[test]
    fn truncated_field_names_needed_and_remaining_bytes() {
        let bytes = cat(&[b"B", &[0, 0, 0]]);
        assert_eq!(
            decode(&bytes).unwrap_err().to_string(),
            "Begin message at byte 1: truncated in final LSN: needs 8 bytes, 3 remain"
        );
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut bytes = encode(&PgOutputMessage::Type {
            oid: Oid(1),
            namespace: String::new(),
            name: "t".into(),
        });
        bytes.extend_from_slice(b"xy");
        assert_eq!(
            decode(&bytes).unwrap_err().to_string(),
            "Type message at byte 8: 2 trailing bytes after the end of the message"
        );
    }

    #[test]
    fn unknown_tuple_value_kind_names_the_column() {
        let bytes = cat(&[
            b"I",
            &1_u32.to_be_bytes(),
            b"N",
            &2_u16.to_be_bytes(),
            b"n",
            b"x",
        ]);
        assert_eq!(
            decode(&bytes).unwrap_err().to_string(),
            "Insert message at byte 9: column 1 kind: expected 'n', 'u', 't' or 'b', found 'x'"
        );
    }

    #[test]
    fn huge_value_length_is_rejected_before_allocating() {
        let bytes = cat(&[
            b"I",
            &1_u32.to_be_bytes(),
            b"N",
            &1_u16.to_be_bytes(),
            b"t",
            &i32::MAX.to_be_bytes(),
            b"abc",
        ]);
        assert_eq!(
            malformed(&bytes),
            (
                MessageKind::Insert,
                13,
                Problem::Truncated {
                    what: Field::column(0, "text"),
                    needed: i32::MAX as usize,
                    remaining: 3,
                }
            )
        );
    }

    #[test]
    fn negative_value_length_is_an_error() {
        let bytes = cat(&[
            b"I",
            &1_u32.to_be_bytes(),
            b"N",
            &1_u16.to_be_bytes(),
            b"t",
            &(-1_i32).to_be_bytes(),
        ]);
        assert_eq!(
            decode(&bytes).unwrap_err().to_string(),
            "Insert message at byte 9: column 0 text: negative length -1"
        );
    }

    #[test]
    fn huge_column_count_is_rejected_before_allocating() {
        let bytes = cat(&[
            b"I",
            &1_u32.to_be_bytes(),
            b"N",
            &u16::MAX.to_be_bytes(),
            b"nn",
        ]);
        assert_eq!(
            decode(&bytes).unwrap_err().to_string(),
            "Insert message at byte 6: tuple column count: 65535 needs at least 65535 bytes, 2 remain"
        );
    }

    #[test]
    fn huge_truncate_count_is_rejected_before_allocating() {
        let bytes = cat(&[b"T", &i32::MAX.to_be_bytes(), &[0], &1_u32.to_be_bytes()]);
        let (_, offset, problem) = malformed(&bytes);
        assert_eq!(offset, 1);
        assert!(
            matches!(problem, Problem::CountExceedsInput { count, .. } if count == i32::MAX as usize)
        );
    }

    #[test]
    fn nonzero_commit_flags_are_an_error() {
        let mut bytes = encode(&PgOutputMessage::Commit {
            commit_lsn: Lsn(1),
            end_lsn: Lsn(2),
            commit_time_us: 0,
        });
        bytes[1] = 2;
        assert_eq!(
            decode(&bytes).unwrap_err().to_string(),
            "Commit message at byte 1: commit flags: expected 0, found 0x02"
        );
    }

    #[test]
    fn unknown_replica_identity_is_an_error() {
        let bytes = cat(&[
            b"R",
            &1_u32.to_be_bytes(),
            b"\0t\0",
            b"x",
            &0_u16.to_be_bytes(),
        ]);
        assert_eq!(
            decode(&bytes).unwrap_err().to_string(),
            "Relation message at byte 8: replica identity: expected 'd', 'n', 'f' or 'i', found 'x'"
        );
    }

    #[test]
    fn unknown_truncate_option_bits_are_an_error() {
        let bytes = cat(&[b"T", &0_i32.to_be_bytes(), &[4]]);
        let (_, offset, problem) = malformed(&bytes);
        assert_eq!(offset, 5);
        assert!(matches!(problem, Problem::UnknownBits { value: 4, .. }));
    }

    #[test]
    fn commit_time_beyond_unix_range_is_an_error() {
        let bytes = cat(&[
            b"B",
            &0_u64.to_be_bytes(),
            &i64::MAX.to_be_bytes(), // PostgreSQL's 'infinity'
            &1_u32.to_be_bytes(),
        ]);
        assert_eq!(
            malformed(&bytes),
            (
                MessageKind::Begin,
                9,
                Problem::TimestampOutOfRange {
                    pg_micros: i64::MAX
                }
            )
        );
    }

    // Lsn and time.

    #[test]
    fn lsn_displays_like_postgres() {
        assert_eq!(Lsn(0x16B_3748).to_string(), "0/16B3748");
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        assert_eq!(Lsn(0).to_string(), "0/0");
    }

    #[test]
    fn lsn_parses_like_postgres() {
        assert_eq!("0/16B3748".parse(), Ok(Lsn(0x16B_3748)));
        assert_eq!("16/b374d848".parse(), Ok(Lsn(0x16_B374_D848)));
        assert_eq!("00000000/00000001".parse(), Ok(Lsn(1)));
    }

    #[test]
    fn malformed_lsn_text_is_rejected() {
        for bad in [
            "",
            "0",
            "/0",
            "0/",
            "0/0/0",
            "123456789/0",
            "0/123456789",
            "+1/0",
            "1/-0",
            " 1/0",
            "1/0 ",
            "g/0",
            "1 /0",
        ] {
            let err = bad.parse::<Lsn>().unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("invalid LSN `{bad}`")),
                "{err}"
            );
        }
    }

    #[test]
    fn lsn_becomes_a_position() {
        assert_eq!(Position::from(Lsn(5)), Position::Lsn(5));
    }

    #[test]
    fn pg_epoch_converts_to_unix_micros() {
        assert_eq!(pg_micros_to_unix_micros(0), Some(946_684_800_000_000));
        assert_eq!(pg_micros_to_unix_micros(-946_684_800_000_000), Some(0));
        assert_eq!(pg_micros_to_unix_micros(i64::MAX), None);
    }
}
