//! Compiles the gateway's gRPC face (../proto/megallm/v1/chat.proto) for the benchmark's
//! gRPC client, with protox (no system protoc). Without the proto file the benchmark still
//! builds, and its gRPC scenarios are skipped with a note.

use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_grpc_proto)");
    println!("cargo:rerun-if-changed=../proto");
    let proto = Path::new("../proto/megallm/v1/chat.proto");
    if !proto.exists() {
        println!("cargo:warning=../proto/megallm/v1/chat.proto not found: gRPC scenarios disabled");
        return;
    }
    let fds = match protox::compile([proto], ["../proto"]) {
        Ok(f) => f,
        Err(e) => {
            println!("cargo:warning=cannot compile chat.proto ({e}): gRPC scenarios disabled");
            return;
        }
    };
    if let Err(e) = tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds)
    {
        println!("cargo:warning=cannot generate gRPC client ({e}): gRPC scenarios disabled");
        return;
    }
    println!("cargo:rustc-cfg=has_grpc_proto");
}
