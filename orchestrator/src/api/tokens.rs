//! Service account tokens: the JWTs the `serviceaccounts/<name>/token`
//! subresource issues (what `kubectl create token` and the node agent's
//! projected token volumes ask for) and that the authenticator accepts.
//!
//! Tokens are ES256 JWTs signed with the server's own key
//! (`<data-dir>/pki/service-account.key`, made on first start and kept),
//! carrying upstream's claims: `iss`, `sub`
//! (`system:serviceaccount:<ns>:<name>`), `aud`, `exp`, `iat`, `nbf`,
//! `jti` and the `kubernetes.io` claim naming the namespace, the service
//! account and the pod the token is bound to, with their uids. A token is
//! valid while it has not expired, names this server's issuer and an
//! audience the API accepts, and the objects it names still exist with
//! those uids (the router checks that last part against the store).
//!
//! Current limitations: several servers sharing a PostgreSQL datastore
//! each sign with their own key unless `pki/` is shared between them; there
//! is no OIDC discovery document for outside verifiers yet.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};

/// The issuer and default audience, as upstream's default
/// `--service-account-issuer` in K3s.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Lifetime of a token when the request names none (upstream: 1 h).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The shortest lifetime a request may ask for (upstream: 10 min).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// The longest lifetime granted (upstream's `--service-account-max-token-expiration` unset: no cap; we cap at 48 h).
pub const MAX_EXPIRATION_SECONDS: i64 = 48 * 3600;

/// Errors loading or creating the signing key.
#[derive(Debug, thiserror::Error)]
pub enum TokenKeyError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an ECDSA P-256 private key: {message}")]
    Key { path: PathBuf, message: String },
}

/// The object a token is bound to, by name and uid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ref {
    pub name: String,
    pub uid: String,
}

/// The `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub namespace: String,
    pub serviceaccount: Ref,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Ref>,
}

/// A token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: Binding,
}

/// Signs and verifies tokens with the server's key.
pub struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer")
    }
}

impl Signer {
    /// Loads `path`, creating a fresh key there (mode 0600) if missing.
    pub fn load_or_create(path: &Path) -> Result<Signer, TokenKeyError> {
        let io = |what| {
            move |source| TokenKeyError::Io {
                what,
                path: path.to_owned(),
                source,
            }
        };
        let pem = match std::fs::read_to_string(path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let fresh = rcgen::KeyPair::generate().map_err(|e| TokenKeyError::Key {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
                let pem = fresh.serialize_pem();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io("creating the directory of"))?;
                }
                write_private(path, &pem).map_err(io("writing"))?;
                pem
            }
            Err(e) => return Err(io("reading")(e)),
        };
        let bad = |message: String| TokenKeyError::Key {
            path: path.to_owned(),
            message,
        };
        let pair = rcgen::KeyPair::from_pem(&pem).map_err(|e| bad(e.to_string()))?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &pair.serialize_der(),
            &rng,
        )
        .map_err(|e| bad(e.to_string()))?;
        Ok(Signer { key, rng })
    }

    /// The signed token for `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
        // Claims are plain strings and numbers: serializing cannot fail.
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let input = format!("{header}.{payload}");
        // Signing fails only when the system's random source does.
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map(|s| URL_SAFE_NO_PAD.encode(s.as_ref()))
            .unwrap_or_default();
        format!("{input}.{sig}")
    }

    /// The claims of `token` when this key signed it, it is within its
    /// lifetime at `now` (Unix seconds) and its issuer and audience are the
    /// API's; `None` for anything else (including tokens that are not JWTs).
    pub fn verify(&self, token: &str, now: i64) -> Option<Claims> {
        let (input, sig) = token.rsplit_once('.')?;
        let (header, payload) = input.split_once('.')?;
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if header["alg"] != "ES256" {
            return None;
        }
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        let public = signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        );
        public.verify(input.as_bytes(), &sig).ok()?;
        let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        let valid = claims.iss == ISSUER
            && claims.aud.iter().any(|a| a == ISSUER)
            && claims.nbf <= now + 60
            && now < claims.exp;
        valid.then_some(claims)
    }
}

/// The user name of a service account.
pub fn user_name(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// The groups of a service account's user.
pub fn groups(namespace: &str) -> Vec<String> {
    vec![
        "system:serviceaccounts".to_owned(),
        format!("system:serviceaccounts:{namespace}"),
    ]
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: user_name("default", "builder"),
            aud: vec![ISSUER.into()],
            exp: now + 600,
            iat: now,
            nbf: now,
            jti: "j".into(),
            kubernetes: Binding {
                namespace: "default".into(),
                serviceaccount: Ref {
                    name: "builder".into(),
                    uid: "u1".into(),
                },
                pod: None,
                secret: None,
            },
        }
    }

    #[test]
    fn signed_tokens_verify_until_they_expire() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("pki/service-account.key");
        let signer = Signer::load_or_create(&path).expect("key");
        let token = signer.sign(&claims(1000));
        assert_eq!(signer.verify(&token, 1000), Some(claims(1000)));
        assert_eq!(signer.verify(&token, 1600), None, "expired");
        // The key is kept: a second load verifies the same token.
        let again = Signer::load_or_create(&path).expect("reload");
        assert!(again.verify(&token, 1001).is_some());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).expect("stat").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn forged_or_foreign_tokens_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let ours = Signer::load_or_create(&dir.path().join("a.key")).expect("key");
        let theirs = Signer::load_or_create(&dir.path().join("b.key")).expect("key");
        let token = theirs.sign(&claims(1000));
        assert_eq!(ours.verify(&token, 1000), None, "another key");
        // Changing the payload breaks the signature.
        let good = ours.sign(&claims(1000));
        let mut parts: Vec<&str> = good.split('.').collect();
        let mut other = claims(1000);
        other.sub = user_name("kube-system", "admin");
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).expect("json"));
        parts[1] = &forged_payload;
        assert_eq!(ours.verify(&parts.join("."), 1000), None, "forged");
        let mut wrong_aud = claims(1000);
        wrong_aud.aud = vec!["vault".into()];
        assert_eq!(ours.verify(&ours.sign(&wrong_aud), 1000), None, "audience");
        for junk in ["", "a.b", "a.b.c", "static-token"] {
            assert_eq!(ours.verify(junk, 1000), None, "{junk}");
        }
        let bad = dir.path().join("bad.key");
        std::fs::write(&bad, "not a key").expect("write");
        let err = Signer::load_or_create(&bad).expect_err("bad key");
        assert!(err.to_string().contains("bad.key"), "{err}");
    }
}
