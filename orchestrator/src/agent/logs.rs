//! Container logs as `kubectl logs` reads them: the CRI log files
//! containerd writes (`<RFC3339Nano> <stdout|stderr> <F|P> <text>`, one
//! entry a line; `P` marks a partial line the next entries complete) turned
//! back into the container's output, with the kubelet's options: `follow`,
//! `tailLines`, `sinceSeconds`/`sinceTime`, `timestamps`, `limitBytes`.
//! Which file (`previous` or the current attempt) is the caller's choice:
//! files live at `<pod_log_dir>/<ns>_<pod>_<uid>/<container>/<restartCount>.log`.
//!
//! Partial entries are joined into one line, stamped with the time of its
//! first part, so `tailLines` and `sinceTime` count and filter what the
//! container printed rather than how the runtime split it.
//!
//! Following polls the file (every [`POLL`]): new data is sent as it comes,
//! a rotated file (another inode at the path, or a shorter one) is
//! reopened from its start, and the stream ends once the container is no
//! longer running and its last output is sent, as the kubelet's does.
//! Reading blocks, so [`stream`] runs on the blocking pool.
//!
//! Files rotated by [`logrotate`](super::logrotate) (`<file>.<time>`) are
//! read back, newest first, as far as `tailLines` (more lines than the
//! current file has) or `since` (earlier than its first line) need; a
//! plain read is the current file only, as the kubelet's.
//!
//! # Current limitations
//! - `tailLines` reads whole files (bounded by the rotation size, 10 MB).
//! - A partial line cut by a rotation reads as two lines.

use std::fs::File;
use std::io::{Read, Seek};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;
use tokio::sync::mpsc;

use crate::api::query::Query;

/// How often a followed file is checked for new data.
pub const POLL: Duration = Duration::from_millis(200);

/// How often, while following, the container is checked to be running.
const LIVENESS_EVERY: u32 = 5;

/// What `kubectl logs` asked for (the kubelet's `PodLogOptions` query).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming new output until the container stops.
    pub follow: bool,
    /// The log of the previous attempt (restartCount - 1).
    pub previous: bool,
    /// Only the last this many lines.
    pub tail_lines: Option<u64>,
    /// Only lines written at or after this time.
    pub since: Option<Timestamp>,
    /// Prefix each line with its RFC 3339 time.
    pub timestamps: bool,
    /// Stop after this many bytes.
    pub limit_bytes: Option<u64>,
}

impl LogOptions {
    /// Reads the options from a query (`follow=true&tailLines=10...`), with
    /// upstream's validation messages.
    pub fn from_query(query: &Query) -> Result<LogOptions, String> {
        let flag = |key: &str| query.flag(key).map_err(|e| e.message);
        let number = |key: &str| -> Result<Option<i64>, String> {
            match query.get(key) {
                None | Some("") => Ok(None),
                Some(v) => v
                    .parse::<i64>()
                    .map(Some)
                    .map_err(|_| format!("invalid {key}: {v:?}")),
            }
        };
        let tail_lines = match number("tailLines")? {
            Some(n) if n < 0 => return Err("tailLines: Invalid value: must be >= 0".into()),
            n => n.map(|n| n as u64),
        };
        let limit_bytes = match number("limitBytes")? {
            Some(n) if n < 1 => {
                return Err("limitBytes: Invalid value: must be greater than 0".into());
            }
            n => n.map(|n| n as u64),
        };
        let since_seconds = number("sinceSeconds")?;
        let since_time = match query.get("sinceTime") {
            None | Some("") => None,
            Some(t) => Some(
                t.parse::<Timestamp>()
                    .map_err(|e| format!("invalid sinceTime {t:?}: {e}"))?,
            ),
        };
        let since = match (since_seconds, since_time) {
            (Some(_), Some(_)) => {
                return Err("at most one of `sinceTime` or `sinceSeconds` may be specified".into());
            }
            (Some(s), None) if s < 1 => {
                return Err("sinceSeconds: Invalid value: must be greater than 0".into());
            }
            (Some(s), None) => Some(
                Timestamp::now()
                    .checked_sub(jiff::SignedDuration::from_secs(s))
                    .unwrap_or(Timestamp::MIN),
            ),
            (None, t) => t,
        };
        Ok(LogOptions {
            follow: flag("follow")?,
            previous: flag("previous")?,
            tail_lines,
            since,
            timestamps: flag("timestamps")?,
            limit_bytes,
        })
    }
}

/// The stream an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One entry of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// When the runtime read it.
    pub time: Timestamp,
    /// Where it came from.
    pub stream: Stream,
    /// `P`: the line continues in the next entry of the same stream.
    pub partial: bool,
    /// The text, without the newline.
    pub text: &'a [u8],
}

/// Parses one line of a CRI log file (without its `\n`); `None` when it is
/// not one (such lines are skipped, as the kubelet does).
pub fn parse_entry(line: &[u8]) -> Option<Entry<'_>> {
    let mut fields = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    let stream = match fields.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    // Tags are `:`-separated; the first is F (full) or P (partial).
    let tags = fields.next()?;
    let partial = match tags.split(|b| *b == b':').next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    Some(Entry {
        time,
        stream,
        partial,
        text: fields.next().unwrap_or(b""),
    })
}

/// A line the container printed, partial entries joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The time of its first entry.
    pub time: Timestamp,
    /// The text with its `\n` (none only for an unfinished last line).
    pub text: Vec<u8>,
}

/// Turns file bytes, fed in any pieces, into [`Line`]s.
#[derive(Debug, Default)]
pub struct Assembler {
    /// Bytes after the last `\n` seen.
    rest: Vec<u8>,
    /// Unfinished lines per stream (stdout, stderr).
    pending: [Option<Line>; 2],
}

impl Assembler {
    /// Feeds `bytes`, appending each completed line to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Line>) {
        self.rest.extend_from_slice(bytes);
        let Some(end) = self.rest.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = self.rest.drain(..=end).collect();
        for raw in complete.split(|b| *b == b'\n') {
            let Some(entry) = parse_entry(raw) else {
                continue;
            };
            let slot = &mut self.pending[entry.stream as usize];
            let line = slot.get_or_insert_with(|| Line {
                time: entry.time,
                text: Vec::new(),
            });
            line.text.extend_from_slice(entry.text);
            if !entry.partial {
                line.text.push(b'\n');
                out.extend(slot.take());
            }
        }
    }

    /// Ends the input: unfinished lines are given as they are.
    pub fn finish(&mut self, out: &mut Vec<Line>) {
        let mut rest: Vec<Line> = self.pending.iter_mut().filter_map(Option::take).collect();
        rest.sort_by_key(|l| l.time);
        out.extend(rest);
    }
}

/// Applies `since`, `timestamps` and `limitBytes` to lines on their way out.
#[derive(Debug)]
struct Writer {
    options: LogOptions,
    /// Bytes still allowed by `limitBytes`.
    budget: Option<u64>,
}

impl Writer {
    fn new(options: &LogOptions) -> Writer {
        Writer {
            options: options.clone(),
            budget: options.limit_bytes,
        }
    }

    /// The bytes to send for `lines`; `done` once `limitBytes` is reached.
    fn render(&mut self, lines: &[Line]) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        for line in lines {
            if self.options.since.is_some_and(|since| line.time < since) {
                continue;
            }
            let mut bytes = Vec::with_capacity(line.text.len() + 36);
            if self.options.timestamps {
                bytes.extend_from_slice(line.time.to_string().as_bytes());
                bytes.push(b' ');
            }
            bytes.extend_from_slice(&line.text);
            if let Some(budget) = &mut self.budget {
                let take = bytes.len().min(*budget as usize);
                out.extend_from_slice(&bytes[..take]);
                *budget -= take as u64;
                if *budget == 0 {
                    return (out, true);
                }
            } else {
                out.extend_from_slice(&bytes);
            }
        }
        (out, false)
    }
}

/// Reads a whole log file's lines with `tailLines`, `since`, `timestamps`
/// and `limitBytes` applied (no follow), reading back into its rotated
/// files as far as `tailLines` or `since` need.
pub fn read_all(path: &Path, options: &LogOptions) -> std::io::Result<Vec<u8>> {
    let bytes = std::fs::read(path)?;
    let lines = with_rotated(path, lines_of(&bytes), options);
    Ok(Writer::new(options)
        .render(tail(&lines, options.tail_lines))
        .0)
}

/// The lines in `bytes`, unfinished ones included.
fn lines_of(bytes: &[u8]) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut assembler = Assembler::default();
    assembler.feed(bytes, &mut lines);
    assembler.finish(&mut lines);
    lines
}

/// `lines` (those of the current file at `path`) preceded by the lines of
/// its rotated files ([`logrotate::rotated_files`](super::logrotate::rotated_files)),
/// newest first, while `tailLines` wants more lines and `since` reaches
/// further back. Without either only the current file is read, as the
/// kubelet does. A rotated file that cannot be read ends the search.
fn with_rotated(path: &Path, mut lines: Vec<Line>, options: &LogOptions) -> Vec<Line> {
    let wants_more = |lines: &[Line]| {
        let before_since = |since: Timestamp| lines.first().is_some_and(|l| l.time < since);
        match (options.tail_lines, options.since) {
            (Some(n), since) => (lines.len() as u64) < n && !since.is_some_and(before_since),
            (None, Some(since)) => !before_since(since),
            (None, None) => false,
        }
    };
    let rotated = super::logrotate::rotated_files(path);
    for older in rotated.iter().rev() {
        if !wants_more(&lines) {
            break;
        }
        match std::fs::read(older) {
            Ok(bytes) => {
                let mut before = lines_of(&bytes);
                before.append(&mut lines);
                lines = before;
            }
            Err(error) => {
                // Removed by a rotation meanwhile: older ones are gone too.
                tracing::debug!(path = %older.display(), %error, "rotated log not read");
                break;
            }
        }
    }
    lines
}

fn tail(lines: &[Line], n: Option<u64>) -> &[Line] {
    match n {
        Some(n) => &lines[lines.len().saturating_sub(n as usize)..],
        None => lines,
    }
}

/// Sends the log at `path` to `tx` per `options` until it is read (or,
/// with `follow`, until `running` says the container stopped), or `tx`'s
/// receiver is gone. Blocking: run it with `spawn_blocking`.
pub fn stream(
    path: PathBuf,
    options: LogOptions,
    tx: mpsc::Sender<Bytes>,
    mut running: impl FnMut() -> bool,
) -> std::io::Result<()> {
    let send = |bytes: Vec<u8>| bytes.is_empty() || tx.blocking_send(Bytes::from(bytes)).is_ok();
    if !options.follow {
        send(read_all(&path, &options)?);
        return Ok(());
    }
    let mut writer = Writer::new(&options);
    let mut assembler = Assembler::default();
    let mut file = File::open(&path)?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    let mut lines = Vec::new();
    assembler.feed(&buf, &mut lines);
    let lines = with_rotated(&path, lines, &options);
    let (bytes, done) = writer.render(tail(&lines, options.tail_lines));
    if !send(bytes) || done {
        return Ok(());
    }
    let mut chunk = vec![0u8; 64 * 1024];
    let mut idle_polls = 0u32;
    let mut stopping = false;
    loop {
        let n = file.read(&mut chunk)?;
        if n > 0 {
            idle_polls = 0;
            let mut lines = Vec::new();
            assembler.feed(&chunk[..n], &mut lines);
            let (bytes, done) = writer.render(&lines);
            if !send(bytes) || done {
                return Ok(());
            }
            continue;
        }
        // At the end of what is written.
        if tx.is_closed() {
            return Ok(());
        }
        if stopping {
            let mut lines = Vec::new();
            assembler.finish(&mut lines);
            send(writer.render(&lines).0);
            return Ok(());
        }
        if rotated(&mut file, &path) {
            match File::open(&path) {
                Ok(new) => {
                    file = new;
                    continue;
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        idle_polls += 1;
        if idle_polls.is_multiple_of(LIVENESS_EVERY) && !running() {
            // One more read picks up what was written before it stopped.
            stopping = true;
            continue;
        }
        std::thread::sleep(POLL);
    }
}

/// The file at `path` is no longer the one open (rotated: renamed and
/// recreated, or truncated in place).
fn rotated(file: &mut File, path: &Path) -> bool {
    let (Ok(open), Ok(now)) = (file.metadata(), std::fs::metadata(path)) else {
        return false;
    };
    if open.ino() != now.ino() || open.dev() != now.dev() {
        return true;
    }
    file.stream_position().is_ok_and(|pos| now.len() < pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(bytes: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        let mut a = Assembler::default();
        a.feed(bytes, &mut out);
        a.finish(&mut out);
        out
    }

    const LOG: &str = "2026-01-02T03:04:05.000000001Z stdout F one\n\
        2026-01-02T03:04:06Z stderr F two\n\
        2026-01-02T03:04:07Z stdout P thr\n\
        2026-01-02T03:04:08Z stdout F ee\n\
        not a cri line\n\
        2026-01-02T03:04:09Z stdout F \n\
        2026-01-02T03:04:10Z stdout F five\n";

    #[test]
    fn parses_entries() {
        let e = parse_entry(b"2026-01-02T03:04:05.5+01:00 stderr P:x a b c").expect("entry");
        assert_eq!(e.stream, Stream::Stderr);
        assert!(e.partial);
        assert_eq!(e.text, b"a b c");
        assert_eq!(e.time.to_string(), "2026-01-02T02:04:05.5Z");
        assert_eq!(
            parse_entry(b"2026-01-02T03:04:05Z stdout F")
                .expect("empty")
                .text,
            b""
        );
        assert!(parse_entry(b"garbage").is_none());
        assert!(parse_entry(b"2026-01-02T03:04:05Z stdin F x").is_none());
    }

    #[test]
    fn joins_partial_lines() {
        let lines = lines_of(LOG.as_bytes());
        let texts: Vec<&[u8]> = lines.iter().map(|l| l.text.as_slice()).collect();
        assert_eq!(
            texts,
            [&b"one\n"[..], b"two\n", b"three\n", b"\n", b"five\n"]
        );
        assert_eq!(lines[2].time.to_string(), "2026-01-02T03:04:07Z");
        // Fed a byte at a time, the same.
        let mut out = Vec::new();
        let mut a = Assembler::default();
        for b in LOG.as_bytes() {
            a.feed(&[*b], &mut out);
        }
        assert_eq!(out, lines);
        // An unfinished last line is given as it is at the end.
        let lines = lines_of(b"2026-01-02T03:04:07Z stdout P half");
        assert!(lines.is_empty(), "no newline yet: not an entry");
        let lines = lines_of(b"2026-01-02T03:04:07Z stdout P half\n");
        assert_eq!(lines[0].text, b"half");
    }

    fn read(options: LogOptions) -> String {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("0.log");
        std::fs::write(&path, LOG).expect("write");
        String::from_utf8(read_all(&path, &options).expect("read")).expect("utf8")
    }

    #[test]
    fn tail_since_timestamps_limit() {
        assert_eq!(read(LogOptions::default()), "one\ntwo\nthree\n\nfive\n");
        let tail = |n| LogOptions {
            tail_lines: Some(n),
            ..LogOptions::default()
        };
        assert_eq!(read(tail(2)), "\nfive\n");
        assert_eq!(read(tail(0)), "");
        assert_eq!(read(tail(100)), "one\ntwo\nthree\n\nfive\n");
        let since = LogOptions {
            since: Some("2026-01-02T03:04:06Z".parse().expect("time")),
            ..LogOptions::default()
        };
        assert_eq!(read(since), "two\nthree\n\nfive\n");
        let stamped = LogOptions {
            timestamps: true,
            tail_lines: Some(3),
            ..LogOptions::default()
        };
        assert_eq!(
            read(stamped),
            "2026-01-02T03:04:07Z three\n2026-01-02T03:04:09Z \n2026-01-02T03:04:10Z five\n"
        );
        let limited = LogOptions {
            limit_bytes: Some(6),
            ..LogOptions::default()
        };
        assert_eq!(read(limited), "one\ntw");
    }

    #[test]
    fn tail_and_since_read_back_across_rotated_files() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("0.log");
        let entry = |s: u32, text: &str| format!("2026-01-02T03:04:{s:02}Z stdout F {text}\n");
        // Oldest to newest: two rotated files, then the current one.
        let files = [
            (
                "0.log.20260102-030400",
                [entry(1, "a"), entry(2, "b")].concat(),
            ),
            (
                "0.log.20260102-030403",
                [entry(3, "c"), entry(4, "d")].concat(),
            ),
            ("0.log", entry(5, "e")),
            // Another attempt's rotated file is not this log's.
            ("1.log.20260102-030409", entry(9, "other")),
        ];
        for (name, text) in &files {
            std::fs::write(dir.path().join(name), text).expect("write");
        }
        let read = |options: LogOptions| {
            String::from_utf8(read_all(&path, &options).expect("read")).expect("utf8")
        };
        let tail = |n| LogOptions {
            tail_lines: Some(n),
            ..LogOptions::default()
        };
        assert_eq!(
            read(LogOptions::default()),
            "e\n",
            "plain: the current file"
        );
        assert_eq!(read(tail(1)), "e\n");
        assert_eq!(read(tail(2)), "d\ne\n");
        assert_eq!(read(tail(4)), "b\nc\nd\ne\n");
        assert_eq!(read(tail(100)), "a\nb\nc\nd\ne\n");
        let since = |s: &str| Some(s.parse::<Timestamp>().expect("time"));
        let from = |s| LogOptions {
            since: since(s),
            ..LogOptions::default()
        };
        assert_eq!(read(from("2026-01-02T03:04:04Z")), "d\ne\n");
        assert_eq!(read(from("2026-01-02T03:04:02Z")), "b\nc\nd\ne\n");
        assert_eq!(read(from("2026-01-02T03:04:06Z")), "");
        // tail, then since (the kubelet's order).
        let both = LogOptions {
            tail_lines: Some(3),
            since: since("2026-01-02T03:04:04Z"),
            ..LogOptions::default()
        };
        assert_eq!(read(both), "d\ne\n");
    }

    #[test]
    fn options_from_query() {
        let q = Query::parse(Some("follow=true&tailLines=5&timestamps=1&limitBytes=10"));
        let o = LogOptions::from_query(&q).expect("options");
        assert!(o.follow && o.timestamps && !o.previous);
        assert_eq!((o.tail_lines, o.limit_bytes), (Some(5), Some(10)));
        let q = Query::parse(Some("sinceSeconds=60"));
        let since = LogOptions::from_query(&q)
            .expect("since")
            .since
            .expect("set");
        let age = Timestamp::now().duration_since(since).as_secs();
        assert!((59..=61).contains(&age), "{age}");
        let q = Query::parse(Some("sinceTime=2026-01-02T03:04:05Z"));
        assert!(LogOptions::from_query(&q).expect("time").since.is_some());
        for bad in [
            "tailLines=-1",
            "tailLines=x",
            "limitBytes=0",
            "sinceSeconds=0",
            "sinceSeconds=5&sinceTime=2026-01-02T03:04:05Z",
            "sinceTime=yesterday",
            "follow=maybe",
        ] {
            assert!(
                LogOptions::from_query(&Query::parse(Some(bad))).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn follow_sees_appends_rotation_and_the_end() {
        use std::io::Write;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};

        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("0.log");
        std::fs::write(&path, "2026-01-02T03:04:05Z stdout F old\n").expect("write");
        let (tx, mut rx) = mpsc::channel(16);
        let alive = Arc::new(AtomicBool::new(true));
        let options = LogOptions {
            follow: true,
            ..LogOptions::default()
        };
        let flag = alive.clone();
        let p = path.clone();
        let reader =
            std::thread::spawn(move || stream(p, options, tx, || flag.load(Ordering::SeqCst)));
        // What arrives until `want` is complete (reads may split writes),
        // or what came within 10 s.
        let next = |rx: &mut mpsc::Receiver<Bytes>, want: &str| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let mut got = String::new();
            while got.len() < want.len() && std::time::Instant::now() < deadline {
                match rx.try_recv() {
                    Ok(b) => got.push_str(&String::from_utf8_lossy(&b)),
                    Err(mpsc::error::TryRecvError::Empty) => std::thread::sleep(POLL / 4),
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            }
            got
        };
        assert_eq!(next(&mut rx, "old\n"), "old\n");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        f.write_all(b"2026-01-02T03:04:06Z stdout P ne")
            .expect("append");
        f.flush().expect("flush");
        std::thread::sleep(POLL * 2);
        f.write_all(b"w\n2026-01-02T03:04:06Z stdout F \n")
            .expect("append");
        assert_eq!(next(&mut rx, "new\n"), "new\n", "a partial line joined");
        // Rotation: renamed away, a new file at the path.
        std::fs::rename(&path, dir.path().join("0.log.20260102-030407")).expect("rename");
        std::fs::write(&path, "2026-01-02T03:04:07Z stderr F rotated\n").expect("new");
        assert_eq!(next(&mut rx, "rotated\n"), "rotated\n");
        // The container stops: what it wrote last is sent, then the end.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"2026-01-02T03:04:08Z stdout F last\n"))
            .expect("append");
        alive.store(false, Ordering::SeqCst);
        assert_eq!(next(&mut rx, "last\n"), "last\n");
        assert_eq!(rx.blocking_recv(), None);
        reader.join().expect("thread").expect("stream");
    }
}
