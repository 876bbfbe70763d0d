//! [`AzureQueueBackendBuilder`]: the connection string (where the account is and how to sign
//! for it), the queue-name prefix, the poison-pill count and the timeouts.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;

use super::AzureQueueBackend;

/// The well-known account of the storage emulator (Azurite), what
/// `UseDevelopmentStorage=true` means.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// The emulator account's published key (not a secret: Microsoft documents it for Azurite).
pub const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// Where `UseDevelopmentStorage=true` finds the emulator's queue service.
pub const DEV_QUEUE_ENDPOINT: &str = "http://127.0.0.1:10001/devstoreaccount1";

/// Why a connection string or a builder setting was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AzureConfigError {
    /// A `key=value` pair is malformed, a key is unknown or a required one is missing.
    #[error("invalid connection string: {0}")]
    ConnectionString(String),
    /// `AccountKey` is not base64.
    #[error("invalid connection string: AccountKey is not base64")]
    AccountKey,
    /// The queue endpoint is not an `http://` or `https://` URL.
    #[error("invalid queue endpoint {0:?}: expected an http:// or https:// URL")]
    Endpoint(String),
    /// The prefix cannot start Azure queue names.
    #[error(
        "invalid queue prefix {0:?}: expected 1 to 20 characters from [a-z0-9-], starting with a letter or digit, no `--`, not ending in `-`"
    )]
    InvalidPrefix(String),
    /// A duration or count that must be positive was zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// The HTTP client could not be built (its TLS setup failed).
    #[error("the HTTP client could not be built")]
    Client(#[source] reqwest::Error),
}

/// How requests prove they may use the account.
#[derive(Clone)]
pub(super) enum Auth {
    /// Shared Key: every request is signed with the account key (HMAC-SHA256).
    SharedKey {
        /// The decoded account key.
        key: Vec<u8>,
    },
    /// A shared access signature, appended to every request's query.
    Sas(String),
}

/// A parsed connection string: the account, its queue endpoint and how to authenticate.
#[derive(Clone)]
pub struct ConnectionString {
    pub(super) account: String,
    /// The queue service URL without a trailing slash: `https://acct.queue.core.windows.net`
    /// or, path-style (the emulator), `http://127.0.0.1:10001/devstoreaccount1`.
    pub(super) endpoint: String,
    pub(super) auth: Auth,
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key or signature is left out.
        f.debug_struct("ConnectionString")
            .field("account", &self.account)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl ConnectionString {
    /// Parses `UseDevelopmentStorage=true` (the emulator's account on
    /// `http://127.0.0.1:10001`; a `DevelopmentStorageProxyUri` moves its host) or
    /// `DefaultEndpointsProtocol=https;AccountName=..;AccountKey=..` with an optional
    /// `QueueEndpoint=..` (else `<protocol>://<account>.queue.<EndpointSuffix>`,
    /// `core.windows.net` by default); `SharedAccessSignature=..` may stand for the key.
    ///
    /// ```
    /// use job_core::backend::azure::ConnectionString;
    ///
    /// let dev = ConnectionString::parse("UseDevelopmentStorage=true").unwrap();
    /// assert_eq!(dev.account(), "devstoreaccount1");
    /// assert_eq!(dev.queue_endpoint(), "http://127.0.0.1:10001/devstoreaccount1");
    ///
    /// let cloud = ConnectionString::parse(
    ///     "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=a2V5;EndpointSuffix=core.windows.net",
    /// ).unwrap();
    /// assert_eq!(cloud.queue_endpoint(), "https://acme.queue.core.windows.net");
    /// assert!(ConnectionString::parse("AccountName=acme").is_err());
    /// ```
    ///
    /// # Errors
    /// A malformed pair, an unknown key, a missing account or credential, a key that is not
    /// base64 or an endpoint that is not an http(s) URL.
    pub fn parse(s: &str) -> Result<Self, AzureConfigError> {
        let bad = |m: String| AzureConfigError::ConnectionString(m);
        let (mut dev, mut proxy, mut protocol, mut account, mut key) =
            (false, None, None, None, None);
        let (mut endpoint, mut suffix, mut sas) = (None, None, None);
        for pair in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(bad(format!("`{pair}` is not key=value")));
            };
            let v = v.trim().to_owned();
            match k.trim().to_ascii_lowercase().as_str() {
                "usedevelopmentstorage" => dev = v.eq_ignore_ascii_case("true"),
                "developmentstorageproxyuri" => proxy = Some(v),
                "defaultendpointsprotocol" => protocol = Some(v),
                "accountname" => account = Some(v),
                "accountkey" => key = Some(v),
                "queueendpoint" => endpoint = Some(v),
                "endpointsuffix" => suffix = Some(v),
                "sharedaccesssignature" => sas = Some(v.trim_start_matches('?').to_owned()),
                // Endpoints of the other services are allowed (a full account string has them).
                "blobendpoint" | "tableendpoint" | "fileendpoint" => {}
                other => return Err(bad(format!("unknown key `{other}`"))),
            }
        }
        if dev && account.is_none() {
            let endpoint = match proxy {
                Some(p) => format!("{}:10001/{DEV_ACCOUNT}", p.trim_end_matches('/')),
                None => DEV_QUEUE_ENDPOINT.to_owned(),
            };
            return Self::assemble(
                DEV_ACCOUNT.to_owned(),
                endpoint,
                Some(DEV_KEY.to_owned()),
                None,
            );
        }
        let account = account.ok_or_else(|| bad("AccountName is missing".to_owned()))?;
        let endpoint = match endpoint {
            Some(e) => e,
            None => {
                let protocol = protocol.unwrap_or_else(|| "https".to_owned());
                let suffix = suffix.unwrap_or_else(|| "core.windows.net".to_owned());
                format!("{protocol}://{account}.queue.{suffix}")
            }
        };
        if key.is_none() && sas.is_none() {
            return Err(bad(
                "AccountKey or SharedAccessSignature is required".to_owned()
            ));
        }
        Self::assemble(account, endpoint, key, sas)
    }

    fn assemble(
        account: String,
        endpoint: String,
        key: Option<String>,
        sas: Option<String>,
    ) -> Result<Self, AzureConfigError> {
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        let rest = endpoint
            .strip_prefix("https://")
            .or_else(|| endpoint.strip_prefix("http://"));
        if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) || endpoint.contains('?') {
            return Err(AzureConfigError::Endpoint(endpoint));
        }
        let auth = match (key, sas) {
            (Some(key), _) => Auth::SharedKey {
                key: base64::engine::general_purpose::STANDARD
                    .decode(key.as_bytes())
                    .map_err(|_| AzureConfigError::AccountKey)?,
            },
            (None, Some(sas)) => Auth::Sas(sas),
            (None, None) => {
                return Err(AzureConfigError::ConnectionString(
                    "AccountKey or SharedAccessSignature is required".to_owned(),
                ));
            }
        };
        Ok(Self {
            account,
            endpoint,
            auth,
        })
    }

    /// The storage account's name.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The queue service's URL (without a trailing slash).
    pub fn queue_endpoint(&self) -> &str {
        &self.endpoint
    }
}

/// Settings for an [`AzureQueueBackend`]; see [`AzureQueueBackend::builder`].
#[derive(Debug, Clone)]
pub struct AzureQueueBackendBuilder {
    pub(super) connection: String,
    pub(super) prefix: String,
    pub(super) max_recoveries: u32,
    pub(super) request_timeout: Duration,
    pub(super) connect_timeout: Duration,
}

impl AzureQueueBackendBuilder {
    pub(super) fn new(connection: String) -> Self {
        Self {
            connection,
            prefix: "jobs".to_owned(),
            max_recoveries: 3,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
        }
    }

    /// The prefix of every Azure queue this backend uses (default `jobs`): the runtime's
    /// queue `email` is the Azure queue `jobs-email`, its poison queue `jobs-email-poison`.
    /// 1 to 20 characters from `[a-z0-9-]` (Azure queue names are lowercase), starting with
    /// a letter or digit, with no `--` and no trailing `-`; checked by
    /// [`build`](Self::build).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Crash recoveries after which a job is moved to its poison queue (default 3, like the
    /// runtime's `max_recoveries`). The store counts deliveries itself (the dequeue count),
    /// and the backend reads it when it receives a message, so the count is the backend's;
    /// [`reap`](crate::backend::Backend::reap) warns once when the runtime's differs.
    pub fn max_recoveries(mut self, n: u32) -> Self {
        self.max_recoveries = n;
        self
    }

    /// Limit on one request, from sending to the last byte of the reply (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Limit on opening a connection (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Checks the settings and builds the backend. Does not connect: the first call does,
    /// so a runtime can start while the store is down.
    ///
    /// # Errors
    /// An invalid connection string or prefix, or a zero timeout or recovery count.
    pub fn build(self) -> Result<AzureQueueBackend, AzureConfigError> {
        let conn = ConnectionString::parse(&self.connection)?;
        if !valid_prefix(&self.prefix) {
            return Err(AzureConfigError::InvalidPrefix(self.prefix));
        }
        for (name, d) in [
            ("request_timeout", self.request_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if d.is_zero() {
                return Err(AzureConfigError::Zero(name));
            }
        }
        if self.max_recoveries == 0 {
            return Err(AzureConfigError::Zero("max_recoveries"));
        }
        AzureQueueBackend::from_settings(conn, self)
    }
}

/// Whether `p` can start Azure queue names: `[a-z0-9-]{1,20}`, a letter or digit first, no
/// `--`, no trailing `-`.
pub(super) fn valid_prefix(p: &str) -> bool {
    (1..=20).contains(&p.len())
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !p.starts_with('-')
        && !p.ends_with('-')
        && !p.contains("--")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_storage_is_the_emulator_account() {
        let c = ConnectionString::parse("UseDevelopmentStorage=true").unwrap();
        assert_eq!(c.account, DEV_ACCOUNT);
        assert_eq!(c.endpoint, DEV_QUEUE_ENDPOINT);
        assert!(matches!(c.auth, Auth::SharedKey { ref key } if key.len() == 64));
        let c = ConnectionString::parse(
            "UseDevelopmentStorage=true;DevelopmentStorageProxyUri=http://10.0.0.5",
        )
        .unwrap();
        assert_eq!(c.endpoint, "http://10.0.0.5:10001/devstoreaccount1");
    }

    #[test]
    fn account_strings_with_and_without_an_endpoint() {
        let c = ConnectionString::parse(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;QueueEndpoint=http://127.0.0.1:12345/devstoreaccount1/;",
        )
        .unwrap();
        assert_eq!(c.endpoint, "http://127.0.0.1:12345/devstoreaccount1");
        assert!(matches!(c.auth, Auth::SharedKey { ref key } if key == b"key"));
        let c = ConnectionString::parse(
            "AccountName=acme;SharedAccessSignature=?sv=2021&sig=abc;EndpointSuffix=core.chinacloudapi.cn",
        )
        .unwrap();
        assert_eq!(c.endpoint, "https://acme.queue.core.chinacloudapi.cn");
        assert!(matches!(c.auth, Auth::Sas(ref s) if s == "sv=2021&sig=abc"));
    }

    #[test]
    fn bad_strings_are_refused_with_the_reason() {
        for s in [
            "AccountName=acme",
            "AccountKey=a2V5",
            "AccountName=acme;AccountKey=a2V5;Colour=blue",
            "AccountName=acme;AccountKey",
        ] {
            assert!(
                matches!(
                    ConnectionString::parse(s),
                    Err(AzureConfigError::ConnectionString(_))
                ),
                "{s}"
            );
        }
        assert!(matches!(
            ConnectionString::parse("AccountName=acme;AccountKey=not base64!"),
            Err(AzureConfigError::AccountKey)
        ));
        assert!(matches!(
            ConnectionString::parse("AccountName=acme;AccountKey=a2V5;QueueEndpoint=ftp://x"),
            Err(AzureConfigError::Endpoint(_))
        ));
    }

    #[test]
    fn prefixes_must_start_azure_queue_names() {
        for ok in ["jobs", "t-1", "a", "abcdefghij0123456789"] {
            assert!(valid_prefix(ok), "{ok}");
        }
        for bad in [
            "",
            "Jobs",
            "a_b",
            "-a",
            "a-",
            "a--b",
            "abcdefghij0123456789x",
        ] {
            assert!(!valid_prefix(bad), "{bad}");
        }
    }
}
