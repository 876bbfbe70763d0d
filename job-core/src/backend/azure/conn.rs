//! The REST client: the queue service's operations this backend needs, each one HTTP request
//! signed with Shared Key (or carrying a SAS), bounded by the request timeout, retried with
//! backoff (`backon`) only when the connection could not be opened (the request never
//! reached the store, so a retry cannot apply it twice).
//!
//! Why not the official SDK: `azure_storage_queue` 1.x authenticates with Entra ID tokens or
//! a SAS already in the URL, not with Shared Key, which is what the emulator's well-known
//! account and most connection strings carry (minting a SAS would need this same HMAC
//! signing); it brings its own retry pipeline (it would retry a delete whose reply was
//! lost, turning a done ack into a lost lease behind our back) and some 360 crates (HTTP/3,
//! a second TLS stack). The older `azure_storage_queues` 0.x is superseded and no longer
//! released. Eight REST calls over `reqwest` with `hmac`/`sha2` signing are ~300 lines we
//! can read.

use std::time::{Duration, SystemTime};

use backon::{ExponentialBuilder, Retryable};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use sha2::Sha256;

use super::config::{Auth, ConnectionString};
use crate::backend::BackendError;

/// The REST API version every request names.
const API_VERSION: &str = "2021-08-06";
/// Messages one receive or peek returns at most (the service's limit).
pub(super) const MAX_BATCH: usize = 32;
/// The longest visibility timeout the service takes (7 days), in seconds.
pub(super) const MAX_VISIBILITY: u64 = 7 * 24 * 3600;

/// A message as the service returns it.
#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct Message {
    #[serde(rename = "MessageId")]
    pub(super) id: String,
    #[serde(rename = "PopReceipt", default)]
    pub(super) pop: String,
    #[serde(rename = "DequeueCount", default)]
    pub(super) dequeue_count: u32,
    #[serde(rename = "MessageText", default)]
    pub(super) text: String,
}

#[derive(Debug, Default, Deserialize)]
struct MessageList {
    #[serde(rename = "QueueMessage", default)]
    messages: Vec<Message>,
}

#[derive(Debug, Default, Deserialize)]
struct QueueList {
    #[serde(rename = "Queues", default)]
    queues: Queues,
    #[serde(rename = "NextMarker", default)]
    next_marker: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Queues {
    #[serde(rename = "Queue", default)]
    queue: Vec<QueueItem>,
}

#[derive(Debug, Default, Deserialize)]
struct QueueItem {
    #[serde(rename = "Name")]
    name: String,
}

/// The answer to a write fenced by a pop receipt.
#[derive(Debug)]
pub(super) enum Fenced<T> {
    /// Done.
    Done(T),
    /// The message is gone or the receipt is stale (it was received again, updated or
    /// deleted since): nothing changed.
    Gone,
}

/// One reply: status, the error code the service names, headers, body.
struct Reply {
    status: StatusCode,
    code: Option<String>,
    headers: reqwest::header::HeaderMap,
    body: String,
}

/// The signed REST client.
pub(super) struct Rest {
    http: reqwest::Client,
    conn: ConnectionString,
    request_timeout: Duration,
}

impl std::fmt::Debug for Rest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rest")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl Rest {
    pub(super) fn new(
        conn: ConnectionString,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            // Below the 5 s after which Node servers (Azurite) close an idle keep-alive
            // connection: a pooled connection reused as the server closes it is reset.
            .pool_idle_timeout(Duration::from_secs(3))
            .build()?;
        Ok(Self {
            http,
            conn,
            request_timeout,
        })
    }

    /// Sends one request (`path` below the endpoint, `/queue/messages`), retrying only a
    /// connection that could not be opened.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<String>,
    ) -> Result<Reply, BackendError> {
        let mut url = Url::parse(&format!("{}{path}", self.conn.endpoint)).map_err(|e| {
            BackendError::InvalidName(format!(
                "{path} does not make a URL below the endpoint: {e}"
            ))
        })?;
        {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        let url = &url;
        let send = || self.send_once(method.clone(), url, body.clone());
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_millis(400))
            .with_jitter()
            .with_max_times(3);
        let sending = send
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|e: &reqwest::Error| e.is_connect());
        // The whole call, retries included, stays within twice the request timeout.
        match tokio::time::timeout(self.request_timeout * 2, sending).await {
            Ok(Ok(reply)) if reply.status.is_server_error() => Err(unavailable_msg(format!(
                "{method} {path}: the store answered {} {}",
                reply.status,
                reply.code.as_deref().unwrap_or("")
            ))),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(BackendError::Unavailable(Box::new(e))),
            Err(_) => Err(unavailable_msg(format!(
                "{method} {path}: no reply within {:?}",
                self.request_timeout * 2
            ))),
        }
    }

    async fn send_once(
        &self,
        method: Method,
        url: &Url,
        body: Option<String>,
    ) -> Result<Reply, reqwest::Error> {
        let mut url = url.clone();
        let date = httpdate::fmt_http_date(SystemTime::now());
        let len = body.as_ref().map_or(0, String::len);
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .header("x-ms-date", &date)
            .header("x-ms-version", API_VERSION);
        match &self.conn.auth {
            Auth::SharedKey { key } => {
                let signature = self.sign(key, &method, &url, len, &date);
                req = req.header(
                    "Authorization",
                    format!("SharedKey {}:{signature}", self.conn.account),
                );
            }
            Auth::Sas(sas) => {
                let q = match url.query() {
                    Some(q) if !q.is_empty() => format!("{q}&{sas}"),
                    _ => sas.clone(),
                };
                url.set_query(Some(&q));
                req = self
                    .http
                    .request(method.clone(), url)
                    .header("x-ms-date", &date)
                    .header("x-ms-version", API_VERSION);
            }
        }
        req = match body {
            Some(b) => req.body(b),
            None if method == Method::PUT || method == Method::POST => {
                req.header("Content-Length", "0")
            }
            None => req,
        };
        let resp = req.send().await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let code = headers
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.text().await?;
        Ok(Reply {
            status,
            code,
            headers,
            body,
        })
    }

    /// The Shared Key signature of one request (the service's string-to-sign for version
    /// 2015-02-21 and later: a zero content length is empty).
    fn sign(&self, key: &[u8], method: &Method, url: &Url, len: usize, date: &str) -> String {
        let len = if len == 0 {
            String::new()
        } else {
            len.to_string()
        };
        let mut resource = format!("/{}{}", self.conn.account, url.path());
        let mut params: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.to_lowercase(), v.into_owned()))
            .collect();
        params.sort();
        for (k, v) in params {
            resource.push('\n');
            resource.push_str(&k);
            resource.push(':');
            resource.push_str(&v);
        }
        let to_sign = format!(
            "{method}\n\n\n{len}\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{API_VERSION}\n{resource}"
        );
        let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
            Ok(m) => m,
            // HMAC takes a key of any length.
            Err(_) => return String::new(),
        };
        mac.update(to_sign.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    fn queue_path(&self, queue: &str) -> String {
        format!("/{queue}")
    }

    /// Creates `queue`; one that exists already is fine.
    pub(super) async fn create_queue(&self, queue: &str) -> Result<(), BackendError> {
        let r = self
            .call(Method::PUT, &self.queue_path(queue), &[], None)
            .await?;
        match r.status.as_u16() {
            201 | 204 => Ok(()),
            409 if r.code.as_deref() == Some("QueueAlreadyExists") => Ok(()),
            _ => Err(refused("create queue", queue, &r)),
        }
    }

    /// Deletes `queue` and its messages (tests and tools).
    pub(super) async fn delete_queue(&self, queue: &str) -> Result<(), BackendError> {
        let r = self
            .call(Method::DELETE, &self.queue_path(queue), &[], None)
            .await?;
        match r.status.as_u16() {
            204 | 404 => Ok(()),
            _ => Err(refused("delete queue", queue, &r)),
        }
    }

    /// The names of the account's queues starting with `prefix`.
    pub(super) async fn list_queues(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        let mut names = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut query = vec![("comp", "list".to_owned()), ("prefix", prefix.to_owned())];
            if let Some(m) = &marker {
                query.push(("marker", m.clone()));
            }
            let r = self.call(Method::GET, "/", &query, None).await?;
            if !r.status.is_success() {
                return Err(refused("list queues", prefix, &r));
            }
            let list: QueueList = parse_xml(&r.body, "queue list")?;
            names.extend(list.queues.queue.into_iter().map(|q| q.name));
            match list.next_marker.filter(|m| !m.is_empty()) {
                Some(m) => marker = Some(m),
                None => return Ok(names),
            }
        }
    }

    /// The service's approximate count of messages in `queue` (visible or not); 0 for a
    /// queue that does not exist.
    pub(super) async fn approximate_count(&self, queue: &str) -> Result<u64, BackendError> {
        let query = [("comp", "metadata".to_owned())];
        let r = self
            .call(Method::GET, &self.queue_path(queue), &query, None)
            .await?;
        match r.status.as_u16() {
            200 => Ok(r
                .headers
                .get("x-ms-approximate-messages-count")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)),
            404 => Ok(0),
            _ => Err(refused("queue metadata", queue, &r)),
        }
    }

    /// Puts one message, invisible for `visibility` seconds, kept until deleted; creates the
    /// queue when it does not exist yet. Returns the message as stored (id and receipt).
    pub(super) async fn put(
        &self,
        queue: &str,
        text: &str,
        visibility: u64,
    ) -> Result<Message, BackendError> {
        let path = format!("{}/messages", self.queue_path(queue));
        let query = [
            (
                "visibilitytimeout",
                visibility.min(MAX_VISIBILITY).to_string(),
            ),
            ("messagettl", "-1".to_owned()),
        ];
        let body = message_xml(text);
        let mut created = false;
        loop {
            let r = self
                .call(Method::POST, &path, &query, Some(body.clone()))
                .await?;
            match r.status.as_u16() {
                201 => {
                    let list: MessageList = parse_xml(&r.body, "put reply")?;
                    return list.messages.into_iter().next().ok_or_else(|| {
                        BackendError::Corrupt("the put reply names no message".to_owned())
                    });
                }
                404 if !created && r.code.as_deref() == Some("QueueNotFound") => {
                    self.create_queue(queue).await?;
                    created = true;
                }
                _ => return Err(refused("put message", queue, &r)),
            }
        }
    }

    /// Receives up to `n` (at most 32) visible messages, hiding them for `visibility` seconds
    /// (at least 1). A queue that does not exist has none.
    pub(super) async fn receive(
        &self,
        queue: &str,
        n: usize,
        visibility: u64,
    ) -> Result<Vec<Message>, BackendError> {
        let path = format!("{}/messages", self.queue_path(queue));
        let query = [
            ("numofmessages", n.clamp(1, MAX_BATCH).to_string()),
            (
                "visibilitytimeout",
                visibility.clamp(1, MAX_VISIBILITY).to_string(),
            ),
        ];
        let r = self.call(Method::GET, &path, &query, None).await?;
        match r.status.as_u16() {
            200 => Ok(parse_xml::<MessageList>(&r.body, "received messages")?.messages),
            404 => Ok(Vec::new()),
            _ => Err(refused("receive messages", queue, &r)),
        }
    }

    /// Up to `n` (at most 32) visible messages from the front of `queue`, left in place.
    pub(super) async fn peek(&self, queue: &str, n: usize) -> Result<Vec<Message>, BackendError> {
        let path = format!("{}/messages", self.queue_path(queue));
        let query = [
            ("peekonly", "true".to_owned()),
            ("numofmessages", n.clamp(1, MAX_BATCH).to_string()),
        ];
        let r = self.call(Method::GET, &path, &query, None).await?;
        match r.status.as_u16() {
            200 => Ok(parse_xml::<MessageList>(&r.body, "peeked messages")?.messages),
            404 => Ok(Vec::new()),
            _ => Err(refused("peek messages", queue, &r)),
        }
    }

    /// Deletes a message, fenced by its pop receipt.
    pub(super) async fn delete(
        &self,
        queue: &str,
        id: &str,
        pop: &str,
    ) -> Result<Fenced<()>, BackendError> {
        let path = format!("{}/messages/{id}", self.queue_path(queue));
        let query = [("popreceipt", pop.to_owned())];
        let r = self.call(Method::DELETE, &path, &query, None).await?;
        match r.status.as_u16() {
            204 => Ok(Fenced::Done(())),
            s if gone(s, r.code.as_deref()) => Ok(Fenced::Gone),
            _ => Err(refused("delete message", queue, &r)),
        }
    }

    /// Makes a message invisible for `visibility` seconds from now (0: visible at once) and,
    /// when `text` is given, replaces its content; fenced by its pop receipt. Returns the
    /// new pop receipt (every update issues one; the old one is spent).
    pub(super) async fn update(
        &self,
        queue: &str,
        id: &str,
        pop: &str,
        visibility: u64,
        text: Option<&str>,
    ) -> Result<Fenced<String>, BackendError> {
        let path = format!("{}/messages/{id}", self.queue_path(queue));
        let query = [
            ("popreceipt", pop.to_owned()),
            (
                "visibilitytimeout",
                visibility.min(MAX_VISIBILITY).to_string(),
            ),
        ];
        let r = self
            .call(Method::PUT, &path, &query, text.map(message_xml))
            .await?;
        match r.status.as_u16() {
            204 => r
                .headers
                .get("x-ms-popreceipt")
                .and_then(|v| v.to_str().ok())
                .map(|p| Fenced::Done(p.to_owned()))
                .ok_or_else(|| {
                    BackendError::Corrupt("an update reply without a pop receipt".to_owned())
                }),
            s if gone(s, r.code.as_deref()) => Ok(Fenced::Gone),
            _ => Err(refused("update message", queue, &r)),
        }
    }
}

/// Whether a fenced write's reply means "not yours any more": the message is gone (404), or
/// the receipt is not its current one (400 `PopReceiptMismatch`).
fn gone(status: u16, code: Option<&str>) -> bool {
    status == 404 || (status == 400 && code == Some("PopReceiptMismatch"))
}

fn message_xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    out.push_str("<QueueMessage><MessageText>");
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out.push_str("</MessageText></QueueMessage>");
    out
}

fn parse_xml<T: serde::de::DeserializeOwned>(body: &str, what: &str) -> Result<T, BackendError> {
    quick_xml::de::from_str(body).map_err(|e| {
        BackendError::Corrupt(format!("the store's {what} is not the expected XML: {e}"))
    })
}

fn refused(what: &str, queue: &str, r: &Reply) -> BackendError {
    let detail: String = r.body.chars().take(300).collect();
    unavailable_msg(format!(
        "{what} ({queue}): the store answered {} {}: {detail}",
        r.status,
        r.code.as_deref().unwrap_or("")
    ))
}

fn unavailable_msg(m: String) -> BackendError {
    BackendError::Unavailable(m.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_text_is_escaped_for_xml() {
        assert_eq!(
            message_xml("a<b&c>"),
            "<QueueMessage><MessageText>a&lt;b&amp;c&gt;</MessageText></QueueMessage>"
        );
    }

    #[test]
    fn received_lists_parse() {
        let xml = "<?xml version=\"1.0\" encoding=\"utf-8\"?><QueueMessagesList><QueueMessage><MessageId>m1</MessageId><InsertionTime>x</InsertionTime><PopReceipt>AQ+/=</PopReceipt><DequeueCount>2</DequeueCount><MessageText>hi</MessageText></QueueMessage><QueueMessage><MessageId>m2</MessageId></QueueMessage></QueueMessagesList>";
        let list: MessageList = parse_xml(xml, "test").unwrap();
        assert_eq!(list.messages.len(), 2);
        assert_eq!(list.messages[0].pop, "AQ+/=");
        assert_eq!(list.messages[0].dequeue_count, 2);
        assert_eq!(list.messages[1].text, "");
        let empty: MessageList = parse_xml("<QueueMessagesList />", "test").unwrap();
        assert!(empty.messages.is_empty());
    }
}
