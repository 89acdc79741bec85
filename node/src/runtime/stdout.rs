//! A request's stdout as the host collects it: under the function's response limit,
//! whole for a short answer, and past one [`STREAM_CHUNK`] sent on in chunks while the
//! guest still writes (a streaming answer).

use std::time::Instant;

use bytes::Bytes;

/// Stdout is sent on in chunks of this many bytes as the guest writes it; an answer
/// shorter than this comes whole when the guest ends.
pub const STREAM_CHUNK: usize = 64 << 10;

/// Where a long stdout goes while the guest still writes: chunks of [`STREAM_CHUNK`]
/// bytes into a bounded channel. A full channel (the caller reads slower than the guest
/// writes) holds the guest in its write until there is room or its deadline comes.
pub struct StdoutStream {
    /// The chunks, in order.
    pub chunks: tokio::sync::mpsc::Sender<Bytes>,
    /// The runtime that reads them (the worker thread waits for room on it).
    pub runtime: tokio::runtime::Handle,
}

/// Why a stream of stdout stopped before the guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStop {
    /// The reader went away: the caller stopped reading.
    Abandoned,
    /// The channel stayed full until the guest's deadline.
    Deadline,
}

/// Why a write to stdout was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// It would pass the response limit.
    TooLarge,
    /// The stream stopped ([`StreamStop`]): nobody takes more.
    Stopped,
}

/// What is left of a request's stdout when the guest ends ([`Stdout::take`]).
#[derive(Debug)]
pub struct TakenStdout {
    /// What was not sent on.
    pub rest: Vec<u8>,
    /// The guest tried to write more than its limit.
    pub overflow: bool,
    /// Some was sent on through the stream.
    pub streamed: bool,
    /// Why the stream stopped, if it did.
    pub stopped: Option<StreamStop>,
}

/// One request's stdout.
pub(super) struct Stdout {
    buffer: Vec<u8>,
    /// Bytes already sent on through `stream`.
    sent: usize,
    limit: usize,
    overflow: bool,
    stream: Option<StdoutStream>,
    stopped: Option<StreamStop>,
}

impl Stdout {
    /// Stdout that may hold `limit` bytes in all.
    pub(super) fn new(limit: usize) -> Stdout {
        Stdout {
            buffer: Vec::new(),
            sent: 0,
            limit,
            overflow: false,
            stream: None,
            stopped: None,
        }
    }

    /// Sends stdout on through `stream` as it grows past [`STREAM_CHUNK`].
    pub(super) fn set_stream(&mut self, stream: StdoutStream) {
        self.stream = Some(stream);
    }

    /// Whether `len` more bytes fit under the limit; if not, the guest tried to write
    /// too much, which [`Stdout::take`] tells.
    pub(super) fn reserve(&mut self, len: u32) -> Result<(), Refused> {
        let written = self.sent + self.buffer.len();
        if written.saturating_add(len as usize) > self.limit {
            self.overflow = true;
            return Err(Refused::TooLarge);
        }
        Ok(())
    }

    /// Appends `part`, sending full chunks on when there is a stream, waiting for room
    /// in it no later than `deadline`.
    pub(super) fn write(
        &mut self,
        mut part: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), Refused> {
        if self.stopped.is_some() {
            return Err(Refused::Stopped);
        }
        while !part.is_empty() {
            let room = STREAM_CHUNK.saturating_sub(self.buffer.len()).max(1);
            let (now, later) = part.split_at(part.len().min(room));
            self.buffer.extend_from_slice(now);
            part = later;
            if self.buffer.len() >= STREAM_CHUNK && self.stream.is_some() {
                self.send(deadline)?;
            }
        }
        Ok(())
    }

    /// Sends the buffer on as one chunk, waiting for room until `deadline`.
    fn send(&mut self, deadline: Option<Instant>) -> Result<(), Refused> {
        let Some(stream) = &self.stream else {
            return Ok(());
        };
        let chunk = Bytes::from(std::mem::take(&mut self.buffer));
        let len = chunk.len();
        let deadline = tokio::time::Instant::from_std(deadline.unwrap_or_else(Instant::now));
        // The timer is made inside `block_on`, in the runtime's context.
        let chunks = &stream.chunks;
        let sent = stream
            .runtime
            .block_on(async { tokio::time::timeout_at(deadline, chunks.send(chunk)).await });
        let stopped = match sent {
            Ok(Ok(())) => {
                self.sent += len;
                return Ok(());
            }
            Ok(Err(_)) => StreamStop::Abandoned,
            Err(_) => StreamStop::Deadline,
        };
        self.stopped = Some(stopped);
        Err(Refused::Stopped)
    }

    /// What was not sent on, and how the writing went. Closes the stream: its reader
    /// sees the end.
    pub(super) fn take(&mut self) -> TakenStdout {
        self.stream = None;
        TakenStdout {
            rest: std::mem::take(&mut self.buffer),
            overflow: self.overflow,
            streamed: self.sent > 0,
            stopped: self.stopped,
        }
    }
}
