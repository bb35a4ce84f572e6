//! `diffusion train`: a training run from a preset or a config file, with a sample grid and a
//! loss curve written at every checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::{Args, ValueEnum};
use diffusion_core::SeedStream;
use diffusion_sample::checkpoint::{DenoiserNetwork, open_denoiser};
use diffusion_sample::output::{save_grid_png_scaled, to_images};
use diffusion_sample::{Method, SampleOptions, sample};
use diffusion_train::checkpoint::SavedCheckpoint;
use diffusion_train::config::GridSampler;
use diffusion_train::log::read_metrics;
use diffusion_train::{ProgressStyle, Resume, RunOptions, TrainConfig, train};

use crate::device::DeviceSpec;
use crate::plot::{self, Panel, Series};
use crate::process_args::MeanArg;

/// Config formats for `--print-config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConfigFormat {
    /// JSON.
    Json,
    /// TOML.
    Toml,
}

/// Arguments of `diffusion train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A preset: default, swissroll, mnist, cifar10-hybrid, cifar10-vlb, tiny, tiny-mlp.
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// A config file (.json or .toml; `--print-config` writes one to start from).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data spec, overriding the config's: swissroll, moons, 8gaussians, checkerboard, shapes,
    /// mnist:DIR, cifar10:DIR, folder:DIR.
    #[arg(long)]
    pub data: Option<String>,
    /// Run directory (default: runs/PRESET, or runs/PRESET-N when that one is taken).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Optimiser steps (a fresh run whose learning rate anneals to zero at the end keeps
    /// annealing over the new length).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Examples per step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Microbatch size (gradient accumulation).
    #[arg(long)]
    pub microbatch: Option<usize>,
    /// Learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// A checkpoint every N steps.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// `auto` (newest valid checkpoint of --out, or a fresh start) or a checkpoint file.
    #[arg(long)]
    pub resume: Option<String>,
    /// Several devices for data-parallel training (comma-separated, e.g. cuda:0,cuda:1);
    /// overrides --device.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<DeviceSpec>,
    /// Plain progress lines even in a terminal (no TUI).
    #[arg(long)]
    pub plain: bool,
    /// What the network predicts (overriding the config's process.config.mean): epsilon,
    /// start-x or velocity (v-prediction, Salimans & Ho 2022).
    #[arg(long, value_enum)]
    pub prediction: Option<MeanArg>,
    /// Rescale the β schedule to zero terminal SNR (Lin et al. 2023): x_T is pure noise, as
    /// sampling starts. Needs `--prediction velocity`.
    #[arg(long)]
    pub zero_terminal_snr: bool,
    /// Classifier-free guidance training: drop each class label with this probability, learning
    /// the UNet's null class alongside (sets model.null_class; 0.1–0.2 is usual). Sample with
    /// `diffusion sample --cfg-scale S`.
    #[arg(long)]
    pub label_dropout: Option<f64>,
    /// Min-SNR-γ weighting of the MSE term (Hang et al. 2023; 5 in the paper).
    #[arg(long)]
    pub min_snr_gamma: Option<f64>,
    /// Offset noise: a per-channel 𝒩(0, 1) offset times this added to the training noise (0.1).
    #[arg(long)]
    pub offset_noise: Option<f64>,
    /// EMA warm-up with this power (diffusers' EMAModel: 2/3, or 3/4 for short runs; inv_gamma 1).
    #[arg(long)]
    pub ema_warmup_power: Option<f64>,
    /// Print the resolved config and exit.
    #[arg(long, value_enum)]
    pub print_config: Option<ConfigFormat>,
}

/// `--resume`: absent (fresh), `auto`, or a checkpoint file.
fn parse_resume(arg: Option<&str>) -> Resume {
    match arg {
        None => Resume::No,
        Some("auto") => Resume::Auto,
        Some(p) => Resume::Path(PathBuf::from(p)),
    }
}

fn pick_out_dir(name: &str) -> PathBuf {
    let base = PathBuf::from("runs");
    let taken = |p: &Path| p.join("checkpoints").read_dir().is_ok_and(|mut d| d.next().is_some());
    let first = base.join(name);
    if !taken(&first) {
        return first;
    }
    (2..).map(|i| base.join(format!("{name}-{i}"))).find(|p| !taken(p)).expect("an unused name")
}

/// Runs the command.
pub fn run(args: &TrainArgs, device: DeviceSpec) -> Result<()> {
    let resume = parse_resume(args.resume.as_deref());
    // The config: a file, a preset, or (resuming a run directory) the run's own.
    let preset_name = args.preset.clone().unwrap_or_else(|| "default".into());
    let saved_config = args.out.as_ref().map(|o| o.join("config.json")).filter(|p| p.exists());
    let mut cfg = match (&args.config, &args.preset, &resume, &saved_config) {
        (Some(path), _, _, _) => TrainConfig::from_file(path)?,
        (None, None, Resume::Auto | Resume::Path(_), Some(saved)) => TrainConfig::from_file(saved)
            .with_context(|| format!("reading the run's config {}", saved.display()))?,
        _ => TrainConfig::preset(&preset_name)?,
    };
    if let Resume::Path(p) = &resume
        && args.config.is_none()
        && args.preset.is_none()
    {
        cfg = diffusion_train::checkpoint::load_training_checkpoint(p)?.state.config;
    }
    if let Some(d) = &args.data {
        cfg.data = d.clone();
    }
    if let Some(v) = args.steps {
        // A fresh run whose learning rate anneals over the whole run keeps doing so.
        if resume == Resume::No && cfg.optim.lr_anneal_steps == cfg.steps {
            cfg.optim.lr_anneal_steps = v;
        }
        cfg.steps = v;
    }
    if let Some(v) = args.batch_size {
        cfg.batch_size = v;
    }
    if args.microbatch.is_some() {
        cfg.microbatch = args.microbatch;
    }
    if let Some(v) = args.lr {
        cfg.optim.lr = v;
    }
    if let Some(v) = args.checkpoint_every {
        cfg.checkpoint_every = v;
    }
    if let Some(v) = args.seed {
        cfg.seed = v;
    }
    if let Some(m) = args.prediction {
        cfg.process.config.mean = m.into();
    }
    if args.zero_terminal_snr {
        cfg.process.zero_terminal_snr = true;
    }
    if args.min_snr_gamma.is_some() {
        cfg.min_snr_gamma = args.min_snr_gamma;
    }
    if let Some(v) = args.offset_noise {
        cfg.offset_noise = v;
    }
    if let Some(power) = args.ema_warmup_power {
        cfg.ema_warmup = Some(diffusion_train::EmaWarmup { power, ..Default::default() });
    }
    if let Some(p) = args.label_dropout {
        cfg.label_dropout = p;
        match &mut cfg.model {
            diffusion_models::checkpoint::ModelSpec::Unet(u) if p > 0.0 => u.null_class = true,
            diffusion_models::checkpoint::ModelSpec::Unet(_) => {}
            _ => bail!("--label-dropout needs a class-conditional UNet"),
        }
    }
    // Checked before printing too: a printed config is one `--config` accepts.
    cfg.validate()?;
    if let Some(f) = args.print_config {
        match f {
            ConfigFormat::Json => println!("{}", cfg.to_json()),
            ConfigFormat::Toml => print!("{}", cfg.to_toml()?),
        }
        return Ok(());
    }
    let run_dir = match (&args.out, &resume) {
        (Some(o), _) => o.clone(),
        (None, Resume::Path(p)) => p
            .parent()
            .and_then(|c| c.parent())
            .map(Path::to_path_buf)
            .context("--resume PATH: cannot tell the run directory; pass --out")?,
        (None, _) => pick_out_dir(args.config.as_ref().map(|_| "custom").unwrap_or(&preset_name)),
    };
    let specs = if args.devices.is_empty() { vec![device] } else { args.devices.clone() };
    let devices = specs.iter().map(|d| d.device()).collect::<Result<Vec<_>>>()?;
    let hook_device = devices[0].clone();
    let hook_cfg = cfg.clone();
    let hook_dir = run_dir.clone();
    let hook = Arc::new(move |saved: &SavedCheckpoint| {
        if let Err(e) = after_checkpoint(&hook_cfg, &hook_dir, saved, &hook_device) {
            eprintln!("warning: after checkpoint {}: {e:#}", saved.path.display());
        }
    });
    eprintln!(
        "training {} on {} for {} steps (batch {}), run directory {}",
        describe(&cfg),
        specs.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","),
        cfg.steps,
        cfg.batch_size,
        run_dir.display()
    );
    let start = Instant::now();
    let summary = train(
        cfg.clone(),
        RunOptions {
            run_dir: run_dir.clone(),
            resume,
            devices,
            progress: if args.plain { ProgressStyle::Plain } else { ProgressStyle::Auto },
            on_checkpoint: Some(hook),
            ..Default::default()
        },
    )?;
    if let Some(s) = summary.resumed_from {
        eprintln!("resumed from step {s}");
    }
    eprintln!(
        "{} after {} steps in {:.1} s",
        if summary.interrupted { "stopped" } else { "done" },
        summary.steps_done,
        start.elapsed().as_secs_f64()
    );
    if let Some(c) = &summary.last_checkpoint {
        eprintln!("checkpoint: {}", c.display());
    }
    eprintln!(
        "samples: {}  loss curve: {}  metrics: {}",
        run_dir.join("samples.png").display(),
        run_dir.join("loss.png").display(),
        run_dir.join("metrics.csv").display()
    );
    Ok(())
}

fn describe(cfg: &TrainConfig) -> String {
    let kind = match &cfg.model {
        diffusion_models::checkpoint::ModelSpec::Unet(u) => format!("a UNet ({} channels)", u.model_channels),
        diffusion_models::checkpoint::ModelSpec::Mlp(m) => format!("an MLP ({} wide)", m.hidden),
        diffusion_models::checkpoint::ModelSpec::Classifier(_) => "a classifier".into(),
    };
    format!("{kind} on {:?} with {:?}/{:?}", cfg.data, cfg.process.config.mean, cfg.process.config.loss)
}

/// After each checkpoint: a sample grid (or scatter) from its primary weights, and the loss curve.
fn after_checkpoint(cfg: &TrainConfig, dir: &Path, saved: &SavedCheckpoint, device: &Device) -> Result<()> {
    plot_losses(dir)?;
    let every = cfg.sample.every_checkpoints;
    if every == 0 || !(saved.epoch as u64).is_multiple_of(every) {
        return Ok(());
    }
    let ckpt = open_denoiser(&saved.path, device, None)?;
    let steps = cfg.sample.steps.max(1);
    let (d, method) = match cfg.sample.sampler {
        GridSampler::Ddpm => (ckpt.diffusion.respace_spec(&steps.to_string())?, Method::Ddpm),
        GridSampler::Ddim => {
            (ckpt.diffusion.respace_spec(&format!("ddim{steps}"))?, Method::Ddim { eta: 0.0 })
        }
    };
    let noise = SeedStream::TrainingGrid.source(cfg.seed);
    let options = SampleOptions { clip_denoised: true, record_every: None };
    let ids: Vec<u64> = (0..cfg.sample.num as u64).collect();
    let samples_dir = dir.join("samples");
    std::fs::create_dir_all(&samples_dir).with_context(|| format!("creating {}", samples_dir.display()))?;
    let file = samples_dir.join(format!("step-{:08}.png", saved.step));
    match &ckpt.network {
        DenoiserNetwork::Unet(unet) => {
            // Class-conditional: column c shows class c.
            let classes = unet.num_classes.max(1);
            let cols = if unet.num_classes > 0 { classes } else { (ids.len() as f64).sqrt().ceil() as usize };
            let y = (unet.num_classes > 0).then(|| {
                let v: Vec<i64> = ids.iter().map(|&i| (i as usize % classes) as i64).collect();
                Tensor::<1, Int>::from_data(TensorData::new(v, [ids.len()]), device)
            });
            let model = |x: Tensor<4>, t: Tensor<1>| unet.forward(x, t, y.clone());
            let item = [1, unet.in_channels, unet.image_size, unet.image_size];
            let out = sample(&d, &model, &ids, item, &noise, method, &options, None, device)?;
            let images = to_images(out.sample);
            // Tiles of at least 64 pixels, so that 16×16 samples can be seen.
            save_grid_png_scaled(&file, &images, cols, 64_usize.div_ceil(images.w.max(1)))?;
        }
        DenoiserNetwork::Mlp(mlp) => {
            let model = |x: Tensor<2>, t: Tensor<1>| mlp.forward(x, t);
            // Points are not confined to [−1, 1].
            let options = SampleOptions { clip_denoised: false, ..options };
            let out = sample(&d, &model, &ids, [1, 2], &noise, method, &options, None, device)?;
            let v = out.sample.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
            let pts: Vec<(f64, f64)> = v.chunks(2).map(|p| (f64::from(p[0]), f64::from(p[1]))).collect();
            let data =
                diffusion_train::data::load(&cfg.data.parse()?, 0, SeedStream::ReferenceData.seed(cfg.seed))?;
            let mut sets = Vec::new();
            if let Some(real) = data.as_points() {
                sets.push((
                    "data",
                    real.iter().take(2000).map(|p| (f64::from(p[0]), f64::from(p[1]))).collect(),
                ));
            }
            sets.push(("samples", pts));
            plot::scatter(&file, &format!("samples at step {}", saved.step), &sets)?;
        }
    }
    std::fs::copy(&file, dir.join("samples.png")).context("copying the newest grid")?;
    Ok(())
}

/// Moving average over a window of `w` points.
fn smooth(points: &[(f64, f64)], w: usize) -> Vec<(f64, f64)> {
    let w = w.max(1);
    let mut out = Vec::with_capacity(points.len());
    let mut sum = 0.0;
    for (i, &(x, y)) in points.iter().enumerate() {
        sum += y;
        if i >= w {
            sum -= points[i - w].1;
        }
        out.push((x, sum / (i + 1).min(w) as f64));
    }
    out
}

/// `loss.png`: the training loss (smoothed) and the held-out loss against the step, and the
/// loss of each quarter of the timesteps.
fn plot_losses(dir: &Path) -> Result<()> {
    let rows = read_metrics(&dir.join("metrics.csv"))?;
    let log10 = |v: f64| if v > 0.0 { v.log10() } else { f64::NAN };
    let train: Vec<(f64, f64)> =
        rows.iter().filter(|r| r.split == "train").map(|r| (r.step as f64, log10(r.loss))).collect();
    let valid: Vec<(f64, f64)> =
        rows.iter().filter(|r| r.split == "valid").map(|r| (r.step as f64, log10(r.loss))).collect();
    let w = (train.len() / 50).max(1);
    let mut quartiles = Vec::new();
    for (q, label) in ["t in [0, T/4)", "[T/4, T/2)", "[T/2, 3T/4)", "[3T/4, T)"].iter().enumerate() {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.split == "train" && r.quartiles[q].is_finite())
            .map(|r| (r.step as f64, log10(r.quartiles[q])))
            .collect();
        quartiles.push(Series { label, points: smooth(&pts, w) });
    }
    let panels = [
        Panel {
            title: "loss",
            x_label: "step",
            y_label: "log10 loss",
            series: vec![
                Series { label: "train (moving average)", points: smooth(&train, w) },
                Series { label: "held-out", points: valid },
            ],
        },
        Panel {
            title: "training loss by timestep quarter",
            x_label: "step",
            y_label: "log10 loss",
            series: quartiles,
        },
    ];
    plot::line_panels(&dir.join("loss.png"), "training", &panels)
}

/// Arguments of `diffusion train-classifier`.
#[derive(Debug, Args)]
pub struct TrainClassifierArgs {
    /// A preset: shapes (guides the `default` diffusion preset), tiny.
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// A config file (.json; `--print-config` writes one to start from).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Labelled image data, overriding the config's.
    #[arg(long)]
    pub data: Option<String>,
    /// Run directory (default: runs/classifier-PRESET[-N]).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Optimiser steps.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Examples per step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// `auto` or a checkpoint file.
    #[arg(long)]
    pub resume: Option<String>,
    /// Plain progress lines even in a terminal.
    #[arg(long)]
    pub plain: bool,
    /// Print the resolved config (JSON) and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Runs `diffusion train-classifier`.
pub fn run_classifier(args: &TrainClassifierArgs, device: DeviceSpec) -> Result<()> {
    use diffusion_train::ClassifierConfig;
    let resume = parse_resume(args.resume.as_deref());
    let preset = args.preset.clone().unwrap_or_else(|| "shapes".into());
    let saved = args.out.as_ref().map(|o| o.join("config.json")).filter(|p| p.exists());
    let mut cfg: ClassifierConfig = match (&args.config, &args.preset, &resume, &saved) {
        (Some(path), _, _, _) | (None, None, Resume::Auto | Resume::Path(_), Some(path)) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?
        }
        _ => ClassifierConfig::preset(&preset)?,
    };
    if let Some(d) = &args.data {
        cfg.data = d.clone();
    }
    if let Some(v) = args.steps {
        cfg.steps = v;
    }
    if let Some(v) = args.batch_size {
        cfg.batch_size = v;
    }
    if args.print_config {
        println!("{}", serde_json::to_string_pretty(&cfg)?);
        return Ok(());
    }
    let run_dir = args.out.clone().unwrap_or_else(|| pick_out_dir(&format!("classifier-{preset}")));
    eprintln!(
        "training a noise-aware classifier ({} classes) on {:?} for {} steps, run directory {}",
        cfg.model.unet.out_channels,
        cfg.data,
        cfg.steps,
        run_dir.display()
    );
    let plot_dir = run_dir.clone();
    let hook = Arc::new(move |saved: &SavedCheckpoint| {
        if let Err(e) = plot_losses(&plot_dir) {
            eprintln!("warning: after checkpoint {}: {e:#}", saved.path.display());
        }
    });
    let summary = diffusion_train::train_classifier(
        cfg,
        RunOptions {
            run_dir: run_dir.clone(),
            resume,
            devices: vec![device.device()?],
            progress: if args.plain { ProgressStyle::Plain } else { ProgressStyle::Auto },
            on_checkpoint: Some(hook),
            ..Default::default()
        },
    )?;
    eprintln!(
        "done after {} steps; held-out top-1 accuracy {}",
        summary.steps_done,
        summary.final_accuracy.map(|a| format!("{:.1}%", 100.0 * a)).unwrap_or_else(|| "n/a".into())
    );
    if let Some(c) = &summary.last_checkpoint {
        eprintln!("classifier checkpoint: {} (use with `diffusion sample --classifier`)", c.display());
    }
    Ok(())
}
