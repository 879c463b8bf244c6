//! One HTTP client per backend: a reqwest connection pool with timeouts, and retries with
//! exponential backoff and jitter on connection errors, 429 and 5xx (honouring `Retry-After`).
//! Errors say which backend, which request and what came back; the API key never appears.

use backon::{ExponentialBuilder, Retryable};
use sglc_vm::backend::BackendError;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Whole-request timeout.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Attempts per request, the first included.
    pub max_attempts: usize,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Requests one batched call may carry (SGLang's `/generate` takes a list).
    pub max_batch: usize,
    /// Most sockets per host: half for requests in flight, half kept idle for reuse.
    pub pool_size: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            max_attempts: 5,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            max_batch: 128,
            pool_size: 32,
        }
    }
}

/// Counters for reports: attempts made and time spent waiting to retry.
#[derive(Debug, Default)]
pub struct HttpStats {
    pub requests: AtomicU64,
    pub attempts: AtomicU64,
    pub retry_wait_ms: AtomicU64,
}

pub struct HttpClient {
    client: reqwest::Client,
    base: String,
    api_key: Option<String>,
    /// Shown in errors, e.g. `sglang:http://127.0.0.1:30000`.
    pub name: String,
    pub options: HttpOptions,
    pub stats: Arc<HttpStats>,
    /// At most `pool_size / 2` requests in flight, and as many idle connections kept: hyper
    /// may open a new connection while a finished one is on its way back to the idle pool, so
    /// in flight plus idle is what bounds the sockets (and file descriptors) to `pool_size`,
    /// however many programs wait.
    in_flight: tokio::sync::Semaphore,
}

/// One failed attempt.
#[derive(Debug)]
struct Failure {
    message: String,
    retryable: bool,
    retry_after: Option<Duration>,
}

/// The first characters of a response body, for error messages.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let mut end = text.len().min(300);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() {
        format!("{}...", &text[..end])
    } else if text.is_empty() {
        "(empty body)".to_string()
    } else {
        text.to_string()
    }
}

impl HttpClient {
    pub fn new(
        name: String,
        base: &str,
        api_key: Option<String>,
        options: HttpOptions,
    ) -> Result<HttpClient, String> {
        let client = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            .pool_max_idle_per_host((options.pool_size / 2).max(1))
            .build()
            .map_err(|e| format!("cannot create the HTTP client: {e}"))?;
        Ok(HttpClient {
            client,
            base: base.trim_end_matches('/').to_string(),
            api_key,
            name,
            in_flight: tokio::sync::Semaphore::new((options.pool_size / 2).max(1)),
            options,
            stats: Arc::default(),
        })
    }

    pub async fn get(&self, path: &str) -> Result<serde_json::Value, BackendError> {
        self.request(reqwest::Method::GET, path, None).await
    }

    pub async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, BackendError> {
        self.request(reqwest::Method::POST, path, Some(body)).await
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, BackendError> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let attempts = AtomicU64::new(0);
        let what = format!("{method} {path}");
        let result = (|| async {
            attempts.fetch_add(1, Ordering::Relaxed);
            self.stats.attempts.fetch_add(1, Ordering::Relaxed);
            self.attempt(method.clone(), path, body.as_ref()).await
        })
        .retry(self.backoff())
        .when(|f: &Failure| f.retryable)
        .adjust(|f: &Failure, planned| self.wait_before_retry(f, planned))
        .notify(|failure: &Failure, wait| self.note_retry(&what, failure, wait))
        .await;
        result.map_err(|f| {
            let n = attempts.load(Ordering::Relaxed);
            BackendError {
                backend: self.name.clone(),
                message: format!(
                    "{method} {path} failed after {n} attempt{}: {}",
                    if n == 1 { "" } else { "s" },
                    f.message
                ),
            }
        })
    }

    /// POST that answers with server-sent events, calling `on_data` with each event's JSON
    /// until `[DONE]`. Connecting (and an error status) is retried like `post`; once events
    /// flow, a broken or truncated stream is an error, since what was streamed is out already.
    pub async fn post_stream(
        &self,
        path: &str,
        body: serde_json::Value,
        mut on_data: impl FnMut(serde_json::Value),
    ) -> Result<(), BackendError> {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let fail = |message: String| BackendError {
            backend: self.name.clone(),
            message: format!("POST {path} (stream): {message}"),
        };
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| fail("the client is shutting down".into()))?;
        // A stream that breaks before its first event has shown nothing yet: it is retried
        // like a failed connection. After that, what was streamed is out, so it is an error.
        let mut broken_streams = 0;
        loop {
            let response = self
                .open_stream(path, &body)
                .await
                .map_err(|f| fail(f.message))?;
            let mut delivered = false;
            let mut events = response.bytes_stream().eventsource();
            let broken = loop {
                let Some(event) = events.next().await else {
                    break "the event stream ended before [DONE]".to_string();
                };
                let event = match event {
                    Ok(event) => event,
                    Err(e) => break format!("the event stream broke: {e}"),
                };
                let data = event.data.trim();
                if data == "[DONE]" {
                    return Ok(());
                }
                if data.is_empty() {
                    continue;
                }
                let json = serde_json::from_str(data).map_err(|e| {
                    fail(format!(
                        "an event is not valid JSON ({e}): {}",
                        excerpt(data.as_bytes())
                    ))
                })?;
                delivered = true;
                on_data(json);
            };
            broken_streams += 1;
            if delivered || broken_streams >= self.options.max_attempts {
                return Err(fail(broken));
            }
            let wait = self.options.min_backoff;
            tracing::warn!(backend = %self.name, "{path} (stream): {broken}; retrying");
            self.stats
                .retry_wait_ms
                .fetch_add(wait.as_millis() as u64, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
    }

    /// Sends a streaming POST until it answers 2xx, retrying connection errors, 429 and 5xx.
    async fn open_stream(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<reqwest::Response, Failure> {
        (|| async {
            self.stats.attempts.fetch_add(1, Ordering::Relaxed);
            let mut request = self.client.post(format!("{}{path}", self.base)).json(body);
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            let response = request.send().await.map_err(|e| Failure {
                message: describe(&e),
                retryable: e.is_connect() || e.is_timeout() || e.is_request(),
                retry_after: None,
            })?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            let retry_after = retry_after(&response);
            let bytes = response.bytes().await.unwrap_or_default();
            Err(Failure {
                message: format!("HTTP {status}: {}", excerpt(&bytes)),
                retryable: status.as_u16() == 429 || status.is_server_error(),
                retry_after,
            })
        })
        .retry(self.backoff())
        .when(|f: &Failure| f.retryable)
        .adjust(|f: &Failure, planned| self.wait_before_retry(f, planned))
        .notify(|failure: &Failure, wait| {
            self.note_retry(&format!("{path} (stream)"), failure, wait)
        })
        .await
    }

    async fn attempt(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, Failure> {
        let _permit = self.in_flight.acquire().await.map_err(|_| Failure {
            message: "the client is shutting down".to_string(),
            retryable: false,
            retry_after: None,
        })?;
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| Failure {
            message: describe(&e),
            retryable: e.is_connect() || e.is_timeout() || e.is_request() || e.is_body(),
            retry_after: None,
        })?;
        let status = response.status();
        let retry_after = retry_after(&response);
        let bytes = response.bytes().await.map_err(|e| Failure {
            message: format!(
                "HTTP {status}, then the connection failed while reading the body: {}",
                describe(&e)
            ),
            retryable: true,
            retry_after: None,
        })?;
        if !status.is_success() {
            return Err(Failure {
                message: format!("HTTP {status}: {}", excerpt(&bytes)),
                retryable: status.as_u16() == 429 || status.is_server_error(),
                retry_after,
            });
        }
        // A 200 whose body is not JSON is a broken proxy or a cut-off answer more often than a
        // server that always answers so: worth the retries (a request is safe to repeat).
        serde_json::from_slice(&bytes).map_err(|e| Failure {
            message: format!("the response is not valid JSON ({e}): {}", excerpt(&bytes)),
            retryable: true,
            retry_after: None,
        })
    }
}

impl HttpClient {
    /// Exponential backoff with jitter, `max_attempts` in all.
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.options.min_backoff)
            .with_max_delay(self.options.max_backoff)
            .with_max_times(self.options.max_attempts.saturating_sub(1))
            .with_jitter()
    }

    /// The planned wait, or the server's `Retry-After` (capped) when it sent one.
    fn wait_before_retry(&self, failure: &Failure, planned: Option<Duration>) -> Option<Duration> {
        planned.map(|d| {
            failure
                .retry_after
                .map_or(d, |r| r.min(self.options.max_backoff * 6))
        })
    }

    /// Logs a retry and counts its wait for `report`.
    fn note_retry(&self, what: &str, failure: &Failure, wait: Duration) {
        tracing::warn!(
            backend = %self.name,
            "{what}: {}; retrying in {:.1} s",
            failure.message,
            wait.as_secs_f64()
        );
        self.stats
            .retry_wait_ms
            .fetch_add(wait.as_millis() as u64, Ordering::Relaxed);
    }

    /// `1,200 requests in 1,410 attempts, 3.2 s waiting to retry`.
    pub fn report(&self) -> Option<String> {
        let requests = self.stats.requests.load(Ordering::Relaxed);
        let attempts = self.stats.attempts.load(Ordering::Relaxed);
        let waited = self.stats.retry_wait_ms.load(Ordering::Relaxed);
        (requests > 0).then(|| {
            format!(
                "{}: {requests} requests in {attempts} attempts, {:.1} s waiting to retry",
                self.name,
                waited as f64 / 1000.0
            )
        })
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare from model servers and ignored).
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|secs| secs.is_finite())
        .map(|secs| Duration::from_secs_f64(secs.clamp(0.0, 3600.0)))
}

/// A reqwest error without its URL's query (no secrets are in URLs here, but keep it short).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "the connection broke"
    } else {
        "request failed"
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind} ({detail})")
    }
}
