//! Pattern P1 through the real binary: `tidesync serve` (the hub) and `tidesync agent`.
//!
//! - examples/hub.toml as written: an ERP-like MariaDB query with a field mapping, read by an
//!   agent in `incremental` mode (many rows sharing one timestamp), pushed to the hub, applied
//!   into PostgreSQL; the agent starts before the hub (unreachable: it retries and catches up),
//!   and both are killed with SIGKILL at random points while the workload runs.
//! - An ERP-like PostgreSQL table read by an agent in `diff` mode: `verify` on the hub says
//!   equal; bad tokens, a revoked agent, corrupt, oversized, wrongly encoded and malformed
//!   pushes, a stream the agent may not write and a gap are refused with the documented status
//!   and nothing is applied; a replayed push is answered without being applied twice; an agent
//!   whose folder is lost downloads the hub's rows and then sends only the rows that differ.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use tidesync_core::codec::compress::{Encoding, compress};
use tidesync_core::codec::json::encode_batch;
use tidesync_core::{Batch, BatchKind, Change, Key, LogEntry, Op, Row, Seq, Value};
use tidesync_testkit::{MariaDb, Postgres, free_port};

use crate::util::*;

const TOKEN: &str = "agent-token-0123456789abcdef";

/// A push the hub must refuse: what it is, its headers and body, the status and `code`.
type Refusal<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);

/// One HTTP/1.1 request to the hub; returns the status and the body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(90)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// [`wait_for`], showing the hub's and the agent's logs when it times out.
fn wait_logged<T>(
    what: &str,
    limit: Duration,
    logs: &[&Path],
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if std::time::Instant::now() > deadline {
            let shown: Vec<String> = logs
                .iter()
                .map(|l| format!("--- {}:\n{}", l.display(), log_text(l)))
                .collect();
            panic!(
                "timed out after {limit:?} waiting for {what}\n{}",
                shown.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The MariaDB ERP's products in the model's form, one line per row in key order.
fn erp_products(maria: &MariaDb) -> String {
    maria
        .sql(
            "erp",
            "SET SESSION group_concat_max_len = 1073741824; \
             SELECT COUNT(*), MD5(COALESCE(GROUP_CONCAT(CONCAT_WS('|', art_no, art_name, \
               unit_price, stock_qty) ORDER BY art_no SEPARATOR ';'), '')) FROM articles",
        )
        .unwrap()
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(":")
}

/// The hub's PostgreSQL products in the same form (`None` before the table exists).
fn shop_products(pg: &Postgres) -> Option<String> {
    pg.psql(
        "shop",
        "SELECT count(*) || ':' || md5(coalesce(string_agg(concat_ws('|', sku, title, \
           price, stock), ';' ORDER BY sku COLLATE \"C\"), '')) FROM products \
           WHERE origin = 'erp-main'",
    )
    .ok()
    .map(|s| s.trim().to_owned())
}

#[test]
fn p1_example_mariadb_erp_through_an_agent_into_a_postgres_hub_survives_kills() {
    let maria = MariaDb::start();
    maria.create_database("erp").unwrap();
    // Keys zero-padded ASCII, so MariaDB's collation and byte order agree.
    maria
        .sql(
            "erp",
            "CREATE TABLE articles (art_no VARCHAR(20) PRIMARY KEY, art_name VARCHAR(100), \
               unit_price DECIMAL(12,2), stock_qty INT, modified DATETIME(6) NOT NULL); \
             INSERT INTO articles SELECT CONCAT('A', LPAD(seq, 6, '0')), CONCAT('Article ', seq), \
               seq * 0.25, seq % 100, '2026-01-01 00:00:00' FROM seq_1_to_20000;",
        )
        .unwrap();
    let pg = Postgres::start();
    pg.create_database("shop").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hub");
    let agent_dir = dir.path().join("agent");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (source, target) = (maria.url("erp"), pg.url("shop"));
    let env = [
        ("SOURCE_URL", Path::new(&source)),
        ("TARGET_URL", Path::new(&target)),
        ("STATE_DIR", state.as_path()),
        ("HUB_LISTEN", Path::new(&listen)),
        ("AGENT_TOKEN", Path::new(TOKEN)),
    ];
    // The example as written, but with a full comparison (which finds deletes) every 4 s
    // instead of every 10 minutes.
    let config = example_with(
        dir.path(),
        "hub.toml",
        "deletes_every_secs = 600\n",
        "deletes_every_secs = 4\n",
    );
    let config = config.to_str().unwrap();
    let hub_url = format!("http://{listen}");
    let agent_args = [
        "agent",
        "--hub",
        &hub_url,
        "--token",
        TOKEN,
        "--dir",
        agent_dir.to_str().unwrap(),
    ];
    let (hub_log, agent_log) = (dir.path().join("hub.log"), dir.path().join("agent.log"));
    let mut rng = Rng(seed());

    // The agent first: the hub is unreachable, so it retries with backoff.
    let mut agent = spawn(&agent_args, &[], &agent_log);
    wait_for("the agent retrying", Duration::from_secs(30), || {
        log_text(&agent_log).contains("unreachable").then_some(())
    });
    let mut hub = spawn(&["serve", config], &env, &hub_log);
    let logs = [hub_log.as_path(), agent_log.as_path()];
    wait_logged(
        "the first rows in the shop",
        Duration::from_secs(90),
        &logs,
        || {
            shop_products(&pg)
                .filter(|s| !s.starts_with("0:"))
                .map(|_| ())
        },
    );

    for round in 0..6_u32 {
        // Many rows moved to one shared timestamp, deletes, inserts: separate statements, so
        // that some land in the middle of a poll.
        let shared = format!("'2026-02-{:02} 10:00:00'", round + 1);
        maria
            .sql(
                "erp",
                &format!(
                    "UPDATE articles SET unit_price = unit_price + 1, modified = {shared} \
                       WHERE CAST(SUBSTRING(art_no, 2) AS UNSIGNED) % 40 = {round}; \
                     DELETE FROM articles WHERE CAST(SUBSTRING(art_no, 2) AS UNSIGNED) % 997 = {round}; \
                     INSERT INTO articles SELECT CONCAT('B', {round}, LPAD(seq, 5, '0')), 'new', \
                       1.5, 7, {shared} FROM seq_1_to_300;"
                ),
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(200 + rng.below(2_500)));
        // Kill the agent, the hub or both, at a random point of their work.
        match rng.below(3) {
            0 => {
                agent.kill().unwrap();
                agent.wait().unwrap();
                agent = spawn(&agent_args, &[], &agent_log);
            }
            1 => {
                hub.kill().unwrap();
                hub.wait().unwrap();
                std::thread::sleep(Duration::from_millis(rng.below(1_500)));
                hub = spawn(&["serve", config], &env, &hub_log);
            }
            _ => {
                hub.kill().unwrap();
                agent.kill().unwrap();
                hub.wait().unwrap();
                agent.wait().unwrap();
                agent = spawn(&agent_args, &[], &agent_log);
                std::thread::sleep(Duration::from_millis(rng.below(1_500)));
                hub = spawn(&["serve", config], &env, &hub_log);
            }
        }
    }
    let expected = erp_products(&maria);
    wait_logged(
        "the shop equal to the ERP",
        Duration::from_secs(120),
        &logs,
        || (shop_products(&pg).as_deref() == Some(expected.as_str())).then_some(()),
    );
    // verify reads the ERP's query through the mapping and compares it with the shop.
    let verify = |extra: &[&str]| {
        let mut args = vec!["verify", config, "--settle-secs", "1"];
        args.extend_from_slice(extra);
        let out = run(&args, &env);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = verify(&[]);
    assert_eq!(code, Some(0), "{text}");
    pg.psql(
        "shop",
        "UPDATE products SET title = 'drift' WHERE sku = 'A000007'",
    )
    .unwrap();
    let (code, text) = verify(&[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("A000007"), "{text}");
    stop_cleanly(&mut agent, &agent_log);
    stop_cleanly(&mut hub, &hub_log);
    for log in [&hub_log, &agent_log] {
        let text = log_text(log);
        assert!(text.lines().all(|l| !l.contains("ERROR")), "{}", text);
    }
}

/// The hub's configuration for the PostgreSQL agent: `items` by `diff` into database `shop`,
/// and a second, revoked agent.
fn pg_hub_config(dir: &Path, pg: &Postgres, port: u16) -> std::path::PathBuf {
    let text = format!(
        "[store]\npath = \"{state}\"\n\n[hub]\nlisten = \"127.0.0.1:{port}\"\nmax_body_bytes = 65536\n\n\
         [sources.erp]\nurl = \"{erp}\"\nmode = \"diff\"\ntables = [\"items\"]\ninterval_secs = 1\n\n\
         [sources.old]\nurl = \"{erp}\"\nmode = \"diff\"\ntables = [\"legacy\"]\n\n\
         [sinks.shop]\nurl = \"{shop}\"\n\n\
         [pipelines.erp_items]\nsource = \"erp\"\nsinks = [\"shop\"]\n\n\
         [pipelines.old_items]\nsource = \"old\"\nsinks = [\"shop\"]\n\n\
         [agents.store1]\ntoken = \"{TOKEN}\"\npipeline = \"erp_items\"\n\n\
         [agents.old]\ntoken = \"revoked-token-0123456789\"\npipeline = \"old_items\"\nrevoked = true\n\n\
         [sources.rogue]\nurl = \"{erp}\"\nmode = \"diff\"\ntables = [\"odd\"]\n\n\
         [pipelines.rogue_items]\nsource = \"rogue\"\nsinks = [\"shop\"]\n\n\
         [agents.rogue]\ntoken = \"rogue-token-0123456789ab\"\npipeline = \"rogue_items\"\n",
        state = dir.join("hub/hub.db").display(),
        erp = pg.url("erp"),
        shop = pg.url("shop"),
    );
    let path = dir.join("hub.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn items_sum(pg: &Postgres, db: &str) -> Option<String> {
    pg.psql(
        db,
        "SELECT count(*) || ':' || md5(coalesce(string_agg(concat_ws('|', id, name, price), ';' \
           ORDER BY id), '')) FROM items",
    )
    .ok()
    .map(|s| s.trim().to_owned())
}

/// Waits until the shop's `items` equal the ERP's, then asserts `verify` on the hub exits 0.
fn caught_up_and_verified(pg: &Postgres, config: &str, logs: &[&Path]) {
    let expected = items_sum(pg, "erp").unwrap();
    wait_logged(
        "the shop equal to the ERP",
        Duration::from_secs(90),
        logs,
        || (items_sum(pg, "shop").as_deref() == Some(expected.as_str())).then_some(()),
    );
    let out = run(&["verify", config, "--pipeline", "erp_items"], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn position(port: u16) -> u64 {
    let (status, body) = http(
        port,
        "GET",
        "/v1/agent/position",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["applied_through"].as_u64().unwrap()
}

/// A batch of one insert into `stream` at `seq`.
fn one_insert(pipeline: &str, stream: &str, seq: u64, id: i64) -> Batch {
    Batch {
        pipeline: pipeline.to_owned(),
        kind: BatchKind::Incremental,
        first_seq: Seq(seq),
        last_seq: Seq(seq),
        entries: vec![LogEntry {
            seq: Seq(seq),
            change: Change {
                stream: stream.to_owned(),
                op: Op::Insert,
                key: Key(vec![Value::Int(id)]),
                before: None,
                after: Some(Row(vec![
                    ("id".to_owned(), Value::Int(id)),
                    ("name".to_owned(), Value::Text("intruder".to_owned())),
                ])),
                commit_time_us: 0,
                position: None,
                txn: None,
                unchanged: Vec::new(),
            },
        }],
        position: None,
    }
}

#[test]
fn p1_postgres_agent_refusals_replays_first_start_download_and_verify() {
    let pg = Postgres::start();
    pg.create_database("erp").unwrap();
    pg.create_database("shop").unwrap();
    pg.psql(
        "erp",
        "CREATE TABLE items (id bigint PRIMARY KEY, name text, price numeric(12,2)); \
         INSERT INTO items SELECT g, 'item ' || g, g * 0.5 FROM generate_series(1, 5000) g; \
         CREATE TABLE legacy (id bigint PRIMARY KEY);",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = pg_hub_config(dir.path(), &pg, port);
    let config = config.to_str().unwrap();
    let agent_dir = dir.path().join("agent");
    let hub_url = format!("http://127.0.0.1:{port}");
    let agent_args = [
        "agent",
        "--hub",
        &hub_url,
        "--dir",
        agent_dir.to_str().unwrap(),
        "--config-poll-secs",
        "1",
    ];
    // The token from the environment, as the docs recommend.
    let agent_env = [("TIDESYNC_AGENT_TOKEN", Path::new(TOKEN))];
    let (hub_log, agent_log) = (dir.path().join("hub.log"), dir.path().join("agent.log"));
    let logs = [hub_log.as_path(), agent_log.as_path()];
    let mut hub = spawn(&["serve", config], &[], &hub_log);
    let mut agent = spawn(&agent_args, &agent_env, &agent_log);
    caught_up_and_verified(&pg, config, &logs);
    let expected = items_sum(&pg, "shop").unwrap();

    // Refusals: each answered with its status and code, and nothing applied.
    stop_cleanly(&mut agent, &agent_log);
    let applied = position(port);
    let bearer = format!("Bearer {TOKEN}");
    let auth = ("Authorization", bearer.as_str());
    let zstd = ("Content-Encoding", "zstd");
    let good = encode_batch(&one_insert("erp_items", "items", applied + 1, 900_001));
    // A zstd push of one insert of key 900001 at `seq`.
    let pushed = |pipeline: &str, stream: &str, seq: u64| {
        compress(
            &encode_batch(&one_insert(pipeline, stream, seq, 900_001)),
            Encoding::Zstd,
        )
    };
    // (what, headers, body, status, code)
    let cases: Vec<Refusal> = vec![
        (
            "no token",
            vec![zstd],
            compress(&good, Encoding::Zstd),
            401,
            "unauthorized",
        ),
        (
            "unknown token",
            vec![("Authorization", "Bearer not-a-token-of-this-hub"), zstd],
            compress(&good, Encoding::Zstd),
            401,
            "unauthorized",
        ),
        (
            "revoked token",
            vec![("Authorization", "Bearer revoked-token-0123456789"), zstd],
            compress(&good, Encoding::Zstd),
            403,
            "revoked",
        ),
        (
            "corrupt zstd",
            vec![auth, zstd],
            b"\x28\xb5\x2f\xfd garbage".to_vec(),
            400,
            "bad_encoding",
        ),
        (
            "gzip header on zstd data",
            vec![auth, ("Content-Encoding", "gzip")],
            compress(&good, Encoding::Zstd),
            400,
            "bad_encoding",
        ),
        (
            "unknown encoding",
            vec![auth, ("Content-Encoding", "br")],
            good.clone(),
            415,
            "unsupported_encoding",
        ),
        (
            "over the decompressed limit",
            vec![auth, zstd],
            compress(&vec![b' '; 200_000], Encoding::Zstd),
            413,
            "too_large",
        ),
        (
            "not JSON",
            vec![auth],
            b"{\"pipeline\": ".to_vec(),
            400,
            "bad_json",
        ),
        (
            "another pipeline",
            vec![auth, zstd],
            pushed("old_items", "items", applied + 1),
            422,
            "bad_batch",
        ),
        (
            "a stream the agent may not write",
            vec![auth, zstd],
            pushed("erp_items", "legacy", applied + 1),
            403,
            "forbidden_stream",
        ),
        (
            "a gap",
            vec![auth, zstd],
            pushed("erp_items", "items", applied + 5),
            409,
            "gap",
        ),
    ];
    for (what, headers, body, status, code) in cases {
        let (got, text) = http(port, "POST", "/v1/agent/batches", &headers, &body);
        assert_eq!(got, status, "{what}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["code"], code, "{what}: {text}");
        assert!(!v["error"].as_str().unwrap().is_empty(), "{what}: {text}");
        assert!(!text.contains(TOKEN), "{what}: the answer shows the token");
    }
    assert_eq!(position(port), applied, "a refused push moved the position");
    assert_eq!(items_sum(&pg, "shop").unwrap(), expected);

    // An agent whose data its target refuses (text into an integer column) stops only its
    // own pipeline: the hub goes on serving the others (the rest of this test).
    let rogue = ("Authorization", "Bearer rogue-token-0123456789ab");
    let schemas = serde_json::json!({"schemas": [{
        "name": "odd",
        "columns": [
            {"name": "id", "type_name": "int8", "nullable": false},
            {"name": "n", "type_name": "int4", "nullable": true}
        ],
        "key": ["id"],
        "dialect": "postgres"
    }]});
    // Schemas come from outside: a type name that could smuggle SQL into the target's
    // CREATE TABLE is refused.
    let smuggled = schemas
        .to_string()
        .replace("\"int4\"", "\"int4); DROP TABLE items; --\"");
    let (got, text) = http(
        port,
        "PUT",
        "/v1/agent/schemas",
        &[rogue],
        smuggled.as_bytes(),
    );
    assert_eq!(got, 422, "{text}");
    assert!(text.contains("bad_schema"), "{text}");
    let (got, text) = http(
        port,
        "PUT",
        "/v1/agent/schemas",
        &[rogue],
        schemas.to_string().as_bytes(),
    );
    assert_eq!(got, 200, "{text}");
    let mut bad = one_insert("rogue_items", "odd", 1, 1);
    bad.entries[0].change.after = Some(Row(vec![
        ("id".to_owned(), Value::Int(1)),
        ("n".to_owned(), Value::Text("not a number".to_owned())),
    ]));
    let (got, text) = http(
        port,
        "POST",
        "/v1/agent/batches",
        &[rogue],
        &encode_batch(&bad),
    );
    assert_eq!(got, 200, "{text}");
    wait_logged(
        "the rogue pipeline's failure",
        Duration::from_secs(30),
        &logs,
        || {
            log_text(&hub_log)
                .contains("the agent's pipeline stopped; the hub serves the other agents")
                .then_some(())
        },
    );
    assert_eq!(position(port), applied);

    // A push replayed below the hub's seq is answered with that seq and applied nothing,
    // whether plain JSON or gzip.
    let replay = encode_batch(&one_insert("erp_items", "items", applied, 900_002));
    let gzip = compress(&replay, Encoding::Gzip);
    for (headers, body) in [
        (vec![auth], &replay),
        (vec![auth, ("Content-Encoding", "gzip")], &gzip),
    ] {
        let (got, text) = http(port, "POST", "/v1/agent/batches", &headers, body);
        assert_eq!(got, 200, "{text}");
        assert!(
            text.contains(&format!("\"applied_through\":{applied}")),
            "{text}"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(items_sum(&pg, "shop").unwrap(), expected);

    // The agent's folder is lost; meanwhile three rows changed. The new agent downloads the
    // hub's rows and sends only those three.
    std::fs::remove_dir_all(&agent_dir).unwrap();
    pg.psql(
        "erp",
        "UPDATE items SET name = 'changed' WHERE id IN (10, 20, 30)",
    )
    .unwrap();
    let info = [
        ("TIDESYNC_AGENT_TOKEN", Path::new(TOKEN)),
        ("TIDESYNC_LOG", Path::new("info")),
    ];
    let mut agent = spawn(&agent_args, &info, &agent_log);
    let expected = items_sum(&pg, "erp").unwrap();
    wait_logged(
        "the three changes in the shop",
        Duration::from_secs(90),
        &logs,
        || (items_sum(&pg, "shop").as_deref() == Some(expected.as_str())).then_some(()),
    );
    let text = log_text(&agent_log);
    assert!(text.contains("downloaded stream=items rows=5000"), "{text}");
    // Further runs find nothing: exactly the three changes were pushed.
    wait_logged(
        "two more comparisons",
        Duration::from_secs(30),
        &logs,
        || (log_text(&agent_log).matches(": diff run complete ").count() >= 3).then_some(()),
    );
    assert_eq!(position(port), applied + 3);
    // The agent's own status, from the configuration it writes for that.
    let out = run(
        &["status", agent_dir.join("agent.toml").to_str().unwrap()],
        &agent_env,
    );
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{status}");
    assert!(status.contains("pipeline erp_items"), "{status}");
    assert!(status.contains("sink hub"), "{status}");

    // Killed hub: the agent keeps capturing, retries, and catches up once the hub is back.
    hub.kill().unwrap();
    hub.wait().unwrap();
    pg.psql(
        "erp",
        "DELETE FROM items WHERE id <= 100; UPDATE items SET price = 1 WHERE id > 4900",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(2_500));
    let mut hub = spawn(&["serve", config], &[], &hub_log);
    caught_up_and_verified(&pg, config, &logs);

    // A second agent with the same token (another folder, e.g. a copied setup) is refused
    // while the first one holds the token, so the two cannot number changes alike.
    let second_dir = dir.path().join("second");
    let second_log = dir.path().join("second.log");
    let mut second = spawn(
        &[
            "agent",
            "--hub",
            &hub_url,
            "--dir",
            second_dir.to_str().unwrap(),
        ],
        &agent_env,
        &second_log,
    );
    wait_logged(
        "the second agent refused",
        Duration::from_secs(30),
        &logs,
        || {
            log_text(&second_log)
                .contains("run one agent per token")
                .then_some(())
        },
    );
    pg.psql(
        "erp",
        "UPDATE items SET name = 'still the first' WHERE id = 4000",
    )
    .unwrap();
    caught_up_and_verified(&pg, config, &logs);
    stop_cleanly(&mut second, &second_log);

    // Central configuration: the hub's source gets a second table. The running agent sees
    // its new settings, restarts its pipeline with them, and the new stream reaches the shop
    // (the hub restarts its side when the agent's schemas change).
    pg.psql(
        "erp",
        "CREATE TABLE extra (code text PRIMARY KEY, n int); \
         INSERT INTO extra SELECT 'c' || g, g FROM generate_series(1, 300) g;",
    )
    .unwrap();
    stop_cleanly(&mut hub, &hub_log);
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(
        config,
        text.replace("tables = [\"items\"]", "tables = [\"items\", \"extra\"]"),
    )
    .unwrap();
    let mut hub = spawn(&["serve", config], &[], &hub_log);
    wait_logged(
        "the new stream in the shop",
        Duration::from_secs(60),
        &logs,
        || {
            pg.psql("shop", "SELECT count(*) || ':' || sum(n) FROM extra")
                .ok()
                .filter(|s| s.trim() == "300:45150")
                .map(|_| ())
        },
    );
    assert!(
        log_text(&agent_log).contains("the hub changed this agent's settings"),
        "{}",
        log_text(&agent_log)
    );
    stop_cleanly(&mut agent, &agent_log);
    stop_cleanly(&mut hub, &hub_log);
}

/// Runs `program args` to success (test set-up tools: openssl).
fn tool(dir: &Path, program: &str, args: &[&str]) {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (installed by .ci/install-servers.sh)"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A hub behind TLS (socat terminating it with a certificate of a private CA): the agent
/// reaches it over https:// with `--ca-cert`; without, it refuses the certificate. The
/// example's query on a SQLite ERP into a SQLite shop.
#[test]
fn p1_agent_over_https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool(
        d,
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=tidesync test CA",
        ],
    );
    tool(
        d,
        "openssl",
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    tool(
        d,
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    let erp = d.join("erp.db");
    rusqlite::Connection::open(&erp)
        .unwrap()
        .execute_batch(
            "CREATE TABLE articles (art_no TEXT PRIMARY KEY, art_name TEXT, unit_price NUMERIC, \
               stock_qty INTEGER, modified TEXT NOT NULL); \
             WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 300) \
             INSERT INTO articles SELECT printf('A%05d', i), 'Article ' || i, i * 0.25, i % 100, \
               '2026-01-01 00:00:00' FROM g;",
        )
        .unwrap();
    let (hub_port, tls_port) = (free_port(), free_port());
    let (shop, state, listen) = (
        d.join("shop.db"),
        d.join("hub"),
        format!("127.0.0.1:{hub_port}"),
    );
    let env = [
        ("SOURCE_URL", erp.as_path()),
        ("TARGET_URL", shop.as_path()),
        ("STATE_DIR", state.as_path()),
        ("HUB_LISTEN", Path::new(&listen)),
        ("AGENT_TOKEN", Path::new(TOKEN)),
    ];
    let config = example("hub.toml");
    let hub_log = d.join("hub.log");
    let mut hub = spawn(&["serve", config.to_str().unwrap()], &env, &hub_log);
    let socat = std::process::Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{tls_port},reuseaddr,fork,cert={},key={},verify=0",
            d.join("server.pem").display(),
            d.join("server.key").display()
        ))
        .arg(format!("TCP:127.0.0.1:{hub_port}"))
        // Its complaints about the untrusting agent's handshakes are expected.
        .stderr(std::fs::File::create(d.join("socat.log")).unwrap())
        .spawn()
        .expect("socat (installed by .ci/install-servers.sh)");
    let _socat = KilledOnDrop(socat);
    let url = format!("https://localhost:{tls_port}");
    let token_env = [("TIDESYNC_AGENT_TOKEN", Path::new(TOKEN))];
    let (trusting, untrusting) = (d.join("agent.log"), d.join("agent2.log"));
    let ca = d.join("ca.pem");
    let agent_dir = d.join("agent");
    let mut agent = spawn(
        &[
            "agent",
            "--hub",
            &url,
            "--dir",
            agent_dir.to_str().unwrap(),
            "--ca-cert",
            ca.to_str().unwrap(),
        ],
        &token_env,
        &trusting,
    );
    let other_dir = d.join("agent2");
    let mut other = spawn(
        &["agent", "--hub", &url, "--dir", other_dir.to_str().unwrap()],
        &token_env,
        &untrusting,
    );
    let logs = [hub_log.as_path(), trusting.as_path(), untrusting.as_path()];
    wait_logged(
        "the articles in the shop over https",
        Duration::from_secs(60),
        &logs,
        || {
            sqlite_lines(&shop, "SELECT count(*) || ':' || sum(stock) FROM products")
                .filter(|s| s == "300:14850")
                .map(|_| ())
        },
    );
    wait_logged(
        "the untrusting agent's refusal",
        Duration::from_secs(30),
        &logs,
        || {
            log_text(&untrusting)
                .contains("invalid peer certificate: UnknownIssuer")
                .then_some(())
        },
    );
    stop_cleanly(&mut other, &untrusting);
    stop_cleanly(&mut agent, &trusting);
    stop_cleanly(&mut hub, &hub_log);
}

/// A helper process (socat) stopped when the test ends, passed or not.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        // Best effort in a drop: it may have exited already, and nothing is left to report to.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
