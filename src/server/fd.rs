//! File descriptors: the open-files limit raised at start, the connection cap derived from it,
//! and the accept errors that mean "out of descriptors" (pause, don't spin).

use std::io;
use std::time::{Duration, Instant};

/// Descriptors kept for everything that is not a client connection: the listener, the runtime's
/// epoll and wake-up descriptors, the keys-file watcher, log and usage files, DNS lookups.
const RESERVED: u64 = 64;

/// Raises the soft open-files limit to the hard limit (where the OS lets it) and returns the
/// limit now in force; `None` where there is no such limit or it cannot be read.
pub fn raise_nofile_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current.is_some() && limit.current != limit.maximum {
            let raised = Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            };
            if let Err(e) = setrlimit(Resource::Nofile, raised) {
                // macOS refuses an unlimited soft limit; the old limit still holds.
                tracing::debug!(error = %e, "cannot raise the open-files limit");
            }
        }
        getrlimit(Resource::Nofile).current
    }
    #[cfg(not(unix))]
    None
}

/// The connection cap when `--max-connections` is not given: half the descriptors left after
/// [`RESERVED`], because every client request being served holds an upstream socket too.
pub fn default_max_connections(nofile: Option<u64>) -> usize {
    match nofile {
        Some(n) => (n.saturating_sub(RESERVED) / 2).clamp(1, 1 << 20) as usize,
        // No limit known: a cap still keeps a flood from growing memory without bound.
        None => 1 << 16,
    }
}

/// Whether an accept error concerns the whole process (out of descriptors or memory), so that
/// accepting again at once would fail the same way, rather than the one connection.
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        use rustix::io::Errno;
        let errno = e.raw_os_error().map(Errno::from_raw_os_error);
        matches!(
            errno,
            Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
        )
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        true
    }
}

/// Lets a repeated warning through at most once per period.
pub struct Throttle {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub fn new(period: Duration) -> Self {
        Throttle {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(times suppressed since the last one let through)` when this one may be logged.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|last| now < last + self.period) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_through_per_period() {
        let mut t = Throttle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(t.allow(t0), Some(0));
        assert_eq!(t.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(t.allow(t0 + Duration::from_millis(900)), None);
        assert_eq!(t.allow(t0 + Duration::from_millis(1000)), Some(2));
    }

    #[test]
    fn cap_leaves_room_for_upstream_sockets() {
        assert_eq!(default_max_connections(Some(1024)), 480);
        assert_eq!(default_max_connections(Some(10)), 1);
        assert!(default_max_connections(None) > 1000);
    }

    #[cfg(unix)]
    #[test]
    fn out_of_descriptors_is_resource_exhaustion() {
        let e = io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error());
        assert!(is_resource_exhaustion(&e));
        assert!(!is_resource_exhaustion(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
    }
}
