//! Joining a server: the cluster CA an agent trusts, from its join token.
//!
//! A K3s-shaped full token, `K10<sha256 of the CA PEM>::<user>:<secret>`,
//! pins the cluster CA. An agent that has no CA file yet fetches the
//! server's `/cacerts` (the one request made without verifying the server),
//! accepts it only when its SHA-256 is the token's, and keeps it; a CA file
//! already present is checked against the token the same way, so a token
//! and a CA from different clusters are an error at start, not a stream
//! of TLS failures. A plain token (no `K10` prefix) pins nothing: the CA
//! file must then be supplied.

use std::path::{Path, PathBuf};

use http_body_util::BodyExt;
use hyper::Method;

use crate::controllers::client::Client;

/// Why the cluster CA could not be had.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// No CA file, and a token that pins none.
    #[error(
        "no CA file at {0} and the token is not a K10<hash>:: join token that would let the agent fetch it: supply the cluster CA (cluster.ca_cert, or --ca-file)"
    )]
    NoCa(PathBuf),
    /// The CA does not have the hash the token names.
    #[error(
        "the cluster CA {what} has SHA-256 {got}, but the join token pins {want}: the token and the server belong to different clusters"
    )]
    Mismatch {
        /// Where the CA came from.
        what: String,
        /// Its hash.
        got: String,
        /// The token's.
        want: String,
    },
    /// Fetching `/cacerts` failed.
    #[error("fetching the cluster CA from {url}/cacerts: {message}")]
    Fetch {
        /// The server.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The CA file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The CA hash a `K10<hex>::…` token pins, lower-case hex.
pub fn pinned_hash(token: &str) -> Option<String> {
    let rest = token.strip_prefix("K10")?;
    let (hash, _) = rest.split_once("::")?;
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hash.to_ascii_lowercase())
}

/// SHA-256 of `bytes`, lower-case hex.
fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn check(what: &str, pem: &[u8], want: &str) -> Result<(), JoinError> {
    let got = sha256_hex(pem);
    if got == want {
        Ok(())
    } else {
        Err(JoinError::Mismatch {
            what: what.to_owned(),
            got,
            want: want.to_owned(),
        })
    }
}

/// The cluster CA (PEM) for joining `server` with `token`: the file at
/// `ca_file` (checked against a pinning token), else fetched from the
/// server, checked and written there.
pub async fn cluster_ca(server: &str, token: &str, ca_file: &Path) -> Result<Vec<u8>, JoinError> {
    let pinned = pinned_hash(token);
    match std::fs::read(ca_file) {
        Ok(pem) => {
            if let Some(want) = &pinned {
                check(&ca_file.display().to_string(), &pem, want)?;
            }
            return Ok(pem);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(JoinError::Io {
                path: ca_file.to_owned(),
                source,
            });
        }
    }
    let want = pinned.ok_or_else(|| JoinError::NoCa(ca_file.to_owned()))?;
    let pem = fetch(server).await?;
    check(&format!("served at {server}/cacerts"), &pem, &want)?;
    write(ca_file, &pem)?;
    tracing::info!(file = %ca_file.display(), "fetched the cluster CA the join token pins");
    Ok(pem)
}

async fn fetch(server: &str) -> Result<Vec<u8>, JoinError> {
    let url = server.trim_end_matches('/');
    let fail = |message: String| JoinError::Fetch {
        url: url.to_owned(),
        message,
    };
    let client = Client::remote_unverified(url, super::MANAGER).map_err(|e| fail(e.message))?;
    let response = client
        .send(Method::GET, "/cacerts", "text/plain", None)
        .await
        .map_err(|e| fail(e.message))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| fail(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return Err(fail(format!("answered {status}")));
    }
    Ok(body.to_vec())
}

fn write(path: &Path, pem: &[u8]) -> Result<(), JoinError> {
    let io = |source| JoinError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, pem).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_pin_a_hash_only_in_k10_form() {
        let hash = "ab".repeat(32);
        assert_eq!(
            pinned_hash(&format!("K10{hash}::server:secret")),
            Some(hash.clone())
        );
        assert_eq!(
            pinned_hash(&format!("K10{}::server:s", hash.to_uppercase())),
            Some(hash)
        );
        assert_eq!(pinned_hash("0123456789abcdef0123"), None);
        assert_eq!(pinned_hash("K10abc::server:s"), None);
        assert_eq!(pinned_hash(&format!("K10{}::s", "zz".repeat(32))), None);
    }

    #[tokio::test]
    async fn a_present_ca_file_is_checked_against_the_token() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("ca.crt");
        std::fs::write(&file, b"PEM").expect("write");
        let good = format!("K10{}::server:s", sha256_hex(b"PEM"));
        let pem = cluster_ca("https://127.0.0.1:1", &good, &file)
            .await
            .expect("matches");
        assert_eq!(pem, b"PEM");
        let plain = cluster_ca("https://127.0.0.1:1", "0123456789abcdef", &file)
            .await
            .expect("a plain token pins nothing");
        assert_eq!(plain, b"PEM");
        let bad = format!("K10{}::server:s", "00".repeat(32));
        let err = cluster_ca("https://127.0.0.1:1", &bad, &file)
            .await
            .expect_err("mismatch");
        assert!(err.to_string().contains("different clusters"), "{err}");
    }

    #[tokio::test]
    async fn no_ca_and_a_plain_token_is_an_error() {
        let dir = tempfile::tempdir().expect("dir");
        let err = cluster_ca(
            "https://127.0.0.1:1",
            "plain-token-123456",
            &dir.path().join("ca.crt"),
        )
        .await
        .expect_err("nothing to pin");
        assert!(err.to_string().contains("cluster.ca_cert"), "{err}");
    }
}
