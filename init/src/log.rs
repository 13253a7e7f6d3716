//! Console logging for PID 1, with kernel-clock timestamps.
//!
//! Lines look like `[    1.234] cairn-init: message key=value`, where the
//! number is `CLOCK_BOOTTIME` seconds, the clock of the kernel's own printk
//! lines, so the two interleave on the console and boot phases can be timed
//! from a console log. Warnings and errors say so after the prefix.
//!
//! This is a tiny [`tracing::Subscriber`] rather than `tracing-subscriber`'s
//! formatter: init needs one line format and no span storage, and PID 1 is
//! the one binary on the device that must stay small. Spans are accepted and
//! ignored. In stage 2, once `/var` is mounted, [`attach_file`] also appends
//! every line to `/var/log/cairn/init.log` (rotated at 1 MiB, one `.1` kept).

use crate::sys::clock::boottime;
use std::fmt::{self, Write as _};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// The log file is rotated when it would grow past this many bytes.
pub const ROTATE_BYTES: u64 = 1024 * 1024;

static FILE: Mutex<Option<LogFile>> = Mutex::new(None);

struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
}

impl LogFile {
    fn open(path: &Path) -> std::io::Result<LogFile> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            size,
        })
    }

    fn write_line(&mut self, line: &str) {
        if self.size + line.len() as u64 > ROTATE_BYTES {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            let _ = std::fs::rename(&self.path, old);
            match LogFile::open(&self.path) {
                Ok(fresh) => *self = fresh,
                Err(_) => return,
            }
        }
        if self.file.write_all(line.as_bytes()).is_ok() {
            self.size += line.len() as u64;
        }
    }
}

/// The most verbose level printed: 1 = ERROR ... 5 = TRACE.
static MAX_LEVEL: AtomicU8 = AtomicU8::new(3);
/// `cairn.debug` on the command line: DEBUG whatever the config says.
static FORCED_DEBUG: AtomicBool = AtomicBool::new(false);

fn level_number(level: Level) -> u8 {
    match level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// Installs the console logger as the global subscriber. `debug` lowers the
/// level from INFO to DEBUG.
pub fn init(debug: bool) {
    FORCED_DEBUG.store(debug, Ordering::Relaxed);
    let max = if debug { Level::DEBUG } else { Level::INFO };
    MAX_LEVEL.store(level_number(max), Ordering::Relaxed);
    let _ = tracing::subscriber::set_global_default(Console {
        next_id: AtomicU64::new(1),
    });
}

/// Sets the level from `host.log_level` (the command line's `cairn.debug`
/// still wins).
pub fn set_level(level: cairn_image::config::LogLevel) {
    use cairn_image::config::LogLevel;
    let level = match level {
        _ if FORCED_DEBUG.load(Ordering::Relaxed) => Level::DEBUG,
        LogLevel::Error => Level::ERROR,
        LogLevel::Warn => Level::WARN,
        LogLevel::Info => Level::INFO,
        LogLevel::Debug => Level::DEBUG,
    };
    MAX_LEVEL.store(level_number(level), Ordering::Relaxed);
    tracing::callsite::rebuild_interest_cache();
}

/// Also appends every log line to `path` (created with its directory).
pub fn attach_file(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = LogFile::open(path)?;
    *FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
    Ok(())
}

/// Stops writing to the log file (before `/var` is unmounted).
pub fn detach_file() {
    *FILE.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Writes one plain line to the console (and the log file), not through
/// tracing: for the stable lines tests wait for (`cairn: ready`). Errors are
/// ignored, since PID 1 has nowhere else to report them.
pub fn console(line: &str) {
    let mut text = String::with_capacity(line.len() + 1);
    text.push_str(line);
    text.push('\n');
    emit(&text);
}

fn emit(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    if let Some(file) = FILE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        file.write_line(text);
    }
}

/// Formats one line: `[    1.234] cairn-init: [warning: ]message key=value`.
pub fn format_line(at: Duration, level: Level, message: &str, fields: &str) -> String {
    let mut line = format!(
        "[{:5}.{:03}] cairn-init: ",
        at.as_secs(),
        at.subsec_millis()
    );
    match level {
        Level::ERROR => line.push_str("error: "),
        Level::WARN => line.push_str("warning: "),
        _ => {}
    }
    line.push_str(message);
    line.push_str(fields);
    line.push('\n');
    line
}

struct Console {
    next_id: AtomicU64,
}

/// Collects an event's message and its other fields as ` key=value`.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else if value.is_empty() || value.contains(char::is_whitespace) {
            let _ = write!(self.rest, " {}={:?}", field.name(), value);
        } else {
            let _ = write!(self.rest, " {}={}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={:?}", field.name(), value);
        }
    }
}

impl Subscriber for Console {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        // The level can change at run time: ask `enabled` every time.
        tracing::subscriber::Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        level_number(*metadata.level()) <= MAX_LEVEL.load(Ordering::Relaxed)
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_id.fetch_add(1, Ordering::Relaxed).max(1))
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        emit(&format_line(
            boottime(),
            *meta.level(),
            &fields.message,
            &fields.rest,
        ));
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_format_matches_the_kernel_clock_layout() {
        let line = format_line(
            Duration::from_millis(1234),
            Level::INFO,
            "stage 1 started",
            " slot=a",
        );
        assert_eq!(line, "[    1.234] cairn-init: stage 1 started slot=a\n");
        let line = format_line(Duration::from_secs(100_000), Level::ERROR, "x", "");
        assert_eq!(line, "[100000.000] cairn-init: error: x\n");
    }

    #[test]
    fn fields_are_collected_as_key_value() {
        use std::sync::Arc;
        struct Capture(Arc<Mutex<String>>);
        impl Subscriber for Capture {
            fn enabled(&self, _: &Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, _: &Attributes<'_>) -> Id {
                Id::from_u64(1)
            }
            fn record(&self, _: &Id, _: &Record<'_>) {}
            fn record_follows_from(&self, _: &Id, _: &Id) {}
            fn event(&self, event: &Event<'_>) {
                let mut fields = Fields::default();
                event.record(&mut fields);
                let mut out = self.0.lock().expect("lock");
                out.push_str(&fields.message);
                out.push_str(&fields.rest);
            }
            fn enter(&self, _: &Id) {}
            fn exit(&self, _: &Id) {}
        }
        let out = Arc::new(Mutex::new(String::new()));
        tracing::subscriber::with_default(Capture(out.clone()), || {
            tracing::info!(path = "/dev/vda5", label = "a b", blocks = 3u64, "grew");
        });
        let out = out.lock().expect("lock").clone();
        assert_eq!(out, "grew path=/dev/vda5 label=\"a b\" blocks=3");
    }

    #[test]
    fn log_file_rotates_at_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("init.log");
        let mut log = LogFile::open(&path).expect("open");
        let line = "x".repeat(1000) + "\n";
        for _ in 0..1100 {
            log.write_line(&line);
        }
        let rotated = std::fs::metadata(dir.path().join("init.log.1")).expect("rotated");
        assert!(rotated.len() <= ROTATE_BYTES);
        assert!(std::fs::metadata(&path).expect("current").len() < ROTATE_BYTES);
    }
}
