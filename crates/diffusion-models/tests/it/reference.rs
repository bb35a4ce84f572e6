//! Imported guided-diffusion checkpoints give guided-diffusion's outputs; parameter counts equal
//! the reference's (`fixtures/reference.json`, written by `tools/gen_models_reference.py`).

use std::path::PathBuf;
use std::sync::LazyLock;

use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};
use diffusion_models::checkpoint::{import_pytorch_classifier, import_pytorch_unet};
use diffusion_models::{EncoderUNetConfig, Pool, UNetConfig};
use serde_json::Value;

use crate::{assert_close, device, tensor, values};

static REF: LazyLock<Value> = LazyLock::new(|| {
    serde_json::from_str(include_str!("fixtures/reference.json")).expect("reference.json parses")
});

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures").join(format!("{name}.pt"))
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn input4(v: &Value) -> Tensor<4> {
    let s: Vec<usize> = v["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    tensor(floats(&v["data"]), [s[0], s[1], s[2], s[3]], &device())
}

#[test]
fn imported_unets_reproduce_guided_diffusion_outputs() {
    let dev = device();
    for case in REF["unets"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let config: UNetConfig = UNetConfig::from_json(&case["config"]).unwrap();
        let unet =
            import_pytorch_unet(&fixture(name), &config, &dev).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(unet.num_params(), case["params"].as_u64().unwrap() as usize, "{name}: parameter count");
        let t = Tensor::<1>::from_data(TensorData::new(floats(&case["t"]), [2]), &dev);
        let y = case["y"].as_array().map(|y| {
            let v: Vec<i64> = y.iter().map(|x| x.as_i64().unwrap()).collect();
            Tensor::<1, Int>::from_data(TensorData::new(v, [2]), &dev)
        });
        let out = unet.forward(input4(&case["x"]), t, y);
        assert_close(name, &values(out), &floats(&case["out"]["data"]), 1e-4);
    }
}

#[test]
fn imported_classifiers_reproduce_guided_diffusion_logits() {
    let dev = device();
    for case in REF["classifiers"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let unet: UNetConfig = UNetConfig::from_json(&case["config"]).unwrap();
        let pool: Pool = serde_json::from_value(case["pool"].clone()).unwrap();
        let config = EncoderUNetConfig::new(unet).with_pool(pool);
        let clf = import_pytorch_classifier(&fixture(name), &config, &dev)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(clf.num_params(), case["params"].as_u64().unwrap() as usize, "{name}: parameter count");
        let t = Tensor::<1>::from_data(TensorData::new(floats(&case["t"]), [2]), &dev);
        let logits = clf.forward(input4(&case["x"]), t);
        assert_close(name, &values(logits), &floats(&case["out"]["data"]), 1e-4);
    }
}

#[test]
fn preset_parameter_counts_equal_the_reference_models() {
    let dev = device();
    let counts = &REF["param_counts"];
    assert_eq!(counts["cifar10_iddpm"], 52_546_438, "the issue's figure");
    for (name, config) in [
        ("cifar10_iddpm", UNetConfig::cifar10_iddpm()),
        ("imagenet64_adm", UNetConfig::imagenet64_adm()),
        ("mnist", UNetConfig::mnist()),
        ("tiny", UNetConfig::tiny()),
        ("tiny_mnist", UNetConfig::tiny_mnist()),
    ] {
        let n = config.init(&dev).num_params();
        assert_eq!(n, counts[name].as_u64().unwrap() as usize, "{name}");
    }
    let clf = EncoderUNetConfig::imagenet64_classifier().init(&dev).num_params();
    assert_eq!(clf, counts["imagenet64_classifier"].as_u64().unwrap() as usize, "imagenet64 classifier");
}

#[test]
fn a_mismatched_configuration_is_a_clear_import_error() {
    let dev = device();
    let case = &REF["unets"][0];
    let mut config: UNetConfig = UNetConfig::from_json(&case["config"]).unwrap();
    config.num_classes = None; // the checkpoint has a label embedding
    let err = import_pytorch_unet(&fixture("unet_cond_legacy"), &config, &dev).unwrap_err().to_string();
    assert!(err.contains("label_emb"), "{err}");
    let err = import_pytorch_unet(&fixture("no_such_file"), &config, &dev).unwrap_err().to_string();
    assert!(err.contains("no such file"), "{err}");
}

#[test]
fn networks_from_reference_flags_have_the_reference_parameter_counts() {
    use diffusion_models::openai::{classifier_from_flags, unet_from_flags};
    let dev = device();
    let cases = REF["flag_cases"].as_array().unwrap();
    assert!(cases.len() >= 7);
    for case in cases {
        let flags = case["flags"].as_object().unwrap();
        let n = if flags.keys().any(|k| k.starts_with("classifier_")) {
            classifier_from_flags(flags).unwrap().init(&dev).num_params()
        } else {
            unet_from_flags(flags).unwrap().init(&dev).num_params()
        };
        assert_eq!(n, case["params"].as_u64().unwrap() as usize, "{flags:?}");
    }
    // Typos are errors, not silently ignored flags.
    let typo = serde_json::json!({"image_size": 64, "num_chanels": 64});
    let err = unet_from_flags(typo.as_object().unwrap()).unwrap_err().to_string();
    assert!(err.contains("num_chanels"), "{err}");
}

/// A model spec written before a configuration field existed (the fixtures' configurations
/// predate `null_class`) still reads, the field taking its default, and `null_class` builds the
/// extra label row.
#[test]
fn model_specs_without_newer_fields_still_parse() {
    use diffusion_models::checkpoint::ModelSpec;
    let case = REF["unets"].as_array().unwrap().iter().find(|c| c["name"] == "unet_cond_legacy").unwrap();
    assert!(case["config"].get("null_class").is_none());
    let spec: ModelSpec =
        serde_json::from_value(serde_json::json!({"kind": "unet", "config": case["config"]})).unwrap();
    let ModelSpec::Unet(config) = spec else { panic!("a UNet spec") };
    assert!(!config.null_class);
    let classes = config.num_classes.unwrap();
    let plain = config.clone().init(&device());
    assert_eq!(plain.null_label(), None);
    let with_null = config.with_null_class(true).init(&device());
    assert_eq!(with_null.null_label(), Some(classes));
    assert_eq!(with_null.label_emb.unwrap().weight.dims()[0], classes + 1);
    let bad = UNetConfig::new(8, 1, 32, 1, 1, vec![], vec![1]).with_null_class(true);
    assert!(bad.try_init(&device()).unwrap_err().to_string().contains("class-conditional"));
}
