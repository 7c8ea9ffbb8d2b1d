//! Benchmark of embedded stores as retina-edge's durable descriptor log (issue 9).
//!
//! Stores: SQLite (rusqlite, WAL, synchronous=FULL and NORMAL), redb 4, fjall 3.
//! Same synthetic workload for each (deterministic seed), same machine, same run.
//! See ../results/log-stores.md for the results and the reasoning.
//!
//! Usage:
//!   cargo run --release -- --records 2000000 [--stores sqlite-full,sqlite-normal,redb,fjall]
//!                          [--dir /tmp/log-stores-bench] [--crash-runs 5] [--single-secs 3]
//! Internal (spawned by the crash test):
//!   log-stores --crash-writer STORE DIR

use rand::rngs::SmallRng;
use redb::ReadableDatabase;
use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- workload

const CAMERAS: u8 = 16;
/// Node-wide record rate of 16 busy cameras (5 records/s each): one record every 12.5 ms.
const NODE_RATE: f64 = 16.0 * 5.0;
const STEP_NS: u64 = 12_500_000;
const T0_NS: u64 = 1_790_000_000_000_000_000;
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Clone)]
struct Rec {
    offset: u64,
    camera: u8,
    time_ns: u64,
    tracks: Vec<u64>,
    /// The protobuf-like payload. Its first bytes carry camera, time and track ids (as the
    /// real descriptor does), so a key-value store can rebuild index keys from the payload.
    payload: Vec<u8>,
}

fn encode_header(camera: u8, time_ns: u64, tracks: &[u64], out: &mut Vec<u8>) {
    out.push(camera);
    out.extend_from_slice(&time_ns.to_le_bytes());
    out.push(tracks.len() as u8);
    for t in tracks {
        out.extend_from_slice(&t.to_le_bytes());
    }
}

fn decode_header(p: &[u8]) -> (u8, u64, Vec<u64>) {
    let camera = p[0];
    let time = u64::from_le_bytes(p[1..9].try_into().unwrap());
    let n = p[9] as usize;
    let tracks = (0..n)
        .map(|i| u64::from_le_bytes(p[10 + 8 * i..18 + 8 * i].try_into().unwrap()))
        .collect();
    (camera, time, tracks)
}

struct Gen {
    rng: SmallRng,
    next_offset: u64,
    next_track: u64,
    active: Vec<Vec<u64>>,
}

impl Gen {
    fn new(seed: u64, start_offset: u64) -> Self {
        let mut g = Gen {
            rng: SmallRng::seed_from_u64(seed),
            next_offset: start_offset,
            next_track: start_offset * 4 + 1,
            active: Vec::new(),
        };
        for _ in 0..CAMERAS {
            let v = (0..3).map(|_| g.new_track()).collect();
            g.active.push(v);
        }
        g
    }
    fn new_track(&mut self) -> u64 {
        self.next_track += 1;
        self.next_track
    }
    fn payload_len(&mut self) -> usize {
        // Mix modelled on the node's stream: per-frame track lists (most), appearance
        // descriptors (~160 B code + metadata), track summaries, a few large ones.
        let x: f64 = self.rng.gen();
        if x < 0.62 {
            self.rng.gen_range(24..=240)
        } else if x < 0.92 {
            self.rng.gen_range(180..=260)
        } else if x < 0.99 {
            self.rng.gen_range(230..=330)
        } else {
            self.rng.gen_range(400..=600)
        }
    }
    fn next(&mut self) -> Rec {
        let offset = self.next_offset;
        self.next_offset += 1;
        let camera = self.rng.gen_range(0..CAMERAS);
        let c = camera as usize;
        // A track ends now and then (lives ~60 records of its camera, ~12 s at 5 rec/s).
        if self.rng.gen_bool(0.05) {
            let i = self.rng.gen_range(0..3);
            let t = self.new_track();
            self.active[c][i] = t;
        }
        let k = self.rng.gen_range(1..=3);
        let tracks: Vec<u64> = self.active[c][..k].to_vec();
        let time_ns = T0_NS + offset * STEP_NS + self.rng.gen_range(0..STEP_NS / 2);
        let len = self.payload_len();
        let mut payload = Vec::with_capacity(len.max(48));
        encode_header(camera, time_ns, &tracks, &mut payload);
        // Field tags, node id and model names: a little compressible text...
        for &b in b"\x0a\x08node-017\x12\x05cam" {
            if payload.len() >= len {
                break;
            }
            payload.push(b);
        }
        // ...then quantised boxes and int8 codes: essentially incompressible.
        while payload.len() < len {
            payload.push(self.rng.gen());
        }
        Rec { offset, camera, time_ns, tracks, payload }
    }
}

// ---------------------------------------------------------------- stores

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    SqliteFull,
    SqliteNormal,
    Redb,
    Fjall,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::SqliteFull => "sqlite-full",
            Kind::SqliteNormal => "sqlite-normal",
            Kind::Redb => "redb",
            Kind::Fjall => "fjall",
        }
    }
    fn parse(s: &str) -> Kind {
        match s {
            "sqlite-full" => Kind::SqliteFull,
            "sqlite-normal" => Kind::SqliteNormal,
            "redb" => Kind::Redb,
            "fjall" => Kind::Fjall,
            _ => panic!("unknown store {s}"),
        }
    }
}

trait Store {
    /// Append records in ONE durable transaction (group commit).
    fn append(&mut self, recs: &[Rec]);
    fn last_offset(&self) -> Option<u64>;
    fn first_offset(&self) -> Option<u64>;
    /// Read up to `limit` records with offset >= from, in offset order, in one read
    /// transaction. Returns (records, payload bytes, last offset read).
    fn read_page(&self, from: u64, limit: usize) -> (usize, u64, Option<u64>);
    fn query_track(&self, track: u64) -> usize;
    fn query_time(&self, camera: u8, t0: u64, t1: u64) -> usize;
    /// Delete every record with offset < `before`, with its index entries, in one durable
    /// transaction.
    fn evict_before(&mut self, before: u64);
    fn count(&self) -> u64;
    /// The store's own integrity check, where it has one.
    fn integrity(&mut self) -> String;
    /// Make the on-disk state steady before measuring space (fjall: flush memtables).
    fn settle(&mut self) {}
    /// The store's own space reclamation (redb compact, fjall major compaction, SQLite
    /// VACUUM): returns a label.
    fn compact(&mut self) -> &'static str;
}

fn open_store(kind: Kind, dir: &Path) -> Box<dyn Store> {
    std::fs::create_dir_all(dir).unwrap();
    match kind {
        Kind::SqliteFull => Box::new(Sqlite::open(dir, true)),
        Kind::SqliteNormal => Box::new(Sqlite::open(dir, false)),
        Kind::Redb => Box::new(Redb::open(dir)),
        Kind::Fjall => Box::new(Fjall::open(dir)),
    }
}

// ---- SQLite

struct Sqlite {
    conn: rusqlite::Connection,
}

impl Sqlite {
    fn open(dir: &Path, full: bool) -> Self {
        let conn = rusqlite::Connection::open(dir.join("log.sqlite")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", if full { "FULL" } else { "NORMAL" }).unwrap();
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS records(
                 offset INTEGER PRIMARY KEY,
                 camera INTEGER NOT NULL,
                 capture_ns INTEGER NOT NULL,
                 payload BLOB NOT NULL);
             CREATE INDEX IF NOT EXISTS records_camera_time ON records(camera, capture_ns);
             CREATE TABLE IF NOT EXISTS record_tracks(
                 offset INTEGER NOT NULL,
                 track INTEGER NOT NULL,
                 PRIMARY KEY(offset, track)) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS record_tracks_track ON record_tracks(track);",
        )
        .unwrap();
        Sqlite { conn }
    }
}

impl Store for Sqlite {
    fn append(&mut self, recs: &[Rec]) {
        let tx = self.conn.transaction().unwrap();
        {
            let mut ins = tx
                .prepare_cached("INSERT INTO records(offset, camera, capture_ns, payload) VALUES (?1, ?2, ?3, ?4)")
                .unwrap();
            let mut ins_t =
                tx.prepare_cached("INSERT INTO record_tracks(offset, track) VALUES (?1, ?2)").unwrap();
            for r in recs {
                ins.execute(rusqlite::params![r.offset as i64, r.camera, r.time_ns as i64, r.payload])
                    .unwrap();
                for t in &r.tracks {
                    ins_t.execute(rusqlite::params![r.offset as i64, *t as i64]).unwrap();
                }
            }
        }
        tx.commit().unwrap();
    }
    fn last_offset(&self) -> Option<u64> {
        self.conn
            .query_row("SELECT max(offset) FROM records", [], |r| r.get::<_, Option<i64>>(0))
            .unwrap()
            .map(|v| v as u64)
    }
    fn first_offset(&self) -> Option<u64> {
        self.conn
            .query_row("SELECT min(offset) FROM records", [], |r| r.get::<_, Option<i64>>(0))
            .unwrap()
            .map(|v| v as u64)
    }
    fn read_page(&self, from: u64, limit: usize) -> (usize, u64, Option<u64>) {
        let mut st = self
            .conn
            .prepare_cached("SELECT offset, payload FROM records WHERE offset >= ?1 ORDER BY offset LIMIT ?2")
            .unwrap();
        let mut rows = st.query(rusqlite::params![from as i64, limit as i64]).unwrap();
        let (mut n, mut bytes, mut last) = (0, 0u64, None);
        while let Some(row) = rows.next().unwrap() {
            let off: i64 = row.get(0).unwrap();
            let p = row.get_ref(1).unwrap().as_blob().unwrap();
            bytes += p.len() as u64;
            n += 1;
            last = Some(off as u64);
        }
        (n, bytes, last)
    }
    fn query_track(&self, track: u64) -> usize {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT r.offset, r.payload FROM record_tracks t JOIN records r ON r.offset = t.offset
                 WHERE t.track = ?1 ORDER BY t.offset",
            )
            .unwrap();
        let mut rows = st.query([track as i64]).unwrap();
        let mut n = 0;
        while let Some(row) = rows.next().unwrap() {
            std::hint::black_box(row.get_ref(1).unwrap().as_blob().unwrap().len());
            n += 1;
        }
        n
    }
    fn query_time(&self, camera: u8, t0: u64, t1: u64) -> usize {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT offset, payload FROM records WHERE camera = ?1 AND capture_ns BETWEEN ?2 AND ?3
                 ORDER BY capture_ns",
            )
            .unwrap();
        let mut rows = st.query(rusqlite::params![camera, t0 as i64, t1 as i64]).unwrap();
        let mut n = 0;
        while let Some(row) = rows.next().unwrap() {
            std::hint::black_box(row.get_ref(1).unwrap().as_blob().unwrap().len());
            n += 1;
        }
        n
    }
    fn evict_before(&mut self, before: u64) {
        let tx = self.conn.transaction().unwrap();
        tx.execute("DELETE FROM record_tracks WHERE offset < ?1", [before as i64]).unwrap();
        tx.execute("DELETE FROM records WHERE offset < ?1", [before as i64]).unwrap();
        tx.commit().unwrap();
    }
    fn count(&self) -> u64 {
        self.conn.query_row("SELECT count(*) FROM records", [], |r| r.get::<_, i64>(0)).unwrap() as u64
    }
    fn integrity(&mut self) -> String {
        self.conn.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)).unwrap()
    }
    fn compact(&mut self) -> &'static str {
        self.conn.execute_batch("VACUUM").unwrap();
        "VACUUM"
    }
}

// ---- redb

const R_RECORDS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("records");
const R_CAM_TIME: redb::TableDefinition<(u8, u64, u64), ()> = redb::TableDefinition::new("camera_time");
const R_TRACK: redb::TableDefinition<(u64, u64), ()> = redb::TableDefinition::new("track");

struct Redb {
    db: redb::Database,
}

impl Redb {
    fn open(dir: &Path) -> Self {
        let db = redb::Database::create(dir.join("log.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            tx.open_table(R_RECORDS).unwrap();
            tx.open_table(R_CAM_TIME).unwrap();
            tx.open_table(R_TRACK).unwrap();
        }
        tx.commit().unwrap();
        Redb { db }
    }
}

impl Store for Redb {
    fn append(&mut self, recs: &[Rec]) {
        let mut tx = self.db.begin_write().unwrap();
        tx.set_durability(redb::Durability::Immediate).unwrap();
        {
            let mut rt = tx.open_table(R_RECORDS).unwrap();
            let mut ct = tx.open_table(R_CAM_TIME).unwrap();
            let mut tt = tx.open_table(R_TRACK).unwrap();
            for r in recs {
                rt.insert(r.offset, r.payload.as_slice()).unwrap();
                ct.insert((r.camera, r.time_ns, r.offset), ()).unwrap();
                for t in &r.tracks {
                    tt.insert((*t, r.offset), ()).unwrap();
                }
            }
        }
        tx.commit().unwrap();
    }
    fn last_offset(&self) -> Option<u64> {
        use redb::ReadableTable;
        let tx = self.db.begin_read().unwrap();
        let t = tx.open_table(R_RECORDS).unwrap();
        t.last().unwrap().map(|(k, _)| k.value())
    }
    fn first_offset(&self) -> Option<u64> {
        use redb::ReadableTable;
        let tx = self.db.begin_read().unwrap();
        let t = tx.open_table(R_RECORDS).unwrap();
        t.first().unwrap().map(|(k, _)| k.value())
    }
    fn read_page(&self, from: u64, limit: usize) -> (usize, u64, Option<u64>) {
        let tx = self.db.begin_read().unwrap();
        let t = tx.open_table(R_RECORDS).unwrap();
        let (mut n, mut bytes, mut last) = (0, 0u64, None);
        for e in t.range(from..).unwrap().take(limit) {
            let (k, v) = e.unwrap();
            bytes += v.value().len() as u64;
            n += 1;
            last = Some(k.value());
        }
        (n, bytes, last)
    }
    fn query_track(&self, track: u64) -> usize {
        let tx = self.db.begin_read().unwrap();
        let tt = tx.open_table(R_TRACK).unwrap();
        let rt = tx.open_table(R_RECORDS).unwrap();
        let mut n = 0;
        for e in tt.range((track, 0)..=(track, u64::MAX)).unwrap() {
            let (k, _) = e.unwrap();
            let (_, off) = k.value();
            if let Some(v) = rt.get(off).unwrap() {
                std::hint::black_box(v.value().len());
                n += 1;
            }
        }
        n
    }
    fn query_time(&self, camera: u8, t0: u64, t1: u64) -> usize {
        let tx = self.db.begin_read().unwrap();
        let ct = tx.open_table(R_CAM_TIME).unwrap();
        let rt = tx.open_table(R_RECORDS).unwrap();
        let mut n = 0;
        for e in ct.range((camera, t0, 0)..=(camera, t1, u64::MAX)).unwrap() {
            let (k, _) = e.unwrap();
            let (_, _, off) = k.value();
            if let Some(v) = rt.get(off).unwrap() {
                std::hint::black_box(v.value().len());
                n += 1;
            }
        }
        n
    }
    fn evict_before(&mut self, before: u64) {
        let mut tx = self.db.begin_write().unwrap();
        tx.set_durability(redb::Durability::Immediate).unwrap();
        {
            let mut rt = tx.open_table(R_RECORDS).unwrap();
            let mut ct = tx.open_table(R_CAM_TIME).unwrap();
            let mut tt = tx.open_table(R_TRACK).unwrap();
            let mut cam_keys = Vec::new();
            let mut track_keys = Vec::new();
            for e in rt.extract_from_if(..before, |_, _| true).unwrap() {
                let (k, v) = e.unwrap();
                let off = k.value();
                let (cam, time, tracks) = decode_header(v.value());
                cam_keys.push((cam, time, off));
                for t in tracks {
                    track_keys.push((t, off));
                }
            }
            cam_keys.sort_unstable();
            track_keys.sort_unstable();
            for k in cam_keys {
                ct.remove(k).unwrap();
            }
            for k in track_keys {
                tt.remove(k).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    fn count(&self) -> u64 {
        use redb::ReadableTableMetadata;
        let tx = self.db.begin_read().unwrap();
        tx.open_table(R_RECORDS).unwrap().len().unwrap()
    }
    fn integrity(&mut self) -> String {
        match self.db.check_integrity() {
            Ok(true) => "ok".into(),
            Ok(false) => "repaired".into(),
            Err(e) => format!("error: {e}"),
        }
    }
    fn compact(&mut self) -> &'static str {
        while self.db.compact().unwrap() {}
        "compact()"
    }
}

// ---- fjall

struct Fjall {
    db: fjall::Database,
    records: fjall::Keyspace,
    cam_time: fjall::Keyspace,
    track: fjall::Keyspace,
}

fn be(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}
fn cam_time_key(cam: u8, time: u64, off: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = cam;
    k[1..9].copy_from_slice(&be(time));
    k[9..].copy_from_slice(&be(off));
    k
}
fn track_key(track: u64, off: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&be(track));
    k[8..].copy_from_slice(&be(off));
    k
}

impl Fjall {
    fn open(dir: &Path) -> Self {
        let db = fjall::Database::builder(dir.join("log.fjall")).open().unwrap();
        let records = db.keyspace("records", fjall::KeyspaceCreateOptions::default).unwrap();
        let cam_time = db.keyspace("camera_time", fjall::KeyspaceCreateOptions::default).unwrap();
        let track = db.keyspace("track", fjall::KeyspaceCreateOptions::default).unwrap();
        Fjall { db, records, cam_time, track }
    }
}

impl Store for Fjall {
    fn append(&mut self, recs: &[Rec]) {
        let mut b = self.db.batch().durability(Some(fjall::PersistMode::SyncAll));
        for r in recs {
            b.insert(&self.records, be(r.offset), r.payload.as_slice());
            b.insert(&self.cam_time, cam_time_key(r.camera, r.time_ns, r.offset), b"".as_slice());
            for t in &r.tracks {
                b.insert(&self.track, track_key(*t, r.offset), b"".as_slice());
            }
        }
        b.commit().unwrap();
    }
    fn last_offset(&self) -> Option<u64> {
        self.records
            .last_key_value()
            .map(|g| u64::from_be_bytes(g.key().unwrap().as_ref().try_into().unwrap()))
    }
    fn first_offset(&self) -> Option<u64> {
        self.records
            .first_key_value()
            .map(|g| u64::from_be_bytes(g.key().unwrap().as_ref().try_into().unwrap()))
    }
    fn read_page(&self, from: u64, limit: usize) -> (usize, u64, Option<u64>) {
        let (mut n, mut bytes, mut last) = (0, 0u64, None);
        for g in self.records.range(be(from)..).take(limit) {
            let (k, v) = g.into_inner().unwrap();
            bytes += v.len() as u64;
            n += 1;
            last = Some(u64::from_be_bytes(k.as_ref().try_into().unwrap()));
        }
        (n, bytes, last)
    }
    fn query_track(&self, track: u64) -> usize {
        let mut n = 0;
        for g in self.track.prefix(be(track)) {
            let k = g.key().unwrap();
            let off = u64::from_be_bytes(k[8..16].try_into().unwrap());
            if let Some(v) = self.records.get(be(off)).unwrap() {
                std::hint::black_box(v.len());
                n += 1;
            }
        }
        n
    }
    fn query_time(&self, camera: u8, t0: u64, t1: u64) -> usize {
        let mut n = 0;
        for g in self.cam_time.range(cam_time_key(camera, t0, 0)..=cam_time_key(camera, t1, u64::MAX)) {
            let k = g.key().unwrap();
            let off = u64::from_be_bytes(k[9..17].try_into().unwrap());
            if let Some(v) = self.records.get(be(off)).unwrap() {
                std::hint::black_box(v.len());
                n += 1;
            }
        }
        n
    }
    fn evict_before(&mut self, before: u64) {
        // An LSM deletes by writing tombstones; index keys are rebuilt from the payloads.
        let mut b = self.db.batch().durability(Some(fjall::PersistMode::SyncAll));
        for g in self.records.range(..be(before)) {
            let (k, v) = g.into_inner().unwrap();
            let off = u64::from_be_bytes(k.as_ref().try_into().unwrap());
            let (cam, time, tracks) = decode_header(&v);
            b.remove(&self.records, k);
            b.remove(&self.cam_time, cam_time_key(cam, time, off));
            for t in tracks {
                b.remove(&self.track, track_key(t, off));
            }
        }
        b.commit().unwrap();
    }
    fn count(&self) -> u64 {
        self.records.len().unwrap() as u64
    }
    fn integrity(&mut self) -> String {
        "n/a (no checker; opened)".into()
    }
    fn settle(&mut self) {
        for ks in [&self.records, &self.cam_time, &self.track] {
            ks.rotate_memtable_and_wait().unwrap();
        }
    }
    fn compact(&mut self) -> &'static str {
        for ks in [&self.records, &self.cam_time, &self.track] {
            ks.rotate_memtable_and_wait().unwrap();
            ks.major_compact().unwrap();
        }
        "major_compact()"
    }
}

// ---------------------------------------------------------------- helpers

/// (apparent bytes, allocated bytes) of every file under `dir`.
fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut a, mut b) = (0, 0);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                let (x, y) = disk_usage(&e.path());
                a += x;
                b += y;
            } else {
                a += m.len();
                b += m.blocks() * 512;
            }
        }
    }
    (a, b)
}

/// (bytes this process caused to be written to storage, CPU seconds of this process).
fn io_cpu() -> (u64, f64) {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let wb = io
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = &stat[stat.rfind(')').map(|i| i + 2).unwrap_or(0)..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the command name.
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    (wb, ticks as f64 / 100.0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

struct AppendStats {
    records: u64,
    payload_bytes: u64,
    secs: f64,
    commits: usize,
    commit_ms: Vec<f64>,
    batch_sizes: Vec<f64>,
}

/// Producer thread -> bounded hand-over -> writer that commits what it has every 100 ms.
/// The producer runs flat out, so this finds the max sustainable rate with group commit.
/// `on_commit` is called after each durable commit with the last committed offset.
fn group_commit_run(
    store: &mut dyn Store,
    mut gen: Gen,
    n: u64,
    mut on_commit: impl FnMut(u64),
) -> AppendStats {
    let (tx, rx) = mpsc::sync_channel::<Rec>(100_000);
    let producer = std::thread::spawn(move || {
        for _ in 0..n {
            if tx.send(gen.next()).is_err() {
                return;
            }
        }
    });
    let start = Instant::now();
    let mut st = AppendStats {
        records: 0,
        payload_bytes: 0,
        secs: 0.0,
        commits: 0,
        commit_ms: vec![],
        batch_sizes: vec![],
    };
    let mut batch: Vec<Rec> = Vec::new();
    let mut last_commit = Instant::now();
    let mut done = false;
    while !done {
        let deadline = last_commit + COMMIT_INTERVAL;
        loop {
            let now = Instant::now();
            if now >= deadline {
                // Late (the previous commit took long): take what is already waiting.
                while let Ok(r) = rx.try_recv() {
                    batch.push(r);
                    if batch.len() >= 200_000 {
                        break;
                    }
                }
                break;
            }
            match rx.recv_timeout(deadline - now) {
                Ok(r) => batch.push(r),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    done = true;
                    break;
                }
            }
        }
        last_commit = Instant::now();
        if !batch.is_empty() {
            let t = Instant::now();
            store.append(&batch);
            st.commit_ms.push(t.elapsed().as_secs_f64() * 1e3);
            st.commits += 1;
            st.batch_sizes.push(batch.len() as f64);
            st.records += batch.len() as u64;
            st.payload_bytes += batch.iter().map(|r| r.payload.len() as u64).sum::<u64>();
            on_commit(batch.last().unwrap().offset);
            batch.clear();
        }
    }
    st.secs = start.elapsed().as_secs_f64();
    producer.join().unwrap();
    st
}

// ---------------------------------------------------------------- crash writer (child)

fn crash_writer(kind: Kind, dir: &Path) {
    let mut store = open_store(kind, dir);
    let start = store.last_offset().map(|o| o + 1).unwrap_or(0);
    let gen = Gen::new(start ^ 0x5eed, start);
    let stdout = std::io::stdout();
    println!("READY {start}");
    stdout.lock().flush().unwrap();
    group_commit_run(store.as_mut(), gen, u64::MAX / 2, |off| {
        let mut o = stdout.lock();
        writeln!(o, "C {off}").unwrap();
        o.flush().unwrap();
    });
}

// ---------------------------------------------------------------- main

#[derive(Default)]
struct Row {
    store: String,
    gc_rate: f64,
    gc_mbs: f64,
    gc_commit_p50: f64,
    gc_commit_p99: f64,
    gc_commit_max: f64,
    gc_batch_p50: f64,
    single_rate: f64,
    single_p50_ms: f64,
    close_s: f64,
    reopen_ms: f64,
    read_rate: f64,
    read_mbs: f64,
    bytes_per_rec: f64,
    amp: f64,
    gb_cam_day: f64,
    q_track_ms: f64,
    q_track_rows: f64,
    q_time_ms: f64,
    q_time_rows: f64,
    bulk_wbytes: f64,
    paced_ms: f64,
    paced_cpu_ms: f64,
    paced_wbytes: f64,
    evict_s: f64,
    size_before: u64,
    size_after_evict: u64,
    size_after_reappend: u64,
    earliest_ms: f64,
    compact_label: String,
    compact_s: f64,
    size_after_compact: u64,
    crash: Vec<String>,
    crash_summary: String,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() >= 4 && args[1] == "--crash-writer" {
        crash_writer(Kind::parse(&args[2]), Path::new(&args[3]));
        return;
    }
    let mut records: u64 = 2_000_000;
    let mut stores = "sqlite-full,sqlite-normal,redb,fjall".to_string();
    let mut base = PathBuf::from("/tmp/log-stores-bench");
    let mut crash_runs = 5;
    let mut single_secs = 3.0;
    let mut i = 1;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--records" => records = v.parse().unwrap(),
            "--stores" => stores = v,
            "--dir" => base = PathBuf::from(v),
            "--crash-runs" => crash_runs = v.parse().unwrap(),
            "--single-secs" => single_secs = v.parse().unwrap(),
            a => panic!("unknown argument {a}"),
        }
        i += 2;
    }
    let kinds: Vec<Kind> = stores.split(',').map(Kind::parse).collect();
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let total = Instant::now();
    let mut rows = Vec::new();
    eprintln!("records {records}, stores {stores}, dir {}", base.display());

    for &kind in &kinds {
        let mut row = Row { store: kind.name().into(), ..Default::default() };
        let dir = base.join(kind.name());
        eprintln!("== {} ==", kind.name());

        // 1. append with group commit every 100 ms, flat out.
        let (bw0, _) = io_cpu();
        let mut store = open_store(kind, &dir.join("main"));
        // Remember some track ids and times to query later (same for every store: same seed).
        let st = group_commit_run(store.as_mut(), Gen::new(42, 0), records, |_| {});
        row.gc_rate = st.records as f64 / st.secs;
        row.gc_mbs = st.payload_bytes as f64 / st.secs / 1e6;
        let mut c = st.commit_ms.clone();
        row.gc_commit_p50 = pct(&mut c, 0.5);
        row.gc_commit_p99 = pct(&mut c, 0.99);
        row.gc_commit_max = pct(&mut c, 1.0);
        let mut b = st.batch_sizes.clone();
        row.gc_batch_p50 = pct(&mut b, 0.5);
        let payload_bytes = st.payload_bytes;
        eprintln!(
            "append: {:.0} rec/s, {:.1} MB/s, {} commits, commit p50 {:.1} ms p99 {:.1} max {:.1}, batch p50 {:.0}",
            row.gc_rate, row.gc_mbs, st.commits, row.gc_commit_p50, row.gc_commit_p99, row.gc_commit_max, row.gc_batch_p50
        );
        store.settle();
        let t = Instant::now();
        drop(store);
        row.close_s = t.elapsed().as_secs_f64();
        row.bulk_wbytes = (io_cpu().0 - bw0) as f64 / records as f64;

        // 2. space.
        let (_app, alloc) = disk_usage(&dir.join("main"));
        row.size_before = alloc;
        row.bytes_per_rec = alloc as f64 / records as f64;
        row.amp = alloc as f64 / payload_bytes as f64;
        row.gb_cam_day = row.bytes_per_rec * 5.0 * 86_400.0 / 1e9;
        eprintln!(
            "disk {:.1} MB ({:.0} B/record, payload avg {:.0} B, amplification {:.2}x), close {:.2}s, written {:.0} B/record",
            mb(alloc),
            row.bytes_per_rec,
            payload_bytes as f64 / records as f64,
            row.amp,
            row.close_s,
            row.bulk_wbytes
        );

        // 3. reopen and catch-up read from offset 0 in pages of 1000 (one read txn each).
        let t = Instant::now();
        let mut store = open_store(kind, &dir.join("main"));
        row.reopen_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let (mut from, mut n, mut bytes) = (0u64, 0u64, 0u64);
        loop {
            let (k, by, last) = store.read_page(from, 1000);
            if k == 0 {
                break;
            }
            n += k as u64;
            bytes += by;
            from = last.unwrap() + 1;
        }
        let s = t.elapsed().as_secs_f64();
        assert_eq!(n, records, "catch-up read count");
        row.read_rate = n as f64 / s;
        row.read_mbs = bytes as f64 / s / 1e6;
        eprintln!("reopen {:.0} ms; catch-up read {:.0} rec/s, {:.1} MB/s", row.reopen_ms, row.read_rate, row.read_mbs);

        // 4. queries: 30 tracks and 30 one-minute windows of one camera, from the middle.
        let mut g = Gen::new(42, 0);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut samples = Vec::new();
        for off in 0..records {
            let r = g.next();
            if off >= records / 2 && samples.len() < 30 && rng.gen_bool(0.001) {
                samples.push(r);
            }
        }
        let (mut lt, mut lw, mut nt, mut nw) = (vec![], vec![], 0usize, 0usize);
        for r in &samples {
            let t = Instant::now();
            nt += store.query_track(r.tracks[0]);
            lt.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            nw += store.query_time(r.camera, r.time_ns, r.time_ns + 60_000_000_000);
            lw.push(t.elapsed().as_secs_f64() * 1e3);
        }
        row.q_track_ms = pct(&mut lt, 0.5);
        row.q_time_ms = pct(&mut lw, 0.5);
        row.q_track_rows = nt as f64 / samples.len() as f64;
        row.q_time_rows = nw as f64 / samples.len() as f64;
        eprintln!(
            "query track p50 {:.2} ms ({:.0} rows), 60 s window p50 {:.2} ms ({:.0} rows)",
            row.q_track_ms, row.q_track_rows, row.q_time_ms, row.q_time_rows
        );

        // 4b. the real load: 1000 commits of 8 records (16 cameras x 5 records/s, 100 ms
        // interval = 100 s of node time, run back to back), on the full store: wall time and
        // CPU per commit and bytes written to storage per record (flash wear).
        let paced_commits = 1000u64;
        let mut g = Gen::new(45, records);
        let (w0, c0) = io_cpu();
        let mut lat = vec![];
        for _ in 0..paced_commits {
            let batch: Vec<Rec> = (0..8).map(|_| g.next()).collect();
            let t = Instant::now();
            store.append(&batch);
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let (w1, c1) = io_cpu();
        row.paced_ms = pct(&mut lat, 0.5);
        row.paced_cpu_ms = (c1 - c0) * 1e3 / paced_commits as f64;
        row.paced_wbytes = (w1 - w0) as f64 / (paced_commits * 8) as f64;
        let paced_n = paced_commits * 8;
        eprintln!(
            "busy-node load (8 records/commit): commit p50 {:.2} ms, CPU {:.2} ms/commit, {:.0} bytes written/record",
            row.paced_ms, row.paced_cpu_ms, row.paced_wbytes
        );

        // 5. evict the oldest 10 % in one durable transaction; read EARLIEST; re-append 10 %.
        let cut = records / 10;
        let t = Instant::now();
        store.evict_before(cut);
        row.evict_s = t.elapsed().as_secs_f64();
        row.size_after_evict = disk_usage(&dir.join("main")).1;
        let t = Instant::now();
        let first = store.first_offset();
        let (k, _, _) = store.read_page(0, 1000);
        row.earliest_ms = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(first, Some(cut));
        assert_eq!(k, 1000);
        let _ = group_commit_run(store.as_mut(), Gen::new(43, records + paced_n), cut, |_| {});
        assert_eq!(store.count(), records + paced_n);
        store.settle();
        drop(store);
        row.size_after_reappend = disk_usage(&dir.join("main")).1;
        let mut store = open_store(kind, &dir.join("main"));
        eprintln!(
            "evict 10%: {:.2} s; size {:.1} -> {:.1} MB after evict -> {:.1} MB after re-append; EARLIEST first page {:.1} ms",
            row.evict_s,
            mb(row.size_before),
            mb(row.size_after_evict),
            mb(row.size_after_reappend),
            row.earliest_ms
        );
        let t = Instant::now();
        row.compact_label = store.compact().into();
        row.compact_s = t.elapsed().as_secs_f64();
        drop(store);
        row.size_after_compact = disk_usage(&dir.join("main")).1;
        eprintln!("{} {:.1} s -> {:.1} MB", row.compact_label, row.compact_s, mb(row.size_after_compact));
        std::fs::remove_dir_all(dir.join("main")).unwrap();

        // 6. one durable commit per record, for reference.
        let mut store = open_store(kind, &dir.join("single"));
        let mut g = Gen::new(44, 0);
        let mut lat = vec![];
        let t = Instant::now();
        while t.elapsed().as_secs_f64() < single_secs {
            let r = g.next();
            let t1 = Instant::now();
            store.append(std::slice::from_ref(&r));
            lat.push(t1.elapsed().as_secs_f64() * 1e3);
        }
        row.single_rate = lat.len() as f64 / t.elapsed().as_secs_f64();
        row.single_p50_ms = pct(&mut lat, 0.5);
        drop(store);
        std::fs::remove_dir_all(dir.join("single")).unwrap();
        eprintln!("one commit per record: {:.0} rec/s (p50 {:.2} ms)", row.single_rate, row.single_p50_ms);

        // 7. kill -9 a writer child mid-append, reopen, check.
        let cdir = dir.join("crash");
        let exe = std::env::current_exe().unwrap();
        let mut ok_runs = 0;
        let mut beyond_all = vec![];
        for run in 0..crash_runs {
            let mut child = std::process::Command::new(&exe)
                .args(["--crash-writer", kind.name(), cdir.to_str().unwrap()])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let out = child.stdout.take().unwrap();
            let (ltx, lrx) = mpsc::channel::<String>();
            let reader = std::thread::spawn(move || {
                for l in BufReader::new(out).lines() {
                    let Ok(l) = l else { break };
                    if ltx.send(l).is_err() {
                        break;
                    }
                }
            });
            // Wait for READY, then kill at a random moment 0.3-2.0 s into the appends.
            let ready = lrx.recv_timeout(Duration::from_secs(60)).unwrap();
            let wait = rng.gen_range(300..2000);
            std::thread::sleep(Duration::from_millis(wait));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            reader.join().unwrap();
            let mut last_logged: Option<u64> = None;
            for l in lrx.try_iter() {
                if let Some(v) = l.strip_prefix("C ") {
                    last_logged = Some(v.parse().unwrap());
                }
            }
            let t = Instant::now();
            let res = std::panic::catch_unwind(|| {
                let mut s = open_store(kind, &cdir);
                let open_ms = t.elapsed().as_secs_f64() * 1e3;
                let integ = s.integrity();
                (open_ms, integ, s.count(), s.first_offset(), s.last_offset())
            });
            let line = match res {
                Ok((open_ms, integ, count, first, last)) => {
                    let last = last.map(|x| x as i64).unwrap_or(-1);
                    let ll = last_logged.map(|x| x as i64).unwrap_or(-1);
                    let contiguous = count as i64 == last + 1 && first.unwrap_or(0) == 0;
                    let lost = (ll - last).max(0);
                    let beyond = (last - ll).max(0);
                    beyond_all.push(beyond as f64);
                    if lost == 0 && contiguous && (integ == "ok" || integ.starts_with("n/a")) {
                        ok_runs += 1;
                    }
                    format!(
                        "run {run}: {ready}, killed after {wait} ms; last logged commit {ll}; reopened in {open_ms:.0} ms, integrity {integ}, \
                         {count} records, last {last}, contiguous {contiguous}, committed lost {lost}, beyond logged {beyond}"
                    )
                }
                Err(_) => format!("run {run}: killed after {wait} ms; REOPEN FAILED"),
            };
            eprintln!("crash {line}");
            row.crash.push(line);
        }
        let mut ba = beyond_all.clone();
        row.crash_summary = format!(
            "{ok_runs}/{crash_runs} clean, beyond last logged: max {:.0}",
            pct(&mut ba, 1.0)
        );
        let _ = std::fs::remove_dir_all(&cdir);
        eprintln!("crash: {}", row.crash_summary);
        rows.push(row);
    }

    // ------------------------------------------------------------ report
    let busy_rate = NODE_RATE;
    let busy_mbs = NODE_RATE * 170.0 / 1e6;
    println!("\nRecords: {records}; total run {:.0} s", total.elapsed().as_secs_f64());
    println!("16 busy cameras: {busy_rate:.0} records/s, {busy_mbs:.4} MB/s\n");
    let cols = [
        "store",
        "group commit rec/s (x 16 cams)",
        "MB/s",
        "commit ms p50/p99/max",
        "batch p50",
        "written B/record (bulk)",
        "1 commit/rec: rec/s (p50 ms)",
        "catch-up read rec/s (MB/s)",
        "B/record on disk (x payload)",
        "GB/camera-day",
        "reopen ms",
        "query track ms (rows)",
        "query 60 s ms (rows)",
        "busy load: commit ms, CPU ms/commit, written B/record",
        "evict 10 % s",
        "MB before / after evict / after re-append",
        "EARLIEST page ms",
        "compaction: s -> MB",
        "kill -9",
    ];
    println!("| {} |", cols.join(" | "));
    println!("|{}", "---|".repeat(cols.len()));
    for r in &rows {
        println!(
            "| {} | {:.0} ({:.0}x) | {:.1} | {:.0}/{:.0}/{:.0} | {:.0} | {:.0} | {:.0} ({:.2}) | {:.0} ({:.1}) | {:.0} ({:.2}x) | {:.3} | {:.0} | {:.2} ({:.0}) | {:.2} ({:.0}) | {:.1}, {:.2}, {:.0} | {:.2} | {:.0} / {:.0} / {:.0} | {:.1} | {} {:.1} -> {:.0} | {} |",
            r.store,
            r.gc_rate,
            r.gc_rate / busy_rate,
            r.gc_mbs,
            r.gc_commit_p50,
            r.gc_commit_p99,
            r.gc_commit_max,
            r.gc_batch_p50,
            r.bulk_wbytes,
            r.single_rate,
            r.single_p50_ms,
            r.read_rate,
            r.read_mbs,
            r.bytes_per_rec,
            r.amp,
            r.gb_cam_day,
            r.reopen_ms,
            r.q_track_ms,
            r.q_track_rows,
            r.q_time_ms,
            r.q_time_rows,
            r.paced_ms,
            r.paced_cpu_ms,
            r.paced_wbytes,
            r.evict_s,
            mb(r.size_before),
            mb(r.size_after_evict),
            mb(r.size_after_reappend),
            r.earliest_ms,
            r.compact_label,
            r.compact_s,
            mb(r.size_after_compact),
            r.crash_summary,
        );
    }
    println!("\nkill -9 runs:");
    for r in &rows {
        for l in &r.crash {
            println!("- {}: {}", r.store, l);
        }
    }
}
