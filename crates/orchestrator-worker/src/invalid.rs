//! The error of a failed check: what is wrong, and where. Its own module
//! so that [`crate::validate`] and [`crate::secrets`] (which validate
//! calls) both use it without importing each other.

/// What is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field `{field}`: {message}")]
pub struct Invalid {
    /// The dotted path of the field (`bench.runner`, `payload.artifacts[0]`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl Invalid {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}
