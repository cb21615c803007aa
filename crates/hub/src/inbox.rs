//! One agent's inbox on the hub: the pushes of that agent, handed to its pipeline as the
//! pipeline's source.
//!
//! A push is answered only once the hub's log holds it: the HTTP handler queues the batch's
//! changes ([`Inbox::push`]), the pipeline's capture task polls them from the
//! [`InboxSource`], appends them to the store with the position `Agent { seq: LAST_SEQ }` in
//! one transaction, and acks; the ack moves [`Inbox`]'s durable seq and wakes the handler.
//! That durable seq is what the hub answers (`applied_through`).
//!
//! Exactly once, whatever is killed when:
//! - pushes of one agent are handled one at a time;
//! - a push whose seqs are all queued or durable already is not queued again: it waits for
//!   them and is answered with the durable seq (a retried push after a lost answer);
//! - a push overlapping what is queued has only its newer entries queued;
//! - a push starting after a gap is refused (`409`) with the durable seq, where the agent
//!   resumes;
//! - a (re)opened source starts from the position the store holds and drops whatever was
//!   queued and not appended (those pushes were not answered yet; the waiting handler queues
//!   them again).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tidesync_core::{
    Batch, BoxFuture, Captured, Change, Opened, Position, Source, StageError, TableSchema,
};
use tokio::sync::{Notify, watch};

/// How long a push waits for the hub's log to take it before it is answered 503.
pub const PUSH_WAIT: Duration = Duration::from_secs(60);

/// How long after an agent instance's last write or settings poll another instance is
/// refused (agents poll every 60 s by default, at most every 240 s).
pub const INSTANCE_LEASE: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Captured>,
    /// The last agent seq queued or durable.
    queued: u64,
    /// The schemas the agent sent last (`None`: none yet).
    schemas: Option<Vec<TableSchema>>,
}

/// Why a push was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushError {
    /// It starts after `durable + 1`: resend from there.
    Gap { durable: u64, first: u64 },
    /// The log did not take it within [`PUSH_WAIT`] (the pipeline is stopped or slow).
    Timeout,
}

/// Shared between the HTTP handlers and the agent pipeline's source.
#[derive(Debug)]
pub struct Inbox {
    pub pipeline: String,
    state: Mutex<State>,
    /// One push at a time.
    pushes: tokio::sync::Mutex<()>,
    /// The last agent seq the store holds; also bumped (sent again) when the queue is reset.
    durable: watch::Sender<u64>,
    /// Something was queued.
    queued_notify: Notify,
    /// The agent sent new schemas.
    pub schemas_changed: Notify,
    /// The agent instance that wrote last (see [`Inbox::claim`]).
    instance: Mutex<Option<Lease>>,
}

/// Which agent instance holds an agent's token.
#[derive(Debug)]
struct Lease {
    instance: String,
    /// Its last write or settings poll; `None`: it stopped (released).
    at: Option<tokio::time::Instant>,
    /// The durable seq when it took over from another instance (0: it did not): its pushes
    /// must start after it, or its log numbers changes the other one numbered too.
    since: u64,
}

impl Inbox {
    /// An inbox whose store holds the agent's log through `durable`, with the schemas
    /// recorded before (if any).
    pub fn new(pipeline: &str, durable: u64, schemas: Option<Vec<TableSchema>>) -> Inbox {
        Inbox {
            pipeline: pipeline.to_owned(),
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued: durable,
                schemas,
            }),
            pushes: tokio::sync::Mutex::new(()),
            durable: watch::Sender::new(durable),
            queued_notify: Notify::new(),
            schemas_changed: Notify::new(),
            instance: Mutex::new(None),
        }
    }

    /// `instance` stopped: another may take over at once.
    pub fn release(&self, instance: &str) {
        let mut held = self.instance.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lease) = held.as_mut().filter(|l| l.instance == instance) {
            lease.at = None;
        }
    }

    /// Lets `instance` write for this agent unless another instance wrote (or polled) less
    /// than [`INSTANCE_LEASE`] ago; `Err` names that one and how long ago. `Ok` gives the
    /// seq `instance`'s pushes must start after: the durable seq when it took over from
    /// another instance, else 0.
    pub fn claim(&self, instance: &str) -> Result<u64, (String, Duration)> {
        let mut held = self.instance.lock().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        let since = match held.as_ref() {
            None => 0,
            Some(lease) if lease.instance == instance => lease.since,
            Some(lease) => {
                if let Some(at) = lease.at {
                    let ago = now.duration_since(at);
                    if ago < INSTANCE_LEASE {
                        return Err((lease.instance.clone(), ago));
                    }
                }
                self.durable()
            }
        };
        *held = Some(Lease {
            instance: instance.to_owned(),
            at: Some(now),
            since,
        });
        Ok(since)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update of the state is a single assignment or queue operation, so a panic
        // elsewhere cannot leave it half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last agent seq the hub's log holds.
    pub fn durable(&self) -> u64 {
        *self.durable.borrow()
    }

    pub fn schemas(&self) -> Option<Vec<TableSchema>> {
        self.state().schemas.clone()
    }

    /// Records new schemas; true when they differ from the ones before.
    pub fn set_schemas(&self, schemas: Vec<TableSchema>) -> bool {
        let mut state = self.state();
        if state.schemas.as_ref() == Some(&schemas) {
            return false;
        }
        state.schemas = Some(schemas);
        drop(state);
        self.schemas_changed.notify_waiters();
        true
    }

    /// Queues `batch` (checked already) and waits until the hub's log holds it; returns the
    /// durable seq then.
    pub async fn push(&self, batch: Batch) -> Result<u64, PushError> {
        let _one_at_a_time = self.pushes.lock().await;
        let deadline = tokio::time::Instant::now() + PUSH_WAIT;
        let (first, last) = (batch.first_seq.0, batch.last_seq.0);
        let mut durable_rx = self.durable.subscribe();
        loop {
            {
                let durable = *durable_rx.borrow_and_update();
                if last <= durable {
                    return Ok(durable);
                }
                let mut state = self.state();
                if last > state.queued {
                    if first > state.queued + 1 {
                        return Err(PushError::Gap { durable, first });
                    }
                    // Queued here the first time, and again if a reopened source dropped it
                    // (then `queued` is below `last` again).
                    let after = state.queued;
                    let changes: Vec<Change> = batch
                        .entries
                        .iter()
                        .filter(|e| e.seq.0 > after)
                        .map(|e| e.change.clone())
                        .collect();
                    state.queue.push_back(Captured {
                        kind: batch.kind,
                        changes,
                        position: Position::Agent { seq: last },
                        progress: None,
                        fingerprints: Vec::new(),
                        refreshed: Vec::new(),
                    });
                    state.queued = last;
                    drop(state);
                    self.queued_notify.notify_one();
                }
            }
            match tokio::time::timeout_at(deadline, durable_rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(PushError::Timeout),
            }
        }
    }

    /// The source of the agent's pipeline. Only one should run at a time.
    pub fn source(self: &Arc<Inbox>) -> InboxSource {
        InboxSource {
            inbox: self.clone(),
        }
    }
}

/// The pipeline side of an [`Inbox`].
#[derive(Debug)]
pub struct InboxSource {
    inbox: Arc<Inbox>,
}

fn agent_seq(position: &Position) -> Result<u64, StageError> {
    match position {
        Position::Agent { seq } => Ok(*seq),
        other => Err(StageError::definite(format!(
            "the store holds {other} for this pipeline, not an agent's seq: was it run by \
             `tidesync run` before? (`tidesync drop` it first)"
        ))),
    }
}

impl Source for InboxSource {
    fn open(&mut self, from: Option<Position>) -> BoxFuture<'_, Result<Opened, StageError>> {
        Box::pin(async move {
            let durable = from.as_ref().map(agent_seq).transpose()?.unwrap_or(0);
            {
                let mut state = self.inbox.state();
                // Whatever was queued and not appended is pushed again by its waiting handler.
                state.queue.clear();
                state.queued = durable;
            }
            self.inbox.durable.send_replace(durable);
            loop {
                let changed = self.inbox.schemas_changed.notified();
                if let Some(schemas) = self.inbox.schemas() {
                    return Ok(Opened {
                        schemas,
                        start: None,
                    });
                }
                tracing::info!(
                    pipeline = %self.inbox.pipeline,
                    "waiting for the agent to connect and send its streams' schemas"
                );
                changed.await;
            }
        })
    }

    fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Option<Captured>, StageError>> {
        let _ = max; // an agent's batch is taken whole: its seqs are one position
        Box::pin(async move {
            let notified = self.inbox.queued_notify.notified();
            let next = self.inbox.state().queue.pop_front();
            let next = match next {
                Some(next) => Some(next),
                None => {
                    let _ = tokio::time::timeout(wait, notified).await;
                    self.inbox.state().queue.pop_front()
                }
            };
            Ok(next)
        })
    }

    fn ack(&mut self, position: Position) -> BoxFuture<'_, Result<(), StageError>> {
        Box::pin(async move {
            let seq = agent_seq(&position)?;
            self.inbox.durable.send_if_modified(|d| {
                let moved = seq > *d;
                *d = (*d).max(seq);
                moved
            });
            Ok(())
        })
    }

    fn remove(&mut self) -> BoxFuture<'_, Result<Vec<String>, StageError>> {
        Box::pin(async {
            Ok(vec![format!(
                "nothing to remove for the agent of pipeline {} (its source is on the agent's \
                 machine)",
                self.inbox.pipeline
            )])
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tidesync_core::{BatchKind, Key, LogEntry, Op, Row, Seq, Value};

    fn batch(first: u64, last: u64) -> Batch {
        Batch {
            pipeline: "p".to_owned(),
            kind: BatchKind::Incremental,
            first_seq: Seq(first),
            last_seq: Seq(last),
            entries: (first..=last)
                .map(|seq| LogEntry {
                    seq: Seq(seq),
                    change: Change {
                        stream: "items".to_owned(),
                        op: Op::Insert,
                        key: Key(vec![Value::Int(seq as i64)]),
                        before: None,
                        after: Some(Row(vec![("id".to_owned(), Value::Int(seq as i64))])),
                        commit_time_us: 0,
                        position: None,
                        txn: None,
                        unchanged: Vec::new(),
                    },
                })
                .collect(),
            position: None,
        }
    }

    fn ids(captured: &Captured) -> Vec<i64> {
        captured
            .changes
            .iter()
            .map(|c| match c.key.0[0] {
                Value::Int(i) => i,
                _ => unreachable!(),
            })
            .collect()
    }

    /// Plays the pipeline: polls one batch, "appends" it, acks it.
    async fn take_one(source: &mut InboxSource) -> Captured {
        let captured = source
            .poll(1000, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        source.ack(captured.position.clone()).await.unwrap();
        captured
    }

    #[tokio::test]
    async fn pushes_are_taken_once_in_order_and_gaps_are_refused() {
        let inbox = Arc::new(Inbox::new("p", 0, Some(Vec::new())));
        let mut source = inbox.source();
        source.open(None).await.unwrap();

        let push = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.push(batch(1, 3)).await }
        });
        let captured = take_one(&mut source).await;
        assert_eq!(ids(&captured), vec![1, 2, 3]);
        assert_eq!(captured.position, Position::Agent { seq: 3 });
        assert_eq!(push.await.unwrap(), Ok(3));

        // A replay is answered with the durable seq and queues nothing.
        assert_eq!(inbox.push(batch(1, 3)).await, Ok(3));
        assert_eq!(inbox.push(batch(2, 2)).await, Ok(3));
        // A gap is refused.
        assert_eq!(
            inbox.push(batch(5, 6)).await,
            Err(PushError::Gap {
                durable: 3,
                first: 5
            })
        );
        // An overlapping push has only its new entries taken.
        let push = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.push(batch(2, 5)).await }
        });
        let captured = take_one(&mut source).await;
        assert_eq!(ids(&captured), vec![4, 5]);
        assert_eq!(push.await.unwrap(), Ok(5));
        assert!(
            source
                .poll(1000, Duration::from_millis(50))
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_reopened_source_gets_what_its_predecessor_dropped() {
        let inbox = Arc::new(Inbox::new("p", 0, Some(Vec::new())));
        let mut source = inbox.source();
        source.open(None).await.unwrap();
        let push = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.push(batch(1, 2)).await }
        });
        // Polled but never appended: the pipeline died.
        let lost = source
            .poll(1000, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ids(&lost), vec![1, 2]);
        drop(source);
        // The store held nothing: the new source starts at 0 and the waiting push queues
        // its batch again.
        let mut source = inbox.source();
        source.open(None).await.unwrap();
        let captured = take_one(&mut source).await;
        assert_eq!(ids(&captured), vec![1, 2]);
        assert_eq!(push.await.unwrap(), Ok(2));

        // Appended but not acked before the pipeline died: the store says 2 at the reopen,
        // and nothing is taken twice.
        let mut source = inbox.source();
        source.open(Some(Position::Agent { seq: 2 })).await.unwrap();
        assert_eq!(inbox.push(batch(1, 2)).await, Ok(2));
    }

    #[tokio::test(start_paused = true)]
    async fn one_instance_writes_at_a_time() {
        let inbox = Inbox::new("p", 7, None);
        assert_eq!(inbox.claim("host-a/1"), Ok(0));
        assert_eq!(inbox.claim("host-a/1"), Ok(0));
        let (other, _) = inbox.claim("host-b/2").unwrap_err();
        assert_eq!(other, "host-a/1");
        // The first one went silent: after the lease the second takes over, from seq 7 on,
        // and then the first is the one refused.
        tokio::time::advance(INSTANCE_LEASE + Duration::from_secs(1)).await;
        assert_eq!(inbox.claim("host-b/2"), Ok(7));
        assert_eq!(inbox.claim("host-b/2"), Ok(7));
        assert!(inbox.claim("host-a/1").is_err());
        // A stopped instance releases at once; releasing another's lease does nothing.
        inbox.release("host-a/1");
        assert!(inbox.claim("host-a/1").is_err());
        inbox.release("host-b/2");
        assert_eq!(inbox.claim("host-a/1"), Ok(7));
    }

    #[tokio::test]
    async fn a_source_waits_for_the_agents_schemas() {
        let inbox = Arc::new(Inbox::new("p", 0, None));
        let mut source = inbox.source();
        let opened = tokio::spawn(async move { source.open(None).await.map(|o| o.schemas) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!opened.is_finished());
        let schemas = vec![TableSchema {
            name: "items".to_owned(),
            columns: Vec::new(),
            key: vec!["id".to_owned()],
            dialect: tidesync_core::Dialect::Postgres,
        }];
        assert!(inbox.set_schemas(schemas.clone()));
        assert!(!inbox.set_schemas(schemas.clone()));
        assert_eq!(opened.await.unwrap().unwrap(), schemas);
    }
}
