//! `diffusion schedule`: the JSON tables equal improved-diffusion's (the golden file of
//! diffusion-core, written by `tools/gen_reference.py` from the reference code at 1bc7bbb).

use serde_json::Value;

use crate::{fails, ok};

const KEYS: [&str; 10] = [
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

fn reference() -> Value {
    let text = include_str!("../../../diffusion-core/tests/it/reference.json");
    serde_json::from_str(text).expect("reference.json parses")
}

#[track_caller]
fn assert_tables(what: &str, ours: &Value, expected: &Value) {
    for key in KEYS {
        let a = ours[key].as_array().unwrap_or_else(|| panic!("{what}: missing {key}"));
        let e = expected[key].as_array().unwrap();
        assert_eq!(a.len(), e.len(), "{what}.{key}: length");
        for (i, (a, e)) in a.iter().zip(e).enumerate() {
            let (a, e) = (a.as_f64().unwrap(), e.as_f64().unwrap());
            assert!((a - e).abs() <= 1e-12 * e.abs(), "{what}.{key}[{i}]: {a} vs {e}");
        }
    }
}

#[test]
fn json_has_exactly_the_documented_keys_and_reference_values() {
    let r = reference();
    for (schedule, steps, name) in
        [("linear", "1000", "linear_1000"), ("cosine", "1000", "cosine_1000"), ("cosine", "50", "cosine_50")]
    {
        let out = ok(&["schedule", "--schedule", schedule, "--steps", steps, "--format", "json"]);
        let v: Value = serde_json::from_str(&out).expect("valid JSON");
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut want = KEYS.to_vec();
        want.sort_unstable();
        assert_eq!(keys, want, "{name}: keys");
        assert_tables(name, &v, &r["schedules"][name]);
    }
}

#[test]
fn respaced_json_adds_the_timestep_map() {
    let r = reference();
    let out = ok(&[
        "schedule",
        "--schedule",
        "cosine",
        "--steps",
        "1000",
        "--respace",
        "ddim50",
        "--format",
        "json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let expected = r["respaced"].as_array().unwrap().iter().find(|c| c["spec"] == "ddim50").unwrap();
    assert_eq!(v["timestep_map"], expected["timestep_map"]);
    assert_eq!(v.as_object().unwrap().len(), 11);
    assert_tables("cosine ddim50", &v, expected);
}

#[test]
fn csv_round_trips_full_precision() {
    let out = ok(&[
        "schedule",
        "--schedule",
        "linear",
        "--steps",
        "1000",
        "--respace",
        "10,15,20",
        "--format",
        "csv",
    ]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(&header[..2], &["t", "timestep"]);
    assert_eq!(&header[2..], &KEYS);
    let rows: Vec<Vec<f64>> = lines.map(|l| l.split(',').map(|x| x.parse().unwrap()).collect()).collect();
    assert_eq!(rows.len(), 45);
    let json: Value = serde_json::from_str(&ok(&[
        "schedule",
        "--steps",
        "1000",
        "--respace",
        "10,15,20",
        "--format",
        "json",
    ]))
    .unwrap();
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], i as f64);
        assert_eq!(row[1], json["timestep_map"][i].as_f64().unwrap());
        for (k, key) in KEYS.iter().enumerate() {
            // Bit-identical: both print the shortest round-trip representation.
            assert_eq!(row[2 + k], json[key][i].as_f64().unwrap(), "{key}[{i}]");
        }
    }
}

#[test]
fn table_lists_every_step_and_plot_writes_a_png() {
    let dir = std::env::temp_dir().join(format!("diffusion-schedule-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("cosine.png");
    let out = ok(&["schedule", "--schedule", "cosine", "--steps", "100", "--plot", png.to_str().unwrap()]);
    // A comment line, a header, then one row per step.
    assert_eq!(out.lines().count(), 2 + 100);
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG signature");
    // IHDR: width and height, big-endian, at bytes 16..24: three 480-pixel panels, 420 high.
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (1440, 420));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_flags_are_clear_errors() {
    assert!(fails(&["schedule", "--steps", "0"]).contains("at least one timestep"));
    assert!(fails(&["schedule", "--steps", "10"]).contains("beta[5]"), "linear at T = 10 has betas above 1");
    let err = fails(&["schedule", "--respace", "ddim400"]);
    assert!(err.contains("--respace") && err.contains("cannot create exactly 400 steps"), "{err}");
    assert!(fails(&["schedule", "--schedule", "quadratic"]).contains("quadratic"));
    assert!(fails(&["--device", "tpu", "schedule"]).contains("unknown device"));
}
