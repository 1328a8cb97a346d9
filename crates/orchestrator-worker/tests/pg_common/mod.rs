//! One PostgreSQL server per test binary (started on first use, stopped
//! when the binary exits), a fresh database per test.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use orchestrator_worker::config::PostgresSection;
use orchestrator_worker::store::PgStore;
use test_emulators::postgres::Postgres;

/// The shared server.
pub fn server() -> &'static Postgres {
    static SERVER: OnceLock<Postgres> = OnceLock::new();
    SERVER.get_or_init(|| Postgres::start().expect("PostgreSQL starts"))
}

/// The URL of a fresh, empty database.
pub fn fresh_url() -> String {
    server().fresh_database().expect("a fresh database")
}

/// A store on a fresh database.
pub async fn fresh_store() -> PgStore {
    PgStore::connect(&PostgresSection::with_url(fresh_url()))
        .await
        .expect("connects")
}
