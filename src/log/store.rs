//! Where the descriptor log is kept: one SQLite database in WAL mode with `synchronous = FULL`
//! (`benches/results/log-stores.md` compares it with redb and fjall on this log's workload).
//!
//! Records are appended in batches, one transaction each (group commit: one fsync per batch,
//! never per record). The next offset and each camera's counters are written in the same
//! transaction as the records, so after a crash the store is exactly as of its last commit, and an
//! offset is never handed out twice, also when the records that had it were evicted since.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

pub use crate::describe::CameraCounters;
use crate::error::{Error, Result};

/// Bumped when the tables change; a store written by another version is refused, not guessed at.
const SCHEMA_VERSION: i64 = 1;

/// How far offsets, sequences and track ids skip ahead after a run that did not close the log
/// (a crash, a power cut): numbers handed out live but not yet committed are never handed out
/// again, as long as the writer was less than this many records behind (29 hours of 16 busy
/// cameras; it is 100 ms behind when the disk keeps up).
pub const CRASH_SKIP: u64 = 1 << 24;

/// A write-time mark is kept at most this often: eviction by age is that coarse.
const MARK_INTERVAL_NS: i64 = 10_000_000_000;

/// One descriptor as the log keeps it: the encoded `FrameDescriptor` and what queries need.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub offset: u64,
    pub camera_id: String,
    pub sequence: u64,
    pub capture_ns: i64,
    /// Every track the descriptor mentions (records and events), for queries by track.
    pub track_ids: Vec<u64>,
    pub bytes: Vec<u8>,
}

/// Offsets `first..=last` that hold no record a reader will get, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub first: u64,
    pub last: u64,
    pub reason: GapReason,
}

/// Stored as its discriminant: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    Evicted = 0,
    NotStored = 1,
    /// Skipped at the restart after a crash: the first few may have been sent live, never stored.
    LostInCrash = 2,
}

/// What a query selects; every part optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    pub camera_id: Option<String>,
    pub track_id: Option<u64>,
    /// Capture time, from inclusive, to exclusive.
    pub from_ns: Option<i64>,
    pub to_ns: Option<i64>,
    pub newest_first: bool,
}

/// Where a query page ends: the next page continues strictly after (or before) this key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryKey {
    pub capture_ns: i64,
    pub offset: u64,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
    next_offset: u64,
    last_mark_ns: i64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("next_offset", &self.next_offset)
            .finish()
    }
}

/// SQLite keeps integers signed; offsets and counters stay far below 2^63.
fn to_sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn from_sql(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// What opening found about the previous run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastRun {
    /// A new log.
    None,
    Closed,
    /// The previous run did not close the log: numbers skipped ahead by [`CRASH_SKIP`].
    Crashed,
}

impl Store {
    /// Opens (or creates) the store at `path` for writing: one writer per file. A file that is
    /// not a sound store of this version is an error naming the file: starting an empty log
    /// instead would reuse offsets.
    pub fn open(path: &Path) -> Result<(Store, LastRun)> {
        let fail = |e: rusqlite::Error| store_error(path, e);
        let conn = Connection::open(path).map_err(fail)?;
        // The journal mode is the first read of the file: a file that is not a database fails here.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(fail)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(corrupt(path, format!("could not switch to WAL mode (got {mode})")));
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF;")
            .map_err(fail)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |row| row.get(0))
            .map_err(fail)?;
        if check != "ok" {
            return Err(corrupt(path, format!("integrity check: {}", quote(&check))));
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS records (
                 log_offset INTEGER PRIMARY KEY,
                 camera TEXT NOT NULL,
                 sequence INTEGER NOT NULL,
                 capture_ns INTEGER NOT NULL,
                 bytes BLOB NOT NULL);
             CREATE INDEX IF NOT EXISTS records_by_camera_time ON records (camera, capture_ns);
             CREATE INDEX IF NOT EXISTS records_by_time ON records (capture_ns);
             CREATE TABLE IF NOT EXISTS record_tracks (
                 track_id INTEGER NOT NULL,
                 log_offset INTEGER NOT NULL,
                 PRIMARY KEY (track_id, log_offset)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS cameras (
                 camera TEXT PRIMARY KEY,
                 next_sequence INTEGER NOT NULL,
                 next_track INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS gaps (
                 first_offset INTEGER PRIMARY KEY,
                 last_offset INTEGER NOT NULL,
                 reason INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS marks (
                 first_offset INTEGER PRIMARY KEY,
                 written_ns INTEGER NOT NULL);",
        )
        .map_err(fail)?;
        let version: Option<i64> = meta(&conn, "schema_version").map_err(fail)?;
        let last_run = match version {
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?1), ('next_offset', 0),
                     ('evicted_before', 0), ('open', 1), ('counter_floor', 0)",
                    params![SCHEMA_VERSION],
                )
                .map_err(fail)?;
                LastRun::None
            }
            Some(SCHEMA_VERSION) => {
                let tx = conn.unchecked_transaction().map_err(fail)?;
                let was_open = meta(&tx, "open").map_err(fail)? != Some(0);
                if was_open {
                    // What the crashed run handed out live after its last commit lies at the start
                    // of the skipped range: readers crossing it are told.
                    let next = meta(&tx, "next_offset").map_err(fail)?.unwrap_or(0);
                    tx.execute(
                        "INSERT OR REPLACE INTO gaps (first_offset, last_offset, reason) VALUES (?1, ?2, ?3)",
                        params![next, next + to_sql(CRASH_SKIP) - 1, GapReason::LostInCrash as i64],
                    )
                    .map_err(fail)?;
                    tx.execute_batch(&format!(
                        "UPDATE meta SET value = value + {CRASH_SKIP} WHERE key IN ('next_offset', 'counter_floor');
                         UPDATE cameras SET next_sequence = next_sequence + {CRASH_SKIP},
                                            next_track = next_track + {CRASH_SKIP};"
                    ))
                    .map_err(fail)?;
                }
                tx.execute("UPDATE meta SET value = 1 WHERE key = 'open'", [])
                    .map_err(fail)?;
                tx.commit().map_err(fail)?;
                if was_open { LastRun::Crashed } else { LastRun::Closed }
            }
            Some(other) => {
                return Err(corrupt(
                    path,
                    format!("written with schema version {other}; this node reads version {SCHEMA_VERSION}"),
                ));
            }
        };
        let next_offset = meta(&conn, "next_offset").map_err(fail)?.unwrap_or(0);
        let last_mark_ns: i64 = conn
            .query_row("SELECT COALESCE(MAX(written_ns), 0) FROM marks", [], |row| row.get(0))
            .map_err(fail)?;
        Ok((
            Store {
                conn,
                path: path.to_path_buf(),
                next_offset: from_sql(next_offset),
                last_mark_ns,
            },
            last_run,
        ))
    }

    /// Opens an existing store for reading beside its writer (WAL lets both run at once).
    pub fn open_reader(path: &Path) -> Result<Store> {
        let fail = |e: rusqlite::Error| store_error(path, e);
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(fail)?;
        conn.execute_batch("PRAGMA query_only = 1;").map_err(fail)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            next_offset: 0,
            last_mark_ns: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The offset the next record gets: one past every offset ever handed out, evicted ones
    /// included.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Appends `records` (their offsets in increasing order, from [`next_offset`](Self::next_offset)
    /// on, gaps allowed), the cameras' counters and the gaps of records that were never stored, in
    /// one transaction. `now_ns` dates the batch for eviction by age.
    pub fn append(
        &mut self,
        records: &[Record],
        counters: &[(String, CameraCounters)],
        unstored: &[Gap],
        now_ns: i64,
    ) -> Result<()> {
        let last = records
            .last()
            .map(|r| r.offset)
            .into_iter()
            .chain(unstored.iter().map(|g| g.last))
            .max();
        let Some(last) = last else {
            return Ok(());
        };
        if records.first().is_some_and(|r| r.offset < self.next_offset)
            || records.windows(2).any(|w| w[1].offset <= w[0].offset)
        {
            return Err(Error::Internal(format!(
                "log append out of order (next offset {}, batch {}..={last})",
                self.next_offset,
                records.first().map_or(last, |r| r.offset),
            )));
        }
        let path = self.path.clone();
        let fail = |e: rusqlite::Error| store_error(&path, e);
        let tx = self.conn.transaction().map_err(fail)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO records (log_offset, camera, sequence, capture_ns, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(fail)?;
            let mut track = tx
                .prepare_cached("INSERT OR IGNORE INTO record_tracks (track_id, log_offset) VALUES (?1, ?2)")
                .map_err(fail)?;
            for r in records {
                insert
                    .execute(params![
                        to_sql(r.offset),
                        r.camera_id,
                        to_sql(r.sequence),
                        r.capture_ns,
                        r.bytes
                    ])
                    .map_err(fail)?;
                for &id in &r.track_ids {
                    track.execute(params![to_sql(id), to_sql(r.offset)]).map_err(fail)?;
                }
            }
            let mut camera = tx
                .prepare_cached(
                    "INSERT INTO cameras (camera, next_sequence, next_track) VALUES (?1, ?2, ?3)
                     ON CONFLICT (camera) DO UPDATE SET next_sequence = ?2, next_track = ?3",
                )
                .map_err(fail)?;
            for (id, c) in counters {
                camera
                    .execute(params![id, to_sql(c.next_sequence), to_sql(c.next_track)])
                    .map_err(fail)?;
            }
            let mut gap = tx
                .prepare_cached("INSERT OR REPLACE INTO gaps (first_offset, last_offset, reason) VALUES (?1, ?2, ?3)")
                .map_err(fail)?;
            for g in unstored {
                gap.execute(params![to_sql(g.first), to_sql(g.last), g.reason as i64])
                    .map_err(fail)?;
            }
            if let Some(first) = records.first()
                && now_ns.saturating_sub(self.last_mark_ns) >= MARK_INTERVAL_NS
            {
                tx.execute(
                    "INSERT OR REPLACE INTO marks (first_offset, written_ns) VALUES (?1, ?2)",
                    params![to_sql(first.offset), now_ns],
                )
                .map_err(fail)?;
            }
            let next = self.next_offset.max(last + 1);
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'next_offset'",
                params![to_sql(next)],
            )
            .map_err(fail)?;
        }
        tx.commit().map_err(fail)?;
        if !records.is_empty() && now_ns.saturating_sub(self.last_mark_ns) >= MARK_INTERVAL_NS {
            self.last_mark_ns = now_ns;
        }
        self.next_offset = self.next_offset.max(last + 1);
        Ok(())
    }

    /// Marks the log closed: the next open continues every number exactly where it stopped.
    pub fn close(self) -> Result<()> {
        self.conn
            .execute("UPDATE meta SET value = 0 WHERE key = 'open'", [])
            .map_err(|e| store_error(&self.path, e))?;
        Ok(())
    }

    /// Where numbering starts for a camera the log has never seen: 0, except in a log that
    /// replaced a damaged one (see [`Store::replace_damaged`]).
    pub fn counter_floor(&self) -> Result<u64> {
        meta(&self.conn, "counter_floor")
            .map(|v| from_sql(v.unwrap_or(0)))
            .map_err(|e| store_error(&self.path, e))
    }

    /// Moves a damaged log (and its `-wal` and `-shm` files) aside, to `PATH.damaged-UNIXSECONDS`,
    /// and creates an empty log in its place whose offsets, sequences and track ids start above
    /// any the damaged log can have handed out: above its own next offset when that can still be
    /// read, and in any case at `now_unix_seconds * 2^24` (the form of a track id born now; a node
    /// would need a billion crashes to reach it). Returns where the old files went and the new
    /// log's first offset.
    pub fn replace_damaged(path: &Path, now_unix_seconds: u64) -> Result<(PathBuf, u64)> {
        let salvaged = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()
            .and_then(|conn| meta(&conn, "next_offset").ok().flatten())
            .map(from_sql);
        let floor = (now_unix_seconds << 24).max(salvaged.map_or(0, |next| next + CRASH_SKIP));
        let aside = PathBuf::from(format!("{}.damaged-{now_unix_seconds}", path.display()));
        for suffix in ["", "-wal", "-shm"] {
            let from = PathBuf::from(format!("{}{suffix}", path.display()));
            let to = PathBuf::from(format!("{}{suffix}", aside.display()));
            match std::fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("moving {} aside to {}", from.display(), to.display()),
                        e,
                    ));
                }
            }
        }
        let (store, _) = Store::open(path)?;
        let fail = |e: rusqlite::Error| store_error(path, e);
        store
            .conn
            .execute(
                "UPDATE meta SET value = ?1 WHERE key IN ('next_offset', 'counter_floor', 'evicted_before')",
                params![to_sql(floor)],
            )
            .map_err(fail)?;
        store.close()?;
        Ok((aside, floor))
    }

    /// What every camera had handed out at the last commit (plus [`CRASH_SKIP`] after a crash).
    pub fn camera_counters(&self) -> Result<HashMap<String, CameraCounters>> {
        let fail = |e: rusqlite::Error| store_error(&self.path, e);
        let mut select = self
            .conn
            .prepare("SELECT camera, next_sequence, next_track FROM cameras")
            .map_err(fail)?;
        let rows = select
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    CameraCounters {
                        next_sequence: from_sql(row.get(1)?),
                        next_track: from_sql(row.get(2)?),
                    },
                ))
            })
            .map_err(fail)?;
        rows.collect::<rusqlite::Result<_>>().map_err(fail)
    }

    /// The records with offsets in `from..until`, at most `limit`, and the gaps that lie in that
    /// span (up to the last record returned if the limit cut it short), read from one snapshot so
    /// that an eviction in between cannot hide records. Offsets below the eviction boundary come
    /// back as one evicted gap.
    pub fn read_span(&self, from: u64, until: u64, limit: usize) -> Result<(Vec<Record>, Vec<Gap>, u64)> {
        let fail = |e: rusqlite::Error| store_error(&self.path, e);
        let tx = self.conn.unchecked_transaction().map_err(fail)?;
        let mut gaps = Vec::new();
        let mut from = from;
        let evicted_before = from_sql(meta(&tx, "evicted_before").map_err(fail)?.unwrap_or(0));
        if from < evicted_before && from < until {
            let last = evicted_before.min(until) - 1;
            gaps.push(Gap {
                first: from,
                last,
                reason: GapReason::Evicted,
            });
            from = last + 1;
        }
        if from >= until {
            return Ok((Vec::new(), gaps, until));
        }
        let records = {
            let mut select = tx
                .prepare_cached(
                    "SELECT log_offset, camera, sequence, capture_ns, bytes FROM records
                     WHERE log_offset >= ?1 AND log_offset < ?2 ORDER BY log_offset LIMIT ?3",
                )
                .map_err(fail)?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            select
                .query_map(params![to_sql(from), to_sql(until), limit], record_row)
                .map_err(fail)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(fail)?
        };
        let end = if records.len() == limit {
            records.last().map_or(until, |r| r.offset + 1)
        } else {
            until
        };
        gaps.extend(stored_gaps(&tx, from, end).map_err(fail)?);
        drop(tx);
        Ok((records, gaps, end))
    }

    /// Up to `limit` records with an offset of at least `from`, in offset order, with their
    /// track ids.
    pub fn read_from(&self, from: u64, limit: usize) -> Result<Vec<Record>> {
        let (mut records, _, _) = self.read_span(from, u64::MAX >> 1, limit)?;
        self.fill_track_ids(&mut records)?;
        Ok(records)
    }

    fn fill_track_ids(&self, records: &mut [Record]) -> Result<()> {
        let fail = |e: rusqlite::Error| store_error(&self.path, e);
        let mut tracks = self
            .conn
            .prepare_cached("SELECT track_id FROM record_tracks WHERE log_offset = ?1 ORDER BY track_id")
            .map_err(fail)?;
        for record in records {
            record.track_ids = tracks
                .query_map(params![to_sql(record.offset)], |row| row.get::<_, i64>(0).map(from_sql))
                .map_err(fail)?
                .collect::<rusqlite::Result<_>>()
                .map_err(fail)?;
        }
        Ok(())
    }

    /// Records a query selects, ordered by capture time (then offset), strictly after `after`
    /// (before it when newest first), at most `limit`.
    pub fn select(&self, selection: &Selection, after: Option<QueryKey>, limit: usize) -> Result<Vec<Record>> {
        let fail = |e: rusqlite::Error| store_error(&self.path, e);
        let mut sql = String::from("SELECT r.log_offset, r.camera, r.sequence, r.capture_ns, r.bytes FROM records r");
        let mut conditions: Vec<&str> = Vec::new();
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(track) = selection.track_id {
            sql.push_str(" JOIN record_tracks t ON t.log_offset = r.log_offset");
            conditions.push("t.track_id = ?");
            values.push(to_sql(track).into());
        }
        if let Some(camera) = &selection.camera_id {
            conditions.push("r.camera = ?");
            values.push(camera.clone().into());
        }
        if let Some(from) = selection.from_ns {
            conditions.push("r.capture_ns >= ?");
            values.push(from.into());
        }
        if let Some(to) = selection.to_ns {
            conditions.push("r.capture_ns < ?");
            values.push(to.into());
        }
        let order = if selection.newest_first { "DESC" } else { "ASC" };
        if let Some(key) = after {
            conditions.push(if selection.newest_first {
                "(r.capture_ns, r.log_offset) < (?, ?)"
            } else {
                "(r.capture_ns, r.log_offset) > (?, ?)"
            });
            values.push(key.capture_ns.into());
            values.push(to_sql(key.offset).into());
        }
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(&format!(" ORDER BY r.capture_ns {order}, r.log_offset {order} LIMIT ?"));
        values.push(i64::try_from(limit).unwrap_or(i64::MAX).into());
        let mut select = self.conn.prepare_cached(&sql).map_err(fail)?;
        let records = select
            .query_map(rusqlite::params_from_iter(values), record_row)
            .map_err(fail)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(fail)?;
        Ok(records)
    }

    /// The first offset of a record captured at or after `capture_ns`, if any is kept.
    pub fn first_offset_captured_from(&self, capture_ns: i64) -> Result<Option<u64>> {
        self.conn
            .query_row(
                "SELECT MIN(log_offset) FROM records WHERE capture_ns >= ?1",
                params![capture_ns],
                |row| row.get::<_, Option<i64>>(0),
            )
            .map(|v| v.map(from_sql))
            .map_err(|e| store_error(&self.path, e))
    }

    /// Offsets below this were evicted (0 if nothing was).
    pub fn evicted_before(&self) -> Result<u64> {
        meta(&self.conn, "evicted_before")
            .map(|v| from_sql(v.unwrap_or(0)))
            .map_err(|e| store_error(&self.path, e))
    }

    /// The oldest offset still kept, if any record is.
    pub fn first_offset(&self) -> Result<Option<u64>> {
        self.conn
            .query_row("SELECT MIN(log_offset) FROM records", [], |row| {
                row.get::<_, Option<i64>>(0)
            })
            .map(|v| v.map(from_sql))
            .map_err(|e| store_error(&self.path, e))
    }

    /// Bytes the log's pages hold now (pages freed by eviction are reused, so the file stays near
    /// its peak).
    pub fn used_bytes(&self) -> Result<u64> {
        let fail = |e: rusqlite::Error| store_error(&self.path, e);
        let pages: i64 = self
            .conn
            .query_row("PRAGMA page_count", [], |row| row.get(0))
            .map_err(fail)?;
        let free: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |row| row.get(0))
            .map_err(fail)?;
        let size: i64 = self
            .conn
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .map_err(fail)?;
        Ok(from_sql((pages - free) * size))
    }

    /// Records kept now.
    pub fn record_count(&self) -> Result<u64> {
        self.conn
            .query_row("SELECT COUNT(*) FROM records", [], |row| row.get::<_, i64>(0))
            .map(from_sql)
            .map_err(|e| store_error(&self.path, e))
    }

    /// The offset after the `n`th oldest record kept (where evicting `n` records would end).
    pub fn offset_after_oldest(&self, n: u64) -> Result<Option<u64>> {
        self.conn
            .query_row(
                "SELECT log_offset FROM records ORDER BY log_offset LIMIT 1 OFFSET ?1",
                params![to_sql(n)],
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .map(|v| v.map(from_sql))
            .map_err(|e| store_error(&self.path, e))
    }

    /// Where eviction by age ends: every record below this offset was stored at or before
    /// `cutoff_ns` (by the write-time marks, kept every 10 s).
    pub fn offset_stored_after(&self, cutoff_ns: i64) -> Result<Option<u64>> {
        self.conn
            .query_row(
                "SELECT MIN(first_offset) FROM marks WHERE written_ns > ?1",
                params![cutoff_ns],
                |row| row.get::<_, Option<i64>>(0),
            )
            .map(|v| v.map(from_sql))
            .map_err(|e| store_error(&self.path, e))
    }

    /// Removes every record before `offset` (and what only they needed), in one transaction;
    /// returns how many records went. Readers whose cursor is below `offset` get a gap notice.
    pub fn evict_before(&mut self, offset: u64) -> Result<u64> {
        let path = self.path.clone();
        let fail = |e: rusqlite::Error| store_error(&path, e);
        let tx = self.conn.transaction().map_err(fail)?;
        let boundary = to_sql(offset);
        tx.execute("DELETE FROM record_tracks WHERE log_offset < ?1", params![boundary])
            .map_err(fail)?;
        let removed = tx
            .execute("DELETE FROM records WHERE log_offset < ?1", params![boundary])
            .map_err(fail)?;
        tx.execute("DELETE FROM gaps WHERE last_offset < ?1", params![boundary])
            .map_err(fail)?;
        // The newest mark at or below the boundary still dates the records after it.
        tx.execute(
            "DELETE FROM marks WHERE first_offset < (SELECT MAX(first_offset) FROM marks WHERE first_offset <= ?1)",
            params![boundary],
        )
        .map_err(fail)?;
        tx.execute(
            "UPDATE meta SET value = MAX(value, ?1) WHERE key = 'evicted_before'",
            params![boundary],
        )
        .map_err(fail)?;
        tx.commit().map_err(fail)?;
        Ok(removed as u64)
    }
}

fn record_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        offset: from_sql(row.get(0)?),
        camera_id: row.get(1)?,
        sequence: from_sql(row.get(2)?),
        capture_ns: row.get(3)?,
        track_ids: Vec::new(),
        bytes: row.get(4)?,
    })
}

fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |row| row.get(0))
        .optional()
}

/// Stored gaps overlapping `from..until`, clipped to it, in offset order.
fn stored_gaps(conn: &Connection, from: u64, until: u64) -> rusqlite::Result<Vec<Gap>> {
    let mut select = conn.prepare_cached(
        "SELECT first_offset, last_offset, reason FROM gaps
         WHERE first_offset < ?2 AND last_offset >= ?1 ORDER BY first_offset",
    )?;
    select
        .query_map(params![to_sql(from), to_sql(until)], |row| {
            let reason = match row.get::<_, i64>(2)? {
                0 => GapReason::Evicted,
                2 => GapReason::LostInCrash,
                _ => GapReason::NotStored,
            };
            Ok(Gap {
                first: from_sql(row.get(0)?).max(from),
                last: from_sql(row.get(1)?).min(until.saturating_sub(1)),
                reason,
            })
        })?
        .collect()
}

fn store_error(path: &Path, err: rusqlite::Error) -> Error {
    match err.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
            corrupt(path, err.to_string())
        }
        _ => Error::Log {
            path: path.to_path_buf(),
            message: err.to_string(),
        },
    }
}

fn corrupt(path: &Path, message: String) -> Error {
    Error::Log {
        path: path.to_path_buf(),
        message: format!(
            "{message}; the log is damaged, and the node does not start an empty log in its place (that would hand out its offsets again): `retina-edge reset-log --config FILE` moves it aside and starts a log numbered above it"
        ),
    }
}

/// At most a short prefix of what SQLite reports about a damaged file.
fn quote(text: &str) -> String {
    const MAX: usize = 120;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: u64, camera: &str, sequence: u64, tracks: &[u64]) -> Record {
        Record {
            offset,
            camera_id: camera.into(),
            sequence,
            capture_ns: 1_000 * offset as i64,
            track_ids: tracks.to_vec(),
            bytes: vec![offset as u8; 3],
        }
    }

    fn counters(sequence: u64, track: u64) -> CameraCounters {
        CameraCounters {
            next_sequence: sequence,
            next_track: track,
        }
    }

    fn open(path: &Path) -> Store {
        Store::open(path).unwrap().0
    }

    #[test]
    fn records_counters_and_the_next_offset_survive_a_clean_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sqlite");
        let (mut store, last_run) = Store::open(&path).unwrap();
        assert_eq!((store.next_offset(), last_run), (0, LastRun::None));
        let batch = [
            record(0, "a", 0, &[7]),
            record(1, "b", 0, &[]),
            record(3, "a", 1, &[7, 9]),
        ];
        store.append(&batch, &[("a".into(), counters(2, 10))], &[], 0).unwrap();
        assert_eq!(store.next_offset(), 4);
        store.close().unwrap();

        let (store, last_run) = Store::open(&path).unwrap();
        assert_eq!((store.next_offset(), last_run), (4, LastRun::Closed));
        assert_eq!(store.read_from(0, 10).unwrap(), batch);
        assert_eq!(store.read_from(2, 1).unwrap(), batch[2..]);
        let cameras = store.camera_counters().unwrap();
        assert_eq!(cameras.get("a"), Some(&counters(2, 10)));
        assert_eq!(cameras.get("b"), None);
    }

    #[test]
    fn after_a_crash_every_number_skips_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sqlite");
        let mut store = open(&path);
        store
            .append(&[record(0, "a", 0, &[])], &[("a".into(), counters(1, 5))], &[], 0)
            .unwrap();
        drop(store); // not closed: as after kill -9
        let (store, last_run) = Store::open(&path).unwrap();
        assert_eq!(last_run, LastRun::Crashed);
        assert_eq!(store.next_offset(), 1 + CRASH_SKIP);
        let (_, gaps, _) = store.read_span(1, 2 + CRASH_SKIP, 10).unwrap();
        assert_eq!(
            gaps,
            [Gap {
                first: 1,
                last: CRASH_SKIP,
                reason: GapReason::LostInCrash
            }],
            "readers crossing the skipped offsets are told"
        );
        assert_eq!(
            store.camera_counters().unwrap()["a"],
            counters(1 + CRASH_SKIP, 5 + CRASH_SKIP)
        );
    }

    #[test]
    fn evicted_offsets_are_never_handed_out_again_and_read_as_one_gap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sqlite");
        let mut store = open(&path);
        let batch: Vec<Record> = (0..10).map(|i| record(i, "a", i, &[1])).collect();
        store.append(&batch, &[], &[], 0).unwrap();
        assert_eq!(store.evict_before(6).unwrap(), 6);
        let (records, gaps, end) = store.read_span(2, 10, 100).unwrap();
        assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), [6, 7, 8, 9]);
        assert_eq!(
            gaps,
            [Gap {
                first: 2,
                last: 5,
                reason: GapReason::Evicted
            }]
        );
        assert_eq!(end, 10);
        assert_eq!(store.evict_before(10).unwrap(), 4);
        assert_eq!(store.first_offset().unwrap(), None);
        store.close().unwrap();
        let mut store = open(&path);
        assert_eq!(
            store.next_offset(),
            10,
            "an empty store still knows the offsets it gave"
        );
        let err = store.append(&[record(5, "a", 5, &[])], &[], &[], 0).unwrap_err();
        assert!(err.to_string().contains("out of order"), "{err}");
        store.append(&[record(10, "a", 10, &[])], &[], &[], 0).unwrap();
        assert_eq!(store.first_offset().unwrap(), Some(10));
    }

    #[test]
    fn unstored_gaps_are_kept_and_read_in_their_span() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sqlite");
        let mut store = open(&path);
        let gap = Gap {
            first: 1,
            last: 2,
            reason: GapReason::NotStored,
        };
        store
            .append(&[record(0, "a", 0, &[]), record(3, "a", 3, &[])], &[], &[gap], 0)
            .unwrap();
        let (records, gaps, _) = store.read_span(0, 4, 10).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(gaps, [gap]);
        // A page cut short by its limit reports only the gaps before its end.
        let (records, gaps, end) = store.read_span(0, 4, 1).unwrap();
        assert_eq!((records.len(), gaps.len(), end), (1, 0, 1));
    }

    #[test]
    fn selections_page_by_capture_time_in_either_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sqlite");
        let mut store = open(&path);
        let batch: Vec<Record> = (0..20)
            .map(|i| {
                record(
                    i,
                    if i % 2 == 0 { "a" } else { "b" },
                    i,
                    if i % 5 == 0 { &[42] } else { &[] },
                )
            })
            .collect();
        store.append(&batch, &[], &[], 0).unwrap();
        let offsets = |records: Vec<Record>| records.iter().map(|r| r.offset).collect::<Vec<_>>();
        let camera_a = Selection {
            camera_id: Some("a".into()),
            from_ns: Some(4_000),
            to_ns: Some(14_000),
            ..Selection::default()
        };
        let first = store.select(&camera_a, None, 3).unwrap();
        assert_eq!(offsets(first.clone()), [4, 6, 8]);
        let last = first.last().unwrap();
        let key = QueryKey {
            capture_ns: last.capture_ns,
            offset: last.offset,
        };
        assert_eq!(offsets(store.select(&camera_a, Some(key), 3).unwrap()), [10, 12]);
        let track = Selection {
            track_id: Some(42),
            newest_first: true,
            ..Selection::default()
        };
        assert_eq!(offsets(store.select(&track, None, 10).unwrap()), [15, 10, 5, 0]);
        assert_eq!(store.first_offset_captured_from(7_500).unwrap(), Some(8));
    }

    #[test]
    fn eviction_by_age_follows_the_write_time_marks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sqlite");
        let mut store = open(&path);
        let s = 1_000_000_000;
        store.append(&[record(0, "a", 0, &[])], &[], &[], 100 * s).unwrap();
        store.append(&[record(1, "a", 1, &[])], &[], &[], 105 * s).unwrap(); // no new mark: < 10 s
        store.append(&[record(2, "a", 2, &[])], &[], &[], 120 * s).unwrap();
        assert_eq!(store.offset_stored_after(110 * s).unwrap(), Some(2));
        assert_eq!(store.offset_stored_after(130 * s).unwrap(), None);
        store.evict_before(2).unwrap();
        assert_eq!(store.offset_stored_after(90 * s).unwrap(), Some(2));
    }

    #[test]
    fn a_damaged_log_is_replaced_by_one_that_numbers_above_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sqlite");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let now = 1_780_000_000;
        let (aside, floor) = Store::replace_damaged(&path, now).unwrap();
        assert_eq!(
            std::fs::read(&aside).unwrap(),
            vec![0x5a; 8192],
            "the damaged file is kept"
        );
        assert_eq!(floor, now << 24);
        let (store, last_run) = Store::open(&path).unwrap();
        assert_eq!(last_run, LastRun::Closed);
        assert_eq!((store.next_offset(), store.counter_floor().unwrap()), (floor, floor));
        assert_eq!(
            store.evicted_before().unwrap(),
            floor,
            "readers are told the old offsets are gone"
        );
    }

    #[test]
    fn a_file_that_is_not_a_log_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sqlite");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = Store::open(&path).unwrap_err().to_string();
        assert!(err.contains("log.sqlite") && err.contains("damaged"), "{err}");
        assert!(err.contains("retina-edge reset-log"), "the recovery is named: {err}");
    }
}
