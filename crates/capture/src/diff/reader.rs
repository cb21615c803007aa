//! What the `diff` capture mode needs from a database: describe a query's columns, find a
//! table's primary key, and read a query's rows in key order as model values. One
//! implementation per database ([`super::pg`], [`super::mysql`], [`super::sqlite`]).

use tidesync_core::{BoxFuture, Dialect, StageError, Value};
use tokio::sync::mpsc;

/// A column of a stream's query result, as the database describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryColumn {
    pub name: String,
    /// The database's own type name (`int4`, `numeric(12,2)`, `varchar(40)`, `INTEGER`, ...),
    /// used to create target tables. Empty when the database does not say (a SQLite
    /// expression).
    pub type_name: String,
    /// `false` only when the database guarantees no nulls; `true` when unknown.
    pub nullable: bool,
}

/// Rows of a query: each row has one value per described column, in column order.
pub type Page = Vec<Vec<Value>>;

/// A row as the database hashes it.
#[derive(Debug, Clone, PartialEq)]
pub struct HashedRow {
    /// The values of the key columns, in the order asked for.
    pub key: Vec<Value>,
    /// All its values (one per column), when asked for.
    pub values: Option<Vec<Value>>,
    /// The database's hash of all its columns: it changes whenever one of the values does.
    pub hash: i64,
}

/// Some key ranges (chunks) of a query's rows: the ranges are cut at `bounds` (ascending
/// values of the single key column; chunk 0 is everything below `bounds[0]`, chunk `i` from
/// `bounds[i - 1]` up to `bounds[i]`, the last from the last bound on), and `chunks` lists the
/// ones wanted.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkFilter {
    pub bounds: Vec<Value>,
    pub chunks: Vec<i64>,
}

/// One chunk's rows as the database counts and hashes them ([`QueryReader::chunk_sums`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSum {
    /// The chunk's number (see [`ChunkFilter`]); `None` for rows whose key is null.
    pub chunk: Option<i64>,
    pub rows: i64,
    /// XOR of the rows' hashes (as [`QueryReader::read_hashes`] gives them).
    pub sum: i64,
}

/// Reads the rows of the queries of one `diff` source's database.
///
/// Errors are classified as everywhere else: a lost connection or a restarting server is
/// transient (the run is retried), bad SQL, a missing table or a value that cannot be read is
/// definite and names the query or table and the column.
pub trait QueryReader: Send {
    /// Whose type names [`QueryColumn::type_name`] holds.
    fn dialect(&self) -> Dialect;

    /// The database, for messages (without a password).
    fn describe_db(&self) -> String;

    /// The columns `query` returns, in order, without reading its rows. Two columns with the
    /// same name are a definite error naming them.
    fn columns<'a>(
        &'a mut self,
        query: &'a str,
    ) -> BoxFuture<'a, Result<Vec<QueryColumn>, StageError>>;

    /// The primary-key columns of `table` (`table` or `schema.table`, as the log sources take
    /// it), in key order. A definite error names the table when it does not exist or has no
    /// primary key.
    fn primary_key<'a>(
        &'a mut self,
        table: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StageError>>;

    /// Runs `query` (whose columns are `columns`, as [`Self::columns`] returned them) as one
    /// consistent read, ordered by the columns at positions `order`, and sends its rows on
    /// `out` in pages of at most `page_rows` rows. The order must be the one
    /// [`super::ord`] encodes: integers, decimals, dates and times numerically, text and
    /// bytes by their bytes (UTF-8 byte order, whatever the column's collation). Each value
    /// is converted to the model [`Value`] the database's type maps to (the same mapping as
    /// that database's log or trigger capture). Returns once every row is sent, or early
    /// (`Ok`) when `out` is closed.
    fn read<'a>(
        &'a mut self,
        query: &'a str,
        columns: &'a [QueryColumn],
        order: &'a [usize],
        page_rows: usize,
        out: mpsc::Sender<Page>,
    ) -> BoxFuture<'a, Result<(), StageError>>;

    /// The rows of `query` whose column `changed` is at or after `since` (every row when
    /// `None`), as one consistent read sorted by that column and then by the key columns
    /// `order` (in the order [`Self::read`] uses), sent on `out` in pages of at most
    /// `page_rows`. `since` is a value of the kind this reader produces for that column
    /// (e.g. [`Value::Timestamp`] for a timestamp column), bound as a parameter. For the
    /// `incremental` mode.
    #[allow(clippy::too_many_arguments)]
    fn read_changed<'a>(
        &'a mut self,
        query: &'a str,
        columns: &'a [QueryColumn],
        changed: usize,
        since: Option<&'a Value>,
        order: &'a [usize],
        page_rows: usize,
        out: mpsc::Sender<Page>,
    ) -> BoxFuture<'a, Result<(), StageError>> {
        let _ = (query, columns, changed, since, order, page_rows, out);
        Box::pin(async {
            Err(StageError::definite(
                "this database cannot read rows changed since a watermark (read_changed)",
            ))
        })
    }

    /// Whether the database hashes rows itself ([`Self::read_hashes`], [`Self::read_keys`]):
    /// then an unchanged row costs no transfer and no decoding of its values.
    fn hashes_rows(&self) -> bool {
        false
    }

    /// Like [`Self::read`], but each row as a [`HashedRow`]: its key columns' values
    /// (`order`), the database's hash of the row, and with `values` all its values. With
    /// `only`, just the rows of those chunks (a key of one column).
    #[allow(clippy::too_many_arguments)]
    fn read_hashes<'a>(
        &'a mut self,
        query: &'a str,
        columns: &'a [QueryColumn],
        order: &'a [usize],
        values: bool,
        only: Option<&'a ChunkFilter>,
        page_rows: usize,
        out: mpsc::Sender<Vec<HashedRow>>,
    ) -> BoxFuture<'a, Result<(), StageError>> {
        let _ = (query, columns, order, values, only, page_rows, out);
        Box::pin(async {
            Err(StageError::definite(
                "this database cannot hash rows (read_hashes)",
            ))
        })
    }

    /// Per chunk of `query`'s rows cut at `bounds` (see [`ChunkFilter`]; a key of one column,
    /// `order`), the number of rows and the XOR of their hashes, computed in the database in
    /// one pass without sending a row; chunks without rows are left out. `None` when the key
    /// column's type cannot be cut in the order [`Self::read`] sorts it (then the stream is
    /// compared row by row).
    fn chunk_sums<'a>(
        &'a mut self,
        query: &'a str,
        columns: &'a [QueryColumn],
        order: &'a [usize],
        bounds: &'a [Value],
    ) -> BoxFuture<'a, Result<Option<Vec<ChunkSum>>, StageError>> {
        let _ = (query, columns, order, bounds);
        Box::pin(async { Ok(None) })
    }

    /// The sums of [`Self::chunk_sums`] for the chunks `sample.chunks` alone (each with both
    /// bounds: neither the first nor the last), when the database finds their rows without
    /// reading the others (an index on the key): a cheap look at how many chunks differ
    /// before paying for every chunk's sums. `None` when it would cost a fair share of
    /// reading them all (its own plan's estimate says so), or it does not know how. A sum
    /// whose `chunk` is `None` counts rows the database placed outside every sampled chunk
    /// (it compares keys otherwise than the bounds say): the sample is no guide then.
    fn sample_sums<'a>(
        &'a mut self,
        query: &'a str,
        columns: &'a [QueryColumn],
        order: &'a [usize],
        sample: &'a ChunkFilter,
    ) -> BoxFuture<'a, Result<Option<Vec<ChunkSum>>, StageError>> {
        let _ = (query, columns, order, sample);
        Box::pin(async { Ok(None) })
    }

    /// The rows of `query` whose key columns (`order`) have one of the values in `keys` (each
    /// in `order`'s order, as [`Self::read_hashes`] gave them), in any order, with their
    /// values and the same hash [`Self::read_hashes`] gives. Keys no longer in the query's
    /// result are left out.
    fn read_keys<'a>(
        &'a mut self,
        query: &'a str,
        columns: &'a [QueryColumn],
        order: &'a [usize],
        keys: &'a [Vec<Value>],
    ) -> BoxFuture<'a, Result<Vec<HashedRow>, StageError>> {
        let _ = (query, columns, order, keys);
        Box::pin(async {
            Err(StageError::definite(
                "this database cannot read rows by key (read_keys)",
            ))
        })
    }
}

/// `query` for messages: on one line, cut after 120 characters.
pub(crate) fn short_query(query: &str) -> String {
    const MAX_CHARS: usize = 120;
    let line = query.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(MAX_CHARS) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

/// `SELECT * FROM (query) AS q`: the query as a derived table `q`, without the `;` it may end
/// with, on lines of its own (so that a trailing `--` comment does not swallow the rest).
pub(crate) fn derived(query: &str) -> String {
    format!("SELECT * FROM {}", subquery(query))
}

/// `(query) AS q`, on lines of its own and without a trailing `;` (see [`derived`]), for a
/// select of other columns than `*`.
pub(crate) fn subquery(query: &str) -> String {
    let body = query
        .trim_end()
        .trim_end_matches(|c: char| c == ';' || c.is_whitespace());
    format!("(\n{body}\n) AS q")
}

/// Collects rows into pages of at most `rows` and sends each full page on `out`.
#[derive(Debug)]
pub(crate) struct Pager<T> {
    page: Vec<T>,
    rows: usize,
    out: mpsc::Sender<Vec<T>>,
}

impl<T> Pager<T> {
    pub(crate) fn new(rows: usize, out: mpsc::Sender<Vec<T>>) -> Self {
        let rows = rows.max(1);
        Pager {
            page: Vec::with_capacity(rows),
            rows,
            out,
        }
    }

    /// Adds `row`; `false` once the receiver is gone (the read may stop).
    pub(crate) async fn push(&mut self, row: T) -> bool {
        self.page.push(row);
        if self.page.len() < self.rows {
            return true;
        }
        let full = std::mem::replace(&mut self.page, Vec::with_capacity(self.rows));
        self.out.send(full).await.is_ok()
    }

    /// Sends the last, partly filled page.
    pub(crate) async fn finish(self) {
        if !self.page.is_empty() {
            // A receiver gone by now has nothing left to read anyway.
            let _closed = self.out.send(self.page).await;
        }
    }
}
