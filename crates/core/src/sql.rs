//! SQL text helpers shared by the SQL sources and sinks. Values never go into SQL text (they
//! are always bound as parameters); only identifiers from configuration and catalogs do, and
//! always through [`quote_ident`].

/// Quotes an identifier the standard SQL way (SQLite, PostgreSQL): `"name"`, with embedded
/// double quotes doubled, so any name is taken literally and cannot end the identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A type name from a catalog (e.g. `numeric(12,2)`, `text[]`, `timestamp with time zone`)
/// made safe to put into SQL text as a type: only the characters built-in type names hold are
/// kept, so a catalog string cannot smuggle SQL; nothing left means `text`.
pub fn safe_type_name(declared: &str) -> String {
    let kept: String = declared
        .chars()
        .filter(|ch| ch.is_ascii_alphanumeric() || " (),_[]".contains(*ch))
        .collect();
    if kept.trim().is_empty() {
        "text".to_owned()
    } else {
        kept
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn type_names_keep_only_type_characters() {
        assert_eq!(super::safe_type_name("numeric(12,2)"), "numeric(12,2)");
        assert_eq!(super::safe_type_name("text[]"), "text[]");
        assert_eq!(
            super::safe_type_name("int; DROP TABLE x"),
            "int DROP TABLE x"
        );
        assert_eq!(super::safe_type_name("\"\";--"), "text");
    }

    #[test]
    fn quotes_are_doubled() {
        assert_eq!(super::quote_ident("a\"b; DROP"), "\"a\"\"b; DROP\"");
    }
}
