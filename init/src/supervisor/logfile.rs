//! Service output sink: the console and the rotated per-service log files.
//!
//! All writing happens on one small dedicated thread fed by a bounded channel.
//! Console (a serial line can be slow) and disk writes then never stall the tokio
//! runtime, and the pipe readers never wait: when the channel is full they drop
//! lines and count them (see `output`), so a service is never blocked by logging.
//!
//! Files: `<log_dir>/<name>.log`, rotated before a write would take it past the
//! limit (1 MiB by default) to `<name>.log.1`, the old `.1` to `.2`, and so on up to
//! `keep` old files. A log directory that cannot be written is retried every
//! [`RETRY_OPEN`], console output continues meanwhile.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{error, warn};

/// Lines waiting for the writer thread; beyond that, readers drop lines.
const QUEUE: usize = 256;
/// How long a log file that failed to open is left alone.
const RETRY_OPEN: Duration = Duration::from_secs(10);
/// Appended to a line that was cut at the length limit.
const CUT_MARK: &[u8] = b" [cut]";

/// When to rotate a log file and how many old files to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// A file never grows past this many bytes (unless a single line is longer).
    pub limit: u64,
    /// Old files kept: `<name>.log.1` .. `<name>.log.<keep>`.
    pub keep: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            limit: 1024 * 1024,
            keep: 2,
        }
    }
}

/// Where one service's lines go.
#[derive(Debug)]
pub(crate) struct Output {
    /// `[name] `, written before each console line.
    prefix: Box<[u8]>,
    file: Option<PathBuf>,
}

impl Output {
    pub(crate) fn new(name: &str, log_dir: Option<&Path>) -> Output {
        Output {
            prefix: format!("[{name}] ").into_bytes().into(),
            file: log_dir.map(|dir| dir.join(format!("{name}.log"))),
        }
    }
}

enum Msg {
    Line {
        out: Arc<Output>,
        line: Vec<u8>,
        cut: bool,
    },
    Flush(oneshot::Sender<()>),
}

/// The sending side of the writer thread. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct LogSink {
    tx: SyncSender<Msg>,
}

impl LogSink {
    /// Starts the writer thread. If the thread cannot be created (the system is out
    /// of memory or threads), services still run, their output is dropped.
    pub(crate) fn start(console: bool, rotation: Rotation) -> LogSink {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("service-logs".into())
            .stack_size(64 * 1024)
            .spawn(move || write_loop(&rx, console, rotation));
        if let Err(err) = spawned {
            error!(%err, "cannot start the service log thread: service output is lost");
        }
        LogSink { tx }
    }

    /// Queues one line (without its newline). False if the queue is full and the
    /// line was dropped.
    pub(crate) fn line(&self, out: &Arc<Output>, line: Vec<u8>, cut: bool) -> bool {
        let msg = Msg::Line {
            out: Arc::clone(out),
            line,
            cut,
        };
        match self.tx.try_send(msg) {
            Ok(()) => true,
            // Disconnected means the writer thread died; nothing can be logged then.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// Waits (up to `limit`) until every line queued before this call is written.
    pub(crate) async fn flush(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let (tx, rx) = oneshot::channel();
        let mut msg = Msg::Flush(tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    msg = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(TrySendError::Full(_)) => return,
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, rx).await;
    }
}

fn write_loop(rx: &Receiver<Msg>, console: bool, rotation: Rotation) {
    let mut files: HashMap<PathBuf, LogFile> = HashMap::new();
    let mut buf = Vec::with_capacity(4096 + 64);
    while let Ok(msg) = rx.recv() {
        let (out, line, cut) = match msg {
            Msg::Line { out, line, cut } => (out, line, cut),
            Msg::Flush(done) => {
                // Close the files: a flush comes at shutdown, and an open
                // log file keeps /var from being unmounted. They reopen
                // lazily if more lines arrive.
                files.clear();
                let _ = done.send(());
                continue;
            }
        };
        render(&mut buf, &out.prefix, &line, cut);
        if console {
            // A console that fails to take the line has nowhere to report it.
            let _ = io::stdout().lock().write_all(&buf);
        }
        if let Some(path) = &out.file {
            files
                .entry(path.clone())
                .or_insert_with(|| LogFile::new(path.clone(), rotation))
                .append(&buf[out.prefix.len()..]);
        }
    }
}

/// `buf` = `prefix` + `line` (+ [`CUT_MARK`] if it was cut) + newline.
fn render(buf: &mut Vec<u8>, prefix: &[u8], line: &[u8], cut: bool) {
    buf.clear();
    buf.extend_from_slice(prefix);
    buf.extend_from_slice(line);
    if cut {
        buf.extend_from_slice(CUT_MARK);
    }
    buf.push(b'\n');
}

/// The name of the `n`-th old file of `path`: `<path>.<n>`.
pub(crate) fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// One service's log file, opened lazily and rotated by size.
#[derive(Debug)]
pub(crate) struct LogFile {
    path: PathBuf,
    rotation: Rotation,
    file: Option<File>,
    size: u64,
    retry_at: Option<Instant>,
}

impl LogFile {
    pub(crate) fn new(path: PathBuf, rotation: Rotation) -> LogFile {
        LogFile {
            path,
            rotation,
            file: None,
            size: 0,
            retry_at: None,
        }
    }

    /// Appends `data` (whole lines), rotating first if it would pass the limit.
    pub(crate) fn append(&mut self, data: &[u8]) {
        if self.file.is_none() && !self.open() {
            return;
        }
        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        if self.size > 0 && self.size.saturating_add(len) > self.rotation.limit {
            self.rotate();
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        match file.write_all(data) {
            Ok(()) => self.size = self.size.saturating_add(len),
            Err(err) => {
                warn!(path = %self.path.display(), %err, "cannot write service log");
                self.file = None;
                self.retry_at = Some(Instant::now() + RETRY_OPEN);
            }
        }
    }

    fn open(&mut self) -> bool {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        match self.try_open() {
            Ok((file, size)) => {
                self.file = Some(file);
                self.size = size;
                self.retry_at = None;
                true
            }
            Err(err) => {
                warn!(path = %self.path.display(), %err, "cannot open service log");
                self.retry_at = Some(Instant::now() + RETRY_OPEN);
                false
            }
        }
    }

    fn try_open(&self) -> io::Result<(File, u64)> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let size = file.metadata()?.len();
        Ok((file, size))
    }

    /// `<name>.log.(n-1)` → `.n`, …, `<name>.log` → `.1`, then a fresh `<name>.log`.
    fn rotate(&mut self) {
        self.file = None;
        for n in (1..self.rotation.keep).rev() {
            rename_if_exists(&rotated(&self.path, n), &rotated(&self.path, n + 1));
        }
        if self.rotation.keep > 0 {
            rename_if_exists(&self.path, &rotated(&self.path, 1));
        } else if let Err(err) = fs::remove_file(&self.path) {
            warn!(path = %self.path.display(), %err, "cannot truncate service log");
        }
        self.retry_at = None;
        self.open();
    }
}

fn rename_if_exists(from: &Path, to: &Path) {
    match fs::rename(from, to) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => {
            warn!(from = %from.display(), to = %to.display(), %err, "cannot rotate service log")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh, empty directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("cairn-logfile-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn renders_prefixed_lines() {
        let out = Output::new("containerd", None);
        let mut buf = Vec::new();
        render(&mut buf, &out.prefix, b"hello", false);
        assert_eq!(buf, b"[containerd] hello\n");
        render(&mut buf, &out.prefix, b"long", true);
        assert_eq!(buf, b"[containerd] long [cut]\n");
        // The file gets the line without the prefix.
        assert_eq!(&buf[out.prefix.len()..], b"long [cut]\n");
    }

    #[test]
    fn rotated_names() {
        let path = Path::new("/var/log/cairn/containerd.log");
        assert_eq!(
            rotated(path, 1),
            Path::new("/var/log/cairn/containerd.log.1")
        );
        assert_eq!(
            rotated(path, 2),
            Path::new("/var/log/cairn/containerd.log.2")
        );
    }

    #[test]
    fn output_prefix_and_path() {
        let out = Output::new("containerd", Some(Path::new("/var/log/cairn")));
        assert_eq!(&*out.prefix, b"[containerd] ");
        assert_eq!(
            out.file.as_deref(),
            Some(Path::new("/var/log/cairn/containerd.log"))
        );
        assert_eq!(Output::new("x", None).file, None);
    }

    #[test]
    fn rotates_at_the_limit_and_keeps_two() {
        let tmp = TempDir::new("rotate");
        // The directory is created on first write.
        let path = tmp.0.join("logs").join("svc.log");
        let rotation = Rotation { limit: 20, keep: 2 };
        let mut log = LogFile::new(path.clone(), rotation);

        log.append(b"aaaaaaaaa\n"); // 10 bytes
        log.append(b"bbbbbbbbb\n"); // 20: exactly at the limit, no rotation yet
        assert_eq!(read(&path), "aaaaaaaaa\nbbbbbbbbb\n");
        assert!(!rotated(&path, 1).exists());

        log.append(b"c\n"); // would pass 20: rotate first
        assert_eq!(read(&path), "c\n");
        assert_eq!(read(&rotated(&path, 1)), "aaaaaaaaa\nbbbbbbbbb\n");

        log.append(b"dddddddddddddddddd\n"); // 2 + 19 > 20
        assert_eq!(read(&path), "dddddddddddddddddd\n");
        assert_eq!(read(&rotated(&path, 1)), "c\n");
        assert_eq!(read(&rotated(&path, 2)), "aaaaaaaaa\nbbbbbbbbb\n");

        log.append(b"eeeeeeeeeeeeeeeeeeeeeeeeee\n"); // longer than the limit on its own
        assert_eq!(read(&path), "eeeeeeeeeeeeeeeeeeeeeeeeee\n");
        assert_eq!(read(&rotated(&path, 1)), "dddddddddddddddddd\n");
        assert_eq!(read(&rotated(&path, 2)), "c\n");
        assert!(!rotated(&path, 3).exists(), "only two old files are kept");
    }

    #[test]
    fn existing_file_size_counts() {
        let tmp = TempDir::new("existing");
        let path = tmp.0.join("svc.log");
        fs::write(&path, b"0123456789012345678\n").expect("seed log");
        let mut log = LogFile::new(path.clone(), Rotation { limit: 25, keep: 2 });
        log.append(b"next line\n");
        assert_eq!(read(&path), "next line\n");
        assert_eq!(read(&rotated(&path, 1)), "0123456789012345678\n");
    }

    #[test]
    fn unwritable_dir_is_skipped() {
        let tmp = TempDir::new("unwritable");
        let blocker = tmp.0.join("file");
        fs::write(&blocker, b"").expect("create file");
        // A log dir below a regular file can never be created.
        let mut log = LogFile::new(blocker.join("svc.log"), Rotation::default());
        log.append(b"lost\n");
        assert!(log.file.is_none());
        assert!(log.retry_at.is_some());
    }
}
