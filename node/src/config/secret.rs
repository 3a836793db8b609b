//! `Secret`: a string that never shows itself in `Debug`, `Display` or logs.

use serde::Deserialize;
use std::fmt;

/// An API key, token, password or cluster secret. `Debug` and `Display` print `***`; the value is
/// only reachable through [`Secret::expose`], which call sites use right where the secret leaves
/// the process (an HTTP header, a handshake).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Only for the place where it is sent; never for logging.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let secret = Secret::new("sk-ant-very-secret");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{secret}"), "***");
        let wrapped = Some(secret.clone());
        assert!(!format!("{wrapped:?}").contains("very-secret"));
        assert_eq!(secret.expose(), "sk-ant-very-secret");
    }
}
