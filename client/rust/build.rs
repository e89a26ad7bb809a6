//! Generates the sessiond.v1 messages (prost) and client stubs (tonic) from
//! proto/sessiond/v1 into OUT_DIR at build time, with the protoc that the
//! protoc-bin-vendored crate ships, so a build needs no system protoc.
//!
//! proto/ is a copy of the repository's protos/, refreshed by `make clients`
//! (and checked fresh in CI), kept inside the crate so that the packaged
//! crate builds on its own.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let protos = manifest.join("proto");
    let files: Vec<PathBuf> = [
        "event.proto",
        "message.proto",
        "message_service.proto",
        "session.proto",
        "session_service.proto",
        "stats_service.proto",
    ]
    .iter()
    .map(|f| protos.join("sessiond/v1").join(f))
    .collect();

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(false)
        .compile_with_config(
            config,
            &files,
            &[protos, protoc_bin_vendored::include_path()?],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
