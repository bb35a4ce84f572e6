//! `diffusion`: train, sample and evaluate diffusion models (the leaf binary of diffusion-rs, and
//! the only crate of the workspace that enables a burn backend).

mod device;
mod eval_cmd;
mod latent_cmd;
mod model_cmd;
mod plot;
mod process_args;
mod sample_cmd;
mod schedule_cmd;
mod train_cmd;

use std::io::Write;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::device::DeviceSpec;

/// mimalloc instead of glibc's malloc: burn's CPU backend allocates a fresh buffer for every op
/// output, and glibc returns large ones to the OS (page faults on every step); `main` also tells
/// mimalloc to keep what it frees (`diffusion_alloc::keep_freed_memory`).
#[global_allocator]
static GLOBAL: diffusion_alloc::Allocator = diffusion_alloc::Allocator;

/// Denoising diffusion models on burn.
#[derive(Debug, Parser)]
#[command(name = "diffusion", version, about)]
struct Cli {
    /// Where tensors live: cpu, wgpu\[:N\], vulkan\[:N\] or cuda\[:N\] (the backend must be compiled in).
    #[arg(long, global = true, default_value = "cpu")]
    device: DeviceSpec,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print (and plot) the tables of a variance schedule, optionally respaced.
    Schedule(schedule_cmd::ScheduleArgs),
    /// Print a network's architecture and parameter counts; import PyTorch checkpoints.
    Model(model_cmd::ModelArgs),
    /// Train a model (a preset or a config file) through burn's Learner; resumable.
    Train(train_cmd::TrainArgs),
    /// Train a noise-aware classifier (for classifier guidance).
    TrainClassifier(train_cmd::TrainClassifierArgs),
    /// Draw samples from a checkpoint (DDPM, DDIM, Langevin, predictor-corrector; guidance).
    Sample(sample_cmd::SampleArgs),
    /// Interpolate between two noises or two images in DDIM's latent space (a PNG strip).
    Interpolate(latent_cmd::InterpolateArgs),
    /// Invert images to DDIM latents and reconstruct them.
    Invert(latent_cmd::InvertArgs),
    /// Evaluate a checkpoint (negative log-likelihood in bits/dim).
    #[command(subcommand)]
    Eval(eval_cmd::EvalCommand),
    /// Print which backends this binary was built with and check that the chosen device works.
    Devices,
}

/// Physical cores (distinct `physical id`/`core id` pairs of /proc/cpuinfo), when known.
fn physical_cores() -> Option<usize> {
    count_physical_cores(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

/// Distinct (`physical id`, `core id`) pairs in a /proc/cpuinfo text.
fn count_physical_cores(info: &str) -> Option<usize> {
    let mut cores = std::collections::BTreeSet::new();
    let (mut package, mut core) = (None, None);
    for line in info.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if let (Some(p), Some(c)) = (package.take(), core.take()) {
                cores.insert((p, c));
            }
            continue;
        }
        let (key, value) = line.split_once(':').map(|(k, v)| (k.trim(), v.trim())).unwrap_or((line, ""));
        match key {
            "physical id" => package = Some(value.to_string()),
            "core id" => core = Some(value.to_string()),
            _ => {}
        }
    }
    (!cores.is_empty()).then_some(cores.len())
}

fn main() {
    diffusion_alloc::keep_freed_memory();
    // One compute thread per physical core (SMT siblings share the FMA units GEMM needs), unless
    // RAYON_NUM_THREADS says otherwise.
    if std::env::var_os("RAYON_NUM_THREADS").is_none()
        && let Some(n) = physical_cores()
    {
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    }
    if let Err(err) = run() {
        // A closed pipe (`diffusion schedule | head`) is the reader's choice, not an error.
        let broken_pipe = err.chain().any(|e| {
            e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if broken_pipe {
            return;
        }
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    // Training renders burn's dashboard from another thread, which needs stdout: it must not be
    // locked here for the whole command.
    match &cli.command {
        Command::Train(args) => return train_cmd::run(args, cli.device),
        Command::TrainClassifier(args) => return train_cmd::run_classifier(args, cli.device),
        _ => {}
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match &cli.command {
        Command::Train(_) | Command::TrainClassifier(_) => unreachable!("handled above"),
        Command::Schedule(args) => schedule_cmd::run(args, &mut out),
        Command::Model(args) => model_cmd::run(args, &cli.device.device()?, &mut out),
        Command::Sample(args) => sample_cmd::run(args, &cli.device.device()?),
        Command::Eval(cmd) => eval_cmd::run(cmd, &cli.device.device()?, &mut out),
        Command::Interpolate(args) => latent_cmd::interpolate(args, &cli.device.device()?),
        Command::Invert(args) => latent_cmd::invert(args, &cli.device.device()?, &mut out),
        Command::Devices => {
            let features: Vec<&str> = [
                ("cpu", cfg!(feature = "cpu")),
                ("wgpu", cfg!(feature = "wgpu")),
                ("vulkan", cfg!(feature = "vulkan")),
                ("cuda", cfg!(feature = "cuda")),
            ]
            .into_iter()
            .filter_map(|(n, on)| on.then_some(n))
            .collect();
            writeln!(out, "compiled backends: {}", features.join(", "))?;
            writeln!(
                out,
                "CPU compute threads: {} (physical cores: {})",
                rayon::current_num_threads(),
                physical_cores().map(|n| n.to_string()).unwrap_or_else(|| "unknown".into())
            )?;
            let device = cli.device.device()?;
            if let Some(adapter) = cli.device.adapter()? {
                writeln!(out, "{}: adapter {adapter}", cli.device)?;
            }
            let x = burn::tensor::Tensor::<1>::from_floats([1.0, 2.0, 3.0], &device);
            let sum: f32 = x.sum().into_scalar();
            writeln!(out, "{}: {device:?} ok (1 + 2 + 3 = {sum})", cli.device)?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::count_physical_cores;

    #[test]
    fn smt_siblings_count_once() {
        // Two packages, two cores each, two hardware threads per core.
        let mut info = String::new();
        for p in 0..2 {
            for c in 0..2 {
                for _ in 0..2 {
                    info.push_str(&format!("processor\t: x\nphysical id\t: {p}\ncore id\t\t: {c}\n\n"));
                }
            }
        }
        assert_eq!(count_physical_cores(&info), Some(4));
        assert_eq!(count_physical_cores("processor : 0\n"), None);
    }
}
