//! One connection's socket with its read buffer and batched output. Responses are queued, and
//! the queue is written whenever the connection is about to wait for the client: so pipelined
//! requests get their responses in one write, and a client is never left waiting for bytes we
//! hold.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use may::net::TcpStream;

use super::tracker::Registration;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// Most bytes one body read asks for: the destination is zero-filled up to it first.
const BODY_READ_MAX: usize = 256 * 1024;
/// Queued output above this is written straight away instead of copied into the queue.
const DIRECT_WRITE_BYTES: usize = 64 * 1024;
/// A read buffer grown by a large body is shrunk back to this when it empties.
const KEEP_BUFFER_BYTES: usize = 64 * 1024;
/// At most this much is read and dropped while lingering before a close.
const LINGER_MAX_BYTES: usize = 1024 * 1024;

/// What one read brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filled {
    Bytes(usize),
    Eof,
    TimedOut,
}

pub(crate) struct ConnIo {
    // Declared first so it drops first: the tracker may shut the socket down by descriptor
    // until the registration is gone, so the socket must outlive it.
    registration: Option<Registration>,
    stream: TcpStream,
    inbuf: Vec<u8>,
    /// `inbuf[consumed..]` is not yet parsed.
    consumed: usize,
    out: Vec<u8>,
}

impl ConnIo {
    pub(crate) fn new(registration: Option<Registration>, stream: TcpStream) -> Self {
        ConnIo { registration, stream, inbuf: Vec::new(), consumed: 0, out: Vec::new() }
    }

    /// No Nagle delay (streamed tokens must leave at once) and a bound on stalled writes.
    pub(crate) fn configure(&self, write_timeout: Duration) -> io::Result<()> {
        self.stream.set_nodelay(true)?;
        set_send_buffer(&self.stream, SEND_BUFFER_BYTES)?;
        self.stream.set_write_timeout(Some(write_timeout))
    }

    pub(crate) fn buffered(&self) -> &[u8] {
        &self.inbuf[self.consumed..]
    }

    pub(crate) fn consume(&mut self, len: usize) {
        self.consumed = (self.consumed + len).min(self.inbuf.len());
    }

    pub(crate) fn set_idle(&self, idle: bool) {
        if let Some(registration) = &self.registration {
            registration.set_idle(idle);
        }
    }

    /// Writes queued output, then reads once into the buffer, waiting up to `timeout`.
    pub(crate) fn fill(&mut self, timeout: Duration) -> io::Result<Filled> {
        self.flush()?;
        if self.consumed == self.inbuf.len() {
            self.inbuf.clear();
            self.consumed = 0;
            if self.inbuf.capacity() > KEEP_BUFFER_BYTES {
                self.inbuf.shrink_to(KEEP_BUFFER_BYTES);
            }
        } else if self.consumed > 0 && self.inbuf.capacity() - self.inbuf.len() < READ_CHUNK {
            self.inbuf.drain(..self.consumed);
            self.consumed = 0;
        }
        read_append(&mut self.stream, &mut self.inbuf, READ_CHUNK, timeout)
    }

    /// Reads up to `max` bytes straight onto the end of `dst` (a large body skips the buffer).
    pub(crate) fn read_into(&mut self, dst: &mut Vec<u8>, max: usize, timeout: Duration) -> io::Result<Filled> {
        self.flush()?;
        read_append(&mut self.stream, dst, max.min(BODY_READ_MAX), timeout)
    }

    pub(crate) fn queue(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// The output queue, for serializing heads into it without a copy.
    pub(crate) fn out_mut(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Queues `bytes`, or writes queue and `bytes` now when `bytes` is large.
    pub(crate) fn queue_or_write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() < DIRECT_WRITE_BYTES {
            self.queue(bytes);
            return Ok(());
        }
        self.flush()?;
        self.stream.write_all(bytes)
    }

    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let result = self.stream.write_all(&self.out);
        // Cleared even on failure: the connection is closing, and the queue must not be
        // retried as if it were the next response.
        self.out.clear();
        result
    }

    /// Whether the client has closed or reset the connection, without waiting: a non-blocking
    /// peek (the socket is in non-blocking mode under may) sees end-of-stream or an error.
    /// Pipelined bytes waiting to be read count as "still there".
    pub(crate) fn peer_gone(&self) -> bool {
        let mut probe = [0u8; 1];
        match self.stream.inner().peek(&mut probe) {
            Ok(0) => true,
            Ok(_) => false,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => false,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => false,
            Err(_) => true,
        }
    }

    /// Writes what is queued, then closes politely: half-close, and read (dropping it) what the
    /// client still sends until it closes too, `linger` passes or a megabyte was dropped.
    /// Closing with unread input would send a reset, and a reset can destroy the response we
    /// just wrote before the client reads it.
    pub(crate) fn close(mut self, linger: Duration) {
        if self.flush().is_err() {
            return;
        }
        if self.stream.shutdown(Shutdown::Write).is_err() {
            return;
        }
        let deadline = Instant::now() + linger;
        let mut dropped = 0;
        let mut sink = Vec::with_capacity(READ_CHUNK);
        while dropped < LINGER_MAX_BYTES {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            sink.clear();
            match read_append(&mut self.stream, &mut sink, READ_CHUNK, left) {
                Ok(Filled::Bytes(n)) => dropped += n,
                Ok(Filled::Eof | Filled::TimedOut) | Err(_) => return,
            }
        }
    }
}

/// One read onto the end of `dst`, of at most `max` bytes, waiting up to `timeout`.
fn read_append(stream: &mut TcpStream, dst: &mut Vec<u8>, max: usize, timeout: Duration) -> io::Result<Filled> {
    // A zero timeout means "none" to the socket layer; never wait forever by accident.
    stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    let start = dst.len();
    dst.resize(start + max, 0);
    let result = loop {
        match stream.read(&mut dst[start..]) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    match result {
        Ok(0) => {
            dst.truncate(start);
            Ok(Filled::Eof)
        }
        Ok(n) => {
            dst.truncate(start + n);
            Ok(Filled::Bytes(n))
        }
        Err(err) => {
            dst.truncate(start);
            match err.kind() {
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Ok(Filled::TimedOut),
                _ => Err(err),
            }
        }
    }
}

/// The kernel's send buffer per connection. Left to autotuning it grows to several MiB, which a
/// client that stops reading fills before any write stalls: its whole answer is generated into
/// kernel memory and the write timeout never fires. A fixed bound makes such a client stall a
/// write within this many bytes, so it is cut after the write timeout and its sequence freed,
/// and bounds kernel memory across a thousand connections. Token streams need far less; a
/// large whole answer still flows at this buffer per round trip (256 KiB / 100 ms = 2.5 MB/s).
const SEND_BUFFER_BYTES: usize = 256 * 1024;

fn set_send_buffer(stream: &may::net::TcpStream, bytes: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: a socket descriptor this connection owns, and a c_int option value of the size
    // passed.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
