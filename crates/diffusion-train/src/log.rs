//! The run's own metrics: `metrics.csv` and `metrics.jsonl` (one row per microbatch and per
//! held-out batch), written by a burn `Metric` on the Learner's metric thread, plus a plain
//! progress line when there is no terminal for burn's TUI.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::tensor::TensorReadError;
use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::MetricDefinition;
use burn::train::metric::{Metric, MetricMetadata, MetricName, SerializedEntry};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation, MetricsRendererTraining,
};

use crate::error::{Result, TrainError};
use crate::trainer::StepRecord;

/// Columns of `metrics.csv` (and keys of each `metrics.jsonl` object).
pub const COLUMNS: [&str; 15] = [
    "split",
    "step",
    "micro",
    "examples",
    "loss",
    "mse",
    "vb",
    "loss_q0",
    "loss_q1",
    "loss_q2",
    "loss_q3",
    "grad_norm",
    "lr",
    "examples_per_s",
    "accuracy",
];

/// One parsed row of `metrics.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsRow {
    /// `train` or `valid`.
    pub split: String,
    /// Optimiser step (held-out rows: completed steps).
    pub step: u64,
    /// Mean loss.
    pub loss: f64,
    /// Mean loss of each quarter of 0..T (NaN where no example fell).
    pub quartiles: [f64; 4],
    /// Top-1 accuracy (classifiers; NaN otherwise).
    pub accuracy: f64,
}

struct Files {
    csv: BufWriter<File>,
    jsonl: BufWriter<File>,
    last_flush: Instant,
}

/// Writes the metric rows, shared by the train and valid metric instances.
pub(crate) struct RunLog {
    files: Mutex<Files>,
    progress: Option<Mutex<Progress>>,
    prev_at: Mutex<Option<Instant>>,
}

struct Progress {
    total_steps: u64,
    start: Instant,
    last_print: Option<Instant>,
    start_step: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}

/// Keeps the rows of a resumed run that precede the checkpoint at `step`: training rows of
/// steps `< step` and held-out rows of steps `<= step`.
fn truncate_rows(path: &Path, step: u64, step_col: usize, split_col: usize, json: bool) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let f = File::open(path).map_err(io(path))?;
    let mut kept = String::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(io(path))?;
        let keep = if json {
            match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(v) => {
                    let s = v["step"].as_u64().unwrap_or(u64::MAX);
                    if v["split"] == "train" { s < step } else { s <= step }
                }
                Err(_) => false,
            }
        } else if i == 0 {
            true
        } else {
            let cols: Vec<&str> = line.split(',').collect();
            match (cols.get(split_col), cols.get(step_col).and_then(|s| s.parse::<u64>().ok())) {
                (Some(&"train"), Some(s)) => s < step,
                (Some(_), Some(s)) => s <= step,
                _ => false,
            }
        };
        if keep {
            kept.push_str(&line);
            kept.push('\n');
        }
    }
    std::fs::write(path, kept).map_err(io(path))
}

impl RunLog {
    /// Opens the logs in `dir`; a fresh run truncates them, a resumed one keeps the rows that
    /// precede `resume_step`.
    pub fn open(
        dir: &Path,
        resume_step: Option<u64>,
        total_steps: u64,
        plain_progress: bool,
    ) -> Result<Self> {
        let csv_path = dir.join("metrics.csv");
        let jsonl_path = dir.join("metrics.jsonl");
        let fresh = resume_step.is_none() || !csv_path.exists();
        if let Some(step) = resume_step {
            truncate_rows(&csv_path, step, 1, 0, false)?;
            truncate_rows(&jsonl_path, step, 1, 0, true)?;
        }
        let open = |p: &PathBuf, append: bool| {
            OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(p)
                .map_err(io(p))
        };
        let mut csv = BufWriter::new(open(&csv_path, !fresh)?);
        let jsonl = BufWriter::new(open(&jsonl_path, !fresh)?);
        if fresh {
            writeln!(csv, "{}", COLUMNS.join(",")).map_err(io(&csv_path))?;
        }
        let start_step = resume_step.unwrap_or(0);
        Ok(Self {
            files: Mutex::new(Files { csv, jsonl, last_flush: Instant::now() }),
            prev_at: Mutex::new(None),
            progress: plain_progress.then(|| {
                Mutex::new(Progress { total_steps, start: Instant::now(), last_print: None, start_step })
            }),
        })
    }

    fn write(&self, r: &StepRecord, lr: Option<f64>) -> String {
        let n = r.loss.len().max(1) as f64;
        let mean = |v: &[f32]| v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let loss = mean(&r.loss);
        let mse = r.mse.as_deref().map(mean);
        let vb = r.vb.as_deref().map(mean);
        let mut q = [(0.0, 0usize); 4];
        for (&l, &t) in r.loss.iter().zip(&r.timesteps) {
            let k = (4 * t / r.num_timesteps.max(1)).min(3);
            q[k].0 += f64::from(l);
            q[k].1 += 1;
        }
        let quart: Vec<Option<f64>> = q.iter().map(|&(s, c)| (c > 0).then(|| s / c as f64)).collect();
        let grad_norm = r.grad_norm.get();
        let mut rate = None;
        if r.train {
            let mut prev = self.prev_at.lock().expect("previous time");
            if let Some(p) = *prev {
                let dt = r.at.duration_since(p).as_secs_f64();
                if dt > 0.0 {
                    rate = Some(r.loss.len() as f64 / dt);
                }
            }
            *prev = Some(r.at);
        }
        let fmt = |x: Option<f64>| x.map(|v| format!("{v:.6e}")).unwrap_or_default();
        let accuracy =
            r.correct.as_ref().map(|c| c.iter().filter(|&&k| k).count() as f64 / c.len().max(1) as f64);
        let split = if r.train { "train" } else { "valid" };
        let csv_row = format!(
            "{split},{},{},{},{loss:.6e},{},{},{},{},{},{},{},{},{},{}",
            r.step,
            r.micro,
            r.loss.len(),
            fmt(mse),
            fmt(vb),
            fmt(quart[0]),
            fmt(quart[1]),
            fmt(quart[2]),
            fmt(quart[3]),
            fmt(grad_norm),
            fmt(lr.filter(|_| r.train)),
            rate.map(|v| format!("{v:.2}")).unwrap_or_default(),
            accuracy.map(|v| format!("{v:.4}")).unwrap_or_default(),
        );
        let json = serde_json::json!({
            "split": split, "step": r.step, "micro": r.micro, "examples": r.loss.len(), "loss": loss,
            "mse": mse, "vb": vb, "loss_q0": quart[0], "loss_q1": quart[1], "loss_q2": quart[2],
            "loss_q3": quart[3], "grad_norm": grad_norm, "lr": lr.filter(|_| r.train), "examples_per_s": rate,
            "accuracy": accuracy,
        });
        {
            let mut f = self.files.lock().expect("metrics files");
            let _ = writeln!(f.csv, "{csv_row}");
            let _ = writeln!(f.jsonl, "{json}");
            if !r.train || f.last_flush.elapsed().as_secs_f64() > 2.0 {
                let _ = f.csv.flush();
                let _ = f.jsonl.flush();
                f.last_flush = Instant::now();
            }
        }
        if let Some(p) = &self.progress {
            let mut p = p.lock().expect("progress");
            let now = Instant::now();
            let due = p.last_print.is_none_or(|t| now.duration_since(t).as_secs_f64() >= 5.0);
            if !r.train {
                let acc = accuracy.map(|a| format!(", top-1 accuracy {:.1}%", 100.0 * a)).unwrap_or_default();
                eprintln!("  held-out loss at step {}: {loss:.5}{acc}", r.step);
            } else if due || r.step + 1 == p.total_steps {
                let done = r.step + 1;
                let elapsed = p.start.elapsed().as_secs_f64();
                let per_step = elapsed / (done - p.start_step).max(1) as f64;
                let eta = per_step * (p.total_steps - done) as f64;
                eprintln!(
                    "step {done}/{} ({:.0}%)  loss {loss:.5}  lr {:.2e}  {}  eta {}",
                    p.total_steps,
                    100.0 * done as f64 / p.total_steps as f64,
                    lr.unwrap_or(0.0),
                    rate.map(|v| format!("{v:.1} ex/s")).unwrap_or_default(),
                    format_secs(eta),
                );
                p.last_print = Some(now);
            }
        }
        format!("{loss:.5}")
    }

    /// Flushes both files.
    pub fn flush(&self) {
        let mut f = self.files.lock().expect("metrics files");
        let _ = f.csv.flush();
        let _ = f.jsonl.flush();
    }
}

fn format_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// Reads `metrics.csv` back (for the loss curve).
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRow>> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut rows = Vec::new();
    for line in text.lines().skip(1) {
        let c: Vec<&str> = line.split(',').collect();
        if c.len() < COLUMNS.len() {
            continue;
        }
        let num = |s: &str| s.parse::<f64>().unwrap_or(f64::NAN);
        rows.push(MetricsRow {
            split: c[0].to_string(),
            step: c[1].parse().unwrap_or(0),
            loss: num(c[4]),
            quartiles: [num(c[7]), num(c[8]), num(c[9]), num(c[10])],
            accuracy: num(c[14]),
        });
    }
    Ok(rows)
}

/// The burn metric that feeds [`RunLog`].
#[derive(Clone)]
pub(crate) struct RunLogMetric {
    log: Arc<RunLog>,
    name: MetricName,
}

impl RunLogMetric {
    pub fn new(log: Arc<RunLog>) -> Self {
        Self { log, name: Arc::new("Run log".to_string()) }
    }
}

impl Metric for RunLogMetric {
    type Input = Arc<StepRecord>;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(
        &mut self,
        item: &Arc<StepRecord>,
        metadata: &MetricMetadata,
    ) -> std::result::Result<SerializedEntry, TensorReadError> {
        let lr = metadata.lr.as_ref().map(|l| l.base());
        let loss = self.log.write(item, lr);
        Ok(SerializedEntry { formatted: format!("loss {loss}"), serialized: loss })
    }

    fn compute(&mut self) -> std::result::Result<SerializedEntry, TensorReadError> {
        self.log.flush();
        Ok(SerializedEntry { formatted: String::new(), serialized: String::new() })
    }

    fn clear(&mut self) {}
}

/// A renderer that draws nothing (progress lines come from [`RunLog`] instead).
pub(crate) struct QuietRenderer;

impl MetricsRendererTraining for QuietRenderer {
    fn update_train(&mut self, _state: MetricState) {}
    fn update_valid(&mut self, _state: MetricState) {}
}

impl TrainingProgressLogger for QuietRenderer {
    fn start(
        &mut self,
        _total_epochs: usize,
        _starting_epoch: usize,
        _total_items: Option<usize>,
        _label: Option<&str>,
    ) {
    }
    fn start_split(&mut self, _split_name: &str, _total_items: usize) {}
    fn update_split(&mut self, _items_processed: usize) {}
    fn update_epoch(&mut self, _epoch: usize) {}
    fn end_split(&mut self) {}
    fn end(&mut self) {}
    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for QuietRenderer {
    fn start_global_progress(&mut self, _total_tests: usize) {}
    fn start_test(&mut self, _name: &str, _total_items: usize) {}
    fn update_test_progress(&mut self, _items_processed: usize) {}
    fn end_test(&mut self) {}
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRendererEvaluation for QuietRenderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
}

impl MetricsRenderer for QuietRenderer {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, _definition: MetricDefinition) {}
}
