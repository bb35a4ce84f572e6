//! Golden values from openai/improved-diffusion at commit 1bc7bbb.
//!
//! `reference.json` was written by `tools/gen_reference.py`, which imports the reference package
//! and runs it (PyTorch 2.15, numpy 2.4) on fixed inputs stored in the same file. The tables are
//! compared to 1e-12 relative, the float32 tensor operations to 1e-5.

use std::sync::LazyLock;

use burn::tensor::Tensor;
use diffusion_core::{
    BetaSchedule, DiffusionConfig, DiffusionTables, GaussianDiffusion, LossKind, LossSecondMomentSampler,
    ModelMean, ModelVariance, TimestepSampler, TimestepScaling, discretized_gaussian_log_likelihood,
    normal_kl, space_timesteps,
};
use serde_json::Value;

use crate::common::{assert_close, assert_tensor_close, device, tensor, timesteps};

static REF: LazyLock<Value> =
    LazyLock::new(|| serde_json::from_str(include_str!("reference.json")).expect("reference.json parses"));

const TABLE_TOL: f64 = 1e-12;
const OP_TOL: f64 = 1e-5;

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("integer") as usize).collect()
}

/// `(flat f32 data, shape)` of a stored tensor.
fn stored(v: &Value) -> (Vec<f32>, Vec<usize>) {
    (floats(&v["data"]).into_iter().map(|x| x as f32).collect(), usizes(&v["shape"]))
}

fn stored4(v: &Value) -> Tensor<4> {
    let (data, shape) = stored(v);
    tensor(&data, [shape[0], shape[1], shape[2], shape[3]], &device())
}

fn mean_of(name: &str) -> ModelMean {
    match name {
        "epsilon" => ModelMean::Epsilon,
        "start_x" => ModelMean::StartX,
        "previous_x" => ModelMean::PreviousX,
        other => panic!("unknown mean type {other}"),
    }
}

fn var_of(name: &str) -> ModelVariance {
    match name {
        "fixed_small" => ModelVariance::FixedSmall,
        "fixed_large" => ModelVariance::FixedLarge,
        "learned" => ModelVariance::Learned,
        "learned_range" => ModelVariance::LearnedRange,
        other => panic!("unknown variance type {other}"),
    }
}

fn loss_of(name: &str) -> LossKind {
    match name {
        "mse" => LossKind::Mse,
        "rescaled_mse" => LossKind::RescaledMse,
        "kl" => LossKind::Kl,
        "rescaled_kl" => LossKind::RescaledKl,
        other => panic!("unknown loss type {other}"),
    }
}

fn schedule(name: &str) -> BetaSchedule {
    let (kind, t) = name.split_once('_').expect("name_T");
    BetaSchedule::named(kind, t.parse().expect("T")).expect("known schedule")
}

fn table_json(tables: &DiffusionTables) -> Value {
    serde_json::to_value(tables).expect("tables serialise")
}

#[track_caller]
fn check_tables(what: &str, ours: &DiffusionTables, expected: &Value) {
    let ours = table_json(ours);
    let expected = expected.as_object().expect("object");
    let mut checked = 0;
    for (key, values) in expected {
        if key == "timestep_map" || key == "base" || key == "spec" {
            continue;
        }
        assert_close(&format!("{what}.{key}"), &floats(&ours[key]), &floats(values), TABLE_TOL, 0.0);
        checked += 1;
    }
    assert_eq!(checked, 13, "{what}: every table of the reference is compared");
}

#[test]
fn schedule_tables_match_reference() {
    for (name, expected) in REF["schedules"].as_object().unwrap() {
        let d = GaussianDiffusion::from_schedule(&schedule(name), DiffusionConfig::default()).unwrap();
        check_tables(name, d.tables(), expected);
    }
}

#[test]
fn space_timesteps_match_reference() {
    for case in REF["space_timesteps"].as_array().unwrap() {
        let t = case["num_timesteps"].as_u64().unwrap() as usize;
        let spec = case["spec"].as_str().unwrap();
        assert_eq!(
            space_timesteps(t, spec).unwrap(),
            usizes(&case["steps"]),
            "space_timesteps({t}, {spec:?})"
        );
    }
}

#[test]
fn respaced_tables_and_map_match_reference() {
    for case in REF["respaced"].as_array().unwrap() {
        let base =
            GaussianDiffusion::from_schedule(&schedule(case["base"].as_str().unwrap()), Default::default())
                .unwrap();
        let spec = case["spec"].as_str().unwrap();
        let d = base.respace_spec(spec).unwrap();
        assert_eq!(d.timestep_map(), usizes(&case["timestep_map"]).as_slice(), "{spec}: timestep map");
        check_tables(&format!("respaced {spec}"), d.tables(), case);
    }
}

#[test]
fn forward_and_posterior_ops_match_reference() {
    let dev = device();
    let x0 = stored4(&REF["inputs"]["x0"]);
    let noise = stored4(&REF["inputs"]["noise"]);
    let out_c = stored4(&REF["inputs"]["out_c"]);
    for ops in REF["ops"].as_array().unwrap() {
        let name = ops["schedule"].as_str().unwrap();
        let d = GaussianDiffusion::from_schedule(&schedule(name), DiffusionConfig::default()).unwrap();
        let t = timesteps(&usizes(&ops["t"]), &dev);
        let exp = |k: &str| floats(&ops[k]["data"]);
        let x_t = d.q_sample(x0.clone(), t.clone(), noise.clone());
        assert_tensor_close(&format!("{name} q_sample"), x_t.clone(), &exp("x_t"), OP_TOL);
        // From here on use the reference's own x_t, so each check tests one function.
        let x_t = stored4(&ops["x_t"]);
        let q = d.q_mean_variance(x0.clone(), t.clone());
        assert_tensor_close(&format!("{name} q_mean"), q.mean, &exp("q_mean"), OP_TOL);
        assert_tensor_close(&format!("{name} q_variance"), q.variance, &exp("q_variance"), OP_TOL);
        assert_tensor_close(
            &format!("{name} q_log_variance"),
            q.log_variance,
            &exp("q_log_variance"),
            OP_TOL,
        );
        let p = d.q_posterior_mean_variance(x0.clone(), x_t.clone(), t.clone());
        assert_tensor_close(&format!("{name} posterior_mean"), p.mean, &exp("posterior_mean"), OP_TOL);
        assert_tensor_close(
            &format!("{name} posterior_variance"),
            p.variance,
            &exp("posterior_variance"),
            OP_TOL,
        );
        assert_tensor_close(
            &format!("{name} posterior_log_variance_clipped"),
            p.log_variance_clipped,
            &exp("posterior_log_variance_clipped"),
            OP_TOL,
        );
        let x0_eps = d.predict_x0_from_eps(x_t.clone(), t.clone(), out_c.clone());
        assert_tensor_close(&format!("{name} x0_from_eps"), x0_eps, &exp("x0_from_eps"), OP_TOL);
        let eps_x0 = d.predict_eps_from_x0(x_t.clone(), t.clone(), out_c.clone());
        assert_tensor_close(&format!("{name} eps_from_x0"), eps_x0, &exp("eps_from_x0"), OP_TOL);
        let x0_prev = d.predict_x0_from_xprev(x_t.clone(), t.clone(), out_c.clone());
        assert_tensor_close(&format!("{name} x0_from_xprev"), x0_prev, &exp("x0_from_xprev"), OP_TOL);
        assert_tensor_close(&format!("{name} prior_bpd"), d.prior_bpd(x0.clone()), &exp("prior_bpd"), OP_TOL);
    }
}

#[test]
fn p_mean_variance_and_vb_terms_match_reference_for_every_parameterisation() {
    let dev = device();
    let x0 = stored4(&REF["inputs"]["x0"]);
    let out_c = stored4(&REF["inputs"]["out_c"]);
    let out_2c = stored4(&REF["inputs"]["out_2c"]);
    let mut combos = 0;
    for ops in REF["ops"].as_array().unwrap() {
        let name = ops["schedule"].as_str().unwrap();
        let t = timesteps(&usizes(&ops["t"]), &dev);
        let x_t = stored4(&ops["x_t"]);
        let pmv_cases = ops["p_mean_variance"].as_array().unwrap();
        let vb_cases = ops["vb_terms_bpd"].as_array().unwrap();
        for (case, vb_case) in pmv_cases.iter().zip(vb_cases) {
            let config = DiffusionConfig {
                mean: mean_of(case["mean_type"].as_str().unwrap()),
                variance: var_of(case["var_type"].as_str().unwrap()),
                ..Default::default()
            };
            let d = GaussianDiffusion::from_schedule(&schedule(name), config).unwrap();
            let clip = case["clip"].as_bool().unwrap();
            let out = if config.variance.is_learned() { out_2c.clone() } else { out_c.clone() };
            let what = format!("{name} {:?}/{:?} clip={clip}", config.mean, config.variance);
            let r = d.p_mean_variance(out.clone(), x_t.clone(), t.clone(), clip);
            let exp = |k: &str| floats(&case[k]["data"]);
            assert_tensor_close(&format!("{what} mean"), r.mean, &exp("mean"), OP_TOL);
            assert_tensor_close(&format!("{what} variance"), r.variance, &exp("variance"), OP_TOL);
            assert_tensor_close(
                &format!("{what} log_variance"),
                r.log_variance,
                &exp("log_variance"),
                OP_TOL,
            );
            assert_tensor_close(&format!("{what} pred_x0"), r.pred_x0, &exp("pred_x0"), OP_TOL);
            let vb = d.vb_terms_bpd(out, x0.clone(), x_t.clone(), t.clone(), clip);
            assert_tensor_close(
                &format!("{what} vb"),
                vb.output,
                &floats(&vb_case["output"]["data"]),
                OP_TOL,
            );
            combos += 1;
        }
    }
    assert_eq!(combos, 2 * 3 * 4 * 2, "schedules × means × variances × clip");
}

#[test]
fn training_losses_match_reference_for_every_objective() {
    let dev = device();
    let x0 = stored4(&REF["inputs"]["x0"]);
    let noise = stored4(&REF["inputs"]["noise"]);
    let out_c = stored4(&REF["inputs"]["out_c"]);
    let out_2c = stored4(&REF["inputs"]["out_2c"]);
    let cases = REF["losses"].as_array().unwrap();
    assert_eq!(cases.len(), 2 * 3 * 4 * 4);
    for case in cases {
        let name = case["schedule"].as_str().unwrap();
        let config = DiffusionConfig {
            mean: mean_of(case["mean_type"].as_str().unwrap()),
            variance: var_of(case["var_type"].as_str().unwrap()),
            loss: loss_of(case["loss_type"].as_str().unwrap()),
            ..Default::default()
        };
        let d = GaussianDiffusion::from_schedule(&schedule(name), config).unwrap();
        let t = timesteps(&usizes(&case["t"]), &dev);
        let out = if config.variance.is_learned() { out_2c.clone() } else { out_c.clone() };
        let what = format!("{name} {config:?}");
        let l = d.training_losses(x0.clone(), t, noise.clone(), |_, _| out);
        assert_tensor_close(&format!("{what} loss"), l.loss, &floats(&case["loss"]["data"]), OP_TOL);
        match (l.mse, case.get("mse")) {
            (Some(m), Some(e)) => assert_tensor_close(&format!("{what} mse"), m, &floats(&e["data"]), OP_TOL),
            (None, None) => {}
            (m, e) => panic!("{what}: mse present here: {}, in the reference: {}", m.is_some(), e.is_some()),
        }
        if let Some(e) = case.get("vb") {
            let vb = l.vb.unwrap_or_else(|| panic!("{what}: the reference has a vb term"));
            assert_tensor_close(&format!("{what} vb"), vb, &floats(&e["data"]), OP_TOL);
        }
    }
}

#[test]
fn full_bound_loop_matches_reference() {
    let x0 = stored4(&REF["inputs"]["x0"]);
    for case in REF["bpd"].as_array().unwrap() {
        let var = var_of(case["var"].as_str().unwrap());
        let config = DiffusionConfig {
            mean: mean_of(case["mean"].as_str().unwrap()),
            variance: var,
            timestep_scaling: if case["rescale"].as_bool().unwrap() {
                TimestepScaling::Rescaled1000
            } else {
                TimestepScaling::Original
            },
            ..Default::default()
        };
        let steps = case["T"].as_u64().unwrap() as usize;
        let mut d = GaussianDiffusion::from_schedule(
            &BetaSchedule::named(case["schedule"].as_str().unwrap(), steps).unwrap(),
            config,
        )
        .unwrap();
        if let Some(spec) = case["spec"].as_str() {
            d = d.respace_spec(spec).unwrap();
        }
        // The reference drew noise for t = T-1 first; noise_desc is in that order.
        let noises: Vec<Tensor<4>> = case["noise_desc"].as_array().unwrap().iter().map(stored4).collect();
        let num_t = d.num_timesteps();
        assert_eq!(noises.len(), num_t);
        // The stand-in network of gen_reference.py: tanh(x)·0.3 + 0.1·t/1000 (+ variance channels).
        let model = |x: Tensor<4>, ts: Tensor<1>| {
            let b = x.dims()[0];
            let h = x.clone().tanh().mul_scalar(0.3)
                + ts.div_scalar(1000.0).mul_scalar(0.1).reshape([b, 1, 1, 1]);
            if var.is_learned() {
                Tensor::cat(vec![h, x.tanh().mul_scalar(0.5).add_scalar(-0.2)], 1)
            } else {
                h
            }
        };
        let clip = case["clip"].as_bool().unwrap();
        let r = d.calc_bpd_loop(x0.clone(), clip, model, |t| noises[num_t - 1 - t].clone());
        let what = format!("bpd {} T={steps} {:?}", case["schedule"], case["spec"]);
        let exp = |k: &str| floats(&case[k]["data"]);
        assert_tensor_close(&format!("{what} total"), r.total_bpd, &exp("total_bpd"), OP_TOL);
        assert_tensor_close(&format!("{what} prior"), r.prior_bpd, &exp("prior_bpd"), OP_TOL);
        assert_tensor_close(&format!("{what} vb"), r.vb, &exp("vb"), OP_TOL);
        assert_tensor_close(&format!("{what} x0_mse"), r.x0_mse, &exp("x0_mse"), OP_TOL);
        assert_tensor_close(&format!("{what} eps_mse"), r.eps_mse, &exp("eps_mse"), 1e-4);
    }
}

#[test]
fn likelihood_helpers_match_reference_at_the_edges() {
    let dev = device();
    let l = &REF["likelihood"];
    let get = |k: &str| {
        let (d, s) = stored(&l[k]);
        tensor(&d, [s[0]], &dev)
    };
    let ll = discretized_gaussian_log_likelihood(get("x"), get("means"), get("log_scales"));
    assert_tensor_close(
        "discretized_gaussian_log_likelihood",
        ll,
        &floats(&l["discretized_gaussian_log_likelihood"]["data"]),
        OP_TOL,
    );
    let flipped = get("log_scales").flip([0]);
    let kl = normal_kl(get("x"), get("log_scales"), get("means"), flipped);
    assert_tensor_close("normal_kl", kl, &floats(&l["normal_kl"]["data"]), OP_TOL);
}

#[test]
fn importance_sampler_weights_match_reference() {
    for case in REF["sampler"].as_array().unwrap() {
        let t = case["num_timesteps"].as_u64().unwrap() as usize;
        let hist = case["history_per_term"].as_u64().unwrap() as usize;
        let uni = case["uniform_prob"].as_f64().unwrap();
        let mut s = LossSecondMomentSampler::with_settings(t, hist, uni).unwrap();
        let ts = usizes(&case["timesteps"]);
        let losses = floats(&case["losses"]);
        let mut fed = 0;
        let mut warmed = false;
        for snap in case["snapshots"].as_array().unwrap() {
            let upto = snap["fed"].as_u64().unwrap() as usize;
            s.update(&ts[fed..upto], &losses[fed..upto]).unwrap();
            fed = upto;
            assert_eq!(s.warmed_up(), snap["warmed_up"].as_bool().unwrap(), "warm-up after {fed} losses");
            warmed |= s.warmed_up();
            assert_close(
                &format!("weights after {fed}"),
                &s.weights(),
                &floats(&snap["weights"]),
                TABLE_TOL,
                0.0,
            );
        }
        assert!(warmed, "the fixture reaches the importance-sampling regime");
        // Resuming from serialised state continues identically.
        let json = serde_json::to_string(&s).unwrap();
        let back: LossSecondMomentSampler = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        back.validate(t).unwrap();
    }
}
