//! Fan-out of descriptors to subscribers.
//!
//! Publishing never waits: descriptors go into a broadcast ring of fixed size, and each
//! subscriber reads at its own pace. A subscriber that falls a whole ring behind loses its
//! oldest unread descriptors (and only its own), and learns how many. A second, smaller ring
//! keeps recent descriptors for subscribers that ask to start from the earliest buffered one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::pb::FrameDescriptor;

pub struct Hub {
    inner: Mutex<Inner>,
    replay_capacity: usize,
}

struct Inner {
    /// `None` once closed: subscribers then drain and end.
    live: Option<broadcast::Sender<Arc<FrameDescriptor>>>,
    replay: VecDeque<Arc<FrameDescriptor>>,
}

impl Hub {
    pub fn new(subscriber_buffer: usize, replay_capacity: usize) -> Arc<Hub> {
        Arc::new(Hub {
            inner: Mutex::new(Inner {
                live: Some(broadcast::channel(subscriber_buffer.max(1)).0),
                replay: VecDeque::with_capacity(replay_capacity),
            }),
            replay_capacity,
        })
    }

    pub fn publish(&self, descriptor: FrameDescriptor) {
        let descriptor = Arc::new(descriptor);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if self.replay_capacity > 0 {
            if inner.replay.len() == self.replay_capacity {
                inner.replay.pop_front();
            }
            inner.replay.push_back(descriptor.clone());
        }
        if let Some(live) = &inner.live {
            // An error only means nobody is subscribed right now.
            let _ = live.send(descriptor);
        }
    }

    /// Returns the buffered descriptors (if asked) and a live receiver that continues exactly
    /// after them: both are taken under the publish lock, so nothing is missed or repeated.
    /// `None` for the receiver if the hub is closed.
    pub fn subscribe(
        &self,
        with_replay: bool,
    ) -> (
        Vec<Arc<FrameDescriptor>>,
        Option<broadcast::Receiver<Arc<FrameDescriptor>>>,
    ) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let replay = if with_replay {
            inner.replay.iter().cloned().collect()
        } else {
            Vec::new()
        };
        (replay, inner.live.as_ref().map(broadcast::Sender::subscribe))
    }

    /// No more descriptors: live receivers end after what they have not read yet.
    pub fn close(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).live = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(sequence: u64) -> FrameDescriptor {
        FrameDescriptor {
            sequence,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn replay_then_live_without_gap_or_duplicate() {
        let hub = Hub::new(8, 3);
        for s in 0..5 {
            hub.publish(descriptor(s));
        }
        let (replay, live) = hub.subscribe(true);
        let mut live = live.unwrap();
        hub.publish(descriptor(5));
        hub.close();
        let mut seen: Vec<u64> = replay.iter().map(|d| d.sequence).collect();
        while let Ok(d) = live.recv().await {
            seen.push(d.sequence);
        }
        assert_eq!(seen, vec![2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn slow_subscriber_loses_its_oldest_and_is_told_how_many() {
        let hub = Hub::new(4, 0);
        let (_, slow) = hub.subscribe(false);
        let mut slow = slow.unwrap();
        for s in 0..10 {
            hub.publish(descriptor(s));
        }
        assert!(matches!(slow.recv().await, Err(broadcast::error::RecvError::Lagged(6))));
        assert_eq!(slow.recv().await.unwrap().sequence, 6);
    }
}
