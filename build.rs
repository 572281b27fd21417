//! Compiles `proto/megallm/v1/chat.proto` with no system `protoc`: `protox` (pure Rust) parses
//! it into a descriptor set, `tonic-prost-build` generates the messages, the server and the
//! client from that set, and the encoded set goes to `OUT_DIR` for server reflection.

use std::path::PathBuf;

const PROTO: &str = "proto/megallm/v1/chat.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed=build.rs");
    // The real-client interop tests need Python with the client SDKs, which .ci/run installs
    // and names in MEGALLM_TEST_PYTHON. Elsewhere they are reported as ignored, not passed.
    println!("cargo::rustc-check-cfg=cfg(real_clients)");
    println!("cargo:rerun-if-env-changed=MEGALLM_TEST_PYTHON");
    println!("cargo:rerun-if-env-changed=CI");
    if std::env::var_os("MEGALLM_TEST_PYTHON").is_some() || std::env::var_os("CI").is_some() {
        println!("cargo:rustc-cfg=real_clients");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new(["proto"])?;
    // Source info keeps the proto's comments: they show in reflection and in generated docs.
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_file(PROTO)?;
    std::fs::write(
        out_dir.join("megallm_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // prost's codec with strict request decoding: see src/grpc/codec.rs.
        .codec_path("crate::grpc::codec::StrictCodec")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
