//! Azure Queue Storage backend: the store layer (connection strings, the signed REST
//! client, the message records). The `Backend` implementation follows the trait change
//! (opaque lease tokens renewed by `extend`).
#![allow(dead_code, unreachable_pub)]
mod config;
mod conn;
mod decode;
pub use self::config::*;
pub use self::decode::MAX_PAYLOAD;

/// The backend (its `Backend` implementation follows the trait change).
#[derive(Debug)]
pub struct AzureQueueBackend {
    rest: conn::Rest,
}

impl AzureQueueBackend {
    fn from_settings(
        conn: ConnectionString,
        s: AzureQueueBackendBuilder,
    ) -> Result<Self, AzureConfigError> {
        let rest = conn::Rest::new(conn, s.connect_timeout, s.request_timeout)
            .map_err(AzureConfigError::Client)?;
        Ok(Self { rest })
    }

    /// Settings for a backend on `connection_string`.
    pub fn builder(connection_string: impl Into<String>) -> AzureQueueBackendBuilder {
        AzureQueueBackendBuilder::new(connection_string.into())
    }
}
