//! The tools as people read them: each input schema's arguments ([`arguments`], [`rules`]) and
//! the page `docs/tools.md` ([`markdown`]), generated from the registry by
//! `exai-worker tools doc` (a test fails when the page is stale). `exai-call --list` shows the
//! same arguments from a daemon's `list_tools` answer.

use std::fmt::Write;

use serde_json::Value;

use super::Tool;

/// The command that writes docs/tools.md.
pub const GENERATE_COMMAND: &str = "exai-worker tools doc > docs/tools.md";

/// One argument of a tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argument {
    /// Its name in the `arguments` object.
    pub name: String,
    /// Its JSON type (`string`, `integer`, `array of string`, …).
    pub kind: String,
    /// `yes`, `no`, or `see below` (required only with other arguments, see [`rules`]).
    pub required: &'static str,
    /// What it is, then its constraints (allowed values, default, bounds, pattern).
    pub description: String,
}

/// The arguments of an input schema: the required ones first (in the schema's order), then the
/// others by name.
pub fn arguments(schema: &Value) -> Vec<Argument> {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    let required = names(schema.get("required"));
    let conditional = conditional_names(schema);
    let mut order: Vec<&String> = required
        .iter()
        .filter_map(|r| properties.keys().find(|k| *k == r))
        .collect();
    let mut rest: Vec<&String> = properties
        .keys()
        .filter(|k| !required.contains(k))
        .collect();
    rest.sort();
    order.extend(rest);
    order
        .into_iter()
        .map(|name| {
            let prop = &properties[name];
            Argument {
                name: name.clone(),
                kind: kind(prop),
                required: if required.contains(name) {
                    "yes"
                } else if conditional.contains(name) {
                    "see below"
                } else {
                    "no"
                },
                description: describe(prop),
            }
        })
        .collect()
}

/// The schema's rules beyond per-argument ones, as sentences: which of several arguments is
/// required (`anyOf`), what an argument's value makes required (`if`/`then`), and whether other
/// arguments are accepted.
pub fn rules(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        let alternatives: Vec<String> = any
            .iter()
            .flat_map(|alt| names(alt.get("required")))
            .map(|n| format!("`{n}`"))
            .collect();
        if !alternatives.is_empty() {
            out.push(format!(
                "At least one of {} is required.",
                alternatives.join(", ")
            ));
        }
    }
    if let (Some(cond), Some(then)) = (schema.get("if"), schema.get("then")) {
        let needed = names(then.get("required"));
        let when: Vec<String> = cond
            .get("properties")
            .and_then(Value::as_object)
            .map(|props| {
                props
                    .iter()
                    .filter_map(|(k, v)| v.get("const").map(|c| format!("`{k}` is `{}`", plain(c))))
                    .collect()
            })
            .unwrap_or_default();
        if !needed.is_empty() && !when.is_empty() {
            let needed: Vec<String> = needed.iter().map(|n| format!("`{n}`")).collect();
            out.push(format!(
                "{} {} required when {}.",
                needed.join(", "),
                if needed.len() == 1 { "is" } else { "are" },
                when.join(" and ")
            ));
        }
    }
    match schema.get("additionalProperties") {
        Some(Value::Bool(false)) => out.push("No other arguments are accepted.".to_owned()),
        Some(Value::Bool(true)) => out.push("Other arguments are accepted.".to_owned()),
        _ => {}
    }
    out
}

/// The names of a `required` array.
fn names(required: Option<&Value>) -> Vec<String> {
    required
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Arguments required only in some cases (`anyOf` alternatives, `then` of an `if`).
fn conditional_names(schema: &Value) -> Vec<String> {
    let mut out: Vec<String> = schema
        .get("anyOf")
        .and_then(Value::as_array)
        .map(|any| any.iter().flat_map(|a| names(a.get("required"))).collect())
        .unwrap_or_default();
    if let Some(then) = schema.get("then") {
        out.extend(names(then.get("required")));
    }
    out
}

/// A property's JSON type: `array of <items>` for arrays.
fn kind(prop: &Value) -> String {
    let base = prop.get("type").and_then(Value::as_str).unwrap_or("any");
    if base == "array" {
        let items = prop
            .get("items")
            .map(kind)
            .unwrap_or_else(|| "any".to_owned());
        format!("array of {items}")
    } else {
        base.to_owned()
    }
}

/// A JSON value as plain text (strings without quotes).
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A property's description and constraints, in one line.
fn describe(prop: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(d) = prop.get("description").and_then(Value::as_str) {
        parts.push(d.trim_end_matches('.').to_owned());
    }
    if let Some(values) = prop.get("enum").and_then(Value::as_array) {
        let values: Vec<String> = values.iter().map(|v| format!("`{}`", plain(v))).collect();
        parts.push(format!("one of {}", values.join(", ")));
    }
    let bound = |key: &str| prop.get(key).map(plain);
    match (bound("minimum"), bound("maximum")) {
        (Some(lo), Some(hi)) => parts.push(format!("{lo} to {hi}")),
        (Some(lo), None) => parts.push(format!("at least {lo}")),
        (None, Some(hi)) => parts.push(format!("at most {hi}")),
        (None, None) => {}
    }
    let counted = |lo: &str, hi: &str, what: &str| match (bound(lo), bound(hi)) {
        (Some(lo), Some(hi)) => Some(format!("{lo} to {hi} {what}s")),
        (Some(lo), None) if lo == "1" => Some(format!("at least one {what}")),
        (Some(lo), None) => Some(format!("at least {lo} {what}s")),
        (None, Some(hi)) => Some(format!("at most {hi} {what}s")),
        (None, None) => None,
    };
    parts.extend(counted("minItems", "maxItems", "item"));
    parts.extend(counted("minLength", "maxLength", "character"));
    if let Some(items) = prop.get("items") {
        let inner = describe_bounds_only(items);
        if !inner.is_empty() {
            parts.push(format!("each {inner}"));
        }
    }
    if let Some(p) = prop.get("pattern").and_then(Value::as_str) {
        parts.push(format!("matching `{p}`"));
    }
    if let Some(d) = prop.get("default") {
        parts.push(format!("default `{}`", plain(d)));
    }
    parts.join("; ")
}

/// The constraints of an array's items (no description), for "each …".
fn describe_bounds_only(items: &Value) -> String {
    let mut stripped = items.clone();
    if let Some(obj) = stripped.as_object_mut() {
        obj.remove("description");
    }
    describe(&stripped)
}

/// Escapes a table cell's `|`.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// docs/tools.md: every tool of `tools` with its description, its arguments and an example call.
pub fn markdown(tools: &[Tool]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Tools");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "<!-- Generated from the tool registry (shared/src/tools.rs) by `{GENERATE_COMMAND}`; \
         tests/tests/tools_doc.rs fails when this page is stale. Do not edit by hand. -->"
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "The tools a client may call with `call_tool` (see [protocol.md](protocol.md#call_tool--tool_call)), \
         with the arguments each takes. A call whose arguments do not satisfy the tool's schema is \
         refused with `VALIDATION_ERROR` naming the failing argument, before anything is enqueued; a \
         name that is no tool gets `TOOL_NOT_FOUND`, which names the closest tools. A running daemon \
         lists the same with `exai-call --list` (or the `list_tools` op), schemas included."
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "| tool | what it does |");
    let _ = writeln!(out, "|---|---|");
    for t in tools {
        let _ = writeln!(
            out,
            "| [`{}`](#{}) | {} |",
            t.name,
            t.name,
            cell(first_sentence(t.description))
        );
    }
    for t in tools {
        let _ = writeln!(out);
        let _ = writeln!(out, "## `{}`", t.name);
        let _ = writeln!(out);
        let _ = writeln!(out, "{}", t.description);
        let _ = writeln!(out);
        let args = arguments(&t.input_schema);
        if args.is_empty() {
            let _ = writeln!(out, "No named arguments.");
        } else {
            let _ = writeln!(out, "| argument | type | required | description |");
            let _ = writeln!(out, "|---|---|---|---|");
            for a in &args {
                let _ = writeln!(
                    out,
                    "| `{}` | {} | {} | {} |",
                    a.name,
                    a.kind,
                    a.required,
                    cell(&a.description)
                );
            }
        }
        let rules = rules(&t.input_schema);
        if !rules.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(out, "{}", rules.join(" "));
        }
        let args = serde_json::to_string(&t.example).unwrap_or_default();
        let _ = writeln!(out);
        let _ = writeln!(out, "```sh");
        let _ = writeln!(out, "exai-call {} '{args}'", t.name);
        let _ = writeln!(out, "```");
        let _ = writeln!(out);
        let _ = writeln!(out, "```json");
        let _ = writeln!(
            out,
            "{{\"op\":\"call_tool\",\"request_id\":\"r-1\",\"name\":\"{}\",\"arguments\":{args}}}",
            t.name
        );
        let _ = writeln!(out, "```");
    }
    out
}

/// The first sentence of a description (up to the first `. ` or `; `, or all of it).
fn first_sentence(text: &str) -> &str {
    let end = [". ", "; "]
        .iter()
        .filter_map(|sep| text.find(sep))
        .min()
        .map_or(text.len(), |i| i + 1);
    text[..end].trim_end_matches([';', ' '])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn arguments_list_required_ones_first_with_their_constraints() {
        let schema = json!({
            "type": "object",
            "required": ["b"],
            "properties": {
                "c": {"type": "integer", "minimum": 1, "maximum": 9, "default": 3},
                "a": {"type": "array", "items": {"type": "string", "maxLength": 4},
                      "description": "Things."},
                "b": {"type": "string", "enum": ["x", "y"]}
            },
            "anyOf": [{"required": ["a"]}, {"required": ["c"]}],
            "additionalProperties": false
        });
        let args = arguments(&schema);
        let names: Vec<&str> = args.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["b", "a", "c"]);
        assert_eq!(args[0].required, "yes");
        assert_eq!(args[0].description, "one of `x`, `y`");
        assert_eq!(args[1].kind, "array of string");
        assert_eq!(args[1].required, "see below");
        assert_eq!(args[1].description, "Things; each at most 4 characters");
        assert_eq!(args[2].description, "1 to 9; default `3`");
        assert_eq!(
            rules(&schema),
            [
                "At least one of `a`, `c` is required.",
                "No other arguments are accepted."
            ]
        );
    }

    #[test]
    fn the_page_has_a_section_and_an_example_per_tool() {
        let page = markdown(super::super::all());
        for t in super::super::all() {
            assert!(page.contains(&format!("## `{}`", t.name)), "{}", t.name);
            assert!(
                page.contains(&format!("exai-call {} '", t.name)),
                "{}",
                t.name
            );
        }
    }
}
