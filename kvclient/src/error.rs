//! Why an operation failed, and which failures another node may still
//! answer.

use consensus::CommandResult;
use proto::kv::ErrorDetail;
use proto::kv::error_detail::Kind;

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The client was given no endpoint.
    #[error("no endpoints given")]
    NoEndpoints,
    /// The request is invalid; it changed nothing.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The store executed the command and it failed (e.g. incrementing a
    /// value that is not an integer); it changed nothing.
    #[error("the command failed: {0}")]
    Execution(String),
    /// The cluster no longer knows this client's session (no update for
    /// longer than its session timeout): the request was refused and will
    /// never be applied, but an earlier copy of it may have been, before the
    /// session expired. The client has taken a fresh id for its next
    /// operations.
    #[error(
        "{0}; the outcome of this request is unknown (an earlier attempt may have been applied before the session expired)"
    )]
    SessionExpired(String),
    /// A local file could not be written (a backup).
    #[error("{0}")]
    File(String),
    /// No answer before the deadline: the operation may or may not have
    /// taken effect.
    #[error("no answer within {timeout_ms} ms (last error: {last_error}); the outcome is unknown")]
    Timeout {
        /// The deadline, in milliseconds.
        timeout_ms: u128,
        /// The last error seen, to explain why.
        last_error: String,
    },
}

impl ClientError {
    /// True when the operation may have taken effect.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            ClientError::Timeout { .. } | ClientError::SessionExpired(_)
        )
    }
}

/// What a failed attempt means for the next one.
pub(crate) enum Retry {
    /// Go to this endpoint (a redirect).
    To(String),
    /// Try another endpoint, after a backoff.
    Elsewhere,
    /// Stop: the answer is final.
    Fail(ClientError),
    /// Nil-ext's fast path: this replica does not take the write there.
    SlowPath,
}

/// Reads the machine-readable detail of a server error.
pub fn error_detail(status: &tonic::Status) -> Option<ErrorDetail> {
    proto::errors::unpack(status.details()).filter(|d| d.kind != Kind::Unspecified as i32)
}

pub(crate) fn classify(status: &tonic::Status) -> Retry {
    match error_detail(status) {
        Some(detail) => match Kind::try_from(detail.kind).unwrap_or(Kind::Unspecified) {
            Kind::NotLeader if !detail.leader_client_addr.is_empty() => {
                Retry::To(detail.leader_client_addr)
            }
            Kind::NotLeader | Kind::Unavailable | Kind::DeadlineExceeded | Kind::Unspecified => {
                Retry::Elsewhere
            }
            Kind::InvalidArgument => Retry::Fail(ClientError::Invalid(detail.message)),
            Kind::Execution => Retry::Fail(ClientError::Execution(detail.message)),
            Kind::SessionExpired => Retry::Fail(ClientError::SessionExpired(detail.message)),
            Kind::SlowPath => Retry::SlowPath,
        },
        // No detail: a transport error, a timeout of this attempt, a node
        // going away. Try elsewhere.
        None => Retry::Elsewhere,
    }
}

pub(crate) fn unexpected(result: CommandResult) -> ClientError {
    match result {
        CommandResult::Failed(error) => ClientError::Execution(error.to_string()),
        other => ClientError::Execution(format!("unexpected result {other:?}")),
    }
}
