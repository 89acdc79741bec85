//! The WASI preview1 host a function runs against: exactly the imports in
//! [`edge_shared::module_check::HOST_IMPORTS`], over one request's state.
//!
//! The sandbox grants nothing: no preopened directories (so no filesystem), no sockets;
//! fd 0 reads the request body, fd 1 collects the CGI response ([`super::stdout`]: up to
//! a limit, and sent on in chunks as the guest writes a long one), fd 2 is the
//! function's log, one `tracing` event per line with the request id. `poll_oneoff` sleeps
//! (clock subscriptions; the fds above are always ready) but never past the request's
//! deadline: a guest that asks to is stopped there, as a timeout.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::guest_log::{FunctionLog, LogContext};
use super::metering;
use super::stdout::{Refused, Stdout, StdoutStream, TakenStdout};
use wasmer::{FunctionEnvMut, Global, Memory, MemoryView, Value};

mod link;

pub use link::{Linker, imports};

/// WASI errno values used here.
mod errno {
    pub(super) const SUCCESS: i32 = 0;
    pub(super) const BADF: i32 = 8;
    pub(super) const FAULT: i32 = 21;
    pub(super) const FBIG: i32 = 22;
    pub(super) const INVAL: i32 = 28;
    pub(super) const PIPE: i32 = 64;
    pub(super) const SPIPE: i32 = 70;
}

/// `proc_exit` was called: unwinds the guest with its exit code.
#[derive(Debug, thiserror::Error)]
#[error("function exited with code {0}")]
pub struct Exit(pub i32);

/// A guest asked to sleep past its request's deadline: it is stopped there.
#[derive(Debug, thiserror::Error)]
#[error("function slept past its deadline")]
pub struct SleptPastDeadline;

/// One request's I/O as the guest sees it.
pub struct RequestIo {
    deadline: Option<Instant>,
    memory: Option<Memory>,
    /// The instance's remaining fuel, which host copies are charged to.
    fuel: Option<Global>,
    /// Bytes the current host call copied, charged when it returns.
    copied: u64,
    args: Vec<Vec<u8>>,
    env: Vec<Vec<u8>>,
    stdin: Bytes,
    stdin_pos: usize,
    stdout: Stdout,
    log: FunctionLog,
}

impl RequestIo {
    /// State for a request: `argv[0]` is the function name, `env` the CGI variables plus
    /// the function's own, `stdin` the body; stdout may hold `stdout_limit` bytes.
    pub fn new(
        function: &str,
        log: LogContext,
        env: &[(String, String)],
        stdin: Bytes,
        stdout_limit: usize,
    ) -> RequestIo {
        RequestIo {
            deadline: None,
            memory: None,
            fuel: None,
            copied: 0,
            args: vec![nul_terminated(function.as_bytes())],
            env: env.iter().map(|(k, v)| variable(k, v)).collect(),
            stdin,
            stdin_pos: 0,
            stdout: Stdout::new(stdout_limit),
            log: FunctionLog::new(function, log),
        }
    }

    /// Gives the host functions the instance's exported memory.
    pub fn set_memory(&mut self, memory: Memory) {
        self.memory = Some(memory);
    }

    /// The instance's remaining-fuel global ([`metering::REMAINING_POINTS`]): a host call
    /// is charged one unit per [`metering::BYTES_PER_UNIT`] bytes it copies, beyond its
    /// call. A call the fuel does not cover leaves none, and the guest traps at its next
    /// metering check, as if it had run out itself.
    pub fn set_fuel(&mut self, remaining: Global) {
        self.fuel = Some(remaining);
    }

    /// The instant past which the guest may not sleep.
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }

    /// Sends stdout on through `stream` as it grows past [`STREAM_CHUNK`].
    pub fn set_stream(&mut self, stream: StdoutStream) {
        self.stdout.set_stream(stream);
    }

    /// What the guest wrote to stdout and was not sent on, and how the writing went.
    /// Closes the stream: its reader sees the end.
    pub fn take_stdout(&mut self) -> TakenStdout {
        self.log.flush();
        self.stdout.take()
    }
}

fn nul_terminated(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes.len() + 1);
    v.extend(bytes.iter().map(|&b| no_nul(b)));
    v.push(0);
    v
}

/// `NAME=value`, NUL-terminated, made in one allocation.
fn variable(name: &str, value: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(name.len() + value.len() + 2);
    v.extend(name.bytes().map(no_nul));
    v.push(b'=');
    v.extend(value.bytes().map(no_nul));
    v.push(0);
    v
}

/// A NUL inside a string would end it early for the guest: it reads as `?`.
fn no_nul(b: u8) -> u8 {
    if b == 0 { b'?' } else { b }
}

type Env<'a> = FunctionEnvMut<'a, RequestIo>;

/// Runs `f` with the request state and a view of the guest memory; FAULT without memory.
fn with_memory(
    env: &mut Env<'_>,
    f: impl FnOnce(&mut RequestIo, &MemoryView<'_>) -> Result<i32, i32>,
) -> i32 {
    let (io, mut store) = env.data_and_store_mut();
    let Some(memory) = io.memory.clone() else {
        return errno::FAULT;
    };
    let view = memory.view(&store);
    let result = f(io, &view).unwrap_or_else(|e| e);
    let charge = std::mem::take(&mut io.copied) / metering::BYTES_PER_UNIT;
    if let Some(fuel) = &io.fuel
        && let Value::I64(remaining) = fuel.get(&mut store)
    {
        let left = (remaining as u64).saturating_sub(charge);
        let _ = fuel.set(&mut store, Value::I64(left as i64));
    }
    result
}

fn write_bytes(view: &MemoryView<'_>, ptr: u32, bytes: &[u8]) -> Result<(), i32> {
    view.write(u64::from(ptr), bytes).map_err(|_| errno::FAULT)
}

/// Most iovecs one call may pass (POSIX `IOV_MAX`).
const MAX_IOVECS: u32 = 1024;
/// Guest bytes the host copies at once: what a guest-chosen length can make the host
/// allocate, whatever the length.
const COPY_CHUNK: u32 = 64 << 10;

/// `Ok` if `len` bytes from `ptr` lie inside guest memory. Every guest-chosen length is
/// checked with it before the host allocates or copies anything for it.
fn in_bounds(view: &MemoryView<'_>, ptr: u32, len: u64) -> Result<(), i32> {
    match u64::from(ptr).checked_add(len) {
        Some(end) if end <= view.data_size() => Ok(()),
        _ => Err(errno::FAULT),
    }
}

/// The (offset, length) pieces of `len` bytes, [`COPY_CHUNK`] at most each.
fn chunks(len: u32) -> impl Iterator<Item = (u32, u32)> {
    (0..len)
        .step_by(COPY_CHUNK as usize)
        .map(move |at| (at, (len - at).min(COPY_CHUNK)))
}

/// Hands the `len` guest bytes at `ptr` to `sink`, at most [`COPY_CHUNK`] at a time.
fn copy_out(
    view: &MemoryView<'_>,
    ptr: u32,
    len: u32,
    mut sink: impl FnMut(&[u8]) -> Result<(), i32>,
) -> Result<(), i32> {
    in_bounds(view, ptr, u64::from(len))?;
    let mut buf = vec![0u8; len.min(COPY_CHUNK) as usize];
    for (at, n) in chunks(len) {
        let part = &mut buf[..n as usize];
        view.read(u64::from(ptr) + u64::from(at), part)
            .map_err(|_| errno::FAULT)?;
        sink(part)?;
    }
    Ok(())
}

/// The (pointer, length) pairs of an iovec array.
fn iovecs(view: &MemoryView<'_>, iovs: u32, count: u32) -> Result<Vec<(u32, u32)>, i32> {
    if count > MAX_IOVECS {
        return Err(errno::INVAL);
    }
    in_bounds(view, iovs, u64::from(count) * 8)?;
    let mut raw = vec![0u8; count as usize * 8];
    view.read(u64::from(iovs), &mut raw)
        .map_err(|_| errno::FAULT)?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| {
            (
                u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            )
        })
        .collect())
}

/// Writes a list of NUL-terminated strings as WASI `*_get` does: pointers, then bytes.
fn write_list(view: &MemoryView<'_>, items: &[Vec<u8>], ptrs: u32, buf: u32) -> Result<i32, i32> {
    let mut at = buf;
    for (i, item) in items.iter().enumerate() {
        let slot = u32::try_from(i)
            .ok()
            .and_then(|i| i.checked_mul(4))
            .and_then(|offset| ptrs.checked_add(offset))
            .ok_or(errno::FAULT)?;
        write_bytes(view, slot, &at.to_le_bytes())?;
        write_bytes(view, at, item)?;
        at = u32::try_from(item.len())
            .ok()
            .and_then(|len| at.checked_add(len))
            .ok_or(errno::FAULT)?;
    }
    Ok(errno::SUCCESS)
}

fn write_sizes(
    view: &MemoryView<'_>,
    items: &[Vec<u8>],
    count_ptr: u32,
    size_ptr: u32,
) -> Result<i32, i32> {
    let size: usize = items.iter().map(Vec::len).sum();
    write_bytes(view, count_ptr, &(items.len() as u32).to_le_bytes())?;
    write_bytes(view, size_ptr, &(size as u32).to_le_bytes())?;
    Ok(errno::SUCCESS)
}

fn args_sizes_get(mut env: Env<'_>, count: u32, size: u32) -> i32 {
    with_memory(&mut env, |io, view| {
        write_sizes(view, &io.args, count, size)
    })
}

fn args_get(mut env: Env<'_>, ptrs: u32, buf: u32) -> i32 {
    with_memory(&mut env, |io, view| {
        io.copied += io.args.iter().map(|a| a.len() as u64 + 4).sum::<u64>();
        write_list(view, &io.args, ptrs, buf)
    })
}

fn environ_sizes_get(mut env: Env<'_>, count: u32, size: u32) -> i32 {
    with_memory(&mut env, |io, view| write_sizes(view, &io.env, count, size))
}

fn environ_get(mut env: Env<'_>, ptrs: u32, buf: u32) -> i32 {
    with_memory(&mut env, |io, view| {
        io.copied += io.env.iter().map(|e| e.len() as u64 + 4).sum::<u64>();
        write_list(view, &io.env, ptrs, buf)
    })
}

fn fd_read(mut env: Env<'_>, fd: u32, iovs: u32, iovs_len: u32, nread: u32) -> i32 {
    with_memory(&mut env, |io, view| {
        if fd != 0 {
            return Err(errno::BADF);
        }
        let mut total = 0u32;
        for (ptr, len) in iovecs(view, iovs, iovs_len)? {
            let rest = &io.stdin[io.stdin_pos..];
            let n = rest.len().min(len as usize);
            write_bytes(view, ptr, &rest[..n])?;
            io.stdin_pos += n;
            io.copied += n as u64;
            // n <= len, a u32.
            total = total.saturating_add(n as u32);
            if n < len as usize {
                break;
            }
        }
        write_bytes(view, nread, &total.to_le_bytes())?;
        Ok(errno::SUCCESS)
    })
}

fn fd_write(mut env: Env<'_>, fd: u32, iovs: u32, iovs_len: u32, nwritten: u32) -> i32 {
    with_memory(&mut env, |io, view| {
        if !(1..=2).contains(&fd) {
            return Err(errno::BADF);
        }
        let mut total = 0u32;
        for (ptr, len) in iovecs(view, iovs, iovs_len)? {
            // What one call reports written must fit its u32 result.
            total = total.checked_add(len).ok_or(errno::INVAL)?;
            io.copied += u64::from(len);
            if fd == 1 {
                io.stdout.reserve(len).map_err(refused)?;
                let (stdout, deadline) = (&mut io.stdout, io.deadline);
                copy_out(view, ptr, len, |part| {
                    stdout.write(part, deadline).map_err(refused)
                })?;
            } else {
                let log = &mut io.log;
                copy_out(view, ptr, len, |part| {
                    log.write(part);
                    Ok(())
                })?;
            }
        }
        write_bytes(view, nwritten, &total.to_le_bytes())?;
        Ok(errno::SUCCESS)
    })
}

/// The errno of a refused write to stdout.
fn refused(refused: Refused) -> i32 {
    match refused {
        Refused::TooLarge => errno::FBIG,
        Refused::Stopped => errno::PIPE,
    }
}

fn fd_close(_env: Env<'_>, fd: u32) -> i32 {
    if fd <= 2 { errno::SUCCESS } else { errno::BADF }
}

fn fd_fdstat_get(mut env: Env<'_>, fd: u32, stat: u32) -> i32 {
    with_memory(&mut env, |_, view| {
        if fd > 2 {
            return Err(errno::BADF);
        }
        // filetype u8 = character device (2), flags u16 = 0, rights: read for 0, write for 1-2.
        let mut buf = [0u8; 24];
        buf[0] = 2;
        let rights: u64 = if fd == 0 { 1 << 1 } else { 1 << 6 };
        buf[8..16].copy_from_slice(&rights.to_le_bytes());
        write_bytes(view, stat, &buf)?;
        Ok(errno::SUCCESS)
    })
}

fn fd_seek(_env: Env<'_>, fd: u32, _offset: i64, _whence: u32, _newoffset: u32) -> i32 {
    if fd <= 2 { errno::SPIPE } else { errno::BADF }
}

fn fd_prestat_get(_env: Env<'_>, _fd: u32, _buf: u32) -> i32 {
    errno::BADF
}

fn fd_prestat_dir_name(_env: Env<'_>, _fd: u32, _path: u32, _len: u32) -> i32 {
    errno::BADF
}

fn proc_exit(_env: Env<'_>, code: u32) -> Result<(), Exit> {
    Err(Exit(code as i32))
}

fn monotonic_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn clock_time_get(mut env: Env<'_>, id: u32, _precision: u64, time: u32) -> i32 {
    with_memory(&mut env, |_, view| {
        let nanos = match id {
            0 => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
            1..=3 => monotonic_start().elapsed().as_nanos(),
            _ => return Err(errno::INVAL),
        };
        write_bytes(view, time, &(nanos as u64).to_le_bytes())?;
        Ok(errno::SUCCESS)
    })
}

fn clock_res_get(mut env: Env<'_>, id: u32, res: u32) -> i32 {
    with_memory(&mut env, |_, view| {
        if id > 3 {
            return Err(errno::INVAL);
        }
        write_bytes(view, res, &1_000u64.to_le_bytes())?;
        Ok(errno::SUCCESS)
    })
}

fn random_get(mut env: Env<'_>, buf: u32, len: u32) -> i32 {
    with_memory(&mut env, |io, view| {
        in_bounds(view, buf, u64::from(len))?;
        io.copied += u64::from(len);
        let mut bytes = vec![0u8; len.min(COPY_CHUNK) as usize];
        for (at, n) in chunks(len) {
            let part = &mut bytes[..n as usize];
            getrandom::fill(part).map_err(|_| errno::INVAL)?;
            write_bytes(view, buf + at, part)?;
        }
        Ok(errno::SUCCESS)
    })
}

fn sched_yield(_env: Env<'_>) -> i32 {
    errno::SUCCESS
}

/// Bytes of a WASI subscription and of an event.
const SUBSCRIPTION_LEN: u32 = 48;
const EVENT_LEN: u32 = 32;

/// One parsed subscription: its user data and what it waits for.
enum Wait {
    /// A clock reaches this instant.
    Until(u64, Instant),
    /// An fd is ready (ours always are), with the bytes readable.
    Fd(u64, u8, u64),
}

fn poll_oneoff(
    mut env: Env<'_>,
    subscriptions: u32,
    events: u32,
    count: u32,
    written: u32,
) -> Result<i32, SleptPastDeadline> {
    let mut sleep_until = None;
    let mut waits = Vec::new();
    let mut deadline = None;
    let parsed = with_memory(&mut env, |io, view| {
        if count == 0 || count > 64 {
            return Err(errno::INVAL);
        }
        let mut raw = vec![0u8; (count * SUBSCRIPTION_LEN) as usize];
        view.read(u64::from(subscriptions), &mut raw)
            .map_err(|_| errno::FAULT)?;
        let u64_at =
            |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
        let now = Instant::now();
        for sub in raw.chunks(SUBSCRIPTION_LEN as usize) {
            let userdata = u64_at(sub, 0);
            match sub[8] {
                0 => {
                    let clock = u32::from_le_bytes(sub[16..20].try_into().unwrap_or_default());
                    let timeout = u64_at(sub, 24);
                    let absolute = sub[40] & 1 == 1;
                    let after = if !absolute {
                        timeout
                    } else {
                        let now_on_clock = match clock {
                            0 => SystemTime::now()
                                .duration_since(UNIX_EPOCH)
                                .unwrap_or_default()
                                .as_nanos() as u64,
                            1..=3 => monotonic_start().elapsed().as_nanos() as u64,
                            _ => return Err(errno::INVAL),
                        };
                        timeout.saturating_sub(now_on_clock)
                    };
                    // A guest may ask for centuries: that is past any deadline, not a panic.
                    let at = now
                        .checked_add(Duration::from_nanos(after))
                        .unwrap_or(now + Duration::from_secs(86_400 * 365));
                    waits.push(Wait::Until(userdata, at));
                }
                kind @ (1 | 2) => {
                    let fd = u32::from_le_bytes(sub[16..20].try_into().unwrap_or_default());
                    let ready = match (kind, fd) {
                        (1, 0) => (io.stdin.len() - io.stdin_pos) as u64,
                        (2, 1 | 2) => 0,
                        _ => return Err(errno::BADF),
                    };
                    waits.push(Wait::Fd(userdata, kind, ready));
                }
                _ => return Err(errno::INVAL),
            }
        }
        // Ready fds answer at once; otherwise the earliest clock.
        if !waits.iter().any(|w| matches!(w, Wait::Fd(..))) {
            sleep_until = waits
                .iter()
                .filter_map(|w| match w {
                    Wait::Until(_, at) => Some(*at),
                    Wait::Fd(..) => None,
                })
                .min();
        }
        deadline = io.deadline;
        Ok(errno::SUCCESS)
    });
    if parsed != errno::SUCCESS {
        return Ok(parsed);
    }
    if let Some(until) = sleep_until {
        if deadline.is_some_and(|d| until > d) {
            let d = deadline.unwrap_or(until);
            std::thread::sleep(d.saturating_duration_since(Instant::now()));
            return Err(SleptPastDeadline);
        }
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
    }
    Ok(with_memory(&mut env, |_, view| {
        let now = Instant::now();
        let mut out = Vec::new();
        for wait in &waits {
            let mut event = [0u8; EVENT_LEN as usize];
            match *wait {
                Wait::Until(userdata, at) if at <= now => {
                    event[0..8].copy_from_slice(&userdata.to_le_bytes());
                    event[10] = 0;
                }
                Wait::Fd(userdata, kind, ready) => {
                    event[0..8].copy_from_slice(&userdata.to_le_bytes());
                    event[10] = kind;
                    event[16..24].copy_from_slice(&ready.to_le_bytes());
                }
                Wait::Until(..) => continue,
            }
            out.extend_from_slice(&event);
        }
        write_bytes(view, events, &out)?;
        let n = (out.len() / EVENT_LEN as usize) as u32;
        write_bytes(view, written, &n.to_le_bytes())?;
        Ok(errno::SUCCESS)
    }))
}
