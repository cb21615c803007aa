//! The hub sink: what `tidesync agent` delivers with. Each batch of the agent's log is pushed
//! to the hub as compressed JSON (docs/protocol.md, "Pushing a batch"), one at a time, each
//! acknowledged before the next.
//!
//! Exactly once: the hub records the last seq of this agent's log it holds, in the same
//! transaction as the batch. [`Sink::open`] asks it for that seq, and the runtime resumes
//! after it; a push retried after a lost answer is answered with the recorded seq and taken
//! once. The `Idempotency-Key` header (`PIPELINE:FIRST-LAST`) names the push in the hub's logs.
//!
//! Errors: an unreachable hub, a timeout and 5xx answers are transient (the runtime retries
//! with backoff, and the local log keeps what is not pushed yet); 401/403, 4xx for the payload
//! and a gap the hub cannot fill are definite, with the hub's message.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use tidesync_core::codec::compress::Encoding;
use tidesync_core::codec::json::encode_batch_compressed;
use tidesync_core::protocol::{self, Applied, ErrorBody, Schemas};
use tidesync_core::{Batch, BoxFuture, Seq, Sink, StageError, TableSchema, with_causes};

/// How long one request may take, answer included (a push is answered once the hub's log
/// holds it durably).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("hub {url}: {what}: {message}")]
    Http {
        url: String,
        what: &'static str,
        /// The error with its causes ("connection refused" is a cause of reqwest's error).
        message: String,
    },
    #[error("hub {url}: {what}: {status} {code}: {message}")]
    Refused {
        url: String,
        what: &'static str,
        status: u16,
        code: String,
        message: String,
    },
    #[error("hub {url}: {what}: unexpected answer: {message}")]
    Protocol {
        url: String,
        what: &'static str,
        message: String,
    },
}

/// The agent's HTTP client: `timeout` per request, TLS by rustls with the public roots and,
/// when given, the certificate authorities of the PEM file `ca_cert`.
pub fn http_client(
    timeout: Duration,
    ca_cert: Option<&std::path::Path>,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("tidesync-agent/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read the CA certificates {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            format!(
                "{} holds no PEM certificates: {}",
                path.display(),
                with_causes(&e)
            )
        })?;
        if certs.is_empty() {
            return Err(format!("{} holds no PEM certificates", path.display()));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| with_causes(&e))
}

/// Pushes one pipeline's batches to a hub.
#[derive(Debug)]
pub struct HubSink {
    url: String,
    token: String,
    pipeline: String,
    encoding: Encoding,
    ca_cert: Option<std::path::PathBuf>,
    instance: Option<String>,
    client: Option<reqwest::Client>,
}

impl HubSink {
    /// `url`: the hub's base URL (`http://host:port`); `token`: the agent's bearer token.
    pub fn new(url: &str, token: &str, pipeline: &str) -> HubSink {
        HubSink {
            url: url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            pipeline: pipeline.to_owned(),
            encoding: Encoding::Zstd,
            ca_cert: None,
            instance: None,
            client: None,
        }
    }

    /// Sends this agent instance name with every request (see `protocol::AGENT_INSTANCE`).
    pub fn with_instance(mut self, instance: Option<String>) -> HubSink {
        self.instance = instance;
        self
    }

    /// Also trusts the certificate authorities in this PEM file for an `https://` hub.
    pub fn with_ca_cert(mut self, ca_cert: Option<std::path::PathBuf>) -> HubSink {
        self.ca_cert = ca_cert;
        self
    }

    fn client(&mut self) -> Result<reqwest::Client, StageError> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let client = http_client(REQUEST_TIMEOUT, self.ca_cert.as_deref()).map_err(|message| {
            StageError::definite(HubError::Http {
                url: self.url.clone(),
                what: "building the HTTP client",
                message,
            })
        })?;
        self.client = Some(client.clone());
        Ok(client)
    }

    fn http_error(&self, what: &'static str) -> impl Fn(reqwest::Error) -> StageError + '_ {
        move |source| {
            StageError::transient(HubError::Http {
                url: self.url.clone(),
                what,
                message: with_causes(&source),
            })
        }
    }

    /// Turns a non-2xx answer into an error: 5xx and 429 are transient, the rest definite.
    async fn refused(&self, what: &'static str, response: reqwest::Response) -> StageError {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => (body.code, body.error),
            Err(_) => (String::new(), text.chars().take(500).collect()),
        };
        let error = HubError::Refused {
            url: self.url.clone(),
            what,
            status: status.as_u16(),
            code,
            message,
        };
        // Another instance holding the token may be a dead one whose lease runs out.
        let other_instance =
            matches!(&error, HubError::Refused { code, .. } if code == "other_instance");
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || other_instance {
            StageError::transient(error)
        } else {
            StageError::definite(error)
        }
    }

    /// `request` with the token and, when set, the instance name.
    fn identified(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let request = request.bearer_auth(&self.token);
        match &self.instance {
            Some(instance) => request.header(protocol::AGENT_INSTANCE, instance),
            None => request,
        }
    }

    /// Sends `request` with the token; a non-2xx answer becomes the error it means.
    async fn send(
        &self,
        what: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, StageError> {
        let response = self
            .identified(request)
            .send()
            .await
            .map_err(self.http_error(what))?;
        if !response.status().is_success() {
            return Err(self.refused(what, response).await);
        }
        Ok(response)
    }

    async fn applied(
        &self,
        what: &'static str,
        response: reqwest::Response,
    ) -> Result<u64, StageError> {
        let bytes = response.bytes().await.map_err(self.http_error(what))?;
        serde_json::from_slice::<Applied>(&bytes)
            .map(|a| a.applied_through)
            .map_err(|e| {
                StageError::definite(HubError::Protocol {
                    url: self.url.clone(),
                    what,
                    message: format!(
                        "{e}: {}",
                        String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                    ),
                })
            })
    }

    async fn open_inner(&mut self, schemas: Vec<TableSchema>) -> Result<Option<Seq>, StageError> {
        let client = self.client()?;
        let body = serde_json::to_vec(&Schemas { schemas })
            .map_err(|e| StageError::definite(format!("encoding schemas: {e}")))?;
        let request = client
            .put(format!("{}{}", self.url, protocol::SCHEMAS_PATH))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.send("sending the streams' schemas", request).await?;
        let what = "asking for the position";
        let request = client.get(format!("{}{}", self.url, protocol::POSITION_PATH));
        let response = self.send(what, request).await?;
        let applied = self.applied(what, response).await?;
        tracing::info!(hub = %self.url, applied_through = applied, "connected to the hub");
        Ok(Some(Seq(applied)))
    }

    /// Pushes `batch`; one the hub finds too large (413) is pushed in halves instead (each
    /// half is a batch of its own seqs, so a half the hub took before a crash is answered
    /// as already taken).
    async fn push(&mut self, batch: Arc<Batch>) -> Result<(), StageError> {
        let mut pending = vec![batch];
        while let Some(batch) = pending.pop() {
            if batch.entries.is_empty() {
                continue;
            }
            if let Some((first, second)) = self.push_one(batch).await? {
                tracing::info!(
                    hub = %self.url,
                    changes = first.entries.len() + second.entries.len(),
                    "the hub found a push too large: sending it in halves"
                );
                pending.push(Arc::new(second));
                pending.push(Arc::new(first));
            }
        }
        Ok(())
    }

    /// One push; `Some(halves)` when the hub refused it as too large and it can be split.
    async fn push_one(&mut self, batch: Arc<Batch>) -> Result<Option<(Batch, Batch)>, StageError> {
        let client = self.client()?;
        let encoding = self.encoding;
        // JSON and zstd of a few thousand rows: milliseconds, off the async threads anyway.
        let shared = batch.clone();
        let body = tokio::task::spawn_blocking(move || encode_batch_compressed(&shared, encoding))
            .await
            .map_err(|e| StageError::definite(format!("encoding a batch: {e}")))?;
        let what = "pushing a batch";
        let mut request = client
            .post(format!("{}{}", self.url, protocol::BATCHES_PATH))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                protocol::IDEMPOTENCY_KEY,
                format!("{}:{}-{}", self.pipeline, batch.first_seq, batch.last_seq),
            );
        if encoding != Encoding::Identity {
            request = request.header(reqwest::header::CONTENT_ENCODING, encoding.as_str());
        }
        let response = self
            .identified(request.body(body))
            .send()
            .await
            .map_err(self.http_error(what))?;
        if response.status() == StatusCode::PAYLOAD_TOO_LARGE && batch.entries.len() > 1 {
            return Ok(Some(halves(&batch)));
        }
        if !response.status().is_success() {
            return Err(self.refused(what, response).await);
        }
        let applied = self.applied(what, response).await?;
        if applied < batch.last_seq.0 {
            return Err(StageError::definite(HubError::Protocol {
                url: self.url.clone(),
                what,
                message: format!(
                    "the hub holds seqs through {applied} after a push through {}",
                    batch.last_seq
                ),
            }));
        }
        Ok(None)
    }
}

/// `batch` as two batches of about half its entries each (at least one entry in each).
fn halves(batch: &Batch) -> (Batch, Batch) {
    let mid = batch.entries.len() / 2;
    let part = |entries: &[tidesync_core::LogEntry]| Batch {
        pipeline: batch.pipeline.clone(),
        kind: batch.kind,
        first_seq: entries.first().map_or(batch.first_seq, |e| e.seq),
        last_seq: entries.last().map_or(batch.last_seq, |e| e.seq),
        entries: entries.to_vec(),
        position: None,
    };
    (part(&batch.entries[..mid]), part(&batch.entries[mid..]))
}

impl Sink for HubSink {
    fn open(
        &mut self,
        schemas: Vec<TableSchema>,
    ) -> BoxFuture<'_, Result<Option<Seq>, StageError>> {
        Box::pin(self.open_inner(schemas))
    }

    fn apply(&mut self, batch: Arc<Batch>) -> BoxFuture<'_, Result<(), StageError>> {
        Box::pin(self.push(batch))
    }

    fn forget(&mut self) -> BoxFuture<'_, Result<Vec<String>, StageError>> {
        Box::pin(async {
            Ok(vec![format!(
                "the hub {} keeps what it took from pipeline {} (drop it there)",
                self.url, self.pipeline
            )])
        })
    }
}
