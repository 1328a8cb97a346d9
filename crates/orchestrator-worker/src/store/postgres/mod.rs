//! PostgreSQL: the queue and the store of a fleet. Any number of workers on
//! any number of machines share one database.
//!
//! Built on tokio-postgres with deadpool's pool (light, async, prepared
//! statements cached per connection; sqlx's compile-time checks would need
//! a database at build time or checked-in query data, and twice the build).
//! Leases are `FOR UPDATE SKIP LOCKED`; a `NOTIFY` on submit wakes idle
//! workers (LISTEN on a connection of its own, re-established when lost);
//! liveness is judged by the database's clock; migrations are numbered,
//! applied under an advisory lock, and a newer schema is refused.

mod queue;
mod records;
mod state;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::Notify;

use super::StoreError;
use crate::config::PostgresSection;

/// The channel `NOTIFY`ed when a task becomes visible.
const TASKS_CHANNEL: &str = "orchestrator_tasks";

/// Advisory lock key serialising migrations ("orch" in ASCII, twice).
const MIGRATION_LOCK: i64 = 0x6F72_6368_6F72_6368;

/// Numbered migrations; `schema_migrations` records which ran.
const MIGRATIONS: &[&str] = &[
    // 1: queue, dead letters, journal, workers, locks, leak sightings,
    // execution records. Times are ms since the epoch by the server's clock.
    r#"
CREATE FUNCTION orch_now_ms() RETURNS bigint LANGUAGE sql VOLATILE
  AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

CREATE TABLE tasks (
    id            BIGSERIAL PRIMARY KEY,
    execution_key TEXT,
    body          TEXT    NOT NULL,
    attributes    TEXT    NOT NULL DEFAULT '{}',
    state         TEXT    NOT NULL,
    attempts      BIGINT  NOT NULL DEFAULT 0,
    visible_at    BIGINT  NOT NULL,
    lease_owner   TEXT,
    lease_token   TEXT,
    history       TEXT    NOT NULL DEFAULT '[]',
    outcome       TEXT,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL
);
CREATE INDEX tasks_visible ON tasks (visible_at, id) WHERE state IN ('ready', 'leased');
CREATE INDEX tasks_state ON tasks (state, updated_at);
CREATE UNIQUE INDEX tasks_live_key ON tasks (execution_key)
  WHERE execution_key IS NOT NULL AND state IN ('ready', 'leased');

CREATE TABLE dead_letters (
    id         BIGSERIAL PRIMARY KEY,
    task_id    BIGINT  NOT NULL,
    body       TEXT    NOT NULL,
    reason     TEXT    NOT NULL,
    history    TEXT    NOT NULL,
    created_at BIGINT  NOT NULL,
    replayed   BOOLEAN NOT NULL DEFAULT false
);

CREATE TABLE journal (
    id            BIGSERIAL PRIMARY KEY,
    execution_key TEXT    NOT NULL,
    handle_id     TEXT    NOT NULL,
    runner_type   TEXT    NOT NULL,
    handle        TEXT    NOT NULL,
    owner         TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    reap_attempts BIGINT  NOT NULL DEFAULT 0,
    note          TEXT,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL
);
CREATE UNIQUE INDEX journal_live_key ON journal (execution_key) WHERE state = 'live';
CREATE INDEX journal_open ON journal (state) WHERE state <> 'released';

CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    pid          BIGINT NOT NULL,
    host         TEXT   NOT NULL DEFAULT '',
    runners      TEXT   NOT NULL DEFAULT '[]',
    in_flight    BIGINT NOT NULL DEFAULT 0,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);

CREATE TABLE locks (
    name       TEXT PRIMARY KEY,
    holder     TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE leak_sightings (
    runner_type TEXT   NOT NULL,
    resource_id TEXT   NOT NULL,
    first_seen  BIGINT NOT NULL,
    PRIMARY KEY (runner_type, resource_id)
);

CREATE TABLE executions (
    key              TEXT PRIMARY KEY,
    runner           TEXT    NOT NULL,
    bench            TEXT    NOT NULL DEFAULT '',
    payload          TEXT    NOT NULL DEFAULT '',
    correlation_id   TEXT    NOT NULL,
    labels           TEXT    NOT NULL DEFAULT '{}',
    submitted_by     TEXT    NOT NULL DEFAULT '',
    state            TEXT    NOT NULL,
    settled          BOOLEAN NOT NULL DEFAULT false,
    cancel_requested BOOLEAN NOT NULL DEFAULT false,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    settled_at       BIGINT,
    attempts         JSONB   NOT NULL DEFAULT '[]',
    result           TEXT,
    artifacts        TEXT    NOT NULL DEFAULT '[]',
    cases            TEXT    NOT NULL DEFAULT '[]',
    error            TEXT
);
CREATE INDEX executions_created ON executions (created_at);
CREATE INDEX executions_correlation ON executions (correlation_id, created_at);
CREATE INDEX executions_cancel ON executions (key) WHERE cancel_requested AND NOT settled;

CREATE TABLE execution_events (
    id      BIGSERIAL PRIMARY KEY,
    key     TEXT   NOT NULL,
    at      BIGINT NOT NULL,
    state   TEXT   NOT NULL,
    attempt BIGINT,
    worker  TEXT,
    message TEXT   NOT NULL DEFAULT ''
);
CREATE INDEX execution_events_key ON execution_events (key, id);
"#,
];

/// The PostgreSQL queue and store. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    wake: Arc<Notify>,
    listener: Arc<tokio::task::JoinHandle<()>>,
    shown: String,
}

impl PgStore {
    /// The identity of this connected store, shared by its clones.
    fn database(&self) -> usize {
        Arc::as_ptr(&self.wake).addr()
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgStore({})", self.shown)
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // The last clone stops the listener.
        if Arc::strong_count(&self.listener) == 1 {
            self.listener.abort();
        }
    }
}

/// Classify a tokio-postgres error: lost or refused connections (and a
/// server shutting down or full) are [`StoreError::Unavailable`].
pub(crate) fn pg_err(e: tokio_postgres::Error) -> StoreError {
    let io =
        std::error::Error::source(&e).is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
    let top = e.to_string();
    let unavailable = e.is_closed()
        || io
        || top.starts_with("error connecting")
        || top.starts_with("timeout")
        || top.starts_with("error communicating")
        || e.code().is_some_and(|c| {
            let code = c.code();
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
        });
    let text = describe(&e);
    if unavailable {
        StoreError::Unavailable(text)
    } else {
        StoreError::Store(text)
    }
}

/// Run `sql` through the connection's prepared-statement cache (a plain
/// string would be parsed on the server every time: a round trip more).
pub(crate) async fn exec<C: deadpool_postgres::GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64, StoreError> {
    let stmt = c.prepare_cached(sql).await.map_err(pg_err)?;
    c.execute(&stmt, params).await.map_err(pg_err)
}

/// [`exec`] for a query returning at most one row.
pub(crate) async fn query_opt<C: deadpool_postgres::GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Option<tokio_postgres::Row>, StoreError> {
    let stmt = c.prepare_cached(sql).await.map_err(pg_err)?;
    c.query_opt(&stmt, params).await.map_err(pg_err)
}

/// An error's message with its causes, once each.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => {
            let refused = e.code().is_some_and(|c| c.code().starts_with("28"))
                || e.to_string().starts_with("authentication");
            match pg_err(e) {
                StoreError::Store(text) | StoreError::Unavailable(text) if refused => {
                    StoreError::Config(format!("the database refused the login: {text}"))
                }
                other => other,
            }
        }
        PoolError::Timeout(_) => {
            StoreError::Unavailable("no database connection within the pool's timeout".into())
        }
        other => StoreError::Unavailable(describe(&other)),
    }
}

/// The connection string, with its password hidden, for messages.
fn shown_url(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let port = config
        .get_ports()
        .first()
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    format!(
        "postgres://{}@{}{port}/{}",
        config.get_user().unwrap_or("?"),
        hosts.join(","),
        config.get_dbname().unwrap_or("?")
    )
}

/// The TLS connector: rustls with the platform's roots plus `ca_file`.
/// Whether TLS is used is the URL's `sslmode` (prefer, require, disable).
fn tls(section: &PostgresSection) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &section.ca_file {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
            StoreError::Config(format!("queue.postgres.ca_file {}: {e}", path.display()))
        })?;
        for cert in certs {
            let cert = cert.map_err(|e| {
                StoreError::Config(format!("queue.postgres.ca_file {}: {e}", path.display()))
            })?;
            roots.add(cert).map_err(|e| {
                StoreError::Config(format!("queue.postgres.ca_file {}: {e}", path.display()))
            })?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Store(format!("TLS set-up: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl PgStore {
    /// Connect to the database of `section` (or `ORCHESTRATOR_DATABASE_URL`),
    /// apply missing migrations, and start listening for new tasks.
    pub async fn connect(section: &PostgresSection) -> Result<PgStore, StoreError> {
        let url = section
            .url()
            .map_err(|e| StoreError::Config(e.to_string()))?;
        let config: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError::Config(format!(
                "url is not a PostgreSQL connection string ({e}); expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
            ))
        })?;
        let shown = shown_url(&config);
        let mut config = config;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(section.connect_timeout_seconds));
        }
        let connector = tls(section)?;
        let manager = Manager::from_config(
            config.clone(),
            connector.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let timeout = Duration::from_secs(section.connect_timeout_seconds);
        let pool = Pool::builder(manager)
            .max_size(section.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| StoreError::Store(format!("pool set-up: {e}")))?;
        let with_place = |e: StoreError| match e {
            StoreError::Unavailable(m) => {
                StoreError::Unavailable(format!("cannot connect to {shown}: {m}"))
            }
            StoreError::Store(m) => StoreError::Store(format!("{shown}: {m}")),
            StoreError::Config(m) => StoreError::Config(format!("queue.postgres ({shown}): {m}")),
            other => other,
        };
        let mut client = pool.get().await.map_err(pool_err).map_err(with_place)?;
        migrate(&mut client).await.map_err(with_place)?;
        drop(client);
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(config, connector, Arc::clone(&wake)));
        Ok(PgStore {
            pool,
            wake,
            listener: Arc::new(listener),
            shown,
        })
    }

    /// A pooled connection.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }

    /// The connection string with the password hidden.
    pub fn shown_url(&self) -> &str {
        &self.shown
    }
}

/// Apply missing migrations under an advisory lock; refuse a newer schema.
async fn migrate(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    BIGINT PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(pg_err)?;
    let found: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(pg_err)?
        .get(0);
    if found > known {
        return Err(StoreError::SchemaTooNew { found, known });
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        let version = i64::try_from(i + 1).unwrap_or(i64::MAX);
        tx.batch_execute(sql).await.map_err(|e| {
            StoreError::Store(format!("migration {version} failed: {}", describe(&e)))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(pg_err)?;
    }
    tx.commit().await.map_err(pg_err)
}

/// LISTEN for new tasks on a connection of its own; wake waiters on each
/// notification. Reconnects with backoff when the connection is lost.
async fn listen(
    config: tokio_postgres::Config,
    connector: tokio_postgres_rustls::MakeRustlsConnect,
    wake: Arc<Notify>,
) {
    use futures::StreamExt;
    let backoff = runner_core::Backoff {
        base: Duration::from_millis(200),
        max: Duration::from_secs(10),
    };
    let mut failures = 0u32;
    loop {
        match config.connect(connector.clone()).await {
            Ok((client, mut connection)) => {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                let listen_sql = format!("LISTEN {TASKS_CHANNEL}");
                let ok = {
                    let listening = client.batch_execute(&listen_sql);
                    // The connection must be polled for LISTEN to complete.
                    let mut listening = std::pin::pin!(listening);
                    loop {
                        tokio::select! {
                            done = &mut listening => break done.is_ok(),
                            msg = messages.next() => if msg.is_none() { break false },
                        }
                    }
                };
                if ok {
                    failures = 0;
                    // Anything submitted while not listening is visible now.
                    wake.notify_waiters();
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                                wake.notify_waiters();
                                wake.notify_one();
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "the LISTEN connection failed");
                                break;
                            }
                        }
                    }
                }
                drop(client);
            }
            Err(e) => tracing::warn!(error = %describe(&e), "cannot open the LISTEN connection"),
        }
        failures = failures.saturating_add(1);
        tokio::time::sleep(backoff.delay(failures)).await;
    }
}
