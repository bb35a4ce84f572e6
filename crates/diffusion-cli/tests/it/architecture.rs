//! Architecture invariants of ARCHITECTURE.md, checked against `cargo metadata`:
//! library crates enable no burn backend, and dependencies only point down the layers.

use serde_json::Value;

const BACKEND_FEATURES: [&str; 10] =
    ["flex", "ndarray", "wgpu", "vulkan", "metal", "cuda", "rocm", "cpu", "tch", "remote"];

/// Allowed workspace-internal dependencies (normal dependencies) per library crate.
const LAYERS: [(&str, &[&str]); 5] = [
    // The binaries' allocator: no library may depend on it (none lists it below).
    ("diffusion-alloc", &[]),
    ("diffusion-core", &[]),
    ("diffusion-models", &[]),
    // (diffusion-models may not use diffusion-core either: networks know nothing of schedules.)
    ("diffusion-train", &["diffusion-core", "diffusion-models"]),
    ("diffusion-sample", &["diffusion-core", "diffusion-models"]),
];

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1", "--manifest-path", manifest])
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("metadata JSON")
}

#[test]
fn libraries_enable_no_backend_and_respect_the_layers() {
    let meta = metadata();
    let packages = meta["packages"].as_array().unwrap();
    for (name, allowed) in LAYERS {
        let pkg = packages.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("{name} is a member"));
        for dep in pkg["dependencies"].as_array().unwrap() {
            let dep_name = dep["name"].as_str().unwrap();
            let normal = dep["kind"].is_null();
            if dep_name == "burn" && normal {
                let features: Vec<&str> =
                    dep["features"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
                for f in &features {
                    assert!(!BACKEND_FEATURES.contains(f), "{name} enables the burn backend feature {f:?}");
                }
                assert_eq!(
                    dep["uses_default_features"], false,
                    "{name} must not take burn's default features"
                );
            }
            if dep_name.starts_with("diffusion-") && normal {
                // The workspace's leaves choose the kernels: a library takes its siblings that
                // have them by default (`cpu-kernels`) without their default features.
                let kernels = ["diffusion-models", "diffusion-train", "diffusion-sample"];
                assert!(
                    !kernels.contains(&dep_name) || dep["uses_default_features"] == false,
                    "{name} must take {dep_name} without its default features"
                );
                assert!(allowed.contains(&dep_name), "{name} may not depend on {dep_name}");
            }
        }
        // A library's own features may name a burn backend only through `cpu-kernels`, the
        // documented exception (diffusion-models' fused CPU kernels need burn's `flex`).
        for (feature, enables) in pkg["features"].as_object().unwrap() {
            for e in enables.as_array().unwrap() {
                let e = e.as_str().unwrap();
                if let Some(f) = e.strip_prefix("burn/") {
                    assert!(
                        !BACKEND_FEATURES.contains(&f) || feature == "cpu-kernels",
                        "{name}'s feature {feature:?} enables the burn backend {f:?}"
                    );
                }
            }
        }
    }
}
