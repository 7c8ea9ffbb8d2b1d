//! Where the descriptor log is kept: one SQLite database in WAL mode with `synchronous = FULL`
//! (`benches/results/log-stores.md` compares it with redb and fjall on this log's workload).
//!
//! Records are appended in batches, one transaction each (group commit: one fsync per batch,
//! never per record). The next offset and each camera's counters are written in the same
//! transaction as the records, so after a crash the store is exactly as of its last commit, and an
//! offset is never handed out twice, also when the records that had it were evicted since.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Error, Result};

/// Bumped when the tables change; a store written by another version is refused, not guessed at.
const SCHEMA_VERSION: i64 = 1;

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

/// What a camera has handed out so far, so that numbering goes on after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CameraCounters {
    pub next_sequence: u64,
    pub next_track: u64,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
    next_offset: u64,
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

impl Store {
    /// Opens (or creates) the store at `path`. A file that is not a sound store of this version
    /// is an error naming the file: starting an empty log instead would reuse offsets.
    pub fn open(path: &Path) -> Result<Store> {
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
             CREATE TABLE IF NOT EXISTS record_tracks (
                 track_id INTEGER NOT NULL,
                 log_offset INTEGER NOT NULL,
                 PRIMARY KEY (track_id, log_offset)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS cameras (
                 camera TEXT PRIMARY KEY,
                 next_sequence INTEGER NOT NULL,
                 next_track INTEGER NOT NULL);",
        )
        .map_err(fail)?;
        let version: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |row| {
                row.get(0)
            })
            .optional()
            .map_err(fail)?;
        match version {
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?1), ('next_offset', 0)",
                    params![SCHEMA_VERSION],
                )
                .map_err(fail)?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(corrupt(
                    path,
                    format!("written with schema version {other}; this node reads version {SCHEMA_VERSION}"),
                ));
            }
        }
        let next_offset: i64 = conn
            .query_row("SELECT value FROM meta WHERE key = 'next_offset'", [], |row| row.get(0))
            .map_err(fail)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            next_offset: from_sql(next_offset),
        })
    }

    /// The offset the next record gets: one past every offset ever stored, evicted ones included.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Appends `records` (their offsets in increasing order, from [`next_offset`](Self::next_offset)
    /// on, gaps allowed) and the cameras' counters, in one transaction.
    pub fn append(&mut self, records: &[Record], counters: &[(String, CameraCounters)]) -> Result<()> {
        let Some(last) = records.last() else {
            return Ok(());
        };
        if records.first().is_some_and(|r| r.offset < self.next_offset)
            || records.windows(2).any(|w| w[1].offset <= w[0].offset)
        {
            return Err(Error::Internal(format!(
                "log append out of order (next offset {}, batch {}..={})",
                self.next_offset, records[0].offset, last.offset
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
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'next_offset'",
                params![to_sql(last.offset + 1)],
            )
            .map_err(fail)?;
        }
        tx.commit().map_err(fail)?;
        self.next_offset = last.offset + 1;
        Ok(())
    }

    /// Up to `limit` records with an offset of at least `from`, in offset order.
    pub fn read_from(&self, from: u64, limit: usize) -> Result<Vec<Record>> {
        let fail = |e: rusqlite::Error| store_error(&self.path, e);
        let mut select = self
            .conn
            .prepare_cached(
                "SELECT log_offset, camera, sequence, capture_ns, bytes FROM records
                 WHERE log_offset >= ?1 ORDER BY log_offset LIMIT ?2",
            )
            .map_err(fail)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = select
            .query_map(params![to_sql(from), limit], |row| {
                Ok(Record {
                    offset: from_sql(row.get(0)?),
                    camera_id: row.get(1)?,
                    sequence: from_sql(row.get(2)?),
                    capture_ns: row.get(3)?,
                    track_ids: Vec::new(),
                    bytes: row.get(4)?,
                })
            })
            .map_err(fail)?;
        let mut records = rows.collect::<rusqlite::Result<Vec<_>>>().map_err(fail)?;
        let mut tracks = self
            .conn
            .prepare_cached("SELECT track_id FROM record_tracks WHERE log_offset = ?1 ORDER BY track_id")
            .map_err(fail)?;
        for record in &mut records {
            record.track_ids = tracks
                .query_map(params![to_sql(record.offset)], |row| row.get::<_, i64>(0).map(from_sql))
                .map_err(fail)?
                .collect::<rusqlite::Result<_>>()
                .map_err(fail)?;
        }
        Ok(records)
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

    /// What a camera had handed out at the last commit (none for a camera never logged).
    pub fn camera_counters(&self, camera_id: &str) -> Result<Option<CameraCounters>> {
        self.conn
            .query_row(
                "SELECT next_sequence, next_track FROM cameras WHERE camera = ?1",
                params![camera_id],
                |row| {
                    Ok(CameraCounters {
                        next_sequence: from_sql(row.get(0)?),
                        next_track: from_sql(row.get(1)?),
                    })
                },
            )
            .optional()
            .map_err(|e| store_error(&self.path, e))
    }

    /// Removes every record before `offset`, in one transaction; returns how many went.
    pub fn evict_before(&mut self, offset: u64) -> Result<u64> {
        let path = self.path.clone();
        let fail = |e: rusqlite::Error| store_error(&path, e);
        let tx = self.conn.transaction().map_err(fail)?;
        tx.execute(
            "DELETE FROM record_tracks WHERE log_offset < ?1",
            params![to_sql(offset)],
        )
        .map_err(fail)?;
        let removed = tx
            .execute("DELETE FROM records WHERE log_offset < ?1", params![to_sql(offset)])
            .map_err(fail)?;
        tx.commit().map_err(fail)?;
        Ok(removed as u64)
    }
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
            "{message}; the log is damaged, and the node does not start an empty log in its place (that would hand out its offsets again)"
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

    #[test]
    fn records_counters_and_the_next_offset_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sqlite");
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.next_offset(), 0);
        let batch = [
            record(0, "a", 0, &[7]),
            record(1, "b", 0, &[]),
            record(3, "a", 1, &[7, 9]),
        ];
        store.append(&batch, &[("a".into(), counters(2, 10))]).unwrap();
        assert_eq!(store.next_offset(), 4);
        drop(store);

        let store = Store::open(&path).unwrap();
        assert_eq!(store.next_offset(), 4);
        assert_eq!(store.read_from(0, 10).unwrap(), batch);
        assert_eq!(store.read_from(2, 1).unwrap(), batch[2..]);
        assert_eq!(store.camera_counters("a").unwrap(), Some(counters(2, 10)));
        assert_eq!(store.camera_counters("b").unwrap(), None);
    }

    #[test]
    fn evicted_offsets_are_never_handed_out_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sqlite");
        let mut store = Store::open(&path).unwrap();
        let batch: Vec<Record> = (0..10).map(|i| record(i, "a", i, &[1])).collect();
        store.append(&batch, &[]).unwrap();
        assert_eq!(store.evict_before(10).unwrap(), 10);
        assert_eq!(store.first_offset().unwrap(), None);
        drop(store);
        let mut store = Store::open(&path).unwrap();
        assert_eq!(
            store.next_offset(),
            10,
            "an empty store still knows the offsets it gave"
        );
        let err = store.append(&[record(5, "a", 5, &[])], &[]).unwrap_err();
        assert!(err.to_string().contains("out of order"), "{err}");
        store.append(&[record(10, "a", 10, &[])], &[]).unwrap();
        assert_eq!(store.first_offset().unwrap(), Some(10));
    }

    #[test]
    fn a_file_that_is_not_a_log_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sqlite");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = Store::open(&path).unwrap_err().to_string();
        assert!(err.contains("log.sqlite") && err.contains("damaged"), "{err}");
    }
}
