//! Sample quality per network evaluation (`cargo xtask quality`, or
//! `cargo run -p diffusion-benches --example quality -- [toys|shapes|all|report] [--quick] [--out DIR]`).
//!
//! - **toys**: the `swissroll` preset's MLP (10 000 steps) trained on each 2-D toy; DDPM, DDIM,
//!   DPM-Solver++ 2M (and with Karras σ), UniPC, Euler and Heun at 5–100 network evaluations;
//!   the sliced Wasserstein-2 distance and the RBF MMD² of each sample set to fresh held-out
//!   points, mean ± standard error over independent seeds, beside the same distances between two
//!   held-out sets (the floor a perfect sampler would reach).
//! - **shapes**: the `default` preset (ε), the same with v-prediction, with min-SNR-5 weighting,
//!   and with label dropout 0.1 (for classifier-free guidance); a clean-image classifier trained
//!   on its own (not the guidance classifier: t = 0 only, another seed) labels the samples. Per
//!   sampler and NFE: the accuracy of the requested class (binomial standard error) and the sliced
//!   W2 in pixel space to held-out images; per parameterisation: held-out ε- and x̂_0-MSE at
//!   stratified timesteps; CFG at w = 0, 1, 3, 5 (diffusers' scale s = 1 + w) with a grid per w.
//!
//! Everything is written under `--out` (default `docs/quality`): `toys.json`, `shapes.json`,
//! `results.md` (the tables of the docs page) and the PNG charts and grids; `report` redraws
//! the charts and tables from the JSON files alone. The trained runs
//! stay under `target/quality-runs` and are reused (resumed) by a second invocation.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use diffusion_core::{GaussianDiffusion, ModelMean, TimestepSpacing};
use diffusion_models::checkpoint::ModelSpec;
use diffusion_models::{EncoderUNet, Mlp, UNet};
use diffusion_sample::dpm_solver::DpmAlgorithm;
use diffusion_sample::generate::{self, Job};
use diffusion_sample::karras::{Churn, KarrasMethod};
use diffusion_sample::metrics::{mmd_rbf, sliced_wasserstein, sliced_wasserstein_nd};
use diffusion_sample::output::{save_grid_png_scaled, to_images};
use diffusion_sample::unipc::UniPcVariant;
use diffusion_sample::{ClassifierFree, Method, NoiseSource, SampleOptions, StepSchedule};
use diffusion_train::data::points::Toy;
use diffusion_train::data::shapes;
use diffusion_train::{
    ClassifierConfig, Net, ProgressStyle, Resume, RunOptions, TrainConfig, train, train_classifier,
};
use plotters::prelude::*;
use serde_json::{Value, json};

/// The same allocator as the `diffusion` binary.
#[global_allocator]
static GLOBAL: diffusion_alloc::Allocator = diffusion_alloc::Allocator;

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The network evaluations of the comparison.
const NFES: [usize; 5] = [5, 10, 20, 50, 100];

/// The samplers compared.
const SAMPLERS: [&str; 7] = ["ddpm", "ddim", "dpm++2m", "dpm++2m-karras", "unipc", "euler", "heun"];

/// A sampler at (about) `nfe` network evaluations: the process to run it on, the method and the
/// evaluations it really makes (Heun: 2n − 1 for n steps).
fn sampler_at(
    name: &str,
    nfe: usize,
    d: &GaussianDiffusion,
) -> AnyResult<(GaussianDiffusion, Method, usize)> {
    let schedule = |steps| Some(StepSchedule { steps, spacing: TimestepSpacing::Linspace, karras: false });
    let karras = |method, steps| Method::Karras {
        method,
        schedule: StepSchedule { steps, spacing: TimestepSpacing::Linspace, karras: false },
        churn: Churn::default(),
    };
    Ok(match name {
        // improved-diffusion's respacing: `N` evenly strided steps for DDPM, `ddimN` for DDIM.
        "ddpm" => (d.respace_spec(&nfe.to_string())?, Method::Ddpm, nfe),
        "ddim" => (d.respace_spec(&format!("ddim{nfe}"))?, Method::Ddim { eta: 0.0 }, nfe),
        "dpm++2m" => (
            d.clone(),
            Method::DpmSolver { order: 2, algorithm: DpmAlgorithm::DpmSolverPp, schedule: schedule(nfe) },
            nfe,
        ),
        "dpm++2m-karras" => (
            d.clone(),
            Method::DpmSolver {
                order: 2,
                algorithm: DpmAlgorithm::DpmSolverPp,
                schedule: Some(StepSchedule { steps: nfe, spacing: TimestepSpacing::Linspace, karras: true }),
            },
            nfe,
        ),
        "unipc" => {
            (d.clone(), Method::UniPc { order: 2, variant: UniPcVariant::Bh2, schedule: schedule(nfe) }, nfe)
        }
        "euler" => (d.clone(), karras(KarrasMethod::Euler, nfe), nfe),
        "heun" => {
            let steps = nfe.div_ceil(2);
            (d.clone(), karras(KarrasMethod::Heun, steps), 2 * steps - 1)
        }
        other => return Err(format!("unknown sampler {other}").into()),
    })
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn mean_se(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (m, f64::NAN);
    }
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, (var / n).sqrt())
}

fn to_points(x: Tensor<2>) -> AnyResult<Vec<[f32; 2]>> {
    let v = x.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| format!("{e:?}"))?;
    Ok(v.chunks(2).map(|c| [c[0], c[1]]).collect())
}

/// A run in `dir` that resumes (or, finished, only reloads) what an earlier invocation trained.
fn run_options(dir: &Path, device: &Device) -> RunOptions {
    RunOptions {
        run_dir: dir.to_path_buf(),
        resume: Resume::Auto,
        devices: vec![device.clone()],
        progress: ProgressStyle::Plain,
        ..Default::default()
    }
}

fn train_run(cfg: TrainConfig, dir: &Path, device: &Device) -> AnyResult<Net> {
    let t = Instant::now();
    let summary = train(cfg, run_options(dir, device))?;
    eprintln!(
        "trained {} ({} steps) in {:.0} s",
        dir.display(),
        summary.steps_done,
        t.elapsed().as_secs_f64()
    );
    let mut ema = summary.trainer.ema;
    Ok(if ema.is_empty() { summary.trainer.net } else { ema.remove(0) })
}

// ---------------------------------------------------------------------------------------------
// The 2-D toys.

fn toys(runs: &Path, quick: bool, device: &Device) -> AnyResult<Value> {
    let seeds: u64 = if quick { 2 } else { 5 };
    let n: usize = if quick { 300 } else { 2000 };
    let (projections, bandwidth) = (200, 0.2);
    let mut results = Vec::new();
    for toy_name in ["swissroll", "8gaussians", "moons"] {
        let toy: Toy = toy_name.parse()?;
        let mut cfg = TrainConfig::preset("swissroll")?;
        cfg.data = toy_name.into();
        if quick {
            cfg.steps = 300;
            cfg.optim.lr_anneal_steps = 300;
            cfg.checkpoint_every = 300;
        }
        let Net::Mlp(mlp) = train_run(cfg.clone(), &runs.join(toy_name), device)? else {
            return Err("the swissroll preset trains an MLP".into());
        };
        let d = cfg.process.build()?;
        // Held-out sets: fresh draws (the training set is seed 0's 10 000 points).
        let held = |k: u64| toy.sample(n, 1_000_003 + k);
        let floor_sw: Vec<f64> =
            (0..seeds).map(|k| sliced_wasserstein(&held(k), &held(k + 100), projections, k)).collect();
        let floor_mmd: Vec<f64> = (0..seeds).map(|k| mmd_rbf(&held(k), &held(k + 100), bandwidth)).collect();
        let mut rows = Vec::new();
        for sampler in SAMPLERS {
            for nfe in NFES {
                let (dd, method, real_nfe) = sampler_at(sampler, nfe, &d)?;
                let t = Instant::now();
                let (mut sw, mut mmd) = (Vec::new(), Vec::new());
                for k in 0..seeds {
                    let pts = sample_points(&dd, &mlp, method, n, 7_000 + k, device)?;
                    sw.push(sliced_wasserstein(&pts, &held(k), projections, k));
                    mmd.push(mmd_rbf(&pts, &held(k), bandwidth));
                }
                let ((sw_m, sw_se), (mmd_m, mmd_se)) = (mean_se(&sw), mean_se(&mmd));
                eprintln!(
                    "{toy_name} {sampler:>15} NFE {real_nfe:>3}: SW2 {sw_m:.4} ± {sw_se:.4}, MMD² {mmd_m:.5} ± {mmd_se:.5} ({:.1} s)",
                    t.elapsed().as_secs_f64()
                );
                rows.push(
                    json!({"sampler": sampler, "nfe": real_nfe, "target": nfe, "sw2": sw_m, "sw2_se": sw_se,
                                 "mmd2": mmd_m, "mmd2_se": mmd_se}),
                );
            }
        }
        let (fs, fse) = mean_se(&floor_sw);
        let (fm, fmse) = mean_se(&floor_mmd);
        let entry = json!({"toy": toy_name, "samples": n, "seeds": seeds, "projections": projections,
            "bandwidth": bandwidth, "floor": {"sw2": fs, "sw2_se": fse, "mmd2": fm, "mmd2_se": fmse},
            "rows": rows});
        results.push(entry);
    }
    Ok(json!({"toys": results}))
}

/// A sampling job of `d` and `method` (`diffusion_sample::generate`, as `diffusion sample` runs
/// it).
fn job(d: &GaussianDiffusion, method: Method, seed: u64, cfg: Option<ClassifierFree>) -> Job<'_> {
    Job { diffusion: d, method, options: SampleOptions::default(), seed, batch_size: 2048, cfg }
}

fn sample_points(
    d: &GaussianDiffusion,
    mlp: &Mlp,
    method: Method,
    n: usize,
    seed: u64,
    device: &Device,
) -> AnyResult<Vec<[f32; 2]>> {
    let ids: Vec<u64> = (0..n as u64).collect();
    to_points(generate::sample_points(&job(d, method, seed, None), mlp, &ids, device, &|_| {})?)
}

// ---------------------------------------------------------------------------------------------
// The shapes.

/// Samples `n` images, class c for ids ≡ c (mod classes), grouped by class (`n / classes` each);
/// CFG at scale `cfg` when given; 8-bit quantised as a saved image would be.
fn sample_images(
    d: &GaussianDiffusion,
    unet: &UNet,
    method: Method,
    n: usize,
    seed: u64,
    cfg: Option<ClassifierFree>,
    device: &Device,
) -> AnyResult<(Tensor<4>, Vec<i64>)> {
    let classes = unet.num_classes.max(1) as u64;
    let job = Job { batch_size: 64, ..job(d, method, seed, cfg) };
    let mut chunks = Vec::new();
    let mut labels = Vec::new();
    for c in 0..classes {
        let ids: Vec<u64> = (c..n as u64).step_by(classes as usize).collect();
        let out = generate::sample_images(&job, unet, &ids, Some(c as usize), None, device, &|_| {})?;
        chunks.push(out.samples);
        labels.extend(out.labels);
    }
    let x = Tensor::cat(chunks, 0);
    let q = x.add_scalar(1.0).mul_scalar(127.5).round().clamp(0.0, 255.0).div_scalar(127.5).sub_scalar(1.0);
    Ok((q, labels))
}

fn flat(x: Tensor<4>) -> AnyResult<Vec<Vec<f32>>> {
    let [n, ..] = x.dims();
    let v = x.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| format!("{e:?}"))?;
    let len = v.len() / n.max(1);
    Ok(v.chunks(len).map(<[f32]>::to_vec).collect())
}

/// The classifier's accuracy on `x` for `labels`: overall and per class.
fn accuracy(clf: &EncoderUNet, x: Tensor<4>, labels: &[i64], device: &Device) -> AnyResult<(f64, Vec<f64>)> {
    let n = labels.len();
    let mut predicted = Vec::with_capacity(n);
    for (b, chunk) in flat_batches(x, 128).into_iter().enumerate() {
        let m = chunk.dims()[0];
        let logits = clf.forward(chunk, Tensor::zeros([m], device));
        let arg = logits.argmax(1).reshape([m]).into_data().convert::<i64>().try_into_vec::<i64>();
        predicted.extend(arg.map_err(|e| format!("batch {b}: {e:?}"))?);
    }
    let classes = labels.iter().copied().max().unwrap_or(0) as usize + 1;
    let mut hit = vec![0usize; classes];
    let mut count = vec![0usize; classes];
    for (p, &l) in predicted.iter().zip(labels) {
        count[l as usize] += 1;
        hit[l as usize] += usize::from(*p == l);
    }
    let total = hit.iter().sum::<usize>() as f64 / n as f64;
    Ok((total, hit.iter().zip(&count).map(|(&h, &c)| h as f64 / c.max(1) as f64).collect()))
}

fn flat_batches(x: Tensor<4>, b: usize) -> Vec<Tensor<4>> {
    let n = x.dims()[0];
    (0..n.div_ceil(b)).map(|i| x.clone().narrow(0, i * b, b.min(n - i * b))).collect()
}

fn binomial_se(p: f64, n: usize) -> f64 {
    (p * (1.0 - p) / n as f64).sqrt()
}

/// Held-out ε- and x̂_0-MSE of a network at stratified timesteps (one per image, evenly over
/// the process), whatever it predicts, plus its own objective's target MSE.
fn heldout_mse(d: &GaussianDiffusion, unet: &UNet, x0: &Tensor<4>, device: &Device) -> AnyResult<Value> {
    let n = x0.dims()[0];
    let tn = d.num_timesteps();
    let ts: Vec<i64> = (0..n).map(|i| ((i * tn + tn / 2) / n) as i64).collect();
    let noise = NoiseSource::new(4242).batch(&(0..n as u64).collect::<Vec<_>>(), 0, [1, 3, 16, 16], device);
    let labels: Vec<i64> = (0..n).map(|i| (i % 4) as i64).collect();
    let (mut eps_se, mut x0_se) = (0.0, 0.0);
    let (mut eps_q, mut x0_q) = (vec![0.0; 4], vec![0.0; 4]);
    for start in (0..n).step_by(64) {
        let m = 64.min(n - start);
        let t = Tensor::<1, Int>::from_data(TensorData::new(ts[start..start + m].to_vec(), [m]), device);
        let xb = x0.clone().narrow(0, start, m);
        let nb = noise.clone().narrow(0, start, m);
        let x_t = d.q_sample(xb.clone(), t.clone(), nb.clone());
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels[start..start + m].to_vec(), [m]), device);
        let out = unet.forward(x_t.clone(), d.model_timesteps(t.clone()), Some(y));
        let pred_x0 = d.p_mean_variance(out, x_t.clone(), t.clone(), false).pred_x0;
        let pred_eps = d.predict_eps_from_x0(x_t, t, pred_x0.clone());
        let per = |a: Tensor<4>, b: Tensor<4>| -> AnyResult<Vec<f64>> {
            let v = (a - b).powi_scalar(2).mean_dim(3).mean_dim(2).mean_dim(1).reshape([m]);
            Ok(v.into_data().convert::<f64>().try_into_vec::<f64>().map_err(|e| format!("{e:?}"))?)
        };
        // x̂_0 clipped to the data range, as the samplers use it (an ε network's x̂_0 is
        // (x_t − √(1−ᾱ) ε̂)/√ᾱ, which explodes where ᾱ → 0).
        let clipped = pred_x0.clamp(-1.0, 1.0);
        for (i, (e, x)) in per(pred_eps, nb)?.into_iter().zip(per(clipped, xb)?).enumerate() {
            let q = (ts[start + i] as usize * 4) / tn;
            eps_se += e;
            x0_se += x;
            eps_q[q] += e / (n as f64 / 4.0);
            x0_q[q] += x / (n as f64 / 4.0);
        }
    }
    Ok(json!({"eps_mse": eps_se / n as f64, "x0_mse": x0_se / n as f64,
              "eps_mse_by_quarter": eps_q, "x0_mse_by_quarter": x0_q}))
}

fn shapes(out: &Path, runs: &Path, quick: bool, device: &Device) -> AnyResult<Value> {
    let n: usize = if quick { 64 } else { 256 };
    let steps = |mut c: TrainConfig| {
        if quick {
            c.steps = 40;
            c.optim.lr_anneal_steps = 40;
            c.checkpoint_every = 40;
        }
        c
    };
    let base = steps(TrainConfig::preset("default")?);
    let mut v = base.clone();
    v.process.config.mean = ModelMean::Velocity;
    let mut min_snr = base.clone();
    min_snr.min_snr_gamma = Some(5.0);
    let mut cfg_model = base.clone();
    cfg_model.label_dropout = 0.1;
    if let ModelSpec::Unet(u) = &mut cfg_model.model {
        u.null_class = true;
    }
    let variants = [("eps", base), ("v", v), ("min-snr-5", min_snr), ("cfg", cfg_model)];
    let mut nets = Vec::new();
    for (name, cfg) in &variants {
        let Net::Unet(unet) = train_run(cfg.clone(), &runs.join(format!("shapes-{name}")), device)? else {
            return Err("the default preset trains a UNet".into());
        };
        nets.push((*name, cfg.process.build()?, unet));
    }

    // The independent judge: clean images only, its own seed and data draw.
    let mut judge_cfg = ClassifierConfig::preset("shapes")?;
    judge_cfg.noised = false;
    judge_cfg.seed = 17;
    // The guidance preset's 600 steps leave a clean classifier at ≈ 75 % held-out accuracy: a
    // judge must be better than the samples it grades.
    judge_cfg.steps = 3000;
    judge_cfg.checkpoint_every = 1000;
    judge_cfg.optim.lr_anneal_steps = 3000;
    if quick {
        judge_cfg.steps = 40;
        judge_cfg.checkpoint_every = 40;
    }
    let t = Instant::now();
    let judge = train_classifier(judge_cfg, run_options(&runs.join("shapes-judge-3000"), device))?;
    eprintln!(
        "judge trained in {:.0} s, held-out accuracy {:?}",
        t.elapsed().as_secs_f64(),
        judge.final_accuracy
    );
    let clf = judge.net;

    // Held-out images, never seen by any network: another seed of the generator.
    let held_set = shapes::generate(n.max(512), 987_654).downsample(2);
    let held_n = held_set.len();
    let pixels: Vec<f32> = (0..held_n).flat_map(|i| held_set.image_f32(i, false)).collect();
    let held = Tensor::<4>::from_data(TensorData::new(pixels, [held_n, 3, 16, 16]), device);
    let held_labels: Vec<i64> = held_set.labels.iter().map(|&l| l as i64).collect();
    let (judge_acc, _) = accuracy(&clf, held.clone(), &held_labels, device)?;
    let held_flat = flat(held.clone())?;
    let (half_a, half_b) = held_flat.split_at(held_n / 2);
    let floor_sw =
        sliced_wasserstein_nd(&half_a[..n.min(half_a.len())], &half_b[..n.min(half_b.len())], 200, 1)?;

    // Held-out MSE of each parameterisation (the same ε-space and x̂_0-space numbers for all).
    let mut mse = Vec::new();
    for (name, d, unet) in &nets {
        let mut m = heldout_mse(d, unet, &held, device)?;
        m["model"] = json!(name);
        eprintln!("{name}: held-out {m}");
        mse.push(m);
    }

    // Quality per NFE, each parameterisation.
    let mut rows = Vec::new();
    for (m, (name, d, unet)) in nets.iter().take(3).enumerate() {
        for sampler in SAMPLERS {
            for nfe in NFES {
                // The ε model gets the whole sweep (NFE 100 for the long-chain references DDPM
                // and DDIM only: the solvers have converged by 50); v and min-SNR the settings
                // people use them at.
                let wanted = if m == 0 {
                    nfe < 100 || sampler == "ddpm" || sampler == "ddim"
                } else {
                    matches!((sampler, nfe), ("ddim", 50) | ("dpm++2m", 10 | 20))
                };
                if !wanted || (quick && nfe > 10) {
                    continue;
                }
                let (dd, method, real_nfe) = sampler_at(sampler, nfe, d)?;
                let t = Instant::now();
                let (x, labels) = sample_images(&dd, unet, method, n, 11, None, device)?;
                let (acc, per_class) = accuracy(&clf, x.clone(), &labels, device)?;
                let sw = sliced_wasserstein_nd(&flat(x)?, &held_flat[..n.min(held_n)], 200, 1)?;
                eprintln!(
                    "{name} {sampler:>15} NFE {real_nfe:>3}: accuracy {acc:.3} ± {:.3}, pixel SW2 {sw:.4} ({:.0} s)",
                    binomial_se(acc, n),
                    t.elapsed().as_secs_f64()
                );
                rows.push(
                    json!({"model": name, "sampler": sampler, "nfe": real_nfe, "target": nfe, "accuracy": acc,
                    "accuracy_se": binomial_se(acc, n), "per_class": per_class, "sw2": sw}),
                );
            }
        }
    }

    // Classifier-free guidance on the label-dropout model.
    let (_, d, unet) = &nets[3];
    let mut cfg_rows = Vec::new();
    let (cfg_d, cfg_method, cfg_nfe) = sampler_at("dpm++2m", 20, d)?;
    for w in [0.0, 1.0, 3.0, 5.0] {
        let cf = ClassifierFree::new(1.0 + w, 0.0)?;
        let (x, labels) = sample_images(&cfg_d, unet, cfg_method, n, 11, Some(cf), device)?;
        let (acc, per_class) = accuracy(&clf, x.clone(), &labels, device)?;
        let sw = sliced_wasserstein_nd(&flat(x.clone())?, &held_flat[..n.min(held_n)], 200, 1)?;
        eprintln!(
            "CFG w = {w}: accuracy {acc:.3} ± {:.3}, per class {per_class:?}, SW2 {sw:.4}",
            binomial_se(acc, n)
        );
        // A grid: 4 rows (one per class) of 8 samples (the samples come grouped by class).
        let keep: Vec<i64> = (0..4).flat_map(|c| (0..8).map(move |k| (c * n / 4 + k) as i64)).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(keep, [32]), device);
        save_grid_png_scaled(&out.join(format!("cfg-w{w}.png")), &to_images(x.select(0, idx)), 8, 3)?;
        cfg_rows.push(json!({"w": w, "scale": 1.0 + w, "accuracy": acc, "accuracy_se": binomial_se(acc, n),
                             "per_class": per_class, "sw2": sw}));
    }

    let entry = json!({"samples": n, "judge_accuracy": judge_acc, "floor_sw2": floor_sw,
        "heldout_mse": mse, "rows": rows.clone(), "cfg": {"sampler": "dpm++2m", "nfe": cfg_nfe, "rows": cfg_rows},
        "classes": shapes::CLASSES});
    Ok(entry)
}

// ---------------------------------------------------------------------------------------------
// Charts and tables.

/// The charts of the results (also `quality report`, from the JSON files alone).
fn charts(out: &Path, toys: Option<&Value>, shapes: Option<&Value>) -> AnyResult<()> {
    for t in toys.and_then(|t| t["toys"].as_array()).into_iter().flatten() {
        let name = t["toy"].as_str().unwrap_or("toy");
        plot_metric(
            &out.join(format!("toys-{name}.png")),
            &format!("{name}: {} samples vs held-out, mean ± s.e. over {} seeds", t["samples"], t["seeds"]),
            t,
            &[("sw2", "sliced W2"), ("mmd2", "MMD² (RBF, h = 0.2)")],
        )?;
    }
    if let Some(sh) = shapes {
        let eps_rows: Vec<Value> =
            sh["rows"].as_array().into_iter().flatten().filter(|r| r["model"] == "eps").cloned().collect();
        plot_metric(
            &out.join("shapes-eps.png"),
            &format!(
                "shapes, ε model: {} samples per point; the judge's accuracy on real images {:.3}",
                sh["samples"],
                sh["judge_accuracy"].as_f64().unwrap_or(f64::NAN)
            ),
            &json!({"floor": {"sw2": sh["floor_sw2"]}, "rows": eps_rows}),
            &[("accuracy", "accuracy of the requested class"), ("sw2", "pixel sliced W2 to held-out")],
        )?;
    }
    Ok(())
}

/// One colour per sampler (Set1; DPM-Solver++ 2M and UniPC often coincide, UniPC is drawn on top).
const COLOURS: [RGBColor; 7] = [
    RGBColor(228, 26, 28),
    RGBColor(55, 126, 184),
    RGBColor(77, 175, 74),
    RGBColor(152, 78, 163),
    RGBColor(255, 127, 0),
    RGBColor(166, 86, 40),
    RGBColor(247, 129, 191),
];

/// One panel per metric: the metric against NFE (log axis), one line per sampler, error bars
/// where the rows have `{metric}_se`.
fn plot_metric(path: &Path, caption: &str, entry: &Value, metrics: &[(&str, &str)]) -> AnyResult<()> {
    static FONT: std::sync::Once = std::sync::Once::new();
    FONT.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
    let rows = entry["rows"].as_array().cloned().unwrap_or_default();
    let root = BitMapBackend::new(path, (520 * metrics.len() as u32, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(caption, ("sans-serif", 20))?;
    let areas = root.split_evenly((1, metrics.len()));
    for ((key, label), area) in metrics.iter().zip(areas.iter()) {
        // Distances on a log axis (values at or below 1e-5, e.g. an unbiased MMD² < 0, drawn at
        // 1e-5); accuracies linear.
        let log = *key != "accuracy";
        let tr = |y: f64| if log { y.max(1e-5).log10() } else { y };
        let get = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let mut ys: Vec<f64> = rows.iter().map(|r| tr(get(r, key))).filter(|y| y.is_finite()).collect();
        let floor = entry["floor"][*key].as_f64();
        ys.extend(floor.map(tr));
        let (mut y0, mut y1) = ys.iter().fold((f64::MAX, f64::MIN), |(a, b), &y| (a.min(y), b.max(y)));
        if y0 > y1 {
            (y0, y1) = (0.0, 1.0);
        }
        let pad = ((y1 - y0) * 0.06).max(0.02);
        let clamp = |y: f64| y.clamp(y0 - pad, y1 + pad);
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (4.0f64..110.0).log_scale().with_key_points(NFES.iter().map(|&n| n as f64).collect()),
                (y0 - pad)..(y1 + pad),
            )?;
        chart
            .configure_mesh()
            .x_desc("network evaluations (NFE)")
            .y_desc(if log { format!("{label} (log scale)") } else { label.to_string() })
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| if log { format!("{:.2e}", 10f64.powf(*y)) } else { format!("{y:.2}") })
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .draw()?;
        for (i, sampler) in SAMPLERS.iter().enumerate() {
            let color = COLOURS[i % COLOURS.len()].to_rgba();
            let pts: Vec<(f64, f64, f64, f64)> = rows
                .iter()
                .filter(|r| r["sampler"] == *sampler)
                .map(|r| {
                    let (y, e) = (get(r, key), r[format!("{key}_se")].as_f64().unwrap_or(0.0));
                    (get(r, "nfe"), tr(y), clamp(tr(y - e)), clamp(tr(y + e)))
                })
                .collect();
            if pts.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), color.stroke_width(2)))?
                .label(*sampler)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            chart.draw_series(
                pts.iter()
                    .filter(|p| p.3 > p.2)
                    .map(|&(x, _, lo, hi)| PathElement::new(vec![(x, lo), (x, hi)], color.stroke_width(1))),
            )?;
        }
        if let Some(f) = floor.map(tr) {
            chart
                .draw_series(LineSeries::new([(4.0, f), (110.0, f)], BLACK.stroke_width(1)))?
                .label("held-out vs held-out")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(1)));
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 12))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn markdown(toys: Option<&Value>, shapes: Option<&Value>) -> String {
    let mut s = String::new();
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    if let Some(toys) = toys {
        for t in toys["toys"].as_array().into_iter().flatten() {
            let _ = writeln!(
                s,
                "\n#### {} ({} samples × {} seeds; held-out vs held-out: SW2 {:.4} ± {:.4}, MMD² {:.5} ± {:.5})\n",
                t["toy"].as_str().unwrap_or(""),
                t["samples"],
                t["seeds"],
                f(&t["floor"]["sw2"]),
                f(&t["floor"]["sw2_se"]),
                f(&t["floor"]["mmd2"]),
                f(&t["floor"]["mmd2_se"])
            );
            table(&mut s, t, &[("sw2", 4), ("mmd2", 5)]);
        }
    }
    if let Some(sh) = shapes {
        let _ = writeln!(
            s,
            "\n#### shapes ({} samples per cell; the judge's accuracy on held-out real images: {:.3}; pixel SW2 between two held-out halves: {:.4})\n",
            sh["samples"],
            f(&sh["judge_accuracy"]),
            f(&sh["floor_sw2"])
        );
        for model in ["eps", "v", "min-snr-5"] {
            let rows: Vec<Value> = sh["rows"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["model"] == model)
                .cloned()
                .collect();
            let _ = writeln!(s, "\n{model}: accuracy ± s.e. / pixel SW2\n");
            table(&mut s, &json!({"rows": rows}), &[("accuracy", 3), ("sw2", 4)]);
        }
        let _ = writeln!(
            s,
            "\nHeld-out MSE at stratified t (ε space, and x̂_0 clipped to [−1, 1] as the samplers use it, whatever the network predicts):\n"
        );
        let _ = writeln!(
            s,
            "| model | ε-MSE | x̂_0-MSE | ε-MSE by quarter of t | x̂_0-MSE by quarter of t |\n|---|---|---|---|---|"
        );
        for m in sh["heldout_mse"].as_array().into_iter().flatten() {
            let q = |k: &str| {
                m[k].as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| format!("{:.4}", f(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                s,
                "| {} | {:.4} | {:.4} | {} | {} |",
                m["model"].as_str().unwrap_or(""),
                f(&m["eps_mse"]),
                f(&m["x0_mse"]),
                q("eps_mse_by_quarter"),
                q("x0_mse_by_quarter")
            );
        }
        let _ = writeln!(
            s,
            "\nClassifier-free guidance ({} at NFE {}):\n",
            sh["cfg"]["sampler"].as_str().unwrap_or(""),
            sh["cfg"]["nfe"]
        );
        let _ = writeln!(
            s,
            "| w (s = 1 + w) | accuracy | per class ({}) | pixel SW2 |\n|---|---|---|---|",
            shapes::CLASSES.join(", ")
        );
        for r in sh["cfg"]["rows"].as_array().into_iter().flatten() {
            let pc = r["per_class"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| format!("{:.2}", f(v)))
                .collect::<Vec<_>>();
            let _ = writeln!(
                s,
                "| {} | {:.3} ± {:.3} | {} | {:.4} |",
                f(&r["w"]),
                f(&r["accuracy"]),
                f(&r["accuracy_se"]),
                pc.join(", "),
                f(&r["sw2"])
            );
        }
    }
    s
}

/// A sampler × NFE table of `metrics` (with ± s.e. where the rows have it).
fn table(s: &mut String, entry: &Value, metrics: &[(&str, usize)]) {
    let rows = entry["rows"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(s, "| sampler | {} |", NFES.map(|n| format!("NFE {n}")).join(" | "));
    let _ = writeln!(s, "|---|{}", "---|".repeat(NFES.len()));
    for sampler in SAMPLERS {
        let mine: Vec<&Value> = rows.iter().filter(|r| r["sampler"] == sampler).collect();
        if mine.is_empty() {
            continue;
        }
        let cells: Vec<String> = NFES
            .iter()
            .map(|&nfe| {
                let Some(r) = mine.iter().find(|r| r["target"] == nfe) else {
                    return "—".to_string();
                };
                let parts: Vec<String> = metrics
                    .iter()
                    .map(|(k, p)| {
                        let v = r[*k].as_f64().unwrap_or(f64::NAN);
                        match r[format!("{k}_se")].as_f64() {
                            Some(e) => format!("{v:.p$} ± {e:.p$}", p = *p),
                            None => format!("{v:.p$}", p = *p),
                        }
                    })
                    .collect();
                if r["nfe"] == nfe {
                    parts.join(" / ")
                } else {
                    format!("{} (NFE {})", parts.join(" / "), r["nfe"])
                }
            })
            .collect();
        let _ = writeln!(s, "| {sampler} | {} |", cells.join(" | "));
    }
}

fn main() -> AnyResult<()> {
    diffusion_alloc::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().filter(|a| !a.starts_with("--")).cloned().unwrap_or_else(|| "all".into());
    if !["toys", "shapes", "all", "report"].contains(&what.as_str()) {
        return Err(format!("expected toys, shapes, all or report, got {what:?}").into());
    }
    let quick = args.iter().any(|a| a == "--quick");
    let out = PathBuf::from(arg(&args, "--out").unwrap_or_else(|| "docs/quality".into()));
    let runs = PathBuf::from(arg(&args, "--runs").unwrap_or_else(|| "target/quality-runs".into()));
    std::fs::create_dir_all(&out)?;
    let device = Device::flex();
    let read = |name: &str| -> Option<Value> {
        serde_json::from_str(&std::fs::read_to_string(out.join(name)).ok()?).ok()
    };
    let mut toys_v = read("toys.json");
    let mut shapes_v = read("shapes.json");
    if what == "toys" || what == "all" {
        let v = toys(&runs, quick, &device)?;
        std::fs::write(out.join("toys.json"), serde_json::to_string_pretty(&v)?)?;
        toys_v = Some(v);
    }
    if what == "shapes" || what == "all" {
        let v = shapes(&out, &runs, quick, &device)?;
        std::fs::write(out.join("shapes.json"), serde_json::to_string_pretty(&v)?)?;
        shapes_v = Some(v);
    }
    charts(&out, toys_v.as_ref(), shapes_v.as_ref())?;
    std::fs::write(out.join("results.md"), markdown(toys_v.as_ref(), shapes_v.as_ref()))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
