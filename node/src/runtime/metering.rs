//! Fuel for bulk operations, by their length. wasmer's `Metering` charges each operator a
//! cost known at compile time, so `memory.fill` of 4 GiB would cost what `i32.add` does.
//! [`BulkMetering`] runs after it and instruments every bulk operation (`memory.fill`,
//! `memory.copy`, `memory.init`, `table.fill`, `table.copy`, `table.init`) to charge its
//! run-time length first: one unit per [`BYTES_PER_UNIT`] bytes (what the equivalent
//! loop of 8-byte stores would cost), one per table element. Short of fuel, the guest
//! traps as `Metering` makes it trap: the exhausted flag set, then `unreachable`.
//!
//! Each such operation takes its length last on the stack (an `i32`: memory64 and
//! several memories are refused at deploy). Wasm has no `dup`, and a middleware cannot
//! add locals, so the length is parked in a global of its own while the charge is
//! computed.
//!
//! Host copies are charged the same way, by the WASI host
//! ([`super::wasi::RequestIo::set_fuel`]).

use std::sync::Mutex;

use wasmer::sys::{FunctionMiddleware, MiddlewareError, MiddlewareReaderState, ModuleMiddleware};
use wasmer::wasmparser::{BlockType, Operator};
use wasmer::{
    ExportIndex, GlobalInit, GlobalType, LocalFunctionIndex, ModuleInfo, Mutability, Type,
};

/// Bytes a bulk memory operation or a host copy moves per unit of fuel.
pub const BYTES_PER_UNIT: u64 = 8;
/// The export `Metering` gives its remaining-points global.
pub const REMAINING_POINTS: &str = "wasmer_metering_remaining_points";
/// The export `Metering` gives its exhausted flag.
const POINTS_EXHAUSTED: &str = "wasmer_metering_points_exhausted";

/// The globals the instrumentation uses.
#[derive(Debug, Clone, Copy)]
struct Globals {
    remaining: u32,
    exhausted: u32,
    /// Where the length waits while its charge is computed.
    length: u32,
}

/// Charges bulk operations by length. Push it after `Metering`, whose globals it uses;
/// one per module compiled, like `Metering`.
#[derive(Debug, Default)]
pub struct BulkMetering {
    globals: Mutex<Option<Globals>>,
}

impl ModuleMiddleware for BulkMetering {
    fn generate_function_middleware<'a>(
        &self,
        _: LocalFunctionIndex,
    ) -> Box<dyn FunctionMiddleware<'a> + 'a> {
        let globals = self
            .globals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .expect("transform_module_info runs before functions are compiled");
        Box::new(BulkCharges { globals })
    }

    fn transform_module_info(&self, info: &mut ModuleInfo) -> Result<(), MiddlewareError> {
        let global = |name: &str| match info.exports.get(name) {
            Some(ExportIndex::Global(index)) => Ok(index.as_u32()),
            _ => Err(MiddlewareError::new(
                "BulkMetering",
                format!("no `{name}` global: push Metering first"),
            )),
        };
        let (remaining, exhausted) = (global(REMAINING_POINTS)?, global(POINTS_EXHAUSTED)?);
        let length = info
            .globals
            .push(GlobalType::new(Type::I32, Mutability::Var))
            .as_u32();
        info.global_initializers.push(GlobalInit::I32Const(0));
        *self.globals.lock().unwrap_or_else(|p| p.into_inner()) = Some(Globals {
            remaining,
            exhausted,
            length,
        });
        Ok(())
    }
}

#[derive(Debug)]
struct BulkCharges {
    globals: Globals,
}

impl BulkCharges {
    /// The charge of the length in the parking global, as an `i64` on the stack.
    fn charge(&self, shift: i64) -> [Operator<'static>; 4] {
        [
            Operator::GlobalGet {
                global_index: self.globals.length,
            },
            Operator::I64ExtendI32U,
            Operator::I64Const { value: shift },
            Operator::I64ShrU,
        ]
    }
}

impl<'a> FunctionMiddleware<'a> for BulkCharges {
    fn feed(
        &mut self,
        operator: Operator<'a>,
        state: &mut MiddlewareReaderState<'a>,
    ) -> Result<(), MiddlewareError> {
        let shift = match operator {
            Operator::MemoryFill { .. }
            | Operator::MemoryCopy { .. }
            | Operator::MemoryInit { .. } => BYTES_PER_UNIT.trailing_zeros(),
            Operator::TableFill { .. }
            | Operator::TableCopy { .. }
            | Operator::TableInit { .. } => 0,
            _ => {
                state.push_operator(operator);
                return Ok(());
            }
        };
        let shift = i64::from(shift);
        let Globals {
            remaining,
            exhausted,
            length,
        } = self.globals;
        // length -> its global; if remaining < charge { exhausted = 1; unreachable }
        state.push_operator(Operator::GlobalSet {
            global_index: length,
        });
        state.push_operator(Operator::GlobalGet {
            global_index: remaining,
        });
        state.extend(&self.charge(shift));
        state.extend(&[
            Operator::I64LtU,
            Operator::If {
                blockty: BlockType::Empty,
            },
            Operator::I32Const { value: 1 },
            Operator::GlobalSet {
                global_index: exhausted,
            },
            Operator::Unreachable,
            Operator::End,
            // remaining -= charge
            Operator::GlobalGet {
                global_index: remaining,
            },
        ]);
        state.extend(&self.charge(shift));
        state.extend(&[
            Operator::I64Sub,
            Operator::GlobalSet {
                global_index: remaining,
            },
            // The length back, for the operation.
            Operator::GlobalGet {
                global_index: length,
            },
        ]);
        state.push_operator(operator);
        Ok(())
    }
}
