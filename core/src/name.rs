//! Node, service and action names.
//!
//! A name becomes a path segment under the runtime root and a topic level, so
//! it is checked once at the edge and carried as [`Name`] afterwards. The rule
//! is `[a-z0-9][a-z0-9._-]{0,62}` after folding to lower case, with no `..`.
//! A `Name` can therefore never contain `/`, never be `.` or `..`, and never
//! start with `-` or `.`.

use std::fmt;

use serde::{Deserialize, Serialize};

pub const MAX_LEN: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is {0} characters long, at most {MAX_LEN} allowed")]
    TooLong(usize),
    #[error("name must start with a letter or digit, not {0:?}")]
    BadStart(char),
    #[error("name contains {0:?}; allowed are a-z, 0-9, '.', '_' and '-'")]
    BadChar(char),
    #[error("name contains '..'")]
    DotDot,
}

/// A validated, lower-case name. See the module docs for the rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    pub fn parse(raw: &str) -> Result<Name, NameError> {
        let folded = raw.to_lowercase();
        let len = folded.chars().count();
        let first = folded.chars().next().ok_or(NameError::Empty)?;
        if len > MAX_LEN {
            return Err(NameError::TooLong(len));
        }
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(NameError::BadStart(first));
        }
        if let Some(bad) = folded.chars().find(|c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        }) {
            return Err(NameError::BadChar(bad));
        }
        if folded.contains("..") {
            return Err(NameError::DotDot);
        }
        Ok(Name(folded))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Name::parse(&value)
    }
}

impl From<Name> for String {
    fn from(name: Name) -> String {
        name.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Name {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Name::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(input: &str, expected: Result<&str, NameError>) {
        assert_eq!(
            Name::parse(input).as_ref().map(Name::as_str),
            expected.as_ref().map(|s| *s),
            "input {input:?}"
        );
    }

    #[test]
    fn names() {
        check("piha", Ok("piha"));
        check("Chelsty-Infra", Ok("chelsty-infra"));
        check("node_exporter", Ok("node_exporter"));
        check("a.b", Ok("a.b"));
        check("0", Ok("0"));
        check("", Err(NameError::Empty));
        check("..", Err(NameError::BadStart('.')));
        check("a..b", Err(NameError::DotDot));
        check("a/b", Err(NameError::BadChar('/')));
        check("-x", Err(NameError::BadStart('-')));
        check("x y", Err(NameError::BadChar(' ')));
        check("é", Err(NameError::BadStart('é')));
        check(&"a".repeat(63), Ok(&"a".repeat(63)));
        check(&"a".repeat(64), Err(NameError::TooLong(64)));
    }

    proptest! {
        #[test]
        fn a_valid_name_is_one_safe_path_segment(raw in "\\PC{0,80}") {
            if let Ok(name) = Name::parse(&raw) {
                let path = std::path::Path::new(name.as_str());
                let mut parts = path.components();
                prop_assert!(matches!(parts.next(), Some(std::path::Component::Normal(_))));
                prop_assert!(parts.next().is_none());
                prop_assert!(!name.as_str().contains('+') && !name.as_str().contains('#'));
            }
        }
    }
}
