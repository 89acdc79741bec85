//! One invocation: a fresh instance of a loaded function (prepared ahead of the request
//! or on its path), a fuel budget, the guest's `_start`, and what came of it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmer::{Engine, Function, FunctionEnv, Global, Instance, Memory, Module, Store};
use wasmer_middlewares::metering::{MeteringPoints, get_remaining_points, set_remaining_points};

use super::guest_log::LogContext;
use super::metering;
use super::stdout::{StdoutStream, StreamStop, TakenStdout};
use super::wasi::{Exit, Linker, RequestIo, SleptPastDeadline};
use super::watchdog::{FuelGauge, Watchdog};

/// A function ready to run: its compiled module in the engine of its memory limit.
#[derive(Clone)]
pub struct Runnable {
    /// The function's name (its log lines and `argv[0]`).
    pub name: String,
    /// Compiled module.
    pub module: Module,
    /// How its imports are linked.
    pub linker: Linker,
    /// Headless engine enforcing the function's memory limit.
    pub engine: Engine,
    /// Memory limit in MiB, to tell a memory-limit failure from other traps.
    pub memory_limit_mib: u64,
    /// Bytes an instance's tables may reach (their element cap), counted in the memory
    /// budget beside its linear memory.
    pub table_bytes: u64,
}

/// What one invocation gets.
pub struct Invocation {
    /// Whom the function's log lines name, and where else they go.
    pub log: LogContext,
    /// CGI variables plus the function's own environment.
    pub env: Vec<(String, String)>,
    /// The request body, as stdin.
    pub stdin: Bytes,
    /// Most bytes the function may write to stdout.
    pub stdout_limit: usize,
    /// Fuel (operators) the function may use.
    pub fuel: u64,
    /// When its time is up: it may not sleep past it.
    pub deadline: Instant,
    /// Where stdout goes while the guest writes it, once it is longer than one chunk;
    /// without one, all of it comes in [`Completed::stdout`].
    pub stream: Option<StdoutStream>,
}

/// A successful run.
#[derive(Debug)]
pub struct Completed {
    /// What the guest wrote to stdout and was not sent through the stream: all of it
    /// unless `streamed`.
    pub stdout: Vec<u8>,
    /// Some of stdout went through the stream before this rest.
    pub streamed: bool,
    /// Time in the guest.
    pub run: Duration,
    /// Fuel it used.
    pub fuel_used: u64,
    /// Its linear memory at the end, in bytes.
    pub memory_bytes: u64,
}

/// An instance made ahead of its request: store, host functions, imports resolved,
/// memory allocated and initialized, `_start` not yet called. Used once.
pub struct Prepared {
    store: Store,
    instance: Instance,
    io: FunctionEnv<RequestIo>,
    memory: Memory,
    start: Function,
    /// Its remaining fuel ([`metering::REMAINING_POINTS`]), which host copies are
    /// charged to.
    fuel: Global,
    /// Where the watchdog empties that fuel at the deadline.
    gauge: FuelGauge,
    table_bytes: u64,
}

impl Prepared {
    /// Bytes the instance holds now, as the memory budget counts them: its linear
    /// memory, and its tables at their cap.
    pub fn memory_bytes(&self) -> u64 {
        self.memory.view(&self.store).data_size() + self.table_bytes
    }
}

/// Why a run produced no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The instance could not be created (link error, start-up trap, memory too small).
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    /// The guest trapped.
    #[error("function trapped: {kind}")]
    Trap {
        /// The trap code, or the message where wasmer gives none.
        kind: String,
    },
    /// The guest trapped with its memory at the limit: it ran out of memory.
    #[error("function ran out of memory at its {limit_mib} MiB limit")]
    MemoryLimit {
        /// The limit.
        limit_mib: u64,
    },
    /// The guest asked to sleep past its deadline.
    #[error("function slept past its deadline")]
    SleptPastDeadline,
    /// The guest was still running at its deadline and was stopped there.
    #[error("function stopped at its deadline")]
    Interrupted,
    /// The guest used its whole fuel budget.
    #[error("function used its whole fuel budget of {fuel}")]
    FuelExhausted {
        /// The budget.
        fuel: u64,
    },
    /// The guest called `proc_exit` with a non-zero code.
    #[error("function exited with code {0}")]
    Exit(i32),
    /// The caller stopped reading the response while the guest wrote it.
    #[error("the caller stopped reading the response")]
    Abandoned,
    /// The guest wrote more than the response limit.
    #[error("function wrote more than the {limit} byte response limit")]
    ResponseTooLarge {
        /// The limit.
        limit: usize,
    },
}

/// Creates an instance of `runnable`, ready for one request. Blocks.
pub fn prepare(runnable: &Runnable) -> Result<Prepared, RunError> {
    let mut store = Store::new(runnable.engine.clone());
    let io = FunctionEnv::new(
        &mut store,
        RequestIo::new(&runnable.name, LogContext::default(), &[], Bytes::new(), 0),
    );
    let imports = runnable.linker.externs(&mut store, &io);
    let instance = Instance::new_by_index(&mut store, &runnable.module, &imports)
        .map_err(|e| RunError::Instantiate(e.to_string()))?;
    let memory = instance
        .exports
        .get_memory("memory")
        .map_err(|e| RunError::Instantiate(e.to_string()))?
        .clone();
    let start = instance
        .exports
        .get_function("_start")
        .map_err(|e| RunError::Instantiate(e.to_string()))?
        .clone();
    // Every artifact is compiled with metering; without its fuel, no deadline holds.
    let no_metering = || RunError::Instantiate("the module carries no fuel metering".into());
    let fuel = instance
        .exports
        .get_global(metering::REMAINING_POINTS)
        .map_err(|_| no_metering())?
        .clone();
    let gauge = FuelGauge::of(&mut store, &fuel).ok_or_else(no_metering)?;
    Ok(Prepared {
        store,
        instance,
        io,
        memory,
        start,
        fuel,
        gauge,
        table_bytes: runnable.table_bytes,
    })
}

/// Runs `invocation` on `prepared`, an instance no request has used. Blocks: call it on
/// a worker thread, and drop the spent instance after answering.
pub fn run(
    runnable: &Runnable,
    prepared: &mut Prepared,
    invocation: Invocation,
) -> Result<Completed, RunError> {
    let started = Instant::now();
    let Prepared {
        store,
        instance,
        io,
        memory,
        start,
        fuel,
        gauge,
        ..
    } = prepared;
    let mut request = RequestIo::new(
        &runnable.name,
        invocation.log,
        &invocation.env,
        invocation.stdin,
        invocation.stdout_limit,
    );
    request.set_memory(memory.clone());
    request.set_deadline(invocation.deadline);
    if let Some(stream) = invocation.stream {
        request.set_stream(stream);
    }
    request.set_fuel(fuel.clone());
    *io.as_mut(store) = request;
    set_remaining_points(store, instance, invocation.fuel);

    let (result, left_at_deadline) =
        Watchdog::get().watch(invocation.deadline, gauge, || start.call(store, &[]));
    let run = started.elapsed();
    let remaining = match left_at_deadline {
        Some(left) => MeteringPoints::Remaining(left),
        None => get_remaining_points(store, instance),
    };
    let TakenStdout {
        rest: stdout,
        overflow,
        streamed,
        stopped,
    } = io.as_mut(store).take_stdout();
    let fuel_used = match remaining {
        MeteringPoints::Remaining(left) => invocation.fuel - left,
        MeteringPoints::Exhausted => invocation.fuel,
    };
    if overflow {
        return Err(RunError::ResponseTooLarge {
            limit: invocation.stdout_limit,
        });
    }
    match stopped {
        Some(StreamStop::Abandoned) => return Err(RunError::Abandoned),
        Some(StreamStop::Deadline) => return Err(RunError::Interrupted),
        None => {}
    }
    if let Err(error) = result {
        match error.downcast_ref::<Exit>() {
            Some(Exit(0)) => {}
            Some(Exit(code)) => return Err(RunError::Exit(*code)),
            None if error.downcast_ref::<SleptPastDeadline>().is_some() => {
                return Err(RunError::SleptPastDeadline);
            }
            // The watchdog emptied its fuel at the deadline.
            None if left_at_deadline.is_some() => return Err(RunError::Interrupted),
            None if remaining == MeteringPoints::Exhausted => {
                return Err(RunError::FuelExhausted {
                    fuel: invocation.fuel,
                });
            }
            None => {
                let memory_mib = memory.view(store).data_size() >> 20;
                if memory_mib + 1 >= runnable.memory_limit_mib {
                    return Err(RunError::MemoryLimit {
                        limit_mib: runnable.memory_limit_mib,
                    });
                }
                let kind = match error.clone().to_trap() {
                    Some(code) => format!("{code:?}"),
                    None => error.message(),
                };
                return Err(RunError::Trap { kind });
            }
        }
    }
    Ok(Completed {
        stdout,
        streamed,
        run,
        fuel_used,
        memory_bytes: memory.view(store).data_size(),
    })
}
