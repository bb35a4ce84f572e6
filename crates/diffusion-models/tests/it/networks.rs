//! Whole networks: shapes, gradients, checkpoints, configuration errors.

use std::path::PathBuf;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Int, Tensor, TensorData};
use diffusion_models::checkpoint::{AnyModel, ModelSpec, load_checkpoint, read_checkpoint, save_checkpoint};
use diffusion_models::summary::Summary;
use diffusion_models::{EncoderUNetConfig, MlpConfig, Pool, UNetConfig};

use crate::{device, host_uniform, randomise, values};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("diffusion-models-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("model.ckpt")
}

/// Sum of squared gradients per parameter tensor.
struct GradNorms<'a> {
    grads: &'a burn::tensor::Gradients,
    norms: Vec<f32>,
}

impl ModuleVisitor for GradNorms<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let g = param.val().grad(self.grads).map(|g| values(g.square().sum())[0]).unwrap_or(0.0);
        self.norms.push(g);
    }
}

#[test]
fn tiny_unet_forward_and_backward_on_cpu() {
    let dev = device().autodiff();
    let config = UNetConfig::tiny();
    let unet = config.init(&dev);
    let x = host_uniform([2, 3, 32, 32], 1, &dev);
    let t = Tensor::<1>::from_floats([5.0, 900.0], &dev);
    let out = unet.forward(x, t, None);
    assert_eq!(out.dims(), [2, 6, 32, 32]);
    // The output conv is zero-initialised, so the first output is exactly zero...
    assert!(values(out.clone()).iter().all(|&v| v == 0.0));
    // ...but its gradient is not.
    let grads = (out - host_uniform([2, 6, 32, 32], 2, &dev)).square().mean().backward();
    let w = unet.out.conv.weight.val().grad(&grads).expect("the output conv has a gradient");
    assert!(values(w.square().sum())[0] > 0.0);
    // With every layer non-zero, every parameter gets a finite, non-zero gradient.
    let unet = randomise(unet, 7);
    let x = host_uniform([2, 3, 32, 32], 1, &dev);
    let t = Tensor::<1>::from_floats([5.0, 900.0], &dev);
    let grads = unet.forward(x, t, None).square().mean().backward();
    let mut v = GradNorms { grads: &grads, norms: Vec::new() };
    unet.visit(&mut v);
    assert!(v.norms.len() > 50, "every parameter tensor visited ({})", v.norms.len());
    for (i, g) in v.norms.iter().enumerate() {
        assert!(g.is_finite() && *g > 0.0, "parameter tensor {i}: squared gradient norm {g}");
    }
}

#[test]
fn class_conditional_unet_uses_the_label() {
    let dev = device();
    let mut config = UNetConfig::tiny();
    config.num_classes = Some(4);
    // Zero-initialised layers would hide the label's path: randomise every parameter.
    let unet = randomise(config.init(&dev), 1);
    let x = host_uniform([2, 3, 32, 32], 3, &dev);
    let t = Tensor::<1>::from_floats([10.0, 10.0], &dev);
    let y = |a: i64, b: i64| Tensor::<1, Int>::from_data(TensorData::new(vec![a, b], [2]), &dev);
    let a = values(unet.forward(x.clone(), t.clone(), Some(y(0, 1))));
    let b = values(unet.forward(x, t, Some(y(3, 1))));
    let half = a.len() / 2;
    assert!(a[..half].iter().zip(&b[..half]).any(|(p, q)| (p - q).abs() > 1e-6), "label 0 vs 3 must differ");
    assert_eq!(&a[half..], &b[half..], "the second sample has the same label");
}

#[test]
fn classifiers_and_mlp_have_the_documented_shapes() {
    let dev = device();
    let x = host_uniform([3, 3, 32, 32], 4, &dev);
    let t = Tensor::<1>::from_floats([0.0, 10.0, 999.0], &dev);
    for pool in [Pool::Adaptive, Pool::Spatial, Pool::SpatialV2] {
        let clf = EncoderUNetConfig::tiny(7).with_pool(pool).init(&dev);
        assert_eq!(clf.forward(x.clone(), t.clone()).dims(), [3, 7], "{pool:?}");
    }
    let mut cfg = EncoderUNetConfig::tiny(7).with_pool(Pool::Attention);
    cfg.unet.num_head_channels = Some(32);
    assert_eq!(cfg.init(&dev).forward(x, t).dims(), [3, 7]);

    let ad = device().autodiff();
    let mlp = MlpConfig::new().with_out_dim(4).init(&ad);
    let pts = host_uniform([1024, 2], 5, &ad);
    let tt =
        Tensor::<1>::from_data(TensorData::new((0..1024).map(|i| i as f32).collect::<Vec<_>>(), [1024]), &ad);
    let out = mlp.forward(pts, tt);
    assert_eq!(out.dims(), [1024, 4]);
    let grads = out.square().mean().backward();
    let g = mlp.input.weight.val().grad(&grads).expect("gradient");
    assert!(values(g.square().sum())[0] > 0.0);
}

#[test]
fn checkpoints_round_trip_and_reject_damage() {
    let dev = device();
    let config = UNetConfig::tiny();
    let mut unet = config.init(&dev);
    unet.out.conv.weight = Param::from_tensor(unet.out.conv.weight.val().ones_like().mul_scalar(0.02));
    let path = tmp("roundtrip");
    save_checkpoint(&path, &ModelSpec::Unet(config.clone()), &unet, serde_json::json!({"step": 7})).unwrap();
    let (header, model) = load_checkpoint(&path, &dev).unwrap();
    assert_eq!(header.model, ModelSpec::Unet(config));
    assert_eq!(header.extra["step"], 7);
    let AnyModel::Unet(loaded) = model else { panic!("a UNet was saved") };
    let x = host_uniform([1, 3, 32, 32], 6, &dev);
    let t = Tensor::<1>::from_floats([100.0], &dev);
    assert_eq!(values(loaded.forward(x.clone(), t.clone(), None)), values(unet.forward(x, t, None)));
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(leftovers.len(), 1);

    let bytes = std::fs::read(&path).unwrap();
    let damaged = path.with_extension("damaged");
    // Truncated.
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();
    let err = read_checkpoint(&damaged).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
    // One flipped byte in the weights.
    let mut flipped = bytes.clone();
    let at = bytes.len() - 100;
    flipped[at] ^= 0x40;
    std::fs::write(&damaged, &flipped).unwrap();
    let err = read_checkpoint(&damaged).unwrap_err().to_string();
    assert!(err.contains("checksum"), "{err}");
    // Not a checkpoint at all.
    std::fs::write(&damaged, b"hello, world, this is not a checkpoint").unwrap();
    let err = load_checkpoint(&damaged, &dev).unwrap_err().to_string();
    assert!(err.contains("magic"), "{err}");
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
}

#[test]
fn invalid_configurations_are_named() {
    let dev = device();
    let mut c = UNetConfig::mnist();
    c.image_size = 30; // 30 is not divisible by 4 (3 levels)
    assert!(c.try_init(&dev).unwrap_err().to_string().contains("divisible by 2^(levels - 1) = 4"));
    let mut c = UNetConfig::tiny();
    c.attention_resolutions = vec![12];
    assert!(c.try_init(&dev).unwrap_err().to_string().contains("attention resolution 12"));
    let mut c = UNetConfig::tiny();
    c.model_channels = 48; // 48 channels are not divisible into 32 groups
    assert!(c.try_init(&dev).unwrap_err().to_string().contains("GroupNorm"));
    let mut c = UNetConfig::tiny();
    c.num_heads = 5;
    assert!(c.try_init(&dev).unwrap_err().to_string().contains("5 attention heads"));
    assert!(UNetConfig::preset("cifar100").unwrap_err().to_string().contains("unknown UNet preset"));
}

#[test]
fn summary_rows_add_up_to_the_parameter_count() {
    let dev = device();
    let unet = UNetConfig::cifar10_iddpm().init(&dev);
    let s = Summary::of_unet(&unet);
    assert_eq!(s.total_params, 52_546_438);
    assert_eq!(s.rows.iter().map(|r| r.params).sum::<usize>(), s.total_params);
    // 1 input conv + 4 levels x 3 res blocks + 3 downsamplers.
    assert_eq!(s.rows.iter().filter(|r| r.name.starts_with("input_blocks")).count(), 16);
    assert_eq!(s.rows.iter().filter(|r| r.name.starts_with("output_blocks")).count(), 16);
}

#[test]
fn json_configs_fill_defaults_and_name_mistakes() {
    use diffusion_models::checkpoint::ModelSpec;
    let minimal = serde_json::json!({
        "image_size": 32, "in_channels": 3, "model_channels": 64, "out_channels": 3,
        "num_res_blocks": 2, "attention_resolutions": [16], "channel_mult": [1, 2, 2]
    });
    let c = UNetConfig::from_json(&minimal).unwrap();
    assert_eq!(c.num_heads, 1);
    assert_eq!(c.norm_groups, 32);
    assert!(!c.use_scale_shift_norm);
    // Round trip: the full serialised form reads back equal.
    assert_eq!(UNetConfig::from_json(&serde_json::to_value(&c).unwrap()).unwrap(), c);

    let mut typo = minimal.clone();
    typo["num_head"] = 4.into();
    let err = UNetConfig::from_json(&typo).unwrap_err().to_string();
    assert!(err.contains("unknown UNet config field \"num_head\""), "{err}");
    let mut missing = minimal.clone();
    missing.as_object_mut().unwrap().remove("channel_mult");
    let err = UNetConfig::from_json(&missing).unwrap_err().to_string();
    assert!(err.contains("\"channel_mult\""), "{err}");

    let spec = ModelSpec::from_json(&serde_json::json!({"kind": "mlp", "config": {"hidden": 64}})).unwrap();
    assert_eq!(spec, ModelSpec::Mlp(MlpConfig::new().with_hidden(64)));
    let spec = ModelSpec::from_json(
        &serde_json::json!({"kind": "classifier", "config": {"unet": minimal, "pool": "spatial"}}),
    )
    .unwrap();
    let ModelSpec::Classifier(clf) = spec else { panic!("a classifier") };
    assert_eq!(clf.pool, Pool::Spatial);
    assert!(ModelSpec::from_json(&serde_json::json!({"kind": "gan", "config": {}})).is_err());
}
