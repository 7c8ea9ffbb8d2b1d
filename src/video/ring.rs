//! One camera's recent video on disk: a directory of MPEG-TS segments named by the capture times
//! they cover, `<first frame>-<end>.ts` in Unix nanoseconds. The names are the whole index: a
//! listing of the directory is the ring's state, so nothing can disagree with the files after a
//! crash, and removing the oldest segment is one `unlink`.
//!
//! A segment being written is `<first frame>-open.ts`, readable as it grows (MPEG-TS needs no
//! index), and ends where its last write did (the file's modification time). Before its first
//! frame is timed it is `open-…`, which nothing reads. A process that dies leaves its open
//! segment: the camera's next recorder closes it under its modification time, or removes it if it
//! was never timed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::clock::UnixNanos;
use crate::error::{Error, Result};

/// Segments this close count as one stretch of video: the end of a segment is the running time
/// its muxer closed at, which can fall short of the next one's first frame by a frame or two.
pub const GAP_TOLERANCE_NS: UnixNanos = 500_000_000;

const EXTENSION: &str = "ts";
pub const OPEN_PREFIX: &str = "open-";
/// Directories of segments held for running exports, inside a camera's ring (never a segment's
/// name, so never listed or pruned).
const PINNED_PREFIX: &str = "pinned-";
const OPEN_SUFFIX: &str = "-open";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Capture time of the segment's first frame (a keyframe).
    pub start: UnixNanos,
    /// Capture time at which the segment ends; for one being written, when it was last written.
    pub end: UnixNanos,
    /// Still being written.
    pub open: bool,
    pub path: PathBuf,
    pub bytes: u64,
}

impl Segment {
    /// Where the segment is now: one listed while open may have closed (and been renamed) since.
    pub fn current_path(&self) -> Option<PathBuf> {
        if self.path.exists() {
            return Some(self.path.clone());
        }
        let dir = self.path.parent()?;
        find_segment(dir, self.start)
    }
}

/// How much of a camera's video the ring keeps.
#[derive(Debug, Clone, Copy)]
pub struct RingLimits {
    pub max_bytes: u64,
    pub max_age_ns: UnixNanos,
}

/// The segments that cover an interval, and the parts of it that no segment covers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Coverage {
    pub segments: Vec<Segment>,
    pub gaps: Vec<(UnixNanos, UnixNanos)>,
}

#[derive(Debug, Clone)]
pub struct Ring {
    dir: PathBuf,
}

/// What a prune removed and left.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pruned {
    pub removed: usize,
    /// Bytes of the closed segments left.
    pub bytes: u64,
    /// Capture time from the oldest segment left's start to the newest's end.
    pub span_ns: UnixNanos,
}

/// What a camera's ring holds after its latest prune, and how many segments pruning removed:
/// the recorder writes it, the metrics read it.
#[derive(Debug, Default)]
pub struct RingStats {
    /// Recorded at least once: the camera's video is kept.
    known: AtomicBool,
    bytes: AtomicU64,
    span_ns: AtomicU64,
    pruned: AtomicU64,
}

impl RingStats {
    pub fn record(&self, pruned: Pruned) {
        self.known.store(true, Ordering::Relaxed);
        self.bytes.store(pruned.bytes, Ordering::Relaxed);
        self.span_ns.store(pruned.span_ns.max(0) as u64, Ordering::Relaxed);
        self.pruned.fetch_add(pruned.removed as u64, Ordering::Relaxed);
    }

    /// Whether the camera's video is kept here (its ring was looked at).
    pub fn known(&self) -> bool {
        self.known.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn span_seconds(&self) -> f64 {
        self.span_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    pub fn pruned(&self) -> u64 {
        self.pruned.load(Ordering::Relaxed)
    }
}

impl Ring {
    /// `camera` is a validated camera id (never only dots), so the directory is below `root`.
    pub fn new(root: &Path, camera: &str) -> Ring {
        Ring { dir: root.join(camera) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io(format!("creating video directory {}", self.dir.display()), e))
    }

    /// Where a closed segment covering `start..end` is kept.
    pub fn segment_path(&self, start: UnixNanos, end: UnixNanos) -> PathBuf {
        self.dir.join(format!("{start}-{end}.{EXTENSION}"))
    }

    /// Where a segment being written from `start` on is readable.
    pub fn open_segment_path(&self, start: UnixNanos) -> PathBuf {
        self.dir.join(format!("{start}{OPEN_SUFFIX}.{EXTENSION}"))
    }

    /// The readable segments, closed and open, oldest first. A camera that never recorded has
    /// none.
    pub fn segments(&self) -> Result<Vec<Segment>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("listing {}", self.dir.display()), e)),
        };
        let mut segments = Vec::new();
        for entry in entries.flatten() {
            let mut path = entry.path();
            let mut meta = entry.metadata();
            // A segment that closed (was renamed) since the directory was read is taken under
            // its closed name, which the listing may have passed already; one removed by pruning
            // is simply not listed.
            if meta.is_err() {
                let start = entry.file_name().to_str().and_then(parse_name).map(|(start, _)| start);
                let Some(closed) = start.and_then(|start| self.find(start)) else {
                    continue;
                };
                meta = std::fs::metadata(&closed);
                path = closed;
            }
            let Ok(meta) = meta else { continue };
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let Some((start, end)) = parse_name(name) else {
                continue;
            };
            let open = end.is_none();
            segments.push(Segment {
                start,
                // A segment being written ends, so far, at its last write. (Start plus the time
                // since the file's creation was tried, to be independent of a camera's clock,
                // but a muxer's buffered writes put creation and last write seconds apart from
                // the frames, and the demo's track snapshot then missed the open segment.)
                end: end
                    .or_else(|| meta.modified().ok().map(crate::clock::unix_nanos))
                    .unwrap_or(start)
                    .max(start),
                open,
                bytes: meta.len(),
                path,
            });
        }
        // A segment renamed while the directory was read (it closed) can be listed under both
        // names: the closed one is kept.
        segments.sort_by_key(|s| (s.start, s.open));
        segments.dedup_by_key(|s| s.start);
        Ok(segments)
    }

    /// The segment that starts at `start`, under whichever name it has now.
    fn find(&self, start: UnixNanos) -> Option<PathBuf> {
        find_segment(&self.dir, start)
    }

    /// Removes segments, oldest first, while the ring holds more than `limits.max_bytes` or they
    /// ended before `now - max_age`. Returns how many were removed, and what is left.
    pub fn prune(&self, limits: RingLimits, now: UnixNanos) -> Result<Pruned> {
        let segments: Vec<Segment> = self.segments()?.into_iter().filter(|s| !s.open).collect();
        let mut bytes: u64 = segments.iter().map(|s| s.bytes).sum();
        let oldest_kept = now.saturating_sub(limits.max_age_ns);
        let mut removed = 0;
        for segment in &segments {
            if bytes <= limits.max_bytes && segment.end >= oldest_kept {
                break;
            }
            match std::fs::remove_file(&segment.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("removing {}", segment.path.display()), e)),
            }
            bytes -= segment.bytes;
            removed += 1;
        }
        let left = &segments[removed..];
        let span_ns = match (left.first(), left.last()) {
            (Some(oldest), Some(newest)) => newest.end.saturating_sub(oldest.start).max(0),
            _ => 0,
        };
        Ok(Pruned {
            removed,
            bytes,
            span_ns,
        })
    }

    /// Segments a previous process was writing when it died: those with a start are closed
    /// where their last write ended, the others removed. Returns (closed, removed).
    pub fn recover_orphans(&self) -> Result<(usize, usize)> {
        let (mut kept, mut removed) = (0, 0);
        for segment in self.segments()?.into_iter().filter(|s| s.open) {
            let to = self.segment_path(segment.start, segment.end);
            std::fs::rename(&segment.path, &to)
                .map_err(|e| Error::io(format!("closing {}", segment.path.display()), e))?;
            kept += 1;
        }
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((kept, removed)),
            Err(e) => return Err(Error::io(format!("listing {}", self.dir.display()), e)),
        };
        let own_pins = format!("{PINNED_PREFIX}{}-", std::process::id());
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_str().unwrap_or_default();
            // Pins a process that died left (this process's are running exports).
            if name.starts_with(PINNED_PREFIX) && !name.starts_with(&own_pins) {
                let _ = std::fs::remove_dir_all(entry.path());
                continue;
            }
            if name.starts_with(OPEN_PREFIX) {
                std::fs::remove_file(entry.path())
                    .map_err(|e| Error::io(format!("removing {}", entry.path().display()), e))?;
                removed += 1;
            }
        }
        Ok((kept, removed))
    }

    /// The segments overlapping `from..to` and the stretches of it without video.
    pub fn cover(&self, from: UnixNanos, to: UnixNanos) -> Result<Coverage> {
        Ok(coverage(self.segments()?, from, to))
    }

    /// Holds `coverage`'s segments for an export: each is hard-linked into a directory of the
    /// export's own, so that pruning during a long export, or a segment closing (renamed) while
    /// it is read, takes nothing from under it. The links go when the returned value does; the
    /// disk they hold is bounded by the exports running (`max_clip_seconds` each). A segment
    /// that cannot be linked (gone already, a file system without hard links) is read where it is.
    pub fn pin(&self, coverage: Coverage) -> Pinned {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.dir.join(format!("{PINNED_PREFIX}{}-{id}", std::process::id()));
        if let Err(err) = std::fs::create_dir(&dir) {
            tracing::debug!(%err, dir = %dir.display(), "segments of an export cannot be pinned");
            return Pinned { coverage, dir: None };
        }
        let mut coverage = coverage;
        for segment in &mut coverage.segments {
            let Some(name) = segment.path.file_name() else { continue };
            let link = dir.join(name);
            let linked = segment
                .current_path()
                .is_some_and(|from| std::fs::hard_link(from, &link).is_ok());
            if linked {
                segment.path = link;
            }
        }
        Pinned {
            coverage,
            dir: Some(dir),
        }
    }
}

/// Segments held for one export (see [`Ring::pin`]).
pub struct Pinned {
    pub coverage: Coverage,
    dir: Option<PathBuf>,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn find_segment(dir: &Path, start: UnixNanos) -> Option<PathBuf> {
    let prefix = format!("{start}-");
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.starts_with(&prefix) && parse_name(name).is_some()
        })
}

fn coverage(segments: Vec<Segment>, from: UnixNanos, to: UnixNanos) -> Coverage {
    let segments: Vec<Segment> = segments.into_iter().filter(|s| s.end > from && s.start < to).collect();
    let mut gaps = Vec::new();
    let mut covered_until = from;
    for segment in &segments {
        if segment.start > covered_until.saturating_add(GAP_TOLERANCE_NS) {
            gaps.push((covered_until, segment.start));
        }
        covered_until = covered_until.max(segment.end);
    }
    if to > covered_until.saturating_add(GAP_TOLERANCE_NS) {
        gaps.push((covered_until, to));
    }
    Coverage { segments, gaps }
}

/// `(start, end)` of a segment's name; no end for one being written.
fn parse_name(name: &str) -> Option<(UnixNanos, Option<UnixNanos>)> {
    let stem = name.strip_suffix(EXTENSION)?.strip_suffix('.')?;
    if let Some(start) = stem.strip_suffix(OPEN_SUFFIX) {
        return Some((start.parse().ok()?, None));
    }
    let (start, end) = stem.split_once('-')?;
    let (start, end): (UnixNanos, UnixNanos) = (start.parse().ok()?, end.parse().ok()?);
    (start <= end).then_some((start, Some(end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: UnixNanos = 1_000_000_000;

    fn ring_with(segments: &[(UnixNanos, UnixNanos, usize)]) -> (tempfile::TempDir, Ring) {
        let root = tempfile::tempdir().unwrap();
        let ring = Ring::new(root.path(), "cam-1");
        ring.create().unwrap();
        for &(start, end, bytes) in segments {
            std::fs::write(ring.segment_path(start, end), vec![0u8; bytes]).unwrap();
        }
        (root, ring)
    }

    #[test]
    fn names_are_the_index_and_other_files_are_ignored() {
        let (_root, ring) = ring_with(&[(20 * S, 24 * S, 10), (10 * S, 14 * S, 5)]);
        std::fs::write(ring.dir().join("open-1-00001.ts"), b"x").unwrap();
        std::fs::write(ring.dir().join("30-20.ts"), b"x").unwrap();
        std::fs::write(ring.dir().join("notes.txt"), b"x").unwrap();
        let segments = ring.segments().unwrap();
        let spans: Vec<_> = segments.iter().map(|s| (s.start, s.end, s.bytes)).collect();
        assert_eq!(spans, [(10 * S, 14 * S, 5), (20 * S, 24 * S, 10)]);
        assert!(segments.iter().all(|s| !s.open));
        // A segment being written is read up to its last write.
        let now = crate::clock::now_unix_nanos();
        let start = now - 2 * S;
        std::fs::write(ring.open_segment_path(start), b"xyz").unwrap();
        let open = ring.segments().unwrap().pop().unwrap();
        assert!(open.open && open.start == start && open.bytes == 3);
        assert!(
            (open.end - now).abs() < 5 * S,
            "ends at its last write: {}",
            open.end - now
        );
        // After a crash: the timed one is closed, the untimed one removed.
        assert_eq!(ring.recover_orphans().unwrap(), (1, 1));
        assert!(!ring.dir().join("open-1-00001.ts").exists());
        let closed = ring.segments().unwrap().pop().unwrap();
        assert!(!closed.open && closed.start == start && closed.end == open.end);
    }

    #[test]
    fn pruning_removes_the_oldest_first_by_bytes_and_by_age() {
        let (_root, ring) = ring_with(&[(0, 4 * S, 100), (4 * S, 8 * S, 100), (8 * S, 12 * S, 100)]);
        let limits = RingLimits {
            max_bytes: 250,
            max_age_ns: 3600 * S,
        };
        let pruned = ring.prune(limits, 12 * S).unwrap();
        assert_eq!((pruned.removed, pruned.bytes, pruned.span_ns), (1, 200, 8 * S));
        assert_eq!(ring.segments().unwrap()[0].start, 4 * S);
        let by_age = RingLimits {
            max_bytes: u64::MAX,
            max_age_ns: 5 * S,
        };
        // At 14 s, a segment that ended at 8 s is 6 s old: gone; the one ending at 12 s stays.
        let pruned = ring.prune(by_age, 14 * S).unwrap();
        assert_eq!((pruned.removed, pruned.bytes, pruned.span_ns), (1, 100, 4 * S));
        assert_eq!(ring.segments().unwrap()[0].start, 8 * S);
    }

    #[test]
    fn coverage_names_the_gaps_of_an_interval() {
        let segments = vec![
            Segment {
                start: 10 * S,
                end: 14 * S,
                path: "a".into(),
                bytes: 1,
                open: false,
            },
            // Abuts the first within the tolerance: no gap.
            Segment {
                start: 14 * S + GAP_TOLERANCE_NS / 2,
                end: 18 * S,
                path: "b".into(),
                bytes: 1,
                open: false,
            },
            // An outage from 18 s to 30 s.
            Segment {
                start: 30 * S,
                end: 34 * S,
                path: "c".into(),
                bytes: 1,
                open: false,
            },
        ];
        let c = coverage(segments.clone(), 12 * S, 40 * S);
        assert_eq!(c.segments.len(), 3);
        assert_eq!(c.gaps, [(18 * S, 30 * S), (34 * S, 40 * S)]);
        let before = coverage(segments.clone(), 0, 11 * S);
        assert_eq!(before.gaps, [(0, 10 * S)]);
        let inside = coverage(segments, 15 * S, 17 * S);
        assert!(inside.gaps.is_empty());
        assert_eq!(inside.segments.len(), 1);
    }
}
