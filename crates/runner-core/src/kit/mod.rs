//! The backend kit: what every backend uses instead of writing its own.
//!
//! - [`lines`]: the bounded line assembler and the log follower over it;
//! - [`artifact_writer`]: streaming artifacts to disk, redacted and hashed;
//! - [`classify`]: HTTP statuses, AWS codes and messages to the error taxonomy;
//! - [`checks`]: payload checks naming the field they refuse.

pub mod artifact_writer;
pub mod checks;
pub mod classify;
pub mod lines;

pub use artifact_writer::{
    ArtifactWriter, ChunkSource, RedactingFile, StreamError, Written, copy_file_redacted,
    copy_redacted, describe_file, read_chunks, write_stream,
};
pub use classify::BackendError;
pub use lines::{LineAssembler, LineStats, LogFollower};
