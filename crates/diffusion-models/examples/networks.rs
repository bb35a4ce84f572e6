//! diffusion-models on its own: build the ADM UNet and its classifier from presets, run them,
//! save and reload a self-describing checkpoint, and check that the fused CPU kernels ran.
//!
//! Run: `cargo run -p diffusion-models --example networks`.

use burn::tensor::{Device, Distribution, Int, Tensor};
use diffusion_models::checkpoint::{AnyModel, ModelSpec, load_checkpoint, save_checkpoint};
use diffusion_models::ops::{Kernel, kernel_runs};
use diffusion_models::summary::Summary;
use diffusion_models::{EncoderUNetConfig, UNetConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::flex();
    let config = UNetConfig::preset("tiny")?;
    let unet = config.try_init(&device)?;
    let summary = Summary::of_unet(&unet);
    println!("tiny UNet: {} parameters in {} parts", summary.total_params, summary.rows.len());

    let (b, c, s) = (2, unet.in_channels, unet.image_size);
    let x = Tensor::<4>::random([b, c, s, s], Distribution::Normal(0.0, 1.0), &device);
    let t = Tensor::<1>::from_floats([10.0, 900.0], &device);
    let y = (unet.num_classes > 0).then(|| Tensor::<1, Int>::from_ints([0, 1], &device));
    let convs_before = kernel_runs(Kernel::Conv);
    let out = unet.forward(x.clone(), t.clone(), y.clone());
    println!("forward: {:?} -> {:?}", x.dims(), out.dims());
    // On burn's CPU backend the convolutions run our fused kernel (the default `cpu-kernels`).
    let convs = kernel_runs(Kernel::Conv) - convs_before;
    println!("convolutions through the fused CPU kernel: {convs}");
    assert!(convs > 0, "the fused convolution kernel should run on Device::flex()");

    // A checkpoint holds the configuration: loading needs no flags.
    let dir = std::env::temp_dir().join(format!("diffusion-models-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("tiny.ckpt");
    save_checkpoint(&path, &ModelSpec::Unet(config), &unet, serde_json::json!({ "note": "example" }))?;
    let (header, model) = load_checkpoint(&path, &device)?;
    let AnyModel::Unet(reloaded) = model else { return Err("expected a UNet".into()) };
    let diff: f32 = (reloaded.forward(x.clone(), t.clone(), y) - out).abs().max().into_scalar();
    println!(
        "reloaded from {} (format {}): max output difference {diff}",
        path.display(),
        header.format_version
    );
    assert_eq!(diff, 0.0, "a reloaded checkpoint computes the same function");

    // The noise-aware classifier of classifier guidance.
    let classifier = EncoderUNetConfig::tiny(4).try_init(&device)?;
    let logits = classifier.forward(x, t);
    println!("classifier logits: {:?}", logits.dims());
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
