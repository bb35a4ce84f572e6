#!/usr/bin/env python3
"""Generate the golden values that diffusion-core's tests compare against.

Runs openai/improved-diffusion (commit 1bc7bbb) itself -- nothing of it is copied here -- on fixed
inputs and writes crates/diffusion-core/tests/it/reference.json.

Usage:
    python3 -m venv venv && venv/bin/pip install numpy torch
    git clone https://github.com/openai/improved-diffusion && git -C improved-diffusion checkout 1bc7bbb
    venv/bin/python tools/gen_reference.py path/to/improved-diffusion [out.json]

Inputs are drawn from numpy with fixed seeds and stored in the file as the exact float32 values
the reference saw, so the Rust tests feed the very same numbers.
"""
import json
import os
import sys

import numpy as np

# improved-diffusion's resample.py still uses np.int, removed in numpy 1.24.
if not hasattr(np, "int"):
    np.int = int  # noqa

sys.path.insert(0, sys.argv[1])
import torch as th  # noqa: E402
from improved_diffusion import gaussian_diffusion as gd  # noqa: E402
from improved_diffusion.losses import discretized_gaussian_log_likelihood, normal_kl  # noqa: E402
from improved_diffusion.resample import LossSecondMomentResampler  # noqa: E402
from improved_diffusion.respace import SpacedDiffusion, space_timesteps  # noqa: E402

OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
    os.path.dirname(__file__), "..", "crates", "diffusion-core", "tests", "it", "reference.json")

TABLE_KEYS = [
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "alphas_cumprod_next", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2",
]
MEANS = {"epsilon": gd.ModelMeanType.EPSILON, "start_x": gd.ModelMeanType.START_X,
         "previous_x": gd.ModelMeanType.PREVIOUS_X}
VARS = {"fixed_small": gd.ModelVarType.FIXED_SMALL, "fixed_large": gd.ModelVarType.FIXED_LARGE,
        "learned": gd.ModelVarType.LEARNED, "learned_range": gd.ModelVarType.LEARNED_RANGE}
LOSSES = {"mse": gd.LossType.MSE, "rescaled_mse": gd.LossType.RESCALED_MSE, "kl": gd.LossType.KL,
          "rescaled_kl": gd.LossType.RESCALED_KL}


def tensor(x):
    x = x.detach().cpu().numpy() if isinstance(x, th.Tensor) else np.asarray(x)
    return {"shape": list(x.shape), "data": [float(v) for v in x.reshape(-1)]}


def tables(d):
    return {k: [float(v) for v in getattr(d, k)] for k in TABLE_KEYS}


def make(betas, mean="epsilon", var="fixed_small", loss="mse", use_timesteps=None, rescale=False):
    kw = dict(betas=betas, model_mean_type=MEANS[mean], model_var_type=VARS[var],
              loss_type=LOSSES[loss], rescale_timesteps=rescale)
    if use_timesteps is not None:
        return SpacedDiffusion(use_timesteps=use_timesteps, **kw)
    return gd.GaussianDiffusion(**kw)


rng = np.random.default_rng(20211)
SHAPE = (4, 2, 3, 3)
# 8-bit data in [-1, 1], with both edge bins present.
x0 = (rng.integers(0, 256, size=SHAPE) / 127.5 - 1.0).astype(np.float32)
x0.reshape(-1)[:4] = [-1.0, 1.0, -1.0, 1.0]
noise = rng.standard_normal(SHAPE).astype(np.float32)
out_c = rng.standard_normal(SHAPE).astype(np.float32) * np.float32(0.5)
out_v = rng.uniform(-1, 1, size=SHAPE).astype(np.float32)
out_2c = np.concatenate([out_c, out_v], axis=1)
X0, NOISE, OUT_C, OUT_2C = (th.from_numpy(a) for a in (x0, noise, out_c, out_2c))

ref = {"source": "openai/improved-diffusion@1bc7bbb via tools/gen_reference.py",
       "inputs": {"x0": tensor(x0), "noise": tensor(noise), "out_c": tensor(out_c), "out_2c": tensor(out_2c)},
       "schedules": {}, "ops": [], "losses": [], "space_timesteps": [], "respaced": [], "bpd": [],
       "likelihood": {}, "sampler": []}

schedules = {
    "linear_1000": gd.get_named_beta_schedule("linear", 1000),
    "cosine_1000": gd.get_named_beta_schedule("cosine", 1000),
    "linear_37": gd.get_named_beta_schedule("linear", 37),
    "cosine_50": gd.get_named_beta_schedule("cosine", 50),
}
for name, betas in schedules.items():
    ref["schedules"][name] = tables(make(betas))

# Tensor operations, per schedule, with edge timesteps 0 and T - 1.
for name in ["linear_1000", "cosine_1000"]:
    betas = schedules[name]
    T = len(betas)
    t = th.tensor([0, 1, T // 2, T - 1])
    base = make(betas)
    x_t = base.q_sample(X0, t, noise=NOISE)
    qm, qv, qlv = base.q_mean_variance(X0, t)
    pm, pv, plv = base.q_posterior_mean_variance(X0, x_t, t)
    ops = {"schedule": name, "t": t.tolist(), "x_t": tensor(x_t),
           "q_mean": tensor(qm), "q_variance": tensor(qv), "q_log_variance": tensor(qlv),
           "posterior_mean": tensor(pm), "posterior_variance": tensor(pv),
           "posterior_log_variance_clipped": tensor(plv),
           "x0_from_eps": tensor(base._predict_xstart_from_eps(x_t, t, OUT_C)),
           "eps_from_x0": tensor(base._predict_eps_from_xstart(x_t, t, OUT_C)),
           "x0_from_xprev": tensor(base._predict_xstart_from_xprev(x_t, t, OUT_C)),
           "prior_bpd": tensor(base._prior_bpd(X0)),
           "p_mean_variance": [], "vb_terms_bpd": []}
    for mean in MEANS:
        for var in VARS:
            d = make(betas, mean, var)
            out = OUT_2C if var.startswith("learned") else OUT_C
            for clip in (False, True):
                r = d.p_mean_variance(lambda *a, o=out: o, x_t, t, clip_denoised=clip)
                ops["p_mean_variance"].append({
                    "mean_type": mean, "var_type": var, "clip": clip, "mean": tensor(r["mean"]),
                    "variance": tensor(r["variance"]), "log_variance": tensor(r["log_variance"]),
                    "pred_x0": tensor(r["pred_xstart"])})
                vb = d._vb_terms_bpd(lambda *a, o=out: o, X0, x_t, t, clip_denoised=clip)
                ops["vb_terms_bpd"].append({"mean_type": mean, "var_type": var, "clip": clip,
                                            "output": tensor(vb["output"]), "pred_x0": tensor(vb["pred_xstart"])})
    ref["ops"].append(ops)

    for mean in MEANS:
        for var in VARS:
            for loss in LOSSES:
                d = make(betas, mean, var, loss)
                out = OUT_2C if var.startswith("learned") else OUT_C
                terms = d.training_losses(lambda *a, o=out: o, X0, t, noise=NOISE)
                ref["losses"].append({"schedule": name, "t": t.tolist(), "mean_type": mean, "var_type": var,
                                      "loss_type": loss,
                                      **{k: tensor(v) for k, v in terms.items()}})

# Respacing.
for T, spec in [(1000, "ddim50"), (1000, "ddim25"), (1000, "250"), (1000, "25"), (300, "10,15,20"),
                (1000, "10,15,20"), (4000, "ddim100"), (50, "7,3"), (100, "ddim3")]:
    ref["space_timesteps"].append({"num_timesteps": T, "spec": spec,
                                   "steps": sorted(space_timesteps(T, spec))})
for base_name, spec in [("cosine_1000", "ddim50"), ("linear_1000", "10,15,20"), ("linear_1000", "250")]:
    betas = schedules[base_name]
    use = space_timesteps(len(betas), spec)
    d = make(betas, use_timesteps=use)
    ref["respaced"].append({"base": base_name, "spec": spec, "timestep_map": d.timestep_map, **tables(d)})


# Full-bound loop with a fixed, timestep-dependent stand-in network and recorded noise.
def stand_in(learned):
    def model(x, ts):
        h = th.tanh(x) * 0.3 + (ts.float() / 1000.0).view(-1, 1, 1, 1) * 0.1
        if learned:
            h = th.cat([h, th.tanh(x) * 0.5 - 0.2], dim=1)
        return h
    return model


for case in [dict(schedule="linear", T=25, var="fixed_small", mean="epsilon", spec=None, rescale=False, clip=True),
             dict(schedule="cosine", T=100, var="learned_range", mean="epsilon", spec="10", rescale=True, clip=True),
             dict(schedule="linear", T=30, var="fixed_large", mean="start_x", spec=None, rescale=False, clip=False),
             dict(schedule="cosine", T=40, var="learned", mean="previous_x", spec="ddim8", rescale=False, clip=False)]:
    betas = gd.get_named_beta_schedule(case["schedule"], case["T"])
    use = space_timesteps(case["T"], case["spec"]) if case["spec"] else None
    d = make(betas, case["mean"], case["var"], use_timesteps=use, rescale=case["rescale"])
    noises = [th.from_numpy(rng.standard_normal(SHAPE).astype(np.float32)) for _ in range(d.num_timesteps)]
    queue = list(noises)  # calc_bpd_loop draws noise from t = T - 1 down to 0
    orig = th.randn_like
    th.randn_like = lambda x: queue.pop(0)
    try:
        r = d.calc_bpd_loop(stand_in(case["var"].startswith("learned")), X0, clip_denoised=case["clip"])
    finally:
        th.randn_like = orig
    # Reorder to natural timestep order: column t = term at timestep t.
    nat = lambda a: tensor(th.flip(a, dims=[1]))  # noqa: E731
    ref["bpd"].append({**case, "noise_desc": [tensor(n) for n in noises],
                       "total_bpd": tensor(r["total_bpd"]), "prior_bpd": tensor(r["prior_bpd"]),
                       "vb": nat(r["vb"]), "x0_mse": nat(r["xstart_mse"]), "eps_mse": nat(r["mse"])})

# Likelihood helpers on hand-picked edge values.
xs = th.tensor([-1.0, -0.999, -0.99, 0.0, 0.5, 0.999, 1.0, 1.0, -1.0, 0.3])
mus = th.tensor([-0.9, -1.0, -0.99, 0.01, -0.5, 1.0, 0.2, 5.0, -5.0, 0.3])
ls = th.tensor([-3.0, -5.0, -7.0, 0.0, 1.0, -2.0, -1.0, -4.0, -4.0, -10.0])
ref["likelihood"] = {
    "x": tensor(xs), "means": tensor(mus), "log_scales": tensor(ls),
    "discretized_gaussian_log_likelihood": tensor(discretized_gaussian_log_likelihood(xs, means=mus, log_scales=ls)),
    "normal_kl": tensor(normal_kl(xs, ls, mus, th.flip(ls, dims=[0]))),
}

# Importance sampler: weights after feeding a fixed stream of losses.
for T, hist, uni in [(20, 10, 0.001), (7, 3, 0.1)]:
    s = LossSecondMomentResampler(make(gd.get_named_beta_schedule("cosine", T)), history_per_term=hist,
                                  uniform_prob=uni)
    ts = rng.integers(0, T, size=40 * T * hist).tolist()
    losses = rng.gamma(2.0, size=len(ts)).tolist()
    snapshots = []
    for start in range(0, len(ts), 5 * T):
        s.update_with_all_losses(ts[start:start + 5 * T], losses[start:start + 5 * T])
        snapshots.append({"fed": start + len(ts[start:start + 5 * T]), "warmed_up": bool(s._warmed_up()),
                          "weights": [float(w) for w in s.weights()]})
    ref["sampler"].append({"num_timesteps": T, "history_per_term": hist, "uniform_prob": uni,
                           "timesteps": ts, "losses": losses, "snapshots": snapshots})

os.makedirs(os.path.dirname(os.path.abspath(OUT)), exist_ok=True)
with open(OUT, "w") as f:
    json.dump(ref, f, separators=(",", ":"))
print(f"wrote {OUT}")
