//! Compiles the `.proto` files under `weft/` into tonic/prost code (protoc must be on PATH, or
//! PROTOC set; `.ci/install-deps.sh` installs Debian's protobuf-compiler).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "weft/identity/v1/identity.proto",
        "weft/mesh/v1/mesh.proto",
        "weft/discovery/v1/discovery.proto",
        "weft/registry/v1/registry.proto",
        "weft/config/v1/config.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        // Ordered maps encode deterministically: resource versions are hashes of the encoding
        // and must agree across replicas.
        .btree_map(".")
        // Small per-RPC buffers: see src/codec.rs.
        .codec_path("crate::codec::LeanCodec")
        // Carries a bearer token: its Debug is written by hand in lib.rs and redacts it.
        .skip_debug(["weft.identity.v1.CertifyRequest"])
        .compile_protos(&protos, &["."])?;
    // OTLP/gRPC trace export (feature `otlp`): the OpenTelemetry definitions, vendored under
    // opentelemetry/ unchanged, on the same tonic/prost as everything else.
    if std::env::var_os("CARGO_FEATURE_OTLP").is_some() {
        let otlp = [
            "opentelemetry/proto/common/v1/common.proto",
            "opentelemetry/proto/resource/v1/resource.proto",
            "opentelemetry/proto/trace/v1/trace.proto",
            "opentelemetry/proto/collector/trace/v1/trace_service.proto",
        ];
        for p in otlp {
            println!("cargo:rerun-if-changed={p}");
        }
        tonic_prost_build::configure().compile_protos(&otlp, &["."])?;
    }
    Ok(())
}
