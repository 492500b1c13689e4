//! The `e2b_boxes` table: a sandbox's label (owner, key, template,
//! metadata, environment, its end, and the snapshot holding it while
//! paused). Keyed by the sandbox id, which is its VM's name.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

use super::{E2b, E2bError};

/// A sandbox's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Row {
    pub id: String,
    pub owner_uid: u32,
    pub template: String,
    pub metadata: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub started_at: String,
    pub end_at: String,
    pub timeout_secs: u64,
    pub auto_pause: bool,
    /// Set while paused: the snapshot that holds it.
    pub paused: Option<String>,
}

const COLUMNS: &str = "id, owner_uid, template, metadata, env_vars, started_at, end_at, \
    timeout_secs, auto_pause, paused_snapshot";

fn row_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let meta: String = r.get(3)?;
    let env: String = r.get(4)?;
    Ok(Row {
        id: r.get(0)?,
        owner_uid: r.get(1)?,
        template: r.get(2)?,
        metadata: serde_json::from_str(&meta).unwrap_or_default(),
        env: serde_json::from_str(&env).unwrap_or_default(),
        started_at: r.get(5)?,
        end_at: r.get(6)?,
        timeout_secs: u64::try_from(r.get::<_, i64>(7)?).unwrap_or(0),
        auto_pause: r.get::<_, i64>(8)? != 0,
        paused: r.get(9)?,
    })
}

/// `now + secs` as the stored end. Pure.
pub(super) fn end_after(now: DateTime<Utc>, secs: u64) -> String {
    after(now, secs).to_rfc3339()
}

/// `now + secs`, at most a century on (past that is "never" here). Pure.
pub(super) fn after(now: DateTime<Utc>, secs: u64) -> DateTime<Utc> {
    const CENTURY: i64 = 100 * 366 * 24 * 3600;
    let secs = i64::try_from(secs).unwrap_or(CENTURY).min(CENTURY);
    now + chrono::Duration::seconds(secs)
}

/// Whether the stored `end` has passed at `now` (an unreadable one has).
/// Pure.
pub(super) fn ended(end: &str, now: DateTime<Utc>) -> bool {
    DateTime::parse_from_rfc3339(end).map_or(true, |e| e < now)
}

impl E2b {
    pub(super) fn insert_row(&self, row: &Row, key_id: &str) -> Result<(), E2bError> {
        let json =
            |m: &BTreeMap<String, String>| serde_json::to_string(m).unwrap_or_else(|_| "{}".into());
        self.store.write(|tx| {
            tx.execute(
                &format!(
                    "INSERT INTO e2b_boxes ({COLUMNS}, key_id) \
                    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                ),
                params![
                    row.id,
                    row.owner_uid,
                    row.template,
                    json(&row.metadata),
                    json(&row.env),
                    row.started_at,
                    row.end_at,
                    i64::try_from(row.timeout_secs).unwrap_or(i64::MAX),
                    row.auto_pause,
                    row.paused,
                    key_id,
                ],
            )
            .map(|_| ())
        })?;
        Ok(())
    }

    /// Every sandbox row (of `uid` when given).
    pub(super) fn rows(&self, uid: Option<u32>) -> Result<Vec<Row>, E2bError> {
        Ok(self.store.read(|c| -> rusqlite::Result<Vec<Row>> {
            let mut stmt = c.prepare(&format!(
                "SELECT {COLUMNS} FROM e2b_boxes WHERE ?1 IS NULL OR owner_uid = ?1 \
                ORDER BY started_at DESC"
            ))?;
            let rows = stmt.query_map([uid], row_from)?;
            rows.collect()
        })?)
    }

    /// The row of sandbox `id`, if any.
    pub(super) fn row_of(&self, id: &str) -> Result<Option<Row>, E2bError> {
        Ok(self.store.read(|c| {
            c.query_row(
                &format!("SELECT {COLUMNS} FROM e2b_boxes WHERE id = ?1"),
                [id],
                row_from,
            )
            .optional()
        })?)
    }

    pub(super) fn set_end(&self, id: &str, end: &str) -> Result<(), E2bError> {
        self.store.write(|tx| {
            tx.execute(
                "UPDATE e2b_boxes SET end_at = ?2 WHERE id = ?1",
                params![id, end],
            )
            .map(|_| ())
        })?;
        Ok(())
    }

    pub(super) fn set_paused(&self, id: &str, snapshot: Option<&str>) -> Result<(), E2bError> {
        self.store.write(|tx| {
            tx.execute(
                "UPDATE e2b_boxes SET paused_snapshot = ?2 WHERE id = ?1",
                params![id, snapshot],
            )
            .map(|_| ())
        })?;
        Ok(())
    }

    pub(super) fn delete_row(&self, id: &str) -> Result<(), E2bError> {
        self.store.write(|tx| {
            tx.execute("DELETE FROM e2b_boxes WHERE id = ?1", [id])
                .map(|_| ())
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_are_stored_and_compared() {
        let now = Utc::now();
        let end = end_after(now, 10);
        assert!(!ended(&end, now));
        assert!(ended(&end, now + chrono::Duration::seconds(11)));
        assert!(ended("garbage", now), "unreadable: over");
        assert!(!ended(&end_after(now, u64::MAX), now), "no overflow");
    }
}
