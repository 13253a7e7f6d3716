//! Service output: reading a child's stdout/stderr pipes and cutting them into lines.
//!
//! Each pipe gets a small task that reads without ever waiting on the log writer:
//! lines go to the [`LogSink`] with a non-blocking send and are dropped (and
//! counted, then reported) when the writer is behind. Lines are cut at
//! [`MAX_LINE`] bytes so a service printing without newlines can't grow memory.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::logfile::{LogSink, Output};

/// The longest line kept; the rest of a longer line is dropped.
pub(crate) const MAX_LINE: usize = 4096;

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    buf: Vec<u8>,
    /// The current line passed the limit; skip until its newline.
    cut: bool,
}

impl Lines {
    /// Feeds `chunk`; calls `emit(line, cut)` for every completed line (no newline).
    pub(crate) fn push(&mut self, mut chunk: &[u8], mut emit: impl FnMut(Vec<u8>, bool)) {
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            self.take(&chunk[..end]);
            self.emit(&mut emit);
            chunk = &chunk[end + 1..];
        }
        self.take(chunk);
    }

    /// Ends the stream: a last line without a newline is still emitted.
    pub(crate) fn finish(&mut self, mut emit: impl FnMut(Vec<u8>, bool)) {
        if !self.buf.is_empty() || self.cut {
            self.emit(&mut emit);
        }
    }

    fn take(&mut self, data: &[u8]) {
        if self.cut {
            return;
        }
        let room = MAX_LINE - self.buf.len();
        if data.len() > room {
            self.buf.extend_from_slice(&data[..room]);
            self.cut = true;
        } else {
            self.buf.extend_from_slice(data);
        }
    }

    fn emit(&mut self, emit: &mut impl FnMut(Vec<u8>, bool)) {
        emit(std::mem::take(&mut self.buf), self.cut);
        self.cut = false;
    }
}

/// Starts a task copying the lines of `pipe` (a child's stdout or stderr) to `sink`.
/// It ends at end of file, that is when every holder of the pipe's write end is gone.
pub(crate) fn forward(
    service: &Arc<str>,
    pipe: impl Into<OwnedFd>,
    out: Arc<Output>,
    sink: LogSink,
) -> Option<JoinHandle<()>> {
    let mut rx = match pipe::Receiver::from_owned_fd(pipe.into()) {
        Ok(rx) => rx,
        Err(err) => {
            warn!(service = &**service, %err, "cannot read service output");
            return None;
        }
    };
    let service = Arc::clone(service);
    Some(tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_LINE];
        let mut lines = Lines::default();
        let mut dropped = 0u64;
        let mut send = |line: Vec<u8>, cut: bool| {
            if dropped > 0 {
                let note = format!("({dropped} lines dropped: log writer behind)").into_bytes();
                if sink.line(&out, note, false) {
                    dropped = 0;
                }
            }
            if !sink.line(&out, line, cut) {
                dropped += 1;
            }
        };
        loop {
            match rx.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => lines.push(&buf[..n], &mut send),
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => {
                    debug!(service = &*service, %err, "service output read failed");
                    break;
                }
            }
        }
        lines.finish(&mut send);
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<(Vec<u8>, bool)> {
        let mut lines = Lines::default();
        let mut got = Vec::new();
        for chunk in chunks {
            lines.push(chunk, |l, cut| got.push((l, cut)));
        }
        lines.finish(|l, cut| got.push((l, cut)));
        got
    }

    fn text(got: &[(Vec<u8>, bool)]) -> Vec<(String, bool)> {
        got.iter()
            .map(|(l, c)| (String::from_utf8_lossy(l).into_owned(), *c))
            .collect()
    }

    #[test]
    fn splits_lines_across_chunks() {
        let got = split(&[b"one\ntw", b"o\n", b"\nthree"]);
        assert_eq!(
            text(&got),
            [
                ("one".into(), false),
                ("two".into(), false),
                (String::new(), false),
                ("three".into(), false)
            ]
        );
    }

    #[test]
    fn no_trailing_empty_line() {
        assert_eq!(text(&split(&[b"a\n"])), [("a".into(), false)]);
        assert!(split(&[]).is_empty());
    }

    #[test]
    fn cuts_long_lines() {
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        // Fed in pieces that straddle the limit.
        let got = split(&[&long[..100], &long[100..], b"\nnext\n"]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.len(), MAX_LINE);
        assert!(got[0].1, "first line is marked cut");
        assert_eq!(got[1], (b"next".to_vec(), false));
    }

    #[test]
    fn exact_limit_is_not_cut() {
        let mut line = vec![b'y'; MAX_LINE];
        line.push(b'\n');
        let got = split(&[&line]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.len(), MAX_LINE);
        assert!(!got[0].1);
    }

    #[test]
    fn cut_line_without_newline_at_eof() {
        let got = split(&[&vec![b'z'; MAX_LINE + 1]]);
        assert_eq!(got.len(), 1);
        assert!(got[0].1);
    }
}
