//! SQL text: quoted identifiers and `$n` placeholders only, never values.

pub(crate) use tidesync_core::sql::quote_ident;
use tidesync_core::{Dialect, TableSchema};

fn quote_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names
        .into_iter()
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The PostgreSQL type for a column the source declared as `declared`, following SQLite's
/// affinity rules (first match wins), refined within NUMERIC affinity. The table is repeated
/// in the module docs.
pub(crate) fn pg_type_for(declared: &str) -> &'static str {
    let t = declared.to_ascii_uppercase();
    let has = |part: &str| t.contains(part);
    if has("INT") {
        "bigint"
    } else if has("CHAR") || has("CLOB") || has("TEXT") {
        "text"
    } else if has("BLOB") {
        "bytea"
    } else if has("REAL") || has("FLOA") || has("DOUB") {
        "double precision"
    } else if has("BOOL") {
        "boolean"
    } else if has("DATETIME") || has("TIMESTAMP") {
        "timestamptz"
    } else if has("DATE") {
        "date"
    } else if has("NUMERIC") || has("DECIMAL") {
        "numeric"
    } else {
        // No declared type (SQLite: any value) or one we do not know: text holds every
        // int, float and text exactly.
        "text"
    }
}

/// The PostgreSQL type for a MySQL/MariaDB column, from its `information_schema.COLUMNS.
/// COLUMN_TYPE` (`int(10) unsigned`, `decimal(12,2)`, `enum('a','b')`): a type that holds every
/// value the MySQL source emits for that column exactly (the table is in the module docs and in
/// docs/mysql.md). Only known words and numbers parsed from the name reach the SQL text; a name
/// we do not know becomes `text`.
pub(crate) fn pg_type_for_mysql(column_type: &str) -> String {
    let t = column_type.trim().to_ascii_lowercase();
    // `base(args) modifiers`: enum and set labels may hold parentheses, so only the first `(`
    // and the last `)` delimit the arguments.
    let (base, args, modifiers) = match (t.find('('), t.rfind(')')) {
        (Some(open), Some(close)) if open < close => {
            (t[..open].trim(), Some(&t[open + 1..close]), &t[close + 1..])
        }
        _ => match t.split_once(' ') {
            Some((base, rest)) => (base, None, rest),
            None => (t.as_str(), None, ""),
        },
    };
    // `zerofill` implies `unsigned`.
    let unsigned = modifiers
        .split_whitespace()
        .any(|m| m == "unsigned" || m == "zerofill");
    let numbers: Option<Vec<u32>> = args.map(|a| {
        a.split(',')
            .map(|n| n.trim().parse::<u32>().ok())
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default()
    });
    let first = numbers.as_ref().and_then(|n| n.first().copied());
    // Fractional seconds: MySQL allows 0..6, so does PostgreSQL; none means 0.
    let fsp = first.unwrap_or(0).min(6);
    match base {
        "tinyint" => "smallint".into(),
        "smallint" if unsigned => "integer".into(),
        "smallint" => "smallint".into(),
        "mediumint" => "integer".into(),
        "int" | "integer" if unsigned => "bigint".into(),
        "int" | "integer" => "integer".into(),
        // Up to 18446744073709551615: 20 digits.
        "bigint" if unsigned => "numeric(20,0)".into(),
        "bigint" => "bigint".into(),
        "decimal" | "numeric" | "dec" | "fixed" => match numbers.as_deref() {
            // MySQL's widest decimal, which is also what a `cast = "decimal"` field of a MySQL
            // `diff` source declares (MySQL has no unconstrained decimal): PostgreSQL's
            // unconstrained numeric holds every value of it exactly, and keeps each value's
            // own scale instead of padding `12.50` to thirty decimals.
            Some([65, 30]) => "numeric".into(),
            Some([p, s]) if *p >= 1 && s <= p => format!("numeric({p},{s})"),
            Some([p]) if *p >= 1 => format!("numeric({p},0)"),
            // MySQL's default precision and scale.
            None => "numeric(10,0)".into(),
            _ => "numeric".into(),
        },
        "float" => "real".into(),
        "double" | "real" | "double precision" => "double precision".into(),
        "char" | "varchar" | "character" | "character varying" => match first {
            // PostgreSQL's varchar needs a length of 1 or more; char(0) holds only ''.
            Some(n) if n >= 1 => format!("varchar({n})"),
            _ => "text".into(),
        },
        "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set" => "text".into(),
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "geometry"
        | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" | "geomcollection" => "bytea".into(),
        "bit" if first.unwrap_or(1) == 1 => "boolean".into(),
        "bit" => "bytea".into(),
        "date" => "date".into(),
        "time" => format!("time({fsp})"),
        // DATETIME has no zone: the source emits its wall clock taken as UTC.
        "datetime" => format!("timestamp({fsp})"),
        "timestamp" => format!("timestamptz({fsp})"),
        "year" => "smallint".into(),
        "json" => "jsonb".into(),
        _ => "text".into(),
    }
}

pub(crate) fn create_table_sql(schema: &TableSchema) -> String {
    let mut defs: Vec<String> = schema
        .columns
        .iter()
        .map(|c| {
            let null = if c.nullable { "" } else { " NOT NULL" };
            let ty = match schema.dialect {
                // A PostgreSQL source's own type (the source reports user-defined types as
                // `text`, which a target may not have).
                Dialect::Postgres => tidesync_core::sql::safe_type_name(&c.type_name),
                Dialect::Mysql => pg_type_for_mysql(&c.type_name),
                Dialect::Sqlite => pg_type_for(&c.type_name).to_owned(),
            };
            format!("{} {ty}{null}", quote_ident(&c.name))
        })
        .collect();
    defs.push(format!(
        "PRIMARY KEY ({})",
        quote_list(schema.key.iter().map(String::as_str))
    ));
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        quote_ident(&schema.name),
        defs.join(", ")
    )
}

/// `INSERT INTO t (cols) VALUES (..), (..) ON CONFLICT (key) DO UPDATE SET c = EXCLUDED.c`
/// for `rows` rows; `DO NOTHING` when every column is a key column.
pub(crate) fn upsert_sql(table: &str, columns: &[String], key: &[String], rows: usize) -> String {
    let n = columns.len();
    let mut values = String::with_capacity(rows * (n * 6 + 4));
    for r in 0..rows {
        if r > 0 {
            values.push_str(", ");
        }
        values.push('(');
        for c in 0..n {
            if c > 0 {
                values.push_str(", ");
            }
            values.push('$');
            values.push_str(&(r * n + c + 1).to_string());
        }
        values.push(')');
    }
    let updates: Vec<String> = columns
        .iter()
        .filter(|c| !key.contains(c))
        .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
        .collect();
    let action = if updates.is_empty() {
        "NOTHING".to_owned()
    } else {
        format!("UPDATE SET {}", updates.join(", "))
    };
    format!(
        "INSERT INTO {} ({}) VALUES {values} ON CONFLICT ({}) DO {action}",
        quote_ident(table),
        quote_list(columns.iter().map(String::as_str)),
        quote_list(key.iter().map(String::as_str)),
    )
}

/// [`upsert_sql`] that leaves a row alone when it already holds these values (compared as
/// text, which every type has): for rows re-read from the source (`Op::Read`), of which the
/// target may have the same version already (a change streamed before a chunk read between
/// watermarks holds it too). No write, so no trigger fires and no WAL is written for it.
pub(crate) fn upsert_if_changed_sql(
    table: &str,
    columns: &[String],
    key: &[String],
    rows: usize,
) -> String {
    let upsert = upsert_sql(table, columns, key, rows);
    let values: Vec<&String> = columns.iter().filter(|c| !key.contains(c)).collect();
    if values.is_empty() {
        return upsert;
    }
    let side = |prefix: &str| {
        values
            .iter()
            .map(|c| format!("{prefix}.{}::text", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{upsert} WHERE ({}) IS DISTINCT FROM ({})",
        side(&quote_ident(table)),
        side("EXCLUDED")
    )
}

/// `COPY t (cols) FROM STDIN`, in the text format (see `copy`).
pub(crate) fn copy_sql(table: &str, columns: &[String]) -> String {
    format!(
        "COPY {} ({}) FROM STDIN",
        quote_ident(table),
        quote_list(columns.iter().map(String::as_str))
    )
}

/// `DELETE FROM t WHERE k = $1` for one row, `WHERE (k1, k2) IN (($1, $2), ..)` for several.
pub(crate) fn delete_sql(table: &str, key: &[String], rows: usize) -> String {
    let n = key.len();
    let condition = if rows == 1 {
        key.iter()
            .enumerate()
            .map(|(i, k)| format!("{} = ${}", quote_ident(k), i + 1))
            .collect::<Vec<_>>()
            .join(" AND ")
    } else {
        let tuples: Vec<String> = (0..rows)
            .map(|r| {
                let params: Vec<String> = (0..n).map(|c| format!("${}", r * n + c + 1)).collect();
                format!("({})", params.join(", "))
            })
            .collect();
        format!(
            "({}) IN ({})",
            quote_list(key.iter().map(String::as_str)),
            tuples.join(", ")
        )
    };
    format!("DELETE FROM {} WHERE {condition}", quote_ident(table))
}

/// `UPDATE t SET c1 = $1, .. WHERE k1 = $n AND ..` for one row: the columns' values, then
/// the key's. A patch's columns may include the key columns (a key update).
pub(crate) fn patch_sql(table: &str, columns: &[String], key: &[String]) -> String {
    let sets: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = ${}", quote_ident(c), i + 1))
        .collect();
    let condition: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{} = ${}", quote_ident(k), columns.len() + i + 1))
        .collect();
    format!(
        "UPDATE {} SET {} WHERE {}",
        quote_ident(table),
        sets.join(", "),
        condition.join(" AND ")
    )
}

/// `ddl` in a transaction that first takes tidesync's setup lock: `CREATE TABLE IF NOT EXISTS`
/// run by two sessions at once can fail with a unique violation in PostgreSQL's catalog
/// (`pg_type_typname_nsp_index`), e.g. two pipelines opening sinks into one database.
pub(crate) fn locked_ddl(ddl: &str) -> String {
    // 'tidesync' in ASCII, as the advisory lock's key.
    format!("BEGIN; SELECT pg_advisory_xact_lock(8388065316977405539); {ddl}; COMMIT;")
}

pub(crate) const CREATE_APPLIED: &str = "CREATE TABLE IF NOT EXISTS _tidesync_applied (
    pipeline text NOT NULL, sink text NOT NULL, seq bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(), position text, PRIMARY KEY (pipeline, sink))";

/// Whether `_tidesync_applied` has its `position` column (tables made before direct
/// streaming lack it; [`ADD_APPLIED_POSITION`] adds it, only then, sparing every connect an
/// `ALTER TABLE` lock).
pub(crate) const HAS_APPLIED_POSITION: &str = "SELECT EXISTS (SELECT 1 FROM pg_attribute
    WHERE attrelid = to_regclass('_tidesync_applied') AND attname = 'position' AND NOT attisdropped)";

pub(crate) const ADD_APPLIED_POSITION: &str =
    "ALTER TABLE _tidesync_applied ADD COLUMN IF NOT EXISTS position text";

/// The applied seq and the source position a direct stream recorded with it.
pub(crate) const READ_APPLIED_POSITION: &str =
    "SELECT seq, position FROM _tidesync_applied WHERE pipeline = $1 AND sink = $2";

/// Makes sure our row exists, so that `SELECT .. FOR UPDATE` always has a row to lock.
pub(crate) const INIT_APPLIED: &str = "INSERT INTO _tidesync_applied (pipeline, sink, seq)
    VALUES ($1, $2, 0) ON CONFLICT (pipeline, sink) DO NOTHING";

pub(crate) const READ_APPLIED: &str =
    "SELECT seq FROM _tidesync_applied WHERE pipeline = $1 AND sink = $2";

pub(crate) const LOCK_APPLIED: &str =
    "SELECT seq FROM _tidesync_applied WHERE pipeline = $1 AND sink = $2 FOR UPDATE";

/// `$4`: the source position after the batch when it was streamed without the log, else
/// NULL (the store then knows where the source stands).
pub(crate) const WRITE_APPLIED: &str =
    "INSERT INTO _tidesync_applied (pipeline, sink, seq, position)
    VALUES ($1, $2, $3, $4) ON CONFLICT (pipeline, sink)
    DO UPDATE SET seq = EXCLUDED.seq, position = EXCLUDED.position, updated_at = now()";

/// The table (`$1`: a quoted name, resolved through `search_path`) and whether it has a
/// primary key or unique index on exactly the columns `$2`. `NULL` when the table is missing.
/// The columns of table `$1` (a quoted name).
pub(crate) const TABLE_COLUMNS: &str = "SELECT attname::text FROM pg_attribute \
    WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped";

/// The type of a column added while streaming, from one of its values (`None`: all null).
pub(crate) fn pg_type_of_value(value: Option<&tidesync_core::Value>) -> &'static str {
    use tidesync_core::Value;
    match value {
        Some(Value::Bool(_)) => "boolean",
        Some(Value::Int(_)) => "bigint",
        Some(Value::Float(_)) => "double precision",
        Some(Value::Decimal(_)) => "numeric",
        Some(Value::Bytes(_)) => "bytea",
        Some(Value::Timestamp(_)) => "timestamptz",
        Some(Value::Date(_)) => "date",
        Some(Value::Time(_)) => "time",
        Some(Value::Json(_)) => "jsonb",
        Some(Value::Text(_) | Value::Null) | None => "text",
    }
}

pub(crate) const TABLE_HAS_UNIQUE_KEY: &str = "SELECT EXISTS (
        SELECT 1 FROM pg_index i
        WHERE i.indrelid = c.oid AND i.indisunique AND i.indpred IS NULL
          AND i.indnkeyatts = cardinality($2::text[])
          AND (SELECT array_agg(a.attname::text ORDER BY a.attname)
               FROM pg_attribute a
               WHERE a.attrelid = c.oid AND a.attnum = ANY (i.indkey[0:i.indnkeyatts - 1]))
              = (SELECT array_agg(k ORDER BY k) FROM unnest($2::text[]) k))
    FROM (SELECT to_regclass($1)::oid AS oid) c WHERE c.oid IS NOT NULL";
