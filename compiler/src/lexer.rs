//! The lexer: logos turns source text into tokens; a second pass decodes strings, splits f-strings
//! into parts and drops newlines that sit inside brackets.

use crate::diagnostic::Diagnostic;
use crate::span::Span;
use logos::Logos;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum LexError {
    #[default]
    UnexpectedChar,
    UnterminatedString,
    UnterminatedComment,
    IntTooLarge,
    FloatTooLarge,
}

/// Tokens. The variants after `Newline` are never produced by logos directly: the second pass
/// makes them from string literals.
#[derive(Logos, Clone, Debug, PartialEq)]
#[logos(error = LexError)]
#[logos(skip r"[ \t\r\f]+")]
#[logos(skip(r"//[^\n]*", allow_greedy = true))]
pub enum Token {
    #[token("/*", skip_block_comment)]
    BlockComment,

    #[token("fn")]
    Fn,
    #[token("let")]
    Let,
    #[token("if")]
    If,
    #[token("else")]
    Else,
    #[token("while")]
    While,
    #[token("for")]
    For,
    #[token("in")]
    In,
    #[token("break")]
    Break,
    #[token("continue")]
    Continue,
    #[token("return")]
    Return,
    #[token("and")]
    And,
    #[token("or")]
    Or,
    #[token("not")]
    Not,
    #[token("true")]
    True,
    #[token("false")]
    False,
    #[token("none")]
    None,

    #[regex(r"[A-Za-z_][A-Za-z0-9_]*", |lex| lex.slice().to_string())]
    Ident(String),
    #[regex(r"[0-9][0-9_]*", parse_int)]
    Int(i64),
    #[regex(r"[0-9][0-9_]*\.[0-9][0-9_]*([eE][+-]?[0-9]+)?", parse_float)]
    #[regex(r"[0-9][0-9_]*[eE][+-]?[0-9]+", parse_float)]
    Float(f64),

    /// A string literal of any quoting, undecoded; the second pass turns it into `Str` or an f-string.
    #[token("\"", |lex| scan_string(lex, "\""))]
    #[token("'", |lex| scan_string(lex, "'"))]
    #[token("\"\"\"", |lex| scan_string(lex, "\"\"\""))]
    #[token("'''", |lex| scan_string(lex, "'''"))]
    #[token("f\"", |lex| scan_fstring(lex, "\""))]
    #[token("f'", |lex| scan_fstring(lex, "'"))]
    #[token("f\"\"\"", |lex| scan_fstring(lex, "\"\"\""))]
    #[token("f'''", |lex| scan_fstring(lex, "'''"))]
    RawString,

    #[token("(")]
    LParen,
    #[token(")")]
    RParen,
    #[token("[")]
    LBracket,
    #[token("]")]
    RBracket,
    #[token("{")]
    LBrace,
    #[token("}")]
    RBrace,
    #[token(",")]
    Comma,
    #[token(".")]
    Dot,
    #[token(":")]
    Colon,
    #[token(";")]
    Semicolon,
    #[token("=")]
    Assign,
    #[token("+=")]
    PlusAssign,
    #[token("-=")]
    MinusAssign,
    #[token("*=")]
    StarAssign,
    #[token("/=")]
    SlashAssign,
    #[token("+")]
    Plus,
    #[token("-")]
    Minus,
    #[token("*")]
    Star,
    #[token("/")]
    Slash,
    #[token("%")]
    Percent,
    #[token("==")]
    EqEq,
    #[token("!=")]
    NotEq,
    #[token("<")]
    Lt,
    #[token("<=")]
    Le,
    #[token(">")]
    Gt,
    #[token(">=")]
    Ge,
    #[token("\n")]
    Newline,

    /// A decoded plain string literal.
    Str(String),
    /// Opens an f-string; followed by `FText` and `InterpStart expr InterpEnd` parts, then `FEnd`.
    FStart,
    FText(String),
    InterpStart,
    InterpEnd,
    FEnd,
    /// Stands in for text that could not be lexed, so the parser can carry on.
    Error,
}

fn skip_block_comment(lex: &mut logos::Lexer<Token>) -> Result<logos::Skip, LexError> {
    match lex.remainder().find("*/") {
        Some(end) => {
            lex.bump(end + 2);
            Ok(logos::Skip)
        }
        None => {
            lex.bump(lex.remainder().len());
            Err(LexError::UnterminatedComment)
        }
    }
}

fn parse_int(lex: &mut logos::Lexer<Token>) -> Result<i64, LexError> {
    lex.slice()
        .replace('_', "")
        .parse()
        .map_err(|_| LexError::IntTooLarge)
}

/// A literal past f64's range (`1e400`) is an error rather than infinity: found by fuzzing,
/// an infinite constant is also one that no data format (JSON included) can carry.
fn parse_float(lex: &mut logos::Lexer<Token>) -> Result<f64, LexError> {
    lex.slice()
        .replace('_', "")
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or(LexError::FloatTooLarge)
}

/// Consumes up to and including the closing quote; backslash escapes the next char.
fn scan_string(lex: &mut logos::Lexer<Token>, close: &str) -> Result<(), LexError> {
    let rest = lex.remainder();
    let single_line = close.len() == 1;
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            chars.next();
        } else if single_line && c == '\n' {
            lex.bump(i);
            return Err(LexError::UnterminatedString);
        } else if rest[i..].starts_with(close) {
            lex.bump(i + close.len());
            return Ok(());
        }
    }
    lex.bump(rest.len());
    Err(LexError::UnterminatedString)
}

/// Like `scan_string`, but quotes inside `{...}` interpolations belong to the expression
/// (`f"{m["key"]}"`), so they do not close the literal.
fn scan_fstring(lex: &mut logos::Lexer<Token>, close: &str) -> Result<(), LexError> {
    let rest = lex.remainder();
    let single_line = close.len() == 1;
    let mut depth = 0usize;
    let mut inner_quote: Option<char> = None;
    let mut chars = rest.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            chars.next();
            continue;
        }
        if single_line && c == '\n' {
            lex.bump(i);
            return Err(LexError::UnterminatedString);
        }
        if let Some(q) = inner_quote {
            if c == q {
                inner_quote = None;
            }
            continue;
        }
        match c {
            '{' if depth == 0 && chars.peek().map(|(_, n)| *n) == Some('{') => {
                chars.next();
            }
            '{' => depth += 1,
            '}' if depth > 0 => depth -= 1,
            '"' | '\'' if depth > 0 => inner_quote = Some(c),
            _ if depth == 0 && rest[i..].starts_with(close) => {
                lex.bump(i + close.len());
                return Ok(());
            }
            _ => {}
        }
    }
    lex.bump(rest.len());
    Err(LexError::UnterminatedString)
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Token::BlockComment => "comment",
            Token::Fn => "`fn`",
            Token::Let => "`let`",
            Token::If => "`if`",
            Token::Else => "`else`",
            Token::While => "`while`",
            Token::For => "`for`",
            Token::In => "`in`",
            Token::Break => "`break`",
            Token::Continue => "`continue`",
            Token::Return => "`return`",
            Token::And => "`and`",
            Token::Or => "`or`",
            Token::Not => "`not`",
            Token::True => "`true`",
            Token::False => "`false`",
            Token::None => "`none`",
            Token::Ident(name) => return write!(f, "identifier `{name}`"),
            Token::Int(n) => return write!(f, "integer `{n}`"),
            Token::Float(x) => return write!(f, "float `{x}`"),
            Token::RawString | Token::Str(_) => "string",
            Token::LParen => "`(`",
            Token::RParen => "`)`",
            Token::LBracket => "`[`",
            Token::RBracket => "`]`",
            Token::LBrace => "`{`",
            Token::RBrace => "`}`",
            Token::Comma => "`,`",
            Token::Dot => "`.`",
            Token::Colon => "`:`",
            Token::Semicolon => "`;`",
            Token::Assign => "`=`",
            Token::PlusAssign => "`+=`",
            Token::MinusAssign => "`-=`",
            Token::StarAssign => "`*=`",
            Token::SlashAssign => "`/=`",
            Token::Plus => "`+`",
            Token::Minus => "`-`",
            Token::Star => "`*`",
            Token::Slash => "`/`",
            Token::Percent => "`%`",
            Token::EqEq => "`==`",
            Token::NotEq => "`!=`",
            Token::Lt => "`<`",
            Token::Le => "`<=`",
            Token::Gt => "`>`",
            Token::Ge => "`>=`",
            Token::Newline => "end of line",
            Token::FStart => "f-string",
            Token::FText(_) => "f-string text",
            Token::InterpStart => "`{`",
            Token::InterpEnd => "`}`",
            Token::FEnd => "end of f-string",
            Token::Error => "invalid token",
        };
        f.write_str(s)
    }
}

/// The result of lexing: tokens with spans, and the problems found on the way.
pub struct Lexed {
    pub tokens: Vec<(Token, Span)>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Lexes a whole source file.
pub fn lex(source: &str) -> Lexed {
    let mut out = Lexed {
        tokens: Vec::new(),
        diagnostics: Vec::new(),
    };
    lex_into(source, 0, &mut out);
    out.tokens = drop_bracketed_newlines(std::mem::take(&mut out.tokens), &mut out.diagnostics);
    out
}

/// Lexes `source` (which starts at byte `offset` of the file) and appends to `out`.
fn lex_into(source: &str, offset: usize, out: &mut Lexed) {
    let mut lexer = Token::lexer(source);
    while let Some(result) = lexer.next() {
        let span = Span::from(lexer.span()).shifted(offset);
        match result {
            Ok(Token::RawString) => {
                decode_string_literal(lexer.slice(), span, out);
            }
            Ok(token) => out.tokens.push((token, span)),
            Err(error) => {
                out.diagnostics
                    .push(lex_error_diagnostic(error, lexer.slice(), span));
                out.tokens.push((Token::Error, span));
            }
        }
    }
}

fn lex_error_diagnostic(error: LexError, slice: &str, span: Span) -> Diagnostic {
    match error {
        LexError::UnexpectedChar => {
            let shown = slice.chars().next().map_or(String::new(), |c| format!("{c:?}"));
            Diagnostic::error("E0001", format!("unexpected character {shown}"), span)
                .with_label("not part of the language")
        }
        LexError::UnterminatedString => Diagnostic::error("E0002", "unterminated string", span)
            .with_label("this string is never closed")
            .with_help("close it with the same quote it starts with; use \"\"\" for strings that span lines"),
        LexError::UnterminatedComment => {
            Diagnostic::error("E0003", "unterminated block comment", span)
                .with_label("this comment is never closed")
                .with_help("end it with */")
        }
        LexError::IntTooLarge => Diagnostic::error("E0004", "integer literal too large", span)
            .with_label("does not fit in a 64-bit integer")
            .with_help("integers are signed 64-bit; use a float for larger magnitudes"),
        LexError::FloatTooLarge => Diagnostic::error("E0004", "float literal too large", span)
            .with_label("larger than the largest float, 1.8e308"),
    }
}

/// Splits a raw literal such as `f"a {x} b"` into its prefix, quote and body, and emits tokens.
fn decode_string_literal(raw: &str, span: Span, out: &mut Lexed) {
    let is_f = raw.starts_with('f');
    let unprefixed = if is_f { &raw[1..] } else { raw };
    let quote_len = if unprefixed.starts_with("\"\"\"") || unprefixed.starts_with("'''") {
        3
    } else {
        1
    };
    let prefix_len = usize::from(is_f) + quote_len;
    // An unterminated literal was already reported; it has no closing quote to strip.
    let body_end = if raw.len() >= prefix_len + quote_len
        && raw.ends_with(&unprefixed[..quote_len])
        && (raw.len() != prefix_len)
    {
        raw.len() - quote_len
    } else {
        raw.len()
    };
    let body = &raw[prefix_len..body_end];
    let body_offset = span.start as usize + prefix_len;
    if !is_f {
        let text = unescape(body, body_offset, out);
        out.tokens.push((Token::Str(text), span));
        return;
    }
    out.tokens
        .push((Token::FStart, Span::new(span.start as usize, body_offset)));
    let mut text = String::new();
    let mut text_start = body_offset;
    let mut i = 0;
    let bytes = body.as_bytes();
    let flush = |text: &mut String, start: usize, end: usize, out: &mut Lexed| {
        if !text.is_empty() {
            let decoded = unescape(text, start, out);
            out.tokens
                .push((Token::FText(decoded), Span::new(start, end)));
            text.clear();
        }
    };
    while i < body.len() {
        let c = bytes[i];
        if body[i..].starts_with("\\u{") && body[i + 3..].contains('}') {
            // A `\u{HEX}` escape: its braces are not an interpolation.
            let end = i + 3 + body[i + 3..].find('}').unwrap_or(0) + 1;
            text.push_str(&body[i..end]);
            i = end;
        } else if c == b'\\' {
            let len = body[i + 1..].chars().next().map_or(0, char::len_utf8);
            text.push_str(&body[i..i + 1 + len]);
            i += 1 + len;
        } else if body[i..].starts_with("{{") || body[i..].starts_with("}}") {
            // Doubled braces stand for one literal brace; escape it so unescape keeps it.
            text.push('\\');
            text.push(c as char);
            i += 2;
        } else if c == b'{' {
            flush(&mut text, text_start, body_offset + i, out);
            let Some(close) = find_interpolation_end(&body[i + 1..]) else {
                out.diagnostics.push(
                    Diagnostic::error(
                        "E0005",
                        "unclosed `{` in f-string",
                        Span::new(body_offset + i, body_offset + i + 1),
                    )
                    .with_label("this interpolation is never closed")
                    .with_help("close it with `}`, or write `{{` for a literal brace"),
                );
                out.tokens.push((
                    Token::Error,
                    Span::new(body_offset + i, body_offset + body.len()),
                ));
                i = body.len();
                text_start = body_offset + i;
                continue;
            };
            let expr_start = i + 1;
            let expr_end = expr_start + close;
            out.tokens.push((
                Token::InterpStart,
                Span::new(body_offset + i, body_offset + expr_start),
            ));
            let before = out.tokens.len();
            lex_into(&body[expr_start..expr_end], body_offset + expr_start, out);
            // Newlines inside an interpolation never end a statement.
            let mut k = before;
            while k < out.tokens.len() {
                if out.tokens[k].0 == Token::Newline {
                    out.tokens.remove(k);
                } else {
                    k += 1;
                }
            }
            if out.tokens.len() == before {
                out.diagnostics.push(
                    Diagnostic::error(
                        "E0006",
                        "empty interpolation in f-string",
                        Span::new(body_offset + i, body_offset + expr_end + 1),
                    )
                    .with_label("expected an expression between the braces")
                    .with_help("write `{{}}` for literal braces"),
                );
            }
            out.tokens.push((
                Token::InterpEnd,
                Span::new(body_offset + expr_end, body_offset + expr_end + 1),
            ));
            i = expr_end + 1;
            text_start = body_offset + i;
        } else if c == b'}' {
            out.diagnostics.push(
                Diagnostic::error(
                    "E0007",
                    "single `}` in f-string",
                    Span::new(body_offset + i, body_offset + i + 1),
                )
                .with_label("this brace closes nothing")
                .with_help("write `}}` for a literal brace"),
            );
            i += 1;
        } else {
            let len = body[i..].chars().next().map_or(1, char::len_utf8);
            text.push_str(&body[i..i + len]);
            i += len;
        }
    }
    flush(&mut text, text_start, body_offset + body.len(), out);
    out.tokens.push((
        Token::FEnd,
        Span::new(body_offset + body.len(), span.end as usize),
    ));
}

/// Byte offset of the `}` closing an interpolation, skipping nested brackets and strings.
fn find_interpolation_end(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match quote {
            Some(q) => {
                if c == '\\' {
                    chars.next();
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' => quote = Some(c),
                '(' | '[' | '{' => depth += 1,
                ')' | ']' => depth = depth.saturating_sub(1),
                '}' if depth == 0 => return Some(i),
                '}' => depth -= 1,
                _ => {}
            },
        }
    }
    None
}

/// Decodes backslash escapes; `offset` is where `body` starts in the file, for error spans.
fn unescape(body: &str, offset: usize, out: &mut Lexed) -> String {
    if !body.contains('\\') {
        return body.to_string();
    }
    let mut s = String::with_capacity(body.len());
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '\\' {
            s.push(c);
            continue;
        }
        let Some((_, e)) = chars.next() else {
            s.push('\\');
            break;
        };
        match e {
            'n' => s.push('\n'),
            't' => s.push('\t'),
            'r' => s.push('\r'),
            '0' => s.push('\0'),
            '\\' | '"' | '\'' | '{' | '}' => s.push(e),
            '\n' => {} // a backslash at the end of a line joins the lines
            'u' => {
                let rest = &body[i + 2..];
                let parsed = rest
                    .strip_prefix('{')
                    .and_then(|r| r.find('}').map(|end| &r[..end]))
                    .and_then(|hex| {
                        u32::from_str_radix(hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .map(|ch| (ch, hex.len() + 2))
                    });
                match parsed {
                    Some((ch, consumed)) => {
                        s.push(ch);
                        for _ in 0..consumed {
                            chars.next();
                        }
                    }
                    None => out.diagnostics.push(
                        Diagnostic::error(
                            "E0008",
                            "invalid unicode escape",
                            Span::new(offset + i, offset + i + 2),
                        )
                        .with_label("expected `\\u{HEX}`")
                        .with_help("write a code point in hex between braces, e.g. \\u{e9}"),
                    ),
                }
            }
            other => out.diagnostics.push(
                Diagnostic::error(
                    "E0009",
                    format!("unknown escape `\\{other}`"),
                    Span::new(offset + i, offset + i + 1 + other.len_utf8()),
                )
                .with_label("not a known escape")
                .with_help("known escapes: \\n \\t \\r \\0 \\\\ \\\" \\' \\{ \\} \\u{HEX}; write \\\\ for a backslash"),
            ),
        }
    }
    s
}

/// Brackets and braces nested deeper than this are refused before parsing, which keeps the
/// parser's recursion (and its stack) bounded on hostile input. Python allows 200.
pub const MAX_NESTING: usize = 200;

/// Operators in one expression, counting those of the expressions around it: `1 + 1 + ...`,
/// `- - - x` and `x.a.b` each nest one tree level per operator, and the parser, the checker,
/// the lowering and even dropping the tree recurse once per level. This bound keeps all of
/// them within a 2 MiB thread stack.
pub const MAX_EXPRESSION_DEPTH: usize = 1000;

/// Reports the first bracket that opens a level deeper than `MAX_NESTING`, or the first
/// operator that makes an expression deeper than `MAX_EXPRESSION_DEPTH`.
pub fn check_nesting(tokens: &[(Token, Span)]) -> Option<Diagnostic> {
    // The expression depth where each open bracket started, innermost last.
    let mut opened: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    for (token, span) in tokens {
        match token {
            Token::LParen | Token::LBracket | Token::LBrace | Token::InterpStart => {
                if opened.len() >= MAX_NESTING {
                    return Some(
                        Diagnostic::error(
                            "E0011",
                            format!("nesting deeper than {MAX_NESTING} levels"),
                            *span,
                        )
                        .with_label("this bracket is too deep")
                        .with_help("split the expression into smaller parts with `let`"),
                    );
                }
                depth += 1;
                opened.push(depth);
            }
            Token::RParen | Token::RBracket | Token::RBrace | Token::InterpEnd => {
                depth = opened.pop().unwrap_or(0);
            }
            Token::Comma
            | Token::Semicolon
            | Token::Newline
            | Token::Colon
            | Token::Assign
            | Token::PlusAssign
            | Token::MinusAssign
            | Token::StarAssign
            | Token::SlashAssign => depth = opened.last().copied().unwrap_or(0),
            Token::Ident(_)
            | Token::Int(_)
            | Token::Float(_)
            | Token::Str(_)
            | Token::FText(_)
            | Token::FStart
            | Token::FEnd
            | Token::True
            | Token::False
            | Token::None => {}
            _ => depth += 1,
        }
        if depth > MAX_EXPRESSION_DEPTH {
            return Some(
                Diagnostic::error(
                    "E0011",
                    format!("expression nested deeper than {MAX_EXPRESSION_DEPTH} operators"),
                    *span,
                )
                .with_label("this operator is one too many")
                .with_help("split the expression into smaller parts with `let`"),
            );
        }
    }
    None
}

/// Newlines end statements only outside `(...)` and `[...]`; repeated newlines collapse to one.
/// A bracket still open where a new statement plainly starts (a line beginning with `fn`, `let`
/// or `return`, which never continue an expression) or at the end of the file is reported and
/// forgotten, so one missing `)` does not swallow the rest of the file.
fn drop_bracketed_newlines(
    tokens: Vec<(Token, Span)>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<(Token, Span)> {
    let mut stack: Vec<(Token, Span)> = Vec::new();
    let mut out: Vec<(Token, Span)> = Vec::with_capacity(tokens.len());
    // One diagnostic for the outermost unclosed bracket: the ones inside it are unclosed
    // because it is, and 10,000 of them must not make 10,000 errors.
    let report_unclosed = |stack: &mut Vec<(Token, Span)>, diagnostics: &mut Vec<Diagnostic>| {
        let mut unclosed = stack
            .drain(..)
            .filter(|(open, _)| matches!(open, Token::LParen | Token::LBracket));
        let Some((open, span)) = unclosed.next() else {
            return;
        };
        let inner = unclosed.count();
        let close = if open == Token::LParen { ")" } else { "]" };
        let message = match inner {
            0 => format!("unclosed `{}`", &open.to_string()[1..2]),
            n => format!(
                "unclosed `{}` (and {n} more unclosed inside it)",
                &open.to_string()[1..2]
            ),
        };
        diagnostics.push(
            Diagnostic::error("E0010", message, span)
                .with_label("this bracket is never closed")
                .with_help(format!("add the missing `{close}`")),
        );
    };
    let mut tokens = tokens.into_iter().peekable();
    while let Some((token, span)) = tokens.next() {
        match token {
            Token::LParen | Token::LBracket | Token::LBrace | Token::InterpStart => {
                stack.push((token.clone(), span))
            }
            Token::RParen | Token::RBracket | Token::RBrace | Token::InterpEnd => {
                stack.pop();
            }
            Token::Newline
                if matches!(
                    tokens.peek(),
                    Some((Token::Fn | Token::Let | Token::Return, _))
                ) && stack
                    .iter()
                    .any(|(t, _)| matches!(t, Token::LParen | Token::LBracket)) =>
            {
                let keep_braces: Vec<_> = stack
                    .iter()
                    .take_while(|(t, _)| *t == Token::LBrace)
                    .cloned()
                    .collect();
                let mut unclosed: Vec<_> = stack.drain(keep_braces.len()..).collect();
                report_unclosed(&mut unclosed, diagnostics);
                stack = keep_braces;
            }
            Token::Newline => {
                let in_brackets =
                    matches!(stack.last(), Some((Token::LParen | Token::LBracket, _)));
                let after_newline = matches!(out.last(), Some((Token::Newline, _)) | None);
                if in_brackets || after_newline {
                    continue;
                }
            }
            _ => {}
        }
        out.push((token, span));
    }
    report_unclosed(&mut stack, diagnostics);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<Token> {
        let lexed = lex(src);
        assert!(lexed.diagnostics.is_empty(), "{:?}", lexed.diagnostics);
        lexed.tokens.into_iter().map(|(t, _)| t).collect()
    }

    /// Found by the round-trip property test: `\u{..}` in an f-string was read as `\u`
    /// followed by an interpolation.
    #[test]
    fn unicode_escape_in_an_fstring_is_not_an_interpolation() {
        assert_eq!(
            kinds(r#"f"a\u{85}{x}""#),
            vec![
                Token::FStart,
                Token::FText("a\u{85}".into()),
                Token::InterpStart,
                Token::Ident("x".into()),
                Token::InterpEnd,
                Token::FEnd
            ]
        );
    }

    #[test]
    fn fstring_splits_into_parts() {
        assert_eq!(
            kinds(r#"f"a {x} {{b}}""#),
            vec![
                Token::FStart,
                Token::FText("a ".into()),
                Token::InterpStart,
                Token::Ident("x".into()),
                Token::InterpEnd,
                Token::FText(" {b}".into()),
                Token::FEnd
            ]
        );
    }

    #[test]
    fn newlines_inside_parens_are_dropped() {
        assert_eq!(
            kinds("f(1,\n2)\n\n"),
            vec![
                Token::Ident("f".into()),
                Token::LParen,
                Token::Int(1),
                Token::Comma,
                Token::Int(2),
                Token::RParen,
                Token::Newline
            ]
        );
    }

    #[test]
    fn triple_quoted_spans_lines_and_escapes_decode() {
        assert_eq!(
            kinds("\"\"\"a\nb\\t\"\"\""),
            vec![Token::Str("a\nb\t".into())]
        );
    }

    #[test]
    fn errors_are_reported_with_spans() {
        let lexed = lex("let x = \"abc\nlet y = 1 $");
        let codes: Vec<_> = lexed.diagnostics.iter().map(|d| d.code).collect();
        assert_eq!(codes, vec!["E0002", "E0001"]);
        assert_eq!(lexed.diagnostics[1].primary.span, Span::new(23, 24));
    }
}
