//! The `diff` capture mode through the real binary, from examples/postgres-diff-to-sqlite.toml:
//! a PostgreSQL table compared into SQLite while a mixed workload runs (inserts, updates,
//! deletes, many rows sharing one timestamp), with kill -9 in the middle of the first
//! comparison and of later ones; `verify` says equal at the end and names a planted
//! difference.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use tidesync_testkit::Postgres;

use crate::util::*;

const DB: &str = "erp";
const ROWS: i64 = 60_000;

fn sqlite_count(path: &Path) -> Option<i64> {
    let conn = rusqlite::Connection::open(path).ok()?;
    conn.query_row("SELECT count(*) FROM items", [], |r| r.get(0))
        .ok()
}

fn sqlite_sum(path: &Path) -> Option<String> {
    let conn = rusqlite::Connection::open(path).ok()?;
    conn.query_row(
        "SELECT count(*) || ':' || sum(id) || ':' || sum(length(name)) FROM items",
        [],
        |r| r.get(0),
    )
    .ok()
}

fn pg_sum(pg: &Postgres) -> String {
    pg.psql(
        DB,
        "SELECT count(*) || ':' || sum(id) || ':' || sum(length(name)) FROM items",
    )
    .unwrap()
    .trim()
    .to_owned()
}

/// Waits until the SQLite `target` holds what PostgreSQL does, then asserts `verify` exits 0.
fn caught_up_and_verified(pg: &Postgres, target: &Path, config: &str, env: &[(&str, &Path)]) {
    let expected = pg_sum(pg);
    wait_for(
        "SQLite equal to PostgreSQL",
        Duration::from_secs(120),
        || (sqlite_sum(target).as_deref() == Some(expected.as_str())).then_some(()),
    );
    assert_exit(&run(&["verify", config], env), 0);
}

#[test]
fn a_postgres_table_compared_into_sqlite_survives_kills_and_verifies_equal() {
    let pg = Postgres::start();
    pg.create_database(DB).unwrap();
    pg.psql(
        DB,
        &format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, sku text NOT NULL, name text, \
               price numeric(12,2), changed timestamptz NOT NULL); \
             INSERT INTO items SELECT g, 'SKU-' || g, 'item ' || g, g * 0.25, \
               timestamptz '2026-01-01Z' FROM generate_series(1, {ROWS}) g;"
        ),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("shop.db");
    let state = dir.path().join("state");
    let source_url = pg.url(DB);
    let env = [
        ("SOURCE_URL", Path::new(&source_url)),
        ("TARGET_URL", target.as_path()),
        ("STATE_DIR", state.as_path()),
    ];
    let config = example("postgres-diff-to-sqlite.toml");
    let config = config.to_str().unwrap();
    let log = dir.path().join("run.log");
    let mut rng = Rng(seed());

    // Killed in the middle of the first comparison (rows already in the target).
    let mut child = spawn(&["run", config], &env, &log);
    wait_for("the first rows in SQLite", Duration::from_secs(60), || {
        sqlite_count(&target)
            .filter(|&n| n > 0 && n < ROWS)
            .map(|_| ())
    });
    child.kill().unwrap();
    child.wait().unwrap();

    for round in 0..6_i64 {
        // Updates (many to one shared timestamp), deletes and inserts, in separate
        // transactions so some land in the middle of a comparison.
        let shared = format!("timestamptz '2026-02-{:02}Z'", round + 1);
        pg.psql(
            DB,
            &format!(
                "UPDATE items SET name = name || '+', changed = {shared} WHERE id % 50 = {round}; \
                 DELETE FROM items WHERE id % 997 = {round}; \
                 INSERT INTO items SELECT 100000 + {round} * 1000 + g, 'new', 'n' || g, 1.5, \
                   {shared} FROM generate_series(1, 200) g;"
            ),
        )
        .unwrap();
        let mut child = spawn(&["run", config], &env, &log);
        std::thread::sleep(Duration::from_millis(300 + rng.below(2_500)));
        if round % 2 == 0 {
            child.kill().unwrap();
            child.wait().unwrap();
        } else {
            stop_cleanly(&mut child, &log);
        }
    }
    let mut child = spawn(&["run", config], &env, &log);
    caught_up_and_verified(&pg, &target, config, &env);
    stop_cleanly(&mut child, &log);

    // A planted difference is named.
    let conn = rusqlite::Connection::open(&target).unwrap();
    conn.execute("UPDATE items SET name = 'drift' WHERE id = 7", [])
        .unwrap();
    drop(conn);
    let out = run(&["verify", config, "--settle-secs", "5"], &env);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("(7)"), "{text}");
    assert!(
        log_text(&log).lines().all(|l| !l.contains("ERROR")),
        "{}",
        log_text(&log)
    );
}

#[test]
fn a_postgres_table_polled_by_its_change_column_survives_kills_and_verifies_equal() {
    let pg = Postgres::start();
    pg.create_database(DB).unwrap();
    pg.psql(
        DB,
        "CREATE TABLE items (id bigint PRIMARY KEY, sku text NOT NULL, name text, \
           price numeric(12,2), updated_at timestamptz NOT NULL); \
         INSERT INTO items SELECT g, 'SKU-' || g, 'item ' || g, g * 0.25, \
           timestamptz '2026-01-01Z' FROM generate_series(1, 20000) g;",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("shop.db");
    let state = dir.path().join("state");
    let source_url = pg.url(DB);
    let env = [
        ("SOURCE_URL", Path::new(&source_url)),
        ("TARGET_URL", target.as_path()),
        ("STATE_DIR", state.as_path()),
    ];
    // The example, with deletes found every 4 s instead of every hour.
    let config = example_with(
        dir.path(),
        "postgres-incremental-to-sqlite.toml",
        "deletes_every_secs = 3600",
        "deletes_every_secs = 4",
    );
    let config = config.to_str().unwrap();
    let log = dir.path().join("run.log");
    let mut rng = Rng(seed());

    let mut child = spawn(&["run", config], &env, &log);
    wait_for("all rows in SQLite", Duration::from_secs(60), || {
        (sqlite_count(&target) == Some(20_000)).then_some(())
    });
    for round in 1..=6_i64 {
        // Many rows stamped with one new time, a delete, inserts; the clock moves forward.
        pg.psql(
            DB,
            &format!(
                "UPDATE items SET name = name || '+', updated_at = timestamptz '2026-02-01Z' + \
                   interval '{round} minutes' WHERE id % 40 = {round}; \
                 DELETE FROM items WHERE id % 991 = {round}; \
                 INSERT INTO items SELECT 100000 + {round} * 1000 + g, 'new', 'n' || g, 1.5, \
                   timestamptz '2026-02-01Z' + interval '{round} minutes' FROM generate_series(1, 100) g;"
            ),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(200 + rng.below(1_500)));
        if round % 2 == 1 {
            child.kill().unwrap();
            child.wait().unwrap();
        } else {
            stop_cleanly(&mut child, &log);
        }
        child = spawn(&["run", config], &env, &log);
    }
    caught_up_and_verified(&pg, &target, config, &env);
    stop_cleanly(&mut child, &log);
    assert!(
        log_text(&log).lines().all(|l| !l.contains("ERROR")),
        "{}",
        log_text(&log)
    );
}

/// An ERP-like MariaDB table behind a `diff` source with a query and a field mapping, then an
/// `incremental` one, both into PostgreSQL, with kill -9: the target ends equal to the query's
/// model.
#[test]
fn a_mariadb_erp_query_mapped_into_postgres_by_diff_and_incremental() {
    let maria = tidesync_testkit::MariaDb::start();
    maria.create_database("erp").unwrap();
    maria
        .sql(
            "erp",
            "SET NAMES utf8mb4; \
             CREATE TABLE art (artnr VARCHAR(20) PRIMARY KEY, bez VARCHAR(100), \
               preis VARCHAR(20), geaendert DATETIME(6) NOT NULL) DEFAULT CHARSET = utf8mb4; \
             INSERT INTO art SELECT CONCAT('A', seq), CONCAT('Artikel ', seq), \
               CONCAT(seq, '.50'), '2026-01-01 00:00:00' FROM seq_1_to_5000;",
        )
        .unwrap();
    let pg = Postgres::start();
    pg.create_database("shop").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log");
    let config = |mode: &str, extra: &str, name: &str| {
        let text = format!(
            "[store]\npath = \"{state}\"\n\n[sources.erp]\nurl = \"{url}\"\nmode = \"{mode}\"\n\
             tables = [\"items\"]\ninterval_secs = 1\n{extra}\n\
             [sources.erp.streams.items]\n\
             query = \"SELECT artnr, bez, preis, geaendert FROM art\"\nkey = [\"sku\"]\n\
             fields = [\n\
               {{ name = \"sku\", column = \"artnr\" }},\n\
               {{ name = \"name\", column = \"bez\" }},\n\
               {{ name = \"price\", column = \"preis\", cast = \"decimal\" }},\n\
               {{ name = \"changed_at\", column = \"geaendert\" }},\n\
               {{ name = \"origin\", value = \"erp-1\" }},\n\
             ]\n{changed}\n\
             [sinks.shop]\nurl = \"{target}\"\n\n[pipelines.{name}]\nsource = \"erp\"\nsinks = [\"shop\"]\n",
            state = dir
                .path()
                .join(format!("state-{name}/tidesync.db"))
                .display(),
            url = maria.url("erp"),
            target = pg.url("shop"),
            changed = if mode == "incremental" {
                "changed = \"changed_at\""
            } else {
                ""
            },
        );
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let pg_model = |pg: &Postgres| {
        pg.psql(
            "shop",
            "SELECT count(*) || ':' || round(coalesce(sum(price), 0), 2) || ':' || \
             coalesce(sum(length(name)), 0) || ':' || count(*) FILTER (WHERE origin = 'erp-1') \
             FROM items",
        )
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
    };
    let erp_model = |maria: &tidesync_testkit::MariaDb| {
        let out = maria
            .sql(
                "erp",
                "SELECT CONCAT(count(*), ':', coalesce(sum(CAST(preis AS DECIMAL(12,2))), 0), ':', \
                 coalesce(sum(char_length(bez)), 0), ':', count(*)) FROM art",
            )
            .unwrap();
        out.lines().last().unwrap_or_default().trim().to_owned()
    };
    let diff = config("diff", "", "items");
    let diff = diff.to_str().unwrap();
    let mut child = spawn(&["run", diff], &[], &log);
    wait_for(
        "the first rows in PostgreSQL",
        Duration::from_secs(60),
        || {
            let n: i64 = pg
                .psql("shop", "SELECT count(*) FROM items")
                .ok()?
                .trim()
                .parse()
                .ok()?;
            (n > 0).then_some(())
        },
    );
    child.kill().unwrap();
    child.wait().unwrap();
    maria
        .sql(
            "erp",
            "UPDATE art SET preis = '1.25', geaendert = '2026-02-01' WHERE artnr LIKE 'A1%'; \
             DELETE FROM art WHERE artnr LIKE 'A2%'; \
             INSERT INTO art VALUES ('Z1', 'neu', '9.99', '2026-02-01');",
        )
        .unwrap();
    let mut child = spawn(&["run", diff], &[], &log);
    let expected = erp_model(&maria);
    wait_for(
        "PostgreSQL equal to the ERP (diff)",
        Duration::from_secs(60),
        || (pg_model(&pg) == expected).then_some(()),
    );
    stop_cleanly(&mut child, &log);
    // 5,000 rows, 1,111 deleted (A2, A20.., A200.., A2000..), one added; all from erp-1.
    assert!(pg_model(&pg).ends_with(":3890"), "{}", pg_model(&pg));

    // The same source polled incrementally by another pipeline into the same table.
    let inc = config(
        "incremental",
        "overlap_secs = 60\ndeletes_every_secs = 3",
        "items2",
    );
    let inc = inc.to_str().unwrap();
    // Its stream is also named items: it writes the same table.
    let mut child = spawn(&["run", inc], &[], &log);
    std::thread::sleep(Duration::from_millis(1500));
    maria
        .sql(
            "erp",
            "UPDATE art SET bez = 'geändert', geaendert = '2026-03-01' WHERE artnr IN ('A3', 'A33'); \
             DELETE FROM art WHERE artnr = 'A4';",
        )
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = spawn(&["run", inc], &[], &log);
    let expected = erp_model(&maria);
    wait_for(
        "PostgreSQL equal to the ERP (incremental)",
        Duration::from_secs(60),
        || (pg_model(&pg) == expected).then_some(()),
    );
    stop_cleanly(&mut child, &log);
    assert!(
        log_text(&log).lines().all(|l| !l.contains("ERROR")),
        "{}",
        log_text(&log)
    );
}

/// A SQLite source compared by `diff`: a table, and an aggregate query keyed by a text column
/// under a case-insensitive collation (compared in byte order), with `status` showing the run.
#[test]
fn a_sqlite_table_and_aggregate_query_compared_into_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("erp.db");
    let conn = rusqlite::Connection::open(&source).unwrap();
    conn.execute_batch(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT COLLATE NOCASE, price REAL); \
         INSERT INTO items VALUES (1, 'b', 1.5), (2, 'A', 2.5), (3, 'a', 3), (4, 'b', 4);",
    )
    .unwrap();
    let target = dir.path().join("shop.db");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"{state}\"\n[sources.erp]\nurl = \"{source}\"\nmode = \"diff\"\n\
             tables = [\"items\", \"totals\"]\ninterval_secs = 1\n\
             [sources.erp.streams.totals]\n\
             query = \"SELECT name AS label, sum(price) AS total, count(*) AS n FROM items \
               GROUP BY name COLLATE BINARY\"\nkey = [\"label\"]\n\
             [sinks.shop]\nurl = \"{target}\"\n[pipelines.erp]\nsource = \"erp\"\nsinks = [\"shop\"]\n",
            state = dir.path().join("state/t.db").display(),
            source = source.display(),
            target = target.display(),
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let log = dir.path().join("run.log");
    let totals = || {
        sqlite_lines(
            &target,
            "SELECT label || '=' || total || '/' || n FROM totals ORDER BY label",
        )
    };
    let mut child = spawn(&["run", config], &[], &log);
    wait_for("the totals in SQLite", Duration::from_secs(30), || {
        (totals().as_deref() == Some("A=2.5/1\na=3.0/1\nb=5.5/2")).then_some(())
    });
    conn.execute_batch("UPDATE items SET price = 10 WHERE id = 1; DELETE FROM items WHERE id = 2;")
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = spawn(&["run", config], &[], &log);
    wait_for("the new totals in SQLite", Duration::from_secs(30), || {
        (totals().as_deref() == Some("a=3.0/1\nb=14.0/2")).then_some(())
    });
    let out = run(&["status", config], &[]);
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        status.contains("source position  diff run started "),
        "{status}"
    );
    stop_cleanly(&mut child, &log);
    // Both streams verify equal: the table, and the aggregate query read through its
    // mapping; a planted difference in the query stream's target is named.
    let out = run(&["verify", config], &[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("items -> shop: equal"), "{text}");
    assert!(text.contains("totals -> shop: equal"), "{text}");
    rusqlite::Connection::open(&target)
        .unwrap()
        .execute("UPDATE totals SET n = 99 WHERE label = 'b'", [])
        .unwrap();
    let out = run(&["verify", config], &[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("different (\"b\"): n"), "{text}");
}

/// The fields of the `compared stream` log lines of `stream`: (inserts, updates, deletes,
/// chunks, reread), oldest first.
fn compared(log: &Path, stream: &str) -> Vec<[u64; 5]> {
    let field = log_field;
    log_text(log)
        .lines()
        .filter(|l| l.contains("compared stream") && l.contains(&format!(" stream={stream} ")))
        .filter_map(|l| {
            Some([
                field(l, "inserts")?,
                field(l, "updates")?,
                field(l, "deletes")?,
                field(l, "chunks")?,
                field(l, "reread")?,
            ])
        })
        .collect()
}

/// Writes `dir/chunks.toml`: a diff source of `tables` at `url` (every second, with the
/// source settings `extra`) into the SQLite `dir/shop.db`; returns its path.
fn chunked_config(dir: &Path, url: &str, tables: &str, extra: &str) -> String {
    let config = dir.join("chunks.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"{}\"\n\n[sources.erp]\nurl = \"{url}\"\nmode = \"diff\"\n\
             tables = [{tables}]\ninterval_secs = 1\n{extra}\n\
             [sinks.shop]\nurl = \"{}\"\n\n[pipelines.p]\nsource = \"erp\"\nsinks = [\"shop\"]\n",
            dir.join("state/tidesync.db").display(),
            dir.join("shop.db").display()
        ),
    )
    .unwrap();
    config.to_str().unwrap().to_owned()
}

/// The "compared stream" lines of `stream` that found a change.
fn compared_changes(log: &Path, stream: &str) -> Vec<String> {
    log_text(log)
        .lines()
        .filter(|l| l.contains("compared stream") && l.contains(&format!(" stream={stream} ")))
        .filter(|l| {
            ["inserts", "updates", "deletes"]
                .iter()
                .any(|f| log_field(l, f) > Some(0))
        })
        .map(str::to_owned)
        .collect()
}

/// Changes spread over every chunk of a large table: a sample of the chunk sums (the
/// database finds the sampled chunks alone, through the key's index) sends the run to read
/// every row at once, without summing every chunk first; changes in a few chunks still
/// re-read only those. Either way the target ends equal.
#[test]
fn a_postgres_table_changed_everywhere_is_read_whole_after_a_sample_of_its_chunks() {
    let pg = Postgres::start();
    pg.create_database(DB).unwrap();
    pg.psql(
        DB,
        "CREATE TABLE items (id bigint PRIMARY KEY, name text); \
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 100000) g; \
         ANALYZE items;",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("shop.db");
    let config = chunked_config(dir.path(), &pg.url(DB), "\"items\"", "");
    let config = config.as_str();
    let env = [("TIDESYNC_LOG", Path::new("info"))];
    let equal = |what: &str| {
        let expected = pg_sum(&pg);
        wait_for(what, Duration::from_secs(120), || {
            (sqlite_sum(&target).as_deref() == Some(expected.as_str())).then_some(())
        });
    };
    let log = dir.path().join("run.log");
    let mut child = spawn(&["run", config], &env, &log);
    equal("the first copy");
    // 100,000 rows: chunks of 10.
    wait_for(
        "an unchanged run by chunks",
        Duration::from_secs(60),
        || (compared(&log, "items").last() == Some(&[0, 0, 0, 10_000, 0])).then_some(()),
    );
    let changed = |n: usize| {
        wait_for("a run with changes", Duration::from_secs(60), || {
            compared_changes(&log, "items").get(n).cloned()
        })
    };

    // Two chunks changed: no sampled chunk shows a change, every chunk's sums are read, and
    // only those two chunks are read row by row.
    pg.psql(
        DB,
        "UPDATE items SET name = 'renamed' WHERE id IN (5, 50005)",
    )
    .unwrap();
    // (The first run's inserts were the first change.)
    let line = changed(1);
    assert_eq!(log_field(&line, "updates"), Some(2), "{line}");
    assert_eq!(log_field(&line, "reread"), Some(2), "{line}");
    assert!(line.contains(" sampled=false"), "{line}");
    equal("two changes applied");

    // One row in ten changed: every chunk, and so every sampled one, differs.
    pg.psql(DB, "UPDATE items SET name = name || '.' WHERE id % 10 = 3")
        .unwrap();
    let line = changed(2);
    assert_eq!(log_field(&line, "updates"), Some(10_000), "{line}");
    assert_eq!(log_field(&line, "reread"), Some(10_000), "{line}");
    assert!(line.contains(" sampled=true"), "{line}");
    equal("changes everywhere applied");
    stop_cleanly(&mut child, &log);
    assert_exit(&run(&["verify", config], &[]), 0);
}

/// Both tables, summed the same way on both sides.
const ITEMS_SUM: &str = "SELECT count(*) || ':' || sum(id) || ':' || sum(length(name)) FROM items";
const CODES_SUM: &str = "SELECT count(*) || ':' || sum(n) || ':' || sum(length(code)) FROM codes";

fn sqlite_sums(path: &Path) -> Option<(String, String)> {
    let conn = rusqlite::Connection::open(path).ok()?;
    let one = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, String>(0)).ok();
    Some((one(ITEMS_SUM)?, one(CODES_SUM)?))
}

#[test]
fn a_postgres_source_compared_chunk_by_chunk_rereads_only_the_chunks_that_changed() {
    let pg = Postgres::start();
    pg.create_database(DB).unwrap();
    // An integer key, and a text key in an ICU collation, which orders it unlike its bytes
    // (a Ä B é z Z): chunks are cut and compared in byte order whatever the column's.
    pg.psql(
        DB,
        "CREATE TABLE items (id bigint PRIMARY KEY, name text); \
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 5000) g; \
         CREATE TABLE codes (code text COLLATE \"und-x-icu\" PRIMARY KEY, n int); \
         INSERT INTO codes SELECT (ARRAY['a', 'B', 'Ä', 'z', 'Z', 'é'])[1 + g % 6] || md5(g::text), g \
           FROM generate_series(1, 3000) g;",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("shop.db");
    let config = chunked_config(
        dir.path(),
        &pg.url(DB),
        "\"items\", \"codes\"",
        "chunk_rows = 500\n",
    );
    let config = config.as_str();
    let env = [("TIDESYNC_LOG", Path::new("info"))];
    let pg_sums = || {
        (
            pg.psql(DB, ITEMS_SUM).unwrap().trim().to_owned(),
            pg.psql(DB, CODES_SUM).unwrap().trim().to_owned(),
        )
    };
    let equal = |what: &str| {
        let expected = pg_sums();
        wait_for(what, Duration::from_secs(60), || {
            (sqlite_sums(&target).as_ref() == Some(&expected)).then_some(())
        });
    };

    // The first run reads everything; then the fingerprints are cut into chunks of 10 rows
    // (500 and 300), and a run with nothing changed reads no row.
    let log = dir.path().join("run1.log");
    let mut child = spawn(&["run", config], &env, &log);
    equal("the first copy");
    wait_for(
        "an unchanged run by chunks",
        Duration::from_secs(60),
        || {
            let (items, codes) = (compared(&log, "items"), compared(&log, "codes"));
            (items.last() == Some(&[0, 0, 0, 500, 0]) && codes.last() == Some(&[0, 0, 0, 300, 0]))
                .then_some(())
        },
    );

    // Changes in 4 of items' 500 chunks (one before the first key, one after the last) and 1
    // of codes' 300: only those are read row by row. The update keeps the row count of its
    // chunk: the hash sum finds it.
    pg.psql(
        DB,
        "UPDATE items SET name = 'renamed' WHERE id = 1234; \
         DELETE FROM items WHERE id = 4000; \
         INSERT INTO items VALUES (0, 'first'), (100000, 'last'); \
         UPDATE codes SET n = -n WHERE n = 2000;",
    )
    .unwrap();
    let (items, codes) = wait_for("the changes compared", Duration::from_secs(60), || {
        let changed = |stream: &str| {
            compared(&log, stream)
                .into_iter()
                .skip(1)
                .find(|c| c[0] + c[1] + c[2] > 0)
        };
        Some((changed("items")?, changed("codes")?))
    });
    assert_eq!(
        items,
        [2, 1, 1, 500, 4],
        "inserts, updates, deletes, chunks, reread"
    );
    assert_eq!(codes, [0, 1, 0, 300, 1]);
    equal("the changes applied");

    // Killed at once after more changes, some of them logged by now and some not: the next
    // process compares them again, the chunk sums are exact with what was logged, and
    // nothing is lost or doubled.
    pg.psql(
        DB,
        "UPDATE items SET name = name || '!' WHERE id IN (10, 2600); \
         DELETE FROM codes WHERE n BETWEEN 100 AND 120;",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1_100));
    child.kill().unwrap();
    child.wait().unwrap();
    let log = dir.path().join("run2.log");
    let mut child = spawn(&["run", config], &env, &log);
    equal("the changes applied after a kill");

    // A chunk that grows to more than twice its size is cut into pieces (items: 2,000 new
    // keys after the last, into some 200 chunks more).
    pg.psql(
        DB,
        "INSERT INTO items SELECT g, 'grown ' || g FROM generate_series(200001, 202000) g",
    )
    .unwrap();
    equal("the growth applied");
    wait_for("items cut again", Duration::from_secs(60), || {
        compared(&log, "items")
            .last()
            .filter(|c| c[..3] == [0, 0, 0] && c[3] > 690)
            .map(|_| ())
    });
    stop_cleanly(&mut child, &log);
    assert_exit(&run(&["verify", config], &[]), 0);
    assert!(
        log_text(&log).lines().all(|l| !l.contains("ERROR")),
        "{}",
        log_text(&log)
    );

    // A new mapping that changes every row's values but not one query row (the name comes
    // from a constant now): every row is updated, though the database's hashes of the query
    // rows did not move.
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(
        config,
        text.replace(
            "[sinks.shop]",
            "[sources.erp.streams.items]\nfields = [{ name = \"id\", column = \"id\" }, \
             { name = \"name\", value = \"mapped\" }]\n\n[sinks.shop]",
        ),
    )
    .unwrap();
    let log = dir.path().join("run3.log");
    let mut child = spawn(&["run", config], &env, &log);
    let rows = pg_count(&pg, DB, "SELECT count(*) FROM items");
    wait_for("every row mapped anew", Duration::from_secs(60), || {
        let mapped = sqlite_lines(&target, "SELECT count(*) FROM items WHERE name = 'mapped'")?;
        (mapped.trim() == rows.to_string()).then_some(())
    });
    stop_cleanly(&mut child, &log);
    assert!(
        log_text(&log).contains("the stream's mapping changed"),
        "{}",
        log_text(&log)
    );
}
