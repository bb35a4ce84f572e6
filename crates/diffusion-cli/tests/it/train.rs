//! `diffusion train` and `train-classifier` end to end: a run directory a person can inspect,
//! a checkpoint that every sampler, guidance and `eval nll` read, and a SIGKILLed run that
//! resumes to the same weights as an uninterrupted one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use diffusion_train::checkpoint::load_trained_nets;

use crate::{fails, ok};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("diffusion-train-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The default preset (shortened to 2 steps) leaves a complete run directory, and its
/// checkpoint drives every sampler, classifier guidance and the likelihood evaluation.
#[test]
fn default_run_then_every_sampler_guidance_and_nll() {
    let d = dir("default");
    let run = d.join("run");
    ok(&["train", "--steps", "2", "--checkpoint-every", "2", "--out", s(&run), "--plain"]);
    for f in ["config.json", "metrics.csv", "metrics.jsonl"] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    assert!(is_png(&run.join("loss.png")) && is_png(&run.join("samples.png")));
    assert!(is_png(&run.join("samples/step-00000002.png")));
    let ckpt = run.join("checkpoints/step-00000002.ckpt");
    let c = s(&ckpt);
    for (sampler, extra) in [
        ("ddpm", vec!["--respace", "10"]),
        ("ddim", vec!["--respace", "ddim5", "--eta", "0.5"]),
        ("langevin", vec!["--respace", "5", "--langevin-steps", "2"]),
        ("pc", vec!["--respace", "5"]),
        ("dpm++2m", vec!["--respace", "trailing6"]),
        ("dpm++3m", vec!["--respace", "linspace6"]),
        ("sde-dpm++2m", vec!["--respace", "6"]),
    ] {
        let out = d.join(format!("{sampler}.png"));
        let args = [
            &["sample", "--checkpoint", c, "--sampler", sampler, "--num", "4", "--out", s(&out)][..],
            &extra,
        ]
        .concat();
        ok(&args);
        assert!(is_png(&out), "{sampler}");
    }
    // The trajectory of the first batch: x_t and x̂_0 every 2 of 6 steps.
    let traj = d.join("trajectory.png");
    let out = crate::diffusion(&[
        "sample",
        "--checkpoint",
        c,
        "--respace",
        "6",
        "--num",
        "2",
        "--record-every",
        "2",
        "--trajectory",
        s(&traj),
        "--out",
        s(&d.join("t.png")),
    ]);
    assert!(out.status.success());
    assert!(is_png(&traj));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("rows: x_t then x̂_0"), "{msg}");
    // One PNG per sample, named by sample id (so shards fill one folder).
    let each = d.join("each");
    ok(&[
        "sample",
        "--checkpoint",
        c,
        "--respace",
        "4",
        "--num",
        "3",
        "--shard",
        "0/1",
        "--each",
        s(&each),
        "--out",
        s(&d.join("e.png")),
    ]);
    for id in 0..3 {
        assert!(is_png(&each.join(format!("{id:06}.png"))), "image {id}");
    }
    let npz = d.join("s.npz");
    ok(&[
        "sample",
        "--checkpoint",
        c,
        "--respace",
        "ddim4",
        "--sampler",
        "ddim",
        "--num",
        "3",
        "--out",
        s(&npz),
    ]);
    assert!(std::fs::read(&npz).unwrap().starts_with(b"PK"));

    // A classifier for the same process, then guided sampling with it.
    let clf_run = d.join("classifier");
    let clf_out =
        ok(&["train-classifier", "--steps", "2", "--batch-size", "8", "--out", s(&clf_run), "--plain"]);
    let _ = clf_out;
    let clf = clf_run.join("checkpoints/step-00000002.ckpt");
    assert!(clf.exists());
    let guided = d.join("guided.png");
    ok(&[
        "sample",
        "--checkpoint",
        c,
        "--classifier",
        s(&clf),
        "--guidance-scale",
        "2",
        "--class",
        "1",
        "--respace",
        "ddim4",
        "--sampler",
        "ddim",
        "--num",
        "2",
        "--out",
        s(&guided),
    ]);
    assert!(is_png(&guided));

    // NLL of held-out shapes (stratified estimate: 4 timesteps per image).
    let nll = ok(&["eval", "nll", "--checkpoint", c, "--num", "2", "--strata", "4"]);
    assert!(nll.starts_with("NLL: ") && nll.contains("bits/dim"), "{nll}");

    // A second fresh run into the same directory is refused; --resume auto with a finished run
    // has nothing to do.
    assert!(fails(&["train", "--steps", "2", "--out", s(&run)]).contains("--resume auto"));
    ok(&["train", "--out", s(&run), "--resume", "auto", "--plain"]);
    std::fs::remove_dir_all(&d).ok();
}

struct Collect(Vec<f32>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.extend(param.val().into_data().convert::<f32>().try_to_vec::<f32>().unwrap());
    }
}

/// Every weight of the online network and of each EMA copy of a training checkpoint.
fn weights(path: &Path) -> Vec<Vec<f32>> {
    let nets = load_trained_nets(path, &Device::flex()).unwrap();
    std::iter::once(&nets.net)
        .chain(&nets.ema)
        .map(|n| {
            let mut c = Collect(Vec::new());
            n.visit(&mut c);
            c.0
        })
        .collect()
}

#[test]
fn sigkilled_run_resumes_to_the_weights_of_an_uninterrupted_one() {
    let d = dir("kill");
    let (a, b) = (d.join("a"), d.join("b"));
    let args = |out: &Path| {
        vec![
            "train".to_string(),
            "--preset".into(),
            "tiny".into(),
            "--steps".into(),
            "40".into(),
            "--checkpoint-every".into(),
            "4".into(),
            "--out".into(),
            s(out).into(),
            "--plain".into(),
        ]
    };
    let argv = args(&a);
    ok(&argv.iter().map(String::as_str).collect::<Vec<_>>());

    // Run b, killed with SIGKILL once its second checkpoint exists.
    let mut child = Command::new(env!("CARGO_BIN_EXE_diffusion"))
        .args(args(&b))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !b.join("checkpoints/step-00000008.ckpt").exists() && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!b.join("checkpoints/step-00000040.ckpt").exists(), "the run finished before it was killed");
    let mut resume = args(&b);
    resume.extend(["--resume".into(), "auto".into()]);
    ok(&resume.iter().map(String::as_str).collect::<Vec<_>>());

    // Resumed from the step-8 checkpoint at least (later ones may have been written before the
    // kill); the final online and EMA weights are bit-identical to the uninterrupted run's.
    let last = "checkpoints/step-00000040.ckpt";
    let (wa, wb) = (weights(&a.join(last)), weights(&b.join(last)));
    assert_eq!(wa.len(), 3, "online + two EMA copies");
    for (k, (x, y)) in wa.iter().zip(&wb).enumerate() {
        assert!(x == y, "network {k} differs after resuming");
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn bad_training_input_is_a_clear_error() {
    assert!(fails(&["train", "--preset", "nope"]).contains("unknown preset \"nope\""));
    // Classifier-free guidance and v-prediction from the command line: the config they resolve to.
    let cfg: serde_json::Value = serde_json::from_str(&ok(&[
        "train",
        "--preset",
        "default",
        "--label-dropout",
        "0.2",
        "--prediction",
        "velocity",
        "--print-config",
        "json",
    ]))
    .unwrap();
    assert_eq!(cfg["label_dropout"], 0.2);
    assert_eq!(cfg["model"]["config"]["null_class"], true, "{cfg}");
    assert_eq!(cfg["process"]["config"]["mean"], "velocity");
    // Zero terminal SNR: recorded in the process, and refused with the reason for ε.
    let cfg: serde_json::Value = serde_json::from_str(&ok(&[
        "train",
        "--preset",
        "tiny-mlp",
        "--prediction",
        "velocity",
        "--zero-terminal-snr",
        "--print-config",
        "json",
    ]))
    .unwrap();
    assert_eq!(cfg["process"]["zero_terminal_snr"], true, "{cfg}");
    let e = fails(&["train", "--preset", "tiny-mlp", "--zero-terminal-snr", "--out", "/tmp/x-never"]);
    assert!(e.contains("zero terminal SNR") && e.contains("velocity"), "{e}");
    // Not printed as a config either: a printed config is one that trains.
    let e = fails(&["train", "--preset", "tiny-mlp", "--zero-terminal-snr", "--print-config", "json"]);
    assert!(e.contains("zero terminal SNR") && e.contains("velocity"), "{e}");
    assert!(
        fails(&["train", "--preset", "swissroll", "--label-dropout", "0.1"])
            .contains("class-conditional UNet")
    );
    assert!(
        fails(&["train", "--preset", "default", "--label-dropout", "1.5", "--out", "/tmp/x-never"])
            .contains("[0, 1)")
    );
    assert!(
        fails(&["train", "--preset", "tiny", "--data", "mnist:/no/such/dir", "--out", "/tmp/x-never"])
            .contains("/no/such/dir")
    );
    let d = dir("badcfg");
    let cfg = d.join("c.json");
    std::fs::write(
        &cfg,
        ok(&["train", "--preset", "tiny", "--print-config", "json"]).replace("\"steps\"", "\"stepz\""),
    )
    .unwrap();
    assert!(fails(&["train", "--config", s(&cfg)]).contains("stepz"));
    let toml = d.join("c.toml");
    std::fs::write(&toml, ok(&["train", "--preset", "swissroll", "--print-config", "toml"])).unwrap();
    let again = ok(&["train", "--config", s(&toml), "--print-config", "json"]);
    assert_eq!(again, ok(&["train", "--preset", "swissroll", "--print-config", "json"]), "TOML round trip");
    std::fs::remove_dir_all(&d).ok();
}

/// A 2-D run: a scatter of samples over the data at each checkpoint, and the likelihood bound of
/// held-out points in nats.
#[test]
fn point_model_run_scatter_and_nll() {
    let d = dir("points");
    let run = d.join("run");
    ok(&["train", "--preset", "tiny-mlp", "--out", s(&run), "--plain"]);
    assert!(is_png(&run.join("samples.png")) && is_png(&run.join("loss.png")));
    let ckpt = run.join("checkpoints/step-00000006.ckpt");
    let out = ok(&["eval", "nll", "--checkpoint", s(&ckpt), "--data", "swissroll", "--num", "32"]);
    assert!(out.starts_with("NLL: ") && out.contains("nats/point"), "{out}");
    let v: f64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(v.is_finite() && v > 0.0, "{out}");
    assert!(fails(&["eval", "nll", "--checkpoint", s(&ckpt), "--data", "shapes"]).contains("point set"));
    std::fs::remove_dir_all(&d).ok();
}
