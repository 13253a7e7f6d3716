//! The GRUB environment block: a 1024-byte file that GRUB's `load_env` and
//! `save_env` read and write, and that Cairn uses to hold the A/B boot state.
//!
//! Format: the line `# GRUB Environment Block`, then `NAME=value` lines, then
//! `#` padding up to exactly 1024 bytes. GRUB only rewrites the file in place,
//! so the size never changes. Values with a newline or backslash would need
//! GRUB's escaping; Cairn never stores such values, so they are rejected
//! rather than half-supported.

use std::fmt;

/// Size of a GRUB environment block, in bytes.
pub const SIZE: usize = 1024;
const HEADER: &str = "# GRUB Environment Block\n";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrubEnvError {
    #[error("grubenv is {0} bytes, expected exactly {SIZE}")]
    WrongSize(usize),
    #[error("grubenv does not start with {:?}", HEADER.trim_end())]
    MissingHeader,
    #[error("grubenv is not valid UTF-8 text")]
    NotText,
    #[error("grubenv line {line}: {text:?} is not NAME=value")]
    BadLine { line: usize, text: String },
    #[error("grubenv padding after the variables is not all '#'")]
    BadPadding,
    #[error("grubenv variable name {0:?} is invalid: use letters, digits and '_'")]
    BadName(String),
    #[error("grubenv value for {0} contains a newline or backslash")]
    BadValue(String),
    #[error("grubenv variables take {0} bytes, more than the {SIZE}-byte block holds")]
    TooLarge(usize),
}

/// The variables of a GRUB environment block, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrubEnv {
    vars: Vec<(String, String)>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl GrubEnv {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a whole block. The block must be exactly [`SIZE`] bytes, as
    /// GRUB requires before it will `save_env` into it.
    pub fn parse(bytes: &[u8]) -> Result<Self, GrubEnvError> {
        if bytes.len() != SIZE {
            return Err(GrubEnvError::WrongSize(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| GrubEnvError::NotText)?;
        let body = text
            .strip_prefix(HEADER)
            .ok_or(GrubEnvError::MissingHeader)?;
        let mut env = GrubEnv::new();
        let mut rest = body;
        let mut line_no = 1;
        while let Some(end) = rest.find('\n') {
            let line = &rest[..end];
            line_no += 1;
            if line.starts_with('#') {
                // Padding begins; GRUB pads with '#' and no newline, but it
                // also accepts comment lines. Everything after is padding.
                break;
            }
            let (name, value) = line.split_once('=').ok_or_else(|| GrubEnvError::BadLine {
                line: line_no,
                text: line.to_string(),
            })?;
            if !valid_name(name) {
                return Err(GrubEnvError::BadLine {
                    line: line_no,
                    text: line.to_string(),
                });
            }
            env.vars.push((name.to_string(), value.to_string()));
            rest = &rest[end + 1..];
        }
        let padding = rest.trim_end_matches('\n');
        if !padding.bytes().all(|b| b == b'#' || b == b'\n') {
            return Err(GrubEnvError::BadPadding);
        }
        Ok(env)
    }

    /// Encodes the variables into a block of exactly [`SIZE`] bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, GrubEnvError> {
        let mut out = String::from(HEADER);
        for (name, value) in &self.vars {
            out.push_str(name);
            out.push('=');
            out.push_str(value);
            out.push('\n');
        }
        if out.len() > SIZE {
            return Err(GrubEnvError::TooLarge(out.len()));
        }
        let mut bytes = out.into_bytes();
        bytes.resize(SIZE, b'#');
        Ok(bytes)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets a variable, keeping its position if it already exists.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), GrubEnvError> {
        if !valid_name(name) {
            return Err(GrubEnvError::BadName(name.to_string()));
        }
        if value.contains(['\n', '\\']) {
            return Err(GrubEnvError::BadValue(name.to_string()));
        }
        match self.vars.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.to_string(),
            None => self.vars.push((name.to_string(), value.to_string())),
        }
        Ok(())
    }

    pub fn remove(&mut self, name: &str) {
        self.vars.retain(|(n, _)| n != name);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

impl fmt::Display for GrubEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, value) in &self.vars {
            writeln!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_order_and_size() {
        let mut env = GrubEnv::new();
        env.set("ORDER", "a b").unwrap();
        env.set("a_OK", "1").unwrap();
        env.set("a_TRY", "0").unwrap();
        env.set("a_OK", "0").unwrap();
        let bytes = env.to_bytes().unwrap();
        assert_eq!(bytes.len(), SIZE);
        assert!(bytes.starts_with(HEADER.as_bytes()));
        assert!(bytes.ends_with(b"###"));
        let back = GrubEnv::parse(&bytes).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.get("a_OK"), Some("0"));
        assert_eq!(
            back.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            ["ORDER", "a_OK", "a_TRY"]
        );
    }

    #[test]
    fn parses_what_grub_editenv_writes() {
        // grub-editenv writes the header, the variables, then '#' padding.
        let mut raw = b"# GRUB Environment Block\nORDER=a b\nb_TRY=2\n".to_vec();
        raw.resize(SIZE, b'#');
        let env = GrubEnv::parse(&raw).unwrap();
        assert_eq!(env.get("ORDER"), Some("a b"));
        assert_eq!(env.get("b_TRY"), Some("2"));
        assert_eq!(env.get("missing"), None);
    }

    #[test]
    fn malformed_blocks_are_rejected_with_the_reason() {
        assert_eq!(GrubEnv::parse(b"short"), Err(GrubEnvError::WrongSize(5)));

        let mut no_header = b"ORDER=a b\n".to_vec();
        no_header.resize(SIZE, b'#');
        assert_eq!(GrubEnv::parse(&no_header), Err(GrubEnvError::MissingHeader));

        let mut bad_line = b"# GRUB Environment Block\nnot a variable\n".to_vec();
        bad_line.resize(SIZE, b'#');
        assert!(matches!(
            GrubEnv::parse(&bad_line),
            Err(GrubEnvError::BadLine { line: 2, .. })
        ));

        let mut bad_pad = b"# GRUB Environment Block\nA=1\n".to_vec();
        bad_pad.resize(SIZE, b'x');
        assert_eq!(GrubEnv::parse(&bad_pad), Err(GrubEnvError::BadPadding));

        let mut binary = b"# GRUB Environment Block\n".to_vec();
        binary.resize(SIZE, 0xff);
        assert_eq!(GrubEnv::parse(&binary), Err(GrubEnvError::NotText));
    }

    #[test]
    fn bad_names_values_and_overflow_are_refused() {
        let mut env = GrubEnv::new();
        assert!(matches!(env.set("a b", "1"), Err(GrubEnvError::BadName(_))));
        assert!(matches!(
            env.set("A", "x\ny"),
            Err(GrubEnvError::BadValue(_))
        ));
        env.set("BIG", &"x".repeat(SIZE)).unwrap();
        assert!(matches!(env.to_bytes(), Err(GrubEnvError::TooLarge(_))));
    }
}
