//! The durable descriptor log: the one seam between producing descriptors and everything that
//! reads them.
//!
//! ```text
//! Describer ─▶ Appender ──(offset, live)──▶ tail ─────────────┐
//!                 │                                           ├─▶ Subscription (exactly once,
//!                 └──(bounded hand-over)──▶ Writer ─▶ Store ──┘    in offset order) ─▶ deliver
//! ```
//!
//! The [`Appender`], on the describe thread, gives each descriptor the next node-wide offset,
//! publishes it to the live tail at once and hands it to the [`writer`] thread, which commits in
//! groups. A reader ([`LogReader`]) gets a [`Subscription`] that reads the store from its cursor,
//! switches to the live tail with no gap and no duplicate, and falls back to the store whenever it
//! falls behind the tail; gaps (evicted, never stored) come as [`Entry::Gap`], never silently.
//! Readers never reach back into the stages before the log.

pub mod store;
mod writer;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use prost::Message;
use tokio::sync::{Semaphore, broadcast, watch};

pub use store::{CameraCounters, Gap, GapReason, LastRun, QueryKey, Record, Selection, Store};

use crate::config::LogConfig;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::pb;

/// Records read from the store per step of a catch-up.
const CATCH_UP_PAGE: usize = 256;
/// Store reads that run at once: catch-ups and queries share them, and the rest wait, so a
/// hundred readers starting a day back cannot take the cores from analysis.
const CONCURRENT_READS: usize = 2;

/// What a subscription yields: a descriptor, or offsets it will not get.
#[derive(Debug, Clone)]
pub enum Entry {
    Descriptor(Arc<pb::FrameDescriptor>),
    Gap(Gap),
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Live,
    Earliest,
    AfterOffset(u64),
    /// Capture time, Unix nanoseconds.
    FromTime(i64),
}

/// State shared by the appender, the writer and the readers.
struct Shared {
    tail: Mutex<Tail>,
    /// Every offset below this is either committed or a known gap: readers may read up to it.
    settled: watch::Sender<u64>,
    gaps: Mutex<RunGaps>,
    metrics: Arc<Metrics>,
    path: PathBuf,
    idle_readers: Mutex<Vec<Store>>,
    read_permits: Semaphore,
    /// Turns true when the describer is gone: nothing more will be appended.
    closed: watch::Sender<bool>,
}

/// The live end of the log.
struct Tail {
    /// `None` once the describer is gone: live readers end after what they have not read yet.
    live: Option<broadcast::Sender<Arc<pb::FrameDescriptor>>>,
    /// One past the last offset published.
    next: u64,
}

/// Not-stored gaps of this run: all of them, for readers (the store may be unwritable), and
/// those not yet written into the store.
#[derive(Default)]
struct RunGaps {
    all: Vec<Gap>,
    unpersisted: Vec<Gap>,
}

/// Adds `gap` to `gaps`, merged with the last one when they touch.
fn push_gap(gaps: &mut Vec<Gap>, gap: Gap) {
    if let Some(last) = gaps.last_mut()
        && last.reason == gap.reason
        && last.last + 1 >= gap.first
    {
        last.last = last.last.max(gap.last);
        return;
    }
    gaps.push(gap);
}

impl Shared {
    fn add_gap(&self, gap: Gap) {
        let mut gaps = self.gaps.lock().unwrap_or_else(|p| p.into_inner());
        push_gap(&mut gaps.all, gap);
        push_gap(&mut gaps.unpersisted, gap);
    }

    fn take_unpersisted_gaps(&self) -> Vec<Gap> {
        std::mem::take(&mut self.gaps.lock().unwrap_or_else(|p| p.into_inner()).unpersisted)
    }

    fn keep_unpersisted_gaps(&self, mut gaps: Vec<Gap>) {
        let mut run = self.gaps.lock().unwrap_or_else(|p| p.into_inner());
        gaps.append(&mut run.unpersisted);
        run.unpersisted = gaps;
    }

    /// Gaps of this run overlapping `from..until`, clipped.
    fn run_gaps_between(&self, from: u64, until: u64) -> Vec<Gap> {
        let gaps = self.gaps.lock().unwrap_or_else(|p| p.into_inner());
        gaps.all
            .iter()
            .filter(|g| g.first < until && g.last >= from)
            .map(|g| Gap {
                first: g.first.max(from),
                last: g.last.min(until - 1),
                reason: g.reason,
            })
            .collect()
    }

    /// Everything below `until` is settled; then so is every gap that follows without a break.
    fn settle(&self, until: u64) {
        let gaps = self.gaps.lock().unwrap_or_else(|p| p.into_inner());
        self.settled.send_if_modified(|settled| {
            let mut next = (*settled).max(until);
            for gap in &gaps.all {
                if gap.first <= next && gap.last >= next {
                    next = gap.last + 1;
                }
            }
            let changed = next != *settled;
            *settled = next;
            changed
        });
    }

    fn subscribe_live(&self) -> (Option<broadcast::Receiver<Arc<pb::FrameDescriptor>>>, u64) {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        (tail.live.as_ref().map(broadcast::Sender::subscribe), tail.next)
    }

    fn close_tail(&self) {
        self.tail.lock().unwrap_or_else(|p| p.into_inner()).live = None;
        self.closed.send_replace(true);
    }

    /// Runs `read` on a store connection off the async workers, at most [`CONCURRENT_READS`] at
    /// once.
    async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        read: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let _permit = self
            .read_permits
            .acquire()
            .await
            .map_err(|_| Error::Internal("log readers closed".into()))?;
        let shared = self.clone();
        tokio::task::spawn_blocking(move || {
            let idle = shared.idle_readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let store = match idle {
                Some(store) => store,
                None => Store::open_reader(&shared.path)?,
            };
            let result = read(&store);
            shared
                .idle_readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(store);
            result
        })
        .await
        .map_err(|e| Error::Internal(format!("log read task: {e}")))?
    }
}

/// Every track a descriptor mentions.
fn track_ids(d: &pb::FrameDescriptor) -> Vec<u64> {
    let mut ids: Vec<u64> = d
        .tracks
        .iter()
        .map(|t| t.track_id)
        .chain(d.track_events.iter().map(|e| e.track_id))
        .chain(d.zone_events.iter().map(|e| e.track_id))
        .chain(d.objects.iter().map(|o| o.track_id))
        .filter(|&id| id != 0)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The log of a running node: its writer thread, and the handle readers are made from.
pub struct Log {
    shared: Arc<Shared>,
    writer: std::thread::JoinHandle<()>,
}

impl Log {
    /// Opens the store at `path` (a damaged one is an error naming it), starts the writer, and
    /// returns the appender the describer writes through. `live_buffer`: live descriptors a
    /// reader may fall behind before it reads from the store instead.
    pub fn open(path: &Path, config: &LogConfig, live_buffer: usize, metrics: Arc<Metrics>) -> Result<(Log, Appender)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let (store, last_run) = Store::open(path)?;
        let next_offset = store.next_offset();
        let counters = store.camera_counters()?;
        let counter_floor = store.counter_floor()?;
        match last_run {
            LastRun::Crashed => tracing::warn!(path = %path.display(), next_offset,
                "the descriptor log was not closed by its last run (a crash or power cut): offsets, sequences and \
                 track ids skip ahead so that none is handed out twice"),
            LastRun::Closed | LastRun::None => {
                tracing::info!(path = %path.display(), next_offset, "descriptor log opened");
            }
        }
        let shared = Arc::new(Shared {
            tail: Mutex::new(Tail {
                live: Some(broadcast::channel(live_buffer.max(1)).0),
                next: next_offset,
            }),
            settled: watch::Sender::new(next_offset),
            gaps: Mutex::new(RunGaps::default()),
            metrics,
            path: path.to_path_buf(),
            idle_readers: Mutex::new(Vec::new()),
            closed: watch::channel(false).0,
            read_permits: Semaphore::new(CONCURRENT_READS),
        });
        let (handover, receiver) = std::sync::mpsc::sync_channel(config.queue_records);
        let writer = writer::Writer {
            store,
            handover: receiver,
            shared: shared.clone(),
            config: config.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| Error::io("starting the log writer thread", e))?;
        let appender = Appender {
            shared: shared.clone(),
            handover,
            next_offset,
            counters,
            counter_floor,
        };
        Ok((Log { shared, writer }, appender))
    }

    pub fn reader(&self) -> LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    /// Waits for the writer to commit what it was handed and close the store. Call once the
    /// appender is gone (the describer has finished).
    pub fn close(self) {
        if self.writer.join().is_err() {
            tracing::error!("the log writer thread panicked");
        }
        // Readers waiting for the last records must not wait for ever, whatever the writer did.
        let next = self.shared.tail.lock().unwrap_or_else(|p| p.into_inner()).next;
        self.shared.settle(next);
    }
}

/// The describer's end of the log.
pub struct Appender {
    shared: Arc<Shared>,
    handover: SyncSender<writer::Pending>,
    next_offset: u64,
    counters: HashMap<String, CameraCounters>,
    counter_floor: u64,
}

impl Appender {
    /// What each camera had handed out when the log was last committed, so that its numbering
    /// goes on (skipped ahead after a crash), and where a camera the log has not seen starts.
    /// Taken once, by the describer.
    pub fn take_resume_counters(&mut self) -> crate::describe::Resume {
        crate::describe::Resume {
            cameras: std::mem::take(&mut self.counters),
            floor: CameraCounters {
                next_sequence: self.counter_floor,
                next_track: self.counter_floor,
            },
        }
    }

    /// Gives `descriptor` the next offset, publishes it live and hands it to the writer with its
    /// camera's counters after it. Never waits: if the writer is too far behind, the record is
    /// only sent live, and its offset becomes a not-stored gap.
    pub fn append(&mut self, mut descriptor: pb::FrameDescriptor, counters: CameraCounters) {
        let offset = self.next_offset;
        self.next_offset += 1;
        descriptor.offset = offset;
        self.shared.metrics.published(&descriptor);
        let descriptor = Arc::new(descriptor);
        let pending = writer::Pending {
            descriptor: descriptor.clone(),
            counters,
        };
        match self.handover.try_send(pending) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.add_gap(Gap {
                    first: offset,
                    last: offset,
                    reason: GapReason::NotStored,
                });
                self.shared.metrics.log_unstored(1);
            }
        }
        let mut tail = self.shared.tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.next = offset + 1;
        if let Some(live) = &tail.live {
            // An error only means nobody reads live right now.
            let _ = live.send(descriptor);
        }
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        self.shared.close_tail();
    }
}

/// What readers get of the log: subscriptions and queries.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

impl LogReader {
    /// Returns once nothing more will be appended (the node is stopping).
    pub async fn closed(&self) {
        let mut closed = self.shared.closed.subscribe();
        let _ = closed.wait_for(|closed| *closed).await;
    }

    /// The offset the next descriptor will get.
    pub fn next_offset(&self) -> u64 {
        self.shared.tail.lock().unwrap_or_else(|p| p.into_inner()).next
    }

    pub async fn subscribe(&self, start: Start) -> Result<Subscription> {
        let (live, live_from) = self.shared.subscribe_live();
        let cursor = match start {
            Start::Live => live_from,
            Start::Earliest => self.shared.read(|store| store.evicted_before()).await?,
            Start::AfterOffset(offset) => {
                if offset >= live_from {
                    return Err(Error::OutOfRange(format!(
                        "after_offset {offset} is not in this node's log yet (its next offset is {live_from})"
                    )));
                }
                offset + 1
            }
            Start::FromTime(ns) => {
                let settled = *self.shared.settled.borrow();
                self.shared
                    .read(move |store| store.first_offset_captured_from(ns))
                    .await?
                    .unwrap_or(settled)
                    .min(live_from)
            }
        };
        Ok(Subscription {
            shared: self.shared.clone(),
            cursor,
            live,
            live_from,
            pending: VecDeque::new(),
            fallbacks: 0,
        })
    }

    /// Records a query selects (see [`Store::select`]), decoded.
    pub async fn select(
        &self,
        selection: Selection,
        after: Option<QueryKey>,
        limit: usize,
    ) -> Result<Vec<(QueryKey, pb::FrameDescriptor)>> {
        let records = self
            .shared
            .read(move |store| store.select(&selection, after, limit))
            .await?;
        Ok(records
            .into_iter()
            .filter_map(|r| {
                let key = QueryKey {
                    capture_ns: r.capture_ns,
                    offset: r.offset,
                };
                decode(&r).map(|d| (key, d))
            })
            .collect())
    }
}

fn decode(record: &Record) -> Option<pb::FrameDescriptor> {
    match pb::FrameDescriptor::decode(record.bytes.as_slice()) {
        Ok(d) => Some(d),
        Err(err) => {
            tracing::error!(offset = record.offset, %err, "a log record does not decode; skipped");
            None
        }
    }
}

/// One reader's position in the log. Yields every record after its start exactly once, in offset
/// order: from the store while behind the live tail, then live.
pub struct Subscription {
    shared: Arc<Shared>,
    /// The next offset this subscription wants.
    cursor: u64,
    live: Option<broadcast::Receiver<Arc<pb::FrameDescriptor>>>,
    /// Every offset from here on comes through `live` (while it is open).
    live_from: u64,
    pending: VecDeque<Entry>,
    /// Times this subscription fell behind the live tail and went back to the store.
    fallbacks: u64,
}

impl Subscription {
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks
    }

    /// The next entry, or `None` once the log is closed and everything was read.
    pub async fn next(&mut self) -> Result<Option<Entry>> {
        loop {
            if let Some(entry) = self.pending.pop_front() {
                return Ok(Some(entry));
            }
            if self.cursor < self.live_from {
                self.catch_up().await?;
                continue;
            }
            let Some(live) = &mut self.live else {
                return Ok(None);
            };
            match live.recv().await {
                Ok(descriptor) => {
                    if descriptor.offset < self.cursor {
                        continue;
                    }
                    self.cursor = descriptor.offset + 1;
                    return Ok(Some(Entry::Descriptor(descriptor)));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Too far behind the tail: read what was missed from the store, then rejoin.
                    self.fallbacks += 1;
                    let (live, live_from) = self.shared.subscribe_live();
                    self.live = live;
                    self.live_from = live_from;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    // The last records may not be in the store yet: read them from there once
                    // settled, up to the final tail.
                    let (_, last) = self.shared.subscribe_live();
                    self.live = None;
                    self.live_from = last;
                }
            }
        }
    }

    /// Reads the next page between the cursor and the live tail from the store, once the writer
    /// has settled it.
    async fn catch_up(&mut self) -> Result<()> {
        let cursor = self.cursor;
        let mut settled = self.shared.settled.subscribe();
        let until = {
            let reached = settled
                .wait_for(|&s| s > cursor)
                .await
                .map_err(|_| Error::Internal("log writer gone".into()))?;
            (*reached).min(self.live_from)
        };
        let (records, stored_gaps, end) = self
            .shared
            .read(move |store| store.read_span(cursor, until, CATCH_UP_PAGE))
            .await?;
        let mut gaps = stored_gaps;
        gaps.extend(self.shared.run_gaps_between(cursor, end));
        gaps.sort_by_key(|g| g.first);
        let mut records = records.into_iter().peekable();
        let mut next = cursor;
        for gap in gaps {
            while let Some(record) = records.next_if(|r| r.offset < gap.first) {
                if let Some(d) = decode(&record) {
                    self.pending.push_back(Entry::Descriptor(Arc::new(d)));
                }
                next = record.offset + 1;
            }
            if gap.last < next {
                continue; // the same gap from the store and from memory
            }
            let gap = Gap {
                first: gap.first.max(next),
                ..gap
            };
            next = gap.last + 1;
            self.pending.push_back(Entry::Gap(gap));
        }
        for record in records {
            if let Some(d) = decode(&record) {
                self.pending.push_back(Entry::Descriptor(Arc::new(d)));
            }
        }
        self.cursor = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::Cameras;

    fn descriptor(camera: &str, sequence: u64) -> pb::FrameDescriptor {
        pb::FrameDescriptor {
            camera_id: camera.into(),
            sequence,
            capture_time: Some(prost_types::Timestamp {
                seconds: 1_000 + sequence as i64,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    /// `Query` by track finds a record that names the track anywhere: a record of it in the
    /// frame, one of its events, a zone or line it was at (a count record's `LEFT` included).
    #[test]
    fn a_record_mentions_every_track_it_names() {
        let mut d = descriptor("c", 0);
        d.tracks.push(pb::TrackedObject {
            track_id: 3,
            ..Default::default()
        });
        d.zone_events.push(pb::ZoneEvent {
            track_id: 9,
            ..Default::default()
        });
        d.track_events.push(pb::TrackEvent {
            track_id: 3,
            ..Default::default()
        });
        assert_eq!(track_ids(&d), vec![3, 9]);
    }

    fn counters(next_sequence: u64) -> CameraCounters {
        CameraCounters {
            next_sequence,
            next_track: 0,
        }
    }

    fn open(dir: &Path, config: LogConfig, live_buffer: usize) -> (Log, Appender) {
        Log::open(
            &dir.join("log.sqlite"),
            &config,
            live_buffer,
            Metrics::new(Cameras::default()),
        )
        .unwrap()
    }

    fn fast() -> LogConfig {
        LogConfig {
            commit_interval_ms: 5,
            ..LogConfig::default()
        }
    }

    /// Everything a subscription yields until the log closes: offsets, and gaps as (first, last).
    async fn drain(mut subscription: Subscription) -> (Vec<u64>, Vec<(u64, u64)>) {
        let (mut offsets, mut gaps) = (Vec::new(), Vec::new());
        while let Some(entry) = subscription.next().await.unwrap() {
            match entry {
                Entry::Descriptor(d) => offsets.push(d.offset),
                Entry::Gap(g) => gaps.push((g.first, g.last)),
            }
        }
        (offsets, gaps)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_reader_gets_everything_exactly_once_in_order_from_store_and_tail() {
        let dir = tempfile::tempdir().unwrap();
        // A live buffer of 4: a reader that does not keep up falls back to the store again and again.
        let (log, mut appender) = open(dir.path(), fast(), 4);
        let reader = log.reader();
        for s in 0..300 {
            appender.append(descriptor("a", s), counters(s + 1));
        }
        let from_start = reader.subscribe(Start::Earliest).await.unwrap();
        let live = reader.subscribe(Start::Live).await.unwrap();
        let resumed = reader.subscribe(Start::AfterOffset(149)).await.unwrap();
        let writer = std::thread::spawn(move || {
            for s in 300..1000 {
                appender.append(descriptor("a", s), counters(s + 1));
                if s % 100 == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
        });
        let (all, live, resumed) = tokio::join!(drain(from_start), drain(live), drain(resumed));
        writer.join().unwrap();
        log.close();
        assert_eq!(all.0, (0..1000).collect::<Vec<_>>());
        assert_eq!(live.0, (300..1000).collect::<Vec<_>>());
        assert_eq!(resumed.0, (150..1000).collect::<Vec<_>>());
        assert!(all.1.is_empty() && live.1.is_empty() && resumed.1.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn numbering_goes_on_after_a_clean_close_and_skips_ahead_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut appender) = open(dir.path(), fast(), 16);
        for s in 0..10 {
            appender.append(descriptor("a", s), counters(s + 1));
        }
        drop(appender);
        log.close();
        let (log, mut appender) = open(dir.path(), fast(), 16);
        assert_eq!(appender.take_resume_counters().cameras["a"], counters(10));
        assert_eq!(log.reader().next_offset(), 10);
        let subscription = log.reader().subscribe(Start::AfterOffset(7)).await.unwrap();
        appender.append(descriptor("a", 10), counters(11));
        drop(appender);
        log.close();
        assert_eq!(drain(subscription).await.0, [8, 9, 10]);

        // A run that never closes its log, as after kill -9.
        let (log, mut appender) = open(dir.path(), fast(), 16);
        appender.append(descriptor("a", 11), counters(12));
        std::mem::forget(appender);
        let reader = log.reader();
        let mut subscription = reader.subscribe(Start::AfterOffset(10)).await.unwrap();
        assert!(matches!(subscription.next().await.unwrap(), Some(Entry::Descriptor(d)) if d.offset == 11));
        let mut settled = log.shared.settled.subscribe();
        settled.wait_for(|&s| s >= 12).await.unwrap();
        std::mem::forget(log); // the writer thread goes on; the file is reopened as after a crash
        let (log, mut appender) = open(dir.path(), fast(), 16);
        let skipped = CameraCounters {
            next_sequence: 12 + store::CRASH_SKIP,
            next_track: store::CRASH_SKIP,
        };
        assert_eq!(appender.take_resume_counters().cameras["a"], skipped);
        assert_eq!(log.reader().next_offset(), 12 + store::CRASH_SKIP);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_the_writer_could_not_take_is_sent_live_and_read_back_as_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        // A hand-over of one record and a writer that waits a second before its commit: most of
        // a burst cannot be handed over.
        let config = LogConfig {
            commit_interval_ms: 1000,
            queue_records: 1,
            ..LogConfig::default()
        };
        let (log, mut appender) = open(dir.path(), config, 1024);
        let reader = log.reader();
        let live = reader.subscribe(Start::Live).await.unwrap();
        // A writer scheduled between every two appends can take a whole burst: bursts of 50
        // until one record was refused (CI once saw all 50 taken).
        let mut sent = 0;
        while log.shared.metrics.log_unstored_total() == 0 && sent < 1000 {
            for s in sent..sent + 50 {
                appender.append(descriptor("a", s), counters(s + 1));
            }
            sent += 50;
        }
        let from_start = reader.subscribe(Start::Earliest).await.unwrap();
        drop(appender);
        log.close();
        let (live, _) = drain(live).await;
        assert_eq!(live, (0..sent).collect::<Vec<_>>(), "live readers get everything");
        let (stored, gaps) = drain(from_start).await;
        assert!(!gaps.is_empty() && stored.len() < sent as usize, "{stored:?} {gaps:?}");
        let mut covered: Vec<u64> = stored.clone();
        for (first, last) in &gaps {
            covered.extend(*first..=*last);
        }
        covered.sort_unstable();
        assert_eq!(
            covered,
            (0..sent).collect::<Vec<_>>(),
            "every offset is a record or in a gap"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_offset_the_log_has_not_reached_is_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut appender) = open(dir.path(), fast(), 16);
        appender.append(descriptor("a", 0), counters(1));
        let err = log.reader().subscribe(Start::AfterOffset(1)).await.err().unwrap();
        assert_eq!(err.kind(), crate::error::Kind::OutOfRange, "{err}");
        drop(appender);
        log.close();
    }
}
