//! Named failpoints for crash tests: `TIDESYNC_FAILPOINTS=name:n[,name:n]` makes the process
//! abort (as abruptly as kill -9: no destructors, no flushing) the n-th time it reaches the
//! point called `name`. Unset, a failpoint costs one relaxed atomic load.
//!
//! Points, at each commit/ack boundary of the pipeline:
//! - `store-before-commit`: the log append is written but not committed;
//! - `after-append`: the log append committed, the source not yet acknowledged;
//! - `after-apply`: a sink's target committed a batch, the store's cursor not yet moved.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Armed {
    name: String,
    at: u64,
    hits: AtomicU64,
}

fn armed() -> &'static [Armed] {
    static ARMED: OnceLock<Vec<Armed>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("TIDESYNC_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|spec| {
                let (name, at) = spec.trim().split_once(':')?;
                Some(Armed {
                    name: name.to_owned(),
                    at: at.parse().ok()?,
                    hits: AtomicU64::new(0),
                })
            })
            .collect()
    })
}

/// Aborts the process if the failpoint `name` is armed and this is its n-th hit.
pub fn hit(name: &str) {
    for point in armed().iter().filter(|p| p.name == name) {
        if point.hits.fetch_add(1, Ordering::Relaxed) + 1 == point.at {
            eprintln!("failpoint {name} fired: aborting");
            std::process::abort();
        }
    }
}
