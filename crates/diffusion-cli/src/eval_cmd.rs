//! `diffusion eval nll`: bits/dim on held-out data with the full variational bound (or a
//! stratified estimate with a confidence interval), a per-term CSV and a plot of L_t against t.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use clap::{Args, Subcommand};
use diffusion_core::SeedStream;
use diffusion_sample::NoiseSource;
use diffusion_sample::checkpoint::DenoiserNetwork;
use diffusion_sample::likelihood::{
    BoundEstimate, TermTotals, continuous_bound, full_bound, stratified_bound,
};
use diffusion_train::data::{DataSpec, ImageSet, cifar, folder, mnist, shapes};

use crate::plot::{Panel, Series, line_panels};
use crate::process_args::ProcessArgs;

/// `diffusion eval …`.
#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Negative log-likelihood in bits/dim.
    Nll(NllArgs),
}

/// Arguments of `diffusion eval nll`.
#[derive(Debug, Args)]
pub struct NllArgs {
    /// A UNet checkpoint.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Held-out data: `shapes` (a fresh seed), `mnist:DIR` / `cifar10:DIR` (test split), `folder:DIR`.
    #[arg(long, default_value = "shapes")]
    pub data: String,
    /// Images to evaluate.
    #[arg(long, default_value_t = 16)]
    pub num: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Seed of the noise (and of the drawn timesteps).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// 0: the full bound over every t; K > 0: a stratified estimate with K timesteps per image.
    #[arg(long, default_value_t = 0)]
    pub strata: usize,
    /// Per-timestep terms (full bound only) as CSV.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Plot of L_t against t (full bound only).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub process: ProcessArgs,
}

fn held_out(spec: &DataSpec, size: usize, seed: u64) -> Result<ImageSet> {
    Ok(match spec {
        DataSpec::Shapes => {
            // Fresh shapes (another seed than training's), box-filtered to the model's size.
            let set = shapes::generate(1024, SeedStream::HeldOutData.seed(seed));
            if size > 0 && size < shapes::SIZE && shapes::SIZE.is_multiple_of(size) {
                set.downsample(shapes::SIZE / size)
            } else {
                set
            }
        }
        DataSpec::Mnist(dir) => mnist::load_dir(dir, false)?,
        DataSpec::Cifar10(dir) => cifar::load_dir(dir, false)?,
        DataSpec::Folder(dir) => folder::load(dir, Some(size))?,
        DataSpec::Synthetic { .. } => {
            let Some(set) = diffusion_train::data::load(spec, size, SeedStream::HeldOutData.seed(seed))?
                .as_images()
                .cloned()
            else {
                bail!("synthetic data should be images")
            };
            set
        }
        DataSpec::Points(_) => bail!("point sets are evaluated with a 2-D (MLP) checkpoint"),
    })
}

/// Runs the command.
pub fn run(cmd: &EvalCommand, device: &Device, out: &mut dyn Write) -> Result<()> {
    let EvalCommand::Nll(args) = cmd;
    let ckpt = args.process.open(&args.checkpoint, device)?;
    let d = ckpt.diffusion;
    let unet = match ckpt.network {
        DenoiserNetwork::Unet(unet) => unet,
        DenoiserNetwork::Mlp(mlp) => return points_nll(args, &d, &mlp, device, out),
    };
    let spec: DataSpec = args.data.parse()?;
    let data = held_out(&spec, unet.image_size, args.seed)?;
    if (data.channels, data.size) != (unet.in_channels, unet.image_size) {
        bail!(
            "--data {}: images are {}×{}×{}, the model takes {}×{}×{}",
            args.data,
            data.channels,
            data.size,
            data.size,
            unet.in_channels,
            unet.image_size,
            unet.image_size
        );
    }
    let n = args.num.min(data.len());
    if n == 0 {
        bail!("--num must be at least 1");
    }
    let cond = unet.num_classes > 0;
    let noise = NoiseSource::new(args.seed);
    let (s, c) = (data.size, data.channels);
    let mut per_image = Vec::new();
    let mut sums = TermTotals::default();
    for chunk in (0..n).collect::<Vec<_>>().chunks(args.batch_size.max(1)) {
        let ids: Vec<u64> = chunk.iter().map(|&i| i as u64).collect();
        let pix: Vec<f32> = chunk.iter().flat_map(|&i| data.image_f32(i, false)).collect();
        let x0 = Tensor::<4>::from_data(TensorData::new(pix, [chunk.len(), c, s, s]), device);
        let y = cond.then(|| {
            let l: Vec<i64> = chunk.iter().map(|&i| (data.labels[i] % unet.num_classes) as i64).collect();
            Tensor::<1, burn::tensor::Int>::from_data(TensorData::new(l, [chunk.len()]), device)
        });
        let model = |x: Tensor<4>, t: Tensor<1>| unet.forward(x, t, y.clone());
        if args.strata > 0 {
            let e = stratified_bound(&d, &model, x0, &ids, &noise, args.strata, args.seed, true);
            per_image.extend(e.per_image);
        } else {
            sums.add(full_bound(&d, &model, x0, &ids, &noise, true));
        }
        eprintln!("evaluated {}/{n} images", per_image.len() + sums.images);
    }
    per_image.extend(sums.per_image.iter().copied());
    let est = BoundEstimate::from_values(per_image);
    let how = if args.strata > 0 {
        format!("stratified estimate, {} timesteps per image", args.strata)
    } else {
        "full bound".into()
    };
    writeln!(
        out,
        "NLL: {:.4} ± {:.4} bits/dim (95% CI) over {n} images ({how}, T = {})",
        est.mean,
        est.ci95,
        d.num_timesteps()
    )?;
    if sums.images > 0 {
        let (vb, x0m, em) = (sums.mean_vb(), sums.mean_x0_mse(), sums.mean_eps_mse());
        writeln!(out, "  prior L_T: {:.6} bits/dim", sums.mean_prior())?;
        writeln!(out, "  decoder L_0: {:.6} bits/dim", sums.mean_decoder())?;
        writeln!(out, "  sum of L_t (t >= 1): {:.6} bits/dim", sums.mean_sum_of_terms())?;
        if let Some(path) = &args.csv {
            let mut f =
                std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
            writeln!(f, "t,timestep,vb_bpd,x0_mse,eps_mse")?;
            for t in 0..vb.len() {
                writeln!(f, "{t},{},{:?},{:?},{:?}", d.timestep_map()[t], vb[t], x0m[t], em[t])?;
            }
        }
        if let Some(path) = &args.plot {
            let pts: Vec<(f64, f64)> = vb
                .iter()
                .enumerate()
                .map(|(t, v)| (d.timestep_map()[t] as f64, v.max(1e-12).log10()))
                .collect();
            line_panels(
                path,
                &format!("variational bound terms, NLL {:.3} bits/dim", est.mean),
                &[Panel {
                    title: "L_t (log10 bits/dim)",
                    x_label: "t",
                    y_label: "log10 L_t",
                    series: vec![Series { label: "L_t", points: pts }],
                }],
            )?;
        }
    } else if args.csv.is_some() || args.plot.is_some() {
        bail!("--csv and --plot describe every L_t, so they need the full bound (--strata 0)");
    }
    Ok(())
}

/// The bound for a 2-D model on held-out points of `--data` (a point set), in nats per point.
fn points_nll(
    args: &NllArgs,
    d: &diffusion_core::GaussianDiffusion,
    mlp: &diffusion_models::Mlp,
    device: &Device,
    out: &mut dyn Write,
) -> Result<()> {
    let dim = mlp.input.weight.dims()[0];
    let spec: DataSpec = args.data.parse()?;
    let DataSpec::Points(toy) = spec else {
        bail!(
            "--data {}: a 2-D model is evaluated on a point set (swissroll, moons, 8gaussians, checkerboard)",
            args.data
        )
    };
    if args.strata > 0 || args.csv.is_some() || args.plot.is_some() {
        bail!("for 2-D models eval nll computes the full bound only (no --strata, --csv or --plot)");
    }
    let n = args.num;
    if n == 0 {
        bail!("--num must be at least 1");
    }
    // Held-out: another seed than any training run's data.
    let pts = toy.sample(n, SeedStream::HeldOutData.seed(args.seed));
    let noise = NoiseSource::new(args.seed);
    let model = |x: Tensor<2>, t: Tensor<1>| mlp.forward(x, t);
    let mut per_point = Vec::with_capacity(n);
    for (k, chunk) in pts.chunks(args.batch_size.max(1)).enumerate() {
        let ids: Vec<u64> = (0..chunk.len()).map(|i| (k * args.batch_size.max(1) + i) as u64).collect();
        let flat: Vec<f32> = chunk.iter().flat_map(|p| p.iter().copied()).collect();
        let x0 = Tensor::<2>::from_data(TensorData::new(flat, [chunk.len(), dim]), device);
        let nats = continuous_bound(d, &model, x0, &ids, &noise);
        per_point.extend(nats.into_data().convert::<f64>().try_to_vec::<f64>().unwrap_or_default());
        eprintln!("evaluated {}/{n} points", per_point.len());
    }
    let est = BoundEstimate::from_values(per_point);
    writeln!(
        out,
        "NLL: {:.4} ± {:.4} nats/point (95% CI; upper bound with a continuous Gaussian decoder) over {n} points of {} (T = {})",
        est.mean,
        est.ci95,
        args.data,
        d.num_timesteps()
    )?;
    Ok(())
}
