//! The tidesync configuration file: parsing, checking and resolving it into a [`Config`].
//!
//! Loading happens in two stages (see STYLE.md, "Config"):
//!
//! 1. **Parse** the TOML into raw serde structs that mirror the file exactly
//!    (`deny_unknown_fields`, no `flatten`, no internally-tagged enums, so toml's own errors
//!    stay precise: unknown keys, wrong types and missing keys all carry a span). Every value
//!    that is checked later is wrapped in [`toml::Spanned`] so it keeps its byte range.
//! 2. **Resolve** the raw structs into [`Config`]: substitute `${VAR}`, work out each
//!    database's kind from its URL, apply defaults, check ranges, names and references.
//!
//! Every error, from either stage, is a [`ConfigError`] with the file, a 1-based line and
//! column, and the offending source line with a caret under it.
//!
//! Invariants of a resolved [`Config`]: every pipeline's `source` is a key of
//! [`Config::sources`], every one of its `sinks` is a key of [`Config::sinks`] (no duplicates,
//! at least one), at least one pipeline exists, and all numbers are within their documented
//! ranges. Callers may index the maps with a pipeline's names without checking. A sink's
//! renames only name streams that reach it through a pipeline, and give no two of its streams
//! (nor two columns of one stream) the same target name.
//!
//! `${VAR}` substitution happens *after* parsing, on the spanned strings, so an unset variable
//! is reported at the string in the original file rather than somewhere in an expanded copy.
//! Nothing else is expanded: no `~`, and relative paths stay relative (the caller resolves
//! them against the process's current directory).
//!
//! Database kinds and capture modes are closed enums ([`DbKind`], [`Mode`]); each
//! source/sink is resolved by one `match` on (kind, mode). Supporting a new kind later means a
//! new [`SourceSpec`]/[`SinkSpec`] variant and a new match arm; until then the kind parses
//! fine and is rejected with a "not supported yet by this build" error at its URL.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// A commented example configuration covering every key; `tidesync init` writes it.
///
/// It uses `${SOURCE_URL}`, `${TARGET_URL}` and `${STATE_DIR}`, so it runs as-is once those
/// are set.
pub const TEMPLATE: &str = include_str!("config_template.toml");

const DEFAULT_RETENTION_SECS: i64 = 3600;
const DEFAULT_POLL_INTERVAL_MS: i64 = 50;
const POLL_INTERVAL_MS_RANGE: (i64, i64) = (1, 60_000);
const DEFAULT_BATCH_SIZE: i64 = 1000;
const BATCH_SIZE_RANGE: (i64, i64) = (1, 100_000);
const DEFAULT_MAX_LAG: i64 = 100_000;
const MAX_PIPELINE_NAME_LEN: usize = 48;
const DEFAULT_CHUNK_ROWS: i64 = 10_000;
const CHUNK_ROWS_RANGE: (i64, i64) = (1, 1_000_000);
const DEFAULT_LINGER_MS: i64 = 5;
const DEFAULT_DIFF_INTERVAL_SECS: i64 = 60;
const DEFAULT_INCREMENTAL_INTERVAL_SECS: i64 = 10;
const DEFAULT_OVERLAP_SECS: i64 = 300;
const DEFAULT_DELETES_EVERY_SECS: i64 = 3600;
const LINGER_MS_RANGE: (i64, i64) = (0, 10_000);
const DEFAULT_MAX_BODY_BYTES: i64 = 64 << 20;
const MAX_BODY_BYTES_RANGE: (i64, i64) = (1 << 16, 1 << 32);
const MIN_TOKEN_CHARS: usize = 16;

// ---------------------------------------------------------------------------------------------
// Resolved configuration
// ---------------------------------------------------------------------------------------------

/// A validated configuration. See the module docs for its invariants.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from (as given; used in messages).
    pub file: PathBuf,
    pub store: StoreConfig,
    /// Sources by name. Sources no pipeline uses are kept (and not opened by the engine).
    pub sources: BTreeMap<String, SourceConfig>,
    /// Sinks by name. A sink may be used by several pipelines.
    pub sinks: BTreeMap<String, SinkConfig>,
    /// Pipelines in the order they appear in the file.
    pub pipelines: Vec<PipelineConfig>,
    /// `[hub]`: this node serves agents over HTTP (`tidesync serve`).
    pub hub: Option<HubConfig>,
    /// `[agents.NAME]`: the agents a hub serves, by name. Each feeds one pipeline, whose
    /// source is what the agent runs next to its database.
    pub agents: BTreeMap<String, AgentConfig>,
}

/// `[hub]`: the HTTP side of `tidesync serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Where it listens (`listen`, `host:port`).
    pub listen: String,
    /// The most bytes one push may hold once decompressed (`max_body_bytes`).
    pub max_body_bytes: usize,
}

/// `[agents.NAME]`: one agent of a hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub name: String,
    /// Its bearer token, secrets substituted (at least 16 characters).
    pub token: String,
    /// The pipeline it feeds; on the hub that pipeline's source is the agent's pushes.
    pub pipeline: String,
    /// A revoked agent's token is answered 403.
    pub revoked: bool,
    /// `[sources.SOURCE]` of its pipeline as TOML, `${VAR}` substituted by the hub (a literal
    /// `${` written `$${`): the source the agent runs.
    pub source_toml: String,
}

/// `[store]`: where tidesync keeps its change log, current state, cursors and source positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The store's SQLite file; relative paths are relative to the current directory.
    pub path: PathBuf,
    /// How long changes that every sink has passed are kept (`retention_secs`).
    pub retention: Duration,
}

/// `[sources.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub name: String,
    pub spec: SourceSpec,
}

/// What a source is and how changes are captured from it: one variant per (kind, mode) this
/// build supports.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    /// A SQLite database captured by triggers that write into a change table, polled.
    SqliteTrigger {
        path: PathBuf,
        /// Plain identifiers, optionally `schema.table`, no duplicates, at least one.
        tables: Vec<String>,
        poll_interval: Duration,
    },
    /// A PostgreSQL database captured from its write-ahead log (logical replication,
    /// `pgoutput`), after a consistent initial copy.
    PostgresLog {
        /// The connection URL, secrets substituted.
        url: String,
        /// `table` (schema public) or `schema.table`; also the stream names.
        tables: Vec<String>,
        /// An existing publication to use as is; `None`: tidesync manages
        /// `tidesync_<pipeline>`.
        publication: Option<String>,
        /// The replication slot; `None`: `tidesync_<pipeline>`.
        slot: Option<String>,
        /// Rows per chunk of the initial copy.
        chunk_rows: usize,
        /// After the first transaction of a batch arrives, how long to wait for more before
        /// handing the batch on (`linger_ms`).
        linger: Duration,
        /// Whether a pipeline with exactly one sink that can take it copies the tables
        /// straight into that sink on a fresh start (`direct_copy`, default true).
        direct_copy: bool,
    },
    /// A MySQL or MariaDB database captured from its row-based binary log, after a
    /// consistent initial copy.
    MysqlLog {
        /// The connection URL (`mysql://` or `mariadb://`), secrets substituted.
        url: String,
        /// `table` (in the URL's database) or `db.table`; also the stream names.
        tables: Vec<String>,
        /// The replica server id; `None`: derived from the pipeline name.
        server_id: Option<u32>,
        /// Rows per chunk of a copy.
        chunk_rows: usize,
        /// How long to wait for more transactions after the first of a batch.
        linger: Duration,
        /// Whether a fresh start with exactly one PostgreSQL sink copies the tables straight
        /// into it as `COPY` text (`direct_copy`, default true).
        direct_copy: bool,
    },
    /// Any of the SQL databases, read by query and compared with the rows last logged
    /// (`mode = "diff"`, see `tidesync_capture::diff`).
    Diff {
        db: DiffDb,
        /// The streams' names, in order (`tables`).
        tables: Vec<String>,
        /// One per table, in the same order.
        streams: Vec<tidesync_capture::diff::StreamSpec>,
        /// From the start of one run to the start of the next (`interval_secs`).
        interval: Duration,
        /// Rows per page of the comparison (`chunk_rows`).
        chunk_rows: usize,
        /// `mode = "incremental"`: its watermark settings; `None` for `diff`.
        incremental: Option<tidesync_capture::diff::Incremental>,
    },
}

/// The database a `diff` source reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffDb {
    /// The connection URL, secrets substituted.
    Postgres {
        url: String,
    },
    Mysql {
        url: String,
    },
    Sqlite {
        path: PathBuf,
    },
}

impl SourceSpec {
    /// The captured tables, which are also the stream names.
    pub fn tables(&self) -> &[String] {
        match self {
            SourceSpec::SqliteTrigger { tables, .. }
            | SourceSpec::PostgresLog { tables, .. }
            | SourceSpec::MysqlLog { tables, .. }
            | SourceSpec::Diff { tables, .. } => tables,
        }
    }
}

/// `[sinks.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    pub name: String,
    pub spec: SinkSpec,
    /// `[sinks.NAME.tables."STREAM"]`: streams written under another table or column name,
    /// by stream. Streams not listed keep their names. Every key is a table of a source
    /// feeding this sink; no two streams share a target table.
    pub renames: BTreeMap<String, TableRename>,
}

/// `[sinks.NAME.tables."STREAM"]`: where one stream goes in one sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRename {
    /// The target table (`name`; the stream's own name when not set): a plain identifier.
    pub table: String,
    /// Source column -> target column (`columns`); each target a plain identifier, no two
    /// the same. Columns not listed keep their names. Whether the source has them is only
    /// known when the sink opens (see `rename`).
    pub columns: BTreeMap<String, String>,
}

impl TableRename {
    /// The target column `column` is written into.
    pub fn target_column<'a>(&'a self, column: &'a str) -> &'a str {
        self.columns.get(column).map_or(column, String::as_str)
    }
}

/// What a sink is: one variant per kind this build supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkSpec {
    Sqlite {
        path: PathBuf,
        /// Create missing target tables from the source schema.
        create_tables: bool,
    },
    Postgres {
        /// The connection URL (`postgres://user:password@host:port/db?...`), secrets
        /// substituted.
        url: String,
        /// Create missing target tables from the source schema.
        create_tables: bool,
    },
    /// MySQL or MariaDB.
    Mysql {
        /// The connection URL (`mysql://user:password@host:port/db`, or `mariadb://`), secrets
        /// substituted.
        url: String,
        /// Create missing target tables from the source schema.
        create_tables: bool,
    },
    /// A tidesync hub (`http://` or `https://`): batches are pushed to it over HTTP, exactly
    /// once (docs/protocol.md). What `tidesync agent` runs with.
    Hub {
        /// The hub's base URL.
        url: String,
        /// The agent's bearer token, secrets substituted.
        token: String,
        /// A PEM file of certificate authorities trusted for an `https://` hub besides the
        /// public ones (`ca_cert`).
        ca_cert: Option<PathBuf>,
        /// The agent folder's instance name, sent with every request (set by
        /// `tidesync agent`, not a file key; see `tidesync_core::protocol::AGENT_INSTANCE`).
        instance: Option<String>,
    },
}

/// `[pipelines.NAME]`: one source feeding one or more sinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineConfig {
    /// `[a-z0-9_]{1,48}`, starting with a letter.
    pub name: String,
    /// A key of [`Config::sources`].
    pub source: String,
    /// Keys of [`Config::sinks`]; at least one, no duplicates, in file order.
    pub sinks: Vec<String>,
    /// Most changes per batch, `1..=100000`.
    pub batch_size: usize,
    /// Capture pauses while the slowest sink is this many changes behind (at least 1).
    pub max_lag: u64,
    /// Stream source -> sink without the log (`direct_stream`; default: on when the one sink
    /// is PostgreSQL, which is the only case it is allowed).
    pub direct_stream: bool,
}

impl Config {
    /// Reads and resolves the file at `path`, taking `${VAR}` from the process environment.
    ///
    /// A variable whose value is not valid UTF-8 counts as unset.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            message: format!("cannot read config file: {err}"),
            excerpt: None,
        })?;
        Config::from_str(&text, path, &|name| std::env::var(name).ok())
    }

    /// Parses and resolves `text`. `file` is only used in messages and stored in
    /// [`Config::file`]; `env` looks up `${VAR}` values.
    pub fn from_str(
        text: &str,
        file: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let doc = Doc { text, file };
        let raw: RawConfig = toml::from_str(text).map_err(|err| doc.toml_error(&err))?;
        Resolver { doc, env }.config(raw)
    }

    /// The pipeline called `name`, if any.
    pub fn pipeline(&self, name: &str) -> Option<&PipelineConfig> {
        self.pipelines.iter().find(|p| p.name == name)
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A configuration error with its position.
///
/// Displays as `{file}:{line}:{column}: {message}` followed by the offending source line and a
/// caret under the column. When the file could not be read, `line` and `column` are 0 and it
/// displays as `{file}: {message}`.
// Display is written by hand below (thiserror's derive only provides `Error` here).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when there is no position (the file could not be read).
    pub line: usize,
    /// 1-based, counted in characters; 0 when there is no position.
    pub column: usize,
    /// What is wrong and what was expected, without the position.
    pub message: String,
    /// The source line and how many characters to underline, for display.
    excerpt: Option<Excerpt>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Excerpt {
    text: String,
    width: usize,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        if self.line == 0 {
            return write!(f, "{file}: {}", self.message);
        }
        write!(f, "{file}:{}:{}: {}", self.line, self.column, self.message)?;
        if let Some(excerpt) = &self.excerpt {
            let number = self.line.to_string();
            let gutter = " ".repeat(number.len());
            // Keep tabs from the source line in the padding so the caret lines up.
            let pad: String = excerpt
                .text
                .chars()
                .take(self.column.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            write!(
                f,
                "\n{gutter} |\n{number} | {}\n{gutter} | {pad}{}",
                excerpt.text,
                "^".repeat(excerpt.width.max(1))
            )?;
        }
        Ok(())
    }
}

/// The text being parsed, for turning byte spans into positioned errors.
#[derive(Clone, Copy)]
struct Doc<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Doc<'_> {
    /// An error at the byte range `span` of the text.
    fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let text = self.text;
        let start = floor_char_boundary(text, span.start);
        let end = floor_char_boundary(text, span.end.max(start));
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line = text[..start].matches('\n').count() + 1;
        let column = text[line_start..start].chars().count() + 1;
        let line_text = text[line_start..line_end].trim_end_matches('\r');
        let width = text[start..end.min(line_end)]
            .trim_end_matches('\r')
            .chars()
            .count();
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            message: message.into(),
            excerpt: Some(Excerpt {
                text: line_text.to_owned(),
                width,
            }),
        }
    }

    /// Re-renders one of toml's errors in our format. toml's `message()` is only the
    /// description (its "TOML parse error at line .." header and excerpt come from `Display`),
    /// so nothing is doubled.
    fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        // Our integers are read as i64; say what that means to someone writing the file.
        let message = err
            .message()
            .trim_end()
            .replace("expected i64", "expected an integer");
        self.error(err.span().unwrap_or(0..0), message)
    }
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

// ---------------------------------------------------------------------------------------------
// Stage 1: the file as written
// ---------------------------------------------------------------------------------------------

type Names<T> = BTreeMap<Spanned<String>, Spanned<T>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    // Optional here so a missing `[store]` gets our own message at the file start.
    store: Option<RawStore>,
    #[serde(default)]
    sources: Names<RawSource>,
    #[serde(default)]
    sinks: Names<RawSink>,
    #[serde(default)]
    pipelines: Names<RawPipeline>,
    hub: Option<RawHub>,
    #[serde(default)]
    agents: Names<RawAgent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHub {
    listen: Spanned<String>,
    max_body_bytes: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    token: Spanned<String>,
    pipeline: Spanned<String>,
    revoked: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Spanned<String>,
    retention_secs: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    url: Spanned<String>,
    mode: Option<Spanned<String>>,
    tables: Spanned<Vec<Spanned<String>>>,
    poll_interval_ms: Option<Spanned<i64>>,
    publication: Option<Spanned<String>>,
    slot: Option<Spanned<String>>,
    chunk_rows: Option<Spanned<i64>>,
    linger_ms: Option<Spanned<i64>>,
    direct_copy: Option<Spanned<bool>>,
    server_id: Option<Spanned<i64>>,
    interval_secs: Option<Spanned<i64>>,
    overlap_secs: Option<Spanned<i64>>,
    deletes_every_secs: Option<Spanned<i64>>,
    /// Stream (one of `tables`) -> its query and model (`diff` sources).
    #[serde(default)]
    streams: Names<RawStream>,
}

/// `[sources.NAME.streams.STREAM]` of a `diff` source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStream {
    query: Option<Spanned<String>>,
    changed: Option<Spanned<String>>,
    key: Option<Spanned<Vec<Spanned<String>>>>,
    fields: Option<Spanned<Vec<Spanned<RawField>>>>,
}

/// One model field: `{ name = "price", column = "unit_price", cast = "decimal" }` or
/// `{ name = "origin", value = "erp-a" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    name: Spanned<String>,
    column: Option<Spanned<String>>,
    value: Option<toml::Value>,
    cast: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    url: Spanned<String>,
    /// Hub sinks only.
    token: Option<Spanned<String>>,
    /// Hub sinks only.
    ca_cert: Option<Spanned<String>>,
    create_tables: Option<bool>,
    /// Stream -> how it is renamed in this sink.
    #[serde(default)]
    tables: Names<RawRename>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRename {
    name: Option<Spanned<String>>,
    #[serde(default)]
    columns: Names<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    source: Spanned<String>,
    sinks: Spanned<Vec<Spanned<String>>>,
    batch_size: Option<Spanned<i64>>,
    max_lag: Option<Spanned<i64>>,
    direct_stream: Option<Spanned<bool>>,
}

// ---------------------------------------------------------------------------------------------
// Database kinds and capture modes
// ---------------------------------------------------------------------------------------------

/// The kind of database a URL names. Parsing a kind does not mean this build supports it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DbKind {
    Postgres,
    Mysql,
    Sqlite { path: PathBuf },
}

impl DbKind {
    /// `postgres://`/`postgresql://`, `mysql://`/`mariadb://`, `sqlite://PATH`, or a plain
    /// file path (anything without `://`), which means SQLite.
    fn from_url(url: &str) -> Result<DbKind, String> {
        if url.trim().is_empty() {
            return Err("is empty (expected a database URL or a SQLite file path)".to_owned());
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Ok(DbKind::Sqlite {
                path: PathBuf::from(url),
            });
        };
        match scheme.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => Ok(DbKind::Postgres),
            "mysql" | "mariadb" => Ok(DbKind::Mysql),
            "sqlite" if rest.is_empty() => {
                Err("sqlite:// URL has no path (expected sqlite://PATH)".to_owned())
            }
            "sqlite" => Ok(DbKind::Sqlite {
                path: PathBuf::from(rest),
            }),
            _ => Err(format!(
                "unknown URL scheme \"{scheme}\" (expected postgres://, postgresql://, mysql://, \
                 mariadb://, sqlite://PATH or a SQLite file path)"
            )),
        }
    }
}

/// How changes are captured from a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Triggers write each change into a change table.
    Trigger,
    /// The server's replication log (WAL, binlog).
    Log,
    /// Periodic full comparison.
    Diff,
    /// Polling by an increasing column.
    Incremental,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Trigger, Mode::Log, Mode::Diff, Mode::Incremental];

    fn name(self) -> &'static str {
        match self {
            Mode::Trigger => "trigger",
            Mode::Log => "log",
            Mode::Diff => "diff",
            Mode::Incremental => "incremental",
        }
    }

    fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == s)
    }

    /// The mode used when a source does not set one.
    fn default_for(kind: &DbKind) -> Mode {
        match kind {
            DbKind::Sqlite { .. } => Mode::Trigger,
            DbKind::Postgres | DbKind::Mysql => Mode::Log,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 2: resolve and check
// ---------------------------------------------------------------------------------------------

struct Resolver<'a> {
    doc: Doc<'a>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Resolver<'_> {
    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let Some(store) = raw.store else {
            return Err(self
                .doc
                .error(0..0, "missing [store] table (it needs at least `path`)"));
        };
        let store = self.store(store)?;

        let mut sources = BTreeMap::new();
        for (name, raw) in raw.sources {
            let source = self.source(name.get_ref(), raw.into_inner())?;
            sources.insert(source.name.clone(), source);
        }
        let mut sinks = BTreeMap::new();
        // Renames are checked once the pipelines say which streams reach each sink.
        let mut raw_renames = Vec::new();
        for (name, raw) in raw.sinks {
            let mut raw = raw.into_inner();
            raw_renames.push((name.get_ref().clone(), std::mem::take(&mut raw.tables)));
            let sink = self.sink(name.get_ref(), raw)?;
            sinks.insert(sink.name.clone(), sink);
        }

        if raw.pipelines.is_empty() {
            return Err(self.doc.error(0..0, "no [pipelines.NAME] defined"));
        }
        // toml hands tables over sorted by key; the key spans give back the file order.
        let mut raw_pipelines: Vec<_> = raw.pipelines.into_iter().collect();
        raw_pipelines.sort_by_key(|(name, _)| name.span().start);
        let pipelines = raw_pipelines
            .into_iter()
            .map(|(name, raw)| self.pipeline(&name, raw.into_inner(), &sources, &sinks))
            .collect::<Result<Vec<_>, _>>()?;

        for (sink, raw) in raw_renames {
            let mut streams: Vec<&str> = Vec::new();
            for pipeline in pipelines.iter().filter(|p| p.sinks.contains(&sink)) {
                for table in sources[&pipeline.source].spec.tables() {
                    if !streams.contains(&table.as_str()) {
                        streams.push(table);
                    }
                }
            }
            let renames = self.renames(&sink, raw, &streams)?;
            if let Some(config) = sinks.get_mut(&sink) {
                config.renames = renames;
            }
        }

        let hub = raw.hub.map(|raw| self.hub(raw)).transpose()?;
        let agents = self.agents(raw.agents, hub.is_some(), &sources, &pipelines)?;

        Ok(Config {
            file: self.doc.file.to_path_buf(),
            store,
            sources,
            sinks,
            pipelines,
            hub,
            agents,
        })
    }

    fn hub(&self, raw: RawHub) -> Result<HubConfig, ConfigError> {
        let listen = self.string(&raw.listen, "hub.listen")?;
        if listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(self.doc.error(
                raw.listen.span(),
                format!(
                    "hub.listen: \"{listen}\" is not an address and port (expected e.g. \
                     \"0.0.0.0:8642\" or \"127.0.0.1:8642\")"
                ),
            ));
        }
        let max_body_bytes = self.int(
            raw.max_body_bytes.as_ref(),
            DEFAULT_MAX_BODY_BYTES,
            MAX_BODY_BYTES_RANGE.0,
            Some(MAX_BODY_BYTES_RANGE.1),
            "hub.max_body_bytes",
        )?;
        Ok(HubConfig {
            listen,
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
        })
    }

    /// `[agents.NAME]`: each names a pipeline whose source is `diff` or `incremental`, no
    /// two the same pipeline or token, and only with a `[hub]`.
    fn agents(
        &self,
        raw: Names<RawAgent>,
        has_hub: bool,
        sources: &BTreeMap<String, SourceConfig>,
        pipelines: &[PipelineConfig],
    ) -> Result<BTreeMap<String, AgentConfig>, ConfigError> {
        let mut raw: Vec<_> = raw.into_iter().collect();
        raw.sort_by_key(|(name, _)| name.span().start);
        let mut agents: BTreeMap<String, AgentConfig> = BTreeMap::new();
        for (name, entry) in raw {
            let at = format!("agents.{}", toml_key(name.get_ref()));
            if !has_hub {
                return Err(self.doc.error(
                    name.span(),
                    format!("{at}: agents need a [hub] table (its `listen` address)"),
                ));
            }
            if !is_identifier(name.get_ref()) {
                return Err(self.doc.error(
                    name.span(),
                    format!(
                        "{at}: bad agent name (expected letters, digits and _, not starting \
                         with a digit)"
                    ),
                ));
            }
            let entry = entry.into_inner();
            let token = self.string(&entry.token, &format!("{at}.token"))?;
            if token.chars().count() < MIN_TOKEN_CHARS
                || token.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(self.doc.error(
                    entry.token.span(),
                    format!(
                        "{at}.token: must be at least {MIN_TOKEN_CHARS} characters without \
                         spaces (e.g. `openssl rand -hex 24`)"
                    ),
                ));
            }
            if let Some(other) = agents.values().find(|a| a.token == token) {
                return Err(self.doc.error(
                    entry.token.span(),
                    format!("{at}.token: agent {} has the same token", other.name),
                ));
            }
            let pipeline = self.string(&entry.pipeline, &format!("{at}.pipeline"))?;
            let Some(config) = pipelines.iter().find(|p| p.name == pipeline) else {
                let names: Vec<String> = pipelines.iter().map(|p| p.name.clone()).collect();
                return Err(self.doc.error(
                    entry.pipeline.span(),
                    format!(
                        "{at}.pipeline: no pipeline named \"{pipeline}\" ({})",
                        defined(names.iter())
                    ),
                ));
            };
            if let Some(other) = agents.values().find(|a| a.pipeline == pipeline) {
                return Err(self.doc.error(
                    entry.pipeline.span(),
                    format!(
                        "{at}.pipeline: agent {} feeds pipeline {pipeline} already (one agent \
                         per pipeline)",
                        other.name
                    ),
                ));
            }
            if !matches!(sources[&config.source].spec, SourceSpec::Diff { .. }) {
                return Err(self.doc.error(
                    entry.pipeline.span(),
                    format!(
                        "{at}.pipeline: the source of pipeline {pipeline}, {}, does not use \
                         mode \"diff\" or \"incremental\" (an agent reads its database by \
                         query)",
                        config.source
                    ),
                ));
            }
            let source_toml = self.source_toml(&config.source)?;
            agents.insert(
                name.get_ref().clone(),
                AgentConfig {
                    name: name.get_ref().clone(),
                    token,
                    pipeline,
                    revoked: entry.revoked.unwrap_or(false),
                    source_toml,
                },
            );
        }
        Ok(agents)
    }

    /// `[sources.NAME]` as the file wrote it, with every string's `${VAR}` substituted and
    /// each literal `${` in the result written `$${` again, so that resolving the text once
    /// more gives the same values.
    fn source_toml(&self, name: &str) -> Result<String, ConfigError> {
        fn substitute_all(
            value: &mut toml::Value,
            env: &dyn Fn(&str) -> Option<String>,
            at: &str,
        ) -> Result<(), String> {
            match value {
                toml::Value::String(s) => {
                    *s = substitute(s, env, at)?.replace("${", "$${");
                }
                toml::Value::Array(items) => {
                    for item in items {
                        substitute_all(item, env, at)?;
                    }
                }
                toml::Value::Table(table) => {
                    for (key, item) in table.iter_mut() {
                        substitute_all(item, env, &format!("{at}.{}", toml_key(key)))?;
                    }
                }
                _ => {}
            }
            Ok(())
        }
        let at = format!("sources.{}", toml_key(name));
        let doc: toml::Table =
            toml::from_str(self.doc.text).map_err(|err| self.doc.toml_error(&err))?;
        let mut source = doc
            .get("sources")
            .and_then(|s| s.get(name))
            .cloned()
            .ok_or_else(|| self.doc.error(0..0, format!("{at}: not found")))?;
        // Already checked when the source was resolved, so this only fails on a variable
        // that changed in between.
        substitute_all(&mut source, self.env, &at).map_err(|m| self.doc.error(0..0, m))?;
        let mut wrapper = toml::Table::new();
        let mut sources = toml::Table::new();
        sources.insert(name.to_owned(), source);
        wrapper.insert("sources".to_owned(), toml::Value::Table(sources));
        toml::to_string(&wrapper).map_err(|e| {
            self.doc
                .error(0..0, format!("{at}: cannot write it for the agent: {e}"))
        })
    }

    fn store(&self, raw: RawStore) -> Result<StoreConfig, ConfigError> {
        let path = self.string(&raw.path, "store.path")?;
        if path.trim().is_empty() {
            return Err(self.doc.error(raw.path.span(), "store.path: is empty"));
        }
        let retention_secs = self.int(
            raw.retention_secs.as_ref(),
            DEFAULT_RETENTION_SECS,
            0,
            None,
            "store.retention_secs",
        )?;
        Ok(StoreConfig {
            path: PathBuf::from(path),
            retention: Duration::from_secs(retention_secs.unsigned_abs()),
        })
    }

    fn source(&self, name: &str, raw: RawSource) -> Result<SourceConfig, ConfigError> {
        let at = format!("sources.{name}");
        let kind = self.kind(&raw.url, &format!("{at}.url"))?;
        let mode = match &raw.mode {
            None => Mode::default_for(&kind),
            Some(spanned) => {
                let mode = self.string(spanned, &format!("{at}.mode"))?;
                Mode::parse(&mode).ok_or_else(|| {
                    let known: Vec<_> = Mode::ALL.iter().map(|m| m.name()).collect();
                    self.doc.error(
                        spanned.span(),
                        format!(
                            "{at}.mode: unknown mode \"{mode}\" (known: {})",
                            known.join(", ")
                        ),
                    )
                })?
            }
        };
        let tables = self.tables(&raw.tables, &format!("{at}.tables"))?;
        let poll_interval_ms = self.int(
            raw.poll_interval_ms.as_ref(),
            DEFAULT_POLL_INTERVAL_MS,
            POLL_INTERVAL_MS_RANGE.0,
            Some(POLL_INTERVAL_MS_RANGE.1),
            &format!("{at}.poll_interval_ms"),
        )?;
        let poll_interval = Duration::from_millis(poll_interval_ms.unsigned_abs());

        let only_postgres = |key: &str, span: Option<std::ops::Range<usize>>| match span {
            Some(span) if !matches!(kind, DbKind::Postgres) => Err(self.doc.error(
                span,
                format!("{at}.{key}: only PostgreSQL sources have a {key}"),
            )),
            _ => Ok(()),
        };
        only_postgres("publication", raw.publication.as_ref().map(Spanned::span))?;
        only_postgres("slot", raw.slot.as_ref().map(Spanned::span))?;
        let only_log = |key: &str, span: Option<std::ops::Range<usize>>| match span {
            Some(span) if !matches!(kind, DbKind::Postgres | DbKind::Mysql) => Err(self.doc.error(
                span,
                format!("{at}.{key}: only PostgreSQL and MySQL sources have a {key}"),
            )),
            _ => Ok(()),
        };
        if mode != Mode::Incremental {
            for (key, span) in [
                ("overlap_secs", raw.overlap_secs.as_ref().map(Spanned::span)),
                (
                    "deletes_every_secs",
                    raw.deletes_every_secs.as_ref().map(Spanned::span),
                ),
            ] {
                if let Some(span) = span {
                    return Err(self.doc.error(
                        span,
                        format!(
                            "{at}.{key}: only incremental sources (mode = \"incremental\") have \
                             {key}"
                        ),
                    ));
                }
            }
        }
        if !matches!(mode, Mode::Diff | Mode::Incremental) {
            only_log("chunk_rows", raw.chunk_rows.as_ref().map(Spanned::span))?;
            let only_diff = |key: &str, span: Option<std::ops::Range<usize>>| match span {
                Some(span) => Err(self.doc.error(
                    span,
                    format!("{at}.{key}: only diff and incremental sources have {key}"),
                )),
                None => Ok(()),
            };
            only_diff(
                "interval_secs",
                raw.interval_secs.as_ref().map(Spanned::span),
            )?;
            only_diff("streams", raw.streams.keys().next().map(|k| k.span()))?;
        }
        only_log("linger_ms", raw.linger_ms.as_ref().map(Spanned::span))?;
        only_log("direct_copy", raw.direct_copy.as_ref().map(Spanned::span))?;
        if let Some(span) = raw.server_id.as_ref().map(Spanned::span)
            && !matches!(kind, DbKind::Mysql)
        {
            return Err(self.doc.error(
                span,
                format!("{at}.server_id: only MySQL/MariaDB sources have a server_id"),
            ));
        }
        // What every log source shares: it is streamed, not polled, and copies in chunks.
        let log_settings = || -> Result<(usize, Duration, bool), ConfigError> {
            if let Some(p) = &raw.poll_interval_ms {
                return Err(self.doc.error(
                    p.span(),
                    format!(
                        "{at}.poll_interval_ms: a log source is not polled (the server \
                         streams its changes); remove it"
                    ),
                ));
            }
            let chunk_rows = self.int(
                raw.chunk_rows.as_ref(),
                DEFAULT_CHUNK_ROWS,
                CHUNK_ROWS_RANGE.0,
                Some(CHUNK_ROWS_RANGE.1),
                &format!("{at}.chunk_rows"),
            )?;
            let linger_ms = self.int(
                raw.linger_ms.as_ref(),
                DEFAULT_LINGER_MS,
                LINGER_MS_RANGE.0,
                Some(LINGER_MS_RANGE.1),
                &format!("{at}.linger_ms"),
            )?;
            Ok((
                chunk_rows.unsigned_abs() as usize,
                Duration::from_millis(linger_ms.unsigned_abs()),
                raw.direct_copy.as_ref().is_none_or(|d| *d.get_ref()),
            ))
        };
        let spec = match (kind, mode) {
            (DbKind::Sqlite { path }, Mode::Trigger) => SourceSpec::SqliteTrigger {
                path,
                tables,
                poll_interval,
            },
            (DbKind::Postgres, Mode::Log) => {
                let publication = raw
                    .publication
                    .as_ref()
                    .map(|p| self.string(p, &format!("{at}.publication")))
                    .transpose()?;
                if let (Some(p), Some(name)) = (&raw.publication, &publication)
                    && (name.is_empty() || name.len() > 63)
                {
                    return Err(self.doc.error(
                        p.span(),
                        format!("{at}.publication: must be 1 to 63 bytes long"),
                    ));
                }
                let slot = raw
                    .slot
                    .as_ref()
                    .map(|p| self.string(p, &format!("{at}.slot")))
                    .transpose()?;
                if let (Some(p), Some(name)) = (&raw.slot, &slot) {
                    let ok = !name.is_empty()
                        && name.len() <= 63
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                    if !ok {
                        return Err(self.doc.error(
                            p.span(),
                            format!(
                                "{at}.slot: bad slot name \"{name}\" (PostgreSQL allows 1 to 63 \
                                 of a-z, 0-9 and _)"
                            ),
                        ));
                    }
                }
                let (chunk_rows, linger, direct_copy) = log_settings()?;
                SourceSpec::PostgresLog {
                    url: self.string(&raw.url, &format!("{at}.url"))?,
                    tables,
                    publication,
                    slot,
                    chunk_rows,
                    linger,
                    direct_copy,
                }
            }
            (DbKind::Mysql, Mode::Log) => {
                let server_id = match &raw.server_id {
                    None => None,
                    Some(_) => Some(self.int(
                        raw.server_id.as_ref(),
                        0,
                        1,
                        Some(i64::from(u32::MAX)),
                        &format!("{at}.server_id"),
                    )? as u32),
                };
                let (chunk_rows, linger, direct_copy) = log_settings()?;
                SourceSpec::MysqlLog {
                    url: self.string(&raw.url, &format!("{at}.url"))?,
                    tables,
                    server_id,
                    chunk_rows,
                    linger,
                    direct_copy,
                }
            }
            (kind, Mode::Diff) => self.diff_source(&at, kind, &raw, tables, false)?,
            (kind, Mode::Incremental) => self.diff_source(&at, kind, &raw, tables, true)?,
            (kind, mode) => {
                let (name, supported) = match kind {
                    DbKind::Sqlite { .. } => ("sqlite", "trigger, diff, incremental"),
                    DbKind::Postgres => ("postgres", "log, diff, incremental"),
                    DbKind::Mysql => ("mysql", "log, diff, incremental"),
                };
                let span = raw.mode.as_ref().map_or(raw.url.span(), Spanned::span);
                return Err(self.doc.error(
                    span,
                    format!(
                        "{at}.mode: mode \"{}\" is not supported for {name} sources yet \
                         (supported: {supported})",
                        mode.name()
                    ),
                ));
            }
        };
        Ok(SourceConfig {
            name: name.to_owned(),
            spec,
        })
    }

    fn sink(&self, name: &str, raw: RawSink) -> Result<SinkConfig, ConfigError> {
        let at = format!("sinks.{name}");
        let url = self.string(&raw.url, &format!("{at}.url"))?;
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if matches!(scheme.as_deref(), Some("http" | "https")) {
            let Some(token) = &raw.token else {
                return Err(self.doc.error(
                    raw.url.span(),
                    format!("{at}: a hub sink (http:// or https://) needs `token`"),
                ));
            };
            if raw.create_tables.is_some() {
                return Err(self.doc.error(
                    raw.url.span(),
                    format!("{at}.create_tables: a hub creates its own tables (remove it)"),
                ));
            }
            return Ok(SinkConfig {
                name: name.to_owned(),
                spec: SinkSpec::Hub {
                    url: url.trim_end_matches('/').to_owned(),
                    token: self.string(token, &format!("{at}.token"))?,
                    ca_cert: raw
                        .ca_cert
                        .as_ref()
                        .map(|c| self.string(c, &format!("{at}.ca_cert")).map(PathBuf::from))
                        .transpose()?,
                    instance: None,
                },
                renames: BTreeMap::new(),
            });
        }
        for (key, value) in [("token", &raw.token), ("ca_cert", &raw.ca_cert)] {
            if let Some(value) = value {
                return Err(self.doc.error(
                    value.span(),
                    format!("{at}.{key}: only hub sinks (http:// or https://) take a {key}"),
                ));
            }
        }
        let kind = self.kind(&raw.url, &format!("{at}.url"))?;
        let create_tables = raw.create_tables.unwrap_or(true);
        let spec = match kind {
            DbKind::Sqlite { path } => SinkSpec::Sqlite {
                path,
                create_tables,
            },
            DbKind::Postgres => SinkSpec::Postgres {
                url: self.string(&raw.url, &format!("{at}.url"))?,
                create_tables,
            },
            DbKind::Mysql => SinkSpec::Mysql {
                url: self.string(&raw.url, &format!("{at}.url"))?,
                create_tables,
            },
        };
        Ok(SinkConfig {
            name: name.to_owned(),
            spec,
            renames: BTreeMap::new(),
        })
    }

    /// `[sinks.SINK.tables]`, given the streams of the pipelines that use the sink.
    fn renames(
        &self,
        sink: &str,
        raw: Names<RawRename>,
        streams: &[&str],
    ) -> Result<BTreeMap<String, TableRename>, ConfigError> {
        // In file order, so that of two clashing entries the second is the one reported.
        let mut raw: Vec<_> = raw.into_iter().collect();
        raw.sort_by_key(|(stream, _)| stream.span().start);
        let mut renames = BTreeMap::new();
        let mut name_spans = Vec::new();
        for (stream, entry) in raw {
            let at = format!("sinks.{sink}.tables.{}", toml_key(stream.get_ref()));
            if !streams.contains(&stream.get_ref().as_str()) {
                let known = if streams.is_empty() {
                    format!("no pipeline uses sink {sink}")
                } else {
                    format!("its pipelines capture: {}", streams.join(", "))
                };
                return Err(self.doc.error(
                    stream.span(),
                    format!(
                        "{at}: no captured table \"{}\" reaches this sink ({known})",
                        stream.get_ref()
                    ),
                ));
            }
            let entry = entry.into_inner();
            let table = match &entry.name {
                None => stream.get_ref().clone(),
                Some(spanned) => {
                    let table = self.string(spanned, &format!("{at}.name"))?;
                    if !is_identifier(&table) {
                        return Err(self.doc.error(
                            spanned.span(),
                            format!(
                                "{at}.name: bad target table name \"{table}\" (expected a plain \
                                 identifier of letters, digits and _ not starting with a digit; \
                                 sinks write each stream into one table of their database's \
                                 default schema)"
                            ),
                        ));
                    }
                    name_spans.push((stream.get_ref().clone(), spanned.span()));
                    table
                }
            };
            let mut columns: Vec<_> = entry.columns.into_iter().collect();
            columns.sort_by_key(|(from, _)| from.span().start);
            let mut mapped: BTreeMap<String, String> = BTreeMap::new();
            for (from, to) in columns {
                let column_at = format!("{at}.columns.{}", toml_key(from.get_ref()));
                if from.get_ref().is_empty() {
                    return Err(self.doc.error(
                        from.span(),
                        format!("{at}.columns: a source column name is empty"),
                    ));
                }
                let target = self.string(&to, &column_at)?;
                if !is_identifier(&target) {
                    return Err(self.doc.error(
                        to.span(),
                        format!(
                            "{column_at}: bad target column name \"{target}\" (expected a plain \
                             identifier of letters, digits and _ not starting with a digit)"
                        ),
                    ));
                }
                if let Some((other, _)) = mapped.iter().find(|(_, t)| **t == target) {
                    return Err(self.doc.error(
                        to.span(),
                        format!(
                            "{column_at}: column \"{other}\" is already written to \"{target}\" \
                             (two columns cannot share a target column)"
                        ),
                    ));
                }
                mapped.insert(from.into_inner(), target);
            }
            renames.insert(
                stream.into_inner(),
                TableRename {
                    table,
                    columns: mapped,
                },
            );
        }
        // No two streams may land in one table, counting the streams that keep their name.
        let mut taken: BTreeMap<&str, &str> = streams
            .iter()
            .filter(|s| !name_spans.iter().any(|(named, _)| named == *s))
            .map(|s| (*s, *s))
            .collect();
        for (stream, span) in &name_spans {
            let table = renames[stream].table.as_str();
            if let Some(other) = taken.insert(table, stream) {
                return Err(self.doc.error(
                    span.clone(),
                    format!(
                        "sinks.{sink}.tables.{}.name: stream \"{other}\" is already written to \
                         table \"{table}\" (two streams cannot share a target table)",
                        toml_key(stream)
                    ),
                ));
            }
        }
        Ok(renames)
    }

    fn pipeline(
        &self,
        name: &Spanned<String>,
        raw: RawPipeline,
        sources: &BTreeMap<String, SourceConfig>,
        sinks: &BTreeMap<String, SinkConfig>,
    ) -> Result<PipelineConfig, ConfigError> {
        let at = format!("pipelines.{}", name.get_ref());
        if !is_pipeline_name(name.get_ref()) {
            return Err(self.doc.error(
                name.span(),
                format!(
                    "{at}: bad pipeline name \"{}\" (expected 1 to {MAX_PIPELINE_NAME_LEN} of \
                     a-z, 0-9 and _, starting with a letter)",
                    name.get_ref()
                ),
            ));
        }

        let source = self.string(&raw.source, &format!("{at}.source"))?;
        if !sources.contains_key(&source) {
            return Err(self.doc.error(
                raw.source.span(),
                format!(
                    "{at}.source: no source named \"{source}\" ({})",
                    defined(sources.keys())
                ),
            ));
        }

        if raw.sinks.get_ref().is_empty() {
            return Err(self.doc.error(
                raw.sinks.span(),
                format!("{at}.sinks: is empty (expected at least one sink name)"),
            ));
        }
        let mut sink_names = Vec::new();
        for (i, spanned) in raw.sinks.get_ref().iter().enumerate() {
            let sink = self.string(spanned, &format!("{at}.sinks[{i}]"))?;
            if !sinks.contains_key(&sink) {
                return Err(self.doc.error(
                    spanned.span(),
                    format!(
                        "{at}.sinks[{i}]: no sink named \"{sink}\" ({})",
                        defined(sinks.keys())
                    ),
                ));
            }
            if sink_names.contains(&sink) {
                return Err(self.doc.error(
                    spanned.span(),
                    format!("{at}.sinks[{i}]: sink \"{sink}\" is listed twice"),
                ));
            }
            sink_names.push(sink);
        }

        let batch_size = self.int(
            raw.batch_size.as_ref(),
            DEFAULT_BATCH_SIZE,
            BATCH_SIZE_RANGE.0,
            Some(BATCH_SIZE_RANGE.1),
            &format!("{at}.batch_size"),
        )?;
        let max_lag = self.int(
            raw.max_lag.as_ref(),
            DEFAULT_MAX_LAG,
            1,
            None,
            &format!("{at}.max_lag"),
        )?;

        let records_positions =
            |spec: &SinkSpec| matches!(spec, SinkSpec::Postgres { .. } | SinkSpec::Mysql { .. });
        // A diff source compares with the fingerprints the store writes with each batch, so
        // its batches always go through the log.
        let diff_source = matches!(sources[&source].spec, SourceSpec::Diff { .. });
        let one_database_sink = !diff_source
            && matches!(
                sink_names.as_slice(),
                [one] if records_positions(&sinks[one].spec)
            );
        let direct_stream = raw
            .direct_stream
            .as_ref()
            .map_or(one_database_sink, |d| *d.get_ref());
        if let Some(spanned) = raw.direct_stream.as_ref().filter(|_| direct_stream) {
            let problem = match sink_names.as_slice() {
                _ if diff_source => Some(
                    "a diff source compares with what the store logged, so its changes go \
                     through the log"
                        .to_owned(),
                ),
                [one] if records_positions(&sinks[one].spec) => None,
                [one] => Some(format!(
                    "sink \"{one}\" is not PostgreSQL or MySQL; only those sinks record the \
                     source position with each batch"
                )),
                _ => Some(format!(
                    "the pipeline has {} sinks; streaming without the log needs exactly one",
                    sink_names.len()
                )),
            };
            if let Some(problem) = problem {
                return Err(self.doc.error(
                    spanned.span(),
                    format!(
                        "{at}.direct_stream: {problem} (remove direct_stream or set it to false)"
                    ),
                ));
            }
        }

        Ok(PipelineConfig {
            name: name.get_ref().clone(),
            source,
            direct_stream,
            sinks: sink_names,
            // In range (at most 100000), so these conversions cannot truncate.
            batch_size: usize::try_from(batch_size).unwrap_or(usize::MAX),
            max_lag: max_lag.unsigned_abs(),
        })
    }

    /// The database kind named by a URL (after `${VAR}` substitution).
    fn kind(&self, url: &Spanned<String>, at: &str) -> Result<DbKind, ConfigError> {
        let text = self.string(url, at)?;
        DbKind::from_url(&text).map_err(|why| self.doc.error(url.span(), format!("{at}: {why}")))
    }

    /// The `diff` arm of [`Self::source`].
    fn diff_source(
        &self,
        at: &str,
        kind: DbKind,
        raw: &RawSource,
        tables: Vec<String>,
        incremental: bool,
    ) -> Result<SourceSpec, ConfigError> {
        use tidesync_capture::diff::StreamSpec;
        use tidesync_capture::diff::map::{Cast, FieldFrom, FieldSpec};
        for (key, span) in [
            (
                "poll_interval_ms",
                raw.poll_interval_ms.as_ref().map(Spanned::span),
            ),
            ("linger_ms", raw.linger_ms.as_ref().map(Spanned::span)),
            ("direct_copy", raw.direct_copy.as_ref().map(Spanned::span)),
            ("publication", raw.publication.as_ref().map(Spanned::span)),
            ("slot", raw.slot.as_ref().map(Spanned::span)),
            ("server_id", raw.server_id.as_ref().map(Spanned::span)),
        ] {
            if let Some(span) = span {
                return Err(self.doc.error(
                    span,
                    format!(
                        "{at}.{key}: a {} source has no {key} (it runs every interval_secs)",
                        if incremental { "incremental" } else { "diff" }
                    ),
                ));
            }
        }
        let interval = self.int(
            raw.interval_secs.as_ref(),
            if incremental {
                DEFAULT_INCREMENTAL_INTERVAL_SECS
            } else {
                DEFAULT_DIFF_INTERVAL_SECS
            },
            1,
            Some(7 * 86_400),
            &format!("{at}.interval_secs"),
        )?;
        let chunk_rows = self.int(
            raw.chunk_rows.as_ref(),
            DEFAULT_CHUNK_ROWS,
            CHUNK_ROWS_RANGE.0,
            Some(CHUNK_ROWS_RANGE.1),
            &format!("{at}.chunk_rows"),
        )?;
        let db = match kind {
            DbKind::Postgres => DiffDb::Postgres {
                url: self.string(&raw.url, &format!("{at}.url"))?,
            },
            DbKind::Mysql => DiffDb::Mysql {
                url: self.string(&raw.url, &format!("{at}.url"))?,
            },
            DbKind::Sqlite { path } => DiffDb::Sqlite { path },
        };
        for name in raw.streams.keys() {
            if !tables.contains(name.get_ref()) {
                return Err(self.doc.error(
                    name.span(),
                    format!(
                        "{at}.streams.{}: not one of the source's tables ({})",
                        name.get_ref(),
                        tables.join(", ")
                    ),
                ));
            }
        }
        let mut streams = Vec::with_capacity(tables.len());
        for table in &tables {
            let Some((_, raw_stream)) = raw.streams.iter().find(|(k, _)| k.get_ref() == table)
            else {
                if incremental {
                    return Err(self.doc.error(
                        raw.tables.span(),
                        format!(
                            "{at}: table {table} needs a [{at}.streams.{table}] section with \
                             `changed` (the column holding when a row last changed)"
                        ),
                    ));
                }
                streams.push(StreamSpec {
                    name: table.clone(),
                    query: None,
                    key: Vec::new(),
                    fields: Vec::new(),
                    changed: None,
                });
                continue;
            };
            let sat = format!("{at}.streams.{table}");
            let raw_stream = raw_stream.get_ref();
            let query = match &raw_stream.query {
                None => None,
                Some(q) => {
                    let text = self.string(q, &format!("{sat}.query"))?;
                    if text.trim().is_empty() {
                        return Err(self.doc.error(q.span(), format!("{sat}.query: is empty")));
                    }
                    Some(text.trim().trim_end_matches(';').to_owned())
                }
            };
            let mut fields = Vec::new();
            if let Some(raw_fields) = &raw_stream.fields {
                if raw_fields.get_ref().is_empty() {
                    return Err(self.doc.error(
                        raw_fields.span(),
                        format!(
                            "{sat}.fields: is empty (leave it out to keep the query's columns)"
                        ),
                    ));
                }
                for f in raw_fields.get_ref() {
                    let f = f.get_ref();
                    let fat = format!("{sat}.fields");
                    let name = self.string(&f.name, &format!("{fat}.name"))?;
                    if name.is_empty() || fields.iter().any(|o: &FieldSpec| o.name == name) {
                        return Err(self.doc.error(
                            f.name.span(),
                            format!("{fat}: field name \"{name}\" is empty or given twice"),
                        ));
                    }
                    let cast = match &f.cast {
                        None => None,
                        Some(c) => Some(Cast::parse(c.get_ref()).ok_or_else(|| {
                            let known: Vec<_> = Cast::ALL.iter().map(|c| c.name()).collect();
                            self.doc.error(
                                c.span(),
                                format!(
                                    "{fat}.cast: unknown cast \"{}\" (known: {})",
                                    c.get_ref(),
                                    known.join(", ")
                                ),
                            )
                        })?),
                    };
                    let from = match (&f.column, &f.value) {
                        (Some(c), None) => {
                            FieldFrom::Column(self.string(c, &format!("{fat}.column"))?)
                        }
                        (None, Some(v)) => FieldFrom::Value(match v {
                            toml::Value::String(t) => tidesync_core::Value::Text(t.clone()),
                            toml::Value::Integer(i) => tidesync_core::Value::Int(*i),
                            toml::Value::Float(x) => tidesync_core::Value::Float(*x),
                            toml::Value::Boolean(b) => tidesync_core::Value::Bool(*b),
                            _ => {
                                return Err(self.doc.error(
                                    f.name.span(),
                                    format!(
                                        "{fat}: field {name}: a constant value must be a string, \
                                         integer, float or boolean"
                                    ),
                                ));
                            }
                        }),
                        _ => {
                            return Err(self.doc.error(
                                f.name.span(),
                                format!(
                                    "{fat}: field {name} needs exactly one of `column` (a column \
                                     of the query) or `value` (a constant)"
                                ),
                            ));
                        }
                    };
                    fields.push(FieldSpec { name, from, cast });
                }
            }
            let key = match &raw_stream.key {
                None if query.is_some() => {
                    let span = raw_stream
                        .query
                        .as_ref()
                        .map_or(raw.url.span(), Spanned::span);
                    return Err(self.doc.error(
                        span,
                        format!(
                            "{sat}: a stream with a query needs `key` (the fields that identify \
                             a row)"
                        ),
                    ));
                }
                None => Vec::new(),
                Some(k) => {
                    if k.get_ref().is_empty() {
                        return Err(self.doc.error(k.span(), format!("{sat}.key: is empty")));
                    }
                    let mut key = Vec::new();
                    for name in k.get_ref() {
                        let text = self.string(name, &format!("{sat}.key"))?;
                        if !fields.is_empty() && !fields.iter().any(|f| f.name == text) {
                            return Err(self.doc.error(
                                name.span(),
                                format!("{sat}.key: \"{text}\" is not one of the stream's fields"),
                            ));
                        }
                        key.push(text);
                    }
                    key
                }
            };
            let changed = match (&raw_stream.changed, incremental) {
                (None, false) => None,
                (Some(c), false) => {
                    return Err(self.doc.error(
                        c.span(),
                        format!("{sat}.changed: only incremental sources have `changed`"),
                    ));
                }
                (None, true) => {
                    let span = raw
                        .streams
                        .keys()
                        .find(|k| k.get_ref() == table)
                        .map_or(raw.tables.span(), |k| k.span());
                    return Err(self.doc.error(
                        span,
                        format!(
                            "{sat}: an incremental stream needs `changed` (the column holding when \
                             a row last changed)"
                        ),
                    ));
                }
                (Some(c), true) => {
                    let text = self.string(c, &format!("{sat}.changed"))?;
                    if !fields.is_empty() && !fields.iter().any(|f| f.name == text) {
                        return Err(self.doc.error(
                            c.span(),
                            format!("{sat}.changed: \"{text}\" is not one of the stream's fields"),
                        ));
                    }
                    let computed = fields.iter().find(|f| {
                        f.name == text
                            && (f.cast.is_some() || matches!(f.from, FieldFrom::Value(_)))
                    });
                    if computed.is_some() {
                        return Err(self.doc.error(
                            c.span(),
                            format!(
                                "{sat}.changed: field \"{text}\" must be a column of the query \
                                 without a cast (it is compared in the database; cast it in the \
                                 query instead)"
                            ),
                        ));
                    }
                    Some(text)
                }
            };
            streams.push(StreamSpec {
                name: table.clone(),
                query,
                key,
                fields,
                changed,
            });
        }
        let incremental = if incremental {
            let overlap = self.int(
                raw.overlap_secs.as_ref(),
                DEFAULT_OVERLAP_SECS,
                0,
                Some(7 * 86_400),
                &format!("{at}.overlap_secs"),
            )?;
            let full_every = self.int(
                raw.deletes_every_secs.as_ref(),
                DEFAULT_DELETES_EVERY_SECS,
                1,
                Some(366 * 86_400),
                &format!("{at}.deletes_every_secs"),
            )?;
            Some(tidesync_capture::diff::Incremental {
                overlap: Duration::from_secs(overlap.unsigned_abs()),
                full_every: Duration::from_secs(full_every.unsigned_abs()),
            })
        } else {
            None
        };
        Ok(SourceSpec::Diff {
            db,
            tables,
            streams,
            interval: Duration::from_secs(interval.unsigned_abs()),
            chunk_rows: chunk_rows.unsigned_abs() as usize,
            incremental,
        })
    }

    fn tables(
        &self,
        tables: &Spanned<Vec<Spanned<String>>>,
        at: &str,
    ) -> Result<Vec<String>, ConfigError> {
        if tables.get_ref().is_empty() {
            return Err(self.doc.error(
                tables.span(),
                format!("{at}: is empty (expected at least one table name)"),
            ));
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (i, spanned) in tables.get_ref().iter().enumerate() {
            let table = self.string(spanned, &format!("{at}[{i}]"))?;
            if !is_table_name(&table) {
                return Err(self.doc.error(
                    spanned.span(),
                    format!(
                        "{at}[{i}]: bad table name \"{table}\" (expected a plain identifier of \
                         letters, digits and _ not starting with a digit, optionally \
                         schema.table)"
                    ),
                ));
            }
            if !seen.insert(table.clone()) {
                return Err(self.doc.error(
                    spanned.span(),
                    format!("{at}[{i}]: table \"{table}\" is listed twice"),
                ));
            }
            out.push(table);
        }
        Ok(out)
    }

    /// An optional integer with a default, checked against `min..=max` (`max: None` means no
    /// upper bound). Returns a value `>= min`.
    fn int(
        &self,
        value: Option<&Spanned<i64>>,
        default: i64,
        min: i64,
        max: Option<i64>,
        at: &str,
    ) -> Result<i64, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let n = *value.get_ref();
        if n < min || max.is_some_and(|max| n > max) {
            let rule = match max {
                Some(max) => format!("must be between {min} and {max}"),
                None => format!("must be at least {min}"),
            };
            return Err(self
                .doc
                .error(value.span(), format!("{at}: {rule} (got {n})")));
        }
        Ok(n)
    }

    /// A string value with `${VAR}` substituted; errors point at the string.
    fn string(&self, value: &Spanned<String>, at: &str) -> Result<String, ConfigError> {
        substitute(value.get_ref(), self.env, at)
            .map_err(|message| self.doc.error(value.span(), message))
    }
}

/// Replaces `${VAR}` with `env(VAR)`; `$${` stands for a literal `${`. Any other `$` is kept.
/// `at` names the value in messages.
fn substitute(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    at: &str,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                return Err(format!(
                    "unterminated ${{ in {at} (write $${{ for a literal ${{)"
                ));
            };
            let name = &after[..end];
            if !is_env_name(name) {
                return Err(format!(
                    "bad environment variable name \"{name}\" in {at} (expected letters, digits \
                     and _, not starting with a digit; write $${{ for a literal ${{)"
                ));
            }
            let value = env(name)
                .ok_or_else(|| format!("environment variable {name} is not set (used in {at})"))?;
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `key` as written in a TOML dotted key: bare when it may be, else quoted.
pub(crate) fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn is_env_name(s: &str) -> bool {
    is_identifier(s)
}

/// `table` or `schema.table`, each part a plain identifier.
fn is_table_name(s: &str) -> bool {
    match s.split_once('.') {
        Some((schema, table)) => is_identifier(schema) && is_identifier(table),
        None => is_identifier(s),
    }
}

/// `[a-z0-9_]{1,48}`, starting with a letter.
fn is_pipeline_name(s: &str) -> bool {
    s.len() <= MAX_PIPELINE_NAME_LEN
        && s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn defined<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "none defined".to_owned()
    } else {
        format!("defined: {}", names.join(", "))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A valid config; tests derive broken ones from it with `str::replace`.
    /// Line numbers are in the comments of each test.
    const VALID: &str = r#"[store]
path = "${STATE_DIR}/tidesync.db"

[sources.shop]
url = "${SOURCE_URL}"
tables = ["items"]

[sinks.replica]
url = "${TARGET_URL}"

[pipelines.items]
source = "shop"
sinks = ["replica"]
"#;

    fn test_env(name: &str) -> Option<String> {
        match name {
            "SOURCE_URL" => Some("shop.db".to_owned()),
            "TARGET_URL" => Some("sqlite:///data/replica.db".to_owned()),
            "STATE_DIR" => Some("/state".to_owned()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_str(text, Path::new("tidesync.toml"), &test_env)
    }

    fn parse_err(text: &str) -> ConfigError {
        parse(text).unwrap_err()
    }

    /// `VALID` with `from` replaced by `to`; panics if `from` is not there, so tests cannot
    /// silently test the valid file.
    fn with(from: &str, to: &str) -> String {
        assert!(VALID.contains(from), "{from:?} not in VALID");
        VALID.replacen(from, to, 1)
    }

    fn assert_at(err: &ConfigError, line: usize, column: usize) {
        assert_eq!((err.line, err.column), (line, column), "{err}");
    }

    #[test]
    fn valid_config_resolves_with_defaults() {
        let config = parse(VALID).unwrap();
        let expected = Config {
            file: PathBuf::from("tidesync.toml"),
            store: StoreConfig {
                path: PathBuf::from("/state/tidesync.db"),
                retention: Duration::from_secs(3600),
            },
            sources: BTreeMap::from([(
                "shop".to_owned(),
                SourceConfig {
                    name: "shop".to_owned(),
                    spec: SourceSpec::SqliteTrigger {
                        path: PathBuf::from("shop.db"),
                        tables: vec!["items".to_owned()],
                        poll_interval: Duration::from_millis(50),
                    },
                },
            )]),
            sinks: BTreeMap::from([(
                "replica".to_owned(),
                SinkConfig {
                    name: "replica".to_owned(),
                    spec: SinkSpec::Sqlite {
                        path: PathBuf::from("/data/replica.db"),
                        create_tables: true,
                    },
                    renames: BTreeMap::new(),
                },
            )]),
            pipelines: vec![PipelineConfig {
                name: "items".to_owned(),
                source: "shop".to_owned(),
                sinks: vec!["replica".to_owned()],
                batch_size: 1000,
                max_lag: 100_000,
                direct_stream: false,
            }],
            hub: None,
            agents: BTreeMap::new(),
        };
        assert_eq!(config, expected);
    }

    #[test]
    fn every_optional_key_is_read() {
        let text = r#"
[store]
path = "state.db"
retention_secs = 0

[sources.shop]
url = "sqlite://shop.db"
mode = "trigger"
tables = ["items", "main.orders"]
poll_interval_ms = 60000

[sinks.replica]
url = "replica.db"
create_tables = false

[pipelines.items]
source = "shop"
sinks = ["replica"]
batch_size = 100000
max_lag = 1
"#;
        let config = parse(text).unwrap();
        assert_eq!(config.store.path, PathBuf::from("state.db"));
        assert_eq!(config.store.retention, Duration::ZERO);
        assert_eq!(
            config.sources["shop"].spec,
            SourceSpec::SqliteTrigger {
                path: PathBuf::from("shop.db"),
                tables: vec!["items".to_owned(), "main.orders".to_owned()],
                poll_interval: Duration::from_secs(60),
            }
        );
        assert_eq!(
            config.sinks["replica"].spec,
            SinkSpec::Sqlite {
                path: PathBuf::from("replica.db"),
                create_tables: false,
            }
        );
        let pipeline = config.pipeline("items").unwrap();
        assert_eq!((pipeline.batch_size, pipeline.max_lag), (100_000, 1));
    }

    #[test]
    fn pipelines_keep_file_order() {
        let text = format!(
            "{VALID}\n[pipelines.zeta]\nsource = \"shop\"\nsinks = [\"replica\"]\n\n\
             [pipelines.alpha]\nsource = \"shop\"\nsinks = [\"replica\"]\n"
        );
        let config = parse(&text).unwrap();
        let names: Vec<_> = config.pipelines.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["items", "zeta", "alpha"]);
        assert_eq!(config.pipeline("alpha").unwrap().name, "alpha");
        assert!(config.pipeline("nope").is_none());
    }

    #[test]
    fn unknown_key_points_at_the_key_and_lists_expected_keys() {
        // line 6: tabels = ["items"]
        let err = parse_err(&with("tables = [", "tabels = ["));
        assert_at(&err, 6, 1);
        assert!(err.message.contains("`tabels`"), "{err}");
        assert!(
            err.message
                .contains("expected one of `url`, `mode`, `tables`, `poll_interval_ms`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_top_level_table_is_an_error() {
        let err = parse_err(&format!("{VALID}[sourcs.x]\nurl = \"a\"\n"));
        assert_at(&err, 14, 2);
        assert!(err.message.contains("unknown field `sourcs`"), "{err}");
    }

    #[test]
    fn wrong_type_points_at_the_value() {
        // line 14: batch_size = "big"
        let err = parse_err(&format!("{VALID}batch_size = \"big\"\n"));
        assert_at(&err, 14, 14);
        assert_eq!(
            err.message,
            "invalid type: string \"big\", expected an integer"
        );
    }

    #[test]
    fn missing_required_key_points_at_its_table() {
        // line 8: [sinks.replica], its url removed
        let err = parse_err(&with("url = \"${TARGET_URL}\"\n", ""));
        assert_at(&err, 8, 1);
        assert_eq!(err.message, "missing field `url`");
    }

    #[test]
    fn syntax_error_has_a_position() {
        // line 12: source = "shop  (unterminated)
        let err = parse_err(&with("source = \"shop\"", "source = \"shop"));
        assert_eq!(err.line, 12, "{err}");
        assert!(!err.message.contains("TOML parse error"), "{err}");
    }

    #[test]
    fn missing_store_is_an_error_at_file_start() {
        let text = with("[store]\npath = \"${STATE_DIR}/tidesync.db\"\n", "");
        let err = parse_err(&text);
        assert_at(&err, 1, 1);
        assert!(err.message.contains("missing [store]"), "{err}");
    }

    #[test]
    fn no_pipelines_is_an_error_at_file_start() {
        let text = with(
            "[pipelines.items]\nsource = \"shop\"\nsinks = [\"replica\"]\n",
            "",
        );
        let err = parse_err(&text);
        assert_at(&err, 1, 1);
        assert_eq!(err.message, "no [pipelines.NAME] defined");
    }

    #[test]
    fn unset_env_var_points_at_the_string() {
        let text = with("${SOURCE_URL}", "${SHOP_URL}");
        let err = parse_err(&text);
        // line 5: url = "${SHOP_URL}", the string starts at column 7
        assert_at(&err, 5, 7);
        assert_eq!(
            err.message,
            "environment variable SHOP_URL is not set (used in sources.shop.url)"
        );
    }

    #[test]
    fn env_var_inside_a_longer_string_is_substituted() {
        let config = parse(VALID).unwrap();
        assert_eq!(config.store.path, PathBuf::from("/state/tidesync.db"));
    }

    #[test]
    fn double_dollar_brace_is_a_literal_dollar_brace() {
        let config = parse(&with("${STATE_DIR}/tidesync.db", "$${STATE_DIR}/a$b$$.db")).unwrap();
        assert_eq!(config.store.path, PathBuf::from("${STATE_DIR}/a$b$$.db"));
    }

    #[test]
    fn unterminated_env_reference_is_an_error() {
        let err = parse_err(&with("${STATE_DIR}/tidesync.db", "${STATE_DIR/tidesync.db"));
        assert_at(&err, 2, 8);
        assert!(
            err.message.contains("unterminated ${ in store.path"),
            "{err}"
        );
    }

    #[test]
    fn empty_env_reference_is_an_error() {
        let err = parse_err(&with("${STATE_DIR}/tidesync.db", "${}/tidesync.db"));
        assert_at(&err, 2, 8);
        assert!(
            err.message.contains("bad environment variable name"),
            "{err}"
        );
    }

    #[test]
    fn unknown_source_reference_lists_defined_sources() {
        // line 12: source = "shopp"
        let err = parse_err(&with("source = \"shop\"", "source = \"shopp\""));
        assert_at(&err, 12, 10);
        assert_eq!(
            err.message,
            "pipelines.items.source: no source named \"shopp\" (defined: shop)"
        );
    }

    #[test]
    fn unknown_sink_reference_points_at_the_list_item() {
        // line 13: sinks = ["replica", "backup"]
        let err = parse_err(&with("[\"replica\"]", "[\"replica\", \"backup\"]"));
        assert_at(&err, 13, 21);
        assert_eq!(
            err.message,
            "pipelines.items.sinks[1]: no sink named \"backup\" (defined: replica)"
        );
    }

    #[test]
    fn duplicate_sink_in_a_pipeline_is_an_error() {
        let err = parse_err(&with("[\"replica\"]", "[\"replica\", \"replica\"]"));
        assert_at(&err, 13, 21);
        assert!(err.message.contains("listed twice"), "{err}");
    }

    #[test]
    fn empty_sink_list_is_an_error() {
        let err = parse_err(&with("[\"replica\"]", "[]"));
        assert_at(&err, 13, 9);
        assert!(
            err.message.contains("pipelines.items.sinks: is empty"),
            "{err}"
        );
    }

    #[test]
    fn sink_shared_by_two_pipelines_is_allowed() {
        let text =
            format!("{VALID}\n[pipelines.again]\nsource = \"shop\"\nsinks = [\"replica\"]\n");
        assert_eq!(parse(&text).unwrap().pipelines.len(), 2);
    }

    #[test]
    fn batch_size_out_of_range_names_the_range() {
        let err = parse_err(&format!("{VALID}batch_size = 0\n"));
        assert_at(&err, 14, 14);
        assert_eq!(
            err.message,
            "pipelines.items.batch_size: must be between 1 and 100000 (got 0)"
        );
        let err = parse_err(&format!("{VALID}batch_size = 100001\n"));
        assert!(err.message.contains("(got 100001)"), "{err}");
    }

    #[test]
    fn poll_interval_out_of_range_names_the_range() {
        let err = parse_err(&with(
            "tables = [\"items\"]",
            "tables = [\"items\"]\npoll_interval_ms = 0",
        ));
        assert_at(&err, 7, 20);
        assert_eq!(
            err.message,
            "sources.shop.poll_interval_ms: must be between 1 and 60000 (got 0)"
        );
    }

    #[test]
    fn negative_retention_is_an_error() {
        let err = parse_err(&with("tidesync.db\"", "tidesync.db\"\nretention_secs = -1"));
        assert_at(&err, 3, 18);
        assert_eq!(
            err.message,
            "store.retention_secs: must be at least 0 (got -1)"
        );
    }

    #[test]
    fn direct_stream_needs_exactly_one_postgres_sink() {
        let err = parse_err(&format!("{VALID}direct_stream = true\n"));
        assert_at(&err, 14, 17);
        assert_eq!(
            err.message,
            "pipelines.items.direct_stream: sink \"replica\" is not PostgreSQL or MySQL; only those \
             sinks record the source position with each batch (remove direct_stream or set it to false)"
        );
        let postgres = VALID.replace("${TARGET_URL}", "postgres://u@localhost/shop");
        let two = postgres.replace(
            "sinks = [\"replica\"]",
            "sinks = [\"replica\", \"other\"]\ndirect_stream = true",
        ) + "\n[sinks.other]\nurl = \"postgres://u@localhost/other\"\n";
        let err = parse_err(&two);
        assert_eq!(
            err.message,
            "pipelines.items.direct_stream: the pipeline has 2 sinks; streaming without the log \
             needs exactly one (remove direct_stream or set it to false)"
        );
        let config = parse(&format!("{postgres}direct_stream = true\n")).unwrap();
        assert!(config.pipeline("items").unwrap().direct_stream);
        // On by default with one PostgreSQL sink, off with anything else.
        let config = parse(&postgres).unwrap();
        assert!(config.pipeline("items").unwrap().direct_stream);
        let config = parse(&format!("{postgres}direct_stream = false\n")).unwrap();
        assert!(!config.pipeline("items").unwrap().direct_stream);
        assert!(
            !parse(VALID)
                .unwrap()
                .pipeline("items")
                .unwrap()
                .direct_stream
        );
    }

    #[test]
    fn zero_max_lag_is_an_error() {
        let err = parse_err(&format!("{VALID}max_lag = 0\n"));
        assert_at(&err, 14, 11);
        assert_eq!(
            err.message,
            "pipelines.items.max_lag: must be at least 1 (got 0)"
        );
    }

    #[test]
    fn empty_table_list_is_an_error() {
        let err = parse_err(&with("tables = [\"items\"]", "tables = []"));
        assert_at(&err, 6, 10);
        assert!(
            err.message.contains("sources.shop.tables: is empty"),
            "{err}"
        );
    }

    #[test]
    fn bad_table_name_points_at_the_name() {
        let err = parse_err(&with("[\"items\"]", "[\"items\", \"drop table;\"]"));
        assert_at(&err, 6, 20);
        assert!(
            err.message
                .starts_with("sources.shop.tables[1]: bad table name \"drop table;\""),
            "{err}"
        );
    }

    #[test]
    fn table_name_may_not_start_with_a_digit_or_have_two_dots() {
        for bad in ["1items", "a.b.c", ".items", "items."] {
            let err = parse_err(&with("[\"items\"]", &format!("[\"{bad}\"]")));
            assert!(err.message.contains("bad table name"), "{bad}: {err}");
        }
    }

    #[test]
    fn duplicate_table_is_an_error() {
        let err = parse_err(&with("[\"items\"]", "[\"items\", \"items\"]"));
        assert_at(&err, 6, 20);
        assert!(err.message.contains("listed twice"), "{err}");
    }

    #[test]
    fn bad_pipeline_name_points_at_the_name() {
        for (bad, column) in [("Items", 12), ("1items", 12), ("\"items-x\"", 12)] {
            let err = parse_err(&with("[pipelines.items]", &format!("[pipelines.{bad}]")));
            assert_at(&err, 11, column);
            assert!(err.message.contains("bad pipeline name"), "{bad}: {err}");
        }
        let long = "a".repeat(49);
        let err = parse_err(&with("[pipelines.items]", &format!("[pipelines.{long}]")));
        assert!(err.message.contains("bad pipeline name"), "{err}");
        let longest = "a".repeat(48);
        assert!(
            parse(&with(
                "[pipelines.items]",
                &format!("[pipelines.{longest}]")
            ))
            .is_ok()
        );
    }

    #[test]
    fn postgres_source_defaults_to_log_mode() {
        let config = parse(&with("${SOURCE_URL}", "postgres://u@localhost/shop")).unwrap();
        assert_eq!(
            config.sources["shop"].spec,
            SourceSpec::PostgresLog {
                url: "postgres://u@localhost/shop".into(),
                tables: vec!["items".into()],
                publication: None,
                slot: None,
                chunk_rows: 10_000,
                linger: Duration::from_millis(5),
                direct_copy: true,
            }
        );
        let text = with(
            "tables = [\"items\"]",
            "tables = [\"sales.items\"]\npublication = \"pub_all\"\nslot = \"s_1\"\nchunk_rows = 500\n\
             linger_ms = 0\ndirect_copy = false",
        )
        .replacen("${SOURCE_URL}", "postgresql://u@localhost/shop", 1);
        match parse(&text).unwrap().sources["shop"].spec.clone() {
            SourceSpec::PostgresLog {
                tables,
                publication,
                slot,
                chunk_rows,
                linger,
                direct_copy,
                ..
            } => {
                assert!(!direct_copy);
                assert_eq!(tables, vec!["sales.items".to_owned()]);
                assert_eq!(publication.as_deref(), Some("pub_all"));
                assert_eq!(slot.as_deref(), Some("s_1"));
                assert_eq!(chunk_rows, 500);
                assert_eq!(linger, Duration::ZERO);
            }
            other => panic!("not a postgres source: {other:?}"),
        }
    }

    #[test]
    fn postgres_source_options_are_checked() {
        let pg = with("${SOURCE_URL}", "postgres://u@localhost/shop");
        let err = parse_err(&pg.replacen(
            "tables = [\"items\"]",
            "tables = [\"items\"]\nmode = \"trigger\"",
            1,
        ));
        assert_at(&err, 7, 8);
        assert!(
            err.message
                .contains("mode \"trigger\" is not supported for postgres sources"),
            "{err}"
        );
        let err = parse_err(&pg.replacen(
            "tables = [\"items\"]",
            "tables = [\"items\"]\nslot = \"Bad-Slot\"",
            1,
        ));
        assert_at(&err, 7, 8);
        assert!(
            err.message.contains("sources.shop.slot: bad slot name"),
            "{err}"
        );
        let err = parse_err(&pg.replacen(
            "tables = [\"items\"]",
            "tables = [\"items\"]\npoll_interval_ms = 5",
            1,
        ));
        assert!(err.message.contains("a log source is not polled"), "{err}");
        let err = parse_err(&pg.replacen(
            "tables = [\"items\"]",
            "tables = [\"items\"]\nchunk_rows = 0",
            1,
        ));
        assert!(
            err.message
                .contains("sources.shop.chunk_rows: must be between 1 and 1000000"),
            "{err}"
        );
        // A SQLite source has no slot.
        let err = parse_err(&with(
            "tables = [\"items\"]",
            "tables = [\"items\"]\nslot = \"s\"",
        ));
        assert!(
            err.message.contains("only PostgreSQL sources have a slot"),
            "{err}"
        );
    }

    #[test]
    fn linger_ms_is_read_and_range_checked() {
        let pg = with("${SOURCE_URL}", "postgres://u@localhost/shop");
        let linger = |text: &str| match parse(text).unwrap().sources["shop"].spec.clone() {
            SourceSpec::PostgresLog { linger, .. } => linger,
            other => panic!("not a postgres source: {other:?}"),
        };
        let set = |value: &str| {
            pg.replacen(
                "tables = [\"items\"]",
                &format!("tables = [\"items\"]\nlinger_ms = {value}"),
                1,
            )
        };
        assert_eq!(linger(&pg), Duration::from_millis(5));
        assert_eq!(linger(&set("10000")), Duration::from_secs(10));
        for bad in ["10001", "-1"] {
            let err = parse_err(&set(bad));
            // line 7: linger_ms = VALUE
            assert_at(&err, 7, 13);
            assert_eq!(
                err.message,
                format!("sources.shop.linger_ms: must be between 0 and 10000 (got {bad})")
            );
        }
        let err = parse_err(&with(
            "tables = [\"items\"]",
            "tables = [\"items\"]\nlinger_ms = 5",
        ));
        assert!(
            err.message.contains(
                "sources.shop.linger_ms: only PostgreSQL and MySQL sources have a linger_ms"
            ),
            "{err}"
        );
    }

    /// A PostgreSQL source of two tables into one sink that renames one of them.
    const RENAMES: &str = r#"[store]
path = "state.db"

[sources.erp]
url = "postgres://u@localhost/erp"
tables = ["items", "sales.orders"]

[sinks.target]
url = "postgres://u@localhost/shop"

[sinks.target.tables."sales.orders"]
name = "orders"
columns = { cust = "customer_id", "Order Date" = "ordered_at" }

[pipelines.erp]
source = "erp"
sinks = ["target"]
"#;

    fn renames_with(from: &str, to: &str) -> String {
        assert!(RENAMES.contains(from), "{from:?} not in RENAMES");
        RENAMES.replacen(from, to, 1)
    }

    #[test]
    fn renames_are_resolved_per_sink() {
        let config = parse(RENAMES).unwrap();
        let sink = &config.sinks["target"];
        assert_eq!(
            sink.renames,
            BTreeMap::from([(
                "sales.orders".to_owned(),
                TableRename {
                    table: "orders".to_owned(),
                    columns: BTreeMap::from([
                        ("Order Date".to_owned(), "ordered_at".to_owned()),
                        ("cust".to_owned(), "customer_id".to_owned()),
                    ]),
                },
            )])
        );
        let rename = &sink.renames["sales.orders"];
        assert_eq!(rename.target_column("cust"), "customer_id");
        assert_eq!(rename.target_column("total"), "total");
        // Columns only, the table keeps its name.
        let config = parse(&renames_with("name = \"orders\"\n", "")).unwrap();
        assert_eq!(
            config.sinks["target"].renames["sales.orders"].table,
            "sales.orders"
        );
    }

    #[test]
    fn rename_of_a_stream_no_pipeline_brings_is_an_error() {
        // line 11: [sinks.target.tables."sales.ordres"]
        let err = parse_err(&renames_with(
            "tables.\"sales.orders\"]",
            "tables.\"sales.ordres\"]",
        ));
        assert_at(&err, 11, 22);
        assert_eq!(
            err.message,
            "sinks.target.tables.\"sales.ordres\": no captured table \"sales.ordres\" reaches \
             this sink (its pipelines capture: items, sales.orders)"
        );
        let text = format!(
            "{RENAMES}\n[sinks.spare]\nurl = \"spare.db\"\n\n[sinks.spare.tables.items]\nname = \"x\"\n"
        );
        let err = parse_err(&text);
        assert_eq!(
            err.message,
            "sinks.spare.tables.items: no captured table \"items\" reaches this sink (no pipeline \
             uses sink spare)"
        );
    }

    #[test]
    fn two_streams_into_one_target_table_is_an_error() {
        // Into the table another stream keeps its own name for.
        let err = parse_err(&renames_with("name = \"orders\"", "name = \"items\""));
        assert_at(&err, 12, 8);
        assert_eq!(
            err.message,
            "sinks.target.tables.\"sales.orders\".name: stream \"items\" is already written to \
             table \"items\" (two streams cannot share a target table)"
        );
        // Two renames to one name: the second in the file is reported.
        let err = parse_err(&renames_with(
            "\n[pipelines.erp]",
            "\n[sinks.target.tables.items]\nname = \"orders\"\n\n[pipelines.erp]",
        ));
        assert_at(&err, 16, 8);
        assert!(
            err.message.starts_with(
                "sinks.target.tables.items.name: stream \"sales.orders\" is already written to \
                 table \"orders\""
            ),
            "{err}"
        );
    }

    #[test]
    fn two_columns_into_one_target_column_is_an_error() {
        let err = parse_err(&renames_with("\"ordered_at\"", "\"customer_id\""));
        assert_at(&err, 13, 50);
        assert_eq!(
            err.message,
            "sinks.target.tables.\"sales.orders\".columns.\"Order Date\": column \"cust\" is \
             already written to \"customer_id\" (two columns cannot share a target column)"
        );
    }

    #[test]
    fn bad_target_names_are_errors() {
        for bad in ["", "archive.orders", "1orders", "or ders"] {
            let err = parse_err(&renames_with("\"orders\"", &format!("\"{bad}\"")));
            assert_at(&err, 12, 8);
            assert!(
                err.message.starts_with(&format!(
                    "sinks.target.tables.\"sales.orders\".name: bad target table name \"{bad}\""
                )),
                "{bad}: {err}"
            );
        }
        for bad in ["", "customer id", "customer-id"] {
            let err = parse_err(&renames_with("\"customer_id\"", &format!("\"{bad}\"")));
            assert_at(&err, 13, 20);
            assert!(
                err.message.starts_with(&format!(
                    "sinks.target.tables.\"sales.orders\".columns.cust: bad target column name \
                     \"{bad}\""
                )),
                "{bad}: {err}"
            );
        }
        let err = parse_err(&renames_with("cust = ", "\"\" = "));
        assert_at(&err, 13, 13);
        assert_eq!(
            err.message,
            "sinks.target.tables.\"sales.orders\".columns: a source column name is empty"
        );
        let err = parse_err(&renames_with("name = ", "nmae = "));
        assert_at(&err, 12, 1);
        assert!(err.message.contains("unknown field `nmae`"), "{err}");
    }

    #[test]
    fn mysql_sources_capture_the_binlog() {
        let config = parse(&with("${SOURCE_URL}", "mysql://u@localhost/shop")).unwrap();
        assert_eq!(
            config.sources["shop"].spec,
            SourceSpec::MysqlLog {
                url: "mysql://u@localhost/shop".into(),
                tables: vec!["items".into()],
                server_id: None,
                chunk_rows: 10_000,
                linger: Duration::from_millis(5),
                direct_copy: true,
            }
        );
        let text = with(
            "tables = [\"items\"]",
            "tables = [\"erp.items\"]\nserver_id = 4242\nchunk_rows = 500\nlinger_ms = 0\n\
             direct_copy = false",
        )
        .replacen("${SOURCE_URL}", "mariadb://u@localhost/shop", 1);
        match parse(&text).unwrap().sources["shop"].spec.clone() {
            SourceSpec::MysqlLog {
                tables,
                server_id,
                chunk_rows,
                linger,
                direct_copy,
                ..
            } => {
                assert!(!direct_copy);
                assert_eq!(tables, vec!["erp.items".to_owned()]);
                assert_eq!(server_id, Some(4242));
                assert_eq!(chunk_rows, 500);
                assert_eq!(linger, Duration::ZERO);
            }
            other => panic!("not a mysql source: {other:?}"),
        }
    }

    #[test]
    fn mysql_source_options_are_checked() {
        let my = with("${SOURCE_URL}", "mysql://u@localhost/shop");
        let err = parse_err(&my.replacen(
            "tables = [\"items\"]",
            "tables = [\"items\"]\nserver_id = 0",
            1,
        ));
        assert!(err.message.starts_with("sources.shop.server_id:"), "{err}");
        let err = parse_err(&my.replacen(
            "tables = [\"items\"]",
            "tables = [\"items\"]\nslot = \"s\"",
            1,
        ));
        assert_eq!(
            err.message,
            "sources.shop.slot: only PostgreSQL sources have a slot"
        );
        let err = parse_err(&my.replacen(
            "tables = [\"items\"]",
            "tables = [\"items\"]\nmode = \"trigger\"",
            1,
        ));
        assert!(
            err.message
                .contains("mode \"trigger\" is not supported for mysql sources"),
            "{err}"
        );
        let pg = with("${SOURCE_URL}", "postgres://u@localhost/shop");
        let err = parse_err(&pg.replacen(
            "tables = [\"items\"]",
            "tables = [\"items\"]\nserver_id = 7",
            1,
        ));
        assert_eq!(
            err.message,
            "sources.shop.server_id: only MySQL/MariaDB sources have a server_id"
        );
    }

    #[test]
    fn mysql_and_mariadb_sinks_keep_their_urls_and_stream_directly() {
        for url in ["mariadb://app@localhost/shop", "mysql://app@db:3306/shop"] {
            let config = parse(&with("${TARGET_URL}", url)).unwrap();
            assert_eq!(
                config.sinks["replica"].spec,
                SinkSpec::Mysql {
                    url: url.to_owned(),
                    create_tables: true
                }
            );
            assert!(config.pipeline("items").unwrap().direct_stream);
        }
        let config = parse(&format!(
            "{}direct_stream = false\n",
            with("${TARGET_URL}", "mysql://app@db/shop")
        ))
        .unwrap();
        assert!(!config.pipeline("items").unwrap().direct_stream);
    }

    #[test]
    fn postgres_sink_keeps_its_substituted_url() {
        let text = with("${TARGET_URL}", "postgres://app:${PGPASS}@db:5432/shop");
        let env = |name: &str| match name {
            "PGPASS" => Some("s3cret".to_owned()),
            other => test_env(other),
        };
        let config = Config::from_str(&text, Path::new("t.toml"), &env).unwrap();
        assert_eq!(
            config.sinks["replica"].spec,
            SinkSpec::Postgres {
                url: "postgres://app:s3cret@db:5432/shop".into(),
                create_tables: true,
            }
        );
    }

    #[test]
    fn unsupported_mode_for_sqlite_points_at_the_mode() {
        // line 6: mode = "log"
        let err = parse_err(&with("tables = ", "mode = \"log\"\ntables = "));
        assert_at(&err, 6, 8);
        assert_eq!(
            err.message,
            "sources.shop.mode: mode \"log\" is not supported for sqlite sources yet \
             (supported: trigger, diff, incremental)"
        );
    }

    /// A hub with one agent feeding a `diff` pipeline.
    const HUB: &str = r#"[store]
path = "/state/hub.db"

[hub]
listen = "127.0.0.1:8642"

[sources.erp]
url = "mysql://reader:pa$ss@erp/erp"
mode = "diff"
tables = ["items"]

[sinks.shop]
url = "shop.db"

[pipelines.erp_shop]
source = "erp"
sinks = ["shop"]

[agents.m1]
token = "0123456789abcdef"
pipeline = "erp_shop"
"#;

    #[test]
    fn a_hub_serves_agents_the_source_they_run() {
        let config = parse(HUB).unwrap();
        let hub = config.hub.as_ref().unwrap();
        assert_eq!(hub.listen, "127.0.0.1:8642");
        assert_eq!(hub.max_body_bytes, 64 << 20);
        let agent = &config.agents["m1"];
        assert_eq!(agent.pipeline, "erp_shop");
        assert!(!agent.revoked);
        // The agent's source text resolves to the same source (a literal `$` kept as is).
        let agent_text = format!(
            "[store]\npath = \"/a/store.db\"\n{}\n[sinks.hub]\nurl = \"http://hub:1\"\n\
             token = \"t\"\n[pipelines.erp_shop]\nsource = \"erp\"\nsinks = [\"hub\"]\n",
            agent.source_toml
        );
        let agent_config = parse(&agent_text).unwrap();
        assert_eq!(agent_config.sources["erp"], config.sources["erp"]);
        assert_eq!(
            agent_config.sinks["hub"].spec,
            SinkSpec::Hub {
                url: "http://hub:1".to_owned(),
                token: "t".to_owned(),
                ca_cert: None,
                instance: None,
            }
        );
    }

    #[test]
    fn a_substituted_dollar_brace_survives_the_agents_text() {
        let text = HUB.replace("pa$ss", "${SECRET}");
        let env = |name: &str| (name == "SECRET").then(|| "p${w}d".to_owned());
        let config = Config::from_str(&text, Path::new("hub.toml"), &env).unwrap();
        let source_toml = &config.agents["m1"].source_toml;
        assert!(source_toml.contains("p$${w}d"), "{source_toml}");
        let agent = format!(
            "[store]\npath = \"/a/s.db\"\n{source_toml}\n[sinks.hub]\nurl = \"http://h\"\n\
             token = \"t\"\n[pipelines.erp_shop]\nsource = \"erp\"\nsinks = [\"hub\"]\n"
        );
        let agent = Config::from_str(&agent, Path::new("agent"), &|_| None).unwrap();
        assert_eq!(agent.sources["erp"], config.sources["erp"]);
    }

    #[test]
    fn hub_and_agent_mistakes_are_named() {
        let cases: [(String, &str); 8] = [
            (
                HUB.replace("[hub]\nlisten = \"127.0.0.1:8642\"\n", ""),
                "agents.m1: agents need a [hub] table",
            ),
            (
                HUB.replace("listen = \"127.0.0.1:8642\"", "listen = \"localhost\""),
                "hub.listen: \"localhost\" is not an address and port",
            ),
            (
                HUB.replace("0123456789abcdef", "short"),
                "agents.m1.token: must be at least 16 characters",
            ),
            (
                format!(
                    "{HUB}\n[agents.m2]\ntoken = \"0123456789abcdef\"\npipeline = \"erp_shop\"\n"
                ),
                "agents.m2.token: agent m1 has the same token",
            ),
            (
                format!(
                    "{HUB}\n[agents.m2]\ntoken = \"0123456789abcdeX\"\npipeline = \"erp_shop\"\n"
                ),
                "agents.m2.pipeline: agent m1 feeds pipeline erp_shop already",
            ),
            (
                HUB.replace("pipeline = \"erp_shop\"", "pipeline = \"nope\""),
                "agents.m1.pipeline: no pipeline named \"nope\"",
            ),
            (
                HUB.replace("mode = \"diff\"\n", ""),
                "does not use mode \"diff\" or \"incremental\"",
            ),
            (
                HUB.replace("url = \"shop.db\"", "url = \"http://hub:1\""),
                "sinks.shop: a hub sink (http:// or https://) needs `token`",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
        }
        let err = parse(&HUB.replace("url = \"shop.db\"", "url = \"shop.db\"\ntoken = \"x\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sinks.shop.token: only hub sinks (http:// or https://) take a token"),
            "{err}"
        );
    }

    #[test]
    fn diff_sources_take_streams_with_queries_and_fields() {
        let text = with(
            "tables = [\"items\"]",
            "mode = \"diff\"\ntables = [\"items\", \"stock\"]\ninterval_secs = 300\n\
             chunk_rows = 500\n\
             [sources.shop.streams.items]\n\
             query = \"SELECT item_no, descr, price FROM art;\"\n\
             key = [\"id\"]\n\
             fields = [\n\
               { name = \"id\", column = \"item_no\" },\n\
               { name = \"price\", column = \"price\", cast = \"decimal\" },\n\
               { name = \"origin\", value = \"erp-a\" },\n\
               { name = \"weight\", value = 2 },\n\
             ]\n",
        );
        let config = parse(&text).unwrap();
        let SourceSpec::Diff {
            db,
            tables,
            streams,
            interval,
            chunk_rows,
            incremental: None,
        } = &config.sources["shop"].spec
        else {
            panic!("not a diff source: {:?}", config.sources["shop"].spec);
        };
        assert!(matches!(db, DiffDb::Sqlite { .. }));
        assert_eq!(tables, &["items".to_owned(), "stock".to_owned()]);
        assert_eq!((*interval, *chunk_rows), (Duration::from_secs(300), 500));
        use tidesync_capture::diff::map::{Cast, FieldFrom};
        let items = &streams[0];
        assert_eq!(
            items.query.as_deref(),
            Some("SELECT item_no, descr, price FROM art")
        );
        assert_eq!(items.key, ["id"]);
        assert_eq!(items.fields[1].cast, Some(Cast::Decimal));
        assert_eq!(
            items.fields[2].from,
            FieldFrom::Value(tidesync_core::Value::Text("erp-a".into()))
        );
        assert_eq!(
            items.fields[3].from,
            FieldFrom::Value(tidesync_core::Value::Int(2))
        );
        // A stream without a section reads its table whole, keyed by its primary key.
        assert_eq!(streams[1].query, None);
        assert!(streams[1].key.is_empty() && streams[1].fields.is_empty());
        // Its changes go through the log, whatever the sink.
        assert!(!config.pipeline("items").unwrap().direct_stream);
    }

    #[test]
    fn incremental_sources_need_a_change_column_per_stream() {
        let text = with(
            "tables = [\"items\"]",
            "mode = \"incremental\"\ntables = [\"items\"]\noverlap_secs = 30\n\
             deletes_every_secs = 600\n\
             [sources.shop.streams.items]\nchanged = \"updated_at\"\n",
        );
        let config = parse(&text).unwrap();
        let SourceSpec::Diff {
            streams,
            interval,
            incremental: Some(inc),
            ..
        } = &config.sources["shop"].spec
        else {
            panic!("not incremental: {:?}", config.sources["shop"].spec);
        };
        assert_eq!(streams[0].changed.as_deref(), Some("updated_at"));
        assert_eq!(*interval, Duration::from_secs(10));
        assert_eq!(inc.overlap, Duration::from_secs(30));
        assert_eq!(inc.full_every, Duration::from_secs(600));

        let err = parse_err(&with(
            "tables = [\"items\"]",
            "mode = \"incremental\"\ntables = [\"items\"]",
        ));
        assert_eq!(
            err.message,
            "sources.shop: table items needs a [sources.shop.streams.items] section with \
             `changed` (the column holding when a row last changed)"
        );
        let err = parse_err(&with(
            "tables = [\"items\"]",
            "mode = \"diff\"\ntables = [\"items\"]\n\
             [sources.shop.streams.items]\nchanged = \"updated_at\"\n",
        ));
        assert_eq!(
            err.message,
            "sources.shop.streams.items.changed: only incremental sources have `changed`"
        );
        let err = parse_err(&with("tables = ", "overlap_secs = 5\ntables = "));
        assert_eq!(
            err.message,
            "sources.shop.overlap_secs: only incremental sources (mode = \"incremental\") have \
             overlap_secs"
        );
    }

    #[test]
    fn diff_source_mistakes_are_named() {
        let diff = |extra: &str| {
            parse_err(&with(
                "tables = [\"items\"]",
                &format!("mode = \"diff\"\ntables = [\"items\"]\n{extra}"),
            ))
            .message
        };
        assert_eq!(
            diff("[sources.shop.streams.items]\nquery = \"SELECT 1 AS a\"\n"),
            "sources.shop.streams.items: a stream with a query needs `key` (the fields that \
             identify a row)"
        );
        assert_eq!(
            diff("[sources.shop.streams.other]\nkey = [\"a\"]\n"),
            "sources.shop.streams.other: not one of the source's tables (items)"
        );
        assert_eq!(
            diff(
                "[sources.shop.streams.items]\nfields = [{ name = \"a\", column = \"a\", cast = \"money\" }]\n"
            ),
            "sources.shop.streams.items.fields.cast: unknown cast \"money\" (known: int, float, \
             decimal, text, bool, timestamp, date, time, json, bytes)"
        );
        assert_eq!(
            diff(
                "[sources.shop.streams.items]\nfields = [{ name = \"a\", column = \"a\", value = 1 }]\n"
            ),
            "sources.shop.streams.items.fields: field a needs exactly one of `column` (a column \
             of the query) or `value` (a constant)"
        );
        assert_eq!(
            diff(
                "[sources.shop.streams.items]\nkey = [\"b\"]\nfields = [{ name = \"a\", column = \"a\" }]\n"
            ),
            "sources.shop.streams.items.key: \"b\" is not one of the stream's fields"
        );
        assert_eq!(
            diff("poll_interval_ms = 5\n"),
            "sources.shop.poll_interval_ms: a diff source has no poll_interval_ms (it runs every \
             interval_secs)"
        );
        assert_eq!(
            parse_err(&with("tables = ", "interval_secs = 5\ntables = ")).message,
            "sources.shop.interval_secs: only diff and incremental sources have interval_secs"
        );
        let direct = format!(
            "{}direct_stream = true\n",
            with(
                "url = \"${SOURCE_URL}\"",
                "url = \"postgres://u@h/db\"\nmode = \"diff\""
            )
            .replace("url = \"${TARGET_URL}\"", "url = \"postgres://u@h/t\"")
        );
        assert_eq!(
            parse_err(&direct).message,
            "pipelines.items.direct_stream: a diff source compares with what the store logged, so \
             its changes go through the log (remove direct_stream or set it to false)"
        );
    }

    #[test]
    fn unknown_mode_lists_known_modes() {
        let err = parse_err(&with("tables = ", "mode = \"cdc\"\ntables = "));
        assert_at(&err, 6, 8);
        assert_eq!(
            err.message,
            "sources.shop.mode: unknown mode \"cdc\" (known: trigger, log, diff, incremental)"
        );
    }

    #[test]
    fn unknown_url_scheme_is_an_error() {
        let err = parse_err(&with("${TARGET_URL}", "ftp://example.com"));
        assert_at(&err, 9, 7);
        assert!(err.message.contains("unknown URL scheme \"ftp\""), "{err}");
    }

    #[test]
    fn empty_url_is_an_error() {
        let err = parse_err(&with("${SOURCE_URL}", ""));
        assert_at(&err, 5, 7);
        assert!(err.message.contains("sources.shop.url: is empty"), "{err}");
    }

    #[test]
    fn sqlite_url_and_plain_path_give_the_path_unchanged() {
        assert_eq!(
            DbKind::from_url("sqlite://rel/dir/a.db"),
            Ok(DbKind::Sqlite {
                path: PathBuf::from("rel/dir/a.db")
            })
        );
        assert_eq!(
            DbKind::from_url("sqlite:///abs/a.db"),
            Ok(DbKind::Sqlite {
                path: PathBuf::from("/abs/a.db")
            })
        );
        assert_eq!(
            DbKind::from_url("./a.db"),
            Ok(DbKind::Sqlite {
                path: PathBuf::from("./a.db")
            })
        );
        assert!(DbKind::from_url("sqlite://").is_err());
        assert_eq!(DbKind::from_url("MySQL://h/db"), Ok(DbKind::Mysql));
    }

    #[test]
    fn display_shows_position_line_and_caret() {
        let err = parse_err(&with("source = \"shop\"", "source = \"shopp\""));
        assert_eq!(
            err.to_string(),
            "tidesync.toml:12:10: pipelines.items.source: no source named \"shopp\" \
             (defined: shop)\n   |\n12 | source = \"shopp\"\n   |          ^^^^^^^"
        );
    }

    #[test]
    fn display_caret_keeps_tabs_aligned() {
        let err = parse_err(&format!("{VALID}\tbatch_size = 0\n"));
        assert_at(&err, 14, 15);
        assert!(
            err.to_string()
                .ends_with("14 | \tbatch_size = 0\n   | \t             ^")
        );
    }

    #[test]
    fn unreadable_file_has_no_position() {
        let err = Config::load(Path::new("/nonexistent/tidesync.toml")).unwrap_err();
        assert_eq!((err.line, err.column), (0, 0));
        let shown = err.to_string();
        assert!(
            shown.starts_with("/nonexistent/tidesync.toml: cannot read config file: "),
            "{shown}"
        );
        assert!(!shown.contains('\n'), "{shown}");
    }

    #[test]
    fn template_parses() {
        let config = parse(TEMPLATE).unwrap();
        assert_eq!(config.pipelines.len(), 1);
        assert_eq!(config.store.path, PathBuf::from("/state/tidesync.db"));
    }

    #[test]
    fn example_parses() {
        let text = include_str!("../../../examples/sqlite-to-sqlite.toml");
        let config = parse(text).unwrap();
        let pipeline = config.pipeline("items").unwrap();
        assert_eq!(pipeline.source, "shop");
        assert_eq!(pipeline.sinks, ["replica"]);
        assert_eq!(
            config.sources["shop"].spec,
            SourceSpec::SqliteTrigger {
                path: PathBuf::from("shop.db"),
                tables: vec!["items".to_owned()],
                poll_interval: Duration::from_millis(50),
            }
        );
        assert_eq!(config.store.path, PathBuf::from("/state/tidesync.db"));
    }
}
