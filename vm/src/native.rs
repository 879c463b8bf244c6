//! Functions and methods implemented in Rust: the standard library and whatever the host
//! registers. Scripts reach the outside world only through these.

use crate::value::{Str, Value};
use indexmap::IndexMap;
use sglc_compiler::HostFunction;
use std::collections::HashMap;
use std::sync::Arc;

/// What a native function may touch besides its arguments.
pub struct NativeCtx<'a> {
    /// Lines printed by `print`, kept with the program's result.
    pub output: &'a mut Vec<String>,
    /// The program's limits: a native that builds a large value checks them first.
    pub limits: &'a crate::interp::Limits,
}

/// Keyword arguments as passed: names and values in call order.
pub type Keywords<'a> = &'a [(Str, Value)];

pub type NativeFn =
    Arc<dyn Fn(&mut NativeCtx, &[Value], Keywords) -> Result<Value, String> + Send + Sync>;
pub type MethodFn =
    Arc<dyn Fn(&mut NativeCtx, &Value, &[Value], Keywords) -> Result<Value, String> + Send + Sync>;

#[derive(Clone)]
pub struct NativeFunction {
    pub signature: HostFunction,
    pub call: NativeFn,
    /// Compiled code may call it (see `Natives::mark_jit_safe`).
    pub jit_safe: bool,
}

/// The table of native functions (by name) and methods (by receiver type and name).
#[derive(Clone, Default)]
pub struct Natives {
    functions: IndexMap<String, NativeFunction>,
    /// By receiver type, then name; `methods_named` resolves a name once per program at link time.
    methods: HashMap<&'static str, HashMap<String, MethodFn>>,
    /// Methods compiled code may call, by receiver type and name.
    jit_safe_methods: std::collections::HashSet<(&'static str, String)>,
}

impl Natives {
    pub fn new() -> Natives {
        Natives::default()
    }

    /// Registers a function taking `min_args..=max_args` positional arguments (`None`: any).
    pub fn register(
        &mut self,
        name: &str,
        min_args: usize,
        max_args: Option<usize>,
        f: impl Fn(&mut NativeCtx, &[Value], Keywords) -> Result<Value, String> + Send + Sync + 'static,
    ) {
        self.functions.insert(
            name.to_string(),
            NativeFunction {
                signature: HostFunction {
                    name: name.to_string(),
                    min_args,
                    max_args,
                },
                call: Arc::new(f),
                jit_safe: false,
            },
        );
    }

    /// Registers a host function over JSON data: the simplest way for a host to give scripts
    /// a capability (a lookup, a tool, a database query).
    pub fn register_json(
        &mut self,
        name: &str,
        arity: usize,
        f: impl Fn(&[serde_json::Value]) -> Result<serde_json::Value, String> + Send + Sync + 'static,
    ) {
        self.register(name, arity, Some(arity), move |_, args, _| {
            let args: Vec<serde_json::Value> = args.iter().map(Value::to_json).collect();
            f(&args).map(|v| Value::from_json(&v))
        });
    }

    /// Registers a method on values of type `type_name` (as `Value::type_name` reports it).
    pub fn register_method(
        &mut self,
        type_name: &'static str,
        name: &str,
        f: impl Fn(&mut NativeCtx, &Value, &[Value], Keywords) -> Result<Value, String>
        + Send
        + Sync
        + 'static,
    ) {
        self.methods
            .entry(type_name)
            .or_default()
            .insert(name.to_string(), Arc::new(f));
        self.jit_safe_methods.remove(&(type_name, name.to_string()));
    }

    /// Lets compiled code call these functions. Only for functions that touch nothing but
    /// their arguments (no output, no host state) and that, when they fail, have changed
    /// nothing: compiled code hands a failing call back to the interpreter, which runs it
    /// again to raise the error. Registering a function again withdraws the mark.
    pub fn mark_jit_safe(&mut self, names: &[&str]) {
        for name in names {
            if let Some(f) = self.functions.get_mut(*name) {
                f.jit_safe = true;
            }
        }
    }

    /// `mark_jit_safe` for methods on values of type `type_name`. A method may change its
    /// receiver (`append`), but only once it cannot fail any more.
    pub fn mark_jit_safe_methods(&mut self, type_name: &'static str, names: &[&str]) {
        for name in names {
            if self
                .methods
                .get(type_name)
                .is_some_and(|m| m.contains_key(*name))
            {
                self.jit_safe_methods.insert((type_name, name.to_string()));
            }
        }
    }

    /// Whether every method called `name`, on any receiver type, may be called from compiled
    /// code (a call site does not know its receiver's type).
    pub fn method_jit_safe(&self, name: &str) -> bool {
        self.methods.iter().all(|(type_name, by_name)| {
            !by_name.contains_key(name)
                || self
                    .jit_safe_methods
                    .contains(&(*type_name, name.to_string()))
        })
    }

    pub fn function(&self, name: &str) -> Option<&NativeFunction> {
        self.functions.get(name)
    }

    /// Every receiver type with a method called `name`, and that method.
    pub fn methods_named(&self, name: &str) -> Vec<(&'static str, MethodFn)> {
        self.methods
            .iter()
            .filter_map(|(type_name, by_name)| Some((*type_name, by_name.get(name)?.clone())))
            .collect()
    }

    /// What the compiler needs to check calls: every function's signature and every method name.
    pub fn compile_env(&self) -> sglc_compiler::CompileEnv {
        let mut methods: Vec<String> = self
            .methods
            .values()
            .flat_map(|by_name| by_name.keys().cloned())
            .collect();
        methods.sort();
        methods.dedup();
        sglc_compiler::CompileEnv {
            functions: self
                .functions
                .values()
                .map(|f| f.signature.clone())
                .collect(),
            methods,
        }
    }
}
