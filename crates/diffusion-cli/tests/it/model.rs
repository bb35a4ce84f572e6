//! `diffusion model`: parameter counts of the presets (equal to guided-diffusion's, see
//! diffusion-models' `fixtures/reference.json`), JSON output, PyTorch import into a checkpoint.

use serde_json::Value;

use crate::{fails, ok};

fn models_reference() -> Value {
    serde_json::from_str(include_str!("../../../diffusion-models/tests/it/fixtures/reference.json")).unwrap()
}

#[test]
fn json_total_params_of_presets_equal_the_reference() {
    let r = models_reference();
    for preset in ["cifar10_iddpm", "imagenet64_adm", "mnist", "tiny", "tiny_mnist", "imagenet64_classifier"]
    {
        let v: Value = serde_json::from_str(&ok(&["model", "--preset", preset, "--format", "json"])).unwrap();
        assert_eq!(v["total_params"], r["param_counts"][preset], "{preset}");
        let rows: u64 = v["rows"].as_array().unwrap().iter().map(|row| row["params"].as_u64().unwrap()).sum();
        assert_eq!(Value::from(rows), v["total_params"], "{preset}: rows add up");
    }
    let table = ok(&["model", "--preset", "cifar10-iddpm"]);
    assert!(table.lines().last().unwrap().ends_with("52,546,438"), "{table}");
}

#[test]
fn pytorch_import_saves_a_self_describing_checkpoint() {
    let r = models_reference();
    let case = &r["unets"][0];
    let dir = std::env::temp_dir().join(format!("diffusion-model-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("spec.json");
    std::fs::write(&spec, serde_json::json!({"kind": "unet", "config": case["config"]}).to_string()).unwrap();
    let pt =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../diffusion-models/tests/it/fixtures/unet_cond_legacy.pt");
    let ckpt = dir.join("model.ckpt");
    let imported: Value = serde_json::from_str(&ok(&[
        "model",
        "--config",
        spec.to_str().unwrap(),
        "--import-pytorch",
        pt,
        "--save",
        ckpt.to_str().unwrap(),
        "--format",
        "json",
    ]))
    .unwrap();
    assert_eq!(imported["total_params"], case["params"]);
    // Loading needs no flags: the checkpoint knows its configuration.
    let loaded: Value =
        serde_json::from_str(&ok(&["model", "--checkpoint", ckpt.to_str().unwrap(), "--format", "json"]))
            .unwrap();
    assert_eq!(loaded["config"], imported["config"]);
    assert_eq!(loaded["total_params"], case["params"]);

    // A configuration that does not fit the weights is refused, naming what differs.
    let mut bad = case["config"].clone();
    bad["num_classes"] = Value::Null;
    std::fs::write(&spec, serde_json::json!({"kind": "unet", "config": bad}).to_string()).unwrap();
    let err = fails(&[
        "model",
        "--config",
        spec.to_str().unwrap(),
        "--import-pytorch",
        pt,
        "--save",
        ckpt.to_str().unwrap(),
    ]);
    assert!(err.contains("label_emb"), "{err}");
    // A file that is not JSON, and one that is not a model.
    std::fs::write(&spec, "{ not json").unwrap();
    assert!(fails(&["model", "--config", spec.to_str().unwrap()]).contains("spec.json"));
    std::fs::write(&ckpt, b"garbage").unwrap();
    assert!(
        fails(&["model", "--checkpoint", ckpt.to_str().unwrap()]).contains("not a diffusion-rs checkpoint")
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn model_needs_exactly_one_source() {
    assert!(fails(&["model"]).contains("required"));
    assert!(fails(&["model", "--preset", "tiny", "--config", "x.json"]).contains("cannot be used with"));
    assert!(fails(&["model", "--preset", "tiny", "--import-pytorch", "x.pt"]).contains("--save"));
}

#[test]
fn reference_flag_files_describe_networks() {
    let r = models_reference();
    let dir = std::env::temp_dir().join(format!("diffusion-model-flags-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, case) in r["flag_cases"].as_array().unwrap().iter().enumerate() {
        let path = dir.join(format!("flags{i}.json"));
        std::fs::write(&path, case["flags"].to_string()).unwrap();
        let v: Value =
            serde_json::from_str(&ok(&["model", "--config", path.to_str().unwrap(), "--format", "json"]))
                .unwrap();
        assert_eq!(v["total_params"], case["params"], "{}", case["flags"]);
    }
    std::fs::remove_dir_all(&dir).ok();
}
