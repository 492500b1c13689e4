//! The SQLite store: the one place state is persisted.
//!
//! WAL mode with `synchronous=FULL`, so a committed transaction survives a
//! SIGKILL of the daemon (and a power cut). Schema changes are migrations
//! (rusqlite_migration, tracked in `PRAGMA user_version`); the store refuses a
//! database written by a newer banger. Subsystems run their SQL through
//! [`Store::read`] and [`Store::write`]; every write is one transaction.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, Transaction};
use rusqlite_migration::{Migrations, M};
use thiserror::Error;

/// Schema migrations, oldest first. Never edit a released one; append.
const MIGRATIONS: &[&str] = &[
    // 1: operations and their event log.
    r#"
    CREATE TABLE ops (
        id               TEXT PRIMARY KEY,
        kind             TEXT NOT NULL,
        target           TEXT NOT NULL,
        state            TEXT NOT NULL,
        created_at       TEXT NOT NULL,
        finished_at      TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        steps            TEXT NOT NULL,
        result           TEXT,
        error            TEXT,
        last_seq         INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    CREATE INDEX ops_state ON ops(state);
    CREATE INDEX ops_created ON ops(created_at);
    CREATE TABLE op_events (
        op_id TEXT NOT NULL REFERENCES ops(id) ON DELETE CASCADE,
        seq   INTEGER NOT NULL,
        at    TEXT NOT NULL,
        body  TEXT NOT NULL,
        PRIMARY KEY (op_id, seq)
    ) STRICT;
    "#,
    // 2: images. The manifest is the API's Image minus `used_by`, as JSON.
    r#"
    CREATE TABLE images (
        name       TEXT PRIMARY KEY,
        digest     TEXT NOT NULL,
        source     TEXT NOT NULL,
        created_at TEXT NOT NULL,
        manifest   TEXT NOT NULL
    ) STRICT;
    CREATE INDEX images_digest ON images(digest);
    "#,
    // 3: VMs. `state` is the crash-recovery record: `creating` rows are
    // rolled back at start, `running` ones adopted or marked stopped.
    r#"
    CREATE TABLE vms (
        id           TEXT PRIMARY KEY,
        name         TEXT NOT NULL UNIQUE,
        image        TEXT NOT NULL,
        image_digest TEXT NOT NULL,
        backend      TEXT NOT NULL,
        accel        TEXT NOT NULL,
        cpus         INTEGER NOT NULL,
        memory_mib   INTEGER NOT NULL,
        work_bytes   INTEGER NOT NULL,
        ip           TEXT NOT NULL UNIQUE,
        mac          TEXT NOT NULL,
        tap          TEXT NOT NULL,
        state        TEXT NOT NULL,
        pid          INTEGER,
        created_at   TEXT NOT NULL,
        started_at   TEXT,
        stop_reason  TEXT,
                host_key     TEXT NOT NULL
    ) STRICT;
    "#,
    // 4: guest sessions. Deleted with their VM.
    r#"
    CREATE TABLE sessions (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        vm_id       TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
        argv        TEXT NOT NULL,
        cwd         TEXT,
        state       TEXT NOT NULL,
        exit_code   INTEGER,
        pid         INTEGER,
        boot_id     TEXT NOT NULL,
        started_at  TEXT NOT NULL,
        stdout_size INTEGER NOT NULL DEFAULT 0,
        stderr_size INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    "#,
    // 5: a VM's coding agent; workspaces (host repositories pushed into a
    // guest), deleted with their VM.
    r#"
    ALTER TABLE vms ADD COLUMN agent TEXT;
    CREATE TABLE workspaces (
        vm_id           TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
        name            TEXT NOT NULL,
        host_path       TEXT NOT NULL,
        dest            TEXT NOT NULL,
        base_commit     TEXT NOT NULL,
        branch          TEXT,
        pushed_at       TEXT NOT NULL,
        exported_commit TEXT,
        exported_at     TEXT,
        PRIMARY KEY (vm_id, name)
    ) STRICT;
    "#,
    // 6: network policy per VM; port forwards from the host (deleted with
    // their VM); daemon settings (e.g. the ip_forward value to restore).
    r#"
    ALTER TABLE vms ADD COLUMN isolated INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE vms ADD COLUMN egress TEXT;
    CREATE TABLE forwards (
        host_addr  TEXT NOT NULL,
        host_port  INTEGER NOT NULL,
        vm_id      TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
        guest_port INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (host_addr, host_port)
    ) STRICT;
    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;
    "#,
    // 7: the warm pool: pool VMs are ordinary rows marked `pool`, hidden
    // from users until a create claims one; `pools` says how many to keep.
    r#"
    ALTER TABLE vms ADD COLUMN pool INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE pools (
        image      TEXT NOT NULL,
        cpus       INTEGER NOT NULL,
        memory_mib INTEGER NOT NULL,
        work_bytes INTEGER NOT NULL,
        size       INTEGER NOT NULL,
        PRIMARY KEY (image, cpus, memory_mib, work_bytes)
    ) STRICT;
    "#,
    // 8: snapshots (`vm snapshot`, `vm create --from-snapshot`, `vm fork`).
    // A `creating` row is removed (files too) by a restarted daemon, which
    // also resumes `source_id` if the daemon died while it was paused.
    // `hidden`: a fork's own snapshot, removed when the fork is done.
    r#"
    CREATE TABLE snapshots (
        id           TEXT PRIMARY KEY,
        name         TEXT NOT NULL UNIQUE,
        state        TEXT NOT NULL,
        source_vm    TEXT NOT NULL,
        source_id    TEXT NOT NULL,
        image        TEXT NOT NULL,
        image_digest TEXT NOT NULL,
        backend      TEXT NOT NULL,
        accel        TEXT NOT NULL,
        cpus         INTEGER NOT NULL,
        memory_mib   INTEGER NOT NULL,
        work_bytes   INTEGER NOT NULL,
        agent        TEXT,
        with_memory  INTEGER NOT NULL,
        hidden       INTEGER NOT NULL DEFAULT 0,
        size_bytes   INTEGER NOT NULL DEFAULT 0,
        -- The VM's workspace rows then (JSON), given to VMs made from it.
        workspaces   TEXT NOT NULL DEFAULT '[]',
        created_at   TEXT NOT NULL
    ) STRICT;
    "#,
    // 9: sessions on a pseudo-terminal.
    r#"
    ALTER TABLE sessions ADD COLUMN tty INTEGER NOT NULL DEFAULT 0;
    "#,
    // 10: who made each VM and snapshot (access.confine_users); NULL: made
    // before, or by root, so only root and the daemon's admins reach it.
    r#"
    ALTER TABLE vms ADD COLUMN owner_uid INTEGER;
    ALTER TABLE snapshots ADD COLUMN owner_uid INTEGER;
    "#,
    // 11: E2B: API keys (digests) and the sandbox label of a VM.
    r#"
    CREATE TABLE e2b_keys (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        owner_uid   INTEGER NOT NULL,
        sha256      TEXT NOT NULL UNIQUE,
        prefix      TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        UNIQUE (name, owner_uid)
    ) STRICT;
    CREATE TABLE e2b_sandboxes (
        vm_id        TEXT PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
        owner_uid    INTEGER NOT NULL,
        key_id       TEXT NOT NULL,
        template     TEXT NOT NULL,
        metadata     TEXT NOT NULL,
        env_vars     TEXT NOT NULL,
        token_sha256 TEXT NOT NULL,
        started_at   TEXT NOT NULL,
        end_at       TEXT NOT NULL,
        auto_pause   INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    "#,
    // 12: an E2B sandbox outlives its VM while paused (a snapshot holds
    // it), so its row is keyed by the sandbox id; access tokens are derived
    // (e2b/tokens.rs), not stored.
    r#"
    DROP TABLE e2b_sandboxes;
    CREATE TABLE e2b_boxes (
        id              TEXT PRIMARY KEY,
        owner_uid       INTEGER NOT NULL,
        key_id          TEXT NOT NULL,
        template        TEXT NOT NULL,
        metadata        TEXT NOT NULL,
        env_vars        TEXT NOT NULL,
        started_at      TEXT NOT NULL,
        end_at          TEXT NOT NULL,
        timeout_secs    INTEGER NOT NULL,
        auto_pause      INTEGER NOT NULL DEFAULT 0,
        paused_snapshot TEXT
    ) STRICT;
    "#,
];

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("Cannot open the database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("Cannot migrate the database {path} to schema version {target}")]
    Migrate {
        path: PathBuf,
        target: usize,
        #[source]
        source: rusqlite_migration::Error,
    },
    #[error(
        "The database {path} has schema version {found}, newer than this banger knows ({known})"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: usize,
    },
    #[error("Database query failed")]
    Sqlite(#[from] rusqlite::Error),
    #[error("Stored {what} is corrupt: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

impl crate::ToApiError for StoreError {
    fn hint(&self) -> Option<String> {
        match self {
            StoreError::TooNew { .. } => {
                Some("Upgrade banger, or point --state-dir elsewhere".into())
            }
            _ => None,
        }
    }
}

pub struct Store {
    path: PathBuf,
    /// Writes (and their fsync) go through this one.
    conn: Mutex<Connection>,
    /// Reads go through this one: with WAL they see every committed write
    /// and never wait for a write's fsync under the writer's lock.
    reader: Mutex<Connection>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.into(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(open_err)?;
        if found > MIGRATIONS.len() as i64 {
            return Err(StoreError::TooNew {
                path: path.into(),
                found,
                known: MIGRATIONS.len(),
            });
        }
        let migrations = Migrations::new(MIGRATIONS.iter().map(|sql| M::up(sql)).collect());
        migrations
            .to_latest(&mut conn)
            .map_err(|source| StoreError::Migrate {
                path: path.into(),
                target: MIGRATIONS.len(),
                source,
            })?;
        let reader = Connection::open(path).map_err(open_err)?;
        reader
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        reader
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        Ok(Store {
            path: path.into(),
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .lock()
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// The schema version this build migrates to.
    pub fn latest_schema_version() -> usize {
        MIGRATIONS.len()
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable:
        // SQLite rolls back the unfinished transaction when it is dropped.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs read-only queries (on the reader connection).
    pub fn read<T, E>(&self, f: impl FnOnce(&Connection) -> Result<T, E>) -> Result<T, E> {
        let reader = self
            .reader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&reader)
    }

    /// Runs `f` in one transaction, committed when it returns `Ok`.
    pub fn write<T, E>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<rusqlite::Error>,
    {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let v = f(&tx)?;
        tx.commit()?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_migrates_and_records_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("b.db");
        let s = Store::open(&db).expect("open");
        assert_eq!(
            s.schema_version().expect("version"),
            MIGRATIONS.len() as i64
        );
        let mode: String = s
            .read(|c| c.pragma_query_value(None, "journal_mode", |r| r.get(0)))
            .expect("mode");
        assert_eq!(mode, "wal");
        drop(s);
        // Reopening is idempotent.
        let s = Store::open(&db).expect("reopen");
        assert_eq!(
            s.schema_version().expect("version"),
            MIGRATIONS.len() as i64
        );
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("b.db");
        {
            let c = Connection::open(&db).expect("open");
            c.pragma_update(None, "user_version", 999).expect("set");
        }
        let err = Store::open(&db).expect_err("too new");
        assert!(
            matches!(err, StoreError::TooNew { found: 999, .. }),
            "{err}"
        );
    }

    #[test]
    fn failed_write_rolls_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("b.db")).expect("open");
        let r: Result<(), StoreError> = s.write(|tx| {
            tx.execute(
                "INSERT INTO ops (id, kind, target, state, created_at, steps) \
                VALUES ('a','k','t','running','now','[]')",
                [],
            )?;
            Err(StoreError::Corrupt {
                what: "test",
                detail: "forced".into(),
            })
        });
        assert!(r.is_err());
        let n: i64 = s
            .read(|c| c.query_row("SELECT count(*) FROM ops", [], |r| r.get(0)))
            .expect("count");
        assert_eq!(n, 0);
    }
}
