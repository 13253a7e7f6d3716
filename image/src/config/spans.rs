//! From byte offsets to key paths and back, over toml's spanned document
//! tree ([`toml::de::DeTable`]), so every error names the key
//! (`network.interfaces[1].gateway`) and the line and column it sits at —
//! both for errors `toml`/`serde` report at a span and for the rules across
//! keys that are checked after parsing.

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

fn render(path: &[Segment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !k.is_empty()
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if bare {
                    out.push_str(k);
                } else {
                    out.push_str(&format!("{k:?}"));
                }
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The path of the innermost key or value whose text contains `offset`
/// (empty when the text does not parse or nothing contains it).
pub fn path_at(text: &str, offset: usize) -> String {
    let Ok(root) = DeTable::parse(text) else {
        return String::new();
    };
    find_in_table(root.get_ref(), offset)
        .map(|mut p| {
            p.reverse();
            render(&p)
        })
        .unwrap_or_default()
}

// Paths are built leaf first and reversed once at the end.
fn find_in_table(table: &DeTable<'_>, offset: usize) -> Option<Vec<Segment>> {
    for (key, value) in table.iter() {
        let seg = Segment::Key(key.get_ref().to_string());
        if key.span().contains(&offset) {
            return Some(vec![seg]);
        }
        if let Some(mut inner) = find_in_value(value, offset) {
            inner.push(seg);
            return Some(inner);
        }
    }
    None
}

fn find_in_value(value: &Spanned<DeValue<'_>>, offset: usize) -> Option<Vec<Segment>> {
    let inner = match value.get_ref() {
        DeValue::Table(t) => find_in_table(t, offset),
        DeValue::Array(a) => a.iter().enumerate().find_map(|(i, v)| {
            find_in_value(v, offset).map(|mut p| {
                p.push(Segment::Index(i));
                p
            })
        }),
        _ => None,
    };
    inner.or_else(|| value.span().contains(&offset).then(Vec::new))
}

/// Splits `a.b[2]."c.d".e` into segments.
fn parse_path(path: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut chars = path.chars().peekable();
    let mut cur = String::new();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                for q in chars.by_ref() {
                    if q == '"' {
                        break;
                    }
                    cur.push(q);
                }
                out.push(Segment::Key(std::mem::take(&mut cur)));
            }
            '.' => {
                if !cur.is_empty() {
                    out.push(Segment::Key(std::mem::take(&mut cur)));
                }
            }
            '[' => {
                if !cur.is_empty() {
                    out.push(Segment::Key(std::mem::take(&mut cur)));
                }
                let digits: String = chars.by_ref().take_while(|&d| d != ']').collect();
                if let Ok(i) = digits.parse() {
                    out.push(Segment::Index(i));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(Segment::Key(cur));
    }
    out
}

/// Where the key at `path` (or the deepest part of it present) starts.
pub fn offset_of(text: &str, path: &str) -> Option<usize> {
    let root = DeTable::parse(text).ok()?;
    let mut at = None;
    let mut value: Option<&Spanned<DeValue<'_>>> = None;
    let mut table = Some(root.get_ref());
    for seg in parse_path(path) {
        let next = match seg {
            Segment::Key(k) => table
                .and_then(|t| t.iter().find(|(key, _)| key.get_ref() == &k))
                .map(|(key, v)| (key.span().start, v)),
            Segment::Index(i) => value
                .and_then(|v| v.get_ref().as_array())
                .and_then(|a| a.get(i))
                .map(|v| (v.span().start, v)),
        };
        let Some((start, v)) = next else { break };
        at = Some(start);
        value = Some(v);
        table = v.get_ref().as_table();
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "version = 1\n[host]\nhostname = \"x\"\n[[network.interfaces]]\nname = \"eth1\"\n[[network.interfaces]]\nname = \"eth2\"\ngateway = \"10.0.0.1\"\n[cluster.registries.configs.\"r.example:5000\"]\nusername = \"u\"\n";

    #[test]
    fn paths_from_offsets() {
        let at = |needle: &str| DOC.find(needle).unwrap();
        assert_eq!(path_at(DOC, at("hostname")), "host.hostname");
        assert_eq!(path_at(DOC, at("\"x\"")), "host.hostname");
        assert_eq!(
            path_at(DOC, at("\"10.0.0.1\"")),
            "network.interfaces[1].gateway"
        );
        assert_eq!(
            path_at(DOC, at("username")),
            "cluster.registries.configs.\"r.example:5000\".username"
        );
        assert_eq!(path_at("not toml [", 3), "");
    }

    #[test]
    fn offsets_from_paths() {
        let line_of = |off: usize| DOC[..off].matches('\n').count() + 1;
        assert_eq!(offset_of(DOC, "host.hostname").map(line_of), Some(3));
        assert_eq!(
            offset_of(DOC, "network.interfaces[1].gateway").map(line_of),
            Some(8)
        );
        assert_eq!(
            offset_of(
                DOC,
                "cluster.registries.configs.\"r.example:5000\".username"
            )
            .map(line_of),
            Some(10)
        );
        assert_eq!(offset_of(DOC, "update.url"), None);
        assert_eq!(
            offset_of(DOC, "host.timezone").map(line_of),
            Some(2),
            "deepest part present"
        );
        assert_eq!(
            parse_path("a.b[2].\"c.d\".e"),
            [
                Segment::Key("a".into()),
                Segment::Key("b".into()),
                Segment::Index(2),
                Segment::Key("c.d".into()),
                Segment::Key("e".into())
            ]
        );
    }
}
