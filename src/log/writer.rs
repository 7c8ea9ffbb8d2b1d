//! The log's one writer: a thread that takes descriptors from the describer through a bounded
//! hand-over, encodes them, and commits them in groups (one transaction, one fsync, at most every
//! `commit_interval_ms`), then applies retention. Nothing here runs on the describe thread: when
//! the disk stalls, the hand-over fills and the describer counts what it could not hand over.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use prost::Message;

use super::store::{CameraCounters, Gap, GapReason, Record, Store};
use super::{Shared, track_ids};
use crate::clock::now_unix_nanos;
use crate::config::LogConfig;
use crate::pb;

/// At most this many records go into one commit, so that a backlog is written in bounded steps.
const MAX_BATCH: usize = 8192;
/// How often retention is checked.
const RETENTION_INTERVAL: Duration = Duration::from_secs(1);
/// Records removed per eviction transaction: big enough to be cheap per record, small enough not
/// to hold up a commit for long.
const EVICTION_SLICE: u64 = 20_000;
/// Eviction by bytes goes this far below `max_bytes`, so that it runs in bulk, not per commit.
const EVICTION_HEADROOM: f64 = 0.9;
/// A failing store is logged at most this often.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// One descriptor handed to the writer, with its camera's counters after it.
pub(super) struct Pending {
    pub descriptor: Arc<pb::FrameDescriptor>,
    pub counters: CameraCounters,
}

pub(super) struct Writer {
    pub store: Store,
    pub handover: Receiver<Pending>,
    pub shared: Arc<Shared>,
    pub config: LogConfig,
}

impl Writer {
    /// Runs until the describer is gone and everything it handed over is committed.
    pub fn run(mut self) {
        let interval = Duration::from_millis(self.config.commit_interval_ms);
        let mut failing_since: Option<Instant> = None;
        let mut last_error_log: Option<Instant> = None;
        let mut next_retention = Instant::now();
        let mut batch: Vec<Pending> = Vec::new();
        let mut open = true;
        while open {
            // Wait for the first record of the next group, waking for retention.
            let wait = next_retention.saturating_duration_since(Instant::now());
            match self
                .handover
                .recv_timeout(wait.max(Duration::from_millis(1)).min(interval))
            {
                Ok(pending) => batch.push(pending),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
            if !batch.is_empty() {
                let deadline = Instant::now() + interval;
                while open && batch.len() < MAX_BATCH {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match self.handover.recv_timeout(left) {
                        Ok(pending) => batch.push(pending),
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => open = false,
                    }
                }
                // Whatever is still waiting goes into this group too: the describer is done.
                if !open {
                    batch.extend(self.handover.try_iter());
                }
            }
            let outcome = self.commit(std::mem::take(&mut batch));
            match outcome {
                Ok(()) => {
                    if failing_since.take().is_some() {
                        tracing::info!(path = %self.store.path().display(), "the descriptor log stores again");
                    }
                }
                Err(err) => {
                    failing_since.get_or_insert_with(Instant::now);
                    if last_error_log.is_none_or(|t| t.elapsed() >= ERROR_LOG_INTERVAL) {
                        last_error_log = Some(Instant::now());
                        tracing::error!(%err, "descriptor log: records not stored (live subscribers still get them)");
                    }
                }
            }
            self.shared.metrics.log_healthy(failing_since.is_none());
            if Instant::now() >= next_retention || !open {
                next_retention = Instant::now() + RETENTION_INTERVAL;
                if failing_since.is_none() && !self.retain() {
                    // Still over a limit: go on at the next wake-up.
                    next_retention = Instant::now();
                }
            }
        }
        if let Err(err) = self.store.close() {
            tracing::warn!(%err, "descriptor log not marked closed; the next run skips its numbers ahead");
        }
    }

    /// Commits one group with the gaps found since the last commit. On failure the group's
    /// records become a not-stored gap, kept in memory for readers and stored by a later commit.
    fn commit(&mut self, batch: Vec<Pending>) -> crate::Result<()> {
        let unstored = self.shared.take_unpersisted_gaps();
        if batch.is_empty() && unstored.is_empty() {
            return Ok(());
        }
        let mut counters: HashMap<&str, CameraCounters> = HashMap::new();
        for pending in &batch {
            counters.insert(&pending.descriptor.camera_id, pending.counters);
        }
        let counters: Vec<(String, CameraCounters)> = counters.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let records: Vec<Record> = batch
            .iter()
            .map(|p| {
                let d = &p.descriptor;
                Record {
                    offset: d.offset,
                    camera_id: d.camera_id.clone(),
                    sequence: d.sequence,
                    capture_ns: d.capture_time.map_or(0, |t| {
                        t.seconds.saturating_mul(1_000_000_000).saturating_add(t.nanos.into())
                    }),
                    track_ids: track_ids(d),
                    bytes: d.encode_to_vec(),
                }
            })
            .collect();
        let started = Instant::now();
        let result = self.store.append(&records, &counters, &unstored, now_unix_nanos());
        let last = records.last().map(|r| r.offset);
        match &result {
            Ok(()) => {
                let bytes: usize = records.iter().map(|r| r.bytes.len()).sum();
                self.shared
                    .metrics
                    .log_committed(records.len() as u64, bytes as u64, started.elapsed());
            }
            Err(_) => {
                self.shared.keep_unpersisted_gaps(unstored);
                if let (Some(first), Some(last)) = (records.first(), last) {
                    // Offsets in between that were handed out are in this group or already gaps.
                    self.shared.add_gap(Gap {
                        first: first.offset,
                        last,
                        reason: GapReason::NotStored,
                    });
                    self.shared.metrics.log_unstored(records.len() as u64);
                }
            }
        }
        if let Some(last) = last {
            self.shared.settle(last + 1);
        }
        result
    }

    /// Evicts by age and by bytes, oldest first, one slice per transaction. Returns false if a
    /// limit is still exceeded after the slices this turn allows.
    fn retain(&mut self) -> bool {
        let started = Instant::now();
        let max_age_ns = (self.config.max_age_hours * 3600.0 * 1e9) as i64;
        loop {
            if started.elapsed() > Duration::from_millis(200) {
                return false;
            }
            let target = match self.eviction_target(max_age_ns) {
                Ok(target) => target,
                Err(err) => {
                    tracing::warn!(%err, "descriptor log retention check failed");
                    return true;
                }
            };
            let Some(boundary) = target else { return true };
            match self.store.evict_before(boundary) {
                Ok(removed) => {
                    self.shared.metrics.log_evicted(removed);
                    tracing::debug!(removed, boundary, "descriptor log: oldest records evicted");
                }
                Err(err) => {
                    tracing::warn!(%err, "descriptor log eviction failed");
                    return true;
                }
            }
        }
    }

    /// The offset before which the next slice of records should go, if any should.
    fn eviction_target(&self, max_age_ns: i64) -> crate::Result<Option<u64>> {
        let store = &self.store;
        let used = store.used_bytes()?;
        self.shared.metrics.log_bytes(used);
        let Some(first) = store.first_offset()? else {
            return Ok(None);
        };
        let mut boundary = first;
        // Age: records stored before the cutoff.
        let cutoff = now_unix_nanos().saturating_sub(max_age_ns);
        if let Some(young) = store.offset_stored_after(cutoff)?
            && young > first
        {
            boundary = young;
        }
        // Bytes: the oldest share of the records that brings the log under its headroom.
        let max = self.config.max_bytes;
        if used > max {
            let count = store.record_count()?;
            let target = (max as f64 * EVICTION_HEADROOM) as u64;
            let excess = (used - target) as f64 / used as f64;
            let n = ((count as f64 * excess).ceil() as u64).clamp(1, count);
            let by_bytes = store.offset_after_oldest(n)?.unwrap_or(store.next_offset());
            boundary = boundary.max(by_bytes);
        }
        if boundary <= first {
            return Ok(None);
        }
        // One slice at a time.
        let slice_end = store.offset_after_oldest(EVICTION_SLICE)?.unwrap_or(boundary);
        Ok(Some(boundary.min(slice_end.max(first + 1))))
    }
}
