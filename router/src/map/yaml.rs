//! Every YAML read and written by postshard goes through here: shard maps,
//! and the rebalancer's plan files.
//!
//! Reading uses `serde-saphyr` (a maintained YAML 1.2 parser, `granit-parser`,
//! under serde). Files are taken as editors write them: a leading UTF-8
//! byte-order mark is dropped, CRLF line ends and tabs between tokens are
//! accepted. Duplicate keys are refused at their second occurrence, alias
//! expansion is budgeted (an alias bomb is refused, not expanded), and every
//! error carries a 1-based line and column. [`nodes`] walks the same parser's
//! events to index where each value stands by path, with its text as written.
//!
//! Writing: [`scalar`] quotes a string so that YAML 1.2 and YAML 1.1 readers
//! (PyYAML, Ansible) read back the same string.

use std::fmt::Write;

use serde::de::DeserializeOwned;
use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle};
use serde_saphyr::{DuplicateKeyPolicy, Options};

/// A 1-based line and column (in characters) in a YAML file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

/// Why a YAML text could not be read into the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// Path of the offending key or value (`shards[2].colour`), when known;
    /// else empty.
    pub path: String,
    /// Where, when the parser knows.
    pub location: Option<Location>,
    /// What is wrong, naming the offending text when it is a scalar.
    pub message: String,
}

/// The text of a file as editors save it: UTF-8 with or without a
/// byte-order mark, or UTF-16 (little- or big-endian) with one, as Windows
/// Notepad's "Unicode" and PowerShell 5's `>` write. Also for JSON load
/// files. A leading byte-order mark is dropped.
///
/// Errors: bytes that are not valid text, located at the first bad one.
pub fn decode(bytes: &[u8]) -> Result<String, Error> {
    let utf16 = |rest: &[u8], big_endian: bool| {
        let units: Vec<u16> = rest
            .chunks(2)
            .map(|pair| match (pair.first(), pair.get(1)) {
                (Some(&a), Some(&b)) if big_endian => u16::from_be_bytes([a, b]),
                (Some(&a), Some(&b)) => u16::from_le_bytes([a, b]),
                // An odd trailing byte cannot be UTF-16.
                _ => 0xDC00,
            })
            .collect();
        let mut text = String::with_capacity(units.len());
        for unit in char::decode_utf16(units) {
            match unit {
                Ok(c) => text.push(c),
                Err(_) => return Err(not_text(&text, "UTF-16")),
            }
        }
        Ok(text)
    };
    if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE]) {
        return utf16(rest, false);
    }
    if let Some(rest) = bytes.strip_prefix(&[0xFE, 0xFF]) {
        return utf16(rest, true);
    }
    let bytes = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.to_string()),
        Err(e) => {
            let valid = bytes
                .get(..e.valid_up_to())
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or("");
            Err(not_text(valid, "UTF-8"))
        }
    }
}

/// The error for text that stops being `encoding` after `valid`.
fn not_text(valid: &str, encoding: &str) -> Error {
    let line = valid.matches('\n').count() + 1;
    let column = valid.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Error {
        path: String::new(),
        location: Some(Location { line, column }),
        message: format!("the file is not valid {encoding} text here; save it as UTF-8"),
    }
}

/// `text` without a leading UTF-8 byte-order mark.
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Parses one YAML document into `T` (unknown fields are refused where `T`
/// denies them). A leading byte-order mark is ignored; locations count from
/// the character after it.
///
/// Errors: YAML syntax, more than one document, a duplicate key (at its
/// second occurrence), an alias expansion over budget, a missing, unknown or
/// mistyped field; a number that does not fit its field is quoted as written.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Error> {
    let text = strip_bom(text);
    let mut options = Options::default();
    options.with_snippet = false;
    options.duplicate_keys = DuplicateKeyPolicy::Error;
    serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let location = e.location().and_then(|l| {
            Some(Location {
                line: usize::try_from(l.line()).ok().filter(|n| *n > 0)?,
                column: usize::try_from(l.column()).ok().filter(|n| *n > 0)?,
            })
        });
        let all = nodes(text);
        let mut at = location.and_then(|at| all.iter().find(|n| n.location == at));
        let mut message = explain(&e, at);
        if let Some(hint) = location.and_then(|l| odd_space_on(text, l.line)) {
            message.push_str(&hint);
        }
        // A missing field is located at a key of its mapping: name the mapping.
        if matches!(e, serde_saphyr::Error::SerdeMissingField { .. }) {
            if let Some(key) = at.filter(|n| n.key) {
                let parent = key
                    .path
                    .rfind('.')
                    .map_or("", |cut| key.path.get(..cut).unwrap_or(""));
                at = all.iter().find(|n| !n.key && n.path == parent).or(at);
            }
        }
        Error {
            path: at.map(|n| n.path.clone()).unwrap_or_default(),
            location: at.map(|n| n.location).or(location),
            message,
        }
    })
}

/// The parser's error in our words: kinds we know are rephrased for people
/// (no library advice), numbers are quoted as written; others keep the
/// parser's message without its trailing location.
fn explain(e: &serde_saphyr::Error, at: Option<&Node>) -> String {
    use serde_saphyr::Error as E;
    let value = at.filter(|n| !n.key);
    let found = || match value {
        Some(n) if n.text.is_empty() && !n.plain => String::from(": found a list or mapping"),
        Some(n) if n.text.is_empty() => String::from(": found an empty value"),
        Some(n) => format!(": found `{}`", n.text),
        None => String::new(),
    };
    match e {
        E::DuplicateMappingKey { key, .. } => {
            let key = key.as_deref().or(at.map(|n| n.text.as_str())).unwrap_or("");
            return format!("duplicate key `{key}`");
        }
        E::MultipleDocuments { .. } => {
            return "more than one document; a file holds one".to_string();
        }
        E::Budget { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. } => {
            return format!(
                "aliases expand the document beyond the parser's budget ({}); write the values out",
                without_location(&e.to_string())
            );
        }
        E::NonFiniteFloat { value, .. } => {
            return format!("`{value}` is not a finite number");
        }
        E::NullIntoString { .. } => {
            return match value.filter(|n| !n.text.is_empty()) {
                Some(n) => format!(
                    "`{0}` reads as null, not a string; write \"{0}\" to mean the word",
                    n.text
                ),
                None => "expected a string, found an empty value".to_string(),
            };
        }
        E::Unexpected { expected, .. } => {
            let shape = match *expected {
                "mapping start" => "a mapping (`key: value` lines)",
                "sequence start" => "a list (`- item` lines or `[a, b]`)",
                "string scalar" => "a string",
                other => other,
            };
            return format!("expected {shape}{}", found());
        }
        E::InvalidScalar { ty, .. } => {
            if let (Some(range), Some(n)) = (integer_range(ty), value) {
                let what = if n.plain && looks_like_integer(&n.text) {
                    "is out of range"
                } else {
                    "is not an integer"
                };
                return format!("`{}` {what}: expected an integer from {range}", n.text);
            }
        }
        _ => {}
    }
    without_location(&e.to_string()).to_string()
}

/// A hint naming a space-like character on 1-based `line` of `text` that
/// YAML does not read as a space (pasted from a web page or a word
/// processor), or `None`.
fn odd_space_on(text: &str, line: usize) -> Option<String> {
    let l = text.lines().nth(line.checked_sub(1)?)?;
    let (column, c) = l.chars().enumerate().find(|(_, c)| {
        matches!(
            c,
            '\u{a0}' | '\u{2000}'..='\u{200b}' | '\u{202f}' | '\u{205f}' | '\u{3000}' | '\u{feff}'
        )
    })?;
    Some(format!(
        " (column {} holds U+{:04X}, a space-like character YAML does not read as a space)",
        column + 1,
        u32::from(c)
    ))
}

/// A message without the " at line L, column C" the parser appends (the
/// location is reported apart).
fn without_location(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(cut) => message.get(..cut).unwrap_or(message),
        None => message,
    }
}

/// The range of an integer type as the parser names it.
fn integer_range(ty: &str) -> Option<String> {
    Some(match ty {
        "u8" => format!("0 to {}", u8::MAX),
        "u16" => format!("0 to {}", u16::MAX),
        "u32" => format!("0 to {}", u32::MAX),
        "u64" => format!("0 to {}", u64::MAX),
        "u128" => format!("0 to {}", u128::MAX),
        "i8" => format!("{} to {}", i8::MIN, i8::MAX),
        "i16" => format!("{} to {}", i16::MIN, i16::MAX),
        "i32" => format!("{} to {}", i32::MIN, i32::MAX),
        "i64" => format!("{} to {}", i64::MIN, i64::MAX),
        "i128" => format!("{} to {}", i128::MIN, i128::MAX),
        _ => return None,
    })
}

/// Whether `text` is written as an integer, however large: optional sign,
/// then decimal digits, or `0x`/`0o`/`0b` and digits of that base, `_`
/// separators allowed (YAML 1.1).
pub fn looks_like_integer(text: &str) -> bool {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (digits, radix) = [("0x", 16), ("0o", 8), ("0b", 2)]
        .iter()
        .find_map(|(prefix, radix)| unsigned.strip_prefix(prefix).map(|d| (d, *radix)))
        .unwrap_or((unsigned, 10));
    digits.starts_with(|c: char| c.is_digit(radix))
        && digits.chars().all(|c| c.is_digit(radix) || c == '_')
}

/// Whether a decimal integer is written with a leading zero (`010`), which
/// YAML 1.1 reads as octal and YAML 1.2 as decimal.
pub fn has_leading_zero(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    digits.len() > 1
        && digits.starts_with('0')
        && digits.chars().all(|c| c.is_ascii_digit() || c == '_')
}

/// A value or mapping key of a YAML document: its path (`shards[1].url`),
/// where it starts and its text as written (a scalar's value, `*` for an
/// alias, or empty for a mapping or list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Path from the root: keys joined by `.`, list items as `[i]`; the
    /// document itself is the empty path.
    pub path: String,
    /// Where the value starts (an alias: where the alias stands).
    pub location: Location,
    /// The scalar's text (plain scalars: exactly as written).
    pub text: String,
    /// Whether this is the key of the entry at `path` rather than its value.
    pub key: bool,
    /// Whether the scalar is plain (unquoted, untagged, not a block scalar);
    /// true for an alias, false for a mapping or list.
    pub plain: bool,
}

/// Every key and value of the first document in document order; a
/// document that does not parse yields the values before the error. Aliases
/// are not expanded. A byte-order mark is ignored.
pub fn nodes(text: &str) -> Vec<Node> {
    let mut walk = Walk::default();
    let mut parser = Parser::new_from_str(strip_bom(text));
    while let Some(Ok((event, span))) = parser.next_event() {
        let location = Location {
            line: span.start.line(),
            column: span.start.col() + 1,
        };
        if !walk.on_event(event, location) {
            break;
        }
    }
    walk.nodes
}

/// A container being walked: a mapping (waiting for a key or a value) or a
/// sequence (counting items).
enum Frame {
    Mapping { path: String, key: Option<String> },
    Sequence { path: String, next: usize },
}

#[derive(Default)]
struct Walk {
    stack: Vec<Frame>,
    nodes: Vec<Node>,
}

impl Walk {
    /// The path of the node that starts now, or `None` when it is a mapping key.
    fn next_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Sequence { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
            Some(Frame::Mapping { path, key }) => key.take().map(|k| join(path, &k)),
        }
    }

    /// Takes `text` as the key of the current mapping's next entry.
    fn key(&mut self, text: String, location: Location) {
        if let Some(Frame::Mapping { path, key }) = self.stack.last_mut() {
            self.nodes.push(Node {
                path: join(path, &text),
                location,
                text: text.clone(),
                key: true,
                plain: true,
            });
            *key = Some(text);
        }
    }

    /// Records one event; `false` once the first document has ended.
    fn on_event(&mut self, event: Event<'_>, location: Location) -> bool {
        match event {
            Event::Scalar(value, style, _, tag) => match self.next_path() {
                Some(path) => self.nodes.push(Node {
                    path,
                    location,
                    text: value.into_owned(),
                    key: false,
                    plain: matches!(style, ScalarStyle::Plain) && tag.is_none(),
                }),
                None => self.key(value.into_owned(), location),
            },
            Event::Alias(_) => match self.next_path() {
                Some(path) => self.nodes.push(Node {
                    path,
                    location,
                    text: String::from("*"),
                    key: false,
                    plain: true,
                }),
                None => self.key("*".to_string(), location),
            },
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // A complex mapping key gets no path of its own.
                let path = self.next_path().unwrap_or_else(|| "?".to_string());
                self.nodes.push(Node {
                    path: path.clone(),
                    location,
                    text: String::new(),
                    key: false,
                    plain: false,
                });
                self.stack
                    .push(if matches!(event, Event::MappingStart(..)) {
                        Frame::Mapping { path, key: None }
                    } else {
                        Frame::Sequence { path, next: 0 }
                    });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::DocumentEnd => return false,
            _ => {}
        }
        true
    }
}

/// `parent.key`, or `key` at the root.
fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Plain scalars a YAML 1.1 or 1.2 reader takes for something other than a
/// string (compared case-insensitively): booleans and nulls. Numbers,
/// timestamps, `.inf`, `=` and `<<` are excluded by [`scalar`]'s first
/// character and character set.
const NOT_STRINGS: [&str; 10] = [
    "y", "n", "yes", "no", "true", "false", "on", "off", "null", "~",
];

/// `s` as a YAML scalar that reads back as the same string in YAML 1.2 and
/// YAML 1.1 readers, in block and flow context: plain only when it starts
/// with an ASCII letter or `_`, holds only ASCII letters, digits and `_-./@`,
/// and is no boolean or null word (`no`, `On`, `y`, `null`); else
/// double-quoted with every character a reader could misread escaped.
pub fn scalar(s: &str) -> String {
    let first_ok = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-./@".contains(c));
    let word = NOT_STRINGS.iter().any(|w| w.eq_ignore_ascii_case(s));
    if first_ok && rest_ok && !word {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            // Controls, DEL, C1 controls (NEL among them), the line and
            // paragraph separators, the byte order mark and non-characters.
            c if c.is_control()
                || matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
                ) =>
            {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Strings YAML 1.1 (PyYAML, Ansible) or 1.2 resolve to another type, or
    /// misread when plain: each must be quoted.
    const MUST_QUOTE: &[&str] = &[
        "no",
        "No",
        "NO",
        "n",
        "N",
        "yes",
        "Yes",
        "YES",
        "y",
        "Y",
        "on",
        "On",
        "ON",
        "off",
        "Off",
        "OFF",
        "true",
        "True",
        "TRUE",
        "false",
        "False",
        "FALSE",
        "null",
        "Null",
        "NULL",
        "~",
        "",
        "0x10",
        "0o17",
        "017",
        "1_000",
        "1e3",
        "1.5",
        "-1",
        "+1",
        ".inf",
        "-.inf",
        ".Inf",
        ".nan",
        ".NaN",
        "2001-12-14",
        "2001-12-14t21:59:43.10-05:00",
        "190:20:30",
        "=",
        "<<",
        "-",
        "?",
        ":",
        "-x",
        "@x",
        "`x",
        "!x",
        "&x",
        "*x",
        "|",
        ">",
        "%x",
        "#x",
        "x #y",
        "x: y",
        "a,b",
        "[x]",
        "{x}",
        "x y",
        " x",
        "x ",
        "'x'",
        "\"x\"",
        "x\ny",
        "é",
        "0",
        "123",
    ];
    /// Strings that stay plain: names as people write them.
    const PLAIN: &[&str] = &[
        "s0",
        "shard-1",
        "posts",
        "public.posts",
        "post_id",
        "_x",
        "a.b/c@d",
        "nope",
        "yess",
        "Norway",
        "null_shard",
        "x1_000",
    ];

    #[test]
    fn quotes_every_string_another_reader_could_misread() {
        for s in MUST_QUOTE {
            let q = scalar(s);
            assert!(q.starts_with('"') && q.ends_with('"'), "{s:?} -> {q}");
        }
        for s in PLAIN {
            assert_eq!(scalar(s), *s);
        }
    }

    proptest::proptest! {
        #[test]
        fn scalars_read_back_in_block_and_flow_context(s in "\\PC*|[ -~]*|[a-z0-9 ,:#{}\\[\\]'\"!&*|>%@./_-]{0,6}|[\\x00-\\x7f\\u{80}-\\u{a0}\\u{2028}\\u{feff}]*") {
            let block: BTreeMap<String, String> = from_str(&format!("k: {}\n", scalar(&s)))
                .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{s:?}: {e}")))?;
            proptest::prop_assert_eq!(block.get("k").map(String::as_str), Some(s.as_str()));
            let flow: Vec<BTreeMap<String, String>> =
                from_str(&format!("- {{ k: {}, l: x }}\n", scalar(&s)))
                    .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{s:?}: {e}")))?;
            proptest::prop_assert_eq!(flow.first().and_then(|m| m.get("k")).map(String::as_str), Some(s.as_str()));
        }
    }

    #[test]
    fn reads_bom_crlf_and_tabs() {
        let text = "\u{feff}# written on Windows\r\na:\t1\r\nb: { c:\t2 }\r\n";
        let got: BTreeMap<String, serde_json_like::V> = from_str(text).unwrap();
        assert_eq!(got.len(), 2);
        let n = nodes(text);
        let a = n.iter().find(|n| n.path == "a" && !n.key).unwrap();
        assert_eq!(
            (a.location, a.text.as_str()),
            (Location { line: 2, column: 4 }, "1")
        );
        let c = n.iter().find(|n| n.path == "b.c" && !n.key).unwrap();
        assert_eq!(c.location, Location { line: 3, column: 9 });
    }

    #[test]
    fn decodes_utf8_with_or_without_bom_and_utf16_with_bom() {
        let text = "a: é\r\nb: 😀\n";
        let utf16 = |big: bool, bom: [u8; 2]| {
            let mut bytes = bom.to_vec();
            for unit in text.encode_utf16() {
                bytes.extend(if big {
                    unit.to_be_bytes()
                } else {
                    unit.to_le_bytes()
                });
            }
            bytes
        };
        for bytes in [
            text.as_bytes().to_vec(),
            [&[0xEF, 0xBB, 0xBF][..], text.as_bytes()].concat(),
            utf16(false, [0xFF, 0xFE]),
            utf16(true, [0xFE, 0xFF]),
        ] {
            assert_eq!(decode(&bytes).unwrap(), text);
        }
        let e = decode(b"a: 1\nbc: \xff\n").unwrap_err();
        assert_eq!(e.location, Some(Location { line: 2, column: 5 }));
        assert!(e.message.contains("not valid UTF-8"), "{e}");
        let mut odd = utf16(false, [0xFF, 0xFE]);
        odd.push(b'x');
        assert!(decode(&odd).unwrap_err().message.contains("UTF-16"));
    }

    #[test]
    fn duplicate_keys_are_located_at_the_second() {
        let e = from_str::<BTreeMap<String, u32>>("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.location, Some(Location { line: 3, column: 1 }));
        assert_eq!(
            (e.path.as_str(), e.message.as_str()),
            ("a", "duplicate key `a`")
        );
    }

    #[test]
    fn numbers_that_do_not_fit_are_quoted_as_written() {
        let big = "99999999999999999999999999999999999999999999";
        let e = from_str::<BTreeMap<String, u64>>(&format!("a: 1\nb: {big}\n")).unwrap_err();
        assert_eq!(e.location, Some(Location { line: 2, column: 4 }));
        assert_eq!(
            e.message,
            format!("`{big}` is out of range: expected an integer from 0 to 18446744073709551615")
        );
        let e = from_str::<BTreeMap<String, i64>>("a: 1.5\n").unwrap_err();
        assert!(e.message.starts_with("`1.5` is not an integer"), "{e}");
    }

    #[test]
    fn alias_bombs_are_refused_not_expanded() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut previous = 'a';
        for c in 'b'..='m' {
            let refs = vec![format!("*{previous}"); 10].join(", ");
            bomb.push_str(&format!("{c}: &{c} [{refs}]\n"));
            previous = c;
        }
        let e = from_str::<BTreeMap<String, serde_json_like::V>>(&bomb).unwrap_err();
        assert!(e.message.contains("budget"), "{e}");
        assert!(e.location.is_some());
        // The index does not expand aliases either.
        assert!(nodes(&bomb).len() < 200);
    }

    /// Any YAML value, discarded (the tests check shapes, not contents).
    mod serde_json_like {
        #[derive(Debug)]
        pub struct V;
        impl<'de> serde::Deserialize<'de> for V {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<V, D::Error> {
                serde::de::IgnoredAny::deserialize(d).map(|_| V)
            }
        }
    }
}
