//! The web dashboard.
use super::SharedState;

/// The dashboard's routes.
pub fn router() -> axum::Router<SharedState> {
    axum::Router::new()
}
