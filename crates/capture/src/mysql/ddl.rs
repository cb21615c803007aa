//! Reading the DDL statements of a row-based binlog (QUERY events) just enough to know which
//! captured table they touch: `TRUNCATE`, `ALTER TABLE`, `DROP`/`RENAME TABLE`.

/// The first word of a statement, after comments and blanks.
pub(crate) fn first_word(query: &str) -> &str {
    let q = skip_comments(query);
    let end = q
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(q.len());
    &q[..end]
}

fn skip_comments(mut q: &str) -> &str {
    loop {
        q = q.trim_start();
        if let Some(rest) = q.strip_prefix("/*") {
            match rest.find("*/") {
                Some(i) => q = &rest[i + 2..],
                None => return "",
            }
        } else if let Some(rest) = q.strip_prefix("--").or_else(|| q.strip_prefix('#')) {
            match rest.find('\n') {
                Some(i) => q = &rest[i + 1..],
                None => return "",
            }
        } else {
            return q;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ddl {
    Truncate,
    Alter,
    /// `DROP TABLE` or `RENAME TABLE` (of the first table named).
    Gone,
}

/// What a DDL statement does to which tables: (what, [(database, table)]). `DROP TABLE` and
/// `RENAME TABLE` list every table they name (for RENAME both the old and the new names: a
/// table renamed onto a captured one replaces it).
pub(crate) fn ddl_target(query: &str, schema: &str) -> Option<(Ddl, Vec<(String, String)>)> {
    let q = skip_comments(query);
    let mut words = Words { rest: q };
    let verb = words.next()?.to_ascii_uppercase();
    let (ddl, name) = match verb.as_str() {
        "TRUNCATE" => {
            let mut w = words.next()?;
            if w.eq_ignore_ascii_case("TABLE") {
                w = words.next()?;
            }
            (Ddl::Truncate, w)
        }
        "ALTER" => {
            let mut w = words.next()?;
            while ["ONLINE", "IGNORE"]
                .iter()
                .any(|k| w.eq_ignore_ascii_case(k))
            {
                w = words.next()?;
            }
            if !w.eq_ignore_ascii_case("TABLE") {
                return None;
            }
            let mut w = words.next()?;
            if w.eq_ignore_ascii_case("IF") {
                words.next()?;
                w = words.next()?;
            }
            (Ddl::Alter, w)
        }
        "DROP" | "RENAME" => {
            let w = words.next()?;
            if w.eq_ignore_ascii_case("TEMPORARY") {
                return None;
            }
            if !w.eq_ignore_ascii_case("TABLE") && !w.eq_ignore_ascii_case("TABLES") {
                return None;
            }
            let mut names = Vec::new();
            for w in words {
                if [
                    "IF", "EXISTS", "TO", "RESTRICT", "CASCADE", "WAIT", "NOWAIT",
                ]
                .iter()
                .any(|k| w.eq_ignore_ascii_case(k))
                    || w.bytes().all(|b| b.is_ascii_digit())
                {
                    continue;
                }
                names.push(split_qualified(w, schema));
            }
            return (!names.is_empty()).then_some((Ddl::Gone, names));
        }
        _ => return None,
    };
    Some((ddl, vec![split_qualified(name, schema)]))
}

/// `db`.`t`, db.t, `t` or t: (database, table).
fn split_qualified(name: &str, schema: &str) -> (String, String) {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '`' if quoted && chars.peek() == Some(&'`') => {
                chars.next();
                cur.push('`');
            }
            '`' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    match parts.len() {
        1 => (schema.to_owned(), parts.remove(0)),
        _ => {
            let table = parts.pop().unwrap_or_default();
            (parts.remove(0), table)
        }
    }
}

/// Words of a statement: identifiers (backquoted ones whole, with `db`.`t` as one word).
struct Words<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let s = skip_comments(self.rest);
        if s.is_empty() {
            return None;
        }
        let mut end = 0;
        let mut quoted = false;
        for (i, c) in s.char_indices() {
            match c {
                '`' => quoted = !quoted,
                c if !quoted && (c.is_whitespace() || c == '(' || c == ',' || c == ';') => {
                    end = i;
                    break;
                }
                _ => {}
            }
            end = i + c.len_utf8();
        }
        if end == 0 {
            // A lone separator: skip it.
            let c = s.chars().next()?;
            self.rest = &s[c.len_utf8()..];
            return self.next();
        }
        self.rest = &s[end..];
        Some(&s[..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_statements_name_their_table() {
        assert_eq!(
            ddl_target("TRUNCATE TABLE `items`", "shop"),
            Some((Ddl::Truncate, vec![("shop".into(), "items".into())]))
        );
        assert_eq!(
            ddl_target("truncate erp.items", "shop"),
            Some((Ddl::Truncate, vec![("erp".into(), "items".into())]))
        );
        assert_eq!(
            ddl_target(
                "/* x */ ALTER TABLE `shop`.`it``ems` ADD COLUMN x INT",
                "db"
            ),
            Some((Ddl::Alter, vec![("shop".into(), "it`ems".into())]))
        );
        assert_eq!(
            ddl_target("ALTER ONLINE TABLE items(x)", "db").map(|t| t.0),
            Some(Ddl::Alter)
        );
        assert_eq!(
            ddl_target(
                "DROP TABLE IF EXISTS `items` /* generated by server */",
                "db"
            ),
            Some((Ddl::Gone, vec![("db".into(), "items".into())]))
        );
        assert_eq!(
            ddl_target("DROP TABLE `other`, items", "db"),
            Some((
                Ddl::Gone,
                vec![("db".into(), "other".into()), ("db".into(), "items".into())]
            ))
        );
        assert_eq!(
            ddl_target("RENAME TABLE a TO b, c TO `x`.`items`", "db").map(|t| t.1.len()),
            Some(4)
        );
        assert_eq!(ddl_target("DROP TEMPORARY TABLE items", "db"), None);
        assert_eq!(ddl_target("CREATE TABLE items (id int)", "db"), None);
        assert_eq!(ddl_target("ALTER USER x", "db"), None);
        assert_eq!(first_word("  /* c */ BEGIN"), "BEGIN");
        assert_eq!(first_word("COMMIT"), "COMMIT");
    }
}
