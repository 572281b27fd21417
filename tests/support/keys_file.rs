//! A temporary keys file for hot-reload tests.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A keys file in a fresh temporary directory, removed on drop.
pub struct KeysFile {
    dir: PathBuf,
    path: PathBuf,
}

impl KeysFile {
    /// Writes one key spec a line (e.g. `"key-a weight=3"`).
    pub fn new(lines: &[&str]) -> KeysFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "megallm-test-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            nanos
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("keys.txt");
        let kf = KeysFile { dir, path };
        kf.rewrite(lines);
        kf
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file's content atomically (write a sibling, then rename over), so a watcher
    /// never reads a half-written file.
    pub fn rewrite(&self, lines: &[&str]) {
        static N: AtomicUsize = AtomicUsize::new(0);
        let tmp = self
            .dir
            .join(format!("keys.txt.tmp{}", N.fetch_add(1, Ordering::Relaxed)));
        let mut text = String::from("# test keys\n");
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(&tmp, text).expect("write keys tmp");
        std::fs::rename(&tmp, &self.path).expect("rename keys file");
    }
}

impl Drop for KeysFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
