//! Codec tests: protobuf bodies are built with `prost-reflect` (a
//! dev-dependency) from the descriptors the decoder's schema comes from,
//! so they are what a Go client's encoder writes for the fields set
//! (upstream's marshalers write non-pointer zero values too, which the
//! tests include), and kubectl's own bodies are in `testdata/`.

use super::protobuf::MAGIC;
use super::*;
use crate::api::resources::SchemaFn;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use prost::Message;
use prost_reflect::Value as V;
use prost_reflect::{DescriptorPool, DynamicMessage, MapKey};
use serde_json::json;

fn config_maps() -> ResourceType {
    ResourceType::of::<ConfigMap>()
}

/// The descriptor set `build.rs` compiles, for encoding test bodies.
fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/k8s.fds"))[..])
            .expect("descriptors")
    })
}

fn message(name: &str) -> DynamicMessage {
    let desc = pool()
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("{name}"));
    DynamicMessage::new(desc)
}

fn set(m: &mut DynamicMessage, field: &str, value: V) {
    m.try_set_field_by_name(field, value)
        .unwrap_or_else(|err| panic!("{field}: {err}"));
}

fn time(seconds: i64) -> V {
    let mut t = message("apimachinery.pkg.apis.meta.v1.Time");
    if seconds != 0 {
        set(&mut t, "seconds", V::I64(seconds));
    }
    V::Message(t)
}

fn envelope(api_version: &str, kind: &str, object: &DynamicMessage) -> Vec<u8> {
    let mut type_meta = message("apimachinery.pkg.runtime.TypeMeta");
    set(&mut type_meta, "apiVersion", V::String(api_version.into()));
    set(&mut type_meta, "kind", V::String(kind.into()));
    let mut unknown = message("apimachinery.pkg.runtime.Unknown");
    set(&mut unknown, "typeMeta", V::Message(type_meta));
    set(&mut unknown, "raw", V::Bytes(object.encode_to_vec().into()));
    set(&mut unknown, "contentEncoding", V::String(String::new()));
    set(&mut unknown, "contentType", V::String(String::new()));
    let mut body = MAGIC.to_vec();
    body.extend(unknown.encode_to_vec());
    body
}

/// ObjectMeta as Go writes it: every non-pointer field, zero or not.
fn object_meta(name: &str) -> DynamicMessage {
    let mut meta = message("apimachinery.pkg.apis.meta.v1.ObjectMeta");
    set(&mut meta, "name", V::String(name.into()));
    for field in ["generateName", "namespace", "uid", "resourceVersion"] {
        set(&mut meta, field, V::String(String::new()));
    }
    set(&mut meta, "generation", V::I64(0));
    set(&mut meta, "creationTimestamp", time(0));
    meta
}

fn config_map_body() -> Vec<u8> {
    let mut cm = message("api.core.v1.ConfigMap");
    set(&mut cm, "metadata", V::Message(object_meta("x")));
    let data = [
        (MapKey::String("a".into()), V::String("b".into())),
        (MapKey::String("empty".into()), V::String(String::new())),
    ];
    set(&mut cm, "data", V::Map(data.into_iter().collect()));
    let binary = [(MapKey::String("bin".into()), V::Bytes(vec![0, 255].into()))];
    set(&mut cm, "binaryData", V::Map(binary.into_iter().collect()));
    envelope("v1", "ConfigMap", &cm)
}

#[test]
fn protobuf_config_map_is_its_json() {
    let value = decode(Format::Protobuf, &config_map_body(), &config_maps()).expect("decoded");
    assert_eq!(
        value,
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "x"},
            "data": {"a": "b", "empty": ""},
            "binaryData": {"bin": "AP8="},
        })
    );
}

#[test]
fn protobuf_special_types() {
    let mut container = message("api.core.v1.Container");
    set(&mut container, "name", V::String("c".into()));
    set(&mut container, "image", V::String("nginx".into()));
    let mut quantity = message("apimachinery.pkg.api.resource.Quantity");
    set(&mut quantity, "string", V::String("500m".into()));
    let mut resources = message("api.core.v1.ResourceRequirements");
    let limits = [(MapKey::String("cpu".into()), V::Message(quantity))];
    set(
        &mut resources,
        "limits",
        V::Map(limits.into_iter().collect()),
    );
    set(&mut container, "resources", V::Message(resources));
    let mut port = message("apimachinery.pkg.util.intstr.IntOrString");
    set(&mut port, "type", V::I64(1));
    set(&mut port, "strVal", V::String("http".into()));
    let mut probe_handler = message("api.core.v1.HTTPGetAction");
    set(&mut probe_handler, "port", V::Message(port));
    let mut handler = message("api.core.v1.ProbeHandler");
    set(&mut handler, "httpGet", V::Message(probe_handler));
    let mut probe = message("api.core.v1.Probe");
    set(&mut probe, "handler", V::Message(handler));
    set(&mut container, "livenessProbe", V::Message(probe));
    let mut volume = message("api.core.v1.Volume");
    set(&mut volume, "name", V::String("scratch".into()));
    let mut source = message("api.core.v1.VolumeSource");
    let empty_dir = message("api.core.v1.EmptyDirVolumeSource");
    set(&mut source, "emptyDir", V::Message(empty_dir));
    set(&mut volume, "volumeSource", V::Message(source));
    let mut pod_spec = message("api.core.v1.PodSpec");
    set(
        &mut pod_spec,
        "containers",
        V::List(vec![V::Message(container)]),
    );
    set(&mut pod_spec, "volumes", V::List(vec![V::Message(volume)]));
    let mut template = message("api.core.v1.PodTemplateSpec");
    set(&mut template, "metadata", V::Message(object_meta("")));
    set(&mut template, "spec", V::Message(pod_spec));
    let mut spec = message("api.apps.v1.DeploymentSpec");
    set(&mut spec, "replicas", V::I32(0));
    set(&mut spec, "template", V::Message(template));
    let mut deployment = message("api.apps.v1.Deployment");
    let mut meta = object_meta("d");
    set(&mut meta, "creationTimestamp", time(1_700_000_000));
    set(&mut deployment, "metadata", V::Message(meta));
    set(&mut deployment, "spec", V::Message(spec));
    set(
        &mut deployment,
        "status",
        V::Message(message("api.apps.v1.DeploymentStatus")),
    );
    let value = decode(
        Format::Protobuf,
        &envelope("apps/v1", "Deployment", &deployment),
        &ResourceType::of::<Deployment>(),
    )
    .expect("decoded");
    assert_eq!(
        value["metadata"]["creationTimestamp"],
        "2023-11-14T22:13:20Z"
    );
    assert_eq!(value["spec"]["replicas"], 0);
    let pod = &value["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["resources"]["limits"]["cpu"], "500m");
    // Embedded Go structs are fields in protobuf, flattened in JSON.
    assert_eq!(
        pod["containers"][0]["livenessProbe"],
        json!({"httpGet": {"port": "http"}})
    );
    assert_eq!(
        pod["volumes"][0],
        json!({"name": "scratch", "emptyDir": {}})
    );
    assert_eq!(value["status"], json!({}));
}

#[test]
fn durations_print_as_go_does() {
    assert_eq!(go_duration(0), "0s");
    assert_eq!(go_duration(1_500), "1.5µs");
    assert_eq!(go_duration(2_000_000), "2ms");
    assert_eq!(go_duration(90_000_000_000), "1m30s");
    assert_eq!(go_duration(3_600_500_000_000), "1h0m0.5s");
    assert_eq!(go_duration(-1_000_000_000), "-1s");
}

#[test]
fn yaml_and_content_types() {
    let value = decode(
        Format::Yaml,
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: y\ndata:\n  a: \"1\"\n",
        &config_maps(),
    )
    .expect("yaml");
    assert_eq!(value["data"]["a"], "1");
    assert_eq!(
        Format::from_content_type(Some("application/yaml; charset=utf-8")),
        Ok(Format::Yaml)
    );
    assert_eq!(Format::from_content_type(None), Ok(Format::Json));
    assert_eq!(
        Format::from_content_type(Some(PROTOBUF)),
        Ok(Format::Protobuf)
    );
    let err = Format::from_content_type(Some("text/plain")).expect_err("415");
    assert_eq!(err.code, 415);
}

#[test]
fn bad_bodies_name_the_problem() {
    let cms = config_maps();
    let body = config_map_body();
    let cases: &[(&[u8], &str)] = &[
        (b"", "magic"),
        (b"k8s", "magic"),
        (b"{\"kind\":\"ConfigMap\"}", "magic"),
        (&body[..body.len() - 3], "invalid"),
        (b"k8s\0\x0a\x05\x0a\x02v1", "invalid"),
    ];
    for (bytes, words) in cases {
        let err = decode(Format::Protobuf, bytes, &cms).expect_err("rejected");
        assert_eq!(err.code, 400, "{bytes:?}");
        assert!(err.message.contains(words), "{}", err.message);
    }
    let mut cm = message("api.core.v1.ConfigMap");
    set(&mut cm, "metadata", V::Message(object_meta("x")));
    let err = decode(Format::Protobuf, &envelope("v1", "Nonsense", &cm), &cms).expect_err("kind");
    assert!(err.message.contains("Kind=Nonsense"), "{}", err.message);
    for (format, bytes) in [
        (Format::Json, &b"{\"a\":"[..]),
        (Format::Json, b"[1]"),
        (Format::Yaml, b"a: [1"),
        (Format::Yaml, b"- 1\n- 2\n"),
        (Format::Yaml, b"a: 1\n---\nb: 2\n"),
    ] {
        let err = decode(format, bytes, &cms).expect_err("rejected");
        assert_eq!(err.code, 400, "{format:?} {bytes:?}");
    }
}

/// A small xorshift generator: a fixed seed keeps the test repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Random and mutated bodies of every format: each decodes or fails with
/// a 400, and nothing panics.
#[test]
fn fuzzed_bodies_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let cms = config_maps();
    let seeds: [(Format, Vec<u8>); 3] = [
        (Format::Protobuf, config_map_body()),
        (
            Format::Json,
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"data":{"a":"b"}}"#
                .to_vec(),
        ),
        (
            Format::Yaml,
            b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, labels: &l {a: b}}\ndata: *l\n"
                .to_vec(),
        ),
    ];
    for (format, seed) in &seeds {
        for case in 0..1500 {
            let mut bytes = seed.clone();
            match case % 4 {
                0 => {
                    let len = rng.below(64);
                    bytes = (0..len).map(|_| rng.next() as u8).collect();
                    if *format == Format::Protobuf && case % 8 == 0 {
                        bytes.splice(0..0, MAGIC.iter().copied());
                    }
                }
                1 => bytes.truncate(rng.below(seed.len())),
                _ => {
                    for _ in 0..=rng.below(4) {
                        let at = rng.below(bytes.len());
                        bytes[at] = rng.next() as u8;
                    }
                }
            }
            if let Err(err) = decode(*format, &bytes, &cms) {
                assert_eq!(err.code, 400, "{format:?} {bytes:?}: {err}");
                assert!(!err.message.is_empty());
            }
        }
    }
}

/// Bodies kubectl 1.32 sent (captured with `kubectl -v=9`) decode to what
/// its `--dry-run=client -o json` prints.
#[test]
fn kubectl_bodies_decode() {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
    use k8s_openapi::api::batch::v1::{CronJob, Job};
    use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
    let decode_file = |bytes: &[u8], rt: ResourceType| {
        decode(Format::Protobuf, bytes, &rt).unwrap_or_else(|err| panic!("{}: {err}", rt.kind))
    };
    let cm = decode_file(include_bytes!("testdata/configmap.pb"), config_maps());
    assert_eq!(cm["data"], json!({"a": "b", "e": ""}));
    assert_eq!(cm["metadata"], json!({"name": "c"}));
    let secret = decode_file(
        include_bytes!("testdata/secret.pb"),
        ResourceType::of::<Secret>(),
    );
    assert_eq!(secret["data"], json!({"a": "Yg=="}));
    let ns = decode_file(
        include_bytes!("testdata/namespace.pb"),
        ResourceType::of::<Namespace>(),
    );
    assert_eq!(ns["metadata"], json!({"name": "n2"}));
    let deployment = decode_file(
        include_bytes!("testdata/deployment.pb"),
        ResourceType::of::<Deployment>(),
    );
    assert_eq!(deployment["spec"]["replicas"], 0);
    assert_eq!(
        deployment["spec"]["selector"],
        json!({"matchLabels": {"app": "d"}})
    );
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "nginx");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    let service = decode_file(
        include_bytes!("testdata/service.pb"),
        ResourceType::of::<Service>(),
    );
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert_eq!(service["spec"]["ports"][0]["port"], 80);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], 8080);
    let job = decode_file(include_bytes!("testdata/job.pb"), ResourceType::of::<Job>());
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["command"], json!(["echo", "hi"]));
    assert_eq!(pod["restartPolicy"], "Never");
    let cron = decode_file(
        include_bytes!("testdata/cronjob.pb"),
        ResourceType::of::<CronJob>(),
    );
    assert_eq!(cron["spec"]["schedule"], "*/1 * * * *");
    // Not listable kinds: only their schemas matter here.
    let mut token_requests = config_maps();
    token_requests.schema = SchemaFn(|g| g.subschema_for::<TokenRequest>());
    let token = decode_file(include_bytes!("testdata/token.pb"), token_requests);
    assert_eq!(token["kind"], "TokenRequest");
    let mut reviews = config_maps();
    reviews.schema = SchemaFn(|g| g.subschema_for::<SelfSubjectAccessReview>());
    let review = decode_file(include_bytes!("testdata/can-i.pb"), reviews);
    assert_eq!(
        review["spec"]["resourceAttributes"]["resource"],
        "configmaps"
    );
    // Go writes its non-pointer zero values; they stay (see the module doc).
    assert_eq!(service["spec"]["ports"][0]["nodePort"], 0);
}

/// Fields the schema does not know (a newer client's) are skipped; groups
/// (wire types 3 and 4) are refused.
#[test]
fn unknown_fields_are_skipped() {
    let mut cm = message("api.core.v1.ConfigMap");
    set(&mut cm, "metadata", V::Message(object_meta("x")));
    let mut raw = cm.encode_to_vec();
    // Field 99, length-delimited, one byte; then field 98 as a varint.
    raw.extend([0x9a, 0x06, 0x01, b'A', 0x90, 0x06, 0x2a]);
    let mut type_meta = message("apimachinery.pkg.runtime.TypeMeta");
    set(&mut type_meta, "apiVersion", V::String("v1".into()));
    set(&mut type_meta, "kind", V::String("ConfigMap".into()));
    let mut unknown = message("apimachinery.pkg.runtime.Unknown");
    set(&mut unknown, "typeMeta", V::Message(type_meta));
    set(&mut unknown, "raw", V::Bytes(raw.clone().into()));
    let mut body = MAGIC.to_vec();
    body.extend(unknown.encode_to_vec());
    let value = decode(Format::Protobuf, &body, &config_maps()).expect("decoded");
    assert_eq!(value["metadata"], json!({"name": "x"}));
    raw.extend([0x9b, 0x06]);
    set(&mut unknown, "raw", V::Bytes(raw.into()));
    let mut body = MAGIC.to_vec();
    body.extend(unknown.encode_to_vec());
    let err = decode(Format::Protobuf, &body, &config_maps()).expect_err("group");
    assert!(err.message.contains("wire type 3"), "{}", err.message);
}
