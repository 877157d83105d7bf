//! The error shape every front end sees: a small `kind` that decides the HTTP status and the
//! CLI exit code, a one-line message saying what failed, the chain of causes beneath it as a
//! list (each said once, never repeated inside the message), and optional details (for
//! example the current power state when an action is not allowed).

use serde::{Deserialize, Serialize};

/// What kind of failure an error is. The API maps each kind to one HTTP status in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    NotFound,
    Conflict,
    InvalidInput,
    InvalidState,
    Unsupported,
    Busy,
    /// Something did not finish in the time it was given (an install, a guest shutdown).
    Timeout,
    Internal,
    /// The request came over the network without the agent's token (or with a wrong one).
    Unauthorized,
    /// Something the request needs cannot be reached now: the pool's store (etcd), or the
    /// pool member that owns the VM. Guests keep running; retry later.
    Unavailable,
    /// The caller is known, but its role (or its token's VM pattern) does not allow this.
    Forbidden,
    /// Too many failed logins or token attempts from this address; retry after a while.
    Throttled,
    /// The request's body is larger than the route accepts.
    TooLarge,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::InvalidState => "invalid_state",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Busy => "busy",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Throttled => "throttled",
            ErrorKind::TooLarge => "too_large",
        }
    }
}

/// The body of every error response. Displayed as `message: cause: cause`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// What caused it, outermost first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        for c in &self.causes {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            causes: Vec::new(),
            details: None,
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
    /// An error of `kind` saying `message`, caused by `source` and its own sources.
    pub fn caused(
        kind: ErrorKind,
        message: impl Into<String>,
        source: &(dyn std::error::Error + 'static),
    ) -> Self {
        Self::new(kind, message).with_cause(source)
    }

    /// `e` itself as the message and its sources as the causes.
    pub fn from_error(kind: ErrorKind, e: &(dyn std::error::Error + 'static)) -> Self {
        let mut err = Self::new(kind, e.to_string());
        if let Some(s) = e.source() {
            err = err.with_cause(s);
        }
        err
    }

    /// Append `source` and the chain beneath it to the causes.
    pub fn with_cause(mut self, source: &(dyn std::error::Error + 'static)) -> Self {
        let mut cur = Some(source);
        while let Some(c) = cur {
            self.causes.push(c.to_string());
            cur = c.source();
        }
        self
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }
    /// Prefix the message with what was being attempted, keeping the kind.
    pub fn context(mut self, what: impl std::fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("disk disk0")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn causes_are_listed_once_and_displayed_as_a_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "file not found");
        let e = ApiError::caused(ErrorKind::NotFound, "cannot start VM \"web01\"", &Outer(io));
        assert_eq!(e.causes, ["disk disk0", "file not found"]);
        assert_eq!(
            e.to_string(),
            "cannot start VM \"web01\": disk disk0: file not found"
        );
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["message"], "cannot start VM \"web01\"");
        // Old bodies without causes still read.
        let old: ApiError = serde_json::from_str(r#"{"kind":"internal","message":"x"}"#).unwrap();
        assert!(old.causes.is_empty());
    }
}
