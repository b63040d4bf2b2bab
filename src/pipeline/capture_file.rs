//! Optional capture of exchange records to a local JSON-lines file (`capture.file`):
//! the input `semtap replay` reads. Opt-in because records hold prompt and answer text.
//! Bounded: a queue of 1024 records (dropped and counted when full) and a size cap per
//! file, rotating to `FILE.1` … `FILE.<keep>`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;

use parking_lot::Mutex;

use super::RecordSink;
use crate::config::CaptureFileConfig;
use crate::record::ExchangeRecord;

const QUEUE: usize = 1024;

enum Msg {
    Record(Arc<ExchangeRecord>),
    Flush(SyncSender<()>),
}

/// Writes records to a rotated JSON-lines file on a thread of its own.
pub struct CaptureFileSink {
    tx: SyncSender<Msg>,
    dropped: AtomicU64,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl CaptureFileSink {
    /// Opens (appends to) the file and starts the writer thread.
    pub fn start(cfg: &CaptureFileConfig) -> std::io::Result<Arc<CaptureFileSink>> {
        if let Some(dir) = cfg.path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)?;
            }
        }
        let file = open_append(&cfg.path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let writer = Writer {
            path: cfg.path.clone(),
            out: BufWriter::new(file),
            size,
            max_bytes: cfg.max_bytes,
            keep: cfg.keep,
        };
        let worker = std::thread::Builder::new()
            .name("semtap-capture".into())
            .spawn(move || {
                crate::priority::background_thread();
                writer.run(rx)
            })?;
        Ok(Arc::new(CaptureFileSink {
            tx,
            dropped: AtomicU64::new(0),
            worker: Mutex::new(Some(worker)),
        }))
    }

    /// Records dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl RecordSink for CaptureFileSink {
    fn accept(&self, record: &Arc<ExchangeRecord>) {
        if self.tx.try_send(Msg::Record(record.clone())).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(std::time::Duration::from_secs(5));
        }
        let _ = &self.worker;
    }
}

struct Writer {
    path: PathBuf,
    out: BufWriter<File>,
    size: u64,
    max_bytes: u64,
    keep: usize,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            match msg {
                Msg::Record(r) => {
                    if let Err(e) = self.write(&r) {
                        tracing::warn!(error = %e, path = %self.path.display(), "capture file write failed");
                    }
                }
                Msg::Flush(done) => {
                    let _ = self.out.flush();
                    let _ = done.send(());
                }
            }
            let _ = self.out.flush();
        }
        let _ = self.out.flush();
    }

    fn write(&mut self, r: &ExchangeRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        if self.keep == 0 {
            let f = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&self.path)?;
            self.out = BufWriter::new(f);
            self.size = 0;
            return Ok(());
        }
        for i in (1..self.keep).rev() {
            let from = numbered(&self.path, i);
            if from.exists() {
                std::fs::rename(&from, numbered(&self.path, i + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(&self.path, 1))?;
        self.out = BufWriter::new(open_append(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

fn numbered(path: &Path, i: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}
