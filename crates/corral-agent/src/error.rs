//! The agent's error: a [`ErrorKind`] that decides the HTTP status, a message saying what
//! failed, optional details (the current power state of a refused action), and the typed
//! error that caused it, kept as a value (not formatted into the message) so its whole chain
//! reaches the edge. `corral-api` turns it into the wire `ApiError` once
//! ([`Error::to_api`]), with the chain as `causes`; the task registry does the same when it
//! records a failed task.

use corral_model::{ApiError, ErrorKind};
use std::sync::Arc;

type Source = Arc<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
enum Cause {
    None,
    /// The error beneath this one.
    Source(Source),
    /// This error *is* `0` (its message is `0`'s): the causes start at `0`'s source.
    Origin(Source),
}

#[derive(Clone)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    pub details: Option<serde_json::Value>,
    cause: Cause,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            details: None,
            cause: Cause::None,
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// `message`, caused by `source` (and its own sources).
    pub fn caused(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error {
            cause: Cause::Source(Arc::new(source)),
            ..Self::new(kind, message)
        }
    }

    /// `e` itself, given a kind: its message is `e`'s, its causes `e`'s sources.
    pub fn from_error(kind: ErrorKind, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error {
            cause: Cause::Origin(Arc::new(e)),
            ..Self::new(kind, String::new())
        }
        .with_origin_message()
    }

    fn with_origin_message(mut self) -> Self {
        if let Cause::Origin(e) = &self.cause {
            self.message = e.to_string();
        }
        self
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Prefix the message with what was being attempted, keeping kind and causes.
    pub fn context(mut self, what: impl std::fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// The causes beneath the message, outermost first.
    pub fn causes(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = std::error::Error::source(self);
        while let Some(c) = cur {
            out.push(c.to_string());
            cur = c.source();
        }
        out
    }

    /// The wire form: every front end sees this.
    pub fn to_api(&self) -> ApiError {
        ApiError {
            kind: self.kind,
            message: self.message.clone(),
            causes: self.causes(),
            details: self.details.clone(),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)?;
        for c in self.causes() {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::None => None,
            Cause::Source(s) => Some(s.as_ref()),
            Cause::Origin(o) => o.source(),
        }
    }
}

/// An error from a front end or another host already in wire form.
impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        let mut message = e.message;
        for c in e.causes {
            message.push_str(": ");
            message.push_str(&c);
        }
        Error {
            kind: e.kind,
            message,
            details: e.details,
            cause: Cause::None,
        }
    }
}

impl From<&Error> for ApiError {
    fn from(e: &Error) -> Self {
        e.to_api()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        e.to_api()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("disk disk0")]
    struct Disk(#[source] std::io::Error);

    #[test]
    fn the_chain_reaches_the_wire_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "file not found");
        let e = Error::caused(ErrorKind::NotFound, "cannot start VM \"web01\"", Disk(io()));
        let api = e.to_api();
        assert_eq!(api.message, "cannot start VM \"web01\"");
        assert_eq!(api.causes, ["disk disk0", "file not found"]);
        let e = Error::from_error(ErrorKind::Internal, Disk(io()));
        assert_eq!(e.to_api().message, "disk disk0");
        assert_eq!(e.to_api().causes, ["file not found"]);
    }
}
