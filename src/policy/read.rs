//! A document's nodes → a validated [`Policy`]. One pass over the document reports every
//! problem in it: each field is read on its own, so a wrong type, an unknown field or a missing
//! one is reported where it is and the other fields are still read and checked; the rules that
//! relate fields (grace against interval, jitter against interval) run whenever the fields they
//! relate were readable. Problems about a field are placed at its key, problems about a list
//! item at the item.
//!
//! What a document may contain is the raw form of `mod.rs` ([`Document`](super::Document), the
//! `*Spec` types and [`Destination`] with its kinds); the [`Shape`]s here name the same fields
//! (and the kinds of a destination), and a test compares them with the JSON Schema generated from
//! the raw form.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use super::places::{self, MAYBE_SAME, Overlap, secret_arn, vault_path};
use super::rules::{cron_text, file_path, quoted_list, shortest_gap, spelled_out, valid_label, valid_name};
use super::yaml::{Node, Pos, Value};
use super::{
    AwsDestination, Credential, CredentialKind, DEFAULT_GRACE, Destination, FileDestination, Location, MAX_DURATION,
    MIN_INTERVAL, Policy, Problem, Revoke, VaultDestination,
};
use crate::duration;
use crate::schedule::{Cron, Schedule, Trigger, Window};

/// The fields of one raw type: its JSON Schema definition, every field and the required ones.
pub(super) struct Shape {
    /// The `$defs` entry of the JSON Schema; empty for the document itself.
    pub def: &'static str,
    pub fields: &'static [&'static str],
    pub required: &'static [&'static str],
}

pub(super) const DOCUMENT: Shape = Shape {
    def: "",
    fields: &["name", "description", "labels", "credential", "schedule", "destinations", "revoke", "notify"],
    required: &["name", "credential", "schedule", "destinations"],
};
const CREDENTIAL: Shape =
    Shape { def: "CredentialSpec", fields: &["kind", "name", "scopes"], required: &["kind", "name"] };
const SCHEDULE: Shape =
    Shape { def: "ScheduleSpec", fields: &["every", "cron", "window", "timezone", "jitter"], required: &[] };
const WINDOW: Shape =
    Shape { def: "WindowSpec", fields: &["days", "start", "duration"], required: &["start", "duration"] };
/// The kinds of [`Destination`], its variants' keys (the schema's `oneOf` branches): one of them
/// is given, which `Reader::destination` checks.
const DESTINATION: Shape =
    Shape { def: "Destination", fields: &["aws_secrets_manager", "vault", "file"], required: &[] };
const REVOKE: Shape = Shape { def: "RevokeSpec", fields: &["grace", "require_idle"], required: &[] };
const AWS: Shape =
    Shape { def: "AwsDestination", fields: &["secret_id", "region", "create", "kms_key_id"], required: &["secret_id"] };
const VAULT: Shape = Shape {
    def: "VaultDestination",
    fields: &["mount", "path", "staging_path", "create"],
    required: &["mount", "path"],
};
const FILE: Shape = Shape { def: "FileDestination", fields: &["path"], required: &["path"] };

/// Every shape, for the test that compares them with the JSON Schema.
#[cfg(test)]
pub(super) const SHAPES: [&Shape; 9] =
    [&DOCUMENT, &CREDENTIAL, &SCHEDULE, &WINDOW, &DESTINATION, &REVOKE, &AWS, &VAULT, &FILE];

/// One field of a document: its dotted path, where it is (its key, or a list item itself) and
/// its value.
#[derive(Clone)]
struct Field<'n> {
    path: String,
    at: Pos,
    node: &'n Node,
}

impl<'n> Field<'n> {
    fn child(&self, key: &str, at: Pos, node: &'n Node) -> Field<'n> {
        let path = if self.path.is_empty() { key.to_string() } else { format!("{}.{key}", self.path) };
        Field { path, at, node }
    }
}

/// The known fields of a mapping, by name.
struct Fields<'n> {
    entries: Vec<(String, Field<'n>)>,
}

impl<'n> Fields<'n> {
    /// The field, also when it has no value.
    fn get(&self, key: &str) -> Option<&Field<'n>> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, f)| f)
    }

    /// The field if it has a value: `key:` with nothing after it counts as left out.
    fn value(&self, key: &str) -> Option<&Field<'n>> {
        self.get(key).filter(|f| !matches!(f.node.value, Value::Null))
    }
}

/// Reads the documents of one file, collecting problems.
pub(super) struct Reader<'a> {
    file: &'a Path,
    problems: Vec<Problem>,
}

/// What `revoke` said, for the checks against the schedule.
struct RevokeRead<'n> {
    /// The parsed grace, when given and valid.
    grace: Option<Duration>,
    /// The `grace` field when given (even if invalid: then no default applies either).
    grace_field: Option<Field<'n>>,
    require_idle: Option<Duration>,
}

impl<'a> Reader<'a> {
    pub fn new(file: &'a Path) -> Reader<'a> {
        Reader { file, problems: Vec::new() }
    }

    pub fn into_problems(self) -> Vec<Problem> {
        self.problems
    }

    fn location(&self, at: Pos) -> Location {
        Location { file: self.file.to_path_buf(), line: at.line, column: at.column }
    }

    pub fn problem(&mut self, at: Pos, field: &str, message: impl Into<String>) {
        let location = self.location(at);
        self.problems.push(Problem { location, field: field.to_string(), message: message.into() });
    }

    fn type_error(&mut self, field: &Field<'_>, expected: &str) {
        let found = field.node.value.describe();
        self.problem(field.at, &field.path, format!("invalid type: {found}, expected {expected}"));
    }

    /// One document: the policy, or `None` with every problem of it reported.
    pub fn document(&mut self, root: &Node) -> Option<Policy> {
        let before = self.problems.len();
        let doc = Field { path: String::new(), at: root.at, node: root };
        let fields = self.mapping(&doc, &DOCUMENT)?;
        let name = fields.value("name").and_then(|f| self.name(f));
        let description = fields.value("description").and_then(|f| self.string(f));
        let labels = fields.value("labels").map_or(Some(BTreeMap::new()), |f| self.labels(f));
        let credential = fields.value("credential").and_then(|f| self.credential(f));
        let revoke = self.revoke(fields.get("revoke"));
        let schedule = fields.value("schedule").and_then(|f| self.schedule(f, &revoke));
        let destinations = fields.value("destinations").and_then(|f| self.destinations(f));
        let notify = fields.value("notify").map_or(Some(Vec::new()), |f| self.notify(f));
        if self.problems.len() > before {
            return None;
        }
        Some(Policy {
            name: name?,
            description,
            labels: labels?,
            credential: credential?,
            schedule: schedule?,
            destinations: destinations?,
            revoke: Revoke { grace: revoke.grace.unwrap_or(DEFAULT_GRACE), require_idle: revoke.require_idle },
            notify: notify?,
            source: self.location(fields.get("name").map_or(root.at, |f| f.at)),
        })
    }

    // ---- structure ----

    /// The entries of a mapping with their keys as text. A key given twice is reported at its
    /// second place and that entry ignored; the first one is read.
    fn entries<'n>(&mut self, field: &Field<'n>, expected: &str) -> Option<Vec<(String, Field<'n>)>> {
        let Value::Map(map) = &field.node.value else {
            self.type_error(field, expected);
            return None;
        };
        let mut seen: HashMap<String, Pos> = HashMap::with_capacity(map.len());
        let mut out = Vec::with_capacity(map.len());
        for (key, value) in map {
            let Some(text) = key.value.scalar_text() else {
                self.problem(key.at, &field.path, "a key must be a plain word, not a list or a map");
                continue;
            };
            let child = field.child(&text, key.at, value);
            if let Some(first) = seen.get(&text) {
                let message = format!("`{text}` is given twice (first at line {}); remove one", first.line);
                self.problem(key.at, &child.path, message);
                continue;
            }
            seen.insert(text.clone(), key.at);
            out.push((text, child));
        }
        Some(out)
    }

    /// A mapping of the raw form: unknown fields (at their key) and missing required ones (at
    /// the mapping's key) are reported; the known fields are returned.
    fn mapping<'n>(&mut self, field: &Field<'n>, shape: &Shape) -> Option<Fields<'n>> {
        if !matches!(field.node.value, Value::Map(_)) {
            let expected = match shape.required {
                [] => "a map".to_string(),
                required => format!("a map with {}", quoted_list(required, "and")),
            };
            let expected = if shape.def.is_empty() { format!("a policy: {expected}") } else { expected };
            self.type_error(field, &expected);
            return None;
        }
        let mut entries = self.entries(field, "a map")?;
        entries.retain(|(key, child)| {
            let known = shape.fields.contains(&key.as_str());
            if !known {
                let reported_as = if field.path.is_empty() { key.as_str() } else { field.path.as_str() };
                let message = format!("unknown field `{key}`, expected one of {}", quoted_list(shape.fields, "or"));
                self.problem(child.at, reported_as, message);
            }
            known
        });
        let fields = Fields { entries };
        for required in shape.required {
            match fields.get(required) {
                None => self.problem(field.at, &field.path, format!("missing field `{required}`")),
                Some(f) if matches!(f.node.value, Value::Null) => {
                    let message = format!("`{required}` has no value");
                    self.problem(f.at, &f.path, message)
                }
                Some(_) => {}
            }
        }
        Some(fields)
    }

    fn string(&mut self, field: &Field<'_>) -> Option<String> {
        match &field.node.value {
            Value::Str(text) => Some(text.clone()),
            Value::Null => {
                self.problem(field.at, &field.path, "has no value; expected a string");
                None
            }
            _ => {
                self.type_error(field, "a string");
                None
            }
        }
    }

    fn boolean(&mut self, field: &Field<'_>) -> Option<bool> {
        match field.node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.type_error(field, "`true` or `false`");
                None
            }
        }
    }

    /// The items of a list, each its own field (`path[i]`, at the item).
    fn list<'n>(&mut self, field: &Field<'n>, expected: &str) -> Option<Vec<Field<'n>>> {
        let Value::Seq(items) = &field.node.value else {
            self.type_error(field, expected);
            return None;
        };
        let items = items
            .iter()
            .enumerate()
            .map(|(i, node)| Field { path: format!("{}[{i}]", field.path), at: node.at, node })
            .collect();
        Some(items)
    }

    /// A list of strings, each with its field; `None` if any item is not a string.
    fn strings<'n>(&mut self, field: &Field<'n>) -> Option<Vec<(String, Field<'n>)>> {
        let items = self.list(field, "a list of strings")?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match self.string(&item) {
                Some(text) => out.push((text, item)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn duration(&mut self, field: &Field<'_>) -> Option<Duration> {
        // `every: 30` is read as a number: say what a duration needs, as for `30` in quotes.
        let text = match &field.node.value {
            Value::Int(n) => n.to_string(),
            _ => self.string(field)?,
        };
        match duration::parse(&text) {
            Ok(d) if d > MAX_DURATION => {
                self.problem(field.at, &field.path, format!("`{text}` is longer than the maximum of 10 years"));
                None
            }
            Ok(d) => Some(d),
            Err(message) => {
                let message = match spelled_out(&text) {
                    Some(written) if text.contains(char::is_whitespace) => {
                        format!("`{text}` is not a duration; write `{written}` (no space)")
                    }
                    Some(written) => format!("`{text}` is not a duration; write `{written}`"),
                    None => message,
                };
                self.problem(field.at, &field.path, message);
                None
            }
        }
    }

    // ---- the fields of a policy ----

    fn name(&mut self, field: &Field<'_>) -> Option<String> {
        let name = self.string(field)?;
        if !valid_name(&name) {
            let message = format!(
                "`{name}` is not a valid name: use 1-63 characters of a-z, 0-9 and `-`, not starting or ending with `-`"
            );
            self.problem(field.at, &field.path, message);
            return None;
        }
        Some(name)
    }

    fn labels(&mut self, field: &Field<'_>) -> Option<BTreeMap<String, String>> {
        let entries = self.entries(field, "a map of labels")?;
        let mut labels = BTreeMap::new();
        let mut ok = true;
        for (key, child) in entries {
            let Some(value) = self.string(&child) else {
                ok = false;
                continue;
            };
            if !valid_label(&key) || !valid_label(&value) {
                let message = format!(
                    "`{key}: {value}`: keys and values are 1-63 characters of letters, digits, `-`, `_`, `.`, `/`"
                );
                self.problem(child.at, &child.path, message);
                ok = false;
            }
            labels.insert(key, value);
        }
        ok.then_some(labels)
    }

    fn credential(&mut self, field: &Field<'_>) -> Option<Credential> {
        let fields = self.mapping(field, &CREDENTIAL)?;
        let kind = fields.value("kind").and_then(|f| {
            let text = self.string(f)?;
            let kind = CredentialKind::parse(&text);
            if kind.is_none() {
                let message = format!("unknown variant `{text}`, expected `oauth_client` or `api_key`");
                self.problem(f.at, &f.path, message);
            }
            kind
        });
        let name = fields.value("name").and_then(|f| {
            let name = self.string(f)?;
            if name.trim().is_empty() {
                self.problem(f.at, &f.path, "must not be empty");
                return None;
            }
            if name.len() > 100 {
                self.problem(f.at, &f.path, "must be at most 100 characters (minted names add a rotation ID)");
                return None;
            }
            // It is sent to Toktra and printed in logs and summaries.
            if let Some(c) = name.chars().find(|c| c.is_control()) {
                let message = format!("contains a control character ({}); use printable characters", c.escape_debug());
                self.problem(f.at, &f.path, message);
                return None;
            }
            Some(name)
        });
        let scopes = match fields.value("scopes") {
            None => Some(Vec::new()),
            Some(f) => self.scopes(f, kind),
        };
        Some(Credential { kind: kind?, name: name?, scopes: scopes? })
    }

    fn scopes(&mut self, field: &Field<'_>, kind: Option<CredentialKind>) -> Option<Vec<String>> {
        let scopes = self.strings(field)?;
        if let Some(kind) = kind
            && !scopes.is_empty()
            && !kind.has_scopes()
        {
            self.problem(field.at, &field.path, format!("a {kind} has no scopes"));
            return None;
        }
        let mut ok = true;
        for (scope, item) in &scopes {
            if scope.trim().is_empty() || scope.contains(char::is_whitespace) {
                self.problem(item.at, &item.path, format!("`{scope}` is not a scope: one word such as `usage:read`"));
                ok = false;
            }
        }
        ok.then(|| scopes.into_iter().map(|(scope, _)| scope).collect())
    }

    fn revoke<'n>(&mut self, field: Option<&Field<'n>>) -> RevokeRead<'n> {
        let mut read = RevokeRead { grace: None, grace_field: None, require_idle: None };
        let Some(field) = field.filter(|f| !matches!(f.node.value, Value::Null)) else { return read };
        let Some(fields) = self.mapping(field, &REVOKE) else { return read };
        if let Some(f) = fields.value("grace") {
            read.grace = self.duration(f);
            read.grace_field = Some(f.clone());
        }
        read.require_idle = fields.value("require_idle").and_then(|f| self.duration(f));
        read
    }

    fn schedule(&mut self, field: &Field<'_>, revoke: &RevokeRead<'_>) -> Option<Schedule> {
        let fields = self.mapping(field, &SCHEDULE)?;
        let every_field = fields.value("every");
        let cron_field = fields.value("cron");
        let every = every_field.and_then(|f| self.duration(f));
        let jitter = fields.value("jitter").and_then(|f| self.duration(f));
        let timezone = match fields.value("timezone") {
            None => Some(chrono_tz::Tz::UTC),
            Some(f) => self.string(f).and_then(|name| match name.parse::<chrono_tz::Tz>() {
                Ok(tz) => Some(tz),
                Err(_) => {
                    let message = format!("`{name}` is not an IANA time zone (e.g. `Europe/Berlin`, `UTC`)");
                    self.problem(f.at, &f.path, message);
                    None
                }
            }),
        };
        let trigger = match (every_field, cron_field) {
            (Some(_), Some(_)) => {
                self.problem(field.at, &field.path, "give exactly one of `every` and `cron`, not both");
                None
            }
            (None, None) => {
                let message = "give exactly one of `every` (e.g. `90d`) and `cron` (e.g. `0 3 * * SUN`)";
                self.problem(field.at, &field.path, message);
                None
            }
            (Some(f), None) => match every {
                Some(every) if every < MIN_INTERVAL => {
                    let message = format!("`{}` is shorter than the minimum of 1h", duration::format(every));
                    self.problem(f.at, &f.path, message);
                    None
                }
                every => every.map(Trigger::Every),
            },
            (None, Some(f)) => self.string(f).and_then(|text| match Cron::parse(&text) {
                Ok(cron) => Some(Trigger::Cron(cron)),
                Err(message) => {
                    self.problem(f.at, &f.path, message);
                    None
                }
            }),
        };
        // The interval a grace is compared with: `every`, or the shortest gap between cron firings.
        let interval = match (&trigger, timezone, cron_field) {
            (Some(Trigger::Every(every)), _, _) => Some(*every),
            (Some(Trigger::Cron(cron)), Some(tz), Some(f)) => {
                let gap = shortest_gap(cron, tz);
                if let Some(gap) = gap.filter(|g| *g < MIN_INTERVAL) {
                    let message = format!(
                        "`{}` fires every {}; rotations must be at least 1h apart",
                        cron.text(),
                        duration::format(gap)
                    );
                    self.problem(f.at, &f.path, message);
                }
                gap
            }
            _ => None,
        };
        match (interval, &revoke.grace_field) {
            (Some(interval), Some(f)) => {
                if let Some(grace) = revoke.grace.filter(|g| *g > interval) {
                    let message = format!(
                        "grace `{}` is longer than the rotation interval `{}`: credentials would pile up",
                        duration::format(grace),
                        duration::format(interval)
                    );
                    self.problem(f.at, &f.path, message);
                }
            }
            // The default grace counts too: `every: 1h` without a `revoke` section would keep a
            // day's worth of credentials alive. Said at the interval, which is what was written.
            (Some(interval), None) if DEFAULT_GRACE > interval && interval >= MIN_INTERVAL => {
                let (f, what) = match (every_field, cron_field) {
                    (Some(f), _) => (f, format!("`every: {}` is shorter than", duration::format(interval))),
                    (None, Some(f)) => (
                        f,
                        format!("`{}` fires every {}, shorter than", cron_text(&trigger), duration::format(interval)),
                    ),
                    (None, None) => (field, String::new()),
                };
                // Half the interval, in whole minutes, as an example that fits.
                let example = Duration::from_secs(interval.as_secs() / 2 / 60 * 60);
                let message = format!(
                    "{what} the default grace of {}h; set `revoke.grace` (for example `{}`)",
                    DEFAULT_GRACE.as_secs() / 3_600,
                    duration::format(example)
                );
                self.problem(f.at, &f.path, message);
            }
            _ => {}
        }
        if let (Some(interval), Some(jitter), Some(f)) = (interval, jitter, fields.value("jitter"))
            && jitter >= interval
        {
            let message = format!(
                "jitter `{}` must be shorter than the rotation interval `{}`",
                duration::format(jitter),
                duration::format(interval)
            );
            self.problem(f.at, &f.path, message);
        }
        let window = match fields.value("window") {
            None => Some(None),
            Some(f) => self.window(f).map(Some),
        };
        Some(Schedule { trigger: trigger?, window: window?, timezone: timezone?, jitter: jitter.unwrap_or_default() })
    }

    fn window(&mut self, field: &Field<'_>) -> Option<Window> {
        let fields = self.mapping(field, &WINDOW)?;
        let days = match fields.value("days") {
            None => Some(Vec::new()),
            Some(f) => self.strings(f).and_then(|days| {
                if days.is_empty() {
                    self.problem(f.at, &f.path, "an empty list of days never opens; leave `days` out for every day");
                    return None;
                }
                let mut ok = true;
                for (day, item) in &days {
                    // Each day on its own, so that every wrong one is reported.
                    if let Err((_, message)) =
                        Window::parse(std::slice::from_ref(day), "00:00", Duration::from_secs(60))
                    {
                        self.problem(item.at, &item.path, message);
                        ok = false;
                    }
                }
                ok.then(|| days.into_iter().map(|(day, _)| day).collect::<Vec<_>>())
            }),
        };
        // `start` and `duration` are checked on their own too (the other one neutral).
        let start = fields.value("start").and_then(|f| {
            let start = self.string(f)?;
            match Window::parse(&[], &start, Duration::from_secs(60)) {
                Ok(_) => Some(start),
                Err((_, message)) => {
                    self.problem(f.at, &f.path, message);
                    None
                }
            }
        });
        let length = fields.value("duration").and_then(|f| {
            let length = self.duration(f)?;
            match Window::parse(&[], "00:00", length) {
                Ok(_) => Some(length),
                Err((_, message)) => {
                    self.problem(f.at, &f.path, message);
                    None
                }
            }
        });
        Window::parse(&days?, &start?, length?).ok()
    }

    fn destinations(&mut self, field: &Field<'_>) -> Option<Vec<Destination>> {
        let items = self.list(field, "a list of destinations")?;
        if items.is_empty() {
            self.problem(field.at, &field.path, "at least one destination is required");
            return None;
        }
        // By item index; `None` for an item that did not read.
        let mut destinations: Vec<Option<Destination>> = Vec::with_capacity(items.len());
        let mut earlier = places::Earlier::default();
        for (i, item) in items.iter().enumerate() {
            let Some(destination) = self.destination(item) else {
                destinations.push(None);
                continue;
            };
            if let Some((j, overlap)) = earlier.overlap(i, &destination) {
                let other = destinations[j].as_ref().map(Destination::label).unwrap_or_default();
                let message = match overlap {
                    Overlap::Same if other == destination.label() => format!("destination `{other}` is listed twice"),
                    Overlap::Same => format!(
                        "destination `{}` is listed twice (as `{other}`, destinations[{j}])",
                        destination.label()
                    ),
                    Overlap::Maybe => format!(
                        "destination `{}` may be the same secret as `{other}` (destinations[{j}]): {MAYBE_SAME}",
                        destination.label()
                    ),
                };
                self.problem(item.at, &item.path, message);
                destinations.push(None);
                continue;
            }
            destinations.push(Some(destination));
        }
        destinations.into_iter().collect()
    }

    /// One destination, in the canonical form later comparisons and the journal's labels use.
    fn destination(&mut self, item: &Field<'_>) -> Option<Destination> {
        let fields = self.mapping(item, &DESTINATION)?;
        let kinds: Vec<(&str, &Field<'_>)> =
            DESTINATION.fields.iter().filter_map(|kind| Some((*kind, fields.get(kind)?))).collect();
        let (kind, field) = match kinds[..] {
            [one] => one,
            [] => {
                let message = "a destination needs one of `aws_secrets_manager`, `vault`, `file`";
                self.problem(item.at, &item.path, message);
                return None;
            }
            _ => {
                let message = "a destination names exactly one kind; write each as its own list item";
                self.problem(item.at, &item.path, message);
                return None;
            }
        };
        match kind {
            "aws_secrets_manager" => self.aws(field).map(Destination::AwsSecretsManager),
            "vault" => self.vault(field).map(Destination::Vault),
            _ => self.file(field).map(Destination::File),
        }
    }

    fn aws(&mut self, field: &Field<'_>) -> Option<AwsDestination> {
        let fields = self.mapping(field, &AWS)?;
        let secret_id = fields.value("secret_id").and_then(|f| {
            let id = self.string(f)?;
            if id.trim().is_empty() {
                self.problem(f.at, &f.path, "must not be empty");
                return None;
            }
            if let Some(Err(message)) = secret_arn(&id) {
                self.problem(f.at, &f.path, message);
                return None;
            }
            Some(id)
        });
        let region = self.optional_string(&fields, "region")?;
        let create = fields.value("create").map_or(Some(false), |f| self.boolean(f))?;
        let kms_key_id = self.optional_string(&fields, "kms_key_id")?;
        let secret_id = secret_id?;
        if let (Some(region), Some(Ok(arn)), Some(f)) = (&region, secret_arn(&secret_id), fields.value("region"))
            && *region != arn.region
        {
            let message = format!("`{region}` is not the region of the ARN in `secret_id`, `{}`", arn.region);
            self.problem(f.at, &f.path, message);
            return None;
        }
        Some(AwsDestination { secret_id, region, create, kms_key_id })
    }

    fn vault(&mut self, field: &Field<'_>) -> Option<VaultDestination> {
        let fields = self.mapping(field, &VAULT)?;
        let path_of = |reader: &mut Self, key: &str| {
            let f = fields.value(key)?;
            let text = reader.string(f)?;
            if vault_path(&text).is_empty() {
                reader.problem(f.at, &f.path, "must not be empty");
                return None;
            }
            Some(vault_path(&text))
        };
        let mount = path_of(self, "mount");
        let path = path_of(self, "path");
        let staging_path = self.optional_string(&fields, "staging_path")?.map(|p| vault_path(&p));
        let create = fields.value("create").map_or(Some(false), |f| self.boolean(f))?;
        let destination = VaultDestination { mount: mount?, path: path?, staging_path, create };
        if let Some(f) = fields.value("staging_path") {
            let staging = destination.staging_path();
            if staging.is_empty() || staging == destination.path {
                self.problem(f.at, &f.path, "must be a path of its own: consumers would read the unverified value");
                return None;
            }
        }
        Some(destination)
    }

    fn file(&mut self, field: &Field<'_>) -> Option<FileDestination> {
        let fields = self.mapping(field, &FILE)?;
        let f = fields.value("path")?;
        let text = self.string(f)?;
        // Relative paths are relative to the policy file's directory.
        let base = self.file.parent().unwrap_or(Path::new("."));
        match file_path(base, &text) {
            Ok(path) => Some(FileDestination { path }),
            Err(message) => {
                self.problem(f.at, &f.path, message);
                None
            }
        }
    }

    /// An optional string field: `Some(None)` when left out, `None` when given but not a string.
    fn optional_string(&mut self, fields: &Fields<'_>, key: &str) -> Option<Option<String>> {
        match fields.value(key) {
            None => Some(None),
            Some(f) => self.string(f).map(Some),
        }
    }

    fn notify(&mut self, field: &Field<'_>) -> Option<Vec<String>> {
        let channels = self.strings(field)?;
        let mut ok = true;
        for (channel, item) in &channels {
            if !valid_name(channel) {
                self.problem(item.at, &item.path, format!("`{channel}` is not a channel name (a-z, 0-9, `-`)"));
                ok = false;
            }
        }
        ok.then(|| channels.into_iter().map(|(channel, _)| channel).collect())
    }
}
