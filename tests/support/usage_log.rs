//! A temporary `--usage-log` file and its records as JSON.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::{eventually, PATIENCE};

/// A usage log path in a fresh temporary directory, removed on drop.
pub struct UsageLog {
    dir: PathBuf,
    path: PathBuf,
}

impl UsageLog {
    pub fn new() -> UsageLog {
        let dir = std::env::temp_dir().join(format!(
            "megallm-usage-{}-{}",
            std::process::id(),
            uuid_like()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("usage.jsonl");
        UsageLog { dir, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every record written so far.
    pub fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a usage line is JSON"))
            .collect()
    }

    /// Waits until at least `n` records are written, then returns them all.
    pub async fn wait(&self, n: usize) -> Vec<Value> {
        eventually(
            &format!("{n} usage records"),
            PATIENCE,
            Duration::from_millis(20),
            || async {
                let r = self.records();
                (r.len() >= n).then_some(r)
            },
        )
        .await
    }
}

impl Drop for UsageLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn uuid_like() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (N.fetch_add(1, Ordering::Relaxed) << 48)
}
