//! Authentication: who a request comes from, as kube-apiserver decides it.
//!
//! Two authenticators, tried in upstream's order:
//! - Client certificates issued by the cluster CA (rustls has verified the
//!   chain): the subject's CN is the user name and its Os are the groups,
//!   so the admin certificate (`CN=cairn-admin, O=system:masters`) is an
//!   administrator. A certificate without a CN identifies nobody.
//! - Bearer tokens (`Authorization: Bearer <token>`), from:
//!   - `<data-dir>/tokens.csv` in kube-apiserver's `--token-auth-file`
//!     format: `token,user,uid,"group1,group2"` per line (groups optional),
//!     read at start;
//!   - the `--token` server token (K3s' spelling). In K3s it is the secret
//!     nodes join with; here it authenticates as user `node` in group
//!     `system:nodes`, what `cairn agent` will present. Give people their
//!     own token in `tokens.csv` (with group `system:masters` for admins).
//!
//! - Service account tokens (JWTs the server signed, [`super::tokens`]):
//!   user `system:serviceaccount:<ns>:<name>` in groups
//!   `system:serviceaccounts` and `system:serviceaccounts:<ns>`; the
//!   objects the token names are checked against the store by the router.
//!
//! Every authenticated user also gets the group `system:authenticated`, as
//! upstream. A request that proves nothing gets 401, as does a bearer token
//! nobody issued. Authorization (RBAC) is a later issue: it will decide from
//! the [`User`] the router hands on with each request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hyper::HeaderMap;
use tracing::{info, warn};

use super::x509;

/// The group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// User name of the `--token` server token.
pub const NODE_USER: &str = "node";
/// Group of the `--token` server token.
pub const NODES_GROUP: &str = "system:nodes";

/// An authenticated user, as upstream's `user.Info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user name (certificate CN, token file column 2).
    pub name: String,
    /// A unique id (token file column 3; empty for certificates).
    pub uid: String,
    /// Groups, `system:authenticated` last.
    pub groups: Vec<String>,
    /// For a service account token: the objects it names, which must still
    /// exist with these uids.
    pub bound: Option<super::tokens::Binding>,
}

impl User {
    fn new(name: impl Into<String>, uid: impl Into<String>, mut groups: Vec<String>) -> User {
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.to_owned());
        }
        User {
            name: name.into(),
            uid: uid.into(),
            groups,
            bound: None,
        }
    }

    /// An in-process identity (the controllers' `system:kube-controller-manager`
    /// and `system:kube-scheduler`), as their client certificates would name them.
    pub fn internal(name: &str) -> User {
        User::new(name, "", Vec::new())
    }

    /// The user a verified client certificate (DER) names, if any.
    pub fn from_certificate(der: &[u8]) -> Option<User> {
        let cert = match x509::Certificate::parse(der) {
            Ok(cert) => cert,
            Err(error) => {
                warn!(%error, "client certificate subject unreadable");
                return None;
            }
        };
        let name = cert.common_name().filter(|cn| !cn.is_empty())?;
        Some(User::new(name, "", cert.organizations()))
    }
}

/// Errors loading the token file.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token file could not be read.
    #[error("token file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line of the token file is malformed.
    #[error("token file {path} line {line}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// The bearer tokens the server accepts.
#[derive(Debug, Default)]
pub struct Authenticator {
    tokens: HashMap<String, User>,
    signer: Option<super::tokens::Signer>,
}

impl Authenticator {
    /// Loads `token_file` (missing: no tokens) and adds `server_token`.
    pub fn load(token_file: &Path, server_token: Option<&str>) -> Result<Authenticator, AuthError> {
        let mut tokens = match std::fs::read_to_string(token_file) {
            Ok(text) => parse_token_file(&text).map_err(|(line, message)| AuthError::Syntax {
                path: token_file.to_owned(),
                line,
                message,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(source) => {
                return Err(AuthError::Io {
                    path: token_file.to_owned(),
                    source,
                });
            }
        };
        if !tokens.is_empty() {
            info!(path = %token_file.display(), tokens = tokens.len(), "loaded bearer tokens");
        }
        if let Some(token) = server_token.filter(|t| !t.is_empty()) {
            tokens.insert(
                token.to_owned(),
                User::new(NODE_USER, NODE_USER, vec![NODES_GROUP.to_owned()]),
            );
        }
        Ok(Authenticator {
            tokens,
            signer: None,
        })
    }

    /// Also issues and accepts service account tokens signed with `signer`.
    pub fn with_signer(mut self, signer: super::tokens::Signer) -> Authenticator {
        self.signer = Some(signer);
        self
    }

    /// The service account token signer, when the server has one.
    pub fn signer(&self) -> Option<&super::tokens::Signer> {
        self.signer.as_ref()
    }

    /// The user of a request: its client certificate's, else its bearer
    /// token's. `None`: anonymous or an unknown token (both 401).
    pub fn authenticate(&self, certificate: Option<&User>, headers: &HeaderMap) -> Option<User> {
        if let Some(user) = certificate {
            return Some(user.clone());
        }
        let token = bearer_token(headers)?;
        if let Some(user) = self.tokens.get(token) {
            return Some(user.clone());
        }
        let now = jiff::Timestamp::now().as_second();
        if let Some(claims) = self.signer.as_ref().and_then(|s| s.verify(token, now)) {
            let binding = claims.kubernetes;
            let mut user = User::new(
                super::tokens::user_name(&binding.namespace, &binding.serviceaccount.name),
                binding.serviceaccount.uid.clone(),
                super::tokens::groups(&binding.namespace),
            );
            user.bound = Some(binding);
            return Some(user);
        }
        warn!("unknown bearer token");
        None
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme
/// case-insensitive, as upstream).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Parses a token file: CSV records `token,user,uid[,groups]`; blank lines
/// are skipped, a record with an empty token is ignored (upstream warns),
/// and the last of duplicate tokens wins. Errors carry the line number.
fn parse_token_file(text: &str) -> Result<HashMap<String, User>, (usize, String)> {
    let mut tokens = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields = csv_fields(line).map_err(|m| (line_no, m))?;
        if fields.len() < 3 {
            return Err((
                line_no,
                format!(
                    "must have at least 3 columns (token, user name, user uid), found {}",
                    fields.len()
                ),
            ));
        }
        if fields[0].is_empty() {
            warn!(line = line_no, "empty token in the token file");
            continue;
        }
        let groups = fields
            .get(3)
            .filter(|g| !g.is_empty())
            .map(|g| g.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        let user = User::new(fields[1].clone(), fields[2].clone(), groups);
        if tokens.insert(fields[0].clone(), user).is_some() {
            warn!(line = line_no, "duplicate token in the token file");
        }
    }
    Ok(tokens)
}

/// The fields of one CSV line (RFC 4180 quoting, leading spaces trimmed as
/// Go's `csv.Reader{TrimLeadingSpace: true}` does).
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    loop {
        while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
        let mut field = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    Some('"') if chars.next_if_eq(&'"').is_some() => field.push('"'),
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("unterminated quoted field".to_owned()),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => {}
                Some(c) => return Err(format!("unexpected {c:?} after a quoted field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("bare \" in an unquoted field".to_owned()),
                    Some(c) => field.push(c),
                }
            }
        }
        fields.push(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            hyper::header::AUTHORIZATION,
            auth.parse().expect("header value"),
        );
        h
    }

    #[test]
    fn token_file_as_upstream() {
        let text = "abc,jane,42,\"dev,ops\"\n\n  def, bob ,7\n,nobody,0\nabc2,\"a,b\",u,g\n";
        let tokens = parse_token_file(text).expect("parse");
        let jane = &tokens["abc"];
        assert_eq!(jane.name, "jane");
        assert_eq!(jane.uid, "42");
        assert_eq!(jane.groups, ["dev", "ops", AUTHENTICATED]);
        assert_eq!(tokens["def"].name, "bob ");
        assert_eq!(tokens["def"].groups, [AUTHENTICATED]);
        assert_eq!(tokens["abc2"].name, "a,b");
        assert_eq!(tokens.len(), 3);
    }

    #[test]
    fn bad_token_file_lines_name_the_line() {
        assert_eq!(parse_token_file("a,b,c\nx,y\n").expect_err("short").0, 2);
        assert_eq!(parse_token_file("\"a,b,c\n").expect_err("quote").0, 1);
        assert_eq!(parse_token_file("a\"b,c,d\n").expect_err("bare").0, 1);
    }

    #[test]
    fn bearer_tokens_and_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tokens.csv");
        std::fs::write(&file, "t1,jane,1,system:masters\n").expect("write");
        let auth = Authenticator::load(&file, Some("server-secret")).expect("load");
        let jane = auth
            .authenticate(None, &headers("Bearer t1"))
            .expect("jane");
        assert_eq!(jane.groups, ["system:masters", AUTHENTICATED]);
        let node = auth
            .authenticate(None, &headers("bearer server-secret"))
            .expect("node");
        assert_eq!(
            (node.name.as_str(), node.groups[0].as_str()),
            (NODE_USER, NODES_GROUP)
        );
        assert!(auth.authenticate(None, &headers("Bearer nope")).is_none());
        assert!(auth.authenticate(None, &headers("Basic dDE=")).is_none());
        assert!(auth.authenticate(None, &HeaderMap::new()).is_none());
        let cert = User::new("admin", "", vec!["system:masters".into()]);
        assert_eq!(
            auth.authenticate(Some(&cert), &headers("Bearer nope")),
            Some(cert)
        );
    }

    #[test]
    fn missing_token_file_is_no_tokens() {
        let auth = Authenticator::load(Path::new("/nonexistent/tokens.csv"), None).expect("load");
        assert!(auth.authenticate(None, &headers("Bearer x")).is_none());
    }

    #[test]
    fn certificate_subject_is_the_user() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cairn-admin");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:masters");
        let cert = params.self_signed(&key).expect("cert");
        let user = User::from_certificate(cert.der()).expect("user");
        assert_eq!(user.name, "cairn-admin");
        assert_eq!(user.groups, ["system:masters", AUTHENTICATED]);
        let mut nameless = rcgen::CertificateParams::default();
        nameless.distinguished_name = rcgen::DistinguishedName::new();
        let cert = nameless.self_signed(&key).expect("cert");
        assert!(User::from_certificate(cert.der()).is_none());
    }
}
