//! The syntax tree the parser builds; every node carries its span.

use crate::span::Span;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Module {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Item {
    Fn(FnDef),
    /// A top-level `let NAME = expr`.
    Const {
        name: Ident,
        value: Expr,
        span: Span,
    },
    /// Something that failed to parse; the parser already reported it.
    Error(Span),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FnDef {
    pub name: Ident,
    pub params: Vec<Ident>,
    pub body: Block,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Block {
    pub stmts: Vec<Stmt>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stmt {
    pub kind: StmtKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum StmtKind {
    Let {
        name: Ident,
        value: Expr,
    },
    Assign {
        target: Expr,
        value: Expr,
    },
    /// `target op= value`; `+=` on a state appends to the prompt.
    AugAssign {
        target: Expr,
        op: BinOp,
        value: Expr,
    },
    If {
        /// `if c {..} else if c {..}`: one entry per condition.
        branches: Vec<(Expr, Block)>,
        otherwise: Option<Block>,
    },
    While {
        cond: Expr,
        body: Block,
    },
    For {
        targets: Vec<Ident>,
        iter: Expr,
        body: Block,
    },
    Break,
    Continue,
    Return(Option<Expr>),
    Expr(Expr),
    Error,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum ExprKind {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    FString(Vec<FStringPart>),
    Name(String),
    List(Vec<Expr>),
    Map(Vec<(Expr, Expr)>),
    /// `[elem for targets in iter if cond]`
    Comprehension {
        elem: Box<Expr>,
        targets: Vec<Ident>,
        iter: Box<Expr>,
        cond: Option<Box<Expr>>,
    },
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Call {
        callee: Box<Expr>,
        args: Vec<Arg>,
    },
    Method {
        receiver: Box<Expr>,
        name: Ident,
        args: Vec<Arg>,
    },
    Index(Box<Expr>, Box<Expr>),
    Slice {
        target: Box<Expr>,
        lo: Option<Box<Expr>>,
        hi: Option<Box<Expr>>,
    },
    Error,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum FStringPart {
    Text(String),
    Expr(Expr),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Arg {
    /// `Some` for a keyword argument `name=value`.
    pub name: Option<Ident>,
    pub value: Expr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Eq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
    And,
    Or,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
            BinOp::Eq => "==",
            BinOp::NotEq => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::In => "in",
            BinOp::NotIn => "not in",
            BinOp::And => "and",
            BinOp::Or => "or",
        }
    }
}

impl Expr {
    pub fn new(kind: ExprKind, span: Span) -> Expr {
        Expr { kind, span }
    }
}

/// A compact S-expression rendering of a module, for `--emit ast` and snapshot tests.
pub fn dump(module: &Module) -> String {
    let mut out = String::new();
    for item in &module.items {
        match item {
            Item::Fn(def) => {
                let params: Vec<&str> = def.params.iter().map(|p| p.name.as_str()).collect();
                out.push_str(&format!("(fn {} ({})\n", def.name.name, params.join(" ")));
                dump_block(&def.body, 1, &mut out);
                out.push_str(")\n");
            }
            Item::Const { name, value, .. } => {
                out.push_str(&format!("(const {} {})\n", name.name, dump_expr(value)));
            }
            Item::Error(span) => out.push_str(&format!("(error-item {span:?})\n")),
        }
    }
    out
}

fn dump_block(block: &Block, depth: usize, out: &mut String) {
    for stmt in &block.stmts {
        dump_stmt(stmt, depth, out);
    }
}

fn dump_stmt(stmt: &Stmt, depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    match &stmt.kind {
        StmtKind::Let { name, value } => {
            out.push_str(&format!("{pad}(let {} {})\n", name.name, dump_expr(value)))
        }
        StmtKind::Assign { target, value } => out.push_str(&format!(
            "{pad}(= {} {})\n",
            dump_expr(target),
            dump_expr(value)
        )),
        StmtKind::AugAssign { target, op, value } => out.push_str(&format!(
            "{pad}({}= {} {})\n",
            op.symbol(),
            dump_expr(target),
            dump_expr(value)
        )),
        StmtKind::If {
            branches,
            otherwise,
        } => {
            for (i, (cond, body)) in branches.iter().enumerate() {
                let head = if i == 0 { "if" } else { "elif" };
                out.push_str(&format!("{pad}({head} {}\n", dump_expr(cond)));
                dump_block(body, depth + 1, out);
                out.push_str(&format!("{pad})\n"));
            }
            if let Some(body) = otherwise {
                out.push_str(&format!("{pad}(else\n"));
                dump_block(body, depth + 1, out);
                out.push_str(&format!("{pad})\n"));
            }
        }
        StmtKind::While { cond, body } => {
            out.push_str(&format!("{pad}(while {}\n", dump_expr(cond)));
            dump_block(body, depth + 1, out);
            out.push_str(&format!("{pad})\n"));
        }
        StmtKind::For {
            targets,
            iter,
            body,
        } => {
            let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
            out.push_str(&format!(
                "{pad}(for ({}) {}\n",
                names.join(" "),
                dump_expr(iter)
            ));
            dump_block(body, depth + 1, out);
            out.push_str(&format!("{pad})\n"));
        }
        StmtKind::Break => out.push_str(&format!("{pad}(break)\n")),
        StmtKind::Continue => out.push_str(&format!("{pad}(continue)\n")),
        StmtKind::Return(None) => out.push_str(&format!("{pad}(return)\n")),
        StmtKind::Return(Some(e)) => out.push_str(&format!("{pad}(return {})\n", dump_expr(e))),
        StmtKind::Expr(e) => out.push_str(&format!("{pad}{}\n", dump_expr(e))),
        StmtKind::Error => out.push_str(&format!("{pad}(error-stmt {:?})\n", stmt.span)),
    }
}

fn dump_args(args: &[Arg]) -> String {
    args.iter()
        .map(|a| match &a.name {
            Some(n) => format!(" {}={}", n.name, dump_expr(&a.value)),
            None => format!(" {}", dump_expr(&a.value)),
        })
        .collect()
}

pub fn dump_expr(expr: &Expr) -> String {
    match &expr.kind {
        ExprKind::None => "none".to_string(),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Int(n) => n.to_string(),
        ExprKind::Float(x) => format!("{x:?}"),
        ExprKind::Str(s) => format!("{s:?}"),
        ExprKind::FString(parts) => {
            let parts: Vec<String> = parts
                .iter()
                .map(|p| match p {
                    FStringPart::Text(t) => format!("{t:?}"),
                    FStringPart::Expr(e) => format!("{{{}}}", dump_expr(e)),
                })
                .collect();
            format!("(f {})", parts.join(" "))
        }
        ExprKind::Name(n) => n.clone(),
        ExprKind::List(items) => {
            let items: Vec<String> = items.iter().map(dump_expr).collect();
            format!("[{}]", items.join(" "))
        }
        ExprKind::Map(entries) => {
            let entries: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}: {}", dump_expr(k), dump_expr(v)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
        ExprKind::Comprehension {
            elem,
            targets,
            iter,
            cond,
        } => {
            let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
            let cond = cond
                .as_ref()
                .map(|c| format!(" if {}", dump_expr(c)))
                .unwrap_or_default();
            format!(
                "[{} for ({}) in {}{cond}]",
                dump_expr(elem),
                names.join(" "),
                dump_expr(iter)
            )
        }
        ExprKind::Unary(op, e) => {
            let op = match op {
                UnOp::Neg => "-",
                UnOp::Not => "not",
            };
            format!("({op} {})", dump_expr(e))
        }
        ExprKind::Binary(op, l, r) => {
            format!("({} {} {})", op.symbol(), dump_expr(l), dump_expr(r))
        }
        ExprKind::Call { callee, args } => {
            format!("(call {}{})", dump_expr(callee), dump_args(args))
        }
        ExprKind::Method {
            receiver,
            name,
            args,
        } => {
            format!(
                "(.{} {}{})",
                name.name,
                dump_expr(receiver),
                dump_args(args)
            )
        }
        ExprKind::Index(obj, key) => format!("(index {} {})", dump_expr(obj), dump_expr(key)),
        ExprKind::Slice { target, lo, hi } => {
            let bound =
                |b: &Option<Box<Expr>>| b.as_ref().map_or("_".to_string(), |e| dump_expr(e));
            format!("(slice {} {} {})", dump_expr(target), bound(lo), bound(hi))
        }
        ExprKind::Error => "(error-expr)".to_string(),
    }
}
