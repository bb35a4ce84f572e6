//! `diffusion interpolate` and `diffusion invert`: DDIM's deterministic latent space.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Args;
use diffusion_core::GaussianDiffusion;
use diffusion_models::UNet;
use diffusion_sample::checkpoint::DenoiserNetwork;
use diffusion_sample::generate::fixed_labels;
use diffusion_sample::output::{save_grid_png, to_images};
use diffusion_sample::sampler::sample_from;
use diffusion_sample::{Method, NoiseSource, SampleOptions, ddim_reverse_loop, slerp};
use diffusion_train::data::{DataSpec, ImageSet, load};

use crate::process_args::ProcessArgs;

/// Arguments shared by the latent-space commands.
#[derive(Debug, Args)]
pub struct LatentCommon {
    /// A UNet checkpoint.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Respacing of the deterministic DDIM chain.
    #[arg(long, default_value = "ddim50")]
    pub respace: String,
    /// Class label for class-conditional models.
    #[arg(long, default_value_t = 0)]
    pub class: usize,
    #[command(flatten)]
    pub process: ProcessArgs,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `diffusion interpolate`.
#[derive(Debug, Args)]
pub struct InterpolateArgs {
    #[command(flatten)]
    common: LatentCommon,
    /// Interpolate between two images of this dataset (inverted with DDIM)…
    #[arg(long)]
    pub data: Option<String>,
    /// …at these indices.
    #[arg(long, num_args = 2, default_values_t = [0, 1])]
    pub images: Vec<usize>,
    /// Otherwise between the noises of these two seeds.
    #[arg(long, num_args = 2, default_values_t = [0, 1])]
    pub seeds: Vec<u64>,
    /// Frames of the strip, endpoints included.
    #[arg(long, default_value_t = 8)]
    pub frames: usize,
}

/// Arguments of `diffusion invert`.
#[derive(Debug, Args)]
pub struct InvertArgs {
    #[command(flatten)]
    common: LatentCommon,
    /// Images to invert.
    #[arg(long, default_value = "shapes")]
    pub data: String,
    /// How many (the first N).
    #[arg(long, default_value_t = 8)]
    pub num: usize,
}

struct Ctx {
    unet: UNet,
    d: GaussianDiffusion,
    device: Device,
    class: usize,
}

impl Ctx {
    fn new(c: &LatentCommon, device: &Device) -> Result<Self> {
        let ckpt = c.process.open(&c.checkpoint, device)?;
        let DenoiserNetwork::Unet(unet) = ckpt.network else {
            bail!("{}: a UNet checkpoint is needed", c.checkpoint.display())
        };
        let d = ckpt.diffusion.respace_spec(&c.respace)?;
        Ok(Self { unet, d, device: device.clone(), class: c.class })
    }

    fn item(&self) -> [usize; 4] {
        [1, self.unet.in_channels, self.unet.image_size, self.unet.image_size]
    }

    fn y(&self, n: usize) -> Result<Option<Tensor<1, Int>>> {
        fixed_labels(&self.unet, n, self.class, &self.device).context("--class")
    }

    fn decode(&self, x_t: Tensor<4>) -> Result<Tensor<4>> {
        let n = x_t.dims()[0];
        let y = self.y(n)?;
        let model = |x: Tensor<4>, t: Tensor<1>| self.unet.forward(x, t, y.clone());
        let ids: Vec<u64> = (0..n as u64).collect();
        // No clipping: the deterministic chain must stay invertible.
        let opts = SampleOptions { clip_denoised: false, record_every: None };
        let method = Method::Ddim { eta: 0.0 };
        Ok(sample_from(
            &self.d,
            &model,
            &ids,
            self.item(),
            &NoiseSource::new(0),
            method,
            &opts,
            None,
            Some(x_t),
            &self.device,
        )?
        .sample)
    }

    fn encode(&self, x0: Tensor<4>) -> Result<Tensor<4>> {
        let y = self.y(x0.dims()[0])?;
        let model = |x: Tensor<4>, t: Tensor<1>| self.unet.forward(x, t, y.clone());
        Ok(ddim_reverse_loop(&self.d, &model, x0)?)
    }

    fn images(&self, spec: &str, idx: &[usize]) -> Result<Tensor<4>> {
        let data = load(&spec.parse::<DataSpec>()?, self.unet.image_size, 0)?;
        let Some(set) = data.as_images() else { bail!("--data {spec}: an image dataset is needed") };
        check_fits(set, &self.unet, spec)?;
        if let Some(&bad) = idx.iter().find(|&&i| i >= set.len()) {
            bail!("--data {spec}: image {bad} is out of range (the set has {})", set.len());
        }
        let (c, s) = (set.channels, set.size);
        let pix: Vec<f32> = idx.iter().flat_map(|&i| set.image_f32(i, false)).collect();
        Ok(Tensor::from_data(TensorData::new(pix, [idx.len(), c, s, s]), &self.device))
    }
}

fn check_fits(set: &ImageSet, unet: &UNet, spec: &str) -> Result<()> {
    if (set.channels, set.size) != (unet.in_channels, unet.image_size) {
        bail!(
            "--data {spec}: images are {}×{}×{}, the model takes {}×{}×{}",
            set.channels,
            set.size,
            set.size,
            unet.in_channels,
            unet.image_size,
            unet.image_size
        );
    }
    Ok(())
}

/// Runs `diffusion interpolate`: a strip from one latent to the other along the great circle.
pub fn interpolate(args: &InterpolateArgs, device: &Device) -> Result<()> {
    let ctx = Ctx::new(&args.common, device)?;
    if args.frames < 2 {
        bail!("--frames must be at least 2");
    }
    let (a, b) = match &args.data {
        Some(spec) => {
            let z = ctx.encode(ctx.images(spec, &args.images)?)?;
            (z.clone().narrow(0, 0, 1), z.narrow(0, 1, 1))
        }
        None => {
            let z = |seed: u64| {
                NoiseSource::new(seed).batch(&[0], diffusion_sample::noise::INITIAL_STEP, ctx.item(), device)
            };
            (z(args.seeds[0]), z(args.seeds[1]))
        }
    };
    let frames: Vec<Tensor<4>> =
        (0..args.frames).map(|k| slerp(a.clone(), b.clone(), k as f64 / (args.frames - 1) as f64)).collect();
    let strip = ctx.decode(Tensor::cat(frames, 0))?;
    save_grid_png(&args.common.out, &to_images(strip), args.frames)?;
    eprintln!("wrote {}", args.common.out.display());
    Ok(())
}

/// Runs `diffusion invert`: encodes images to x_T with DDIM and decodes them back; writes the
/// originals (top row) over their reconstructions and prints the reconstruction error.
pub fn invert(args: &InvertArgs, device: &Device, out: &mut dyn Write) -> Result<()> {
    let ctx = Ctx::new(&args.common, device)?;
    let idx: Vec<usize> = (0..args.num.max(1)).collect();
    let x0 = ctx.images(&args.data, &idx)?;
    let latents = ctx.encode(x0.clone())?;
    let recon = ctx.decode(latents)?;
    let mse: f32 = (recon.clone() - x0.clone()).square().mean().into_scalar();
    writeln!(
        out,
        "DDIM inversion of {} images with {} steps: reconstruction MSE {mse:.6}",
        idx.len(),
        ctx.d.num_timesteps()
    )?;
    save_grid_png(&args.common.out, &to_images(Tensor::cat(vec![x0, recon], 0)), idx.len())?;
    eprintln!("wrote {}", args.common.out.display());
    Ok(())
}
