//! What the node's fuzz targets check (see `edge_shared::fuzz` for how targets, corpus
//! and replay fit together): the CGI response parser, and the WASI host functions fed
//! guest-chosen arguments against a real instance.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edge_shared::module_check::WASI_MODULE;
use edge_shared::wire::is_reserved_response_header;
use wasmer::{Engine, FunctionEnv, Instance, Module, Store, Type, Value};
use wasmer_middlewares::metering::set_remaining_points;

use crate::cgi::parse_response;
use crate::runtime::guest_log::LogContext;
use crate::runtime::memories::MemoryPool;
use crate::runtime::wasi::{self, RequestIo};
use crate::runtime::{engine, metering};

/// A guest's CGI output. What parses has a status a function may answer with, no header
/// reserved to the node or the connection, and a body inside the output.
pub fn cgi_response(data: &[u8]) {
    let Ok(response) = parse_response(data) else {
        return;
    };
    assert!(!response.status.is_informational(), "{}", response.status);
    for (name, _) in &response.headers {
        assert!(!is_reserved_response_header(name.as_str()), "{name}");
    }
    assert!(response.body_start <= data.len());
}

/// The largest WASI errno (`ENOTCAPABLE`): a host function answers no other number.
const MAX_ERRNO: i32 = 76;
/// Calls made per input at most.
const MAX_CALLS: usize = 64;
/// The guest's memory: one page, fixed.
const PAGE: usize = 64 << 10;

/// A module importing every host function and exporting, for each, a function of the
/// same signature that calls it: the harness calls those with the input's arguments.
struct HostCaller {
    engine: Engine,
    module: Module,
    linker: wasi::Linker,
    /// The host functions, in import order, with their parameter types.
    functions: Vec<(String, Vec<Type>)>,
}

impl HostCaller {
    fn get() -> &'static HostCaller {
        static CALLER: OnceLock<HostCaller> = OnceLock::new();
        CALLER.get_or_init(|| {
            let engine = engine::headless(1, 1024, &MemoryPool::new(0, 0));
            let mut store = Store::new(engine.clone());
            let env = FunctionEnv::new(
                &mut store,
                RequestIo::new("fuzz", LogContext::default(), &[], Bytes::new(), 0),
            );
            let mut functions = Vec::new();
            let mut wat = String::from("(module\n");
            let mut exports = String::new();
            // In name order, so a corpus input calls the same functions in every run.
            let mut imported = wasi::imports(&mut store, &env);
            imported.sort_by_key(|&(name, _)| name);
            for (name, f) in imported {
                let ty = f.ty(&store);
                let types = |ts: &[Type]| {
                    ts.iter()
                        .map(|t| format!("{t}").to_lowercase())
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                let signature = format!(
                    "(param {}) (result {})",
                    types(ty.params()),
                    types(ty.results())
                )
                .replace("(param )", "")
                .replace("(result )", "");
                wat += &format!("(import {WASI_MODULE:?} {name:?} (func ${name} {signature}))\n");
                let args: String = (0..ty.params().len())
                    .map(|i| format!("local.get {i} "))
                    .collect();
                exports += &format!("(func (export {name:?}) {signature} {args} call ${name})\n");
                functions.push((name.to_string(), ty.params().to_vec()));
            }
            wat += "(memory (export \"memory\") 1 1)\n(func (export \"_start\"))\n";
            wat += &exports;
            wat += ")";
            let wasm = wasmer::wat2wasm(wat.as_bytes()).expect("the caller module assembles");
            let artifact = engine::compile(&wasm).expect("the caller module compiles");
            let module = engine::deserialize(&engine, &artifact).expect("and loads");
            HostCaller {
                engine,
                linker: wasi::Linker::of(&module).expect("links"),
                module,
                functions,
            }
        })
    }
}

/// Host calls with guest-chosen arguments, against a real instance: a memory image
/// (up to 4 KiB, from the input), then calls, each a byte choosing the function and
/// its arguments' bytes (little-endian). Every call returns a WASI errno or stops the
/// guest with a trap (an exit, the deadline, the fuel); none panics or aborts the host.
pub fn host_calls(data: &[u8]) {
    let caller = HostCaller::get();
    let mut input = data;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, rest) = input.split_at_checked(n)?;
        input = rest;
        Some(head)
    };
    let Some(image_len) = take(2).map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])) % 4097)
    else {
        return;
    };
    let Some(image) = take(image_len) else {
        return;
    };
    let mut store = Store::new(caller.engine.clone());
    let stdin = Bytes::copy_from_slice(image);
    let env = FunctionEnv::new(
        &mut store,
        RequestIo::new(
            "fuzz",
            LogContext::of_request("fuzz"),
            &[("K".into(), "V".into())],
            stdin,
            1024,
        ),
    );
    let imports = caller.linker.externs(&mut store, &env);
    let instance =
        Instance::new_by_index(&mut store, &caller.module, &imports).expect("instantiates");
    let memory = instance
        .exports
        .get_memory("memory")
        .expect("memory")
        .clone();
    memory.view(&store).write(0, image).expect("the image fits");
    memory
        .view(&store)
        .write((PAGE - image.len()) as u64, image)
        .expect("the image fits");
    let fuel = instance
        .exports
        .get_global(metering::REMAINING_POINTS)
        .expect("metered")
        .clone();
    let io = env.as_mut(&mut store);
    io.set_memory(memory);
    io.set_fuel(fuel);
    io.set_deadline(Instant::now() + Duration::from_millis(5));
    set_remaining_points(&mut store, &instance, 1_000_000);
    for _ in 0..MAX_CALLS {
        let Some(&[choice]) = take(1) else {
            return;
        };
        let (name, params) = &caller.functions[usize::from(choice) % caller.functions.len()];
        let mut args = Vec::with_capacity(params.len());
        for ty in params {
            let value = match ty {
                Type::I64 => take(8).map(|b| Value::I64(i64::from_le_bytes(b.try_into().unwrap()))),
                _ => take(4).map(|b| Value::I32(i32::from_le_bytes(b.try_into().unwrap()))),
            };
            let Some(value) = value else {
                return;
            };
            args.push(value);
        }
        let function = instance.exports.get_function(name).expect("exported");
        match function.call(&mut store, &args) {
            Ok(results) => {
                if let Some(Value::I32(errno)) = results.first() {
                    assert!((0..=MAX_ERRNO).contains(errno), "{name}{args:?} -> {errno}");
                }
            }
            // An exit, a sleep past the deadline: the guest is over.
            Err(_) => return,
        }
    }
}
