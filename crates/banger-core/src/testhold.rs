//! Test holds: named points in multi-step work where the daemon waits, so
//! a test can SIGKILL it, cancel the operation or race it exactly there.
//!
//! Off unless the daemon runs with `debug.test_endpoints = true` *and*
//! `BANGER_TEST_HOLD` names points (comma-separated; `op:KIND:STEP` holds
//! after that step's work, before its end is recorded). A hold writes a
//! file named after the point into `BANGER_TEST_HOLD_DIR` and waits until
//! the test deletes it.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// What the daemon holds at, read once at start.
#[derive(Debug, Default)]
struct Holds {
    points: Vec<String>,
    dir: Option<PathBuf>,
}

static HOLDS: OnceLock<Holds> = OnceLock::new();

const POLL: Duration = Duration::from_millis(20);

/// Reads the holds from the environment, once; with `enabled` false (the
/// daemon's test endpoints are off) none are ever taken.
pub fn configure(enabled: bool) {
    let holds = if enabled {
        parse(
            std::env::var("BANGER_TEST_HOLD").ok().as_deref(),
            std::env::var_os("BANGER_TEST_HOLD_DIR").map(PathBuf::from),
        )
    } else {
        Holds::default()
    };
    if !holds.points.is_empty() {
        tracing::warn!(points = ?holds.points, "test holds are set");
    }
    let _ = HOLDS.set(holds);
}

fn parse(points: Option<&str>, dir: Option<PathBuf>) -> Holds {
    let Some(dir) = dir else {
        return Holds::default();
    };
    Holds {
        points: points
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect(),
        dir: Some(dir),
    }
}

/// The marker file of `point`, when the daemon holds there.
fn marker(point: &str) -> Option<PathBuf> {
    let holds = HOLDS.get()?;
    if !holds.points.iter().any(|p| p == point) {
        return None;
    }
    let file = point.replace([':', '/'], "_");
    let path = holds.dir.as_ref()?.join(file);
    if let Err(e) = std::fs::write(&path, point) {
        tracing::warn!(point, error = %e, "cannot write a test hold's marker; not holding");
        return None;
    }
    tracing::warn!(point, "holding at a test point");
    Some(path)
}

/// Holds at `point` (async work) until the test releases it.
pub async fn point(point: &str) {
    if let Some(path) = marker(point) {
        while path.exists() {
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Holds at `point` in blocking work (a blocking thread) until released.
pub fn point_blocking(point: &str) {
    if let Some(path) = marker(point) {
        while path.exists() {
            std::thread::sleep(POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_need_a_dir_and_are_trimmed() {
        assert!(parse(Some("a"), None).points.is_empty());
        let h = parse(Some(" op:vm.create:spawn , vm.rm:row,,"), Some("/d".into()));
        assert_eq!(h.points, ["op:vm.create:spawn", "vm.rm:row"]);
        assert!(parse(None, Some("/d".into())).points.is_empty());
    }
}
