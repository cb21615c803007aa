//! Real servers for tidesync's integration tests.
//!
//! Each type starts its own server from the locally installed Debian binaries, listening on
//! `127.0.0.1` on a random free port, with all its files (data, socket, log) in a fresh
//! temporary folder. Dropping the value stops the server (SIGTERM, or SIGINT for PostgreSQL;
//! SIGKILL after 20 s) and deletes the folder, so tests can run in parallel without sharing
//! anything.
//!
//! | type          | Debian package(s)                  | address                                  |
//! |---------------|------------------------------------|------------------------------------------|
//! | [`Postgres`]  | `postgresql`                       | [`Postgres::url`]: `postgres://postgres@127.0.0.1:PORT/db` |
//! | [`MariaDb`]   | `mariadb-server`, `mariadb-client` | [`MariaDb::url`]: `mysql://root@127.0.0.1:PORT/db` |
//! | [`Nats`]      | `nats-server`                      | [`Nats::url`]: `nats://127.0.0.1:PORT` (JetStream on) |
//! | [`Redis`]     | `redis-server`                     | [`Redis::url`]: `redis://127.0.0.1:PORT` |
//! | [`RabbitMq`]  | `rabbitmq-server`                  | [`RabbitMq::amqp_url`]: `amqp://guest:guest@127.0.0.1:PORT/%2f` |
//! | [`Memcached`] | `memcached`                        | [`Memcached::addr`]: `127.0.0.1:PORT`    |
//!
//! `.ci/install-servers.sh` installs them all. A missing program is an error naming the
//! package to install, never a skipped test.
//!
//! Every type has `start()`, which panics with a readable message (what tests want), and
//! `try_start()`, which returns a [`TestkitError`]. A server is ready when it answers a real
//! request (a query, `PING`, an AMQP handshake, ...); if it exits or stays unready past its
//! deadline, the error quotes the end of its log. Every server can also be stopped and
//! started again on the same port and data (`stop`, `start_again`, `restart`), e.g. to
//! restart a source database in the middle of a sync.
//!
//! When the tests run as root, PostgreSQL runs as the `postgres` account and MariaDB as
//! `mysql`: the temporary folder is then handed to that account (so `TMPDIR` must be
//! traversable by it, as `/tmp` is).
//!
//! Statics are never dropped: a server kept in a `static` outlives the test binary. Start one
//! per test instead (PostgreSQL, MariaDB and the small servers start in about a second).
//!
//! ```no_run
//! use tidesync_testkit::Postgres;
//!
//! let mut pg = Postgres::builder().setting("wal_level", "replica").start();
//! assert_eq!(pg.psql("postgres", "SHOW wal_level").unwrap(), "replica");
//! pg.restart().unwrap();
//! ```

mod error;
mod mariadb;
mod memcached;
mod nats;
mod os_user;
mod postgres;
mod process;
mod rabbitmq;
mod redis;
mod signal;
mod util;

pub use error::TestkitError;
pub use mariadb::{MariaDb, MariaDbBuilder};
pub use memcached::Memcached;
pub use nats::Nats;
pub use postgres::{Postgres, PostgresBuilder};
pub use rabbitmq::RabbitMq;
pub use redis::Redis;
pub use util::free_port;
