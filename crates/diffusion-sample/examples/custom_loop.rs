//! diffusion-sample as a library: open a checkpoint with its process, then write your own
//! sampling loop from single steps with your own noise — the `scheduler.step(model_output, t,
//! sample)` idiom — and check it against the built-in loop; then a loop of your own design
//! (inpainting: keep the left half of an image, let the model fill the right half).
//!
//! Run: `cargo run -p diffusion-sample --example custom_loop [-- CHECKPOINT]` (without a
//! checkpoint, a freshly initialised tiny UNet with a linear 1000-step process is written first).

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor};
use diffusion_core::{BetaSchedule, DiffusionConfig, ModelVariance, NoiseSource, ProcessRecord, ProcessSpec};
use diffusion_models::UNetConfig;
use diffusion_models::checkpoint::{ModelSpec, save_checkpoint};
use diffusion_sample::noise::INITIAL_STEP;
use diffusion_sample::output::{save_grid_png, to_images};
use diffusion_sample::sampler::step_key;
use diffusion_sample::step::{StepOptions, ddim_step, model_output};
use diffusion_sample::{DenoiserNetwork, Method, SampleOptions, open_denoiser, sample};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::flex();
    let dir = std::env::temp_dir().join(format!("diffusion-sample-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = match std::env::args().nth(1) {
        Some(p) => PathBuf::from(p),
        None => {
            let path = dir.join("tiny.ckpt");
            let config = UNetConfig::preset("tiny")?;
            let process = ProcessSpec::new(
                BetaSchedule::Linear { num_timesteps: 1000 },
                DiffusionConfig { variance: ModelVariance::LearnedRange, ..Default::default() },
            );
            let extra = serde_json::to_value(ProcessRecord { diffusion: Some(process) })?;
            save_checkpoint(&path, &ModelSpec::Unet(config.clone()), &config.try_init(&device)?, extra)?;
            path
        }
    };

    // The checkpoint knows its network and its process.
    let ckpt = open_denoiser(&path, &device, None)?;
    let DenoiserNetwork::Unet(unet) = &ckpt.network else { return Err("an image model is needed".into()) };
    let d = ckpt.diffusion.respace_spec("ddim20")?;
    println!(
        "{}: {:?}, sampling {} of {} steps",
        path.display(),
        ckpt.process.schedule,
        d.num_timesteps(),
        d.original_num_timesteps()
    );
    let ids: Vec<u64> = (0..4).collect();
    let item = [1, unet.in_channels, unet.image_size, unet.image_size];
    let labels = (unet.num_classes > 0).then(|| Tensor::<1, Int>::from_ints([0, 1, 2, 3], &device));
    let net = ckpt.network.conditional(labels)?;
    let noise = NoiseSource::new(7);
    let eta = 0.5;

    // 1. A hand-written DDIM(η) loop: one `ddim_step` per level, noise tensors passed in.
    let mut x = noise.batch(&ids, INITIAL_STEP, item, &device);
    for t in (0..d.num_timesteps()).rev() {
        let out = model_output(&d, &net, x.clone(), t)?;
        let z = (t > 0).then(|| noise.batch(&ids, step_key(t, 0), item, &device));
        x = ddim_step(&d, x, t, out, eta, z, &StepOptions::default())?.sample;
    }
    // The built-in loop is made of the same steps with the same noise keys.
    let built_in =
        sample(&d, &net, &ids, item, &noise, Method::Ddim { eta }, &SampleOptions::default(), None, &device)?;
    let diff: f32 = (x.clone() - built_in.sample).abs().max().into_scalar();
    println!("hand-written loop vs built-in loop: max difference {diff}");
    assert_eq!(diff, 0.0, "the same steps and the same noise give the same samples");

    // 2. A loop of our own: inpainting by replacement (the known half is re-noised to the
    //    current level after every step; Lugmayr et al. 2022 without resampling).
    let known = x.clone().clamp(-1.0, 1.0);
    let w = unet.image_size;
    let mask = Tensor::<1>::from_floats(
        (0..w).map(|j| if j < w / 2 { 1.0 } else { 0.0 }).collect::<Vec<f32>>().as_slice(),
        &device,
    )
    .reshape([1, 1, 1, w]);
    let mut x = noise.batch(&ids, INITIAL_STEP ^ 1, item, &device);
    for t in (0..d.num_timesteps()).rev() {
        let out = model_output(&d, &net, x.clone(), t)?;
        let z = (t > 0).then(|| noise.batch(&ids, step_key(t, 0) ^ 1, item, &device));
        x = ddim_step(&d, x, t, out, eta, z, &StepOptions::default())?.sample;
        let level = if t > 0 { t - 1 } else { 0 };
        let known_t = if t > 0 {
            let eps = noise.batch(&ids, step_key(t, 1), item, &device);
            let tt = Tensor::<1, Int>::full([ids.len()], level as i64, &device);
            d.q_sample(known.clone(), tt, eps)
        } else {
            known.clone()
        };
        x = known_t * mask.clone() + x * mask.clone().neg().add_scalar(1.0);
    }
    let left: f32 = ((x.clone() - known.clone()) * mask.clone()).abs().max().into_scalar();
    println!("inpainting: the kept half differs from the original by {left}");
    assert_eq!(left, 0.0, "the known half is kept exactly");
    let out = dir.join("inpainting.png");
    save_grid_png(&out, &to_images(Tensor::cat(vec![known, x], 0)), ids.len())?;
    println!("wrote {} (top: samples; bottom: left half kept, right half filled)", out.display());
    Ok(())
}
