//! `diffusion sample` end to end on freshly initialised checkpoints (training lands with issue 4):
//! seeds are batch-size and shard independent, outputs are valid PNG / NPZ, bad flags are errors.

use std::path::{Path, PathBuf};

use crate::{fails, ok};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("diffusion-sample-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The `arr_0` payload of an `.npz` we wrote (stored entries: magic, header, then the data).
fn arr0(path: &Path) -> Vec<u8> {
    let b = std::fs::read(path).unwrap();
    let start = b.windows(6).position(|w| w == b"\x93NUMPY").expect("an .npy entry");
    let hlen = u16::from_le_bytes([b[start + 8], b[start + 9]]) as usize;
    let header = std::str::from_utf8(&b[start + 10..start + 10 + hlen]).unwrap();
    let dims: Vec<usize> = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let n: usize = dims.iter().product();
    b[start + 10 + hlen..start + 10 + hlen + n].to_vec()
}

#[test]
fn samples_do_not_depend_on_batch_size_or_sharding() {
    let d = dir("shards");
    let ckpt = d.join("tiny.ckpt");
    ok(&["model", "--preset", "tiny", "--save", ckpt.to_str().unwrap()]);
    let run = |out: &str, extra: &[&str]| {
        let path = d.join(out);
        let mut args = vec![
            "sample",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--respace",
            "ddim5",
            "--sampler",
            "ddim",
            "--eta",
            "0.5",
            "--num",
            "4",
            "--out",
            path.to_str().unwrap(),
        ];
        if !extra.contains(&"--seed") {
            args.extend_from_slice(&["--seed", "3"]);
        }
        args.extend_from_slice(extra);
        ok(&args);
        arr0(&path)
    };
    let whole = run("whole.npz", &["--batch-size", "4"]);
    assert_eq!(whole.len(), 4 * 32 * 32 * 3);
    assert_eq!(run("ones.npz", &["--batch-size", "1"]), whole, "batch size must not matter");
    let a = run("a.npz", &["--shard", "0/2"]);
    let b = run("b.npz", &["--shard", "1/2"]);
    assert_eq!([a, b].concat(), whole, "two shards make the whole run");
    assert_ne!(run("other.npz", &["--seed", "4"]), whole);
    // A PNG grid of 4 images of 32x32 with 2-pixel borders: 2 x 2 tiles.
    let png = d.join("grid.png");
    ok(&[
        "sample",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--respace",
        "3",
        "--num",
        "4",
        "--out",
        png.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 2 * 34 + 2);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn classifier_guidance_changes_samples_only_with_a_scale() {
    let d = dir("guidance");
    let ckpt = d.join("tiny.ckpt");
    let clf = d.join("clf.ckpt");
    ok(&["model", "--preset", "tiny", "--save", ckpt.to_str().unwrap()]);
    ok(&["model", "--preset", "tiny_classifier", "--save", clf.to_str().unwrap()]);
    let run = |out: &str, extra: &[&str]| {
        let path = d.join(out);
        let mut args = vec![
            "sample",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--respace",
            "4",
            "--num",
            "2",
            "--class",
            "3",
            "--out",
            path.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        ok(&args);
        arr0(&path)
    };
    let plain = run("plain.npz", &[]);
    let c = clf.to_str().unwrap();
    assert_eq!(run("zero.npz", &["--classifier", c, "--guidance-scale", "0"]), plain);
    // The tiny classifier's head is zero-initialised, so its gradient is zero too: guidance with
    // an untrained classifier leaves samples unchanged; the library tests check the direction.
    assert_eq!(run("guided.npz", &["--classifier", c, "--guidance-scale", "5"]), plain);
    let err = fails(&[
        "sample",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--classifier",
        ckpt.to_str().unwrap(),
        "--guidance-scale",
        "1",
        "--num",
        "1",
        "--out",
        d.join("x.npz").to_str().unwrap(),
    ]);
    assert!(err.contains("not a classifier"), "{err}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn bad_sample_flags_are_errors() {
    let d = dir("bad");
    let ckpt = d.join("mlp.ckpt");
    ok(&["model", "--preset", "mlp", "--save", ckpt.to_str().unwrap()]);
    let c = ckpt.to_str().unwrap();
    assert!(fails(&["sample", "--checkpoint", c, "--out", "x.jpg"]).contains(".png or .npz"));
    assert!(fails(&["sample", "--checkpoint", c, "--shard", "2/2", "--out", "x.png"]).contains("0 <= K < N"));
    assert!(
        fails(&["sample", "--checkpoint", c, "--respace", "ddim7000", "--out", "x.png"])
            .contains("--respace")
    );
    assert!(fails(&["sample", "--checkpoint", d.join("none.ckpt").to_str().unwrap()]).contains("none.ckpt"));
    // The samplers with their own steps: flags that do not apply are refused with the reason.
    let own = |extra: &[&str]| {
        let mut a = vec!["sample", "--checkpoint", c, "--num", "4", "--out", "x.png"];
        a.extend_from_slice(extra);
        fails(&a)
    };
    assert!(own(&["--sampler", "ddpm", "--sample-steps", "5"]).contains("--sample-steps is for"));
    assert!(own(&["--sampler", "euler", "--sample-steps", "0"]).contains("at least 1"));
    assert!(own(&["--sampler", "dpm++2m", "--sample-steps", "5", "--s-churn", "1"]).contains("Euler's"));
    assert!(own(&["--sampler", "euler", "--s-churn", "-1"]).contains("≥ 0"));
    assert!(
        own(&["--sampler", "heun", "--sample-steps", "5", "--respace", "5"]).contains("cannot be used with")
    );
    assert!(
        own(&["--sampler", "euler", "--sample-steps", "5", "--cfg-scale", "3"]).contains("class-conditional")
    );
    assert!(own(&["--sampler", "dpm++2m", "--cfg-rescale", "0.5"]).contains("--cfg-scale"));
    // Each of them samples the 2-D model.
    for sampler in ["euler", "euler-a", "heun", "unipc", "dpm++2m", "dpmpp-2m-sde"] {
        let png = d.join(format!("{sampler}.png"));
        ok(&[
            "sample",
            "--checkpoint",
            c,
            "--sampler",
            sampler,
            "--sample-steps",
            "4",
            "--spacing",
            "trailing",
            "--karras",
            "--num",
            "8",
            "--out",
            png.to_str().unwrap(),
        ]);
        assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"), "{sampler}");
    }
    // A 2-D model samples to a scatter plot.
    let png = d.join("points.png");
    ok(&["sample", "--checkpoint", c, "--respace", "5", "--num", "50", "--out", png.to_str().unwrap()]);
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn point_models_are_compared_with_their_data() {
    let d = dir("points");
    let ckpt = d.join("mlp.ckpt");
    ok(&["model", "--preset", "mlp", "--save", ckpt.to_str().unwrap()]);
    let png = d.join("roll.png");
    let out = ok(&[
        "sample",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--respace",
        "5",
        "--num",
        "300",
        "--batch-size",
        "300",
        "--data",
        "swissroll",
        "--out",
        png.to_str().unwrap(),
    ]);
    // An untrained model's samples are far from the roll: both distances are clearly positive.
    let line = out.lines().find(|l| l.contains("sliced W2")).expect("a metrics line");
    let num = |key: &str| -> f64 {
        line.split(key)
            .nth(1)
            .unwrap()
            .trim_start_matches([' ', ','])
            .split([' ', ','])
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(num("sliced W2") > 0.05, "{line}");
    assert!(num("h = 0.2)") > 0.0, "{line}");
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    std::fs::remove_dir_all(&d).ok();
}

/// Zero terminal SNR from the command line: an ε network is refused with the reason, a v one is
/// saved with the option in its process and sampled from pure noise by the samplers that admit
/// ᾱ_T = 0 (finite distances to the data), while Langevin is refused by name.
#[test]
fn zero_terminal_snr_checkpoints_sample_with_v_prediction() {
    let d = dir("zsnr");
    let ckpt = d.join("v.ckpt");
    let c = ckpt.to_str().unwrap();
    let e = fails(&["model", "--preset", "mlp", "--zero-terminal-snr", "--save", c]);
    assert!(e.contains("zero terminal SNR") && e.contains("velocity"), "{e}");
    ok(&[
        "model",
        "--preset",
        "mlp",
        "--zero-terminal-snr",
        "--mean",
        "velocity",
        "--steps",
        "100",
        "--save",
        c,
    ]);
    for sampler in [
        &["--sampler", "ddim", "--respace", "trailing10"][..],
        &["--sampler", "euler", "--sample-steps", "6", "--spacing", "trailing"],
        &["--sampler", "dpm++2m", "--sample-steps", "6", "--spacing", "trailing"],
        &["--sampler", "unipc", "--sample-steps", "6", "--spacing", "trailing"],
    ] {
        let png = d.join("s.png");
        let mut args = vec![
            "sample",
            "--checkpoint",
            c,
            "--num",
            "64",
            "--data",
            "swissroll",
            "--out",
            png.to_str().unwrap(),
        ];
        args.extend_from_slice(sampler);
        let out = ok(&args);
        let line = out.lines().find(|l| l.contains("sliced W2")).expect("a metrics line");
        let w2: f64 = line
            .split("sliced W2")
            .nth(1)
            .unwrap()
            .trim_start_matches([' ', ',', '=', ':'])
            .split([' ', ','])
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(w2.is_finite() && w2 > 0.0, "{sampler:?}: {line}");
    }
    let e = fails(&[
        "sample",
        "--checkpoint",
        c,
        "--sampler",
        "langevin",
        "--respace",
        "5",
        "--num",
        "4",
        "--out",
        d.join("l.png").to_str().unwrap(),
    ]);
    assert!(e.contains("zero terminal SNR"), "{e}");
    std::fs::remove_dir_all(&d).ok();
}
