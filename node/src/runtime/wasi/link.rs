//! How a module's imports are linked to the host: resolved once per module, then made
//! for each instance with only the functions the module imports.

use edge_shared::module_check::WASI_MODULE;
use wasmer::{Extern, Function, FunctionEnv, Module, Store};

use super::RequestIo;

/// Makes one host function in a store, over a request's state.
type MakeHost = fn(&mut Store, &FunctionEnv<RequestIo>) -> Function;

/// The host functions: their names, and [`host`], which makes one by name.
macro_rules! host_functions {
    ($($name:ident),* $(,)?) => {
        /// The names of the host functions, in the order [`host_functions!`] lists them.
        const PROVIDED: &[&str] = &[$(stringify!($name)),*];

        /// The host function named `name`, if the host provides one by that name.
        fn host(name: &str) -> Option<MakeHost> {
            match name {
                $( stringify!($name) => Some(|store, env| Function::new_typed_with_env(store, env, super::$name)), )*
                _ => None,
            }
        }
    };
}

host_functions!(
    args_get,
    args_sizes_get,
    clock_res_get,
    clock_time_get,
    environ_get,
    environ_sizes_get,
    fd_close,
    fd_fdstat_get,
    fd_prestat_dir_name,
    fd_prestat_get,
    fd_read,
    fd_seek,
    fd_write,
    poll_oneoff,
    proc_exit,
    random_get,
    sched_yield,
);

/// How a module's imports are linked, resolved once per module: the host functions it
/// imports, in its import order. Making an instance then builds only the functions the
/// module links, with no name lookups (`Instance::new_by_index`).
#[derive(Clone)]
pub struct Linker {
    hosts: Vec<MakeHost>,
}

impl Linker {
    /// The linker of `module`; an import the host does not provide is named in the error
    /// (the deploy-time check refuses such modules first).
    pub fn of(module: &Module) -> Result<Linker, String> {
        let hosts = module
            .imports()
            .map(|import| {
                (import.module() == WASI_MODULE)
                    .then(|| host(import.name()))
                    .flatten()
                    .ok_or_else(|| {
                        format!(
                            "the host provides no import {}::{}",
                            import.module(),
                            import.name()
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Linker { hosts })
    }

    /// The module's imports, made in `store` over `env`, in import order.
    pub fn externs(&self, store: &mut Store, env: &FunctionEnv<RequestIo>) -> Vec<Extern> {
        self.hosts
            .iter()
            .map(|make| Extern::Function(make(store, env)))
            .collect()
    }
}

/// Every host function, by name (the fuzz harness calls each).
pub fn imports(store: &mut Store, env: &FunctionEnv<RequestIo>) -> Vec<(&'static str, Function)> {
    PROVIDED
        .iter()
        .map(|&name| (name, host(name).expect("a provided name")(store, env)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::guest_log::LogContext;
    use bytes::Bytes;
    use edge_shared::module_check::HOST_IMPORTS;
    use wasmer::Instance;

    fn io(store: &mut Store) -> FunctionEnv<RequestIo> {
        FunctionEnv::new(
            store,
            RequestIo::new("f", LogContext::of_request("r"), &[], Bytes::new(), 0),
        )
    }

    #[test]
    fn host_provides_exactly_the_checked_imports() {
        let mut names = PROVIDED.to_vec();
        names.sort();
        assert_eq!(names, HOST_IMPORTS);
        assert!(PROVIDED.iter().all(|&name| host(name).is_some()));
    }

    #[test]
    fn a_linker_makes_only_what_its_module_imports_in_import_order() {
        let mut store = Store::default();
        let module = Module::new(
            &store,
            r#"(module
                (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
                (import "wasi_snapshot_preview1" "proc_exit" (func (param i32))))"#,
        )
        .unwrap();
        let env = io(&mut store);
        let externs = Linker::of(&module).unwrap().externs(&mut store, &env);
        let types: Vec<_> = externs.iter().map(|e| e.ty(&store)).collect();
        let expected: Vec<_> = module.imports().map(|i| i.ty().clone()).collect();
        assert_eq!(types, expected);
        assert!(Instance::new_by_index(&mut store, &module, &externs).is_ok());
    }

    #[test]
    fn a_linker_names_an_import_the_host_lacks() {
        let store = Store::default();
        for (namespace, name) in [
            ("wasi_snapshot_preview1", "sock_accept"),
            ("env", "fd_write"),
        ] {
            let module = Module::new(
                &store,
                format!(r#"(module (import "{namespace}" "{name}" (func)))"#),
            )
            .unwrap();
            let error = Linker::of(&module).err().unwrap();
            assert_eq!(
                error,
                format!("the host provides no import {namespace}::{name}")
            );
        }
    }

    #[test]
    fn an_import_of_the_wrong_type_is_refused_at_instantiation() {
        let mut store = Store::default();
        let module = Module::new(
            &store,
            r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32))))"#,
        )
        .unwrap();
        let env = io(&mut store);
        let externs = Linker::of(&module).unwrap().externs(&mut store, &env);
        assert!(Instance::new_by_index(&mut store, &module, &externs).is_err());
    }
}
