//! Smoke tests: every server starts, answers a real request over its own protocol, restarts,
//! and leaves nothing behind when dropped.

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// Connects to `127.0.0.1:port` with timeouts so a broken server fails the test quickly.
fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the server");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set read timeout");
    stream
}

fn read_line(reader: &mut impl BufRead) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).expect("read a line");
    line.trim_end().to_owned()
}

fn assert_process_gone(pid: u32) {
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} still exists after drop"
    );
}

mod postgres {
    use std::process::Command;

    use tidesync_testkit::Postgres;

    use super::assert_process_gone;

    #[test]
    fn postgres_starts_with_logical_wal_level() {
        let pg = Postgres::start();
        assert_eq!(
            pg.psql("postgres", "SHOW wal_level").expect("psql"),
            "logical"
        );
        assert_eq!(
            pg.psql(
                "postgres",
                "SHOW max_replication_slots; SHOW max_wal_senders; SHOW fsync"
            )
            .expect("psql"),
            "20\n20\noff"
        );
        assert_eq!(
            pg.url("app"),
            format!("postgres://postgres@127.0.0.1:{}/app", pg.port())
        );
        assert!(
            pg.socket_dir()
                .join(format!(".s.PGSQL.{}", pg.port()))
                .exists()
        );
    }

    #[test]
    fn postgres_accepts_replication_connections() {
        let pg = Postgres::start();
        let output = Command::new(pg.bin_dir().join("psql"))
            .args(["-X", "-A", "-t", "-h", pg.host(), "-U", pg.user()])
            .args([
                "-p",
                &pg.port().to_string(),
                "-d",
                "dbname=postgres replication=database",
            ])
            .args(["-c", "IDENTIFY_SYSTEM"])
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "replication connection refused: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    fn postgres_psql_error_carries_stderr() {
        let pg = Postgres::start();
        let error = pg
            .psql("postgres", "SELECT nope")
            .expect_err("the column does not exist");
        let message = error.to_string();
        assert!(
            message.contains("column \"nope\" does not exist"),
            "{message}"
        );
    }

    #[test]
    fn postgres_builder_overrides_settings() {
        let pg = Postgres::builder()
            .setting("wal_level", "replica")
            .setting("fsync", "on")
            .start();
        assert_eq!(
            pg.psql("postgres", "SHOW wal_level; SHOW fsync")
                .expect("psql"),
            "replica\non"
        );
    }

    #[test]
    fn postgres_startup_failure_quotes_the_log() {
        let error = Postgres::builder()
            .setting("wal_level", "bogus")
            .try_start()
            .expect_err("wal_level=bogus is invalid");
        let message = error.to_string();
        assert!(
            message.contains("PostgreSQL exited during startup"),
            "{message}"
        );
        assert!(
            message.contains("invalid value for parameter \"wal_level\""),
            "{message}"
        );
    }

    #[test]
    fn postgres_with_password_requires_it_over_tcp() {
        let pg = Postgres::builder().password("s3cret pw").start();
        assert_eq!(
            pg.psql("postgres", "SELECT current_user").expect("psql"),
            "postgres"
        );
        assert_eq!(
            pg.url("db"),
            format!("postgres://postgres:s3cret%20pw@127.0.0.1:{}/db", pg.port())
        );
        let wrong = Command::new(pg.bin_dir().join("psql"))
            .args([
                "-X",
                "-h",
                pg.host(),
                "-U",
                pg.user(),
                "-p",
                &pg.port().to_string(),
            ])
            .args(["-d", "postgres", "-c", "SELECT 1"])
            .env("PGPASSWORD", "wrong")
            .output()
            .expect("run psql");
        assert!(!wrong.status.success());
        assert!(
            String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"),
            "{}",
            String::from_utf8_lossy(&wrong.stderr)
        );
    }

    #[test]
    fn postgres_keeps_data_across_restart_and_cleans_up_on_drop() {
        let mut pg = Postgres::start();
        pg.create_database("app").expect("create database");
        pg.psql(
            "app",
            "CREATE TABLE t (id int primary key); INSERT INTO t VALUES (1), (2);",
        )
        .expect("create table");
        let (port, first_pid) = (pg.port(), pg.pid().expect("running"));

        pg.restart().expect("restart");
        assert_eq!(pg.port(), port);
        assert_ne!(pg.pid(), Some(first_pid));
        assert_process_gone(first_pid);
        assert_eq!(
            pg.psql("app", "SELECT id FROM t ORDER BY id")
                .expect("query"),
            "1\n2"
        );

        pg.stop().expect("stop");
        assert!(!pg.is_running());
        assert!(pg.psql("app", "SELECT 1").is_err());
        pg.start_again().expect("start again");
        assert_eq!(
            pg.psql("app", "SELECT count(*) FROM t").expect("query"),
            "2"
        );

        let (pid, data_dir) = (pg.pid().expect("running"), pg.data_dir());
        drop(pg);
        assert_process_gone(pid);
        assert!(
            !data_dir.exists(),
            "{} survived the drop",
            data_dir.display()
        );
    }
}

mod mariadb {
    use tidesync_testkit::MariaDb;

    #[test]
    fn mariadb_starts_with_row_binlog() {
        let db = MariaDb::start();
        assert_eq!(
            db.sql("", "SELECT @@binlog_format, @@log_bin, @@binlog_row_image")
                .expect("query"),
            "ROW\t1\tFULL"
        );
        assert_eq!(
            db.url("app"),
            format!("mysql://root@127.0.0.1:{}/app", db.port())
        );
        assert!(db.socket_path().exists());
    }

    #[test]
    fn mariadb_builder_args_override_defaults() {
        let db = MariaDb::builder()
            .args(["--skip-log-bin", "--binlog-format=STATEMENT"])
            .start();
        assert_eq!(
            db.sql("", "SELECT @@log_bin, @@binlog_format")
                .expect("query"),
            "0\tSTATEMENT"
        );
    }

    #[test]
    fn mariadb_startup_failure_quotes_the_log() {
        let error = MariaDb::builder()
            .arg("--binlog-format=BOGUS")
            .try_start()
            .expect_err("BOGUS is not a binlog format");
        let message = error.to_string();
        assert!(
            message.contains("MariaDB exited during startup"),
            "{message}"
        );
        assert!(message.contains("BOGUS"), "{message}");
    }

    #[test]
    fn mariadb_keeps_data_across_restart() {
        let mut db = MariaDb::start();
        db.create_database("app").expect("create database");
        db.sql(
            "app",
            "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1), (2);",
        )
        .expect("create table");
        let port = db.port();
        db.restart().expect("restart");
        assert_eq!(db.port(), port);
        assert_eq!(
            db.sql("app", "SELECT id FROM t ORDER BY id")
                .expect("query"),
            "1\n2"
        );
        let error = db
            .sql("app", "SELECT nope FROM t")
            .expect_err("unknown column");
        assert!(error.to_string().contains("Unknown column"), "{error}");
    }
}

mod nats {
    use std::io::{BufReader, Write};

    use tidesync_testkit::Nats;

    use super::{connect, read_line};

    #[test]
    fn nats_starts_with_jetstream() {
        let nats = Nats::start();
        let info = nats.server_info().expect("server info");
        assert!(info.contains("\"jetstream\":true"), "{info}");
        assert_eq!(nats.url(), format!("nats://127.0.0.1:{}", nats.port()));

        // Publish to a subject we subscribed to, over the raw protocol.
        let stream = connect(nats.port());
        let mut reader = BufReader::new(&stream);
        assert!(read_line(&mut reader).starts_with("INFO "));
        (&stream)
            .write_all(b"CONNECT {\"verbose\":false}\r\nSUB greet 1\r\nPUB greet 5\r\nhello\r\n")
            .expect("write");
        assert_eq!(read_line(&mut reader), "MSG greet 1 5");
        assert_eq!(read_line(&mut reader), "hello");
    }
}

mod redis {
    use std::io::{BufReader, Write};

    use tidesync_testkit::Redis;

    use super::{assert_process_gone, connect, read_line};

    #[test]
    fn redis_answers_ping() {
        let redis = Redis::start();
        let stream = connect(redis.port());
        (&stream).write_all(b"PING\r\n").expect("write");
        assert_eq!(read_line(&mut BufReader::new(&stream)), "+PONG");
        assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    }

    #[test]
    fn redis_drop_stops_the_process_and_deletes_its_folder() {
        let redis = Redis::start();
        let (pid, dir) = (redis.pid().expect("running"), redis.dir().to_path_buf());
        assert!(dir.exists());
        drop(redis);
        assert_process_gone(pid);
        assert!(!dir.exists(), "{} survived the drop", dir.display());
    }
}

mod memcached {
    use std::io::{BufReader, Write};

    use tidesync_testkit::Memcached;

    use super::{connect, read_line};

    #[test]
    fn memcached_roundtrips_set_and_get() {
        let memcached = Memcached::start();
        let stream = connect(memcached.port());
        let mut reader = BufReader::new(&stream);
        (&stream)
            .write_all(b"set greeting 0 0 5\r\nhello\r\n")
            .expect("write");
        assert_eq!(read_line(&mut reader), "STORED");
        (&stream).write_all(b"get greeting\r\n").expect("write");
        assert_eq!(read_line(&mut reader), "VALUE greeting 0 5");
        assert_eq!(read_line(&mut reader), "hello");
        assert_eq!(read_line(&mut reader), "END");
        assert_eq!(memcached.addr(), format!("127.0.0.1:{}", memcached.port()));
    }
}

mod rabbitmq {
    use tidesync_testkit::RabbitMq;

    use super::{Read, Write, assert_process_gone, connect};

    /// Reads one AMQP frame: (type, payload).
    fn read_frame(stream: &mut impl Read) -> (u8, Vec<u8>) {
        let mut header = [0_u8; 7];
        stream.read_exact(&mut header).expect("read frame header");
        let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]);
        let mut payload = vec![0_u8; usize::try_from(size).expect("frame size") + 1];
        stream.read_exact(&mut payload).expect("read frame payload");
        assert_eq!(payload.pop(), Some(0xCE), "frame end marker");
        (header[0], payload)
    }

    fn method_ids(payload: &[u8]) -> (u16, u16) {
        (
            u16::from_be_bytes([payload[0], payload[1]]),
            u16::from_be_bytes([payload[2], payload[3]]),
        )
    }

    fn write_method(stream: &mut impl Write, class: u16, method: u16, arguments: &[u8]) {
        let mut payload = [class.to_be_bytes(), method.to_be_bytes()].concat();
        payload.extend_from_slice(arguments);
        let size = u32::try_from(payload.len()).expect("small frame");
        let mut frame = vec![1, 0, 0];
        frame.extend_from_slice(&size.to_be_bytes());
        frame.extend_from_slice(&payload);
        frame.push(0xCE);
        stream.write_all(&frame).expect("write frame");
    }

    fn short_string(text: &str) -> Vec<u8> {
        let mut bytes = vec![u8::try_from(text.len()).expect("short string")];
        bytes.extend_from_slice(text.as_bytes());
        bytes
    }

    /// Logs in as guest and opens `vhost`; Err holds the broker's Connection.Close text.
    fn amqp_open(port: u16, vhost: &str) -> Result<(), String> {
        let mut stream = connect(port);
        stream
            .write_all(b"AMQP\x00\x00\x09\x01")
            .expect("write header");
        let (frame_type, start) = read_frame(&mut stream);
        assert_eq!(frame_type, 1, "method frame");
        assert_eq!(method_ids(&start), (10, 10), "Connection.Start");
        assert_eq!(&start[4..6], &[0, 9], "AMQP version 0-9");

        // Connection.Start-Ok: no client properties, PLAIN guest/guest, en_US.
        let response = b"\0guest\0guest";
        let mut start_ok = 0_u32.to_be_bytes().to_vec();
        start_ok.extend(short_string("PLAIN"));
        start_ok.extend_from_slice(&u32::try_from(response.len()).expect("len").to_be_bytes());
        start_ok.extend_from_slice(response);
        start_ok.extend(short_string("en_US"));
        write_method(&mut stream, 10, 11, &start_ok);

        let (_, tune) = read_frame(&mut stream);
        assert_eq!(method_ids(&tune), (10, 30), "Connection.Tune");
        // Connection.Tune-Ok: echo channel-max and frame-max, no heartbeats.
        let mut tune_ok = tune[4..10].to_vec();
        tune_ok.extend_from_slice(&0_u16.to_be_bytes());
        write_method(&mut stream, 10, 31, &tune_ok);

        let mut open = short_string(vhost);
        open.extend([0, 0]); // reserved short string, reserved bit
        write_method(&mut stream, 10, 40, &open);
        let (_, reply) = read_frame(&mut stream);
        match method_ids(&reply) {
            (10, 41) => Ok(()),
            (10, 50) => Err(String::from_utf8_lossy(&reply[7..]).into_owned()),
            other => panic!("unexpected method {other:?} after Connection.Open"),
        }
    }

    #[test]
    fn rabbitmq_speaks_amqp_and_creates_vhosts() {
        let rabbit = RabbitMq::start();
        assert_eq!(
            rabbit.amqp_url(),
            format!("amqp://guest:guest@127.0.0.1:{}/%2F", rabbit.port())
        );
        amqp_open(rabbit.port(), "/").expect("guest may open the default vhost");

        let error = amqp_open(rabbit.port(), "fresh").expect_err("no such vhost yet");
        assert!(error.contains("fresh"), "{error}");
        rabbit.add_vhost("fresh").expect("add vhost");
        amqp_open(rabbit.port(), "fresh").expect("guest may open the new vhost");

        let pid = rabbit.pid().expect("running");
        drop(rabbit);
        assert_process_gone(pid);
    }
}
