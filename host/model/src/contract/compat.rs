//! Whether a new version of a module still accepts every message body the
//! serving version accepts. A reload whose new version would refuse such
//! bodies is refused, and each difference is named ([`Breaking`]).
//!
//! Only what the module *takes* is compared: its commands and the events it
//! consumes. What it emits is its own business. A module built against WIT
//! 0.1.0 declares no schemas: replacing it by anything is allowed (adopting
//! schemas is not breaking).
//!
//! The schemas are those `schemars` 1.x writes (JSON Schema draft 2020-12).
//! The comparison asks "does every body the old schema accepts pass the new
//! one?", keyword by keyword:
//!
//! - `$ref` is resolved against the schema's own root (`#/$defs/..`,
//!   `#/definitions/..`, any local JSON pointer); `allOf`, `anyOf` and
//!   `oneOf` (taken as `anyOf`) are expanded into alternatives, and each old
//!   alternative must pass some new one;
//! - `type` (`integer` is covered by `number`, no `type` is any type),
//!   `enum` and `const`, the numeric bounds, `multipleOf`, the length and
//!   count bounds, `pattern` (any change counts, regexes are not compared),
//!   `uniqueItems`, `required`, `additionalProperties` and
//!   `unevaluatedProperties: false`, and the schemas under `properties`,
//!   `additionalProperties`, `prefixItems` and `items`;
//! - two rules about meaning rather than validation: a field the old schema
//!   required and the new one no longer declares is breaking (every sender
//!   sends it, the new version would ignore it), a new optional field is not
//!   (a body that had it before had an unknown field, taken as anything);
//! - `format`, annotations and unknown keywords are ignored.
//!
//! It errs on the side of silence where it cannot tell (a regex, keywords it
//! does not know, `$ref`s outside the document, schemas past its depth or
//! size limits): a refused reload must be explained by a concrete difference.

use std::collections::HashSet;
use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Direction, ModuleContract};

/// One way a new version refuses what the serving one accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Breaking {
    pub topic: String,
    /// The subtopic, `*` for a whole command topic no longer owned.
    pub subtopic: String,
    /// JSON pointer into the body, `""` for the root; `*` stands for any
    /// array item (`/lines/*`) or any property of a map.
    pub path: String,
    /// What changed, e.g. `minimum raised from 0 to 1`.
    pub what: String,
}

impl fmt::Display for Breaking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}/{}: {}", self.topic, self.subtopic, self.what)
        } else {
            write!(
                f,
                "{}/{}: {}: {}",
                self.topic, self.subtopic, self.path, self.what
            )
        }
    }
}

/// Every way `new` refuses a message `old` accepts; empty when `new` may
/// replace `old`.
///
/// - nothing, if `old` is untyped (WIT 0.1.0: no schemas to hold `new` to);
/// - a command topic `old` owned and `new` does not: subtopic `*`, `topic no
///   longer owned` (its subtopics are not listed one by one);
/// - a command or consumed event `old` declared and `new` does not: `no
///   longer handled`. An untyped `new` handles every subtopic of the topics
///   it owns or subscribes to, with any body;
/// - both declare a body schema: the differences ([module docs](self));
///   a schema `old` did not declare and `new` does (other than `true`/`{}`):
///   `now validates a body it did not`.
///
/// Emitted events and answer schemas are not compared.
pub fn breaking_changes(old: &ModuleContract, new: &ModuleContract) -> Vec<Breaking> {
    let mut out = Vec::new();
    if !old.typed {
        return out;
    }
    let mut dropped: Vec<&str> = Vec::new();
    for topic in &old.topics {
        if !new.topics.contains(topic) && !dropped.contains(&topic.as_str()) {
            dropped.push(topic);
            out.push(breaking(
                topic,
                "*",
                String::new(),
                "topic no longer owned".into(),
            ));
        }
    }
    for message in &old.messages {
        let (topic, subtopic) = (message.topic.as_str(), message.subtopic.as_str());
        let handled_topics = match message.direction {
            Direction::Command => &new.topics,
            Direction::Consumes => &new.subscribes,
            Direction::Emits => continue,
        };
        if message.direction == Direction::Command && dropped.contains(&topic) {
            continue;
        }
        if !new.typed {
            if !handled_topics.iter().any(|t| t == topic) {
                out.push(breaking(
                    topic,
                    subtopic,
                    String::new(),
                    "no longer handled".into(),
                ));
            }
            continue;
        }
        let Some(current) = new.find(message.direction, topic, subtopic) else {
            out.push(breaking(
                topic,
                subtopic,
                String::new(),
                "no longer handled".into(),
            ));
            continue;
        };
        match (&message.body, &current.body) {
            (Some(old_body), Some(new_body)) => {
                for p in schema_problems(old_body, new_body) {
                    out.push(breaking(topic, subtopic, p.path, p.what));
                }
            }
            (None, Some(new_body)) if !accepts_anything(new_body) => out.push(breaking(
                topic,
                subtopic,
                String::new(),
                "now validates a body it did not".into(),
            )),
            _ => {}
        }
    }
    let mut seen = Vec::with_capacity(out.len());
    out.retain(|b| {
        let fresh = !seen.contains(b);
        if fresh {
            seen.push(b.clone());
        }
        fresh
    });
    out
}

fn breaking(topic: &str, subtopic: &str, path: String, what: String) -> Breaking {
    Breaking {
        topic: topic.to_string(),
        subtopic: subtopic.to_string(),
        path,
        what,
    }
}

/// `true`, or an object of annotations only (`{}`, a title, `$defs`...).
fn accepts_anything(schema: &Value) -> bool {
    match schema {
        Value::Bool(b) => *b,
        Value::Object(m) => m.keys().all(|k| ANNOTATIONS.contains(&k.as_str())),
        _ => true,
    }
}

/// Keywords that do not constrain a value.
const ANNOTATIONS: [&str; 14] = [
    "$schema",
    "$id",
    "$anchor",
    "$comment",
    "$defs",
    "definitions",
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
    "format",
];

// ---------------------------------------------------------------------------
// Schema comparison

/// Nesting of compared body locations (and `$ref`s followed on the way).
const MAX_DEPTH: usize = 64;
/// `$ref` / `allOf` / `anyOf` hops while expanding one schema.
const MAX_HOPS: usize = 32;
/// Schemas visited while expanding one.
const MAX_VISITS: usize = 1024;
/// Alternatives one schema may expand into.
const MAX_ALTERNATIVES: usize = 256;
/// Comparisons made for one body schema.
const MAX_STEPS: usize = 20_000;

/// One difference, before it is given its topic and subtopic.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Problem {
    path: String,
    what: String,
}

fn problem(path: &str, what: impl Into<String>) -> Problem {
    Problem {
        path: path.to_string(),
        what: what.into(),
    }
}

/// What `new` refuses among the values `old` accepts, each schema resolving
/// its `$ref`s against its own root.
fn schema_problems(old: &Value, new: &Value) -> Vec<Problem> {
    let mut cmp = Comparison {
        old_root: old,
        new_root: new,
        in_progress: HashSet::new(),
        steps: 0,
    };
    cmp.check(&[old], &[new], "", 0)
}

type Part<'a> = &'a Map<String, Value>;

struct Comparison<'a> {
    old_root: &'a Value,
    new_root: &'a Value,
    /// Pairs (old schemas, new schemas) being compared further up: met
    /// again through a recursive `$ref`, they are taken as compatible.
    in_progress: HashSet<(Vec<usize>, Vec<usize>)>,
    steps: usize,
}

/// One alternative of the old schema: the objects that all apply (an
/// `allOf`, a `$ref` with its siblings, one `anyOf` branch with the keywords
/// beside it), and what they allow.
#[derive(Clone)]
struct OldAlternative<'a> {
    parts: Vec<Part<'a>>,
    /// `None`: any type.
    types: Option<Types>,
    /// `Some`: only these values (`enum`, `const`), already filtered by the
    /// types and bounds of `parts`.
    values: Option<Vec<&'a Value>>,
}

impl<'a> Comparison<'a> {
    /// Problems of `new` (all of its schemas apply) against `old` (all of
    /// its schemas apply) at `path`.
    fn check(
        &mut self,
        old: &[&'a Value],
        new: &[&'a Value],
        path: &str,
        depth: usize,
    ) -> Vec<Problem> {
        self.steps += 1;
        if self.steps > MAX_STEPS || depth > MAX_DEPTH {
            return Vec::new();
        }
        let key = (address(old, self.old_root), address(new, self.new_root));
        if !self.in_progress.insert(key.clone()) {
            return Vec::new();
        }
        let found = self.check_expanded(old, new, path, depth);
        self.in_progress.remove(&key);
        found
    }

    fn check_expanded(
        &mut self,
        old: &[&'a Value],
        new: &[&'a Value],
        path: &str,
        depth: usize,
    ) -> Vec<Problem> {
        let mut overflow = false;
        let new_alts = expand_all(new, self.new_root, &mut overflow);
        if overflow {
            // Too large to tell: say nothing rather than something wrong.
            return Vec::new();
        }
        // An old side too large is cut: fewer old alternatives to satisfy.
        let old_alts: Vec<OldAlternative<'a>> = expand_all(old, self.old_root, &mut overflow)
            .into_iter()
            .filter_map(old_alternative)
            .collect();
        if old_alts.is_empty() {
            return Vec::new();
        }
        if new_alts.is_empty() {
            return vec![problem(path, "now refused (schema false)")];
        }
        let old_alts = if new_alts.len() > 1 {
            old_alts.into_iter().flat_map(split).collect()
        } else {
            old_alts
        };
        let new_labels: Vec<Option<Label<'a>>> = new_alts
            .iter()
            .map(|n| label(n, finite_values(n).as_deref()))
            .collect();
        let mut out = Vec::new();
        for old_alt in &old_alts {
            // The new alternative of the same variant first: usually the
            // one that takes it.
            let old_label = label(&old_alt.parts, old_alt.values.as_deref());
            let same = |i: &usize| {
                old_label
                    .as_ref()
                    .zip(new_labels[*i].as_ref())
                    .is_some_and(|(a, b)| a.same(b))
            };
            let order = (0..new_alts.len())
                .filter(same)
                .chain((0..new_alts.len()).filter(|i| !same(i)));
            let mut tried = vec![Vec::new(); new_alts.len()];
            let mut passes = false;
            for i in order {
                if self.steps > MAX_STEPS {
                    return out;
                }
                let found = self.check_alternative(old_alt, &new_alts[i], path, depth);
                if found.is_empty() {
                    passes = true;
                    break;
                }
                tried[i] = found;
            }
            if !passes {
                for p in explain(old_alt, old_label, &new_alts, &new_labels, tried, path) {
                    push_unique(&mut out, p);
                }
            }
        }
        out
    }

    /// Problems of one new alternative (all of `new` apply) against one old
    /// alternative.
    fn check_alternative(
        &mut self,
        old: &OldAlternative<'a>,
        new: &[Part<'a>],
        path: &str,
        depth: usize,
    ) -> Vec<Problem> {
        self.steps += 1;
        let mut out = Vec::new();
        let new_types = parts_types(new);
        let live = match (old.types, new_types) {
            (old_types, None) => old_types.unwrap_or(Types::ANY),
            (None, Some(n)) => {
                out.push(problem(path, format!("type narrowed from any to {n}")));
                n
            }
            (Some(o), Some(n)) => {
                if !o.not_covered_by(n).is_empty() {
                    out.push(problem(path, format!("type narrowed from {o} to {n}")));
                }
                o.intersect(n)
            }
        };
        if live.is_empty() {
            return out;
        }
        let values: Option<Vec<&'a Value>> = old
            .values
            .as_ref()
            .map(|vs| vs.iter().copied().filter(|v| live.admits(v)).collect());
        if values.as_ref().is_some_and(Vec::is_empty) {
            return out;
        }
        let values = values.as_deref();
        for part in new {
            check_values(values, part, path, &mut out);
        }
        if live.has_number() {
            check_numbers(old, values, new, live, path, &mut out);
        }
        if live.has(Types::STRING) {
            check_strings(old, values, new, path, &mut out);
        }
        if live.has(Types::ARRAY) {
            self.check_arrays(old, new, path, depth, &mut out);
        }
        if live.has(Types::OBJECT) {
            self.check_objects(old, new, path, depth, &mut out);
        }
        out
    }

    fn check_arrays(
        &mut self,
        old: &OldAlternative<'a>,
        new: &[Part<'a>],
        path: &str,
        depth: usize,
        out: &mut Vec<Problem>,
    ) {
        check_count(&old.parts, new, "minItems", Side::Lower, path, out);
        check_count(&old.parts, new, "maxItems", Side::Upper, path, out);
        if new
            .iter()
            .any(|p| p.get("uniqueItems") == Some(&Value::Bool(true)))
            && !old
                .parts
                .iter()
                .any(|p| p.get("uniqueItems") == Some(&Value::Bool(true)))
        {
            push_unique(out, problem(path, "items must now be unique"));
        }
        // The most items an old body may have.
        let old_max = old
            .parts
            .iter()
            .filter_map(|p| p.get("maxItems").and_then(Value::as_f64))
            .fold(f64::INFINITY, f64::min);
        let prefix = old
            .parts
            .iter()
            .chain(new)
            .map(|p| prefix_len(p))
            .max()
            .unwrap_or(0);
        // The prefix positions, then (at `prefix`) every item after them.
        for i in 0..=prefix {
            if old_max <= i as f64 {
                return;
            }
            let new_item = item_schemas(new, i);
            if !new_item.is_empty() {
                let at = if i == prefix {
                    "*".to_string()
                } else {
                    i.to_string()
                };
                let found = self.check(
                    &item_schemas(&old.parts, i),
                    &new_item,
                    &format!("{path}/{at}"),
                    depth + 1,
                );
                out.extend(found);
            }
        }
    }

    fn check_objects(
        &mut self,
        old: &OldAlternative<'a>,
        new: &[Part<'a>],
        path: &str,
        depth: usize,
        out: &mut Vec<Problem>,
    ) {
        let old_required = required(&old.parts);
        let old_declared = declared(&old.parts);
        let new_declared = declared(new);
        let old_closed = old.parts.iter().any(|p| closed(p));
        let new_closed = new.iter().any(|p| closed(p));

        for name in required(new) {
            if !old_required.contains(&name) {
                let what = if old_declared.contains(&name) {
                    "field now required"
                } else {
                    "new required field"
                };
                push_unique(out, problem(&child(path, name), what));
            }
        }
        for &name in &new_declared {
            if !old_declared.contains(&name) && extra_schemas(&old.parts).is_empty() {
                // A new optional field (a new required one is named above),
                // or one the old schema refused.
                continue;
            }
            let found = self.check(
                &property_schemas(&old.parts, name),
                &property_schemas(new, name),
                &child(path, name),
                depth + 1,
            );
            out.extend(found);
        }
        let new_extra = extra_schemas(new);
        for &name in &old_declared {
            if new_declared.contains(&name) {
                continue;
            }
            let at = child(path, name);
            if !new_extra.is_empty() {
                let found = self.check(
                    &property_schemas(&old.parts, name),
                    &new_extra,
                    &at,
                    depth + 1,
                );
                out.extend(found);
            } else if old_required.contains(&name) && new.iter().any(|p| describes_object(p)) {
                push_unique(out, problem(&at, "required field removed"));
            } else if new_closed {
                push_unique(out, problem(&at, "field removed (unknown fields refused)"));
            }
        }
        if new_closed && !old_closed {
            push_unique(out, problem(path, "unknown fields now refused"));
        } else if !new_extra.is_empty() && !old_closed {
            let found = self.check(
                &extra_schemas(&old.parts),
                &new_extra,
                &format!("{path}/*"),
                depth + 1,
            );
            out.extend(found);
        }
        check_count(&old.parts, new, "minProperties", Side::Lower, path, out);
        check_count(&old.parts, new, "maxProperties", Side::Upper, path, out);
    }
}

/// Where `schemas` are, a bare `$ref` standing for its target (so that a
/// recursion is recognised however its `$ref`s are written).
fn address(schemas: &[&Value], root: &Value) -> Vec<usize> {
    schemas
        .iter()
        .map(|s| {
            let mut s: &Value = s;
            for _ in 0..MAX_HOPS {
                let Some(target) = bare_ref(s).and_then(|r| resolve(root, r)) else {
                    break;
                };
                s = target;
            }
            std::ptr::from_ref(s) as usize
        })
        .collect()
}

/// The `$ref` of a schema that has nothing else but annotations.
fn bare_ref(schema: &Value) -> Option<&str> {
    let map = schema.as_object()?;
    let reference = map.get("$ref")?.as_str()?;
    map.keys()
        .all(|k| k == "$ref" || ANNOTATIONS.contains(&k.as_str()))
        .then_some(reference)
}

fn push_unique(out: &mut Vec<Problem>, p: Problem) {
    if !out.contains(&p) {
        out.push(p);
    }
}

/// `path` + `/name`, escaped as JSON pointers want (`~0`, `~1`).
fn child(path: &str, name: &str) -> String {
    format!("{path}/{}", name.replace('~', "~0").replace('/', "~1"))
}

/// Alternatives (each: objects that all apply) of all of `schemas` at once.
/// `overflow` is set when the schemas were too large to expand whole.
fn expand_all<'a>(
    schemas: &[&'a Value],
    root: &'a Value,
    overflow: &mut bool,
) -> Vec<Vec<Part<'a>>> {
    let mut expansion = Expansion {
        root,
        stack: Vec::new(),
        visits: 0,
        overflow: false,
    };
    let mut alts = vec![Vec::new()];
    for s in schemas {
        let more = expansion.expand(s);
        alts = product(alts, more, &mut expansion.overflow);
    }
    *overflow |= expansion.overflow;
    alts
}

struct Expansion<'a> {
    root: &'a Value,
    /// The schemas being expanded, outermost first: one met again is
    /// already applied (`A` and `A` is `A`) and taken as `true`.
    stack: Vec<usize>,
    visits: usize,
    overflow: bool,
}

impl<'a> Expansion<'a> {
    /// The alternatives of `schema`: `false` has none, `true` (or anything
    /// that is not an object) one with nothing to satisfy.
    fn expand(&mut self, schema: &'a Value) -> Vec<Vec<Part<'a>>> {
        let map = match schema {
            Value::Bool(false) => return Vec::new(),
            Value::Object(m) => m,
            _ => return vec![Vec::new()],
        };
        let at = std::ptr::from_ref(schema) as usize;
        if self.stack.contains(&at) {
            return vec![Vec::new()];
        }
        self.visits += 1;
        if self.stack.len() > MAX_HOPS || self.visits > MAX_VISITS {
            self.overflow = true;
            return vec![Vec::new()];
        }
        self.stack.push(at);
        let alts = self.expand_object(map);
        self.stack.pop();
        alts
    }

    fn expand_object(&mut self, map: Part<'a>) -> Vec<Vec<Part<'a>>> {
        let mut alts = vec![vec![map]];
        if let Some(target) = map
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| resolve(self.root, r))
        {
            let more = self.expand(target);
            alts = product(alts, more, &mut self.overflow);
        }
        if let Some(all) = map.get("allOf").and_then(Value::as_array) {
            for member in all {
                let more = self.expand(member);
                alts = product(alts, more, &mut self.overflow);
            }
        }
        for keyword in ["anyOf", "oneOf"] {
            let Some(branches) = map.get(keyword).and_then(Value::as_array) else {
                continue;
            };
            if branches.is_empty() {
                continue;
            }
            let mut union = Vec::new();
            for branch in branches {
                union.extend(self.expand(branch));
                if union.len() > MAX_ALTERNATIVES {
                    union.truncate(MAX_ALTERNATIVES);
                    self.overflow = true;
                }
            }
            alts = product(alts, union, &mut self.overflow);
        }
        alts
    }
}

fn product<'a>(
    left: Vec<Vec<Part<'a>>>,
    right: Vec<Vec<Part<'a>>>,
    overflow: &mut bool,
) -> Vec<Vec<Part<'a>>> {
    let mut out = Vec::with_capacity(left.len().saturating_mul(right.len()).min(MAX_ALTERNATIVES));
    'all: for l in &left {
        for r in &right {
            if out.len() == MAX_ALTERNATIVES {
                *overflow = true;
                break 'all;
            }
            let mut both = l.clone();
            both.extend(r.iter().copied());
            out.push(both);
        }
    }
    out
}

/// A local `$ref` (`#`, `#/$defs/Name`, any JSON pointer); others are not
/// followed.
fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    if pointer.is_empty() {
        Some(root)
    } else {
        root.pointer(pointer)
    }
}

/// What an old alternative allows; `None` if it allows nothing.
fn old_alternative(parts: Vec<Part<'_>>) -> Option<OldAlternative<'_>> {
    let mut types = parts_types(&parts);
    let mut values = finite_values(&parts);
    if let Some(vs) = values.take() {
        let vs: Vec<&Value> = vs
            .into_iter()
            .filter(|v| {
                types.is_none_or(|t| t.admits(v)) && parts.iter().all(|p| part_admits(p, v))
            })
            .collect();
        types = Some(vs.iter().fold(Types::NONE, |t, v| t.union(Types::of(v))));
        values = Some(vs);
    }
    if types.is_some_and(Types::is_empty) {
        return None;
    }
    Some(OldAlternative {
        parts,
        types,
        values,
    })
}

/// One alternative per value or per type, so that each may find the new
/// alternative that takes it (`["string","null"]` against `anyOf` of a
/// string and a null, `enum` against `oneOf` of `const`s).
fn split(alt: OldAlternative<'_>) -> Vec<OldAlternative<'_>> {
    if let Some(vs) = alt.values.as_ref().filter(|vs| vs.len() > 1) {
        return vs
            .iter()
            .map(|v| OldAlternative {
                parts: alt.parts.clone(),
                types: Some(Types::of(v)),
                values: Some(vec![*v]),
            })
            .collect();
    }
    match alt.types {
        Some(t) if t.count() > 1 => t
            .singles()
            .map(|single| OldAlternative {
                parts: alt.parts.clone(),
                types: Some(single),
                values: alt.values.clone(),
            })
            .collect(),
        _ => vec![alt],
    }
}

/// The problems to report for an old alternative no new one takes.
fn explain(
    old: &OldAlternative<'_>,
    old_label: Option<Label<'_>>,
    new_alts: &[Vec<Part<'_>>],
    new_labels: &[Option<Label<'_>>],
    tried: Vec<Vec<Problem>>,
    path: &str,
) -> Vec<Problem> {
    let old_label = old_label.filter(|l| tried.len() > 1 || matches!(l, Label::Variant(_)));
    if let Some(name) = old_label {
        if let Some(i) = new_labels
            .iter()
            .position(|l| l.as_ref().is_some_and(|l| l.same(&name)))
        {
            return tried.into_iter().nth(i).unwrap_or_default();
        }
        if new_labels.iter().any(Option::is_some) {
            // The new schema is an enum too, without this variant.
            return vec![problem(path, name.removed())];
        }
    }
    if tried.len() == 1 {
        return tried.into_iter().next().unwrap_or_default();
    }
    let overlapping =
        new_alts
            .iter()
            .zip(tried)
            .filter(|(n, _)| match (old.types, parts_types(n)) {
                (Some(o), Some(t)) => !o.intersect(t).is_empty(),
                _ => true,
            });
    if let Some((_, found)) = overlapping.min_by_key(|(_, found)| found.len()) {
        return found;
    }
    let all = new_alts.iter().fold(Types::NONE, |t, n| {
        t.union(parts_types(n).unwrap_or(Types::ANY))
    });
    let from = old
        .types
        .map_or_else(|| "any".to_string(), |t| t.to_string());
    vec![problem(path, format!("type narrowed from {from} to {all}"))]
}

/// How an alternative of an enum is named, to find it again in the new
/// schema: its value, or its variant's tag.
enum Label<'a> {
    Value(&'a Value),
    Variant(String),
}

impl Label<'_> {
    fn same(&self, other: &Label<'_>) -> bool {
        match (self, other) {
            (Label::Value(a), Label::Value(b)) => json_eq(a, b),
            (Label::Variant(a), Label::Variant(b)) => a == b,
            _ => false,
        }
    }

    fn removed(&self) -> String {
        match self {
            Label::Value(v) => format!("enum value {v} removed"),
            Label::Variant(name) => format!("variant {} removed", Value::String(name.clone())),
        }
    }
}

fn label<'a>(parts: &[Part<'a>], values: Option<&[&'a Value]>) -> Option<Label<'a>> {
    if let Some([v]) = values {
        return Some(Label::Value(v));
    }
    // Internally or adjacently tagged: a required property holding a const.
    for part in parts {
        let Some(properties) = part.get("properties").and_then(Value::as_object) else {
            continue;
        };
        for name in required(&[*part]) {
            if let Some(tag) = properties
                .get(name)
                .and_then(Value::as_object)
                .and_then(|s| s.get("const"))
            {
                return Some(Label::Variant(
                    tag.as_str().map_or_else(|| tag.to_string(), str::to_string),
                ));
            }
        }
    }
    // Externally tagged: `{"Name": ...}` and nothing else.
    for part in parts {
        let Some(properties) = part.get("properties").and_then(Value::as_object) else {
            continue;
        };
        let names = required(&[*part]);
        if properties.len() == 1
            && names.len() == 1
            && properties.contains_key(names[0])
            && part.get("additionalProperties") == Some(&Value::Bool(false))
        {
            return Some(Label::Variant(names[0].to_string()));
        }
    }
    None
}

// --- keyword checks --------------------------------------------------------

fn check_values(values: Option<&[&Value]>, part: Part<'_>, path: &str, out: &mut Vec<Problem>) {
    let allowed = part.get("enum").and_then(Value::as_array);
    let fixed = part.get("const");
    match values {
        Some(vs) => {
            for v in vs {
                if let Some(allowed) = allowed
                    && !allowed.iter().any(|a| json_eq(a, v))
                {
                    push_unique(out, problem(path, format!("enum value {v} removed")));
                }
                if let Some(c) = fixed
                    && !json_eq(c, v)
                {
                    let what = if vs.len() == 1 {
                        format!("const changed from {v} to {c}")
                    } else {
                        format!("enum value {v} removed")
                    };
                    push_unique(out, problem(path, what));
                }
            }
        }
        None => {
            if let Some(allowed) = allowed {
                push_unique(
                    out,
                    problem(path, format!("values now limited to {}", list(allowed))),
                );
            }
            if let Some(c) = fixed {
                push_unique(out, problem(path, format!("value now fixed to {c}")));
            }
        }
    }
}

fn list(values: &[Value]) -> String {
    let mut shown: Vec<String> = values.iter().take(5).map(Value::to_string).collect();
    if values.len() > 5 {
        shown.push("…".into());
    }
    format!("[{}]", shown.join(", "))
}

fn check_numbers(
    old: &OldAlternative<'_>,
    values: Option<&[&Value]>,
    new: &[Part<'_>],
    live: Types,
    path: &str,
    out: &mut Vec<Problem>,
) {
    let integers = !live.has(Types::NUMBER);
    for part in new {
        for side in [Side::Lower, Side::Upper] {
            let Some(bound) = bound_of(part, side) else {
                continue;
            };
            if let Some(vs) = values {
                for v in vs.iter().filter_map(|v| v.as_f64().map(|x| (v, x))) {
                    if !bound.admits(v.1, side) {
                        let (kw, b) = (bound.keyword(side), bound.shown);
                        let what = match side {
                            Side::Lower => format!("value {} now below {kw} {b}", v.0),
                            Side::Upper => format!("value {} now above {kw} {b}", v.0),
                        };
                        push_unique(out, problem(path, what));
                    }
                }
                continue;
            }
            let strongest = old
                .parts
                .iter()
                .filter_map(|p| bound_of(p, side))
                .reduce(|a, b| if b.stricter(&a, side, integers) { b } else { a });
            let what = match strongest {
                None => format!("{} {} added", bound.keyword(side), bound.shown),
                Some(o) if bound.stricter(&o, side, integers) => {
                    let moved = match side {
                        Side::Lower => "raised",
                        Side::Upper => "lowered",
                    };
                    if o.exclusive == bound.exclusive {
                        format!(
                            "{} {moved} from {} to {}",
                            bound.keyword(side),
                            o.shown,
                            bound.shown
                        )
                    } else {
                        let which = match side {
                            Side::Lower => "lower",
                            Side::Upper => "upper",
                        };
                        format!(
                            "{which} bound {moved} from {} {} to {} {}",
                            o.keyword(side),
                            o.shown,
                            bound.keyword(side),
                            bound.shown
                        )
                    }
                }
                Some(_) => continue,
            };
            push_unique(out, problem(path, what));
        }
        let Some((m, shown)) = multiple_of(part) else {
            continue;
        };
        if let Some(vs) = values {
            for v in vs {
                if let Some(x) = v.as_f64()
                    && !is_multiple(x, m)
                {
                    push_unique(
                        out,
                        problem(path, format!("value {v} is not a multiple of {shown}")),
                    );
                }
            }
            continue;
        }
        let old_multiples: Vec<(f64, &Value)> =
            old.parts.iter().filter_map(|p| multiple_of(p)).collect();
        if old_multiples.iter().any(|(k, _)| is_multiple(*k, m))
            || (integers && is_multiple(1.0, m))
        {
            continue;
        }
        let what = match old_multiples.first() {
            Some((_, o)) => format!("multipleOf changed from {o} to {shown}"),
            None => format!("multipleOf {shown} added"),
        };
        push_unique(out, problem(path, what));
    }
}

fn check_strings(
    old: &OldAlternative<'_>,
    values: Option<&[&Value]>,
    new: &[Part<'_>],
    path: &str,
    out: &mut Vec<Problem>,
) {
    match values {
        Some(vs) => {
            for part in new {
                for v in vs {
                    let Some(s) = v.as_str() else {
                        continue;
                    };
                    let len = s.chars().count() as f64;
                    if let Some(min) = part
                        .get("minLength")
                        .filter(|m| m.as_f64().is_some_and(|m| len < m))
                    {
                        push_unique(
                            out,
                            problem(path, format!("value {v} now shorter than minLength {min}")),
                        );
                    }
                    if let Some(max) = part
                        .get("maxLength")
                        .filter(|m| m.as_f64().is_some_and(|m| len > m))
                    {
                        push_unique(
                            out,
                            problem(path, format!("value {v} now longer than maxLength {max}")),
                        );
                    }
                }
            }
        }
        None => {
            check_count(&old.parts, new, "minLength", Side::Lower, path, out);
            check_count(&old.parts, new, "maxLength", Side::Upper, path, out);
        }
    }
    for part in new {
        let Some(pattern) = part.get("pattern").and_then(Value::as_str) else {
            continue;
        };
        let old_patterns: Vec<&str> = old
            .parts
            .iter()
            .filter_map(|p| p.get("pattern").and_then(Value::as_str))
            .collect();
        if old_patterns.contains(&pattern) {
            continue;
        }
        let shown = Value::String(pattern.to_string());
        let what = match old_patterns.first() {
            Some(o) => format!(
                "pattern changed from {} to {shown}",
                Value::String((*o).to_string())
            ),
            None => format!("pattern {shown} added"),
        };
        push_unique(out, problem(path, what));
    }
}

/// `minLength`, `minItems`, `minProperties` (`Side::Lower`, absent: 0) and
/// `maxLength`, `maxItems`, `maxProperties` (`Side::Upper`, absent: no
/// limit): a count the new version raises (lower) or lowers (upper).
fn check_count(
    old: &[Part<'_>],
    new: &[Part<'_>],
    keyword: &str,
    side: Side,
    path: &str,
    out: &mut Vec<Problem>,
) {
    let count = |p: &Part<'_>| -> Option<(f64, String)> {
        let v = p.get(keyword)?;
        v.as_f64().map(|x| (x, v.to_string()))
    };
    // Narrower is larger for a minimum, smaller for a maximum.
    let narrower = |a: f64, b: f64| match side {
        Side::Lower => a > b,
        Side::Upper => a < b,
    };
    let strongest = old
        .iter()
        .filter_map(&count)
        .reduce(|a, b| if narrower(b.0, a.0) { b } else { a });
    for part in new {
        let Some((n, shown)) = count(part) else {
            continue;
        };
        let what = match (&strongest, side) {
            (Some((o, old_shown)), Side::Lower) if narrower(n, *o) => {
                format!("{keyword} raised from {old_shown} to {shown}")
            }
            (Some((o, old_shown)), Side::Upper) if narrower(n, *o) => {
                format!("{keyword} lowered from {old_shown} to {shown}")
            }
            (None, Side::Lower) if n > 0.0 => format!("{keyword} {shown} added"),
            (None, Side::Upper) => format!("{keyword} {shown} added"),
            _ => continue,
        };
        push_unique(out, problem(path, what));
    }
}

// --- numeric bounds ---------------------------------------------------------

#[derive(Clone, Copy)]
enum Side {
    Lower,
    Upper,
}

#[derive(Clone, Copy)]
struct Bound<'a> {
    value: f64,
    exclusive: bool,
    shown: &'a Value,
}

impl Bound<'_> {
    fn keyword(&self, side: Side) -> &'static str {
        match (side, self.exclusive) {
            (Side::Lower, false) => "minimum",
            (Side::Lower, true) => "exclusiveMinimum",
            (Side::Upper, false) => "maximum",
            (Side::Upper, true) => "exclusiveMaximum",
        }
    }

    fn admits(&self, x: f64, side: Side) -> bool {
        match (side, self.exclusive) {
            (Side::Lower, false) => x >= self.value,
            (Side::Lower, true) => x > self.value,
            (Side::Upper, false) => x <= self.value,
            (Side::Upper, true) => x < self.value,
        }
    }

    /// The bound as (value, exclusive); for integers, the inclusive integer
    /// bound (`exclusiveMinimum: 0` is `minimum: 1`).
    fn normal(&self, side: Side, integers: bool) -> (f64, bool) {
        if !integers {
            return (self.value, self.exclusive);
        }
        let v = match (side, self.exclusive) {
            (Side::Lower, false) => self.value.ceil(),
            (Side::Lower, true) => self.value.floor() + 1.0,
            (Side::Upper, false) => self.value.floor(),
            (Side::Upper, true) => self.value.ceil() - 1.0,
        };
        (v, false)
    }

    /// Whether `self` refuses a value `other` admits.
    fn stricter(&self, other: &Bound<'_>, side: Side, integers: bool) -> bool {
        let (a, a_ex) = self.normal(side, integers);
        let (b, b_ex) = other.normal(side, integers);
        let tighter = match side {
            Side::Lower => a > b,
            Side::Upper => a < b,
        };
        tighter || (a == b && a_ex && !b_ex)
    }
}

/// The bound of `part` on `side`: `minimum`/`exclusiveMinimum` (a number,
/// or `true` as in draft 4), or their maximum counterparts.
fn bound_of(part: Part<'_>, side: Side) -> Option<Bound<'_>> {
    let (inclusive, exclusive) = match side {
        Side::Lower => ("minimum", "exclusiveMinimum"),
        Side::Upper => ("maximum", "exclusiveMaximum"),
    };
    let draft4 = part.get(exclusive) == Some(&Value::Bool(true));
    let mut found = part.get(inclusive).and_then(|v| {
        v.as_f64().map(|value| Bound {
            value,
            exclusive: draft4,
            shown: v,
        })
    });
    if let Some(v) = part.get(exclusive)
        && let Some(value) = v.as_f64()
    {
        let candidate = Bound {
            value,
            exclusive: true,
            shown: v,
        };
        if found.is_none_or(|f| candidate.stricter(&f, side, false)) {
            found = Some(candidate);
        }
    }
    found
}

fn multiple_of(part: Part<'_>) -> Option<(f64, &Value)> {
    let v = part.get("multipleOf")?;
    v.as_f64().filter(|m| *m > 0.0).map(|m| (m, v))
}

fn is_multiple(x: f64, m: f64) -> bool {
    let q = x / m;
    (q - q.round()).abs() <= 1e-9 * q.abs().max(1.0)
}

/// Whether `part`'s bounds, lengths and `multipleOf` let `v` through.
fn part_admits(part: Part<'_>, v: &Value) -> bool {
    if let Some(x) = v.as_f64() {
        let within = [Side::Lower, Side::Upper]
            .into_iter()
            .all(|side| bound_of(part, side).is_none_or(|b| b.admits(x, side)));
        return within && multiple_of(part).is_none_or(|(m, _)| is_multiple(x, m));
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as f64;
        let min = part
            .get("minLength")
            .and_then(Value::as_f64)
            .is_none_or(|m| len >= m);
        let max = part
            .get("maxLength")
            .and_then(Value::as_f64)
            .is_none_or(|m| len <= m);
        return min && max;
    }
    true
}

// --- reading schema objects --------------------------------------------------

/// The types all of `parts` allow; `None`: no `type` anywhere.
fn parts_types(parts: &[Part<'_>]) -> Option<Types> {
    parts
        .iter()
        .filter_map(|p| p.get("type").and_then(Types::parse))
        .reduce(Types::intersect)
}

/// The values all of `parts` allow by `enum` and `const`; `None`: no limit.
fn finite_values<'a>(parts: &[Part<'a>]) -> Option<Vec<&'a Value>> {
    let mut values: Option<Vec<&'a Value>> = None;
    for part in parts {
        let mut limits: Vec<Vec<&'a Value>> = Vec::new();
        if let Some(allowed) = part.get("enum").and_then(Value::as_array) {
            limits.push(allowed.iter().collect());
        }
        if let Some(c) = part.get("const") {
            limits.push(vec![c]);
        }
        for limit in limits {
            values = Some(match values {
                None => limit,
                Some(vs) => vs
                    .into_iter()
                    .filter(|v| limit.iter().any(|l| json_eq(l, v)))
                    .collect(),
            });
        }
    }
    values
}

fn required<'a>(parts: &[Part<'a>]) -> Vec<&'a str> {
    let mut names = Vec::new();
    for part in parts {
        for name in part
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = name.as_str()
                && !names.contains(&name)
            {
                names.push(name);
            }
        }
    }
    names
}

fn declared<'a>(parts: &[Part<'a>]) -> Vec<&'a str> {
    let mut names = Vec::new();
    for part in parts {
        for name in part
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|m| m.keys())
        {
            if !names.contains(&name.as_str()) {
                names.push(name.as_str());
            }
        }
    }
    names
}

/// The schemas that apply to property `name`: where declared, its schema;
/// elsewhere, an `additionalProperties` schema.
fn property_schemas<'a>(parts: &[Part<'a>], name: &str) -> Vec<&'a Value> {
    parts
        .iter()
        .filter_map(|p| {
            match p
                .get("properties")
                .and_then(Value::as_object)
                .and_then(|m| m.get(name))
            {
                Some(schema) => Some(schema),
                None => p.get("additionalProperties").filter(|s| s.is_object()),
            }
        })
        .collect()
}

/// `additionalProperties` schemas (maps, flattened maps).
fn extra_schemas<'a>(parts: &[Part<'a>]) -> Vec<&'a Value> {
    parts
        .iter()
        .filter_map(|p| p.get("additionalProperties").filter(|s| s.is_object()))
        .collect()
}

/// Unknown properties refused (`deny_unknown_fields`).
fn closed(part: Part<'_>) -> bool {
    let no = Some(&Value::Bool(false));
    part.get("additionalProperties") == no || part.get("unevaluatedProperties") == no
}

fn describes_object(part: Part<'_>) -> bool {
    [
        "properties",
        "required",
        "additionalProperties",
        "unevaluatedProperties",
    ]
    .iter()
    .any(|k| part.contains_key(*k))
}

fn prefix_len(part: Part<'_>) -> usize {
    part.get("prefixItems")
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

/// The schemas that apply to array item `i`: `prefixItems[i]`, or `items`
/// past the prefix.
fn item_schemas<'a>(parts: &[Part<'a>], i: usize) -> Vec<&'a Value> {
    parts
        .iter()
        .filter_map(|p| {
            match p
                .get("prefixItems")
                .and_then(Value::as_array)
                .and_then(|a| a.get(i))
            {
                Some(schema) => Some(schema),
                None => p.get("items").filter(|s| s.is_object() || s.is_boolean()),
            }
        })
        .collect()
}

/// JSON equality with `1` and `1.0` equal.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || (x.as_f64().is_some() && x.as_f64() == y.as_f64())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

// --- JSON types ----------------------------------------------------------------

/// A set of JSON Schema types. `number` includes the integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Types(u8);

impl Types {
    const NAMES: [&'static str; 7] = [
        "string", "number", "integer", "boolean", "object", "array", "null",
    ];
    const STRING: Types = Types(1);
    const NUMBER: Types = Types(1 << 1);
    const INTEGER: Types = Types(1 << 2);
    const OBJECT: Types = Types(1 << 4);
    const ARRAY: Types = Types(1 << 5);
    const NONE: Types = Types(0);
    const ANY: Types = Types(0x7f);

    /// `"string"` or `["string", "null"]`; `None` if no known type is named.
    fn named(name: &str) -> Types {
        Types::NAMES
            .iter()
            .position(|n| *n == name)
            .map_or(Types::NONE, |i| Types(1 << i))
    }

    fn parse(v: &Value) -> Option<Types> {
        let one = Types::named;
        let found = match v {
            Value::String(s) => one(s),
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .fold(Types::NONE, |t, s| t.union(one(s))),
            _ => Types::NONE,
        };
        (!found.is_empty()).then_some(found)
    }

    fn of(v: &Value) -> Types {
        Types::named(match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n)
                if n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|x| x.fract() == 0.0) =>
            {
                "integer"
            }
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        })
    }

    fn has(self, t: Types) -> bool {
        self.0 & t.0 != 0
    }

    fn has_number(self) -> bool {
        self.has(Types::NUMBER) || self.has(Types::INTEGER)
    }

    fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn count(self) -> u32 {
        self.0.count_ones()
    }

    fn union(self, other: Types) -> Types {
        Types(self.0 | other.0)
    }

    fn intersect(self, other: Types) -> Types {
        let mut both = Types(self.0 & other.0);
        if (self.has(Types::INTEGER) && other.has(Types::NUMBER))
            || (self.has(Types::NUMBER) && other.has(Types::INTEGER))
        {
            both = both.union(Types::INTEGER);
        }
        both
    }

    /// The types of `self` that `other` does not take.
    fn not_covered_by(self, other: Types) -> Types {
        let mut covered = other;
        if other.has(Types::NUMBER) {
            covered = covered.union(Types::INTEGER);
        }
        Types(self.0 & !covered.0)
    }

    /// Whether a value of `v`'s type is of one of these types.
    fn admits(self, v: &Value) -> bool {
        Types::of(v).not_covered_by(self).is_empty()
    }

    fn singles(self) -> impl Iterator<Item = Types> {
        (0..Types::NAMES.len())
            .map(|i| Types(1 << i))
            .filter(move |t| self.has(*t))
    }
}

impl fmt::Display for Types {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Types::NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.has(Types(1 << i)))
            .map(|(_, n)| *n)
            .collect();
        write!(f, "[{}]", names.join(", "))
    }
}

#[cfg(test)]
mod tests;
