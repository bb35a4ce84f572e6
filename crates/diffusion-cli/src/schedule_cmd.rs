//! `diffusion schedule`: print and plot every table of a (possibly respaced) process.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use diffusion_core::{BetaSchedule, DiffusionConfig, DiffusionTables, GaussianDiffusion};
use serde_json::{Map, Value};

use crate::plot::{Panel, Series, line_panels};

/// The named schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScheduleName {
    /// Ho et al. 2020: β linear from 1e-4·1000/T to 0.02·1000/T.
    Linear,
    /// Nichol & Dhariwal 2021: ᾱ = cos²(((t/T + s)/(1 + s))·π/2), s = 0.008, β ≤ 0.999.
    Cosine,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for reading.
    Table,
    /// One row per timestep, full precision.
    Csv,
    /// One array per table, full precision.
    Json,
}

/// Arguments of `diffusion schedule`.
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// The variance schedule.
    #[arg(long, value_enum, default_value = "linear")]
    pub schedule: ScheduleName,
    /// Number of diffusion steps T.
    #[arg(long, default_value_t = 1000)]
    pub steps: usize,
    /// Keep only some steps: a count ("250"), section counts ("10,15,20") or DDIM striding ("ddim50").
    #[arg(long)]
    pub respace: Option<String>,
    /// How to print the tables.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Also draw ᾱ, β and the signal-to-noise ratio against t into this PNG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// The tables printed, in order, with their JSON/CSV names.
const COLUMNS: [&str; 10] = [
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "alphas_cumprod_next",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
];

fn column<'a>(t: &'a DiffusionTables, name: &str) -> &'a [f64] {
    match name {
        "betas" => &t.betas,
        "alphas_cumprod" => &t.alphas_cumprod,
        "alphas_cumprod_prev" => &t.alphas_cumprod_prev,
        "alphas_cumprod_next" => &t.alphas_cumprod_next,
        "posterior_variance" => &t.posterior_variance,
        "posterior_log_variance_clipped" => &t.posterior_log_variance_clipped,
        "posterior_mean_coef1" => &t.posterior_mean_coef1,
        "posterior_mean_coef2" => &t.posterior_mean_coef2,
        "sqrt_recip_alphas_cumprod" => &t.sqrt_recip_alphas_cumprod,
        "sqrt_recipm1_alphas_cumprod" => &t.sqrt_recipm1_alphas_cumprod,
        other => unreachable!("unknown column {other}"),
    }
}

/// Builds the (respaced) process the arguments describe.
pub fn build(args: &ScheduleArgs) -> Result<GaussianDiffusion> {
    let name = match args.schedule {
        ScheduleName::Linear => "linear",
        ScheduleName::Cosine => "cosine",
    };
    let schedule = BetaSchedule::named(name, args.steps)?;
    let mut d = GaussianDiffusion::from_schedule(&schedule, DiffusionConfig::default())
        .with_context(|| format!("building the {name} schedule with --steps {}", args.steps))?;
    if let Some(spec) = &args.respace {
        d = d.respace_spec(spec).context("--respace")?;
    }
    Ok(d)
}

/// The JSON object: exactly the ten tables, plus `timestep_map` when respaced.
pub fn to_json(d: &GaussianDiffusion) -> Value {
    let mut obj = Map::new();
    for name in COLUMNS {
        obj.insert(name.into(), Value::from(column(d.tables(), name).to_vec()));
    }
    if d.is_respaced() {
        obj.insert("timestep_map".into(), Value::from(d.timestep_map().to_vec()));
    }
    Value::Object(obj)
}

/// Runs the command, writing to `out`.
pub fn run(args: &ScheduleArgs, out: &mut dyn Write) -> Result<()> {
    let d = build(args)?;
    let tables = d.tables();
    let map = d.timestep_map();
    match args.format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, &to_json(&d))?;
            writeln!(out)?;
        }
        Format::Csv => {
            write!(out, "t,timestep")?;
            for c in COLUMNS {
                write!(out, ",{c}")?;
            }
            writeln!(out)?;
            for (t, orig) in map.iter().enumerate() {
                write!(out, "{t},{orig}")?;
                for c in COLUMNS {
                    // `{:?}` is Rust's shortest round-trip representation: full f64 precision.
                    write!(out, ",{:?}", column(tables, c)[t])?;
                }
                writeln!(out)?;
            }
        }
        Format::Table => {
            writeln!(
                out,
                "# {:?} schedule, T = {}{}",
                args.schedule,
                d.num_timesteps(),
                if d.is_respaced() {
                    format!(
                        " (respaced {:?} from {})",
                        args.respace.as_deref().unwrap_or(""),
                        d.original_num_timesteps()
                    )
                } else {
                    String::new()
                }
            )?;
            let short = [
                "beta",
                "abar",
                "abar_prev",
                "abar_next",
                "post_var",
                "post_logvar",
                "coef1",
                "coef2",
                "sqrt_1/abar",
                "sqrt_1/abar-1",
            ];
            write!(out, "{:>6} {:>6}", "t", "orig")?;
            for s in short {
                write!(out, " {s:>13}")?;
            }
            writeln!(out)?;
            for (t, orig) in map.iter().enumerate() {
                write!(out, "{t:>6} {orig:>6}")?;
                for c in COLUMNS {
                    write!(out, " {:>13.6e}", column(tables, c)[t])?;
                }
                writeln!(out)?;
            }
        }
    }
    if let Some(path) = &args.plot {
        plot(&d, &format!("{:?}", args.schedule).to_lowercase(), path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn plot(d: &GaussianDiffusion, name: &str, path: &std::path::Path) -> Result<()> {
    let tables = d.tables();
    let xs: Vec<f64> = d.timestep_map().iter().map(|&k| k as f64).collect();
    let pts = |ys: Vec<f64>| xs.iter().copied().zip(ys).collect::<Vec<_>>();
    let log_snr = tables.snr().iter().map(|s| s.log10()).collect();
    let log_beta = tables.betas.iter().map(|b| b.log10()).collect();
    let panels = [
        Panel {
            title: "ᾱ_t (signal kept)",
            x_label: "t",
            y_label: "ᾱ",
            series: vec![
                Series { label: "ᾱ_t", points: pts(tables.alphas_cumprod.clone()) },
                Series {
                    label: "1 − ᾱ_t",
                    points: pts(tables.alphas_cumprod.iter().map(|a| 1.0 - a).collect()),
                },
            ],
        },
        Panel {
            title: "β_t (log10)",
            x_label: "t",
            y_label: "log10 β",
            series: vec![
                Series { label: "β_t", points: pts(log_beta) },
                Series {
                    label: "posterior β~_t",
                    points: pts(tables.posterior_variance.iter().map(|v| v.log10()).collect()),
                },
            ],
        },
        Panel {
            title: "signal-to-noise ratio (log10)",
            x_label: "t",
            y_label: "log10 ᾱ/(1 − ᾱ)",
            series: vec![Series { label: "SNR", points: pts(log_snr) }],
        },
    ];
    let caption = format!(
        "{name} schedule, {} steps{}",
        d.num_timesteps(),
        if d.is_respaced() {
            format!(" (respaced from {})", d.original_num_timesteps())
        } else {
            String::new()
        }
    );
    line_panels(path, &caption, &panels)
}
