//! Where each key sits in the file: the line every error is reported at.
//!
//! The text is parsed a second time with spans (`toml::de::DeTable`) into a tree of key →
//! line; an error's key (`upstreams.api.servers[1].weight`) is looked up in it, falling back to
//! the nearest table or entry that exists (a missing key is reported at its table's header).
//! Nothing here can panic on any input: offsets past the end are clamped, and lines are
//! counted on bytes, never by slicing the text.

use std::collections::BTreeMap;

use toml::de::{DeTable, DeValue};

/// The line of every key, table and array entry of one file.
#[derive(Debug, Default)]
pub(super) struct Lines {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    line: Option<usize>,
    children: BTreeMap<String, Node>,
    items: Vec<Node>,
}

impl Lines {
    /// The lines of `text`; empty (every lookup None) when it is not valid TOML.
    pub(super) fn new(text: &str) -> Self {
        let Ok(doc) = DeTable::parse(text) else {
            return Lines::default();
        };
        let starts = LineStarts::new(text);
        let mut root = Node::default();
        table(&starts, doc.get_ref(), &mut root);
        Lines { root }
    }

    /// The line of `key` (`a.b[2].c`), or of the nearest enclosing table or entry present in
    /// the file. Table names may contain dots: the longest name that fits is taken.
    pub(super) fn line(&self, key: &str) -> Option<usize> {
        let mut node = &self.root;
        let mut best = None;
        let mut rest = key;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('[') {
                let Some((index, after)) = after.split_once(']') else {
                    break;
                };
                let Some(item) = index.parse::<usize>().ok().and_then(|i| node.items.get(i)) else {
                    break;
                };
                node = item;
                rest = after;
            } else {
                let found = node
                    .children
                    .iter()
                    .filter_map(|(name, child)| {
                        let after = rest.strip_prefix(name.as_str())?;
                        (after.is_empty() || after.starts_with(['.', '[']))
                            .then_some((after, child))
                    })
                    // The longest name that fits ("a.b" over "a" for the key "a.b.c").
                    .min_by_key(|(after, _)| after.len());
                let Some((after, child)) = found else {
                    break;
                };
                node = child;
                rest = after;
            }
            best = node.line.or(best);
            rest = rest.strip_prefix('.').unwrap_or(rest);
        }
        best
    }
}

fn table(starts: &LineStarts, t: &DeTable<'_>, node: &mut Node) {
    for (k, v) in t.iter() {
        let child = node.children.entry(k.get_ref().to_string()).or_default();
        child.line = Some(starts.line(k.span().start));
        value(starts, v.get_ref(), child);
    }
}

fn value(starts: &LineStarts, v: &DeValue<'_>, node: &mut Node) {
    match v {
        DeValue::Table(t) => table(starts, t, node),
        DeValue::Array(items) => {
            for item in items.iter() {
                // An array-of-tables entry's span is its `[[name]]` header.
                let mut n = Node {
                    line: Some(starts.line(item.span().start)),
                    ..Node::default()
                };
                value(starts, item.get_ref(), &mut n);
                node.items.push(n);
            }
        }
        _ => {}
    }
}

/// 1-based line of a byte offset of `text` (the last line for an offset past the end).
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    LineStarts::new(text).line(offset)
}

/// Byte offsets where each line starts.
struct LineStarts(Vec<usize>);

impl LineStarts {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        );
        LineStarts(starts)
    }

    /// 1-based line of a byte offset; an offset past the end is on the last line.
    fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|start| *start <= offset).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_tables_and_entries_resolve_to_their_lines() {
        let text = "# c\n[server]\nlisten = 1\n\n[upstreams.\"a.b\"]\nservers = [\n  { address = \"x\" },\n  { address = \"y\", weight = 2 },\n]\n[[routes]]\npath_prefix = \"/\"\n[[routes]]\nupstream = \"u\"\n";
        let l = Lines::new(text);
        for (key, line) in [
            ("server", Some(2)),
            ("server.listen", Some(3)),
            ("server.missing", Some(2)),
            ("upstreams.a.b", Some(5)),
            ("upstreams.a.b.servers", Some(6)),
            ("upstreams.a.b.servers[0].address", Some(7)),
            ("upstreams.a.b.servers[1].weight", Some(8)),
            ("upstreams.a.b.servers[9].weight", Some(6)),
            ("routes[0]", Some(10)),
            ("routes[1]", Some(12)),
            ("routes[1].upstream", Some(13)),
            ("routes[1].host", Some(12)),
            ("routes[x]", Some(10)),
            ("routes[1", Some(10)),
            ("tls", None),
            ("", None),
        ] {
            assert_eq!(l.line(key), line, "{key}");
        }
    }

    #[test]
    fn invalid_toml_and_odd_offsets_never_panic() {
        assert_eq!(Lines::new("[server\n").line("server"), None);
        let s = LineStarts::new("é\nb\n");
        assert_eq!(s.line(0), 1);
        assert_eq!(s.line(1), 1);
        assert_eq!(s.line(3), 2);
        assert_eq!(s.line(usize::MAX), 3);
        assert_eq!(LineStarts::new("").line(7), 1);
    }
}
