//! GStreamer's and GLib's own warnings in the node's log.
//!
//! Left alone, GStreamer logs nothing unless `GST_DEBUG` is set, and GLib prints criticals to
//! stderr, outside the node's log: the warning that comes before a surprise is then never seen.
//! Here GStreamer's warnings and errors (every category) and GLib's criticals and warnings go to
//! `tracing` (target `gstreamer` and `glib`), with the element that logged them. A camera with a
//! bad stream can log the same warning for every frame, so one call site logs at most
//! [`BURST`] messages per [`WINDOW`], then says how many it held back.

use std::collections::HashMap;
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::glib;

const WINDOW: Duration = Duration::from_secs(60);
const BURST: u32 = 5;
/// GLib messages are keyed by their text, which may vary without end: past this many sites the
/// table starts again rather than grow.
const MAX_SITES: usize = 1024;

/// Routes GStreamer's and GLib's logs into `tracing`; the first call wins. Needs `gst::init()`.
pub fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let limit = Mutex::new(RateLimit::new(WINDOW, BURST));
        let developer_asked = std::env::var_os("GST_DEBUG").is_some();
        if !developer_asked {
            gst::log::set_default_threshold(gst::DebugLevel::Warning);
            gst::log::remove_default_log_function();
        }
        gst::log::set_active(true);
        gst::log::add_log_function(move |category, level, file, _function, line, object, message| {
            if level > gst::DebugLevel::Warning {
                return;
            }
            let site = format!("{}:{file}:{line}", category.name());
            let Some(held_back) = admitted(&limit, &site) else {
                return;
            };
            let text = message.get().map(|m| m.to_string()).unwrap_or_default();
            let element = object.map(|o| o.to_string()).unwrap_or_default();
            let category = category.name();
            if level == gst::DebugLevel::Error {
                tracing::error!(target: "gstreamer", category, %element, held_back, "{text}");
            } else {
                tracing::warn!(target: "gstreamer", category, %element, held_back, "{text}");
            }
        });
        let glib_limit = Mutex::new(RateLimit::new(WINDOW, BURST));
        glib::log_set_default_handler(move |domain, level, message| {
            // Every g_debug() arrives here, whatever G_MESSAGES_DEBUG says: drop them first.
            let wanted = [glib::LogLevel::Error, glib::LogLevel::Critical, glib::LogLevel::Warning];
            if !wanted.contains(&level) {
                return;
            }
            let domain = domain.unwrap_or("");
            let Some(held_back) = admitted(&glib_limit, &format!("{domain}:{message}")) else {
                return;
            };
            match level {
                glib::LogLevel::Error | glib::LogLevel::Critical => {
                    tracing::error!(target: "glib", domain, held_back, "{message}")
                }
                _ => tracing::warn!(target: "glib", domain, held_back, "{message}"),
            }
        });
    });
}

/// `Some(held_back)` when a message of `site` may be logged now; the lock is let go before the
/// caller logs.
fn admitted(limit: &Mutex<RateLimit>, site: &str) -> Option<u64> {
    let verdict = limit
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .check(site, Instant::now());
    match verdict {
        Verdict::Log { held_back } => Some(held_back),
        Verdict::Suppress => None,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Log it; `held_back` messages of this site were not logged before it.
    Log {
        held_back: u64,
    },
    Suppress,
}

/// At most `burst` messages per site per window; what is held back is reported with the next
/// message that is logged.
struct RateLimit {
    window: Duration,
    burst: u32,
    sites: HashMap<String, Site>,
}

struct Site {
    window_start: Instant,
    logged: u32,
    held_back: u64,
}

impl RateLimit {
    fn new(window: Duration, burst: u32) -> RateLimit {
        RateLimit {
            window,
            burst,
            sites: HashMap::new(),
        }
    }

    fn check(&mut self, site: &str, now: Instant) -> Verdict {
        if self.sites.len() >= MAX_SITES && !self.sites.contains_key(site) {
            self.sites.clear();
        }
        let entry = match self.sites.get_mut(site) {
            Some(entry) => entry,
            None => self.sites.entry(site.to_string()).or_insert(Site {
                window_start: now,
                logged: 0,
                held_back: 0,
            }),
        };
        if now.duration_since(entry.window_start) >= self.window {
            entry.window_start = now;
            entry.logged = 0;
        }
        if entry.logged < self.burst {
            entry.logged += 1;
            let held_back = std::mem::take(&mut entry.held_back);
            Verdict::Log { held_back }
        } else {
            entry.held_back += 1;
            Verdict::Suppress
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_logs_a_burst_per_window_then_says_what_it_held_back() {
        let mut limit = RateLimit::new(Duration::from_secs(60), 2);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(limit.check("a", at(0)), Verdict::Log { held_back: 0 });
        assert_eq!(limit.check("a", at(1)), Verdict::Log { held_back: 0 });
        for s in 2..10 {
            assert_eq!(limit.check("a", at(s)), Verdict::Suppress);
        }
        // Another site is not held back by the first.
        assert_eq!(limit.check("b", at(5)), Verdict::Log { held_back: 0 });
        assert_eq!(limit.check("a", at(59)), Verdict::Suppress);
        assert_eq!(limit.check("a", at(60)), Verdict::Log { held_back: 9 });
        assert_eq!(limit.check("a", at(61)), Verdict::Log { held_back: 0 });
    }
}
