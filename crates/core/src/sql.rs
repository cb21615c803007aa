//! SQL text helpers shared by the SQL sources and sinks. Values never go into SQL text (they
//! are always bound as parameters); only identifiers from configuration and catalogs do, and
//! always through [`quote_ident`].

/// Quotes an identifier the standard SQL way (SQLite, PostgreSQL): `"name"`, with embedded
/// double quotes doubled, so any name is taken literally and cannot end the identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    #[test]
    fn quotes_are_doubled() {
        assert_eq!(super::quote_ident("a\"b; DROP"), "\"a\"\"b; DROP\"");
    }
}
