//! How often the runtime reports what other senders' messages did to it.
//!
//! Rejected messages (not valid events) and refused events (a node would
//! not take them) are what a hostile or broken peer can produce at will.
//! Each is counted ([`Counters`](crate::system::Counters)), but only
//! [`PER_SECOND`] of each kind a second are reported one by one (a log line
//! and a system event); the others are left out, and the next report that
//! goes out says how many were (`suppressed`). So a flood of bad messages
//! costs a counter each, not a log line and an event delivered to every
//! handler of the report.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most this many reports of one kind a second.
pub(crate) const PER_SECOND: u32 = 100;

const WINDOW: Duration = Duration::from_secs(1);

/// The reports of one kind: how many went out in the current second, and
/// how many were left out since the last that went out.
#[derive(Debug, Default)]
pub(crate) struct ReportLimit(Mutex<Window>);

#[derive(Debug, Default)]
struct Window {
    start: Option<Instant>,
    reported: u32,
    left_out: u64,
}

impl ReportLimit {
    /// Whether a report due `now` goes out: `Some(n)` when it does, `n`
    /// being how many were left out before it; `None` when it is left out.
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let mut window = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let current = window
            .start
            .is_some_and(|start| now.saturating_duration_since(start) < WINDOW);
        if !current {
            window.start = Some(now);
            window.reported = 0;
        }
        if window.reported >= PER_SECOND {
            window.left_out += 1;
            return None;
        }
        window.reported += 1;
        Some(std::mem::take(&mut window.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_reports_at_most_its_share_and_the_next_report_counts_the_rest() {
        let limit = ReportLimit::default();
        let start = Instant::now();
        let admitted = (0..250)
            .filter_map(|_| limit.admit(start + Duration::from_millis(500)))
            .collect::<Vec<_>>();
        assert_eq!(admitted.len(), PER_SECOND as usize);
        assert!(admitted.iter().all(|&left_out| left_out == 0));
        // Still the same second: left out.
        assert_eq!(limit.admit(start + Duration::from_millis(1_400)), None);
        // A new second: the report says how many were left out, once.
        assert_eq!(limit.admit(start + Duration::from_millis(1_600)), Some(151));
        assert_eq!(limit.admit(start + Duration::from_millis(1_601)), Some(0));
    }

    #[test]
    fn a_clock_read_out_of_order_neither_panics_nor_opens_a_window() {
        let limit = ReportLimit::default();
        let later = Instant::now() + Duration::from_secs(5);
        for _ in 0..PER_SECOND {
            assert_eq!(limit.admit(later), Some(0));
        }
        // An earlier instant (another thread read the clock first) still
        // falls in the current window.
        assert_eq!(limit.admit(later - Duration::from_millis(10)), None);
    }
}
