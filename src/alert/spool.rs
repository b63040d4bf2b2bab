//! The durable spool: one receiver's undelivered events, in an append-only journal of JSON
//! lines (`spool.jsonl`). An event is appended and fsync'd before it counts as accepted; a
//! delivered (or dropped) event gets a `done` line. The journal is rewritten (to a temporary
//! file, fsync'd, renamed) when opened and when `done` lines outnumber live events, so it stays
//! small. A torn last line after a crash is skipped, logged and cleaned up at the next open.
//!
//! Bounded: at most `max_events` undelivered events; a new one beyond that drops the oldest,
//! which the caller counts and logs.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A spool failure (the disk, not the data).
#[derive(Debug, thiserror::Error)]
#[error("webhook spool {path}: {source}")]
pub struct SpoolError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

/// One undelivered event.
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolEntry {
    /// Position in the spool (delivery order).
    pub seq: u64,
    /// The event's id.
    pub id: String,
    /// When the incident event happened (unix ms), for the delivery-latency metric.
    pub ts_ms: u64,
    /// The exact JSON body sent on every attempt.
    pub body: Bytes,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Line {
    Add {
        seq: u64,
        id: String,
        ts_ms: u64,
        body: String,
    },
    Done {
        seq: u64,
    },
}

/// What opening found.
#[derive(Debug, Default)]
pub struct OpenReport {
    /// Undelivered events recovered from disk.
    pub recovered: usize,
    /// Lines that could not be read (a torn write at a crash) and were skipped.
    pub skipped_lines: usize,
    /// Oldest events dropped because more were on disk than `max_events` allows.
    pub dropped: Vec<SpoolEntry>,
}

/// A receiver's spool.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    entries: BTreeMap<u64, SpoolEntry>,
    next_seq: u64,
    max_events: usize,
    dead_lines: usize,
}

fn err(path: &Path) -> impl Fn(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError {
        path: path.display().to_string(),
        source,
    }
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, recovering undelivered events.
    pub fn open(dir: &Path, max_events: usize) -> Result<(Spool, OpenReport), SpoolError> {
        std::fs::create_dir_all(dir).map_err(err(dir))?;
        let path = dir.join("spool.jsonl");
        let mut entries = BTreeMap::new();
        let mut report = OpenReport::default();
        let mut next_seq = 1u64;
        match File::open(&path) {
            Ok(f) => {
                for line in BufReader::new(f).split(b'\n') {
                    let line = line.map_err(err(&path))?;
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match serde_json::from_slice::<Line>(&line) {
                        Ok(Line::Add {
                            seq,
                            id,
                            ts_ms,
                            body,
                        }) => {
                            next_seq = next_seq.max(seq + 1);
                            entries.insert(
                                seq,
                                SpoolEntry {
                                    seq,
                                    id,
                                    ts_ms,
                                    body: Bytes::from(body),
                                },
                            );
                        }
                        Ok(Line::Done { seq }) => {
                            next_seq = next_seq.max(seq + 1);
                            entries.remove(&seq);
                        }
                        Err(_) => report.skipped_lines += 1,
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(&path)(e)),
        }
        if report.skipped_lines > 0 {
            tracing::warn!(
                path = %path.display(),
                lines = report.skipped_lines,
                "skipped unreadable spool lines (a write torn by a crash)"
            );
        }
        let max_events = max_events.max(1);
        while entries.len() > max_events {
            if let Some((_, e)) = entries.pop_first() {
                report.dropped.push(e);
            }
        }
        report.recovered = entries.len();
        // Rewrite a clean journal: no torn tail to append after, no dead lines.
        let file = write_journal(dir, &path, &entries)?;
        Ok((
            Spool {
                dir: dir.to_path_buf(),
                path,
                file,
                entries,
                next_seq,
                max_events,
                dead_lines: 0,
            },
            report,
        ))
    }

    /// Appends an event and fsyncs. Returns the oldest events dropped to make room. On a disk
    /// error the event is still kept in memory (delivered while the process lives).
    pub fn push(
        &mut self,
        id: &str,
        ts_ms: u64,
        body: Bytes,
    ) -> (Vec<SpoolEntry>, Result<(), SpoolError>) {
        let mut dropped = Vec::new();
        let mut result = Ok(());
        while self.entries.len() >= self.max_events {
            let Some((seq, e)) = self.entries.pop_first() else {
                break;
            };
            if let Err(e) = self.append(&Line::Done { seq }, false) {
                result = Err(e);
            }
            dropped.push(e);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let line = Line::Add {
            seq,
            id: id.to_string(),
            ts_ms,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        if let Err(e) = self.append(&line, true) {
            result = Err(e);
        }
        self.entries.insert(
            seq,
            SpoolEntry {
                seq,
                id: id.to_string(),
                ts_ms,
                body,
            },
        );
        (dropped, result)
    }

    /// Marks `seq` delivered (or given up). Not fsync'd: losing this line in a crash means one
    /// more delivery of an event the receiver already has, which at-least-once allows.
    pub fn remove(&mut self, seq: u64) -> Result<(), SpoolError> {
        if self.entries.remove(&seq).is_none() {
            return Ok(());
        }
        self.append(&Line::Done { seq }, false)?;
        if self.dead_lines > 1024 && self.dead_lines > 2 * self.entries.len() {
            self.file = write_journal(&self.dir, &self.path, &self.entries)?;
            self.dead_lines = 0;
        }
        Ok(())
    }

    /// The oldest undelivered event.
    pub fn front(&self) -> Option<SpoolEntry> {
        self.entries.values().next().cloned()
    }

    /// Undelivered events.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Event ids waiting, oldest first.
    pub fn ids(&self) -> Vec<String> {
        self.entries.values().map(|e| e.id.clone()).collect()
    }

    fn append(&mut self, line: &Line, sync: bool) -> Result<(), SpoolError> {
        let mut bytes = serde_json::to_vec(line).map_err(|e| err(&self.path)(e.into()))?;
        bytes.push(b'\n');
        self.file.write_all(&bytes).map_err(err(&self.path))?;
        if sync {
            self.file.sync_data().map_err(err(&self.path))?;
        }
        if matches!(line, Line::Done { .. }) {
            // The `done` line and the `add` line it retires.
            self.dead_lines += 2;
        }
        Ok(())
    }
}

/// Writes `entries` as a fresh journal via a temporary file and returns it opened for append.
fn write_journal(
    dir: &Path,
    path: &Path,
    entries: &BTreeMap<u64, SpoolEntry>,
) -> Result<File, SpoolError> {
    let tmp = dir.join("spool.jsonl.tmp");
    {
        let mut f = std::io::BufWriter::new(File::create(&tmp).map_err(err(&tmp))?);
        for e in entries.values() {
            let line = Line::Add {
                seq: e.seq,
                id: e.id.clone(),
                ts_ms: e.ts_ms,
                body: String::from_utf8_lossy(&e.body).into_owned(),
            };
            let mut bytes = serde_json::to_vec(&line).map_err(|e| err(&tmp)(e.into()))?;
            bytes.push(b'\n');
            f.write_all(&bytes).map_err(err(&tmp))?;
        }
        let f = f.into_inner().map_err(|e| err(&tmp)(e.into_error()))?;
        f.sync_all().map_err(err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(err(path))?;
    if let Ok(d) = File::open(dir) {
        // Makes the rename durable; not all platforms allow fsync on a directory.
        let _ = d.sync_all();
    }
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(n: u32) -> Bytes {
        Bytes::from(format!(
            "{{\"id\":\"e{n}\",\"text\":\"caf\u{e9} \\\"q\\\"\"}}"
        ))
    }

    #[test]
    fn survives_reopen_in_order_and_forgets_delivered() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let (mut s, r) = Spool::open(dir.path(), 10).expect("open");
            assert_eq!(r.recovered, 0);
            for n in 1..=3 {
                let (dropped, res) = s.push(&format!("e{n}"), u64::from(n), body(n));
                assert!(dropped.is_empty() && res.is_ok());
            }
            let first = s.front().map(|e| e.seq).unwrap_or(0);
            s.remove(first).expect("remove");
        }
        let (mut s, r) = Spool::open(dir.path(), 10).expect("reopen");
        assert_eq!(r.recovered, 2);
        assert_eq!(s.ids(), vec!["e2", "e3"]);
        assert_eq!(s.front().map(|e| e.body), Some(body(2)), "body byte-exact");
        // Sequence numbers keep growing after a reopen, so order holds.
        s.push("e4", 4, body(4)).1.expect("push");
        assert_eq!(s.ids(), vec!["e2", "e3", "e4"]);
    }

    #[test]
    fn bounded_oldest_dropped_and_reported() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut s, _) = Spool::open(dir.path(), 3).expect("open");
        let mut dropped = Vec::new();
        for n in 1..=5 {
            dropped.extend(s.push(&format!("e{n}"), 0, body(n)).0);
        }
        assert_eq!(s.len(), 3);
        assert_eq!(s.ids(), vec!["e3", "e4", "e5"]);
        assert_eq!(
            dropped.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            vec!["e1", "e2"]
        );
        drop(s);
        // Reopening with a smaller bound drops (and reports) the oldest too.
        let (s, r) = Spool::open(dir.path(), 2).expect("reopen");
        assert_eq!(s.ids(), vec!["e4", "e5"]);
        assert_eq!(r.dropped.len(), 1);
        assert_eq!(r.dropped[0].id, "e3");
    }

    #[test]
    fn torn_last_line_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let (mut s, _) = Spool::open(dir.path(), 10).expect("open");
            s.push("e1", 0, body(1)).1.expect("push");
            s.push("e2", 0, body(2)).1.expect("push");
        }
        let path = dir.path().join("spool.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"op\":\"add\",\"seq\":3,\"id\":\"e3\",\"ts_m")
            .expect("torn write");
        drop(f);
        let (mut s, r) = Spool::open(dir.path(), 10).expect("reopen after a crash");
        assert_eq!(r.skipped_lines, 1);
        assert_eq!(s.ids(), vec!["e1", "e2"]);
        // The journal was cleaned: appending after it and reopening reads every line.
        s.push("e4", 0, body(4)).1.expect("push");
        drop(s);
        let (s, r) = Spool::open(dir.path(), 10).expect("reopen");
        assert_eq!(r.skipped_lines, 0);
        assert_eq!(s.ids(), vec!["e1", "e2", "e4"]);
    }

    #[test]
    fn journal_is_compacted() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut s, _) = Spool::open(dir.path(), 10_000).expect("open");
        for n in 0..1200 {
            s.push(&format!("e{n}"), 0, body(n)).1.expect("push");
            let seq = s.front().map(|e| e.seq).unwrap_or(0);
            s.remove(seq).expect("remove");
        }
        let len = std::fs::metadata(dir.path().join("spool.jsonl"))
            .map(|m| m.len())
            .unwrap_or(u64::MAX);
        assert!(len < 200_000, "journal grew to {len} bytes");
        assert!(s.is_empty());
    }
}
