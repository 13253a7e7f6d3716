//! A bounded window onto a disk image: `Read + Write + Seek` over the bytes
//! of one partition, so filesystem crates (fatfs) can format and edit a
//! partition inside an image file in place, without loop devices or mounts.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// The bytes `[start, start + len)` of `inner`, seen as a stream of their own.
#[derive(Debug)]
pub struct Slice<D> {
    inner: D,
    start: u64,
    len: u64,
    pos: u64,
}

impl<D: Seek> Slice<D> {
    /// A window of `len` bytes starting at byte `start` of `inner`.
    pub fn new(mut inner: D, start: u64, len: u64) -> io::Result<Self> {
        inner.seek(SeekFrom::Start(start))?;
        Ok(Slice {
            inner,
            start,
            len,
            pos: 0,
        })
    }

    /// Bytes left before the end of the window, capped to `want`.
    fn room(&self, want: usize) -> usize {
        let left = self.len.saturating_sub(self.pos);
        usize::try_from(left).map_or(want, |left| left.min(want))
    }

    pub fn into_inner(self) -> D {
        self.inner
    }
}

impl<D: Read + Seek> Read for Slice<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.room(buf.len());
        if n == 0 {
            return Ok(0);
        }
        let got = self.inner.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl<D: Write + Seek> Write for Slice<D> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.room(buf.len());
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        let put = self.inner.write(&buf[..n])?;
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<D: Seek> Seek for Slice<D> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let target = target.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek before partition start")
        })?;
        self.inner.seek(SeekFrom::Start(self.start + target))?;
        self.pos = target;
        Ok(target)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test failure
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn reads_and_writes_stay_inside_the_window() {
        let mut slice = Slice::new(Cursor::new(vec![0u8; 16]), 4, 8).unwrap();
        slice.write_all(b"abcd").unwrap();
        assert_eq!(slice.seek(SeekFrom::End(-2)).unwrap(), 6);
        assert!(slice.write_all(b"xyz").is_err());
        slice.seek(SeekFrom::Start(0)).unwrap();
        let mut all = Vec::new();
        slice.read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 8);
        assert_eq!(&all[..4], b"abcd");
        let inner = slice.into_inner().into_inner();
        assert_eq!(&inner[4..8], b"abcd");
        assert_eq!(&inner[12..], &[0, 0, 0, 0]);
    }
}
