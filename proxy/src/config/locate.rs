//! Finds where a key sits in a TOML file, so config errors can name the line and the key.
//!
//! serde tells us what is wrong; only the document (parsed again with `toml_edit`, which keeps
//! spans) tells us where.

use std::ops::Range;

use toml_edit::{ImDocument, Item, TableLike, Value};

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while offset > 0 && !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// Span of the value of a dotted key such as `upstream.backends`, or of the deepest table on the
/// path that exists (so a missing key points at its table).
pub fn span_of(text: &str, dotted: &str) -> Option<Range<usize>> {
    let doc = ImDocument::parse(text).ok()?;
    let mut table: &dyn TableLike = doc.as_table();
    let mut best = None;
    let parts: Vec<&str> = dotted.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        // `routes[2]`: the third table of an array of tables (or inline table of an array).
        let (name, index) = match part.strip_suffix(']').and_then(|p| p.split_once('[')) {
            Some((name, index)) => (name, index.parse::<usize>().ok()),
            None => (*part, None),
        };
        let Some(item) = table.get(name) else { break };
        let span = item_span(item).or_else(|| table.key(name).and_then(|k| k.span()));
        if span.is_some() {
            best = span;
        }
        let indexed: Option<&dyn TableLike> = match index {
            Some(n) => match item {
                Item::ArrayOfTables(a) => a.get(n).map(|t| {
                    best = t.span().or(best.clone());
                    t as &dyn TableLike
                }),
                Item::Value(Value::Array(a)) => a.get(n).and_then(|v| {
                    best = v.span().or(best.clone());
                    v.as_inline_table().map(|t| t as &dyn TableLike)
                }),
                _ => None,
            },
            None => None,
        };
        if i + 1 == parts.len() {
            break;
        }
        match indexed.or_else(|| item.as_table_like()) {
            Some(next) => table = next,
            None => break,
        }
    }
    best
}

/// The dotted key whose key or value covers `offset`, the deepest one found.
pub fn key_at(text: &str, offset: usize) -> Option<String> {
    let doc = ImDocument::parse(text).ok()?;
    let mut path = Vec::new();
    find_in_table(doc.as_table(), offset, &mut path).then(|| path.join("."))
}

fn find_in_table(table: &dyn TableLike, offset: usize, path: &mut Vec<String>) -> bool {
    for (name, item) in table.iter() {
        let key_hit = table
            .key(name)
            .and_then(|k| k.span())
            .is_some_and(|s| contains(&s, offset));
        if let Item::ArrayOfTables(tables) = item {
            for (i, inner) in tables.iter().enumerate() {
                path.push(format!("{name}[{i}]"));
                if find_in_table(inner, offset, path) {
                    return true;
                }
                path.pop();
            }
        }
        path.push(name.to_owned());
        if let Some(inner) = item.as_table_like() {
            if find_in_table(inner, offset, path) {
                return true;
            }
        }
        let value_hit = item_span(item).is_some_and(|s| contains(&s, offset));
        if key_hit || (value_hit && item.as_table().is_none()) {
            return true;
        }
        path.pop();
    }
    false
}

fn item_span(item: &Item) -> Option<Range<usize>> {
    match item {
        Item::Value(Value::InlineTable(t)) => t.span(),
        Item::Value(v) => v.span(),
        Item::Table(t) => t.span(),
        Item::ArrayOfTables(a) => a.span(),
        Item::None => None,
    }
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "[server]\nthreads = 2\n\n[upstream]\nbackends = [\"a:1\"]\n[upstream.health_check]\npath = \"x\"\n";

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_col(DOC, 0), (1, 1));
        assert_eq!(line_col(DOC, DOC.find("threads").unwrap()), (2, 1));
        assert_eq!(line_col(DOC, DOC.find("2").unwrap()), (2, 11));
    }

    #[test]
    fn finds_nested_keys() {
        let s = span_of(DOC, "upstream.health_check.path").unwrap();
        assert_eq!(line_col(DOC, s.start).0, 7);
        let s = span_of(DOC, "upstream.backends").unwrap();
        assert_eq!(line_col(DOC, s.start).0, 5);
        // A key that is not written points at its table.
        let s = span_of(DOC, "server.listen").unwrap();
        assert_eq!(line_col(DOC, s.start).0, 1);
    }

    const ROUTES: &str = "[upstream]\nbackends = [\"a:1\"]\n\n[[routes]]\nname = \"a\"\nupstream = \"x\"\n\n[[routes]]\nname = \"b\"\nupstream = \"y\"\n";

    #[test]
    fn finds_keys_in_arrays_of_tables() {
        let s = span_of(ROUTES, "routes[1].upstream").unwrap();
        assert_eq!(line_col(ROUTES, s.start).0, 10);
        let s = span_of(ROUTES, "routes[0].name").unwrap();
        assert_eq!(line_col(ROUTES, s.start).0, 5);
        let at = ROUTES.rfind("\"y\"").unwrap();
        assert_eq!(key_at(ROUTES, at).as_deref(), Some("routes[1].upstream"));
    }

    #[test]
    fn names_the_key_under_an_offset() {
        let at = DOC.find("\"x\"").unwrap();
        assert_eq!(
            key_at(DOC, at).as_deref(),
            Some("upstream.health_check.path")
        );
        let at = DOC.find("threads").unwrap();
        assert_eq!(key_at(DOC, at).as_deref(), Some("server.threads"));
    }
}
