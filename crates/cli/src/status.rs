//! `tidesync status`: where each pipeline stands, read from the store (works beside a running
//! `tidesync run`: the store is opened read-only and WAL lets it read while `run` writes).

use anyhow::Context;
use serde_json::json;
use tidesync_core::RequestKind;
use tidesync_core::time::format_timestamp;
use tidesync_engine::Config;
use tidesync_store::{RequestState, SqliteStore};

pub(crate) fn print(config: &Config, as_json: bool) -> anyhow::Result<()> {
    let store = SqliteStore::open_read_only(&config.store.path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut out = Vec::new();
    for p in &config.pipelines {
        let st = store
            .status_blocking(&p.name)
            .with_context(|| format!("reading the status of pipeline {}", p.name))?;
        let sinks: Vec<_> = p
            .sinks
            .iter()
            .map(|name| {
                let cursor = st.cursors.iter().find(|(c, _)| c == name).map(|(_, s)| s.0);
                (
                    name.clone(),
                    cursor,
                    cursor.map(|c| st.head.0.saturating_sub(c)),
                )
            })
            .collect();
        // What the source keeps for us (e.g. WAL held by a replication slot); a source that
        // cannot be reached does not stop status.
        let asked = runtime.block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                tidesync_engine::source_status(config, p, st.position.as_ref()),
            )
            .await
        });
        let upstream = match asked {
            Ok(Ok(lines)) => lines,
            Ok(Err(e)) => vec![("source".to_owned(), format!("not reachable: {e}"))],
            Err(_) => vec![("source".to_owned(), "did not answer within 10 s".to_owned())],
        };
        // Re-read requests (`verify --repair`, `backfill`) not yet served, and failed ones.
        let requests: Vec<(i64, String, String, String)> = store
            .requests(&p.name, false)
            .with_context(|| format!("reading the requests of pipeline {}", p.name))?
            .into_iter()
            .filter(|r| !matches!(r.state, RequestState::Done(_)))
            .map(|r| {
                let what = match &r.request.what {
                    RequestKind::Keys(keys) => format!("{} keys", keys.len()),
                    RequestKind::Table { .. } => "whole table".to_owned(),
                };
                let state = match r.state {
                    RequestState::Failed(e) => format!("failed: {e}"),
                    _ => "pending".to_owned(),
                };
                (r.request.id, r.request.stream, what, state)
            })
            .collect();
        if as_json {
            out.push(json!({
                "requests": requests.iter().map(|(id, table, what, state)| json!({
                    "id": id, "table": table, "what": what, "state": state,
                })).collect::<Vec<_>>(),
                "upstream": upstream.iter().map(|(label, text)| json!({
                    "what": label, "state": text,
                })).collect::<Vec<_>>(),
                "pipeline": p.name,
                "source": p.source,
                "position": st.position.as_ref().map(ToString::to_string),
                "head_seq": st.head.0,
                "oldest_seq": st.tail.0,
                "head_commit_time": st.head_commit_time_us.map(format_timestamp),
                "sinks": sinks.iter().map(|(name, cursor, lag)| json!({
                    "sink": name, "cursor": cursor, "lag": lag,
                })).collect::<Vec<_>>(),
            }));
            continue;
        }
        println!("pipeline {} (source {})", p.name, p.source);
        match &st.position {
            Some(pos) => println!("  source position  {pos}"),
            None => println!("  source position  none yet (not started)"),
        }
        let age = st
            .head_commit_time_us
            .map(|t| {
                format!(
                    ", last change committed {} ({:.1} s ago)",
                    format_timestamp(t),
                    (tidesync_core::time::now_us() - t) as f64 / 1e6
                )
            })
            .unwrap_or_default();
        println!(
            "  log              head seq {}, oldest kept seq {}{age}",
            st.head, st.tail
        );
        for (label, text) in &upstream {
            println!("  {label:<16} {text}");
        }
        for (name, cursor, lag) in &sinks {
            match (cursor, lag) {
                (Some(c), Some(l)) => println!("  sink {name:<11} cursor {c}, lag {l} changes"),
                _ => println!("  sink {name:<11} not started"),
            }
        }
        for (id, table, what, state) in &requests {
            println!("  request {id:<8} {table}: re-read {what}, {state}");
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}
