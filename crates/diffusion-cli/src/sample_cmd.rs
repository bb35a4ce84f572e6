//! `diffusion sample`: draw samples from a checkpoint with any sampler.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor};
use clap::{Args, ValueEnum};
use diffusion_core::{GaussianDiffusion, SeedStream, TimestepSpacing};
use diffusion_sample::checkpoint::DenoiserNetwork;
use diffusion_sample::dpm_solver::DpmAlgorithm;
use diffusion_sample::generate::{Job, Progress, sample_images, sample_points};
use diffusion_sample::karras::{Churn, KarrasMethod};
use diffusion_sample::output::{save_grid_png, save_npz, to_images};
use diffusion_sample::unipc::UniPcVariant;
use diffusion_sample::{Method, Predictor, SampleOptions, StepSchedule, open_classifier};

use crate::plot;
use crate::process_args::{ProcessArgs, shard_range};

/// Samplers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SamplerName {
    /// Ancestral sampling.
    Ddpm,
    /// DDIM with --eta.
    Ddim,
    /// Annealed Langevin dynamics.
    Langevin,
    /// Predictor (DDPM, or DDIM with --eta) + Langevin corrector.
    Pc,
    /// DPM-Solver++ 2M (diffusers' default DPMSolverMultistepScheduler): over --sample-steps
    /// (with --spacing, --karras) or the --respace steps.
    #[value(name = "dpm++2m", alias = "dpmpp-2m")]
    Dpm2m,
    /// DPM-Solver++ 3M.
    #[value(name = "dpm++3m", alias = "dpmpp-3m")]
    Dpm3m,
    /// SDE-DPM-Solver++ 2M (stochastic).
    #[value(name = "sde-dpm++2m", alias = "dpmpp-2m-sde")]
    SdeDpm2m,
    /// UniPC (bh2, order 2, with its corrector): over --sample-steps or the --respace steps.
    #[value(name = "unipc")]
    UniPc,
    /// Euler in σ (Karras et al.), --sample-steps network calls at fractional timesteps.
    Euler,
    /// Euler-ancestral (stochastic).
    #[value(name = "euler-a")]
    EulerA,
    /// Heun (second order: 2 --sample-steps − 1 network calls).
    Heun,
}

/// Timestep spacings (Lin et al. 2023, Table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SpacingName {
    /// Evenly from the first to the last training step.
    Linspace,
    /// k ⌊T/n⌋ (+ --steps-offset).
    Leading,
    /// From the last training step down (recommended with zero-terminal SNR).
    Trailing,
}

/// Arguments of `diffusion sample`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// A diffusion-rs checkpoint (UNet or MLP).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The sampler.
    #[arg(long, value_enum, default_value = "ddpm")]
    pub sampler: SamplerName,
    /// Respacing: `250`, `10,15,20` or `ddim50`.
    #[arg(long)]
    pub respace: Option<String>,
    /// Steps of the samplers that pick their own (dpm++*, unipc, euler, euler-a, heun; default 50
    /// for euler, euler-a and heun): diffusers' `set_timesteps(N)` on the unrespaced process.
    #[arg(long, conflicts_with = "respace")]
    pub sample_steps: Option<usize>,
    /// How --sample-steps are spaced.
    #[arg(long, value_enum, default_value = "linspace", requires = "sample_steps")]
    pub spacing: SpacingName,
    /// diffusers' `steps_offset` for --spacing leading.
    #[arg(long, default_value_t = 0, requires = "sample_steps")]
    pub steps_offset: usize,
    /// Karras σ (ρ = 7) over the --sample-steps range instead of the spacing's own.
    #[arg(long, requires = "sample_steps")]
    pub karras: bool,
    /// Euler's churn S_churn (Karras et al.; 0: deterministic).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub s_churn: f64,
    /// DDIM's η (0: deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Langevin steps per level (langevin) or corrector steps (pc).
    #[arg(long, default_value_t = 1)]
    pub langevin_steps: usize,
    /// Langevin ε (step = ε σ_t²/σ_min²); default: 0.1 σ_min².
    #[arg(long)]
    pub langevin_eps: Option<f64>,
    /// The corrector's signal-to-noise ratio (pc).
    #[arg(long, default_value_t = 0.16)]
    pub snr: f64,
    /// Number of samples (before sharding).
    #[arg(long, default_value_t = 16)]
    pub num: usize,
    /// Samples per batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Seed: sample i's noise depends on (seed, i, step) only.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// This machine's share `K/N` of the samples (K from 0).
    #[arg(long)]
    pub shard: Option<String>,
    /// Class label for class-conditional models or guidance (default: drawn uniformly per sample).
    #[arg(long)]
    pub class: Option<usize>,
    /// A noise-aware classifier checkpoint for classifier guidance.
    #[arg(long, requires = "guidance_scale")]
    pub classifier: Option<PathBuf>,
    /// Guidance scale s.
    #[arg(long)]
    pub guidance_scale: Option<f64>,
    /// Classifier-free guidance scale s (diffusers' guidance_scale: 1 conditional, 3–7 typical;
    /// Ho & Salimans' w = s − 1). The network must have been trained with --label-dropout.
    #[arg(long)]
    pub cfg_scale: Option<f64>,
    /// Guidance rescale φ ∈ [0, 1] (Lin et al. 2023) with --cfg-scale.
    #[arg(long, default_value_t = 0.0, requires = "cfg_scale")]
    pub cfg_rescale: f64,
    /// Do not clip x̂_0 to [−1, 1] (images; 2-D models are never clipped).
    #[arg(long)]
    pub no_clip: bool,
    #[command(flatten)]
    pub process: ProcessArgs,
    /// For 2-D models: a point set (`swissroll`, `moons`, …) to draw under the samples and to
    /// compare them with (sliced Wasserstein-2 distance and RBF MMD²).
    #[arg(long)]
    pub data: Option<String>,
    /// Output: `.png` (grid, or scatter for 2-D models) or `.npz`.
    #[arg(long, default_value = "samples.png")]
    pub out: PathBuf,
    /// Also write every image as its own PNG into this folder (`<sample id>.png`, ids as with
    /// --shard, so shards fill one folder).
    #[arg(long)]
    pub each: Option<PathBuf>,
    /// Also write the first batch's trajectory as a PNG: for each of its samples (at most 8), a
    /// row of x_t and a row of x̂_0 every `--record-every` steps.
    #[arg(long, requires = "record_every")]
    pub trajectory: Option<PathBuf>,
    /// Record x_t and x̂_0 every this many steps (with --trajectory).
    #[arg(long)]
    pub record_every: Option<usize>,
}

/// A progress line on stderr at most every two seconds.
fn progress_printer() -> impl Fn(Progress) {
    let start = std::time::Instant::now();
    let last = std::cell::Cell::new(f64::NEG_INFINITY);
    move |p: Progress| {
        let now = start.elapsed().as_secs_f64();
        if now - last.get() >= 2.0 || p.evaluations == p.evaluations_per_batch {
            last.set(now);
            eprintln!(
                "batch {}/{}: network evaluation {}/{} ({now:.0} s)",
                p.batch, p.batches, p.evaluations, p.evaluations_per_batch
            );
        }
    }
}

/// Rows of x_t and x̂_0 at the recorded steps, for the first `n` samples, as one grid.
fn save_trajectory(path: &std::path::Path, out: &diffusion_sample::sampler::SampleOutput<4>) -> Result<()> {
    if out.trajectory.is_empty() {
        bail!("--trajectory: nothing was recorded (is --record-every larger than the number of steps?)");
    }
    let n = out.sample.dims()[0].min(8);
    let mut tiles = Vec::new();
    for s in 0..n {
        for series in [&out.trajectory, &out.pred_x0] {
            for (_, x) in series.iter() {
                tiles.push(x.clone().narrow(0, s, 1));
            }
        }
    }
    let images = to_images(Tensor::cat(tiles, 0));
    let scale = 64_usize.div_ceil(images.w.max(1)).max(1);
    diffusion_sample::output::save_grid_png_scaled(path, &images, out.trajectory.len(), scale)?;
    eprintln!(
        "wrote {} (rows: x_t then x̂_0 per sample; columns: t = {:?})",
        path.display(),
        out.trajectory.iter().map(|(t, _)| *t).collect::<Vec<_>>()
    );
    Ok(())
}

fn method(args: &SampleArgs, d: &GaussianDiffusion) -> Result<Method> {
    let karras_sampler = matches!(args.sampler, SamplerName::Euler | SamplerName::EulerA | SamplerName::Heun);
    let own_steps = karras_sampler
        || matches!(
            args.sampler,
            SamplerName::Dpm2m | SamplerName::Dpm3m | SamplerName::SdeDpm2m | SamplerName::UniPc
        );
    if args.sample_steps.is_some() && !own_steps {
        bail!(
            "--sample-steps is for dpm++2m, dpm++3m, sde-dpm++2m, unipc, euler, euler-a and heun; use --respace with {:?}",
            args.sampler
        );
    }
    if args.s_churn != 0.0 && args.sampler != SamplerName::Euler {
        bail!("--s-churn is Euler's (--sampler euler)");
    }
    if !(args.s_churn >= 0.0 && args.s_churn.is_finite()) {
        bail!("--s-churn must be a finite number ≥ 0, got {}", args.s_churn);
    }
    let schedule = match args.sample_steps.or(if karras_sampler { Some(50) } else { None }) {
        Some(0) => bail!("--sample-steps must be at least 1"),
        Some(steps) => {
            if d.timestep_map().len() != d.original_num_timesteps() {
                bail!(
                    "--sample-steps picks its own steps of the process; the checkpoint's process is already respaced"
                );
            }
            let spacing = match args.spacing {
                SpacingName::Linspace => TimestepSpacing::Linspace,
                SpacingName::Leading => TimestepSpacing::Leading { steps_offset: args.steps_offset },
                SpacingName::Trailing => TimestepSpacing::Trailing,
            };
            Some(StepSchedule { steps, spacing, karras: args.karras })
        }
        None => None,
    };
    let karras = |method| Method::Karras {
        method,
        schedule: schedule.expect("the σ samplers always have a schedule"),
        churn: Churn { s_churn: args.s_churn, ..Churn::default() },
    };
    Ok(match args.sampler {
        SamplerName::Ddpm => Method::Ddpm,
        SamplerName::Ddim => Method::Ddim { eta: args.eta },
        SamplerName::Langevin => match args.langevin_eps {
            Some(step_scale) => Method::Langevin { steps_per_level: args.langevin_steps.max(1), step_scale },
            None => Method::langevin(d, args.langevin_steps),
        },
        SamplerName::Dpm2m => Method::DpmSolver { order: 2, algorithm: DpmAlgorithm::DpmSolverPp, schedule },
        SamplerName::Dpm3m => Method::DpmSolver { order: 3, algorithm: DpmAlgorithm::DpmSolverPp, schedule },
        SamplerName::SdeDpm2m => {
            Method::DpmSolver { order: 2, algorithm: DpmAlgorithm::SdeDpmSolverPp, schedule }
        }
        SamplerName::UniPc => Method::UniPc { order: 2, variant: UniPcVariant::Bh2, schedule },
        SamplerName::Euler => karras(KarrasMethod::Euler),
        SamplerName::EulerA => karras(KarrasMethod::EulerAncestral),
        SamplerName::Heun => karras(KarrasMethod::Heun),
        SamplerName::Pc => Method::PredictorCorrector {
            predictor: if args.eta > 0.0 || args.respace.as_deref().is_some_and(|r| r.starts_with("ddim")) {
                Predictor::Ddim { eta: args.eta }
            } else {
                Predictor::Ddpm
            },
            corrector_steps: args.langevin_steps,
            snr: args.snr,
        },
    })
}

/// Runs the command.
pub fn run(args: &SampleArgs, device: &Device) -> Result<()> {
    let ext = args.out.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if ext != "png" && ext != "npz" {
        bail!("--out {}: the file must end in .png or .npz", args.out.display());
    }
    if args.guidance_scale.is_some() && args.classifier.is_none() {
        bail!("--guidance-scale needs --classifier");
    }
    let ckpt = args.process.open(&args.checkpoint, device)?;
    let d = match &args.respace {
        Some(r) => ckpt.diffusion.respace_spec(r).context("--respace")?,
        None => ckpt.diffusion.clone(),
    };
    let all: Vec<u64> = shard_range(args.num, args.shard.as_deref())?.collect();
    let cfg = match args.cfg_scale {
        Some(scale) => Some(diffusion_sample::ClassifierFree::new(scale, args.cfg_rescale)?),
        None => None,
    };
    let job = Job {
        cfg,
        diffusion: &d,
        method: method(args, &d)?,
        options: SampleOptions { clip_denoised: !args.no_clip, record_every: args.record_every },
        seed: args.seed,
        batch_size: args.batch_size,
    };
    let progress = progress_printer();
    match &ckpt.network {
        DenoiserNetwork::Unet(unet) => {
            let guidance = match (&args.classifier, args.guidance_scale) {
                (Some(path), Some(scale)) => Some(open_classifier(path, device, scale)?),
                _ => None,
            };
            let out = sample_images(&job, unet, &all, args.class, guidance.as_ref(), device, &progress)?;
            if let (Some(path), Some(first)) = (&args.trajectory, &out.first_batch) {
                save_trajectory(path, first)?;
            }
            let images = to_images(out.samples);
            if let Some(dir) = &args.each {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                for (k, id) in all.iter().enumerate() {
                    save_grid_png(&dir.join(format!("{id:06}.png")), &images.one(k), 1)?;
                }
                eprintln!("wrote {} single images into {}", images.n, dir.display());
            }
            if ext == "npz" {
                save_npz(&args.out, &images, Some(&out.labels))?;
            } else {
                let cols = (images.n as f64).sqrt().ceil() as usize;
                save_grid_png(&args.out, &images, cols)?;
            }
        }
        DenoiserNetwork::Mlp(mlp) => {
            if args.classifier.is_some() {
                bail!("classifier guidance needs an image model");
            }
            let dim = mlp.input.weight.dims()[0];
            let samples = sample_points(&job, mlp, &all, device, &progress)?;
            let pts = samples.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
            if ext == "npz" {
                let bytes: Vec<u8> = pts.iter().flat_map(|v| v.to_le_bytes()).collect();
                let entries =
                    [("arr_0.npy", diffusion_sample::output::npy("<f4", &[pts.len() / dim, dim], &bytes))];
                std::fs::write(&args.out, diffusion_sample::output::zip_stored(&entries))
                    .with_context(|| format!("writing {}", args.out.display()))?;
            } else {
                let points: Vec<(f64, f64)> =
                    pts.chunks(dim).map(|p| (f64::from(p[0]), f64::from(p[1.min(dim - 1)]))).collect();
                let mut sets = Vec::new();
                if let Some(spec) = &args.data {
                    let seed = SeedStream::ReferenceData.seed(args.seed);
                    let data = diffusion_train::data::load(&spec.parse()?, 0, seed)?;
                    let Some(real) = data.as_points() else { bail!("--data {spec}: a point set is needed") };
                    let real: Vec<[f32; 2]> = real.iter().take(points.len().max(2)).copied().collect();
                    let fake: Vec<[f32; 2]> = points.iter().map(|&(x, y)| [x as f32, y as f32]).collect();
                    let sw = diffusion_sample::metrics::sliced_wasserstein(&fake, &real, 200, args.seed);
                    // MMD is quadratic in the set size: use at most 2000 points of each.
                    let cap = fake.len().min(real.len()).min(2000);
                    let mmd = diffusion_sample::metrics::mmd_rbf(&fake[..cap], &real[..cap], 0.2);
                    println!(
                        "{} samples vs {spec}: sliced W2 {sw:.4}, MMD² (RBF, h = 0.2) {mmd:.5}",
                        fake.len()
                    );
                    sets.push(("data", real.iter().map(|p| (f64::from(p[0]), f64::from(p[1]))).collect()));
                }
                sets.push(("samples", points));
                plot::scatter(&args.out, "samples", &sets)?;
            }
        }
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
