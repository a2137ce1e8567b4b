//! Compiles the Loggregator V2 protos with protox, a pure-Rust proto
//! compiler, so a fresh machine builds without a system `protoc`.

use std::path::PathBuf;

const PROTOS: [&str; 3] = [
    "loggregator-api/v2/envelope.proto",
    "loggregator-api/v2/egress.proto",
    "loggregator-api/v2/ingress.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;

    // The nozzle's types, client and (test) server. Log payloads decode into
    // `Bytes` so they can share the received buffer instead of being copied.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".loggregator.v2.Log.payload")
        // Ordered maps: records encode deterministically (byte-exact tests),
        // and for the dozen tags an envelope carries they decode as fast.
        .btree_map(".")
        .compile_fds(fds.clone())?;

    // A second server for the emulator whose batch type is pre-encoded bytes:
    // the emulator must not spend its CPU encoding protobuf in a benchmark.
    // Every message resolves to the types above except `EnvelopeBatch`.
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("emulator");
    std::fs::create_dir_all(&out)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .out_dir(out)
        .extern_path(".loggregator.v2", "crate::proto")
        .extern_path(
            ".loggregator.v2.EnvelopeBatch",
            "crate::source::emulator::EncodedBatch",
        )
        .compile_fds(fds)?;
    Ok(())
}
