//! `docs/protocol.md`, the wire contract that ships with the code, held to the code:
//!
//! - its index tables (first column `client op`, `daemon op`, `error code`, `close code`,
//!   `hello_ack error`, `hello_ack detail`, `call state`, `cancel was`) list exactly what `exai_shared::protocol`
//!   knows: nothing the daemon accepts or sends is missing, and nothing listed is unknown;
//! - every op in them has a section of its own;
//! - every line of its `json` blocks is one message the code accepts: a client op parses with the
//!   daemon's parser, a daemon op deserializes as a `ServerMessage` and serializes back to the
//!   same JSON (so an example cannot show a field the code does not have), and every op has at
//!   least one example.
//!
//! The checks are functions returning what is wrong, so the last test can show that a doc with
//! a row removed or a bogus row added fails them.

use std::collections::BTreeSet;
use std::path::PathBuf;

use exai_shared::protocol::{
    self, CallState, CancelWas, ClientOp, CloseCode, ErrorCode, HelloDetail, HelloError,
    HelloFrame, ServerMessage, ServerOp,
};
use serde_json::Value;

/// The doc's path, from the root of the repository.
const DOC_PATH: &str = "docs/protocol.md";

/// The text of `docs/protocol.md`.
fn doc() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(DOC_PATH);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{DOC_PATH} cannot be read ({}): {e}", path.display()))
}

/// The cells of a table row, trimmed (`| a | b |` → `["a", "b"]`).
fn cells(line: &str) -> Vec<&str> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(str::trim).collect()
}

/// The value of a cell that holds exactly one backquoted value (`` `ping` `` → `ping`).
fn backquoted(cell: &str) -> Option<&str> {
    let value = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!value.is_empty() && !value.contains('`')).then_some(value)
}

/// The first column of the one table whose first header cell is `header`, one backquoted value
/// per row.
fn column(doc: &str, header: &str) -> Result<Vec<String>, String> {
    Ok(rows(doc, header)?.into_iter().map(|(_, v)| v).collect())
}

/// The rows of the one table whose first header cell is `header`: (line index, the backquoted
/// value of the first cell).
fn rows(doc: &str, header: &str) -> Result<Vec<(usize, String)>, String> {
    let lines: Vec<&str> = doc.lines().collect();
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| {
            let is_row = |l: &str| l.trim_start().starts_with('|');
            is_row(lines[i])
                && (i == 0 || !is_row(lines[i - 1]))
                && cells(lines[i]).first() == Some(&header)
        })
        .collect();
    let start = match starts.as_slice() {
        [one] => *one,
        [] => return Err(format!("no table whose first column is `{header}`")),
        many => {
            return Err(format!(
                "{} tables whose first column is `{header}` (lines {:?}); there must be one",
                many.len(),
                many.iter().map(|i| i + 1).collect::<Vec<_>>()
            ));
        }
    };
    let separator = lines.get(start + 1).copied().unwrap_or_default();
    if !cells(separator)
        .iter()
        .all(|c| !c.is_empty() && c.chars().all(|ch| ch == '-' || ch == ':'))
    {
        return Err(format!(
            "the `{header}` table (line {}) has no separator row",
            start + 1
        ));
    }
    let mut values = Vec::new();
    for (i, line) in lines.iter().enumerate().skip(start + 2) {
        if !line.trim_start().starts_with('|') {
            break;
        }
        let first = cells(line).first().copied().unwrap_or_default();
        let value = backquoted(first).ok_or_else(|| {
            format!(
                "line {}: the first cell of a `{header}` row must be one backquoted value, not `{first}`",
                i + 1
            )
        })?;
        values.push((i, value.to_owned()));
    }
    if values.is_empty() {
        return Err(format!("the `{header}` table has no rows"));
    }
    Ok(values)
}

/// Checks that the `header` table lists each of `known` exactly once and nothing else.
fn check_column(doc: &str, header: &str, known: &[String]) -> Result<(), String> {
    let documented = column(doc, header)?;
    let mut seen = BTreeSet::new();
    let twice: Vec<&String> = documented.iter().filter(|v| !seen.insert(*v)).collect();
    let known_set: BTreeSet<&String> = known.iter().collect();
    let missing: Vec<&String> = known.iter().filter(|k| !seen.contains(k)).collect();
    let unknown: Vec<&String> = documented
        .iter()
        .filter(|v| !known_set.contains(v))
        .collect();
    if twice.is_empty() && missing.is_empty() && unknown.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the `{header}` table of {DOC_PATH} disagrees with the code: missing from the doc {missing:?}, \
         unknown to the code {unknown:?}, listed twice {twice:?}"
    ))
}

fn client_ops() -> Vec<String> {
    ClientOp::ALL
        .iter()
        .map(|o| o.as_str().to_owned())
        .collect()
}

fn daemon_ops() -> Vec<String> {
    ServerOp::ALL
        .iter()
        .map(|o| o.as_str().to_owned())
        .collect()
}

/// A serde-named value's wire string.
fn wire_name(value: impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        other => panic!("not a string on the wire: {other:?}"),
    }
}

/// Every index table of the doc with what the code knows.
fn tables() -> Vec<(&'static str, Vec<String>)> {
    vec![
        ("client op", client_ops()),
        ("daemon op", daemon_ops()),
        (
            "error code",
            ErrorCode::ALL
                .iter()
                .map(|c| c.as_str().to_owned())
                .collect(),
        ),
        (
            "close code",
            CloseCode::ALL
                .iter()
                .map(|c| c.code().to_string())
                .collect(),
        ),
        (
            "hello_ack error",
            HelloError::ALL
                .iter()
                .map(|e| e.as_str().to_owned())
                .collect(),
        ),
        (
            "hello_ack detail",
            HelloDetail::ALL
                .iter()
                .map(|d| d.as_str().to_owned())
                .collect(),
        ),
        (
            "call state",
            CallState::ALL.iter().copied().map(wire_name).collect(),
        ),
        (
            "cancel was",
            CancelWas::ALL.iter().copied().map(wire_name).collect(),
        ),
    ]
}

/// Every index table lists exactly what the code knows.
fn check_tables(doc: &str) -> Result<(), String> {
    let errors: Vec<String> = tables()
        .iter()
        .filter_map(|(header, known)| check_column(doc, header, known).err())
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// Every op of the index tables has a heading that names it in backquotes.
fn check_sections(doc: &str) -> Result<(), String> {
    let headings: Vec<&str> = doc
        .lines()
        .filter(|l| l.starts_with('#'))
        .collect::<Vec<_>>();
    let mut missing = Vec::new();
    for header in ["client op", "daemon op"] {
        for op in column(doc, header)? {
            let named = format!("`{op}`");
            if !headings.iter().any(|h| h.contains(&named)) {
                missing.push(op);
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("ops without a section of their own: {missing:?}"))
    }
}

/// The lines of the doc's `json` code blocks, with their line numbers.
fn json_lines(doc: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut inside = false;
    for (i, line) in doc.lines().enumerate() {
        let fence = line.trim_start();
        if !inside && fence.starts_with("```json") {
            inside = true;
        } else if inside && fence.starts_with("```") {
            inside = false;
        } else if inside && !line.trim().is_empty() {
            out.push((i + 1, line));
        }
    }
    out
}

/// Checks one example message; returns its op.
fn check_example(text: &str) -> Result<String, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let op = value
        .get("op")
        .and_then(Value::as_str)
        .ok_or("no string `op`")?
        .to_owned();
    if let Some(client) = ClientOp::from_wire(&op) {
        if client == ClientOp::Hello {
            return match protocol::parse_hello(text) {
                HelloFrame::Hello(_) => Ok(op),
                other => Err(format!("the daemon does not take it as a hello: {other:?}")),
            };
        }
        let inbound = protocol::parse_request(text)
            .map_err(|e| format!("the daemon refuses it: {}", e.error.message))?;
        return match inbound.request {
            protocol::Request::Unknown(_) => Err("the daemon does not know its op".to_owned()),
            _ => Ok(op),
        };
    }
    if ServerOp::ALL.iter().any(|o| o.as_str() == op) {
        let message: ServerMessage = serde_json::from_value(value.clone())
            .map_err(|e| format!("not a frame the daemon sends: {e}"))?;
        let back = serde_json::to_value(&message).map_err(|e| e.to_string())?;
        if back != value {
            return Err(format!(
                "the daemon would send it differently (a field it does not have, or a default it leaves out): {back}"
            ));
        }
        return Ok(op);
    }
    Err(format!("`{op}` is neither a client op nor a daemon op"))
}

/// Every `json` line is a message the code accepts, and every op has an example.
fn check_examples(doc: &str) -> Result<(), String> {
    let mut errors = Vec::new();
    let mut shown = BTreeSet::new();
    for (line, text) in json_lines(doc) {
        match check_example(text) {
            Ok(op) => {
                shown.insert(op);
            }
            Err(e) => errors.push(format!("line {line}: {e}")),
        }
    }
    let without: Vec<String> = client_ops()
        .into_iter()
        .chain(daemon_ops())
        .filter(|op| !shown.contains(op))
        .collect();
    if !without.is_empty() {
        errors.push(format!("ops without a `json` example: {without:?}"));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

#[test]
fn the_doc_lists_every_op_error_code_and_close_code_of_the_code_and_nothing_else() {
    if let Err(e) = check_tables(&doc()) {
        panic!("{e}");
    }
}

#[test]
fn every_documented_op_has_a_section() {
    if let Err(e) = check_sections(&doc()) {
        panic!("{e}");
    }
}

#[test]
fn every_example_is_a_message_the_code_accepts() {
    if let Err(e) = check_examples(&doc()) {
        panic!("{e}");
    }
}

/// Replaces the first occurrence of `from` (which must be there) with `to`.
fn edited(doc: &str, from: &str, to: &str) -> String {
    assert!(doc.contains(from), "the doc has no `{from}`");
    doc.replacen(from, to, 1)
}

#[test]
fn a_doc_with_a_row_missing_or_a_bogus_row_fails_the_checks() {
    let doc = doc();
    let lines: Vec<&str> = doc.lines().collect();
    // The doc with line `at` replaced by `with` (any number of lines).
    let replace_line = |at: usize, with: &[&str]| {
        let mut out: Vec<&str> = lines[..at].to_vec();
        out.extend_from_slice(with);
        out.extend_from_slice(&lines[at + 1..]);
        out.join("\n")
    };
    // For each table: drop its first row, add a bogus one, list one twice.
    for (header, known) in tables() {
        let (at, value) = rows(&doc, header).unwrap().remove(0);
        let without = replace_line(at, &[]);
        let err = check_column(&without, header, &known).unwrap_err();
        assert!(err.contains(&format!("{value:?}")), "{err}");

        let bogus_row = format!("| `bogus_{value}` | invented |");
        let bogus = replace_line(at, &[lines[at], &bogus_row]);
        let err = check_column(&bogus, header, &known).unwrap_err();
        assert!(err.contains(&format!("bogus_{value}")), "{err}");

        let twice = replace_line(at, &[lines[at], lines[at]]);
        assert!(check_column(&twice, header, &known).is_err());
    }

    // An op with no section, an example of an op nobody knows, and an example with a field the
    // code does not have.
    let no_section = edited(&doc, "### `cancel`\n", "### Cancelling\n");
    assert!(check_sections(&no_section).is_err());
    let bogus_example = edited(
        &doc,
        "{\"op\":\"ping\",\"request_id\":\"p-1\"}\n",
        "{\"op\":\"ping\",\"request_id\":\"p-1\"}\n{\"op\":\"rotate_token\",\"old\":\"a\",\"new\":\"b\"}\n",
    );
    let err = check_examples(&bogus_example).unwrap_err();
    assert!(err.contains("rotate_token"), "{err}");
    let invented_field = edited(
        &doc,
        "{\"op\":\"pong\",\"request_id\":\"p-1\"}",
        "{\"op\":\"pong\",\"request_id\":\"p-1\",\"timestamp\":\"now\"}",
    );
    assert!(check_examples(&invented_field).is_err());
    // A table removed altogether.
    let no_table = doc.replace("| close code |", "| code |");
    assert!(check_tables(&no_table).is_err());
}
