//! Image pulls per `imagePullPolicy` (`Always`, `IfNotPresent`, `Never`;
//! unset: `Always` for `:latest` or no tag, else `IfNotPresent`, as
//! upstream defaults it), with the credentials of the pod's
//! `imagePullSecrets` (`kubernetes.io/dockerconfigjson` or `dockercfg`)
//! for the image's registry, tried in order until one pulls.

use base64::Engine;
use serde_json::Value;

use super::env::Sources;
use crate::agent::cri::{Cri, api};

/// Why an image is not there.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PullError {
    /// The pull failed (`ErrImagePull`), with the registry's message.
    #[error("{0}")]
    Failed(String),
    /// Absent under `imagePullPolicy: Never` (`ErrImageNeverPull`).
    #[error("Container image \"{0}\" is not present with pull policy of Never")]
    NeverPull(String),
}

/// The effective pull policy of `container`.
pub fn policy(container: &Value) -> &'static str {
    match container["imagePullPolicy"].as_str() {
        Some("Always") => "Always",
        Some("Never") => "Never",
        Some("IfNotPresent") => "IfNotPresent",
        _ => {
            let image = container["image"].as_str().unwrap_or("");
            if image.contains('@') {
                return "IfNotPresent";
            }
            let last = image.rsplit('/').next().unwrap_or(image);
            match last.split_once(':') {
                Some((_, "latest")) | None => "Always",
                Some(_) => "IfNotPresent",
            }
        }
    }
}

/// The registry host of an image reference (`docker.io` for Docker
/// Hub's short names).
pub fn registry(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

/// Whether the image is present.
pub async fn present(cri: &Cri, image: &str) -> Result<bool, String> {
    let mut cri = cri.clone();
    let status = cri
        .images
        .image_status(api::ImageStatusRequest {
            image: Some(api::ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .map_err(|s| s.message().to_owned())?;
    Ok(status.into_inner().image.is_some())
}

/// Credentials for `image` from the pod's pull secrets, in order.
pub async fn credentials(
    pod: &Value,
    image: &str,
    sources: &mut Sources<'_>,
) -> Vec<api::AuthConfig> {
    let host = registry(image);
    let mut out = Vec::new();
    for secret in pod["spec"]["imagePullSecrets"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(name) = secret["name"].as_str() else {
            continue;
        };
        let Some(obj) = sources.object("secrets", name).await else {
            continue;
        };
        let decode = |key: &str| -> Option<Value> {
            let b = obj["data"][key].as_str()?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(b).ok()?;
            serde_json::from_slice(&bytes).ok()
        };
        let auths = match decode(".dockerconfigjson") {
            Some(config) => config["auths"].clone(),
            None => decode(".dockercfg").unwrap_or(Value::Null),
        };
        for (server, entry) in auths.as_object().into_iter().flatten() {
            if matches_registry(server, host) {
                out.push(auth_of(server, entry));
            }
        }
    }
    out
}

fn matches_registry(server: &str, host: &str) -> bool {
    let server = server
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let server = server.split('/').next().unwrap_or(server);
    server == host
        || (host == "docker.io" && matches!(server, "index.docker.io" | "registry-1.docker.io"))
}

fn auth_of(server: &str, entry: &Value) -> api::AuthConfig {
    let text = |k: &str| entry[k].as_str().unwrap_or("").to_owned();
    let (mut username, mut password) = (text("username"), text("password"));
    let auth = text("auth");
    if username.is_empty()
        && let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&auth)
        && let Some((u, p)) = String::from_utf8_lossy(&bytes).split_once(':')
    {
        username = u.to_owned();
        password = p.to_owned();
    }
    api::AuthConfig {
        username,
        password,
        auth,
        server_address: server.to_owned(),
        identity_token: text("identitytoken"),
        registry_token: text("registrytoken"),
    }
}

/// Pulls `image` with each of `auths` in turn (anonymously without any);
/// the image reference pulled.
pub async fn pull(
    cri: &Cri,
    image: &str,
    auths: Vec<api::AuthConfig>,
) -> Result<String, PullError> {
    let mut cri = cri.clone();
    let attempts: Vec<Option<api::AuthConfig>> = if auths.is_empty() {
        vec![None]
    } else {
        auths.into_iter().map(Some).collect()
    };
    let mut last = String::new();
    for auth in attempts {
        match cri
            .images
            .pull_image(api::PullImageRequest {
                image: Some(api::ImageSpec {
                    image: image.to_owned(),
                    ..Default::default()
                }),
                auth,
                sandbox_config: None,
            })
            .await
        {
            Ok(r) => return Ok(r.into_inner().image_ref),
            Err(status) => last = status.message().to_owned(),
        }
    }
    Err(PullError::Failed(last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn default_policy_and_registry() {
        assert_eq!(policy(&json!({"image": "busybox"})), "Always");
        assert_eq!(policy(&json!({"image": "busybox:latest"})), "Always");
        assert_eq!(
            policy(&json!({"image": "localhost:5000/x/busybox"})),
            "Always"
        );
        assert_eq!(
            policy(&json!({"image": "localhost:5000/busybox:1"})),
            "IfNotPresent"
        );
        assert_eq!(policy(&json!({"image": "b@sha256:00"})), "IfNotPresent");
        assert_eq!(
            policy(&json!({"image": "b", "imagePullPolicy": "Never"})),
            "Never"
        );
        assert_eq!(registry("busybox"), "docker.io");
        assert_eq!(registry("library/busybox"), "docker.io");
        assert_eq!(registry("127.0.0.1:5000/b:1"), "127.0.0.1:5000");
        assert_eq!(registry("localhost/test/b:1"), "localhost");
        assert!(matches_registry("https://index.docker.io/v1/", "docker.io"));
        assert!(matches_registry("127.0.0.1:5000", "127.0.0.1:5000"));
        let a = auth_of("r", &json!({"auth": "dTpw"}));
        assert_eq!((a.username.as_str(), a.password.as_str()), ("u", "p"));
    }
}
