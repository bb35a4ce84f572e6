//! `diffusion eval nll`: the full bound and its stratified estimate agree; per-term CSV; errors.

use crate::{fails, ok};

fn nll(line: &str) -> f64 {
    line.strip_prefix("NLL: ").unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn full_bound_and_stratified_estimate_agree() {
    let d = std::env::temp_dir().join(format!("diffusion-eval-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let ckpt = d.join("tiny.ckpt");
    let csv = d.join("terms.csv");
    ok(&["model", "--preset", "tiny", "--save", ckpt.to_str().unwrap()]);
    let c = ckpt.to_str().unwrap();
    let common = ["eval", "nll", "--checkpoint", c, "--schedule", "cosine", "--steps", "20", "--num", "3"];
    let full = ok(&[&common[..], &["--csv", csv.to_str().unwrap()]].concat());
    let lines: Vec<&str> = full.lines().collect();
    let total = nll(lines[0]);
    // The total is the sum of the reported parts.
    let part = |name: &str| -> f64 {
        let l = lines.iter().find(|l| l.contains(name)).unwrap();
        l.split(": ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap()
    };
    let parts = part("prior") + part("decoder") + part("sum of L_t");
    assert!((total - parts).abs() < 1e-3, "{total} vs {parts}");
    // One CSV row per timestep, whose terms add up to the total minus the prior.
    let text = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<Vec<f64>> =
        text.lines().skip(1).map(|l| l.split(',').map(|x| x.parse().unwrap()).collect()).collect();
    assert_eq!(rows.len(), 20);
    let vb: f64 = rows.iter().map(|r| r[2]).sum();
    assert!((vb + part("prior") - total).abs() < 1e-3);
    // One stratum per timestep is the full bound itself; fewer strata give an interval.
    let same = nll(&ok(&[&common[..], &["--strata", "20"]].concat()));
    assert!((same - total).abs() < 1e-3 * total, "{same} vs {total}");
    let est = ok(&[&common[..], &["--strata", "4"]].concat());
    assert!(est.contains("stratified estimate") && est.contains("±"));
    // Errors: per-term outputs need the full bound; data must fit the model.
    assert!(fails(&[&common[..], &["--strata", "4", "--csv", "x.csv"]].concat()).contains("full bound"));
    assert!(fails(&[&common[..], &["--data", "swissroll"]].concat()).contains("point sets"));
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let spec = format!("folder:{}", empty.display());
    assert!(fails(&[&common[..], &["--data", &spec]].concat()).contains("no images found"));
    std::fs::remove_dir_all(&d).ok();
}
