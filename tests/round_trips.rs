//! Round trips: a syntax tree printed as source parses back to the same tree, and compiled
//! bytecode survives serialisation unchanged.

use proptest::prelude::*;
use sglc_compiler::ast::*;
use sglc_compiler::{Span, ast, pretty};

const NOWHERE: Span = Span { start: 0, end: 0 };

fn e(kind: ExprKind) -> Expr {
    Expr::new(kind, NOWHERE)
}

fn ident(name: &str) -> Ident {
    Ident {
        name: name.to_string(),
        span: NOWHERE,
    }
}

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "xs", "s", "total", "item_2", "_x"]).prop_map(String::from)
}

/// Any text, weighted towards what a string literal must escape.
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => any::<char>(),
            2 => prop::sample::select(vec!['"', '\'', '\\', '\n', '\t', '\r', '{', '}', '\0', '\u{85}', '\u{7f}']),
        ],
        0..12,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn leaf() -> impl Strategy<Value = Expr> {
    prop_oneof![
        Just(e(ExprKind::None)),
        any::<bool>().prop_map(|b| e(ExprKind::Bool(b))),
        (0..=i64::MAX).prop_map(|n| e(ExprKind::Int(n))),
        prop_oneof![0.0..1e6f64, Just(1e300), Just(2.5e-8)].prop_map(|x| e(ExprKind::Float(x))),
        text().prop_map(|t| e(ExprKind::Str(t))),
        name().prop_map(|n| e(ExprKind::Name(n))),
    ]
}

fn binop() -> impl Strategy<Value = BinOp> {
    prop::sample::select(vec![
        BinOp::Add,
        BinOp::Sub,
        BinOp::Mul,
        BinOp::Div,
        BinOp::Mod,
        BinOp::Eq,
        BinOp::NotEq,
        BinOp::Lt,
        BinOp::Le,
        BinOp::Gt,
        BinOp::Ge,
        BinOp::In,
        BinOp::NotIn,
        BinOp::And,
        BinOp::Or,
    ])
}

fn arguments(inner: BoxedStrategy<Expr>) -> impl Strategy<Value = Vec<Arg>> {
    // Positional arguments first, then keywords, as calls must be written.
    (
        prop::collection::vec(inner.clone(), 0..3),
        prop::collection::vec((name(), inner), 0..2),
    )
        .prop_map(|(positional, keywords)| {
            let mut args: Vec<Arg> = positional
                .into_iter()
                .map(|value| Arg { name: None, value })
                .collect();
            let mut seen = Vec::new();
            for (n, value) in keywords {
                if !seen.contains(&n) {
                    args.push(Arg {
                        name: Some(ident(&n)),
                        value,
                    });
                    seen.push(n);
                }
            }
            args
        })
}

/// f-string parts: never two texts in a row, never an empty text.
fn fstring() -> impl Strategy<Value = Expr> {
    prop::collection::vec(prop_oneof![text().prop_map(Some), Just(None)], 0..5)
        .prop_flat_map(|plan| {
            let names = prop::collection::vec(name(), plan.len());
            (Just(plan), names)
        })
        .prop_map(|(plan, names)| {
            let mut parts: Vec<FStringPart> = Vec::new();
            for (piece, n) in plan.into_iter().zip(names) {
                match piece {
                    Some(t) if !t.is_empty() => {
                        if let Some(FStringPart::Text(last)) = parts.last_mut() {
                            last.push_str(&t);
                        } else {
                            parts.push(FStringPart::Text(t));
                        }
                    }
                    Some(_) => {}
                    None => parts.push(FStringPart::Expr(e(ExprKind::Name(n)))),
                }
            }
            e(ExprKind::FString(parts))
        })
}

fn expr() -> BoxedStrategy<Expr> {
    leaf()
        .prop_recursive(4, 48, 4, |inner| {
            let boxed = || inner.clone().prop_map(Box::new);
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(|v| e(ExprKind::List(v))),
                prop::collection::vec(
                    (text().prop_map(|t| e(ExprKind::Str(t))), inner.clone()),
                    0..3
                )
                .prop_map(|v| e(ExprKind::Map(v))),
                (prop::sample::select(vec![UnOp::Neg, UnOp::Not]), boxed())
                    .prop_map(|(op, x)| e(ExprKind::Unary(op, x))),
                (binop(), boxed(), boxed()).prop_map(|(op, l, r)| e(ExprKind::Binary(op, l, r))),
                (name(), arguments(inner.clone())).prop_map(|(n, args)| e(ExprKind::Call {
                    callee: Box::new(e(ExprKind::Name(n))),
                    args
                })),
                (boxed(), name(), arguments(inner.clone())).prop_map(|(receiver, n, args)| e(
                    ExprKind::Method {
                        receiver,
                        name: ident(&n),
                        args
                    }
                )),
                (boxed(), boxed()).prop_map(|(t, k)| e(ExprKind::Index(t, k))),
                (
                    boxed(),
                    prop::option::of(boxed()),
                    prop::option::of(boxed())
                )
                    .prop_map(|(target, lo, hi)| e(ExprKind::Slice {
                        target,
                        lo,
                        hi
                    })),
                (
                    boxed(),
                    prop::collection::vec(name(), 1..3),
                    boxed(),
                    prop::option::of(boxed())
                )
                    .prop_map(|(elem, targets, iter, cond)| e(
                        ExprKind::Comprehension {
                            elem,
                            targets: targets.iter().map(|t| ident(t)).collect(),
                            iter,
                            cond
                        }
                    )),
                fstring(),
            ]
        })
        .boxed()
}

fn stmt_of(kind: StmtKind) -> Stmt {
    Stmt {
        kind,
        span: NOWHERE,
    }
}

fn block_of(stmts: Vec<Stmt>) -> Block {
    Block {
        stmts,
        span: NOWHERE,
    }
}

fn simple_stmt() -> impl Strategy<Value = Stmt> {
    let target = prop_oneof![
        name().prop_map(|n| e(ExprKind::Name(n))),
        (name(), expr())
            .prop_map(|(n, k)| e(ExprKind::Index(Box::new(e(ExprKind::Name(n))), Box::new(k)))),
    ];
    prop_oneof![
        (name(), expr()).prop_map(|(n, value)| stmt_of(StmtKind::Let {
            name: ident(&n),
            value
        })),
        (target.clone(), expr())
            .prop_map(|(target, value)| stmt_of(StmtKind::Assign { target, value })),
        (
            target,
            prop::sample::select(vec![BinOp::Add, BinOp::Sub, BinOp::Mul, BinOp::Div]),
            expr()
        )
            .prop_map(|(target, op, value)| stmt_of(StmtKind::AugAssign {
                target,
                op,
                value
            })),
        Just(stmt_of(StmtKind::Break)),
        Just(stmt_of(StmtKind::Continue)),
        prop::option::of(expr()).prop_map(|v| stmt_of(StmtKind::Return(v))),
        (name(), arguments(expr())).prop_map(|(n, args)| stmt_of(StmtKind::Expr(e(
            ExprKind::Call {
                callee: Box::new(e(ExprKind::Name(n))),
                args
            }
        )))),
    ]
}

fn stmt() -> impl Strategy<Value = Stmt> {
    simple_stmt().prop_recursive(3, 24, 4, |inner| {
        let body = prop::collection::vec(inner, 0..3).prop_map(block_of);
        prop_oneof![
            (
                prop::collection::vec((expr(), body.clone()), 1..3),
                prop::option::of(body.clone())
            )
                .prop_map(|(branches, otherwise)| stmt_of(StmtKind::If {
                    branches,
                    otherwise
                })),
            (expr(), body.clone()).prop_map(|(cond, body)| stmt_of(StmtKind::While { cond, body })),
            (prop::collection::vec(name(), 1..3), expr(), body).prop_map(
                |(targets, iter, body)| stmt_of(StmtKind::For {
                    targets: targets.iter().map(|t| ident(t)).collect(),
                    iter,
                    body
                })
            ),
        ]
    })
}

fn module() -> impl Strategy<Value = Module> {
    let function = (
        name(),
        prop::collection::vec(name(), 0..3),
        prop::collection::vec(stmt(), 0..4),
    )
        .prop_map(|(n, params, stmts)| {
            Item::Fn(FnDef {
                name: ident(&format!("f_{n}")),
                params: params.iter().map(|p| ident(p)).collect(),
                body: block_of(stmts),
                span: NOWHERE,
            })
        });
    let constant = (name(), expr()).prop_map(|(n, value)| Item::Const {
        name: ident(&n.to_uppercase()),
        value,
        span: NOWHERE,
    });
    prop::collection::vec(prop_oneof![3 => function, 1 => constant], 1..4)
        .prop_map(|items| Module { items })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn printed_trees_parse_back_to_the_same_tree(module in module()) {
        let source = pretty::pretty(&module);
        let (parsed, diagnostics) = sglc_compiler::parse(&source);
        prop_assert!(diagnostics.is_empty(), "{diagnostics:?}\n{source}");
        prop_assert_eq!(ast::dump(&parsed), ast::dump(&module), "{}", source);
    }
}

/// Every program in the test corpus, parsed and printed twice: the second print is the first.
#[test]
fn printing_the_test_programs_is_stable() {
    for path in sglc_programs() {
        let source = std::fs::read_to_string(&path).unwrap();
        let (first, diagnostics) = sglc_compiler::parse(&source);
        if !diagnostics.is_empty() {
            continue; // the syntax-error programs
        }
        let printed = pretty::pretty(&first);
        let (second, diagnostics) = sglc_compiler::parse(&printed);
        assert!(
            diagnostics.is_empty(),
            "{}: {diagnostics:?}",
            path.display()
        );
        assert_eq!(ast::dump(&first), ast::dump(&second), "{}", path.display());
    }
}

#[test]
fn bytecode_survives_serialisation() {
    let engine = sglc::Engine::new(sglc::TestBackend::new());
    let mut count = 0;
    for path in sglc_programs() {
        let source = std::fs::read_to_string(&path).unwrap();
        let Ok(script) = engine.compile("x.sgl", &source) else {
            continue;
        };
        let json = serde_json::to_string(&*script.program).unwrap();
        let back: sglc_compiler::Program = serde_json::from_str(&json).unwrap();
        assert!(back == *script.program, "{}", path.display());
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        count += 1;
    }
    assert!(count >= 20, "only {count} programs compiled");
}

fn sglc_programs() -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    let mut dirs = vec![root.join("tests/programs"), root.join("examples")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "sgl") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}
