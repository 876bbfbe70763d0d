//! The admin token guarding the dead-letter routes, compared in constant time.

use std::fmt;
use std::sync::Arc;

/// Compares two byte strings in time that depends only on their lengths, never on where
/// they first differ, so a caller cannot guess a secret byte by byte from response times.
///
/// The loop always runs over the longer input; a length mismatch is folded into the result
/// rather than returned early.
///
/// # Examples
/// ```
/// use job_examples::auth::constant_time_eq;
///
/// assert!(constant_time_eq(b"s3cret", b"s3cret"));
/// assert!(!constant_time_eq(b"s3cret", b"s3creT"));
/// assert!(!constant_time_eq(b"s3cret", b"s3cret-and-more"));
/// ```
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len().max(b.len());
    // Non-zero when the lengths differ; stays non-zero whatever the bytes do.
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..len {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    // Keeps the optimiser from turning the loop into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// What an `Authorization` header proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The bearer token matches.
    Granted,
    /// No token is configured: the admin routes are off for everyone (403).
    Disabled,
    /// A token is configured and the request's is missing or wrong (401).
    Denied,
}

/// The configured admin token, if any. An empty token counts as none, so a blank
/// `JOB_ADMIN_TOKEN=` never opens the routes. `Debug` never prints the token.
#[derive(Clone, Default)]
pub struct AdminToken(Option<Arc<str>>);

impl AdminToken {
    /// Wraps the configured token; `None` or an empty string disables the admin routes.
    pub fn new(token: Option<String>) -> Self {
        Self(token.filter(|t| !t.is_empty()).map(Arc::from))
    }

    /// True when a token is configured.
    pub fn is_configured(&self) -> bool {
        self.0.is_some()
    }

    /// Checks the value of an `Authorization` header (`Bearer <token>`).
    ///
    /// # Examples
    /// ```
    /// use job_examples::auth::{Access, AdminToken};
    ///
    /// let token = AdminToken::new(Some("s3cret".into()));
    /// assert_eq!(token.check(Some("Bearer s3cret")), Access::Granted);
    /// assert_eq!(token.check(Some("Bearer nope")), Access::Denied);
    /// assert_eq!(token.check(None), Access::Denied);
    /// assert_eq!(AdminToken::new(None).check(Some("Bearer s3cret")), Access::Disabled);
    /// ```
    pub fn check(&self, authorization: Option<&str>) -> Access {
        let Some(expected) = &self.0 else {
            return Access::Disabled;
        };
        let presented = authorization.and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim_start())
        });
        match presented {
            Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => {
                Access::Granted
            }
            _ => Access::Denied,
        }
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_configured() {
            "AdminToken(<redacted>)"
        } else {
            "AdminToken(None)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equality() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
        // A prefix padded with the zero bytes the loop substitutes is still different.
        assert!(!constant_time_eq(b"ab\0", b"ab"));
    }

    #[test]
    fn bearer_parsing() {
        let token = AdminToken::new(Some("t0k".into()));
        assert_eq!(token.check(Some("bearer t0k")), Access::Granted);
        assert_eq!(token.check(Some("Bearer  t0k")), Access::Granted);
        assert_eq!(token.check(Some("Basic t0k")), Access::Denied);
        assert_eq!(token.check(Some("t0k")), Access::Denied);
        assert_eq!(token.check(Some("Bearer ")), Access::Denied);
        assert_eq!(
            AdminToken::new(Some(String::new())).check(Some("Bearer ")),
            Access::Disabled
        );
        assert_eq!(format!("{token:?}"), "AdminToken(<redacted>)");
    }
}
