//! Compiles proto/ringkv.proto into tonic/prost code. protoc comes from the protoc-bin-vendored
//! crate, so neither users of the client nor CI need a system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    config.bytes(["."]);
    tonic_prost_build::configure().compile_with_config(config, &["proto/ringkv.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/ringkv.proto");
    Ok(())
}
