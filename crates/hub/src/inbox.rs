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
        }
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
