//! Retries with exponential backoff and jitter for transient stage errors.
//!
//! Definite errors return at once; transient ones are retried until they succeed or the
//! pipeline is cancelled, waiting 100 ms, 200 ms, ... up to 30 s between attempts (±25%
//! jitter so that several pipelines do not hammer a recovering server in lockstep).

use std::time::Duration;

use tidesync_core::{BoxFuture, StageError};
use tokio_util::sync::CancellationToken;

const FIRST: Duration = Duration::from_millis(100);
const MAX: Duration = Duration::from_secs(30);

/// Why a retried step did not produce a value.
#[derive(Debug)]
pub(crate) enum Stop {
    Cancelled,
    Failed(StageError),
}

/// A multiplier in 0.75..1.25 from the clock's nanoseconds: jitter without a RNG dependency.
pub fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    0.75 + f64::from(nanos % 1000) / 2000.0
}

/// Runs `op` on `target` until it succeeds, fails definitely, or `cancel` fires.
pub(crate) async fn retry<S: ?Sized + Send, T>(
    what: &str,
    cancel: &CancellationToken,
    target: &mut S,
    mut op: impl for<'a> FnMut(&'a mut S) -> BoxFuture<'a, Result<T, StageError>>,
) -> Result<T, Stop> {
    let mut delay = FIRST;
    let mut attempt = 1u32;
    loop {
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(Stop::Cancelled),
            r = op(target) => r,
        };
        match result {
            Ok(v) => {
                if attempt > 1 {
                    tracing::info!(what, attempt, "recovered");
                }
                return Ok(v);
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(what, attempt, retry_in_ms = delay.as_millis() as u64, error = %e, "transient error; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return Err(Stop::Cancelled),
                    () = tokio::time::sleep(delay.mul_f64(jitter())) => {}
                }
                delay = (delay * 2).min(MAX);
                attempt += 1;
            }
            Err(e) => return Err(Stop::Failed(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_until_success() {
        let cancel = CancellationToken::new();
        let mut failures_left = 3;
        let got = retry("t", &cancel, &mut failures_left, |n| {
            Box::pin(async move {
                if *n > 0 {
                    *n -= 1;
                    Err(StageError::transient("flaky"))
                } else {
                    Ok(7)
                }
            })
        })
        .await;
        assert!(matches!(got, Ok(7)));
        assert_eq!(failures_left, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn definite_errors_stop_at_once() {
        let cancel = CancellationToken::new();
        let mut calls = 0;
        let got: Result<(), _> = retry("t", &cancel, &mut calls, |n| {
            Box::pin(async move {
                *n += 1;
                Err(StageError::definite("bad config"))
            })
        })
        .await;
        assert!(matches!(got, Err(Stop::Failed(e)) if e.to_string() == "bad config"));
        assert_eq!(calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_ends_the_backoff() {
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        let mut calls = 0;
        let got: Result<(), _> = retry("t", &cancel, &mut calls, move |n| {
            *n += 1;
            if *n == 2 {
                c2.cancel();
            }
            Box::pin(async { Err(StageError::transient("down")) })
        })
        .await;
        assert!(matches!(got, Err(Stop::Cancelled)));
    }
}
