//! Our side of `cargo xtask bench-compare`: times one configuration and prints one JSON object.
//!
//! ```text
//! compare --model tiny-mnist|cifar10_iddpm|mlp --batch B [--reps R] [--what train,forward,ddim10]
//! ```
//!
//! - `train`: one optimiser step of diffusion-train's trainer — forward, L_hybrid (L_simple for the
//!   MLP, which has no variance output), backward, AdamW (no EMA, like the PyTorch side);
//! - `forward`: the network's forward pass on the plain (non-autodiff) device;
//! - `ddim10`: DDIM (η = 0) over 10 respaced steps, from noise to samples.
//!
//! Each is run once to warm up, then `reps` times; the output has the median, min and max in
//! seconds, the parameter count and the process's peak resident memory (VmHWM).

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use diffusion_core::{BetaSchedule, DiffusionConfig, LossKind, ModelMean, ModelVariance, ProcessSpec};
use diffusion_models::checkpoint::ModelSpec;
use diffusion_models::{MlpConfig, UNetConfig};
use diffusion_sample::{Method, NoiseSource, SampleOptions, sample};
use diffusion_train::TrainConfig;
use diffusion_train::stepper::Stepper;

/// The same allocator as the `diffusion` binary.
#[global_allocator]
static GLOBAL: diffusion_alloc::Allocator = diffusion_alloc::Allocator;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn time(reps: usize, mut f: impl FnMut()) -> String {
    f();
    let mut v: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 { v[v.len() / 2] } else { 0.5 * (v[v.len() / 2 - 1] + v[v.len() / 2]) };
    format!("{{\"median\": {median}, \"min\": {}, \"max\": {}, \"reps\": {}}}", v[0], v[v.len() - 1], v.len())
}

fn main() {
    diffusion_alloc::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let model = arg(&args, "--model").unwrap_or_else(|| "tiny-mnist".into());
    let batch: usize = arg(&args, "--batch").and_then(|b| b.parse().ok()).unwrap_or(8);
    let reps: usize = arg(&args, "--reps").and_then(|b| b.parse().ok()).unwrap_or(5);
    let what = arg(&args, "--what").unwrap_or_else(|| "train,forward,ddim10".into());
    let device = Device::flex();

    let hybrid = DiffusionConfig {
        mean: ModelMean::Epsilon,
        variance: ModelVariance::LearnedRange,
        loss: LossKind::RescaledMse,
        ..Default::default()
    };
    let (spec, data, config) = match model.as_str() {
        "tiny-mnist" => (ModelSpec::Unet(UNetConfig::tiny_mnist()), "synthetic:1x32", hybrid),
        "cifar10_iddpm" => (ModelSpec::Unet(UNetConfig::cifar10_iddpm()), "synthetic:3x32", hybrid),
        "mlp" => (ModelSpec::Mlp(MlpConfig::new()), "swissroll", DiffusionConfig::default()),
        other => {
            eprintln!("unknown model {other:?}: tiny-mnist, cifar10_iddpm or mlp");
            std::process::exit(2);
        }
    };
    let mut cfg = TrainConfig::preset("swissroll").expect("preset");
    cfg.model = spec.clone();
    cfg.process = ProcessSpec::new(BetaSchedule::Cosine { num_timesteps: 1000 }, config);
    cfg.data = data.into();
    cfg.image_size = 32;
    cfg.batch_size = batch;
    cfg.ema_rates = vec![];
    cfg.optim = Default::default();
    cfg.random_flip = false;

    let mut out = vec![format!("\"model\": \"{model}\""), format!("\"batch\": {batch}")];
    let diffusion = cfg.process.build().expect("process");
    let ddim = diffusion.respace_spec("ddim10").expect("respacing");
    let noise = NoiseSource::new(0);
    let ids: Vec<u64> = (0..batch as u64).collect();
    let options = SampleOptions { clip_denoised: true, record_every: None };
    match &spec {
        ModelSpec::Unet(u) => {
            let net = u.init(&device);
            out.push(format!("\"params\": {}", burn::module::Module::num_params(&net)));
            let s = u.image_size;
            let x =
                Tensor::<4>::random([batch, u.in_channels, s, s], Distribution::Normal(0.0, 1.0), &device);
            let t = Tensor::<1>::random([batch], Distribution::Uniform(0.0, 999.0), &device);
            if what.contains("forward") {
                out.push(format!(
                    "\"forward\": {}",
                    time(reps, || {
                        let _ = net.forward(x.clone(), t.clone(), None).into_data();
                    })
                ));
            }
            if what.contains("ddim10") {
                let model = |x: Tensor<4>, t: Tensor<1>| net.forward(x, t, None);
                let item = [1, u.in_channels, s, s];
                out.push(format!(
                    "\"ddim10\": {}",
                    time(reps, || {
                        let r = sample(
                            &ddim,
                            &model,
                            &ids,
                            item,
                            &noise,
                            Method::Ddim { eta: 0.0 },
                            &options,
                            None,
                            &device,
                        )
                        .unwrap();
                        let _ = r.sample.into_data();
                    })
                ));
            }
        }
        ModelSpec::Mlp(m) => {
            let net = m.init(&device);
            out.push(format!("\"params\": {}", burn::module::Module::num_params(&net)));
            let x = Tensor::<2>::random([batch, 2], Distribution::Normal(0.0, 1.0), &device);
            let t = Tensor::<1>::random([batch], Distribution::Uniform(0.0, 999.0), &device);
            if what.contains("forward") {
                out.push(format!(
                    "\"forward\": {}",
                    time(reps, || {
                        let _ = net.forward(x.clone(), t.clone()).into_data();
                    })
                ));
            }
            if what.contains("ddim10") {
                let model = |x: Tensor<2>, t: Tensor<1>| net.forward(x, t);
                let options = SampleOptions { clip_denoised: false, record_every: None };
                out.push(format!(
                    "\"ddim10\": {}",
                    time(reps, || {
                        let r = sample(
                            &ddim,
                            &model,
                            &ids,
                            [1, 2],
                            &noise,
                            Method::Ddim { eta: 0.0 },
                            &options,
                            None,
                            &device,
                        )
                        .unwrap();
                        let _ = r.sample.into_data();
                    })
                ));
            }
        }
        ModelSpec::Classifier(_) => unreachable!("not offered"),
    }
    if what.contains("train") {
        let mut stepper = Stepper::new(&cfg, &device, 2).expect("a valid configuration");
        out.push(format!(
            "\"train\": {}",
            time(reps, || {
                let _ = stepper.step();
            })
        ));
    }
    out.push(format!("\"peak_rss_mb\": {:.1}", peak_rss_mb()));
    out.push(format!("\"threads\": {}", rayon_threads()));
    println!("{{{}}}", out.join(", "));
}

/// The compute threads burn's CPU backend uses (rayon's pool); PyTorch is given as many.
fn rayon_threads() -> usize {
    rayon::current_num_threads()
}
