//! The admin kubeconfig, one text for `cairn-image config init` (the
//! user's laptop) and for `cairn server --write-kubeconfig` (the device):
//! cluster `cairn`, user `cairn-admin`, every certificate inline.

/// An admin kubeconfig with every certificate inline.
pub fn admin_yaml(server: &str, ca: &str, cert: &str, key: &str) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: cairn
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: cairn-admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: cairn
  context:
    cluster: cairn
    user: cairn-admin
current-context: cairn
",
        ca = b64(ca),
        cert = b64(cert),
        key = b64(key),
    )
}
