//! One shutdown signal for async tasks (gRPC, metrics) and plain threads (cameras, inference).

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

struct Inner {
    triggered: Mutex<bool>,
    /// Wakes threads sleeping in [`Shutdown::sleep`].
    wake_threads: Condvar,
    /// Wakes async tasks waiting in [`Shutdown::wait`].
    wake_tasks: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Shutdown {
            inner: Arc::new(Inner {
                triggered: Mutex::new(false),
                wake_threads: Condvar::new(),
                wake_tasks: watch::channel(false).0,
            }),
        }
    }

    pub fn trigger(&self) {
        let mut triggered = self.inner.triggered.lock().unwrap_or_else(|p| p.into_inner());
        *triggered = true;
        self.inner.wake_threads.notify_all();
        self.inner.wake_tasks.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.inner.triggered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sleeps up to `timeout`; returns true (early) if shutdown was triggered.
    pub fn sleep(&self, timeout: Duration) -> bool {
        let guard = self.inner.triggered.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .inner
            .wake_threads
            .wait_timeout_while(guard, timeout, |triggered| !*triggered)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }

    pub async fn wait(&self) {
        let mut rx = self.inner.wake_tasks.subscribe();
        // Only fails if the sender is gone, which cannot happen while `self` holds it.
        let _ = rx.wait_for(|triggered| *triggered).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn trigger_wakes_a_sleeping_thread() {
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            (s.sleep(Duration::from_secs(30)), start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        shutdown.trigger();
        let (woken, slept) = t.join().unwrap();
        assert!(woken && slept < Duration::from_secs(10));
        assert!(!Shutdown::new().sleep(Duration::from_millis(1)));
    }

    #[tokio::test]
    async fn trigger_wakes_a_task() {
        let shutdown = Shutdown::new();
        let waiter = tokio::spawn({
            let s = shutdown.clone();
            async move { s.wait().await }
        });
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
