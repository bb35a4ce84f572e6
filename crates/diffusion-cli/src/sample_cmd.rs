//! `diffusion sample`: draw samples from a checkpoint with any sampler.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::{Args, ValueEnum};
use diffusion_core::{BetaSchedule, DiffusionConfig, GaussianDiffusion, ModelVariance, ProcessSpec};
use diffusion_models::checkpoint::{AnyModel, load_checkpoint};
use diffusion_models::{EncoderUNet, UNet};
use diffusion_sample::output::{save_grid_png, save_npz, to_images};
use diffusion_sample::sampler::{Predictor, sample};
use diffusion_sample::{Guidance, Method, NoiseSource, SampleOptions};

use crate::plot;

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
}

/// The process to use when a checkpoint does not record one (shared by the commands that run a
/// network through the diffusion process).
#[derive(Debug, Clone, Args)]
pub struct FallbackProcess {
    /// Process when the checkpoint does not record one: schedule name…
    #[arg(long, default_value = "linear")]
    pub schedule: String,
    /// …and its number of steps.
    #[arg(long, default_value_t = 1000)]
    pub steps: usize,
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
    /// Do not clip x̂_0 to [−1, 1] (images; 2-D models are never clipped).
    #[arg(long)]
    pub no_clip: bool,
    #[command(flatten)]
    pub process: FallbackProcess,
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

/// A progress line on stderr at most every two seconds, counting network evaluations.
struct Progress {
    start: std::time::Instant,
    last: std::cell::Cell<f64>,
    calls: std::cell::Cell<usize>,
    per_batch: usize,
    label: String,
}

impl Progress {
    fn new(label: String, per_batch: usize) -> Self {
        Self {
            start: std::time::Instant::now(),
            last: std::cell::Cell::new(0.0),
            calls: std::cell::Cell::new(0),
            per_batch,
            label,
        }
    }

    fn tick(&self) {
        self.calls.set(self.calls.get() + 1);
        let now = self.start.elapsed().as_secs_f64();
        if now - self.last.get() >= 2.0 {
            self.last.set(now);
            eprintln!(
                "{}: network evaluation {}/{} ({:.0} s)",
                self.label,
                self.calls.get().min(self.per_batch),
                self.per_batch,
                now
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

/// `K/N` → the contiguous range of sample ids of shard K.
pub fn shard_range(num: usize, shard: Option<&str>) -> Result<std::ops::Range<u64>> {
    let Some(s) = shard else { return Ok(0..num as u64) };
    let (k, n) = s.split_once('/').with_context(|| format!("--shard {s:?}: expected K/N, e.g. 0/4"))?;
    let (k, n): (usize, usize) = (
        k.parse().with_context(|| format!("--shard {s:?}: K"))?,
        n.parse().with_context(|| format!("--shard {s:?}: N"))?,
    );
    if n == 0 || k >= n {
        bail!("--shard {s:?}: need 0 <= K < N");
    }
    Ok((num * k / n) as u64..(num * (k + 1) / n) as u64)
}

fn process(
    args: &SampleArgs,
    extra: &serde_json::Value,
    out_channels: usize,
    in_channels: usize,
) -> Result<GaussianDiffusion> {
    process_for(extra, &args.process, args.respace.as_deref(), out_channels, in_channels)
}

/// The process a checkpoint records (`extra.diffusion`), or one from a schedule name and steps
/// with the variance inferred from the output channels; respaced when asked.
pub fn process_for(
    extra: &serde_json::Value,
    fallback: &FallbackProcess,
    respace: Option<&str>,
    out_channels: usize,
    in_channels: usize,
) -> Result<GaussianDiffusion> {
    let spec = match extra.get("diffusion") {
        Some(v) => serde_json::from_value::<ProcessSpec>(v.clone())
            .context("the checkpoint's process description")?,
        None => ProcessSpec {
            schedule: BetaSchedule::named(&fallback.schedule, fallback.steps)?,
            config: DiffusionConfig {
                variance: if out_channels == 2 * in_channels {
                    ModelVariance::LearnedRange
                } else {
                    ModelVariance::FixedSmall
                },
                ..Default::default()
            },
        },
    };
    let d = spec.build()?;
    Ok(match respace {
        Some(r) => d.respace_spec(r).context("--respace")?,
        None => d,
    })
}

fn method(args: &SampleArgs, d: &GaussianDiffusion) -> Method {
    let ab0 = d.tables().alphas_cumprod[0];
    match args.sampler {
        SamplerName::Ddpm => Method::Ddpm,
        SamplerName::Ddim => Method::Ddim { eta: args.eta },
        SamplerName::Langevin => Method::Langevin {
            steps_per_level: args.langevin_steps.max(1),
            step_scale: args.langevin_eps.unwrap_or(0.1 * (1.0 - ab0) / ab0),
        },
        SamplerName::Pc => Method::PredictorCorrector {
            predictor: if args.eta > 0.0 || args.respace.as_deref().is_some_and(|r| r.starts_with("ddim")) {
                Predictor::Ddim { eta: args.eta }
            } else {
                Predictor::Ddpm
            },
            corrector_steps: args.langevin_steps,
            snr: args.snr,
        },
    }
}

/// s · ∇_x log p(y | x_t) from a classifier on an autodiff device.
struct ClassifierGuidance {
    classifier: EncoderUNet,
    labels: Tensor<1, Int>,
    scale: f64,
}

impl Guidance<4> for ClassifierGuidance {
    fn gradient(&self, x: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        let x = x.detach().autodiff().require_grad();
        let logits = self.classifier.forward(x.clone(), t.autodiff());
        let b = logits.dims()[0];
        let picked = log_softmax(logits, 1).gather(1, self.labels.clone().autodiff().reshape([b, 1]));
        let grads = picked.sum().backward();
        x.grad(&grads).expect("x requires grad").mul_scalar(self.scale)
    }
}

fn labels(args: &SampleArgs, ids: &[u64], classes: usize, device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = ids
        .iter()
        .map(|&i| match args.class {
            Some(c) => c as i64,
            // Uniform, and a function of (seed, id) like the noise.
            None => NoiseSource::new(args.seed ^ 0xC1A55).index(i, 0, classes) as i64,
        })
        .collect();
    Tensor::from_data(TensorData::new(v, [ids.len()]), device)
}

/// Runs the command.
pub fn run(args: &SampleArgs, device: &Device) -> Result<()> {
    let (header, model) = load_checkpoint(&args.checkpoint, device)?;
    let range = shard_range(args.num, args.shard.as_deref())?;
    let all: Vec<u64> = range.collect();
    let noise = NoiseSource::new(args.seed);
    let options = SampleOptions { clip_denoised: !args.no_clip, record_every: args.record_every };
    let ext = args.out.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if ext != "png" && ext != "npz" {
        bail!("--out {}: the file must end in .png or .npz", args.out.display());
    }
    match model {
        AnyModel::Unet(unet) => {
            let d = process(args, &header.extra, unet.out_channels, unet.in_channels)?;
            let m = method(args, &d);
            let guidance = match (&args.classifier, args.guidance_scale) {
                (Some(path), Some(scale)) => {
                    let (_, clf) = load_checkpoint(path, &device.clone().autodiff())?;
                    let AnyModel::Classifier(classifier) = clf else {
                        bail!("{}: not a classifier checkpoint", path.display())
                    };
                    Some((classifier, scale))
                }
                (None, Some(_)) => bail!("--guidance-scale needs --classifier"),
                _ => None,
            };
            let classes = if unet.num_classes > 0 {
                unet.num_classes
            } else if let Some((c, _)) = &guidance {
                c.out_classes()
            } else {
                1
            };
            let mut chunks = Vec::new();
            let mut all_labels = Vec::new();
            let batches = all.len().div_ceil(args.batch_size.max(1));
            let evals = d.num_timesteps()
                * match m {
                    Method::Langevin { steps_per_level, .. } => steps_per_level + 1,
                    Method::PredictorCorrector { corrector_steps, .. } => corrector_steps + 1,
                    _ => 1,
                };
            for (b, ids) in all.chunks(args.batch_size.max(1)).enumerate() {
                let progress = Progress::new(format!("batch {}/{batches}", b + 1), evals);
                let y = labels(args, ids, classes, device);
                all_labels
                    .extend(y.clone().into_data().convert::<i64>().try_to_vec::<i64>().unwrap_or_default());
                let cond = (unet.num_classes > 0).then(|| y.clone());
                let model = |x: Tensor<4>, t: Tensor<1>| {
                    progress.tick();
                    forward_unet(&unet, x, t, cond.clone())
                };
                let g = guidance.as_ref().map(|(c, s)| ClassifierGuidance {
                    classifier: c.clone(),
                    labels: y.clone(),
                    scale: *s,
                });
                let item = [1, unet.in_channels, unet.image_size, unet.image_size];
                let out = sample(
                    &d,
                    &model,
                    ids,
                    item,
                    &noise,
                    m,
                    &options,
                    g.as_ref().map(|g| g as &dyn Guidance<4>),
                    device,
                );
                if b == 0
                    && let Some(path) = &args.trajectory
                {
                    save_trajectory(path, &out)?;
                }
                chunks.push(out.sample);
                eprintln!(
                    "sampled batch {}/{} ({} images)",
                    b + 1,
                    all.len().div_ceil(args.batch_size.max(1)),
                    ids.len()
                );
            }
            let images = to_images(Tensor::cat(chunks, 0));
            if let Some(dir) = &args.each {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                for (k, id) in all.iter().enumerate() {
                    save_grid_png(&dir.join(format!("{id:06}.png")), &images.one(k), 1)?;
                }
                eprintln!("wrote {} single images into {}", images.n, dir.display());
            }
            if ext == "npz" {
                save_npz(&args.out, &images, Some(&all_labels))?;
            } else {
                let cols = (images.n as f64).sqrt().ceil() as usize;
                save_grid_png(&args.out, &images, cols)?;
            }
        }
        AnyModel::Mlp(mlp) => {
            let d = process(args, &header.extra, mlp.output.weight.dims()[1], mlp.input.weight.dims()[0])?;
            let m = method(args, &d);
            // Points are not confined to [−1, 1]: x̂_0 is never clipped for 2-D models.
            let options = SampleOptions { clip_denoised: false, ..options };
            if args.classifier.is_some() {
                bail!("classifier guidance needs an image model");
            }
            let dim = mlp.input.weight.dims()[0];
            let model = |x: Tensor<2>, t: Tensor<1>| mlp.forward(x, t);
            let mut pts = Vec::new();
            for ids in all.chunks(args.batch_size.max(1)) {
                let out = sample(&d, &model, ids, [1, dim], &noise, m, &options, None, device);
                pts.extend(out.sample.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default());
            }
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
                    let data = diffusion_train::data::load(&spec.parse()?, 0, args.seed.wrapping_add(1))?;
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
        AnyModel::Classifier(_) => {
            bail!("{}: a classifier cannot be sampled from", args.checkpoint.display())
        }
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn forward_unet(unet: &UNet, x: Tensor<4>, t: Tensor<1>, y: Option<Tensor<1, Int>>) -> Tensor<4> {
    unet.forward(x, t, y)
}
