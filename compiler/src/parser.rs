//! The parser: chumsky over the lexer's tokens. It never fails: it returns the tree (with `Error`
//! nodes where text could not be parsed) together with every syntax error it found.

use crate::ast::*;
use crate::diagnostic::Diagnostic;
use crate::lexer::Token;
use crate::span::Span;
use chumsky::input::{Input as _, ValueInput};
use chumsky::pratt::{infix, left, prefix};
use chumsky::prelude::*;

type Extra<'t> = extra::Err<Rich<'t, Token, SimpleSpan>>;

/// Parses lexed tokens into a module. Always returns a module; errors come back as diagnostics.
pub fn parse_tokens(tokens: &[(Token, Span)], source_len: usize) -> (Module, Vec<Diagnostic>) {
    let tokens: Vec<(Token, SimpleSpan)> = tokens
        .iter()
        .map(|(t, s)| (t.clone(), SimpleSpan::from(s.range())))
        .collect();
    let eoi = SimpleSpan::from(source_len..source_len);
    let input = tokens.as_slice().map(eoi, |(t, s)| (t, s));
    let (module, errors) = module_parser().parse(input).into_output_errors();
    // An `Error` token was already reported by the lexer; saying "unexpected invalid token"
    // about it again would only add noise.
    let diagnostics = errors
        .into_iter()
        .filter(|e| !matches!(e.found(), Some(Token::Error)))
        .map(rich_to_diagnostic)
        .collect();
    (module.unwrap_or(Module { items: Vec::new() }), diagnostics)
}

fn rich_to_diagnostic(error: Rich<'_, Token, SimpleSpan>) -> Diagnostic {
    let span = Span::from(*error.span());
    let found = match error.found() {
        Some(token) => token.to_string(),
        None => "end of input".to_string(),
    };
    let mut expected: Vec<String> = error
        .expected()
        .map(|pattern| match pattern {
            chumsky::error::RichPattern::Token(t) => t.to_string(),
            chumsky::error::RichPattern::Label(l) => l.to_string(),
            chumsky::error::RichPattern::EndOfInput => "end of input".to_string(),
            other => other.to_string(),
        })
        .collect();
    expected.sort();
    expected.dedup();
    let message = match error.reason() {
        chumsky::error::RichReason::Custom(msg) => msg.to_string(),
        _ => format!("unexpected {found}"),
    };
    let mut diagnostic =
        Diagnostic::error("E0100", message, span).with_label(if expected.is_empty() {
            "not expected here".to_string()
        } else {
            format!("expected {}", join_alternatives(&expected))
        });
    for (label, ctx_span) in error.contexts() {
        diagnostic =
            diagnostic.with_secondary(Span::from(*ctx_span), format!("while parsing {label}"));
    }
    if matches!(error.found(), Some(Token::Newline)) {
        diagnostic = diagnostic.with_help(
            "a newline ends a statement; wrap a long expression in parentheses to continue it on the next line",
        );
    }
    diagnostic
}

fn join_alternatives(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
    }
}

fn sp(s: SimpleSpan) -> Span {
    Span::from(s)
}

fn ident<'t, I>() -> impl Parser<'t, I, Ident, Extra<'t>> + Clone
where
    I: ValueInput<'t, Token = Token, Span = SimpleSpan>,
{
    select! { Token::Ident(name) => name }
        .map_with(|name, e| Ident {
            name,
            span: sp(e.span()),
        })
        .labelled("a name")
}

/// One or more newlines or semicolons.
fn separators<'t, I>() -> impl Parser<'t, I, (), Extra<'t>> + Clone
where
    I: ValueInput<'t, Token = Token, Span = SimpleSpan>,
{
    one_of([Token::Newline, Token::Semicolon])
        .repeated()
        .at_least(1)
        .ignored()
}

fn newlines<'t, I>() -> impl Parser<'t, I, (), Extra<'t>> + Clone
where
    I: ValueInput<'t, Token = Token, Span = SimpleSpan>,
{
    just(Token::Newline).repeated().ignored()
}

fn expr_parser<'t, I>() -> impl Parser<'t, I, Expr, Extra<'t>> + Clone
where
    I: ValueInput<'t, Token = Token, Span = SimpleSpan>,
{
    recursive(|expr| {
        let literal = select! {
            Token::None => ExprKind::None,
            Token::True => ExprKind::Bool(true),
            Token::False => ExprKind::Bool(false),
            Token::Int(n) => ExprKind::Int(n),
            Token::Float(x) => ExprKind::Float(x),
            Token::Str(s) => ExprKind::Str(s),
            Token::Ident(name) => ExprKind::Name(name),
        }
        .labelled("an expression");

        let fstring_part = select! { Token::FText(text) => FStringPart::Text(text) }.or(expr
            .clone()
            .delimited_by(just(Token::InterpStart), just(Token::InterpEnd))
            .map(FStringPart::Expr));
        let fstring = fstring_part
            .repeated()
            .collect::<Vec<_>>()
            .delimited_by(just(Token::FStart), just(Token::FEnd))
            .map(ExprKind::FString);

        let targets = ident()
            .separated_by(just(Token::Comma))
            .at_least(1)
            .collect::<Vec<_>>();

        // `[a, b]` or `[elem for x in xs if cond]`. The first element is parsed once and the
        // rest decides which it is: re-parsing it would make nested lists exponential.
        let comprehension_tail = just(Token::For)
            .ignore_then(targets.clone())
            .then_ignore(just(Token::In))
            .then(expr.clone())
            .then(just(Token::If).ignore_then(expr.clone()).or_not())
            .map(Some);
        let more_items = just(Token::Comma)
            .ignore_then(
                expr.clone()
                    .separated_by(just(Token::Comma))
                    .allow_trailing()
                    .collect::<Vec<_>>(),
            )
            .or_not()
            .map(|rest| (None, rest.unwrap_or_default()));
        let list = expr
            .clone()
            .then(comprehension_tail.map(|c| (c, Vec::new())).or(more_items))
            .or_not()
            .map(|body| match body {
                None => ExprKind::List(Vec::new()),
                Some((elem, (Some(((targets, iter), cond)), _))) => ExprKind::Comprehension {
                    elem: Box::new(elem),
                    targets,
                    iter: Box::new(iter),
                    cond: cond.map(Box::new),
                },
                Some((first, (None, rest))) => {
                    let mut items = vec![first];
                    items.extend(rest);
                    ExprKind::List(items)
                }
            })
            .delimited_by(just(Token::LBracket), just(Token::RBracket));

        let map_entry = expr
            .clone()
            .then_ignore(just(Token::Colon))
            .then(expr.clone())
            .padded_by(newlines());
        let map = map_entry
            .separated_by(just(Token::Comma))
            .allow_trailing()
            .collect::<Vec<_>>()
            .padded_by(newlines())
            .delimited_by(just(Token::LBrace), just(Token::RBrace))
            .map(ExprKind::Map);

        let parenthesized = expr
            .clone()
            .delimited_by(just(Token::LParen), just(Token::RParen))
            .map(|e: Expr| e.kind);

        let atom = choice((literal, fstring, list, map, parenthesized))
            .map_with(|kind, e| Expr::new(kind, sp(e.span())))
            .recover_with(via_parser(nested_delimiters(
                Token::LParen,
                Token::RParen,
                [
                    (Token::LBracket, Token::RBracket),
                    (Token::LBrace, Token::RBrace),
                ],
                |span| Expr::new(ExprKind::Error, sp(span)),
            )))
            .recover_with(via_parser(nested_delimiters(
                Token::LBracket,
                Token::RBracket,
                [
                    (Token::LParen, Token::RParen),
                    (Token::LBrace, Token::RBrace),
                ],
                |span| Expr::new(ExprKind::Error, sp(span)),
            )))
            .boxed();

        let arg = ident()
            .then_ignore(just(Token::Assign))
            .then(expr.clone())
            .map(|(name, value)| Arg {
                name: Some(name),
                value,
            })
            .or(expr.clone().map(|value| Arg { name: None, value }));
        let args = arg
            .separated_by(just(Token::Comma))
            .allow_trailing()
            .collect::<Vec<_>>()
            .delimited_by(just(Token::LParen), just(Token::RParen))
            .labelled("arguments");

        enum Postfix {
            Call(Vec<Arg>),
            Method(Ident, Vec<Arg>),
            Index(Expr),
            Slice(Option<Expr>, Option<Expr>),
        }
        let index = expr
            .clone()
            .or_not()
            .then(
                just(Token::Colon)
                    .ignore_then(expr.clone().or_not())
                    .or_not(),
            )
            .delimited_by(just(Token::LBracket), just(Token::RBracket))
            .try_map(|(lo, hi), span| match (lo, hi) {
                (Some(i), None) => Ok(Postfix::Index(i)),
                (lo, Some(hi)) => Ok(Postfix::Slice(lo, hi)),
                (None, None) => Err(Rich::custom(span, "empty index: write `x[i]` or `x[a:b]`")),
            });
        let postfix = choice((
            args.clone().map(Postfix::Call),
            just(Token::Dot)
                .ignore_then(ident())
                .then(args)
                .map(|(name, args)| Postfix::Method(name, args)),
            index,
        ));
        let call = atom.foldl_with(postfix.repeated(), |target, op, e| {
            let kind = match op {
                Postfix::Call(args) => ExprKind::Call {
                    callee: Box::new(target),
                    args,
                },
                Postfix::Method(name, args) => ExprKind::Method {
                    receiver: Box::new(target),
                    name,
                    args,
                },
                Postfix::Index(i) => ExprKind::Index(Box::new(target), Box::new(i)),
                Postfix::Slice(lo, hi) => ExprKind::Slice {
                    target: Box::new(target),
                    lo: lo.map(Box::new),
                    hi: hi.map(Box::new),
                },
            };
            Expr::new(kind, sp(e.span()))
        });

        let bin = |l: Expr,
                   op: BinOp,
                   r: Expr,
                   e: &mut chumsky::input::MapExtra<'t, '_, I, Extra<'t>>| {
            Expr::new(ExprKind::Binary(op, Box::new(l), Box::new(r)), sp(e.span()))
        };
        let un = |op: UnOp, r: Expr, e: &mut chumsky::input::MapExtra<'t, '_, I, Extra<'t>>| {
            Expr::new(ExprKind::Unary(op, Box::new(r)), sp(e.span()))
        };
        let op = |token: Token, op: BinOp| just(token).to(op);
        call.pratt((
            infix(left(1), op(Token::Or, BinOp::Or), bin),
            infix(left(2), op(Token::And, BinOp::And), bin),
            prefix(3, just(Token::Not).to(UnOp::Not), un),
            infix(
                left(4),
                choice((
                    op(Token::EqEq, BinOp::Eq),
                    op(Token::NotEq, BinOp::NotEq),
                    op(Token::Le, BinOp::Le),
                    op(Token::Lt, BinOp::Lt),
                    op(Token::Ge, BinOp::Ge),
                    op(Token::Gt, BinOp::Gt),
                    op(Token::In, BinOp::In),
                    just(Token::Not).then(just(Token::In)).to(BinOp::NotIn),
                )),
                bin,
            ),
            infix(
                left(5),
                choice((op(Token::Plus, BinOp::Add), op(Token::Minus, BinOp::Sub))),
                bin,
            ),
            infix(
                left(6),
                choice((
                    op(Token::Star, BinOp::Mul),
                    op(Token::Slash, BinOp::Div),
                    op(Token::Percent, BinOp::Mod),
                )),
                bin,
            ),
            prefix(7, just(Token::Minus).to(UnOp::Neg), un),
        ))
        .labelled("an expression")
        .boxed()
    })
}

/// Skips the rest of a broken statement, keeping nested `{...}` balanced.
fn skip_statement<'t, I>() -> impl Parser<'t, I, (), Extra<'t>> + Clone
where
    I: ValueInput<'t, Token = Token, Span = SimpleSpan>,
{
    choice((
        nested_delimiters(
            Token::LBrace,
            Token::RBrace,
            [
                (Token::LParen, Token::RParen),
                (Token::LBracket, Token::RBracket),
            ],
            |_| (),
        ),
        none_of([
            Token::Newline,
            Token::Semicolon,
            Token::LBrace,
            Token::RBrace,
        ])
        .ignored(),
    ))
    .repeated()
    .at_least(1)
}

fn block_parser<'t, I>() -> impl Parser<'t, I, Block, Extra<'t>> + Clone
where
    I: ValueInput<'t, Token = Token, Span = SimpleSpan>,
{
    recursive(|block| {
        let expr = expr_parser();

        let let_stmt = just(Token::Let)
            .ignore_then(ident())
            .then_ignore(just(Token::Assign))
            .then(expr.clone())
            .map(|(name, value)| StmtKind::Let { name, value });

        let else_if = just(Token::Else)
            .ignore_then(just(Token::If))
            .ignore_then(expr.clone())
            .then(block.clone());
        let if_stmt = just(Token::If)
            .ignore_then(expr.clone())
            .then(block.clone())
            .then(else_if.repeated().collect::<Vec<_>>())
            .then(just(Token::Else).ignore_then(block.clone()).or_not())
            .map(|(((cond, then), mut rest), otherwise)| {
                rest.insert(0, (cond, then));
                StmtKind::If {
                    branches: rest,
                    otherwise,
                }
            });

        let while_stmt = just(Token::While)
            .ignore_then(expr.clone())
            .then(block.clone())
            .map(|(cond, body)| StmtKind::While { cond, body });

        let for_stmt = just(Token::For)
            .ignore_then(
                ident()
                    .separated_by(just(Token::Comma))
                    .at_least(1)
                    .collect::<Vec<_>>(),
            )
            .then_ignore(just(Token::In))
            .then(expr.clone())
            .then(block.clone())
            .map(|((targets, iter), body)| StmtKind::For {
                targets,
                iter,
                body,
            });

        let simple = choice((
            just(Token::Break).to(StmtKind::Break),
            just(Token::Continue).to(StmtKind::Continue),
            just(Token::Return)
                .ignore_then(expr.clone().or_not())
                .map(StmtKind::Return),
        ));

        let assign_op = choice((
            just(Token::Assign).to(None),
            just(Token::PlusAssign).to(Some(BinOp::Add)),
            just(Token::MinusAssign).to(Some(BinOp::Sub)),
            just(Token::StarAssign).to(Some(BinOp::Mul)),
            just(Token::SlashAssign).to(Some(BinOp::Div)),
        ));
        let expr_or_assign = expr
            .clone()
            .then(assign_op.then(expr.clone()).or_not())
            .map(|(target, rest)| match rest {
                None => StmtKind::Expr(target),
                Some((None, value)) => StmtKind::Assign { target, value },
                Some((Some(op), value)) => StmtKind::AugAssign { target, op, value },
            });

        // A statement must end where a statement can end; otherwise the whole of it is skipped
        // and reported, rather than half of it being kept.
        let stmt_end = one_of([Token::Newline, Token::Semicolon, Token::RBrace])
            .ignored()
            .rewind()
            .labelled("end of statement");
        let stmt = choice((
            let_stmt,
            if_stmt,
            while_stmt,
            for_stmt,
            simple,
            expr_or_assign,
        ))
        .then_ignore(stmt_end)
        .map_with(|kind, e| Stmt {
            kind,
            span: sp(e.span()),
        })
        .recover_with(via_parser(skip_statement().map_with(|_, e| Stmt {
            kind: StmtKind::Error,
            span: sp(e.span()),
        })))
        .labelled("a statement")
        .boxed();

        stmt.separated_by(separators())
            .allow_leading()
            .allow_trailing()
            .collect::<Vec<_>>()
            .delimited_by(just(Token::LBrace), just(Token::RBrace))
            .map_with(|stmts, e| Block {
                stmts,
                span: sp(e.span()),
            })
            .recover_with(via_parser(nested_delimiters(
                Token::LBrace,
                Token::RBrace,
                [
                    (Token::LParen, Token::RParen),
                    (Token::LBracket, Token::RBracket),
                ],
                |span| Block {
                    stmts: vec![Stmt {
                        kind: StmtKind::Error,
                        span: sp(span),
                    }],
                    span: sp(span),
                },
            )))
            .labelled("a block")
            .boxed()
    })
}

fn module_parser<'t, I>() -> impl Parser<'t, I, Module, Extra<'t>>
where
    I: ValueInput<'t, Token = Token, Span = SimpleSpan>,
{
    let params = ident()
        .separated_by(just(Token::Comma))
        .allow_trailing()
        .collect::<Vec<_>>()
        .delimited_by(just(Token::LParen), just(Token::RParen))
        .labelled("parameters");
    let function = just(Token::Fn)
        .ignore_then(ident())
        .then(params)
        .then(block_parser())
        .map_with(|((name, params), body), e| {
            Item::Fn(FnDef {
                name,
                params,
                body,
                span: sp(e.span()),
            })
        });
    let constant = just(Token::Let)
        .ignore_then(ident())
        .then_ignore(just(Token::Assign))
        .then(expr_parser())
        .map_with(|(name, value), e| Item::Const {
            name,
            value,
            span: sp(e.span()),
        });
    let item_end = one_of([Token::Newline, Token::Semicolon])
        .ignored()
        .or(end())
        .rewind()
        .labelled("end of line");
    let item = choice((function, constant))
        .then_ignore(item_end)
        .labelled("`fn` or `let`")
        .recover_with(via_parser(
            skip_statement().map_with(|_, e| Item::Error(sp(e.span()))),
        ));
    item.separated_by(separators())
        .allow_leading()
        .allow_trailing()
        .collect::<Vec<_>>()
        .map(|items| Module { items })
        .then_ignore(end())
}
