//! Builds the protobuf descriptor set of the Kubernetes 1.32 API types, for
//! `api::codec` to decode `application/vnd.kubernetes.protobuf` bodies.
//!
//! The `.proto` files are upstream's `generated.proto` files as the
//! `k8s-rs-pb` crate ships them (a build dependency with no feature
//! enabled, so none of its code is compiled); `protox` (a protobuf
//! compiler in Rust) turns them into descriptors, written twice:
//! - `$OUT_DIR/k8s.schema`: what the decoder reads, one line per message
//!   (`M <full name> [map]`) and per field (`F <number> <name> <type>
//!   <o|r> [<message type>]`, the type as `FieldDescriptorProto.Type`'s
//!   number, a message type as the index of its `M` line). A table this small keeps a protobuf reflection library out
//!   of the binary.
//! - `$OUT_DIR/k8s.fds`: the `FileDescriptorSet`, for the tests to encode
//!   bodies with (stripped of options and JSON names: the proto field
//!   names are already the JSON names).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The API groups whose types are decoded, relative to the crate's
/// `src/v1_32` (the metrics and test groups are not served).
const ROOTS: &[&str] = &[
    "api",
    "apimachinery/pkg",
    "apiextensions_apiserver",
    "kube_aggregator",
];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let protos = proto_dir();
    let mut files = Vec::new();
    for root in ROOTS {
        collect(&protos.join(root), &mut files);
    }
    // Only the stable versions are served; alpha and beta types would cost
    // binary size for nothing.
    files.retain(|f| {
        let f = f.to_string_lossy();
        !f.contains("testapigroup") && !f.contains("alpha") && !f.contains("beta")
    });
    files.sort();
    let mut compiler = protox::Compiler::new([&protos]).expect("protox include path");
    compiler.include_source_info(false).include_imports(true);
    compiler
        .open_files(&files)
        .unwrap_or_else(|err| panic!("compiling the Kubernetes protos: {err:?}"));
    let mut set = compiler.file_descriptor_set();
    for file in &mut set.file {
        file.options = None;
        for message in &mut file.message_type {
            strip(message);
        }
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out.join("k8s.fds"), prost::Message::encode_to_vec(&set))
        .expect("write k8s.fds");
    // Messages are numbered in the order they are written; fields name
    // their message type by that number.
    let mut names = Vec::new();
    for file in &set.file {
        for message in &file.message_type {
            message_names(&mut names, file.package(), message);
        }
    }
    let index: HashMap<String, usize> =
        names.into_iter().enumerate().map(|(i, n)| (n, i)).collect();
    let mut schema = String::new();
    for file in &set.file {
        let package = file.package();
        for message in &file.message_type {
            write_schema(&mut schema, &index, package, message);
        }
    }
    std::fs::write(out.join("k8s.schema"), schema).expect("write k8s.schema");
}

fn message_names(out: &mut Vec<String>, scope: &str, message: &prost_types::DescriptorProto) {
    let name = format!("{scope}.{}", message.name());
    out.push(name.clone());
    for nested in &message.nested_type {
        message_names(out, &name, nested);
    }
}

fn write_schema(
    out: &mut String,
    index: &HashMap<String, usize>,
    scope: &str,
    message: &prost_types::DescriptorProto,
) {
    use std::fmt::Write;
    let name = format!("{scope}.{}", message.name());
    let map = message.options.as_ref().is_some_and(|o| o.map_entry());
    let _ = writeln!(out, "M {name}{}", if map { " map" } else { "" });
    for field in &message.field {
        let label = if field.label() == prost_types::field_descriptor_proto::Label::Repeated {
            "r"
        } else {
            "o"
        };
        let _ = write!(
            out,
            "F {} {} {} {label}",
            field.number(),
            field.name(),
            field.r#type.unwrap_or_default()
        );
        if let Some(type_name) = &field.type_name {
            let number = index
                .get(type_name.trim_start_matches('.'))
                .unwrap_or_else(|| panic!("{type_name} is not in the schema"));
            let _ = write!(out, " {number}");
        }
        out.push('\n');
    }
    for nested in &message.nested_type {
        write_schema(out, index, &name, nested);
    }
}

/// Drops field options and JSON names; message options stay (they mark
/// map entries).
fn strip(message: &mut prost_types::DescriptorProto) {
    for field in &mut message.field {
        field.json_name = None;
        field.options = None;
    }
    for nested in &mut message.nested_type {
        strip(nested);
    }
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "proto") {
            files.push(path);
        }
    }
}

/// `src/v1_32` of the `k8s-rs-pb` build dependency, found through
/// `cargo metadata` (cargo tells build scripts no dependency's path).
fn proto_dir() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("manifest dir"))
        .join("Cargo.toml");
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(&manifest)
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata JSON");
    let package = metadata["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|p| p["name"] == "k8s-rs-pb"))
        .expect("k8s-rs-pb in cargo metadata");
    let manifest_path = package["manifest_path"].as_str().expect("manifest_path");
    Path::new(manifest_path)
        .parent()
        .expect("crate dir")
        .join("src/v1_32")
}
