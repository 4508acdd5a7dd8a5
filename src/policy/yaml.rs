//! The YAML layer: a policy file's text → its documents as trees of [`Node`]s, each carrying
//! the line and column the parser (serde-saphyr) reported for it. Every `file:line:col` a
//! problem names comes from these positions; nothing searches the text.
//!
//! Anchors, aliases, merge keys (`<<: *defaults`) and several documents per file are the
//! parser's; empty documents (a leading `---`, a file of comments) yield nothing. Duplicate
//! keys are passed through so that the reader can report each at its own line. Scalars are
//! typed by the YAML 1.2 core schema (`true`/`false` only; `yes`, `on`, `y` stay strings).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{DuplicateKeyPolicy, NonFiniteFloatPolicy, Spanned};

/// A line and column in a policy file, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// A YAML value and where it is defined (for a value reached through an alias or a merge key,
/// the anchored text it came from: that is what to edit).
#[derive(Debug, Clone)]
pub struct Node {
    pub value: Value,
    pub at: Pos,
}

#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// In document order, duplicates included.
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// What a type error says was found, e.g. "integer `3`".
    pub fn describe(&self) -> String {
        match self {
            Value::Null => "null".into(),
            Value::Bool(b) => format!("boolean `{b}`"),
            Value::Int(i) => format!("integer `{i}`"),
            Value::Float(f) => format!("floating point `{f}`"),
            Value::Str(s) => format!("string \"{s}\""),
            Value::Seq(_) => "sequence".into(),
            Value::Map(_) => "map".into(),
        }
    }

    /// A scalar as text (a key written as `1:` or `true:`); `None` for collections.
    pub fn scalar_text(&self) -> Option<String> {
        match self {
            Value::Null => Some(String::new()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Str(s) => Some(s.clone()),
            Value::Seq(_) | Value::Map(_) => None,
        }
    }
}

/// A file that is not YAML, or that the parser refuses (beyond its limits).
#[derive(Debug, Clone)]
pub struct Error {
    pub at: Pos,
    pub message: String,
}

/// The most documents one file may hold. A generated file of that many policies validates in
/// well under a second (`benches/validate.rs`); beyond it, a file is refused as a whole.
pub const MAX_DOCUMENTS: usize = 10_000;

/// The non-empty documents of `text`, in order. A syntax error ends the file (the parser
/// cannot go on); a document the parser could read but not build (a bad merge key) is an
/// error of its own and the next document is read. `Err` refuses the whole file (more than
/// [`MAX_DOCUMENTS`]).
pub fn documents(text: &str) -> Result<Vec<Result<Node, Error>>, Error> {
    // A file that reads without error is read from the text directly, about twice as fast as
    // through the streaming reader (`benches/validate.rs`: 10,000 files in 0.77 s instead of
    // 1.4 s). The streaming reader is what reports each document's error on its own and goes on
    // to the next, so a file with any error (or over the document limit) is read again that
    // way. Both skip the same empty documents.
    if let Ok(nodes) = serde_saphyr::from_multiple_with_options::<Node>(text, options())
        && nodes.len() <= MAX_DOCUMENTS
    {
        return Ok(nodes.into_iter().map(Ok).collect());
    }
    streamed(text)
}

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        duplicate_keys: DuplicateKeyPolicy::PassThrough,
        strict_booleans: true,
        non_finite_float_policy: NonFiniteFloatPolicy::AsString,
        with_snippet: false,
    }
}

/// [`documents`] through the streaming reader: one result per document.
fn streamed(text: &str) -> Result<Vec<Result<Node, Error>>, Error> {
    // The parser's budget (nodes, nesting, aliases) applies to each document; the number of
    // documents is counted here.
    let mut bytes = text.as_bytes();
    let mut documents = Vec::new();
    for document in serde_saphyr::read_with_options::<_, Node>(&mut bytes, options()) {
        let document = document.map_err(|e| error(&e, text));
        if documents.len() == MAX_DOCUMENTS {
            let at = match &document {
                Ok(node) => node.at,
                Err(e) => e.at,
            };
            let message = format!(
                "more than {MAX_DOCUMENTS} documents in one file; split it into several files (the limit keeps validation fast)"
            );
            return Err(Error { at, message });
        }
        documents.push(document);
    }
    Ok(documents)
}

fn error(e: &serde_saphyr::Error, text: &str) -> Error {
    let at = e.location().map(|l| pos(&l)).unwrap_or(Pos { line: 1, column: 1 });
    let mut original = e;
    while let serde_saphyr::Error::AliasError { error, .. } | serde_saphyr::Error::WithSnippet { error, .. } = original
    {
        original = error;
    }
    if let serde_saphyr::Error::Budget { breach, .. } = original {
        return Error { at, message: beyond_budget(breach) };
    }
    let plain = serde_saphyr::render_options! { snippets: serde_saphyr::SnippetMode::Off, };
    let rendered = e.render_with_options(plain);
    Error { at, message: human(strip_location(&rendered), token_at(text, at)) }
}

/// The parser's message in words a policy author can act on; messages not known here are
/// passed on as they are.
fn human(message: &str, token: &str) -> String {
    let says = |part: &str| message.contains(part);
    if says("found a tab") || says("tabs disallowed") {
        return "tabs are not allowed; indent with spaces".into();
    }
    if let Some(rest) = message.strip_prefix("unclosed bracket '") {
        let open = rest.chars().next().unwrap_or('[');
        let close = if open == '{' { '}' } else { ']' };
        return format!("`{open}` is never closed with `{close}`");
    }
    if says("unclosed quote") {
        return "this quoted string is never closed".into();
    }
    if says("mapping values are not allowed") || says("illegal placement of ':'") {
        return "unexpected `:`; check the indentation of this line, or quote a value that contains `: `".into();
    }
    if says("did not find expected key") || says("simple key expected") {
        return "expected `key: value` at this indentation; check the indentation of this line".into();
    }
    if says("did not find expected '-'") {
        return "expected a list item (`- ...`) at this indentation; check the indentation of this line".into();
    }
    if says("alias references unknown anchor") {
        let name = token.trim_start_matches('*');
        return format!("`*{name}` refers to no anchor: define `&{name}` before it, in this document");
    }
    if let Some(rest) = message.strip_prefix("unexpected character: `") {
        let c = rest.trim_end_matches('\'');
        return format!("a value cannot start with `{c}`; quote it");
    }
    if says("misplaced bracket") {
        return "a closing bracket that closes nothing".into();
    }
    if says("merge value must be mapping") {
        return "`<<` merges a map (`<<: *defaults`) or a list of maps".into();
    }
    message.to_string()
}

/// The word at `at` in `text` (an alias `*name`, a key), for messages.
fn token_at(text: &str, at: Pos) -> &str {
    let line = text.lines().nth(at.line.saturating_sub(1)).unwrap_or_default();
    let start = line.char_indices().nth(at.column.saturating_sub(1)).map_or(line.len(), |(i, _)| i);
    let rest = &line[start..];
    let end = rest.find(|c: char| c.is_whitespace() || matches!(c, ',' | ']' | '}')).unwrap_or(rest.len());
    &rest[..end]
}

/// A document beyond the parser's limits, which protect against documents built to exhaust
/// memory or time (alias bombs among them).
fn beyond_budget(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach;
    let what = match breach {
        BudgetBreach::Nodes { .. } | BudgetBreach::Events { .. } => "holds more values than a policy document may",
        BudgetBreach::Depth { .. } => "is nested deeper than a policy document may be",
        BudgetBreach::Aliases { .. } | BudgetBreach::AliasAnchorRatio { .. } | BudgetBreach::Anchors { .. } => {
            "uses more aliases (`*name`) than a policy document may"
        }
        BudgetBreach::ScalarBytes { .. } => "holds more text than a policy document may",
        BudgetBreach::MergeKeys { .. } => "uses more merge keys (`<<`) than a policy document may",
        _ => "is larger than a policy document may be",
    };
    format!("this document {what}; split it (parser limit: {breach:?})")
}

/// The renderer appends " at line X, column Y" (or starts with "line X column Y: "); the
/// location is printed in front of every problem anyway.
fn strip_location(message: &str) -> &str {
    let message = message.trim();
    let message = match message.find(" at line ") {
        Some(i) => &message[..i],
        None => message,
    };
    match message.strip_prefix("error: ") {
        Some(rest) => rest.split_once(": ").filter(|(head, _)| head.starts_with("line ")).map_or(rest, |(_, m)| m),
        None => message,
    }
}

fn pos(location: &serde_saphyr::Location) -> Pos {
    Pos { line: location.line() as usize, column: location.column() as usize }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        let spanned = Spanned::<Value>::deserialize(deserializer)?;
        Ok(Node { value: spanned.value, at: pos(&spanned.defined) })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Value::deserialize(deserializer)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }

    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(i128::try_from(v).map(Value::Int).unwrap_or(Value::Float(v as f64)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = items.next_element()? {
            out.push(item);
        }
        Ok(Value::Seq(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(entry) = entries.next_entry()? {
            out.push(entry);
        }
        Ok(Value::Map(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(text: &str) -> Node {
        let mut documents = documents(text).unwrap();
        assert_eq!(documents.len(), 1, "{documents:?}");
        documents.remove(0).unwrap()
    }

    fn entry<'a>(node: &'a Node, key: &str) -> &'a (Node, Node) {
        let Value::Map(entries) = &node.value else { panic!("{node:?}") };
        entries.iter().find(|(k, _)| matches!(&k.value, Value::Str(s) if s == key)).unwrap()
    }

    #[test]
    fn positions_of_keys_and_values() {
        let node = only("# c\n\"name\": 'x'\nschedule: { every: 1h, 'jitter': 5m }\n");
        let (key, value) = entry(&node, "name");
        assert_eq!((key.at, value.at), (Pos { line: 2, column: 1 }, Pos { line: 2, column: 9 }));
        let (_, schedule) = entry(&node, "schedule");
        let (key, _) = entry(schedule, "jitter");
        assert_eq!(key.at, Pos { line: 3, column: 24 });
    }

    #[test]
    fn anchors_merges_and_empty_documents() {
        let docs =
            documents("---\n# nothing\n---\nd: &d { kind: api_key, name: x }\nc:\n  <<: *d\n  name: y\n").unwrap();
        assert_eq!(docs.len(), 1);
        let node = docs[0].as_ref().unwrap();
        let (_, c) = entry(node, "c");
        let Value::Map(fields) = &c.value else { panic!() };
        assert_eq!(fields.len(), 2, "the explicit `name` overrides the merged one: {fields:?}");
        let (key, value) = entry(c, "kind");
        assert_eq!(key.at.line, 4, "a merged key is placed where it is defined");
        assert!(matches!(&value.value, Value::Str(s) if s == "api_key"));
    }

    #[test]
    fn duplicates_pass_through_and_scalars_are_core_schema() {
        let node = only("k: 1\nk: 2\ny: n\nt: true\ns: \"1\"\n");
        let Value::Map(entries) = &node.value else { panic!() };
        let keys: Vec<String> = entries.iter().map(|(k, _)| k.value.scalar_text().unwrap()).collect();
        assert_eq!(keys, ["k", "k", "y", "t", "s"]);
        assert!(matches!(entries[2].1.value, Value::Str(_)));
        assert!(matches!(entries[3].1.value, Value::Bool(true)));
        assert!(matches!(entries[4].1.value, Value::Str(_)));
    }

    /// An alias bomb (each level ten aliases of the one before) is refused, not expanded.
    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let previous = format!("*a{}", i - 1);
            text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![previous; 10].join(", ")));
        }
        let docs = documents(&text).unwrap();
        let e = docs[0].as_ref().unwrap_err();
        assert!(e.message.contains("alias") || e.message.contains("policy document may"), "{e:?}");
    }

    /// The fast path (the whole text at once) and the streaming reader see the same documents
    /// at the same places.
    #[test]
    fn both_readings_agree() {
        let mut texts: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        texts.push("---\n# nothing\n---\nd: &d { kind: api_key, name: x }\nc:\n  <<: *d\n  name: y\n---\n~\n".into());
        texts.push("k: 1\nk: 2\ny: n\nt: true\nf: .nan\nbig: 340282366920938463463374607431768211455\n".into());
        for text in &texts {
            let fast = serde_saphyr::from_multiple_with_options::<Node>(text, options()).unwrap();
            let streamed: Vec<Node> = streamed(text).unwrap().into_iter().map(Result::unwrap).collect();
            assert_eq!(format!("{fast:?}"), format!("{streamed:?}"), "{text}");
        }
    }

    #[test]
    fn syntax_errors_have_a_position_and_end_the_file() {
        let docs = documents("name: a\n---\nname: [b\n---\nname: c\n").unwrap();
        assert_eq!(docs.len(), 2, "{docs:?}");
        assert!(docs[0].is_ok());
        let e = docs[1].as_ref().unwrap_err();
        assert_eq!(e.at.line, 3, "{e:?}");
        assert!(!e.message.contains("line"), "{e:?}");
    }
}
