//! Compiles the SPIRE and SPIFFE Workload API protos in `proto/` with protox (pure Rust, no
//! system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/spire/api/server/entry/v1/entry.proto", "proto/spiffe/workload/workload.proto"];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(false).compile_fds(fds)?;
    Ok(())
}
