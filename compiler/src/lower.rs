//! Name resolution, the static checks and lowering to bytecode, in one walk over the tree.
//!
//! Checks made here need no running: undefined names, wrong arity, unknown keyword arguments of
//! primitives, `break` outside a loop, assignment to constants, and the program state used where
//! a value is expected. `s += "a" + gen("x") + "b"` is flattened into append/gen/append.

use crate::ast::*;
use crate::bytecode::*;
use crate::diagnostic::{Diagnostic, suggest};
use crate::span::Span;
use std::collections::HashMap;

/// A function the host (or the standard library) provides to scripts.
#[derive(Clone, Debug)]
pub struct HostFunction {
    pub name: String,
    pub min_args: usize,
    /// `None`: any number of positional arguments.
    pub max_args: Option<usize>,
}

/// What the compiler knows about the world outside the source file.
#[derive(Clone, Debug, Default)]
pub struct CompileEnv {
    pub functions: Vec<HostFunction>,
    /// Every method name some value type has, for did-you-mean on unknown methods.
    pub methods: Vec<String>,
}

/// Methods on states and on lists of states that the VM itself implements.
pub const STATE_METHODS: &[&str] = &[
    "fork",
    "join",
    "text",
    "messages",
    "get_meta_info",
    "get_var",
];

const ROLE_NAMES: &[&str] = &["system", "user", "assistant"];
const PRIMITIVE_NAMES: &[&str] = &["gen", "select", "system", "user", "assistant"];
const DTYPES: &[&str] = &["int", "float", "bool", "str"];
const CHOICES_METHODS: &[&str] = &[
    "token_length_normalized",
    "greedy",
    "unconditional_likelihood_normalized",
];

pub fn lower(module: &Module, env: &CompileEnv) -> (Program, Vec<Diagnostic>) {
    let mut lowerer = Lowerer::new(env);
    lowerer.declare(module);
    let program = lowerer.lower_module(module);
    (program, lowerer.diagnostics)
}

struct FunctionInfo {
    id: FunctionId,
    arity: usize,
    params: Vec<String>,
    span: Span,
}

struct Lowerer<'a> {
    env: &'a CompileEnv,
    diagnostics: Vec<Diagnostic>,
    functions: HashMap<String, FunctionInfo>,
    globals: HashMap<String, u32>,
    /// Globals that exist while lowering the current code (constants see only earlier ones).
    visible_globals: usize,
    constants: Vec<Constant>,
    string_constants: HashMap<String, u32>,
    natives: Vec<String>,
    native_ids: HashMap<String, u32>,
    call_specs: Vec<CallSpec>,
    keyword_lists: Vec<Vec<String>>,
    is_program: Vec<bool>,
}

struct LoopContext {
    continue_target: u32,
    breaks: Vec<usize>,
}

#[derive(Default)]
struct FunctionBuilder {
    code: Vec<Instr>,
    spans: Vec<Span>,
    scopes: Vec<Vec<(String, u32)>>,
    local_count: u32,
    loops: Vec<LoopContext>,
    /// The parameter that holds the program state, when this function is a program.
    state_param: Option<String>,
}

impl FunctionBuilder {
    fn emit(&mut self, instr: Instr, span: Span) -> usize {
        self.code.push(instr);
        self.spans.push(span);
        self.code.len() - 1
    }

    fn here(&self) -> u32 {
        self.code.len() as u32
    }

    fn patch(&mut self, at: usize, target: u32) {
        match &mut self.code[at] {
            Instr::Jump(t)
            | Instr::JumpIfFalse(t)
            | Instr::JumpIfFalseOrPop(t)
            | Instr::JumpIfTrueOrPop(t)
            | Instr::ForIter { exit: t } => *t = target,
            other => unreachable!("patching a non-jump {other:?}"),
        }
    }

    fn lookup(&self, name: &str) -> Option<u32> {
        self.scopes
            .iter()
            .rev()
            .flat_map(|scope| scope.iter().rev())
            .find(|(n, _)| n == name)
            .map(|(_, slot)| *slot)
    }

    fn declare(&mut self, name: &str) -> u32 {
        let scope = self.scopes.last_mut().expect("a scope is open");
        if let Some((_, slot)) = scope.iter().find(|(n, _)| n == name) {
            return *slot;
        }
        let slot = self.local_count;
        self.local_count += 1;
        scope.push((name.to_string(), slot));
        slot
    }

    fn temp(&mut self) -> u32 {
        let slot = self.local_count;
        self.local_count += 1;
        slot
    }

    fn names_in_scope(&self) -> Vec<&str> {
        self.scopes
            .iter()
            .flat_map(|s| s.iter().map(|(n, _)| n.as_str()))
            .collect()
    }
}

fn primitive_call(expr: &Expr) -> Option<&str> {
    match &expr.kind {
        ExprKind::Call { callee, .. } => match &callee.kind {
            ExprKind::Name(name) if PRIMITIVE_NAMES.contains(&name.as_str()) => Some(name),
            _ => None,
        },
        _ => None,
    }
}

/// True when `+` chains in `expr` reach a primitive call, so `s += expr` can be flattened.
fn contains_primitive(expr: &Expr) -> bool {
    match &expr.kind {
        ExprKind::Binary(BinOp::Add, l, r) => contains_primitive(l) || contains_primitive(r),
        _ => primitive_call(expr).is_some(),
    }
}

impl<'a> Lowerer<'a> {
    fn new(env: &'a CompileEnv) -> Self {
        Lowerer {
            env,
            diagnostics: Vec::new(),
            functions: HashMap::new(),
            globals: HashMap::new(),
            visible_globals: 0,
            constants: Vec::new(),
            string_constants: HashMap::new(),
            natives: Vec::new(),
            native_ids: HashMap::new(),
            call_specs: Vec::new(),
            keyword_lists: Vec::new(),
            is_program: Vec::new(),
        }
    }

    fn error(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }

    /// Registers every function and constant name, so bodies can refer to them in any order.
    fn declare(&mut self, module: &Module) {
        let mut next_id = 0;
        for item in &module.items {
            match item {
                Item::Fn(def) => {
                    if let Some(previous) = self.functions.get(&def.name.name) {
                        let previous = previous.span;
                        self.error(
                            Diagnostic::error(
                                "E0201",
                                format!("function `{}` is defined twice", def.name.name),
                                def.name.span,
                            )
                            .with_label("second definition")
                            .with_secondary(previous, "first defined here")
                            .with_help("rename one of them"),
                        );
                        continue;
                    }
                    self.check_not_reserved(&def.name);
                    self.functions.insert(
                        def.name.name.clone(),
                        FunctionInfo {
                            id: next_id,
                            arity: def.params.len(),
                            params: def.params.iter().map(|p| p.name.clone()).collect(),
                            span: def.name.span,
                        },
                    );
                    next_id += 1;
                }
                Item::Const { name, .. } => {
                    self.check_not_reserved(name);
                    if self.globals.contains_key(&name.name) {
                        self.error(
                            Diagnostic::error(
                                "E0202",
                                format!("constant `{}` is defined twice", name.name),
                                name.span,
                            )
                            .with_label("second definition"),
                        );
                        continue;
                    }
                    let slot = self.globals.len() as u32;
                    self.globals.insert(name.name.clone(), slot);
                }
                Item::Error(_) => {}
            }
        }
        for item in &module.items {
            if let Item::Const { name, .. } = item
                && self.functions.contains_key(&name.name)
            {
                self.error(
                    Diagnostic::error(
                        "E0203",
                        format!("`{}` is both a constant and a function", name.name),
                        name.span,
                    )
                    .with_label("constant defined here")
                    .with_secondary(self.functions[&name.name].span, "function defined here"),
                );
            }
        }
        self.infer_programs(module);
    }

    fn check_not_reserved(&mut self, name: &Ident) {
        if PRIMITIVE_NAMES.contains(&name.name.as_str()) {
            self.error(
                Diagnostic::error(
                    "E0204",
                    format!("`{}` is a primitive and cannot be redefined", name.name),
                    name.span,
                )
                .with_label("reserved name")
                .with_help("choose another name"),
            );
        }
    }

    /// A function is a program when its first parameter is used as a state; iterate to a fixpoint
    /// because passing the state on to another program counts as such a use.
    fn infer_programs(&mut self, module: &Module) {
        let defs: Vec<&FnDef> = module
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Fn(def) => Some(def),
                _ => None,
            })
            .filter(|def| self.functions.get(&def.name.name).map(|f| f.span) == Some(def.name.span))
            .collect();
        let mut programs: HashMap<&str, bool> =
            defs.iter().map(|d| (d.name.name.as_str(), false)).collect();
        loop {
            let mut changed = false;
            for def in &defs {
                if programs[def.name.name.as_str()] {
                    continue;
                }
                if let Some(first) = def.params.first()
                    && block_uses_state(&def.body, &first.name, &programs)
                {
                    programs.insert(&def.name.name, true);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        self.is_program = vec![false; self.functions.len() + 1];
        for (name, is_program) in programs {
            self.is_program[self.functions[name].id as usize] = is_program;
        }
    }

    fn constant(&mut self, constant: Constant) -> u32 {
        if let Constant::Str(s) = &constant
            && let Some(&i) = self.string_constants.get(s)
        {
            return i;
        }
        let i = self.constants.len() as u32;
        if let Constant::Str(s) = &constant {
            self.string_constants.insert(s.clone(), i);
        }
        self.constants.push(constant);
        i
    }

    fn native(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.native_ids.get(name) {
            return i;
        }
        let i = self.natives.len() as u32;
        self.natives.push(name.to_string());
        self.native_ids.insert(name.to_string(), i);
        i
    }

    fn keyword_list(&mut self, names: Vec<String>) -> u32 {
        if names.is_empty() {
            return NO_KEYWORDS;
        }
        if let Some(i) = self.keyword_lists.iter().position(|k| *k == names) {
            return i as u32;
        }
        self.keyword_lists.push(names);
        (self.keyword_lists.len() - 1) as u32
    }

    fn lower_module(&mut self, module: &Module) -> Program {
        let mut functions: Vec<Function> = Vec::new();
        for item in &module.items {
            if let Item::Fn(def) = item {
                if self.functions.get(&def.name.name).map(|f| f.span) != Some(def.name.span) {
                    continue;
                }
                self.visible_globals = self.globals.len();
                functions.push(self.lower_function(def));
            }
        }
        // The init function computes the constants in source order.
        let mut init = FunctionBuilder::default();
        init.scopes.push(Vec::new());
        self.visible_globals = 0;
        for item in &module.items {
            if let Item::Const { name, value, span } = item
                && let Some(&slot) = self.globals.get(&name.name)
                && slot as usize == self.visible_globals
            {
                self.lower_expr(&mut init, value);
                init.emit(Instr::StoreGlobal(slot), *span);
                self.visible_globals += 1;
            }
        }
        init.emit(Instr::PushNone, Span::default());
        init.emit(Instr::Return, Span::default());
        let init_id = functions.len() as u32;
        functions.push(Function {
            name: "<init>".to_string(),
            params: Vec::new(),
            local_count: init.local_count,
            is_program: false,
            code: init.code,
            spans: init.spans,
            span: Span::default(),
        });
        let mut globals = vec![String::new(); self.globals.len()];
        for (name, slot) in &self.globals {
            globals[*slot as usize] = name.clone();
        }
        Program {
            functions,
            constants: std::mem::take(&mut self.constants),
            globals,
            init: init_id,
            natives: std::mem::take(&mut self.natives),
            call_specs: std::mem::take(&mut self.call_specs),
            keyword_lists: std::mem::take(&mut self.keyword_lists),
        }
    }

    fn lower_function(&mut self, def: &FnDef) -> Function {
        let info = &self.functions[&def.name.name];
        let is_program = self.is_program[info.id as usize];
        let mut f = FunctionBuilder::default();
        f.scopes.push(Vec::new());
        for param in &def.params {
            if f.scopes[0].iter().any(|(n, _)| *n == param.name) {
                self.error(
                    Diagnostic::error(
                        "E0205",
                        format!("parameter `{}` appears twice", param.name),
                        param.span,
                    )
                    .with_label("duplicate parameter"),
                );
            }
            self.check_not_reserved(param);
            let slot = f.local_count;
            f.local_count += 1;
            f.scopes[0].push((param.name.clone(), slot));
        }
        if is_program {
            f.state_param = def.params.first().map(|p| p.name.clone());
        }
        self.lower_block(&mut f, &def.body);
        let end = Span::new(def.body.span.end as usize - 1, def.body.span.end as usize);
        f.emit(Instr::PushNone, end);
        f.emit(Instr::Return, end);
        Function {
            name: def.name.name.clone(),
            params: def.params.iter().map(|p| p.name.clone()).collect(),
            local_count: f.local_count,
            is_program,
            code: f.code,
            spans: f.spans,
            span: def.span,
        }
    }

    fn lower_block(&mut self, f: &mut FunctionBuilder, block: &Block) {
        f.scopes.push(Vec::new());
        for stmt in &block.stmts {
            self.lower_stmt(f, stmt);
        }
        f.scopes.pop();
    }

    fn lower_stmt(&mut self, f: &mut FunctionBuilder, stmt: &Stmt) {
        let span = stmt.span;
        match &stmt.kind {
            StmtKind::Let { name, value } => {
                self.check_not_reserved(name);
                self.lower_expr(f, value);
                let slot = f.declare(&name.name);
                f.emit(Instr::StoreLocal(slot), span);
            }
            StmtKind::Assign { target, value } => self.lower_assign(f, target, value, span),
            StmtKind::AugAssign { target, op, value } => {
                self.lower_aug_assign(f, target, *op, value, span)
            }
            StmtKind::If {
                branches,
                otherwise,
            } => {
                let mut ends = Vec::new();
                for (cond, body) in branches {
                    self.lower_expr(f, cond);
                    let skip = f.emit(Instr::JumpIfFalse(0), cond.span);
                    self.lower_block(f, body);
                    ends.push(f.emit(Instr::Jump(0), body.span));
                    let next = f.here();
                    f.patch(skip, next);
                }
                if let Some(body) = otherwise {
                    self.lower_block(f, body);
                }
                let end = f.here();
                for at in ends {
                    f.patch(at, end);
                }
            }
            StmtKind::While { cond, body } => {
                let top = f.here();
                self.lower_expr(f, cond);
                let exit = f.emit(Instr::JumpIfFalse(0), cond.span);
                let breaks = self.lower_loop_body(f, top, body, span);
                let end = f.here();
                f.patch(exit, end);
                for at in breaks {
                    f.patch(at, end);
                }
            }
            StmtKind::For {
                targets,
                iter,
                body,
            } => {
                self.lower_expr(f, iter);
                f.emit(Instr::GetIter, iter.span);
                let top = f.here();
                let for_iter = f.emit(Instr::ForIter { exit: 0 }, iter.span);
                f.scopes.push(Vec::new());
                self.store_targets(f, targets, iter.span);
                let breaks = self.lower_loop_body(f, top, body, span);
                // A `break` leaves the iterator on the stack; pop it on the way out.
                let break_target = f.here();
                if !breaks.is_empty() {
                    f.emit(Instr::Pop, span);
                }
                f.scopes.pop();
                let end = f.here();
                f.patch(for_iter, end);
                for at in breaks {
                    f.patch(at, break_target);
                }
            }
            StmtKind::Break | StmtKind::Continue => {
                let is_break = matches!(stmt.kind, StmtKind::Break);
                match f.loops.last() {
                    None => self.error(
                        Diagnostic::error(
                            "E0206",
                            format!(
                                "`{}` outside of a loop",
                                if is_break { "break" } else { "continue" }
                            ),
                            span,
                        )
                        .with_label("not inside `while` or `for`"),
                    ),
                    Some(ctx) => {
                        let target = ctx.continue_target;
                        if is_break {
                            let at = f.emit(Instr::Jump(0), span);
                            f.loops.last_mut().expect("checked").breaks.push(at);
                        } else {
                            f.emit(Instr::Jump(target), span);
                        }
                    }
                }
            }
            StmtKind::Return(value) => {
                match value {
                    Some(v) => self.lower_expr(f, v),
                    None => {
                        f.emit(Instr::PushNone, span);
                    }
                }
                f.emit(Instr::Return, span);
            }
            StmtKind::Expr(expr) => {
                self.lower_expr(f, expr);
                f.emit(Instr::Pop, span);
            }
            StmtKind::Error => {}
        }
    }

    /// Lowers a loop body that jumps back to `top`; returns the `break` jumps to patch.
    fn lower_loop_body(
        &mut self,
        f: &mut FunctionBuilder,
        top: u32,
        body: &Block,
        span: Span,
    ) -> Vec<usize> {
        f.loops.push(LoopContext {
            continue_target: top,
            breaks: Vec::new(),
        });
        self.lower_block(f, body);
        f.emit(Instr::Jump(top), span);
        f.loops.pop().expect("loop pushed").breaks
    }

    fn store_targets(&mut self, f: &mut FunctionBuilder, targets: &[Ident], span: Span) {
        if targets.len() > 1 {
            f.emit(Instr::Unpack(targets.len() as u32), span);
        }
        for target in targets {
            self.check_not_reserved(target);
            let slot = f.declare(&target.name);
            f.emit(Instr::StoreLocal(slot), target.span);
        }
    }

    fn lower_assign(&mut self, f: &mut FunctionBuilder, target: &Expr, value: &Expr, span: Span) {
        match &target.kind {
            ExprKind::Name(name) => {
                self.lower_expr(f, value);
                self.store_name(f, name, target.span, span);
            }
            ExprKind::Index(obj, key) => {
                self.lower_expr(f, obj);
                self.lower_expr(f, key);
                self.lower_expr(f, value);
                f.emit(Instr::StoreIndex, span);
            }
            _ => self.error(
                Diagnostic::error("E0207", "cannot assign to this expression", target.span)
                    .with_label("not a variable or an index")
                    .with_help("assign to a name (`x = ...`) or an item (`xs[i] = ...`)"),
            ),
        }
    }

    fn store_name(&mut self, f: &mut FunctionBuilder, name: &str, name_span: Span, span: Span) {
        if let Some(slot) = f.lookup(name) {
            f.emit(Instr::StoreLocal(slot), span);
        } else if self.globals.contains_key(name) {
            self.error(
                Diagnostic::error(
                    "E0208",
                    format!("cannot assign to constant `{name}`"),
                    name_span,
                )
                .with_label("top-level `let`s are constants")
                .with_help(format!(
                    "declare a local copy with `let {name} = ...` inside the function"
                )),
            );
        } else {
            let suggestion = suggest(name, f.names_in_scope());
            let mut d = Diagnostic::error(
                "E0209",
                format!("assignment to undeclared variable `{name}`"),
                name_span,
            )
            .with_label("not declared");
            d = match suggestion {
                Some(s) => d.with_help(format!(
                    "did you mean `{s}`? To declare a new variable write `let {name} = ...`"
                )),
                None => d.with_help(format!("declare it first with `let {name} = ...`")),
            };
            self.error(d);
        }
    }

    fn lower_aug_assign(
        &mut self,
        f: &mut FunctionBuilder,
        target: &Expr,
        op: BinOp,
        value: &Expr,
        span: Span,
    ) {
        if op == BinOp::Add && contains_primitive(value) {
            // `s += a + gen(..) + b`: append each piece to the state in order.
            self.lower_expr(f, target);
            self.lower_appends(f, value);
            f.emit(Instr::Pop, span);
            return;
        }
        let instr = match op {
            BinOp::Add => Instr::AddAssign,
            BinOp::Sub => Instr::Sub,
            BinOp::Mul => Instr::Mul,
            BinOp::Div => Instr::Div,
            _ => unreachable!("the parser makes only + - * / assignments"),
        };
        match &target.kind {
            ExprKind::Name(name) => {
                self.lower_expr(f, target);
                self.lower_expr(f, value);
                f.emit(instr, span);
                self.store_name(f, name, target.span, span);
            }
            ExprKind::Index(obj, key) => {
                let obj_slot = f.temp();
                let key_slot = f.temp();
                self.lower_expr(f, obj);
                f.emit(Instr::StoreLocal(obj_slot), obj.span);
                self.lower_expr(f, key);
                f.emit(Instr::StoreLocal(key_slot), key.span);
                f.emit(Instr::LoadLocal(obj_slot), span);
                f.emit(Instr::LoadLocal(key_slot), span);
                f.emit(Instr::LoadLocal(obj_slot), span);
                f.emit(Instr::LoadLocal(key_slot), span);
                f.emit(Instr::Index, target.span);
                self.lower_expr(f, value);
                f.emit(instr, span);
                f.emit(Instr::StoreIndex, span);
            }
            _ => self.error(
                Diagnostic::error("E0207", "cannot assign to this expression", target.span)
                    .with_label("not a variable or an index"),
            ),
        }
    }

    /// Appends `expr` to the state on top of the stack, flattening `+` chains and roles.
    fn lower_appends(&mut self, f: &mut FunctionBuilder, expr: &Expr) {
        if let ExprKind::Binary(BinOp::Add, l, r) = &expr.kind
            && contains_primitive(expr)
        {
            self.lower_appends(f, l);
            self.lower_appends(f, r);
            return;
        }
        match (primitive_call(expr), &expr.kind) {
            (Some(name), ExprKind::Call { args, .. }) => {
                if let Some(role) = Role::from_name(name) {
                    let Some(arg) = self.role_argument(name, args, expr.span) else {
                        return;
                    };
                    f.emit(Instr::RoleBegin(role), expr.span);
                    self.lower_appends(f, arg);
                    f.emit(Instr::RoleEnd(role), expr.span);
                } else {
                    let spec = self.lower_primitive_args(f, name, args, expr.span);
                    f.emit(Instr::CallInto(spec), expr.span);
                }
            }
            _ => {
                self.lower_expr(f, expr);
                f.emit(Instr::AppendState, expr.span);
            }
        }
    }

    fn role_argument<'e>(&mut self, name: &str, args: &'e [Arg], span: Span) -> Option<&'e Expr> {
        match args {
            [Arg { name: None, value }] => Some(value),
            _ => {
                self.error(
                    Diagnostic::error(
                        "E0210",
                        format!("`{name}` takes exactly one argument"),
                        span,
                    )
                    .with_label(format!("called with {} arguments", args.len()))
                    .with_help(format!(
                        "write `{name}(\"text\")` or `{name}(gen(\"var\"))`"
                    )),
                );
                None
            }
        }
    }

    /// Pushes a primitive's arguments and returns its call-spec index.
    fn lower_primitive_args(
        &mut self,
        f: &mut FunctionBuilder,
        name: &str,
        args: &[Arg],
        span: Span,
    ) -> u32 {
        let (kind, accepted) = if name == "gen" {
            (PrimitiveKind::Gen, GenParam::GEN)
        } else {
            (PrimitiveKind::Select, GenParam::SELECT)
        };
        let mut params = Vec::new();
        let mut positional = 0;
        for arg in args {
            let param = match &arg.name {
                None => {
                    let p = accepted.get(positional).copied();
                    positional += 1;
                    if p.is_none() {
                        self.error(
                            Diagnostic::error(
                                "E0211",
                                format!("too many positional arguments to `{name}`"),
                                arg.value.span,
                            )
                            .with_label("extra argument")
                            .with_help("pass the other parameters by name, e.g. `max_tokens=64`"),
                        );
                    }
                    p
                }
                Some(kw) => {
                    let p = accepted.iter().copied().find(|p| p.name() == kw.name);
                    if p.is_none() {
                        let names = accepted.iter().map(|p| p.name());
                        let help = match suggest(&kw.name, names) {
                            Some(s) => format!("did you mean `{s}`?"),
                            None => format!(
                                "`{name}` accepts: {}",
                                accepted
                                    .iter()
                                    .map(|p| p.name())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        };
                        self.error(
                            Diagnostic::error(
                                "E0212",
                                format!("unknown keyword argument `{}` of `{name}`", kw.name),
                                kw.span,
                            )
                            .with_label("not a parameter of this primitive")
                            .with_help(help),
                        );
                    }
                    p
                }
            };
            if let Some(p) = param {
                if params.iter().any(|(_, q)| *q == Some(p)) {
                    self.error(
                        Diagnostic::error(
                            "E0213",
                            format!("`{}` is given twice", p.name()),
                            arg.value.span,
                        )
                        .with_label("repeated argument"),
                    );
                    continue;
                }
                self.check_literal_param(name, p, &arg.value);
                self.lower_expr(f, &arg.value);
                params.push((arg.value.span, Some(p)));
            }
        }
        if kind == PrimitiveKind::Select
            && !params.iter().any(|(_, p)| *p == Some(GenParam::Choices))
        {
            self.error(
                Diagnostic::error("E0214", "`select` needs `choices`", span)
                    .with_label("no choices given")
                    .with_help("write `select(\"name\", choices=[\"a\", \"b\"])`"),
            );
        }
        self.call_specs.push(CallSpec {
            kind,
            params: params.into_iter().filter_map(|(_, p)| p).collect(),
        });
        (self.call_specs.len() - 1) as u32
    }

    /// Checks literal values of enumerated parameters at compile time.
    fn check_literal_param(&mut self, primitive: &str, param: GenParam, value: &Expr) {
        let allowed: &[&str] = match param {
            GenParam::Dtype => DTYPES,
            GenParam::ChoicesMethod => CHOICES_METHODS,
            _ => return,
        };
        if let ExprKind::Str(s) = &value.kind
            && !allowed.contains(&s.as_str())
        {
            self.error(
                Diagnostic::error(
                    "E0215",
                    format!("`{s}` is not a valid `{}` for `{primitive}`", param.name()),
                    value.span,
                )
                .with_label("unknown value")
                .with_help(format!("one of: {}", allowed.join(", "))),
            );
        }
    }

    fn check_not_state(&mut self, f: &FunctionBuilder, expr: &Expr, context: &str) {
        if let ExprKind::Name(name) = &expr.kind
            && f.state_param.as_deref() == Some(name.as_str())
            && f.lookup(name) == Some(0)
        {
            self.error(
                Diagnostic::error(
                    "E0216",
                    format!("the program state `{name}` is used as a value {context}"),
                    expr.span,
                )
                .with_label("this is the state, not a string")
                .with_help(format!(
                    "append to it with `{name} += ...`, read a variable with `{name}[\"var\"]`, or get the prompt with `{name}.text()`"
                )),
            );
        }
    }

    fn lower_expr(&mut self, f: &mut FunctionBuilder, expr: &Expr) {
        let span = expr.span;
        match &expr.kind {
            ExprKind::None => {
                f.emit(Instr::PushNone, span);
            }
            ExprKind::Bool(b) => {
                f.emit(Instr::PushBool(*b), span);
            }
            ExprKind::Int(n) => {
                f.emit(Instr::PushInt(*n), span);
            }
            ExprKind::Float(x) => {
                let c = self.constant(Constant::Float(*x));
                f.emit(Instr::Const(c), span);
            }
            ExprKind::Str(s) => {
                self.warn_uninterpolated(f, s, span);
                let c = self.constant(Constant::Str(s.clone()));
                f.emit(Instr::Const(c), span);
            }
            ExprKind::FString(parts) => {
                // `BuildString` shows each value as `str()` does; a lone `{expr}` has none.
                let lone_value = parts.len() == 1 && matches!(parts[0], FStringPart::Expr(_));
                for part in parts {
                    match part {
                        FStringPart::Text(t) => {
                            let c = self.constant(Constant::Str(t.clone()));
                            f.emit(Instr::Const(c), span);
                        }
                        FStringPart::Expr(e) => {
                            self.check_not_state(f, e, "in an f-string");
                            self.lower_expr(f, e);
                            if lone_value {
                                f.emit(Instr::FormatValue, e.span);
                            }
                        }
                    }
                }
                if !lone_value {
                    f.emit(Instr::BuildString(parts.len() as u32), span);
                }
            }
            ExprKind::Name(name) => self.lower_name(f, name, span),
            ExprKind::List(items) => {
                for item in items {
                    self.check_not_state(f, item, "in a list");
                    self.lower_expr(f, item);
                }
                f.emit(Instr::BuildList(items.len() as u32), span);
            }
            ExprKind::Map(entries) => {
                for (k, v) in entries {
                    self.lower_expr(f, k);
                    self.lower_expr(f, v);
                }
                f.emit(Instr::BuildMap(entries.len() as u32), span);
            }
            ExprKind::Comprehension {
                elem,
                targets,
                iter,
                cond,
            } => {
                f.emit(Instr::BuildList(0), span);
                self.lower_expr(f, iter);
                f.emit(Instr::GetIter, iter.span);
                let top = f.here();
                let for_iter = f.emit(Instr::ForIter { exit: 0 }, iter.span);
                f.scopes.push(Vec::new());
                self.store_targets(f, targets, iter.span);
                if let Some(cond) = cond {
                    self.lower_expr(f, cond);
                    f.emit(Instr::JumpIfFalse(top), cond.span);
                }
                self.lower_expr(f, elem);
                f.emit(Instr::ListAppendUnder(1), elem.span);
                f.emit(Instr::Jump(top), span);
                f.scopes.pop();
                let end = f.here();
                f.patch(for_iter, end);
            }
            ExprKind::Unary(op, operand) => {
                self.check_not_state(f, operand, "in an operation");
                self.lower_expr(f, operand);
                f.emit(
                    match op {
                        UnOp::Neg => Instr::Neg,
                        UnOp::Not => Instr::Not,
                    },
                    span,
                );
            }
            ExprKind::Binary(op @ (BinOp::And | BinOp::Or), l, r) => {
                self.lower_expr(f, l);
                let jump = f.emit(
                    if *op == BinOp::And {
                        Instr::JumpIfFalseOrPop(0)
                    } else {
                        Instr::JumpIfTrueOrPop(0)
                    },
                    span,
                );
                self.lower_expr(f, r);
                let end = f.here();
                f.patch(jump, end);
            }
            ExprKind::Binary(op, l, r) => {
                let context = format!("with `{}`", op.symbol());
                self.check_not_state(f, l, &context);
                self.check_not_state(f, r, &context);
                self.lower_expr(f, l);
                self.lower_expr(f, r);
                let instr = match op {
                    BinOp::Add => Instr::Add,
                    BinOp::Sub => Instr::Sub,
                    BinOp::Mul => Instr::Mul,
                    BinOp::Div => Instr::Div,
                    BinOp::Mod => Instr::Mod,
                    BinOp::Eq => Instr::Eq,
                    BinOp::NotEq => Instr::NotEq,
                    BinOp::Lt => Instr::Lt,
                    BinOp::Le => Instr::Le,
                    BinOp::Gt => Instr::Gt,
                    BinOp::Ge => Instr::Ge,
                    BinOp::In => Instr::In,
                    BinOp::NotIn => Instr::NotIn,
                    BinOp::And | BinOp::Or => unreachable!("handled above"),
                };
                f.emit(instr, span);
            }
            ExprKind::Call { callee, args } => self.lower_call(f, callee, args, span),
            ExprKind::Method {
                receiver,
                name,
                args,
            } => {
                self.check_method_name(name);
                self.lower_expr(f, receiver);
                let (argc, keywords) = self.lower_args(f, args, true);
                let name_const = self.constant(Constant::Str(name.name.clone()));
                f.emit(
                    Instr::CallMethod {
                        name: name_const,
                        argc,
                        keywords,
                    },
                    span,
                );
            }
            ExprKind::Index(obj, key) => {
                self.lower_expr(f, obj);
                self.lower_expr(f, key);
                f.emit(Instr::Index, span);
            }
            ExprKind::Slice { target, lo, hi } => {
                self.lower_expr(f, target);
                if let Some(lo) = lo {
                    self.lower_expr(f, lo);
                }
                if let Some(hi) = hi {
                    self.lower_expr(f, hi);
                }
                f.emit(
                    Instr::Slice {
                        lo: lo.is_some(),
                        hi: hi.is_some(),
                    },
                    span,
                );
            }
            ExprKind::Error => {
                f.emit(Instr::PushNone, span);
            }
        }
    }

    /// A plain string holding `{name}` for a name in scope is almost always a forgotten `f`.
    fn warn_uninterpolated(&mut self, f: &FunctionBuilder, s: &str, span: Span) {
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else { break };
            let name = &after[..close];
            if !name.is_empty()
                && name.chars().all(|c| c.is_alphanumeric() || c == '_')
                && (f.lookup(name).is_some() || self.globals.contains_key(name))
            {
                self.diagnostics.push(
                    Diagnostic::warning(
                        "W0001",
                        format!("this string contains `{{{name}}}` but is not an f-string"),
                        span,
                    )
                    .with_label(format!("`{{{name}}}` is kept as literal text"))
                    .with_help(
                        "prefix the string with `f` to interpolate, e.g. f\"...{name}...\""
                            .replace("{name}", &format!("{{{name}}}")),
                    ),
                );
                return;
            }
            rest = &after[close..];
        }
    }

    fn check_method_name(&mut self, name: &Ident) {
        let known =
            STATE_METHODS.contains(&name.name.as_str()) || self.env.methods.contains(&name.name);
        if !known && !self.env.methods.is_empty() {
            let candidates = STATE_METHODS
                .iter()
                .copied()
                .chain(self.env.methods.iter().map(|s| s.as_str()));
            let mut d = Diagnostic::error(
                "E0217",
                format!("no value has a method `{}`", name.name),
                name.span,
            )
            .with_label("unknown method");
            if let Some(s) = suggest(&name.name, candidates) {
                d = d.with_help(format!("did you mean `{s}`?"));
            }
            self.error(d);
        }
    }

    fn lower_name(&mut self, f: &mut FunctionBuilder, name: &str, span: Span) {
        if let Some(slot) = f.lookup(name) {
            f.emit(Instr::LoadLocal(slot), span);
        } else if let Some(&slot) = self.globals.get(name) {
            if (slot as usize) >= self.visible_globals {
                self.error(
                    Diagnostic::error(
                        "E0218",
                        format!("constant `{name}` is used before it is defined"),
                        span,
                    )
                    .with_label("defined further down")
                    .with_help("move this constant below the one it uses"),
                );
            }
            f.emit(Instr::LoadGlobal(slot), span);
        } else if let Some(info) = self.functions.get(name) {
            f.emit(Instr::LoadFunction(info.id), span);
        } else if PRIMITIVE_NAMES.contains(&name) {
            self.error(
                Diagnostic::error("E0219", format!("`{name}` must be called"), span)
                    .with_label("primitive used as a value")
                    .with_help(format!("write `{name}(...)`")),
            );
        } else {
            self.undefined_name(f, name, span);
        }
    }

    fn undefined_name(&mut self, f: &FunctionBuilder, name: &str, span: Span) {
        let mut candidates: Vec<&str> = f.names_in_scope();
        candidates.extend(self.globals.keys().map(|s| s.as_str()));
        candidates.extend(self.functions.keys().map(|s| s.as_str()));
        candidates.extend(self.env.functions.iter().map(|h| h.name.as_str()));
        candidates.extend(PRIMITIVE_NAMES);
        let help = match suggest(name, candidates) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("declare it with `let {name} = ...` or pass it as a parameter"),
        };
        let message = format!("undefined name `{name}`");
        self.error(
            Diagnostic::error("E0220", message, span)
                .with_label("not found in this scope")
                .with_help(help),
        );
    }

    /// Pushes positional then keyword arguments; returns (positional count, keyword list).
    fn lower_args(
        &mut self,
        f: &mut FunctionBuilder,
        args: &[Arg],
        allow_state: bool,
    ) -> (u32, u32) {
        let mut positional = 0;
        let mut names = Vec::new();
        for arg in args.iter() {
            if arg.name.is_none() {
                if !names.is_empty() {
                    self.error(
                        Diagnostic::error(
                            "E0221",
                            "positional argument after a keyword argument",
                            arg.value.span,
                        )
                        .with_label("move this before the keyword arguments"),
                    );
                }
                if !allow_state {
                    self.check_not_state(f, &arg.value, "as an argument");
                }
                self.lower_expr(f, &arg.value);
                positional += 1;
            }
        }
        for arg in args {
            if let Some(name) = &arg.name {
                self.lower_expr(f, &arg.value);
                names.push(name.name.clone());
            }
        }
        (positional, self.keyword_list(names))
    }

    fn lower_call(&mut self, f: &mut FunctionBuilder, callee: &Expr, args: &[Arg], span: Span) {
        let ExprKind::Name(name) = &callee.kind else {
            self.lower_expr(f, callee);
            let (argc, keywords) = self.lower_args(f, args, true);
            if keywords != NO_KEYWORDS {
                self.error(
                    Diagnostic::error(
                        "E0222",
                        "keyword arguments need a function called by name",
                        span,
                    )
                    .with_label("called through a value"),
                );
            }
            f.emit(Instr::CallValue { argc }, span);
            return;
        };
        if f.lookup(name).is_some() || self.globals.contains_key(name) {
            self.lower_expr(f, callee);
            let (argc, _) = self.lower_args(f, args, true);
            f.emit(Instr::CallValue { argc }, span);
            return;
        }
        if let Some(info) = self.functions.get(name) {
            let id = info.id;
            let arity = info.arity;
            let params = info.params.clone();
            self.lower_user_call(f, name, id, arity, &params, args, span, callee.span);
            return;
        }
        if ROLE_NAMES.contains(&name.as_str()) {
            let role = Role::from_name(name).expect("a role name");
            if let Some(arg) = self.role_argument(name, args, span) {
                self.lower_expr(f, arg);
                f.emit(Instr::MakeRole(role), span);
            } else {
                f.emit(Instr::PushNone, span);
            }
            return;
        }
        if name == "gen" || name == "select" {
            let spec = self.lower_primitive_args(f, name, args, span);
            f.emit(Instr::MakeCall(spec), span);
            return;
        }
        if let Some(host) = self.env.functions.iter().find(|h| h.name == *name) {
            let positional = args.iter().filter(|a| a.name.is_none()).count();
            let too_few = positional < host.min_args;
            let too_many = host.max_args.is_some_and(|max| positional > max);
            if too_few || too_many {
                let expected = match host.max_args {
                    Some(max) if max == host.min_args => format!("{max}"),
                    Some(max) => format!("{} to {max}", host.min_args),
                    None => format!("at least {}", host.min_args),
                };
                self.error(
                    Diagnostic::error(
                        "E0223",
                        format!("`{name}` takes {expected} arguments but {positional} were given"),
                        span,
                    )
                    .with_label("wrong number of arguments"),
                );
            }
            let native = self.native(name);
            let (argc, keywords) = self.lower_args(f, args, false);
            f.emit(
                Instr::CallNative {
                    native,
                    argc,
                    keywords,
                },
                span,
            );
            return;
        }
        self.undefined_name(f, name, callee.span);
        for arg in args {
            self.lower_expr(f, &arg.value);
            f.emit(Instr::Pop, arg.value.span);
        }
        f.emit(Instr::PushNone, span);
    }

    #[allow(clippy::too_many_arguments)]
    fn lower_user_call(
        &mut self,
        f: &mut FunctionBuilder,
        name: &str,
        id: FunctionId,
        arity: usize,
        params: &[String],
        args: &[Arg],
        span: Span,
        callee_span: Span,
    ) {
        // Keyword arguments to a function of this file are matched to its parameters here.
        let mut slots: Vec<Option<&Expr>> = vec![None; arity];
        let mut positional = 0;
        let mut ok = true;
        for arg in args {
            match &arg.name {
                None => {
                    if positional < arity {
                        slots[positional] = Some(&arg.value);
                    }
                    positional += 1;
                }
                Some(kw) => match params.iter().position(|p| *p == kw.name) {
                    Some(i) if slots[i].is_none() => slots[i] = Some(&arg.value),
                    Some(_) => {
                        ok = false;
                        self.error(
                            Diagnostic::error(
                                "E0213",
                                format!("`{}` is given twice", kw.name),
                                kw.span,
                            )
                            .with_label("repeated argument"),
                        );
                    }
                    None => {
                        ok = false;
                        let help = match suggest(&kw.name, params.iter().map(|s| s.as_str())) {
                            Some(s) => format!("did you mean `{s}`?"),
                            None => format!("`{name}` takes: {}", params.join(", ")),
                        };
                        self.error(
                            Diagnostic::error(
                                "E0224",
                                format!("`{name}` has no parameter `{}`", kw.name),
                                kw.span,
                            )
                            .with_label("unknown parameter")
                            .with_help(help),
                        );
                    }
                },
            }
        }
        let given = args.len();
        if ok && (positional > arity || slots.iter().any(|s| s.is_none())) {
            let missing: Vec<&str> = slots
                .iter()
                .zip(params)
                .filter(|(s, _)| s.is_none())
                .map(|(_, p)| p.as_str())
                .collect();
            let mut d = Diagnostic::error(
                "E0225",
                format!("`{name}` takes {arity} arguments but {given} were given"),
                span,
            )
            .with_label("wrong number of arguments")
            .with_secondary(
                self.functions[name].span,
                format!("`{name}` is defined here"),
            );
            if !missing.is_empty() && positional <= arity {
                d = d.with_help(format!("missing: {}", missing.join(", ")));
            }
            self.error(d);
        }
        let _ = callee_span;
        for slot in &slots {
            match slot {
                Some(e) => self.lower_expr(f, e),
                None => {
                    f.emit(Instr::PushNone, span);
                }
            }
        }
        f.emit(
            Instr::Call {
                function: id,
                argc: arity as u32,
            },
            span,
        );
    }
}

fn block_uses_state(block: &Block, state: &str, programs: &HashMap<&str, bool>) -> bool {
    block
        .stmts
        .iter()
        .any(|s| stmt_uses_state(s, state, programs))
}

fn stmt_uses_state(stmt: &Stmt, state: &str, programs: &HashMap<&str, bool>) -> bool {
    let e = |x: &Expr| expr_uses_state(x, state, programs);
    match &stmt.kind {
        StmtKind::AugAssign {
            target,
            op: BinOp::Add,
            value,
        } if matches!(&target.kind, ExprKind::Name(n) if n == state)
            && contains_primitive(value) =>
        {
            true
        }
        StmtKind::Let { value, .. } => e(value),
        StmtKind::Assign { target, value } | StmtKind::AugAssign { target, value, .. } => {
            e(target) || e(value)
        }
        StmtKind::If {
            branches,
            otherwise,
        } => {
            branches
                .iter()
                .any(|(c, b)| e(c) || block_uses_state(b, state, programs))
                || otherwise
                    .as_ref()
                    .is_some_and(|b| block_uses_state(b, state, programs))
        }
        StmtKind::While { cond, body } => e(cond) || block_uses_state(body, state, programs),
        StmtKind::For { iter, body, .. } => e(iter) || block_uses_state(body, state, programs),
        StmtKind::Return(Some(x)) | StmtKind::Expr(x) => e(x),
        _ => false,
    }
}

fn expr_uses_state(expr: &Expr, state: &str, programs: &HashMap<&str, bool>) -> bool {
    let is_state = |x: &Expr| matches!(&x.kind, ExprKind::Name(n) if n == state);
    let e = |x: &Expr| expr_uses_state(x, state, programs);
    match &expr.kind {
        ExprKind::Method {
            receiver,
            name,
            args,
        } => {
            (is_state(receiver) && STATE_METHODS.contains(&name.name.as_str()))
                || e(receiver)
                || args.iter().any(|a| e(&a.value))
        }
        ExprKind::Call { callee, args } => {
            let passes_state = matches!(&callee.kind, ExprKind::Name(f) if programs.get(f.as_str()) == Some(&true))
                && args
                    .first()
                    .is_some_and(|a| a.name.is_none() && is_state(&a.value));
            passes_state || args.iter().any(|a| e(&a.value))
        }
        ExprKind::Binary(_, l, r) => e(l) || e(r),
        ExprKind::Unary(_, x) => e(x),
        ExprKind::List(xs) => xs.iter().any(e),
        ExprKind::Index(obj, key) => e(obj) || e(key),
        ExprKind::Comprehension {
            elem, iter, cond, ..
        } => e(elem) || e(iter) || cond.as_ref().is_some_and(|c| e(c)),
        _ => false,
    }
}
