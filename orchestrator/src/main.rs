//! `cairn`: the cluster binary (`cairn server`, `cairn agent`).
//!
//! Not built yet: the API server, datastore, controllers and node agent come
//! with their own issues. Until then the binary only reports its version, so
//! the workspace, the musl builds and the image layout already carry it.

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("--version") | Some("version") => println!("cairn {}", env!("CARGO_PKG_VERSION")),
        _ => {
            eprintln!(
                "cairn {}: server and agent are not implemented yet",
                env!("CARGO_PKG_VERSION")
            );
            std::process::exit(2);
        }
    }
}
