//! The Kubernetes API server: HTTPS on 6443, discovery, and generic
//! resource handlers over the [`crate::store`].
//!
//! # Layout
//! - `server`: TLS listener (rustls, client certificates), hyper connections.
//! - `pki`: the cluster CA, serving and admin certificates, admin kubeconfig;
//!   `x509`: the certificate fields read (subjects).
//! - `auth`: who a request comes from (client certificate or bearer token).
//! - this module: [`run`], and the router that maps a path to discovery or
//!   to a [`resources::ResourceType`] and hands it to `handlers`.
//! - `resources`: the registry of served kinds, from k8s-openapi metadata.
//! - `crd`: CustomResourceDefinitions; the served registry is a snapshot
//!   (built-in kinds + every stored CRD's) each request takes once.
//! - `discovery`: `/version`, `/api`, `/apis` and `APIResourceList`s.
//!   This module also serves K3s' unauthenticated `/cacerts` (the cluster
//!   CA, which agents pin with the hash in their join token).
//! - `handlers`: create/get/update/delete/list/watch for any registered kind.
//! - `strategy`: per-kind defaults, validation and allocation on writes.
//! - `subresources`: `scale`, pod `binding` and `eviction` (`status` goes
//!   through the generic handlers); `eviction`: evictions honouring
//!   PodDisruptionBudgets; `proxy`: pod `log`, `exec`, `attach`
//!   and `portforward`, proxied to the node agent.
//! - `query`: query parameters, resourceVersion rules; `selector`: label
//!   and field selectors. `status`: `Status` errors.
//! - `table`: `meta.k8s.io/v1` Table output for `kubectl get`.
//! - `patch`: JSON, merge and strategic merge patches; `apply`:
//!   server-side apply. Both merge lists by the merge-key table in `lists`
//!   (also written into the OpenAPI schemas), read through `shape`;
//!   `fieldset`: `FieldsV1` paths for `managed` and `apply`.
//! - `codec`: request bodies in JSON, YAML and Kubernetes protobuf.
//! - `options`: dryRun, fieldManager and DeleteOptions; `delete`: deletes,
//!   finalizers and deletecollection; `graceful`: the grace period of pod
//!   deletes; `namespaces`: namespace termination; `managed`:
//!   `metadata.managedFields`.
//! - `openapi`: `/openapi/v3` documents; `openapi_v2`: `/openapi/v2`
//!   (JSON and gnostic protobuf) converted from them; `validation`:
//!   `fieldValidation`.
//!
//! # Current limitations
//! See `handlers`, `strategy`, `subresources`, `table`, `patch`, `openapi`,
//! `validation`, `codec`, `delete`, `namespaces` and `managed`. Also: no
//! protobuf responses (but `/openapi/v2`'s), and no authorization: every
//! authenticated user may do everything; the `kubernetes` Service has no
//! Endpoints yet.

pub mod apply;
pub mod auth;
pub mod codec;
pub mod crd;
pub mod delete;
pub mod discovery;
pub mod eviction;
pub mod fieldset;
pub mod graceful;
pub mod handlers;
pub mod lists;
pub mod managed;
pub mod namespaces;
pub mod openapi;
pub mod openapi_v2;
pub mod options;
pub mod patch;
pub mod pki;
pub mod proxy;
pub mod query;
pub mod resources;
pub mod reviews;
pub mod selector;
pub mod server;
pub mod shape;
pub mod status;
pub mod strategy;
pub mod subresources;
pub mod table;
pub mod token_request;
pub mod tokens;
pub mod validation;
pub mod watch;
pub mod x509;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde_json::json;
use tracing::{Instrument, info, info_span};

use crate::store::{Endpoint, Store, StoreError};
pub use auth::User;
use handlers::Target;
use query::Query;
use resources::{Registry, Subresource};
use status::ApiError;

/// Response bodies: whole JSON documents or a watch stream.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory could not be created.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The datastore failed.
    #[error("datastore: {0}")]
    Store(#[from] StoreError),
    /// The PKI could not be loaded or created.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] server::TlsError),
    /// The token file is unusable.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// The service account signing key is unusable.
    #[error(transparent)]
    TokenKey(#[from] tokens::TokenKeyError),
    /// The listen address could not be bound.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// `cairn server` settings.
#[derive(Clone)]
pub struct Config {
    /// State directory: datastore, `pki/`, `admin.kubeconfig`, `tokens.csv`.
    pub data_dir: PathBuf,
    /// HTTPS listen address.
    pub listen: SocketAddr,
    /// The datastore: embedded SQLite in the data dir or PostgreSQL.
    pub datastore: Endpoint,
    /// Extra names for the serving certificate.
    pub tls_sans: Vec<String>,
    /// Also write the admin kubeconfig here, with this mode.
    pub write_kubeconfig: Option<(PathBuf, u32)>,
    /// The server token (`--token`): bearer token of user `node`.
    pub token: Option<String>,
    /// How often history is compacted, and how many revisions are kept.
    pub compaction: Compaction,
    /// Run the controller manager and scheduler (`--disable-controllers`: no).
    pub controllers: bool,
    /// Run the node agent in this process, with these settings
    /// (`--disable-agent`: none).
    pub agent: Option<crate::agent::Config>,
    /// The controller manager's settings (node monitor grace periods).
    pub controller_settings: crate::controllers::Settings,
    /// Default tolerations of not-ready and unreachable nodes for pods.
    pub default_tolerations: strategy::DefaultTolerations,
    /// `--service-cidr`: where ClusterIPs come from.
    pub service_network: strategy::ServiceNetwork,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token and the datastore password stay out of logs.
        f.debug_struct("Config")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("datastore", &self.datastore)
            .field("tls_sans", &self.tls_sans)
            .field("write_kubeconfig", &self.write_kubeconfig)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("compaction", &self.compaction)
            .field("controllers", &self.controllers)
            .field("agent", &self.agent.as_ref().map(|a| &a.node_name))
            .field("controller_settings", &self.controller_settings)
            .field("default_tolerations", &self.default_tolerations)
            .field("service_network", &self.service_network)
            .finish()
    }
}

impl Config {
    /// Defaults for a server with state in `data_dir`: SQLite, port 6443
    /// on every address, kine's compaction (every 5 minutes, keeping the
    /// last 1000 revisions).
    pub fn new(data_dir: PathBuf) -> Config {
        Config {
            data_dir,
            listen: SocketAddr::from(([0, 0, 0, 0], 6443)),
            datastore: Endpoint::Sqlite,
            tls_sans: Vec::new(),
            write_kubeconfig: None,
            token: None,
            compaction: Compaction::default(),
            controllers: true,
            agent: None,
            controller_settings: crate::controllers::Settings::default(),
            default_tolerations: strategy::DefaultTolerations::default(),
            service_network: strategy::ServiceNetwork::default(),
        }
    }
}

/// Periodic compaction of the datastore's history (kine's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    /// Time between compactions; zero disables them.
    pub interval: Duration,
    /// Revisions kept below the current one; watches and lists at older
    /// revisions get 410 `Expired`.
    pub retain: i64,
}

impl Default for Compaction {
    fn default() -> Self {
        Compaction {
            interval: Duration::from_secs(300),
            retain: 1000,
        }
    }
}

/// Shared state of every request.
#[derive(Debug)]
pub struct Api {
    store: Store,
    auth: auth::Authenticator,
    /// The served kinds and their OpenAPI documents, built-in and custom.
    dynamic: Arc<crd::Dynamic>,
    /// The built-in kinds' documents (what `validation` checks bodies against).
    openapi: openapi::Documents,
    services: strategy::ServiceNetwork,
    /// TLS towards node agents (logs, exec...): set once the PKI is loaded.
    agent_tls: std::sync::OnceLock<Arc<rustls::ClientConfig>>,
    /// The DefaultTolerationSeconds admission plugin's settings.
    default_tolerations: strategy::DefaultTolerations,
    /// The cluster CA certificate (PEM), served at `/cacerts`.
    ca_pem: std::sync::OnceLock<String>,
}

/// Builds a JSON response.
pub fn json_response(code: u16, value: &impl serde::Serialize) -> Response<Body> {
    // Serializing k8s-openapi structs and serde_json values cannot fail.
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)).boxed_unsync());
    *response.status_mut() =
        hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(err: &ApiError) -> Response<Body> {
    let mut response = json_response(err.code, &err.to_status());
    if let Some(seconds) = err.retry_after() {
        response
            .headers_mut()
            .insert(hyper::header::RETRY_AFTER, seconds.into());
    }
    response
}

fn text_response(text: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(text.into()).boxed_unsync());
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl Api {
    /// The API over `store`, with the built-in resources, accepting the
    /// bearer tokens of `auth` besides client certificates.
    pub fn new(store: Store, auth: auth::Authenticator) -> Api {
        let registry = Registry::builtin();
        let openapi = openapi::Documents::build(&registry);
        Api {
            store,
            auth,
            dynamic: Arc::new(crd::Dynamic::new(registry, openapi.clone())),
            openapi,
            services: strategy::ServiceNetwork::default(),
            agent_tls: std::sync::OnceLock::new(),
            default_tolerations: strategy::DefaultTolerations::default(),
            ca_pem: std::sync::OnceLock::new(),
        }
    }

    /// This API with pods tolerating not-ready and unreachable nodes for
    /// `tolerations` by default, instead of 300 s.
    pub fn with_default_tolerations(mut self, tolerations: strategy::DefaultTolerations) -> Api {
        self.default_tolerations = tolerations;
        self
    }

    /// This API with ClusterIPs from `network` instead of 10.43.0.0/16.
    pub fn with_service_network(mut self, network: strategy::ServiceNetwork) -> Api {
        self.services = network;
        self
    }

    /// The registry and documents served now (built-in and CRD kinds);
    /// take it once per request.
    pub fn snapshot(&self) -> Arc<crd::Snapshot> {
        self.dynamic.snapshot()
    }

    /// Serves the CRDs in the store at once, then follows the store so
    /// CRDs written through any server are served (runs until the store's
    /// watch ends; spawn it).
    pub async fn serve_crds(&self) -> Result<(), StoreError> {
        self.dynamic.reload(&self.store).await?;
        tokio::spawn(self.dynamic.clone().follow(self.store.clone()));
        Ok(())
    }

    /// Reloads the served kinds after this server wrote a CRD, so its
    /// kinds are served when the write returns.
    pub(crate) async fn crds_changed(&self) {
        if let Err(err) = self.dynamic.reload(&self.store).await {
            tracing::warn!(%err, "reloading CRDs after a write failed");
        }
    }

    /// Creates the `default` namespace and the `kubernetes` Service (the
    /// first address of the service CIDR, port 443 to the API server's
    /// `port`) if they do not exist.
    pub async fn bootstrap(&self, port: u16) -> Result<(), StoreError> {
        self.bootstrap_namespace().await?;
        self.bootstrap_kubernetes_service(port).await
    }

    async fn bootstrap_kubernetes_service(&self, port: u16) -> Result<(), StoreError> {
        let snapshot = self.snapshot();
        let rt = snapshot
            .registry
            .find("", "v1", "services")
            .expect("services are built in");
        let key = rt.key(Some("default"), "kubernetes");
        if self.store.get(&key).await?.is_some() {
            return Ok(());
        }
        let mut svc = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "kubernetes",
                "namespace": "default",
                "uid": uuid::Uuid::new_v4().to_string(),
                "creationTimestamp": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                "labels": {"component": "apiserver", "provider": "kubernetes"},
            },
            "spec": {
                "type": "ClusterIP",
                "clusterIP": self.services.kubernetes_ip().to_string(),
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
            },
        });
        if let Err(err) = strategy::before_create(self, rt, &mut svc).await {
            tracing::warn!(%err, "the kubernetes Service could not be prepared");
            return Ok(());
        }
        let created = self
            .store
            .create(&key, serde_json::to_vec(&svc).unwrap_or_default())
            .await;
        strategy::after_write(self, rt, None, &svc, created.is_ok()).await;
        match created {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
            Err(err) => Err(err),
        }
    }

    async fn bootstrap_namespace(&self) -> Result<(), StoreError> {
        let snapshot = self.snapshot();
        let namespaces = snapshot
            .registry
            .find("", "v1", "namespaces")
            .expect("namespaces are built in");
        let key = namespaces.key(None, "default");
        if self.store.get(&key).await?.is_some() {
            return Ok(());
        }
        let ns = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": "default",
                "uid": uuid::Uuid::new_v4().to_string(),
                "creationTimestamp": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        match self
            .store
            .create(&key, serde_json::to_vec(&ns).unwrap_or_default())
            .await
        {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Serves one request on a connection whose client certificate named
    /// `certificate` (`None`: no certificate).
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        certificate: Option<&User>,
    ) -> Response<Body> {
        let span = info_span!("request", method = %req.method(), path = %req.uri().path());
        async move {
            // K3s' `/cacerts`: the cluster CA for anyone, so that an agent
            // holding a `K10<hash>` join token can fetch it and pin it.
            if req.method() == Method::GET
                && req.uri().path() == "/cacerts"
                && let Some(ca) = self.ca_pem.get()
            {
                return text_response(ca.clone());
            }
            let Some(user) = self.auth.authenticate(certificate, req.headers()) else {
                return error_response(&ApiError::unauthorized());
            };
            if let Some(binding) = &user.bound
                && !self.bound_objects_exist(binding).await
            {
                tracing::warn!(user = %user.name, "service account token names deleted objects");
                return error_response(&ApiError::unauthorized());
            }
            tracing::debug!(user = %user.name, "authenticated");
            // The user travels with the request: authorization (RBAC) and
            // handlers that record who acted read it from the extensions.
            req.extensions_mut().insert(user);
            let response = match self.route(req).await {
                Ok(response) => response,
                Err(err) => error_response(&err),
            };
            tracing::debug!(status = response.status().as_u16(), "done");
            response
        }
        .instrument(span)
        .await
    }

    /// Whether the service account (and pod or secret) a token names still
    /// exist with the uids it carries: a token dies with its objects.
    async fn bound_objects_exist(&self, binding: &tokens::Binding) -> bool {
        let snapshot = self.snapshot();
        let exists = async |plural: &str, r: &tokens::Ref| {
            let Some(rt) = snapshot.registry.find("", "v1", plural) else {
                return false;
            };
            match self
                .store
                .get(&rt.key(Some(&binding.namespace), &r.name))
                .await
            {
                Ok(Some(kv)) => serde_json::from_slice::<serde_json::Value>(&kv.value)
                    .is_ok_and(|o| o["metadata"]["uid"] == r.uid.as_str()),
                _ => false,
            }
        };
        exists("serviceaccounts", &binding.serviceaccount).await
            && match &binding.pod {
                Some(pod) => exists("pods", pod).await,
                None => true,
            }
            && match &binding.secret {
                Some(secret) => exists("secrets", secret).await,
                None => true,
            }
    }

    /// `/livez`, `/readyz`, `/healthz` as upstream answers them: `ok`, or
    /// with `?verbose` one `[+]name ok` line per check. Liveness is the
    /// process answering; readiness and health also need the datastore
    /// (upstream's `etcd` check), so a server that lost its PostgreSQL
    /// reports not ready (500) while it keeps trying to reconnect.
    async fn health(&self, check: &str, query: &Query) -> Response<Body> {
        let mut checks = vec![("ping", Ok(()))];
        if check != "livez" {
            let store = self.store.current_revision().await.map(|_| ());
            checks.push(("etcd", store));
        }
        let passed = checks.iter().all(|(_, r)| r.is_ok());
        let verbose = query.get("verbose").is_some();
        let mut text = String::new();
        for (name, result) in &checks {
            match result {
                Ok(()) if verbose => text.push_str(&format!("[+]{name} ok\n")),
                Ok(()) => {}
                Err(err) => {
                    tracing::warn!(check = name, %err, "health check failed");
                    text.push_str(&format!("[-]{name} failed: reason withheld\n"));
                }
            }
        }
        let mut response = match (passed, verbose) {
            (true, false) => text_response("ok"),
            (true, true) => text_response(format!("{text}{check} check passed\n")),
            (false, _) => text_response(format!("{text}{check} check failed\n")),
        };
        if !passed {
            *response.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        }
        response
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().trim_end_matches('/').to_owned();
        let query = Query::parse(parts.uri.query());
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let is_get = parts.method == Method::GET;
        let snapshot = self.snapshot();
        let registry = &snapshot.registry;
        match segments.as_slice() {
            ["version"] if is_get => return Ok(json_response(200, &discovery::version())),
            [check @ ("healthz" | "livez" | "readyz"), ..] if is_get => {
                return Ok(self.health(check, &query).await);
            }
            ["api"] if is_get => {
                return Ok(discovery::serve_root(registry, true, &parts.headers));
            }
            ["apis"] if is_get => {
                return Ok(discovery::serve_root(registry, false, &parts.headers));
            }
            ["openapi", "v2"] if is_get => {
                // Built on request (see `openapi_v2`): CPU work, off the workers.
                let (snapshot, headers) = (snapshot.clone(), parts.headers.clone());
                return tokio::task::spawn_blocking(move || {
                    openapi_v2::serve(&snapshot.openapi, &headers)
                })
                .await
                .unwrap_or_else(|err| Err(ApiError::internal(format!("openapi v2: {err}"))));
            }
            ["openapi", rest @ ..] if is_get => {
                return snapshot.openapi.serve(rest, &query, &parts.headers);
            }
            ["api", version] if is_get => return resource_list(registry, "", version),
            ["apis", group, version] if is_get => return resource_list(registry, group, version),
            _ => {}
        }
        let (group, version, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] if !rest.is_empty() => ("", *version, rest),
            ["apis", group, version, rest @ ..] if !rest.is_empty() => (*group, *version, rest),
            _ => return Err(ApiError::no_route(&path)),
        };
        let target =
            target(registry, group, version, rest).ok_or_else(|| ApiError::no_route(&path))?;
        if let Some(sub) = target.subresource.filter(|s| proxy::proxied(*s)) {
            return proxy::serve(self, &target, sub, &query, parts).await;
        }
        if target.rt.is_review() {
            let user = parts.extensions.get::<User>();
            return reviews::create(self, &parts.method, target.rt, user, &parts.headers, body)
                .await;
        }
        if parts.method == Method::PATCH && target.rt.custom.is_some() {
            crd::refuse_strategic_patch(&parts.headers)?;
        }
        handlers::handle(self, &parts.method, target, &query, &parts.headers, body).await
    }
}

/// The resource, namespace, name and subresource a path addresses
/// (`rest`: the segments after the group-version).
fn target<'a>(
    registry: &'a Registry,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Option<Target<'a>> {
    let find = |plural: &str| registry.find(group, version, plural);
    let make = |rt, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        let subresource = match sub {
            Some(sub) => Some(Subresource::from_name(sub)?),
            None => None,
        };
        Some(Target {
            rt,
            namespace: namespace.map(str::to_owned),
            name: name.map(str::to_owned),
            subresource,
        })
    };
    let namespaced = |plural| find(plural).filter(|rt| rt.namespaced);
    let cluster = |plural| find(plural).filter(|rt| !rt.namespaced);
    let sub_served = |t: Target<'a>| t.subresource.is_none_or(|sub| t.rt.has(sub)).then_some(t);
    let target = match rest {
        [plural] => make(find(plural)?, None, None, None),
        ["namespaces", ns, plural] if namespaced(plural).is_some() => {
            make(namespaced(plural)?, Some(ns), None, None)
        }
        ["namespaces", ns, plural, name] if namespaced(plural).is_some() => {
            make(namespaced(plural)?, Some(ns), Some(name), None)
        }
        ["namespaces", ns, plural, name, sub] => {
            make(namespaced(plural)?, Some(ns), Some(name), Some(sub))
        }
        [plural, name] => make(cluster(plural)?, None, Some(name), None),
        [plural, name, sub] => make(cluster(plural)?, None, Some(name), Some(sub)),
        _ => None,
    };
    target.and_then(sub_served)
}

fn resource_list(
    registry: &Registry,
    group: &str,
    version: &str,
) -> Result<Response<Body>, ApiError> {
    discovery::api_resource_list(registry, group, version)
        .map(|list| json_response(200, &list))
        .ok_or_else(|| ApiError::no_route(&format!("/apis/{group}/{version}")))
}

/// Runs `cairn server` until `shutdown` completes: opens the datastore,
/// creates the PKI and the `default` namespace on first start, writes the
/// admin kubeconfig, and serves HTTPS.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| ServerError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let signer = tokens::Signer::load_or_create(&data_dir.join("pki/service-account.key"))?;
    let auth = auth::Authenticator::load(&data_dir.join("tokens.csv"), config.token.as_deref())?
        .with_signer(signer);
    let store = match &config.datastore {
        Endpoint::Sqlite => Store::open_sqlite(data_dir.join("state.db")).await?,
        Endpoint::Postgres(url) => Store::open_postgres(url).await?,
    };
    let compactor = (!config.compaction.interval.is_zero())
        .then(|| store.spawn_compactor(config.compaction.interval, config.compaction.retain));
    let api = Arc::new(
        Api::new(store.clone(), auth)
            .with_default_tolerations(config.default_tolerations)
            .with_service_network(config.service_network),
    );
    let port = match config.listen.port() {
        0 => 6443,
        port => port,
    };
    api.bootstrap(port).await?;
    api.serve_crds().await?;
    namespaces::resume_terminating_namespaces(&api).await;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
    let settings = pki::Settings {
        server_url: server_url(local),
        tls_sans: config.tls_sans.clone(),
    };
    let pki = pki::ensure(&data_dir, &settings)?;
    if let Some((path, mode)) = &config.write_kubeconfig {
        pki::write_kubeconfig(&pki, path, *mode)?;
    }
    let tls = server::tls_config(&pki)?;
    let agent_tls = proxy::agent_tls(&pki.kubelet_client_cert, &pki.kubelet_client_key)
        .map_err(server::TlsError::Config)?;
    let _ = api.agent_tls.set(Arc::new(agent_tls));
    let _ = api.ca_pem.set(pki.ca_cert.clone());
    info!(
        addr = %local,
        kubeconfig = %pki.kubeconfig.display(),
        names = ?pki.server_names,
        "serving the Kubernetes API"
    );
    let controllers = config.controllers.then(|| {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        (
            stop,
            tokio::spawn(crate::controllers::run(
                api.clone(),
                config.controller_settings,
                stopped,
            )),
        )
    });
    let agent = config.agent.clone().map(|agent| {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let user = crate::agent::node_user(&agent.node_name);
        let client =
            crate::controllers::client::Client::with_user(api.clone(), user, crate::agent::MANAGER);
        let task = tokio::spawn(crate::agent::run(agent, client, async move {
            let _ = stopped.await;
        }));
        (stop, task)
    });
    server::serve(listener, tls, api, shutdown).await;
    for (stop, task) in agent.into_iter().chain(controllers) {
        let _ = stop.send(());
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    if let Some(compactor) = compactor {
        compactor.abort();
    }
    // SQLite keeps node heartbeats in memory for a while: write them now.
    store.close().await?;
    Ok(())
}

/// The URL local clients reach the server at: the bound address, or
/// loopback when bound to every address.
fn server_url(local: SocketAddr) -> String {
    let ip = match local.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("https://{}", SocketAddr::new(ip, local.port()))
}
