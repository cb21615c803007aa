#![allow(clippy::unwrap_used)]

use std::cell::Cell;

use tidesync_core::{BatchKind, Value};

use super::*;

thread_local! {
    /// When set, `append` fails after writing this many changes (inside its transaction).
    static FAIL_AFTER: Cell<Option<i64>> = const { Cell::new(None) };
}

pub(crate) fn failpoint(written: i64) -> Result<(), StoreError> {
    if FAIL_AFTER.get() == Some(written) {
        return Err(StoreError::Sqlite {
            context: "failpoint",
            source: rusqlite::Error::InvalidQuery,
        });
    }
    Ok(())
}

fn change(op: Op, id: i64, qty: Option<i64>) -> Change {
    let row = |q: i64| {
        Row(vec![
            ("id".into(), Value::Int(id)),
            ("qty".into(), Value::Int(q)),
        ])
    };
    Change {
        stream: "items".into(),
        op,
        key: Key(vec![Value::Int(id)]),
        before: None,
        after: qty.map(row),
        commit_time_us: 1_000 + id,
        position: Some(Position::RowId(id)),
        txn: None,
        unchanged: Vec::new(),
    }
}

fn captured(changes: Vec<Change>, pos: i64) -> Captured {
    Captured {
        refreshed: Vec::new(),
        fingerprints: Vec::new(),
        kind: BatchKind::Incremental,
        changes,
        position: Position::RowId(pos),
        progress: None,
    }
}

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("state/tidesync.db")).unwrap();
    (dir, store)
}

#[test]
fn appended_changes_read_back_in_seq_order() {
    let (_dir, s) = store();
    let batch = vec![
        change(Op::Insert, 1, Some(5)),
        change(Op::Update, 1, Some(6)),
    ];
    assert_eq!(
        s.append_blocking("p", &captured(batch.clone(), 2)).unwrap(),
        Some((Seq(1), Seq(2)))
    );
    let more = vec![change(Op::Delete, 1, None)];
    assert_eq!(
        s.append_blocking("p", &captured(more.clone(), 3)).unwrap(),
        Some((Seq(3), Seq(3)))
    );
    let read = s.read_blocking("p", Seq(0), 10).unwrap();
    let seqs: Vec<u64> = read.iter().map(|e| e.seq.0).collect();
    assert_eq!(seqs, [1, 2, 3]);
    let changes: Vec<Change> = read.into_iter().map(|e| e.change).collect();
    assert_eq!(changes, [batch, more].concat());
    assert_eq!(s.read_blocking("p", Seq(2), 10).unwrap().len(), 1);
    assert_eq!(s.read_blocking("p", Seq(0), 1).unwrap().len(), 1);
    // Pipelines are independent logs.
    assert!(s.read_blocking("other", Seq(0), 10).unwrap().is_empty());
}

#[test]
fn current_state_follows_upserts_and_deletes() {
    let (_dir, s) = store();
    let key = Key(vec![Value::Int(1)]);
    s.append_blocking("p", &captured(vec![change(Op::Insert, 1, Some(5))], 1))
        .unwrap();
    s.append_blocking("p", &captured(vec![change(Op::Update, 1, Some(7))], 2))
        .unwrap();
    let (row, seq) = s.current_row("p", "items", &key).unwrap().unwrap();
    assert_eq!(row.get("qty"), Some(&Value::Int(7)));
    assert_eq!(seq, Seq(2));
    assert_eq!(s.current_counts("p").unwrap(), [("items".to_owned(), 1)]);
    s.append_blocking("p", &captured(vec![change(Op::Delete, 1, None)], 3))
        .unwrap();
    assert_eq!(s.current_row("p", "items", &key).unwrap(), None);
}

#[test]
fn position_and_head_commit_with_the_batch() {
    let (_dir, s) = store();
    s.append_blocking("p", &captured(vec![change(Op::Insert, 1, Some(1))], 41))
        .unwrap();
    // An empty batch still moves the position (e.g. the source skipped unrelated rows).
    assert_eq!(s.append_blocking("p", &captured(vec![], 42)).unwrap(), None);
    let st = s.status_blocking("p").unwrap();
    assert_eq!(st.position, Some(Position::RowId(42)));
    assert_eq!(st.head, Seq(1));
    assert_eq!(st.head_commit_time_us, Some(1_001));
}

#[test]
fn a_failure_inside_append_leaves_nothing_behind() {
    let (dir, s) = store();
    s.append_blocking("p", &captured(vec![change(Op::Insert, 1, Some(1))], 1))
        .unwrap();
    FAIL_AFTER.set(Some(2));
    let batch = (2..=4).map(|id| change(Op::Insert, id, Some(id))).collect();
    assert!(s.append_blocking("p", &captured(batch, 4)).is_err());
    FAIL_AFTER.set(None);
    // Reopen, as a restarted process would.
    drop(s);
    let s = SqliteStore::open(&dir.path().join("state/tidesync.db")).unwrap();
    let st = s.status_blocking("p").unwrap();
    assert_eq!((st.head, st.position), (Seq(1), Some(Position::RowId(1))));
    assert_eq!(s.read_blocking("p", Seq(0), 10).unwrap().len(), 1);
    assert_eq!(s.current_counts("p").unwrap(), [("items".to_owned(), 1)]);
    // The source re-delivers from the stored position; seqs continue without a gap.
    let batch = (2..=4).map(|id| change(Op::Insert, id, Some(id))).collect();
    assert_eq!(
        s.append_blocking("p", &captured(batch, 4)).unwrap(),
        Some((Seq(2), Seq(4)))
    );
}

#[test]
fn cursors_never_move_backwards() {
    let (_dir, s) = store();
    s.set_cursor_blocking("p", "sink", Seq(5)).unwrap();
    s.set_cursor_blocking("p", "sink", Seq(3)).unwrap();
    assert_eq!(
        s.status_blocking("p").unwrap().cursors,
        [("sink".to_owned(), Seq(5))]
    );
}

#[tokio::test]
async fn trim_keeps_what_the_slowest_cursor_still_needs() {
    let (_dir, s) = store();
    let batch = (1..=10)
        .map(|id| change(Op::Insert, id, Some(id)))
        .collect();
    s.append("p", Arc::new(captured(batch, 10))).await.unwrap();
    // No cursor registered: nothing may go.
    assert_eq!(s.trim("p", 0).await.unwrap(), 0);
    s.set_cursor("p", "fast", Seq(8)).await.unwrap();
    s.set_cursor("p", "slow", Seq(3)).await.unwrap();
    assert_eq!(s.trim("p", 0).await.unwrap(), 3);
    let st = s.status("p").await.unwrap();
    assert_eq!((st.tail, st.head), (Seq(4), Seq(10)));
    // Retention keeps recent entries even past every cursor.
    s.set_cursor("p", "slow", Seq(10)).await.unwrap();
    assert_eq!(s.trim("p", i64::MAX / 2).await.unwrap(), 0);
    // Current state stays whole after trimming.
    assert_eq!(s.current_counts("p").unwrap(), [("items".to_owned(), 10)]);
    assert_eq!(s.cursor("p", "slow").await.unwrap(), Seq(10));
    assert_eq!(s.cursor("p", "never").await.unwrap(), Seq(0));
}

#[tokio::test]
async fn trim_takes_the_oldest_run_of_old_entries_only() {
    let (dir, s) = store();
    let now = tidesync_core::time::now_us();
    let hour = 3_600_000_000;
    // Commit times: old, old, recent, old, old (a source whose clock went back).
    let batch = [2 * hour, 2 * hour, 0, 2 * hour, 2 * hour]
        .iter()
        .enumerate()
        .map(|(i, age)| Change {
            commit_time_us: now - age,
            ..change(Op::Insert, i as i64 + 1, Some(1))
        })
        .collect();
    s.append("p", Arc::new(captured(batch, 5))).await.unwrap();
    s.set_cursor("p", "sink", Seq(5)).await.unwrap();
    assert_eq!(s.trim("p", hour).await.unwrap(), 2);
    let st = s.status("p").await.unwrap();
    assert_eq!(
        (st.tail, st.head),
        (Seq(3), Seq(5)),
        "one range of seqs is kept"
    );
    assert_eq!(s.trim("p", hour).await.unwrap(), 0);
    // The trim reads the log from its start only up to the first entry it keeps.
    let plan: String = Connection::open(dir.path().join("state/tidesync.db"))
        .unwrap()
        .prepare(
            "EXPLAIN QUERY PLAN SELECT seq FROM changes WHERE pipeline = 'p' AND commit_us >= 0
             ORDER BY seq LIMIT 1",
        )
        .unwrap()
        .query_map([], |r| r.get::<_, String>(3))
        .unwrap()
        .map(Result::unwrap)
        .collect::<Vec<_>>()
        .join("; ");
    assert!(
        plan.contains("USING PRIMARY KEY") && !plan.contains("TEMP B-TREE"),
        "{plan}"
    );
}

#[test]
fn corrupt_entries_are_named_by_pipeline_and_seq() {
    let (dir, s) = store();
    s.append_blocking("p", &captured(vec![change(Op::Insert, 1, Some(1))], 1))
        .unwrap();
    let raw = Connection::open(dir.path().join("state/tidesync.db")).unwrap();
    raw.execute("UPDATE changes SET after = x'01ff'", [])
        .unwrap();
    let err = s.read_blocking("p", Seq(0), 10).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("corrupt log entry: pipeline p, seq 1: binary row"),
        "{err}"
    );
    assert!(!StageError::from(err).is_transient());
}

#[test]
fn status_of_a_missing_store_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteStore::open_read_only(&dir.path().join("nope.db")).unwrap_err();
    assert!(
        err.to_string().contains("has `tidesync run` started"),
        "{err}"
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let (dir, s) = store();
    drop(s);
    let path = dir.path().join("state/tidesync.db");
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::Version { found: 99, .. }),
        "{err}"
    );
}

#[test]
fn a_version_2_store_gets_chunks_whose_sums_follow_its_fingerprints() {
    let (dir, s) = store();
    let rows: Vec<_> = (1..=40)
        .map(|i| (change(Op::Insert, i, Some(0)), Some(i), Some(i * 7)))
        .collect();
    s.append_blocking("p", &fingerprinted(rows)).unwrap();
    drop(s);
    // As a version 2 store was: no chunks, no triggers, no mappings.
    let path = dir.path().join("state/tidesync.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "DROP TRIGGER chunks_insert; DROP TRIGGER chunks_delete; DROP TRIGGER chunks_update;
             DROP TABLE chunks; DROP TABLE diff_streams; PRAGMA user_version = 2;",
        )
        .unwrap();
    let s = SqliteStore::open(&path).unwrap();
    assert!(s.chunks("p", "items").unwrap().is_empty());
    assert_eq!(s.rechunk("p", "items", 10).unwrap(), (4, 40));
    let batch = fingerprinted(vec![(change(Op::Update, 5, Some(1)), Some(-5), Some(99))]);
    s.append_blocking("p", &batch).unwrap();
    assert_chunks_exact(&s);
    assert_eq!(s.stream_mapping("p", "items").unwrap(), None);
}

/// A change of `items` row `id` with a `note` column; the columns in `unchanged` hold the
/// null placeholder the PostgreSQL source puts in for an unchanged TOASTed value.
fn noted(op: Op, id: i64, qty: i64, note: &str, unchanged: &[&str]) -> Change {
    let mut c = change(op, id, Some(qty));
    let unchanged: Vec<String> = unchanged.iter().map(|u| (*u).to_owned()).collect();
    if let Some(after) = c.after.as_mut() {
        after.0.push(("note".into(), Value::Text(note.into())));
        for (column, value) in after.0.iter_mut() {
            if unchanged.contains(column) {
                *value = Value::Null;
            }
        }
    }
    c.unchanged = unchanged;
    c
}

fn key(id: i64) -> Key {
    Key(vec![Value::Int(id)])
}

#[test]
fn an_update_whose_unchanged_values_cannot_be_filled_is_logged_as_a_patch() {
    let (_dir, s) = store();
    // Row 1 reached the target without passing through the store (e.g. a direct copy).
    let update = noted(Op::Update, 1, 7, "", &["note"]);
    assert_eq!(
        s.append_blocking("p", &captured(vec![update.clone()], 1))
            .unwrap(),
        Some((Seq(1), Seq(1)))
    );
    let read = s.read_blocking("p", Seq(0), 10).unwrap();
    assert_eq!(read.len(), 1);
    let logged = &read[0].change;
    assert_eq!(logged.op, Op::Patch);
    assert_eq!(logged.key, key(1));
    assert_eq!(
        logged.after,
        Some(Row(vec![
            ("id".into(), Value::Int(1)),
            ("qty".into(), Value::Int(7)),
        ])),
        "the patch holds the columns that were sent, not the placeholder"
    );
    assert!(logged.unchanged.is_empty());
    assert_eq!(
        (logged.commit_time_us, &logged.position),
        (update.commit_time_us, &update.position)
    );
    // The store has no complete row for the key: the current state stays without one.
    assert_eq!(s.current_row("p", "items", &key(1)).unwrap(), None);
    assert!(s.current_counts("p").unwrap().is_empty());
}

#[test]
fn a_key_update_without_rows_to_fill_from_is_one_patch_of_the_old_key() {
    let (_dir, s) = store();
    // UPDATE items SET id = 2, qty = 8 WHERE id = 1, the note left alone: the source's pair.
    let pair = vec![
        change(Op::Delete, 1, None),
        noted(Op::Insert, 2, 8, "", &["note"]),
    ];
    assert_eq!(
        s.append_blocking("p", &captured(pair, 2)).unwrap(),
        Some((Seq(1), Seq(1)))
    );
    let read = s.read_blocking("p", Seq(0), 10).unwrap();
    assert_eq!(read.len(), 1, "{read:?}");
    let logged = &read[0].change;
    assert_eq!(logged.op, Op::Patch);
    assert_eq!(logged.key, key(1), "the patch finds the row by its old key");
    assert_eq!(
        logged.after,
        Some(Row(vec![
            ("id".into(), Value::Int(2)),
            ("qty".into(), Value::Int(8)),
        ])),
        "the patch carries the new key's values"
    );
    assert!(logged.unchanged.is_empty());
    assert_eq!(s.current_row("p", "items", &key(1)).unwrap(), None);
    assert_eq!(s.current_row("p", "items", &key(2)).unwrap(), None);
    assert_eq!(s.status_blocking("p").unwrap().head, Seq(1));
}

#[test]
fn unchanged_values_are_filled_from_the_current_row() {
    let (_dir, s) = store();
    s.append_blocking("p", &captured(vec![noted(Op::Insert, 1, 5, "big", &[])], 1))
        .unwrap();
    s.append_blocking(
        "p",
        &captured(vec![noted(Op::Update, 1, 6, "", &["note"])], 2),
    )
    .unwrap();
    let filled = noted(Op::Update, 1, 6, "big", &[]);
    let read = s.read_blocking("p", Seq(1), 10).unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].change, filled);
    let (row, seq) = s.current_row("p", "items", &key(1)).unwrap().unwrap();
    assert_eq!((Some(row), seq), (filled.after, Seq(2)));
}

#[test]
fn a_key_update_fills_its_insert_from_the_row_the_delete_removed() {
    let (_dir, s) = store();
    s.append_blocking("p", &captured(vec![noted(Op::Insert, 1, 5, "big", &[])], 1))
        .unwrap();
    let pair = vec![
        change(Op::Delete, 1, None),
        noted(Op::Insert, 2, 8, "", &["note"]),
    ];
    assert_eq!(
        s.append_blocking("p", &captured(pair, 2)).unwrap(),
        Some((Seq(2), Seq(3)))
    );
    let read: Vec<Change> = s
        .read_blocking("p", Seq(1), 10)
        .unwrap()
        .into_iter()
        .map(|e| e.change)
        .collect();
    let filled = noted(Op::Insert, 2, 8, "big", &[]);
    assert_eq!(read, [change(Op::Delete, 1, None), filled.clone()]);
    assert_eq!(s.current_row("p", "items", &key(1)).unwrap(), None);
    let (row, _) = s.current_row("p", "items", &key(2)).unwrap().unwrap();
    assert_eq!(Some(row), filled.after);
}

#[test]
fn a_delete_never_fills_an_update_of_another_key() {
    let (_dir, s) = store();
    s.append_blocking("p", &captured(vec![noted(Op::Insert, 1, 5, "one", &[])], 1))
        .unwrap();
    // Key 2 has no current row; key 1's row must not lend it its note.
    let batch = vec![
        change(Op::Delete, 1, None),
        noted(Op::Update, 2, 9, "", &["note"]),
    ];
    s.append_blocking("p", &captured(batch, 2)).unwrap();
    let read: Vec<Change> = s
        .read_blocking("p", Seq(1), 10)
        .unwrap()
        .into_iter()
        .map(|e| e.change)
        .collect();
    assert_eq!(read.len(), 2, "{read:?}");
    assert_eq!((read[0].op, &read[0].key), (Op::Delete, &key(1)));
    assert_eq!((read[1].op, &read[1].key), (Op::Patch, &key(2)));
    assert_eq!(read[1].after.as_ref().and_then(|r| r.get("note")), None);
}

#[test]
fn a_patch_does_not_stop_later_changes_of_its_key_from_writing_the_current_state() {
    let (_dir, s) = store();
    let batch = vec![
        noted(Op::Update, 1, 6, "", &["note"]),
        noted(Op::Update, 1, 7, "whole", &[]),
        noted(Op::Update, 1, 8, "", &["note"]),
    ];
    s.append_blocking("p", &captured(batch, 3)).unwrap();
    let ops: Vec<Op> = s
        .read_blocking("p", Seq(0), 10)
        .unwrap()
        .into_iter()
        .map(|e| e.change.op)
        .collect();
    assert_eq!(ops, [Op::Patch, Op::Update, Op::Update]);
    let (row, seq) = s.current_row("p", "items", &key(1)).unwrap().unwrap();
    assert_eq!(
        (Some(row), seq),
        (noted(Op::Update, 1, 8, "whole", &[]).after, Seq(3))
    );
}

/// A change with the fingerprint a `diff` source would send for it (`ord`: the id's bytes).
fn fingerprinted(changes: Vec<(Change, Option<i64>, Option<i64>)>) -> Captured {
    let fingerprints = changes
        .iter()
        .map(|(c, hash, raw)| tidesync_core::Fingerprint {
            ord: match c.key.0[0] {
                Value::Int(i) => i.to_be_bytes().to_vec(),
                _ => unreachable!("integer keys"),
            },
            hash: *hash,
            raw: *raw,
        })
        .collect();
    Captured {
        fingerprints,
        ..captured(changes.into_iter().map(|(c, ..)| c).collect(), 0)
    }
}

#[test]
fn fingerprints_skip_known_versions_and_decide_insert_or_update() {
    let (_dir, s) = store();
    let ops = |from: Seq| -> Vec<(Op, Key)> {
        s.read_blocking("p", from, 100)
            .unwrap()
            .into_iter()
            .map(|e| (e.change.op, e.change.key))
            .collect()
    };
    let key = |i: i64| Key(vec![Value::Int(i)]);
    // An "update" of a row the store has no fingerprint of is logged as an insert.
    let first = fingerprinted(vec![
        (change(Op::Update, 1, Some(5)), Some(10), Some(100)),
        (change(Op::Insert, 2, Some(6)), Some(20), None),
    ]);
    assert_eq!(
        s.append_blocking("p", &first).unwrap(),
        Some((Seq(1), Seq(2)))
    );
    assert_eq!(ops(Seq(0)), [(Op::Insert, key(1)), (Op::Insert, key(2))]);
    // The same batch again logs nothing (a retried append, a repeated run).
    assert_eq!(s.append_blocking("p", &first).unwrap(), None);
    let stored = s
        .fingerprints("p", "items", std::ops::Bound::Unbounded, None, 10)
        .unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!((stored[0].hash, stored[0].raw), (10, Some(100)));
    // An "insert" of a known row with a new hash is an update; a known hash with a new
    // database hash only refreshes that; a delete removes the fingerprint.
    let second = fingerprinted(vec![
        (change(Op::Insert, 1, Some(7)), Some(11), Some(101)),
        (change(Op::Update, 2, Some(6)), Some(20), Some(200)),
    ]);
    assert_eq!(
        s.append_blocking("p", &second).unwrap(),
        Some((Seq(3), Seq(3)))
    );
    assert_eq!(ops(Seq(2)), [(Op::Update, key(1))]);
    let stored = s
        .fingerprints("p", "items", std::ops::Bound::Unbounded, None, 10)
        .unwrap();
    assert_eq!((stored[1].hash, stored[1].raw), (20, Some(200)));
    let third = fingerprinted(vec![
        (change(Op::Delete, 2, None), None, None),
        (change(Op::Delete, 3, None), None, None),
    ]);
    assert_eq!(
        s.append_blocking("p", &third).unwrap(),
        Some((Seq(4), Seq(4)))
    );
    assert_eq!(ops(Seq(3)), [(Op::Delete, key(2))], "row 3 was never there");
    assert_eq!(s.fingerprint_count("p", "items").unwrap(), 1);
    assert!(s.has_fingerprints("p", "items").unwrap());
    assert!(!s.has_fingerprints("p", "other").unwrap());
    assert_eq!(
        s.fingerprint_key("p", "items", &1_i64.to_be_bytes())
            .unwrap(),
        Some(key(1))
    );
    // Refreshes record a new database hash without a change.
    let refresh = Captured {
        refreshed: vec![tidesync_core::RawRefresh {
            stream: "items".into(),
            ord: 1_i64.to_be_bytes().to_vec(),
            raw: 999,
        }],
        ..captured(Vec::new(), 0)
    };
    assert_eq!(s.append_blocking("p", &refresh).unwrap(), None);
    assert_eq!(
        s.fingerprints("p", "items", std::ops::Bound::Unbounded, None, 10)
            .unwrap()[0]
            .raw,
        Some(999)
    );
    // Fingerprints not one per change are refused, and nothing is written.
    let mut bad = fingerprinted(vec![(change(Op::Insert, 9, Some(1)), Some(1), None)]);
    bad.fingerprints.clear();
    bad.fingerprints.push(tidesync_core::Fingerprint {
        ord: vec![9],
        hash: Some(1),
        raw: None,
    });
    bad.fingerprints.push(tidesync_core::Fingerprint {
        ord: vec![10],
        hash: Some(1),
        raw: None,
    });
    let err = s.append_blocking("p", &bad).unwrap_err();
    assert_eq!(
        err.to_string(),
        "store: a batch of pipeline p is malformed: 2 fingerprints for 1 changes"
    );
    assert_eq!(s.status_blocking("p").unwrap().head, Seq(4));
    // Dropping the pipeline drops its fingerprints.
    s.drop_pipeline("p").unwrap();
    assert_eq!(s.fingerprint_count("p", "items").unwrap(), 0);
    assert!(!s.has_fingerprints("p", "items").unwrap());
}

/// Checks every chunk of `items` against its fingerprints, recounted.
fn assert_chunks_exact(s: &SqliteStore) {
    let chunks = s.chunks("p", "items").unwrap();
    let all = s
        .fingerprints("p", "items", std::ops::Bound::Unbounded, None, 100_000)
        .unwrap();
    for (i, chunk) in chunks.iter().enumerate() {
        let hi = chunks.get(i + 1).map(|c| c.lo.clone());
        let inside: Vec<_> = all
            .iter()
            .filter(|f| f.ord >= chunk.lo && hi.as_ref().is_none_or(|hi| f.ord < *hi))
            .collect();
        let sum = inside.iter().filter_map(|f| f.raw).fold(0, |a, r| a ^ r);
        let unknown = inside.iter().filter(|f| f.raw.is_none()).count() as u64;
        assert_eq!(
            (chunk.rows, chunk.sum, chunk.unknown),
            (inside.len() as u64, sum, unknown),
            "chunk {i} from {:?}",
            chunk.lo
        );
    }
}

#[test]
fn chunks_keep_exact_sums_through_every_kind_of_write() {
    let (_dir, s) = store();
    let key = |i: i64| Key(vec![Value::Int(i)]);
    // Database hashes at the extremes of i64 too: the store's XOR must not overflow.
    let raw = |i: i64, v: i64| -> i64 {
        match i % 5 {
            0 => i64::MIN + v,
            1 => i64::MAX - v,
            2 => -1 - v,
            _ => i
                .wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as i64)
                .wrapping_add(v),
        }
    };
    let rows: Vec<_> = (10..110)
        .map(|i| (change(Op::Insert, i, Some(0)), Some(i), Some(raw(i, 0))))
        .collect();
    s.append_blocking("p", &fingerprinted(rows)).unwrap();
    assert!(s.chunks("p", "items").unwrap().is_empty());
    assert_eq!(s.rechunk("p", "items", 30).unwrap(), (4, 100));
    let chunks = s.chunks("p", "items").unwrap();
    assert_eq!(
        chunks.iter().map(|c| c.rows).collect::<Vec<_>>(),
        [30, 30, 30, 10]
    );
    assert_eq!(
        (chunks[0].lo.clone(), chunks[0].bound.clone()),
        (Vec::new(), None)
    );
    assert_eq!(chunks[1].bound, Some(key(40)));
    assert_chunks_exact(&s);
    // A chunk's rows read as a range: its first row included, the next chunk's excluded.
    let second = s
        .fingerprints(
            "p",
            "items",
            std::ops::Bound::Included(&chunks[1].lo),
            Some(&chunks[2].lo),
            100,
        )
        .unwrap();
    assert_eq!(second.len(), 30);
    assert_eq!(
        (second[0].ord.clone(), second[29].ord.clone()),
        (40_i64.to_be_bytes().to_vec(), 69_i64.to_be_bytes().to_vec())
    );
    // Updates (new database hashes), inserts before the first row, between rows and after
    // the last, deletes, a row without a database hash, then a refresh that gives it one.
    let batch = fingerprinted(vec![
        (change(Op::Update, 10, Some(1)), Some(-10), Some(raw(10, 1))),
        (change(Op::Update, 45, Some(1)), Some(-45), Some(raw(45, 7))),
        (change(Op::Insert, 1, Some(1)), Some(1), Some(raw(1, 0))),
        (
            change(Op::Insert, 500, Some(1)),
            Some(500),
            Some(raw(500, 0)),
        ),
        (change(Op::Insert, 200, Some(1)), Some(200), None),
        (change(Op::Delete, 41, None), None, None),
        (change(Op::Delete, 109, None), None, None),
    ]);
    s.append_blocking("p", &batch).unwrap();
    assert_chunks_exact(&s);
    let last = s.chunks("p", "items").unwrap()[3].clone();
    assert_eq!((last.rows, last.unknown), (11, 1));
    s.append_blocking(
        "p",
        &Captured {
            refreshed: vec![tidesync_core::RawRefresh {
                stream: "items".into(),
                ord: 200_i64.to_be_bytes().to_vec(),
                raw: 12345,
            }],
            ..captured(Vec::new(), 0)
        },
    )
    .unwrap();
    assert_chunks_exact(&s);
    assert_eq!(s.chunks("p", "items").unwrap()[3].unknown, 0);
    // Seeded fingerprints have no database hash.
    s.seed_fingerprints(
        "p",
        "items",
        &[(60_i64.to_be_bytes().to_vec(), key(60), 60)],
    )
    .unwrap();
    assert_chunks_exact(&s);
    assert_eq!(s.chunks("p", "items").unwrap()[1].unknown, 1);
    // Cut again: the sums are recomputed, not carried.
    assert_eq!(s.rechunk("p", "items", 25).unwrap(), (5, 101));
    assert_chunks_exact(&s);
    // A changed mapping: every database hash is forgotten and the chunks go, together.
    assert_eq!(s.stream_mapping("p", "items").unwrap(), None);
    s.set_stream_mapping("p", "items", "m1", false).unwrap();
    assert_eq!(s.chunks("p", "items").unwrap().len(), 5);
    s.set_stream_mapping("p", "items", "m2", true).unwrap();
    assert_eq!(
        s.stream_mapping("p", "items").unwrap().as_deref(),
        Some("m2")
    );
    assert!(s.chunks("p", "items").unwrap().is_empty());
    let all = s
        .fingerprints("p", "items", std::ops::Bound::Unbounded, None, 1000)
        .unwrap();
    assert_eq!(all.len(), 101);
    assert!(all.iter().all(|f| f.raw.is_none()));
    assert_eq!(s.rechunk("p", "items", 25).unwrap(), (5, 101));
    assert_chunks_exact(&s);
    // Too few rows for two chunks: none, and the stream is compared row by row.
    assert_eq!(s.rechunk("p", "items", 60).unwrap(), (0, 101));
    assert!(s.chunks("p", "items").unwrap().is_empty());
    s.rechunk("p", "items", 25).unwrap();
    s.drop_pipeline("p").unwrap();
    assert!(s.chunks("p", "items").unwrap().is_empty());
    assert_eq!(s.stream_mapping("p", "items").unwrap(), None);
}

#[test]
fn rebalancing_splits_grown_chunks_and_merges_shrunk_ones_locally() {
    let (_dir, s) = store();
    let raw = |i: i64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as i64);
    let insert = |ids: &mut dyn Iterator<Item = i64>| {
        let rows: Vec<_> = ids
            .map(|i| (change(Op::Insert, i, Some(0)), Some(i), Some(raw(i))))
            .collect();
        s.append_blocking("p", &fingerprinted(rows)).unwrap();
    };
    let sizes = |s: &SqliteStore| -> Vec<u64> {
        s.chunks("p", "items")
            .unwrap()
            .iter()
            .map(|c| c.rows)
            .collect()
    };
    let ten = |_: u64| 10;
    // Too few rows for two chunks: nothing is cut.
    insert(&mut (100..119));
    let done = s.rebalance_chunks("p", "items", &ten).unwrap();
    assert_eq!((done.chunks, done.rows, done.changed()), (0, 19, false));
    // Two chunks' worth: cut whole.
    insert(&mut (119..150));
    let done = s.rebalance_chunks("p", "items", &ten).unwrap();
    assert_eq!((done.chunks, done.rows, done.whole), (5, 50, true));
    assert_eq!(sizes(&s), [10, 10, 10, 10, 10]);
    assert_chunks_exact(&s);
    // Nothing out of balance: nothing changes, however often asked.
    let done = s.rebalance_chunks("p", "items", &ten).unwrap();
    assert!(!done.changed(), "{done:?}");
    // Rows appended after the last key grow the last chunk; rows before the first, the
    // first. Each is cut into pieces of at most 10 rows, as even as whole pieces go; the
    // others stay as they were.
    let before = s.chunks("p", "items").unwrap();
    insert(&mut (150..175));
    insert(&mut (50..62));
    let done = s.rebalance_chunks("p", "items", &ten).unwrap();
    assert_eq!((done.split, done.merged, done.whole), (2, 0, false));
    assert_eq!(sizes(&s), [8, 8, 6, 10, 10, 10, 9, 9, 9, 8]);
    let after = s.chunks("p", "items").unwrap();
    assert_eq!(after[0].lo, Vec::<u8>::new());
    assert_eq!(after[0].bound, None);
    assert_eq!(&after[3..6], &before[1..4]);
    assert_chunks_exact(&s);
    // Deletes empty a chunk in the middle and shrink the first: the empty one merges into
    // the chunk before it, the first takes its successor, and the sums stay exact.
    let deletes: Vec<_> = (120..130)
        .chain(50..57)
        .map(|i| (change(Op::Delete, i, None), None, None))
        .collect();
    s.append_blocking("p", &fingerprinted(deletes)).unwrap();
    assert_eq!(sizes(&s), [1, 8, 6, 10, 0, 10, 9, 9, 9, 8]);
    let done = s.rebalance_chunks("p", "items", &ten).unwrap();
    assert_eq!((done.split, done.merged), (0, 2));
    assert_eq!(sizes(&s), [9, 6, 10, 10, 9, 9, 9, 8]);
    assert_chunks_exact(&s);
    // A larger target (the stream grew): chunks now under a quarter of it merge into the
    // chunk before them, while the two stay within twice the target.
    let done = s.rebalance_chunks("p", "items", &|_| 35).unwrap();
    assert_eq!((done.target, done.merged), (35, 2));
    assert_eq!(sizes(&s), [15, 10, 10, 9, 9, 17]);
    assert_chunks_exact(&s);
    // Shrunk below two chunks' worth: the chunks go.
    let done = s.rebalance_chunks("p", "items", &|_| 100).unwrap();
    assert_eq!((done.chunks, done.whole), (0, true));
    assert!(s.chunks("p", "items").unwrap().is_empty());
}
