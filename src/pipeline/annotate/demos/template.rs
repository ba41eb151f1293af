//! Prompt templates of `demos --template`: one rendered prompt per query.
//!
//! Syntax (everything else is copied verbatim):
//! * `{{#demos}} ... {{/demos}}`: the section repeated once per
//!   demonstration, in prompt order (at most one section);
//! * `{{COL}}`: inside the section, column `COL` of the demonstration's
//!   annotated row; outside it, column `COL` of the query;
//! * `{{query.COL}}`: column `COL` of the query, anywhere;
//! * `{{{{`: a literal `{{`.
//!
//! Spaces inside the braces are ignored. Values are shown as text (numbers
//! as written by Arrow's cast to UTF-8; null as nothing). Placeholders
//! naming no column of their file are one error listing them all.

use std::collections::{BTreeSet, HashMap};

use crate::{Error, Result};

/// One piece of a template.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    /// A column of the query.
    Query(String),
    /// A column of the demonstration (only inside the section).
    Demo(String),
    /// The demos section.
    Demos(Vec<Part>),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Template {
    parts: Vec<Part>,
}

/// Column values of one file as text, by column name, by row.
pub(super) type Values = HashMap<String, Vec<Option<String>>>;

fn syntax(reason: String) -> Error {
    Error::param("--template", reason)
}

impl Template {
    /// Parses `src` (see the module docs).
    pub(super) fn parse(src: &str) -> Result<Self> {
        let mut top: Vec<Part> = Vec::new();
        let mut section: Option<Vec<Part>> = None;
        let mut seen_section = false;
        let mut text = String::new();
        let mut rest = src;
        while let Some(at) = rest.find("{{") {
            text.push_str(&rest[..at]);
            rest = &rest[at..];
            if let Some(after) = rest.strip_prefix("{{{{") {
                text.push_str("{{");
                rest = after;
                continue;
            }
            let end = rest.find("}}").ok_or_else(|| {
                syntax(format!(
                    "`{}` opens a placeholder that is never closed with `}}}}`",
                    rest.chars().take(30).collect::<String>()
                ))
            })?;
            let name = rest[2..end].trim();
            rest = &rest[end + 2..];
            let in_section = section.is_some();
            let target = section.as_mut().unwrap_or(&mut top);
            if !text.is_empty() {
                target.push(Part::Text(std::mem::take(&mut text)));
            }
            if let Some(s) = name.strip_prefix('#') {
                if s.trim() != "demos" {
                    return Err(syntax(format!(
                        "unknown section `{{{{{name}}}}}`: the only section is {{{{#demos}}}}"
                    )));
                }
                if section.is_some() || seen_section {
                    return Err(syntax("only one {{#demos}} section is allowed".into()));
                }
                section = Some(Vec::new());
                seen_section = true;
            } else if let Some(s) = name.strip_prefix('/') {
                let inner = section
                    .take()
                    .filter(|_| s.trim() == "demos")
                    .ok_or_else(|| syntax(format!("`{{{{{name}}}}}` closes no open {{{{#demos}}}} section")))?;
                top.push(Part::Demos(inner));
            } else {
                let (q, col) = match name.strip_prefix("query.") {
                    Some(c) => (true, c.trim()),
                    None => (!in_section, name),
                };
                if col.is_empty() {
                    return Err(syntax(format!("empty placeholder `{{{{{name}}}}}`")));
                }
                target.push(if q {
                    Part::Query(col.to_string())
                } else {
                    Part::Demo(col.to_string())
                });
            }
        }
        text.push_str(rest);
        if section.is_some() {
            return Err(syntax("the {{#demos}} section is never closed with {{/demos}}".into()));
        }
        if !text.is_empty() {
            top.push(Part::Text(text));
        }
        Ok(Template { parts: top })
    }

    /// Columns the template reads from the queries and from the demos.
    pub(super) fn columns(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        fn walk(parts: &[Part], q: &mut BTreeSet<String>, d: &mut BTreeSet<String>) {
            for p in parts {
                match p {
                    Part::Text(_) => {}
                    Part::Query(c) => {
                        q.insert(c.clone());
                    }
                    Part::Demo(c) => {
                        d.insert(c.clone());
                    }
                    Part::Demos(inner) => walk(inner, q, d),
                }
            }
        }
        let (mut q, mut d) = (BTreeSet::new(), BTreeSet::new());
        walk(&self.parts, &mut q, &mut d);
        (q, d)
    }

    /// Checks that every placeholder names a column: `queries` and `demos`
    /// are the column names of the two files.
    pub(super) fn check(&self, queries: &[String], demos: &[String]) -> Result<()> {
        let (q, d) = self.columns();
        let mut unknown: Vec<String> = Vec::new();
        for c in q.iter().filter(|c| !queries.contains(c)) {
            unknown.push(format!("{{{{query.{c}}}}} (no column `{c}` in the queries)"));
        }
        for c in d.iter().filter(|c| !demos.contains(c)) {
            unknown.push(format!("{{{{{c}}}}} (no column `{c}` in the annotated rows)"));
        }
        if unknown.is_empty() {
            return Ok(());
        }
        Err(syntax(format!(
            "unknown placeholders: {}. Query columns: {}; annotated columns: {}",
            unknown.join(", "),
            queries.join(", "),
            demos.join(", ")
        )))
    }

    /// The prompt of query row `q` with the demos at annotated rows `demos`
    /// (prompt order).
    pub(super) fn render(&self, q: usize, demos: &[usize], qv: &Values, dv: &Values) -> String {
        fn value(v: &Values, c: &str, r: usize) -> String {
            v.get(c).and_then(|col| col[r].clone()).unwrap_or_default()
        }
        fn emit(parts: &[Part], demo: Option<usize>, cx: (usize, &[usize], &Values, &Values), out: &mut String) {
            let (q, demos, qv, dv) = cx;
            for p in parts {
                match p {
                    Part::Text(t) => out.push_str(t),
                    Part::Query(c) => out.push_str(&value(qv, c, q)),
                    Part::Demo(c) => out.push_str(&value(dv, c, demo.expect("demo columns are inside the section"))),
                    Part::Demos(inner) => demos.iter().for_each(|&d| emit(inner, Some(d), cx, out)),
                }
            }
        }
        let mut out = String::new();
        emit(&self.parts, None, (q, demos, qv, dv), &mut out);
        out
    }
}

/// Replaces `\n`, `\t` and `\\` in a template given on the command line.
pub(super) fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(pairs: &[(&str, &[&str])]) -> Values {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| Some(s.to_string())).collect()))
            .collect()
    }

    #[test]
    fn renders_demos_in_order_then_the_query() {
        let t =
            Template::parse("{{#demos}}Q: {{ text }}\nA: {{label}} ({{query.id}})\n{{/demos}}Q: {{text}}\nA:").unwrap();
        let (q, d) = t.columns();
        assert_eq!(q.into_iter().collect::<Vec<_>>(), ["id", "text"]);
        assert_eq!(d.into_iter().collect::<Vec<_>>(), ["label", "text"]);
        let qv = vals(&[("text", &["q0", "q1"]), ("id", &["7", "8"])]);
        let dv = vals(&[("text", &["d0", "d1", "d2"]), ("label", &["x", "y", "z"])]);
        assert_eq!(
            t.render(1, &[2, 0], &qv, &dv),
            "Q: d2\nA: z (8)\nQ: d0\nA: x (8)\nQ: q1\nA:"
        );
        assert_eq!(t.render(0, &[], &qv, &dv), "Q: q0\nA:");
    }

    #[test]
    fn literal_braces_and_escapes() {
        let t = Template::parse("{{{{x}} {{a}}").unwrap();
        assert_eq!(t.render(0, &[], &vals(&[("a", &["1"])]), &Values::new()), "{{x}} 1");
        assert_eq!(unescape(r"a\nb\tc\\n\q"), "a\nb\tc\\n\\q");
    }

    #[test]
    fn syntax_errors_and_unknown_placeholders_are_named() {
        for (src, want) in [
            ("a {{text", "never closed"),
            ("{{#demos}}x", "{{/demos}}"),
            ("{{/demos}}", "closes no open"),
            ("{{#demos}}{{#demos}}{{/demos}}", "only one"),
            ("{{#demos}}{{/demos}}{{#demos}}{{/demos}}", "only one"),
            ("{{#shots}}{{/shots}}", "unknown section `{{#shots}}`"),
            ("{{ }}", "empty placeholder"),
        ] {
            let e = Template::parse(src).unwrap_err().to_string();
            assert!(e.contains("--template") && e.contains(want), "{src}: {e}");
        }
        let t = Template::parse("{{#demos}}{{txt}} {{label}}{{/demos}}{{query.body}}{{text}}").unwrap();
        let e = t
            .check(&["text".into(), "id".into()], &["text".into(), "label".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("{{txt}} (no column `txt` in the annotated rows)")
                && e.contains("{{query.body}} (no column `body` in the queries)")
                && !e.contains("{{label}} (")
                && !e.contains("{{query.text}} ("),
            "{e}"
        );
    }
}
