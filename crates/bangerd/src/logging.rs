//! Structured logs: human-readable to stderr, JSON lines to
//! `<state_dir>/logs/bangerd.YYYY-MM-DD.log`, a file a day, the last
//! [`KEEP_DAYS`] kept. `BANGER_LOG` (an EnvFilter directive) overrides the
//! configured level.

use std::io::IsTerminal;
use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How many daily log files are kept.
pub const KEEP_DAYS: usize = 14;

/// Keep the guard alive for the daemon's lifetime so buffered lines are written.
pub fn init(log_dir: &Path, level: &str) -> anyhow::Result<WorkerGuard> {
    std::fs::create_dir_all(log_dir)?;
    let appender = tracing_appender::rolling::RollingFileAppender::builder()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix("bangerd")
        .filename_suffix("log")
        .max_log_files(KEEP_DAYS)
        .build(log_dir)?;
    let (file_writer, guard) = tracing_appender::non_blocking(appender);
    let filter = || {
        std::env::var("BANGER_LOG")
            .ok()
            .and_then(|s| EnvFilter::try_new(s).ok())
            .unwrap_or_else(|| EnvFilter::new(format!("{level},hyper=warn,axum=warn")))
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false)
                .with_filter(filter()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(file_writer)
                .with_filter(filter()),
        )
        .try_init()?;
    Ok(guard)
}
