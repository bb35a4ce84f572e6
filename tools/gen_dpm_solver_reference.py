#!/usr/bin/env python3
"""Generate golden values from huggingface diffusers' DPMSolverMultistepScheduler for
diffusion-sample's tests: whole sampling runs (DPM-Solver++ 2M / 3M and SDE-DPM-Solver++ 2M) driven
by a deterministic stand-in network that the Rust test can evaluate itself.

Imports diffusers (installed from PyPI) -- nothing of it is copied here -- and writes
crates/diffusion-sample/tests/it/fixtures/dpm_solver.json.

Usage:
    python3 -m venv venv && venv/bin/pip install numpy torch diffusers==0.42.1
    venv/bin/python tools/gen_dpm_solver_reference.py [out.json]

(Generated with diffusers 0.42.1, torch 2.15.0, numpy 2.4.6 on CPU; the exact versions used are
recorded in the file's "source" field.)

Each run is what a diffusers pipeline does with the scheduler:

    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=1e-4,
                                            beta_end=0.02, beta_schedule=..., **config)
    scheduler.set_timesteps(num_inference_steps)
    [scheduler.set_begin_index(0)]                  only where "begin_index" is 0
    x = x_T * scheduler.init_noise_sigma            init_noise_sigma is 1.0 (checked)
    for t in scheduler.timesteps:                   t: a 0-d torch.int64 tensor
        out = net(scheduler.scale_model_input(x, t), t)    (scale_model_input is the identity)
        x = scheduler.step(out, t, x, generator=g).prev_sample

The stand-in network, for x (2,2,3,3) float32 and the model timestep t converted to float32
(s = float32(t); the timesteps are int64, so s is exact):
    out = A*x + B*s,  (A, B) = (0.9, 0.0003) for prediction_type "epsilon",
                               (0.5, -0.0001) for "sample",
                               (0.7, 0.0002) for "v_prediction",
  with A, B rounded to float32 first and everything in float32: each product rounded, then the
  sum rounded ("sample" is written 0.5*x - 0.0001*s, the same number). The same (A, B) are in the
  file's "network" field.

For the sde-dpmsolver++ runs, diffusers.schedulers.scheduling_dpmsolver_multistep.randn_tensor
(which step() calls once per step, the last step included, to draw the SDE noise) is replaced by a
function that returns inputs["noises"][k] at its k-th call (k = 0 at the first step); the number of
calls is checked and stored as "num_noise_calls".

Format
------
A tensor is {"shape": [...], "data": [flat, row-major floats]}; each float is the shortest
decimal that parses back to the same float32 (parse as f32, or as f64 then cast). Lists of
float32 values ("sigmas", "alphas_cumprod", ...) are written the same way. Values marked f64 are
float64, written as Python's repr (the shortest decimal that round-trips as f64).

    {"source": str,
     "init_noise_sigma": 1.0,
     "network": {prediction_type: [A, B]},
     "inputs": {"x_T": tensor (2,2,3,3) N(0,1), float32,
                "noises": tensor (20,2,2,3,3) N(0,1), float32},
     "schedules": {beta_schedule: schedule},
     "runs": [run]}

schedule ("linear": betas = linspace(1e-4, 0.02, 1000); "squaredcos_cap_v2": the Glide cosine
schedule, betas_for_alpha_bar with max_beta 0.999):
    {"alphas_cumprod": [1000 float32]   what the scheduler holds (torch float32; torch's CPU
                                        cumprod of float32 accumulates in float64 and rounds each
                                        entry to float32)
     "alphas_cumprod_f64": [1000 f64]   cumprod(1 - betas) with the betas computed in float64
                                        (torch.linspace(..., float64) / betas_for_alpha_bar's own
                                        float64 Python floats) and the product in float64
     "sigmas": [1000 float32]           sqrt((1 - alphas_cumprod) / alphas_cumprod), the
                                        scheduler's float32 training sigmas (as torch computes
                                        them: torch's float32 sqrt here is not always correctly
                                        rounded, see below)
     "log_sigmas": [1000 float32]}      numpy.log of "sigmas" in float32, which set_timesteps
                                        uses to map Karras sigmas back to timesteps

run:
    {"algorithm_type": "dpmsolver++"|"sde-dpmsolver++", "solver_order": 2|3,
     "prediction_type": "epsilon"|"sample"|"v_prediction", "num_inference_steps": 10|20,
     "timestep_spacing": "linspace"|"trailing"|"leading", "beta_schedule": str (a key of
     "schedules"), "use_karras_sigmas": bool, "final_sigmas_type": "zero",
     "lower_order_final": true, "euler_at_final": false, "solver_type": "midpoint",
     "begin_index": null|0 (0: set_begin_index(0) was called before the loop),
     "timesteps": [int]       scheduler.timesteps after set_timesteps (int64, descending)
     "sigmas": [float32]      scheduler.sigmas after set_timesteps (len N+1, last 0)
     "karras_sigmas_f64": [f64], "karras_timesteps_f64": [f64]
                              Karras runs only: the float64 sigmas _convert_to_karras returned
                              (before the float32 cast) and the float64 timesteps _sigma_to_t
                              returned (before rounding -- linear only -- and the int64 cast,
                              which truncates)
     and either
     "error": str             the loop raised (Karras with squaredcos_cap_v2 without a begin
                              index: the truncated timesteps repeat, step() starts at index 1 of
                              the repeated first timestep and runs off the end of sigmas)
     or
     "model_t": [int]         the timestep the network got at each step (0-d int64 tensors;
                              equal to "timesteps")
     "orders": [int]          which update step() used at each step: 1, 2 or 3
     "x_T": "x_T"             name of the initial latent in "inputs"
     "noises": "noises"|null, "num_noise_calls": int
     "x0_pred": tensor (N,2,2,3,3)  what convert_model_output returned at step k (the data
                                    prediction the solver used)
     "samples": tensor (N,2,2,3,3)  the sample after step k (prev_sample), k = 0..N-1
     "final": tensor (2,2,3,3)}     the last sample (= samples[N-1])

Precision: diffusers computes all of this in float32 (torch tensors); only set_timesteps goes
through float64 numpy (np.interp, the Karras formula, _sigma_to_t) before casting the sigmas to
float32. Torch's float32 sqrt / exp / log on this CPU are not all correctly rounded (the training
sigmas differ from a correctly rounded sqrt by 1 ulp in about 16% of entries), so compare with a
tolerance rather than bit for bit.
"""
import json
import os
import sys
from importlib.metadata import version
from unittest import mock

import numpy as np
import torch

import diffusers
from diffusers import DPMSolverMultistepScheduler
from diffusers.schedulers import scheduling_dpmsolver_multistep as dpm_mod

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_diffusers_reference import schedule_f64  # noqa: E402

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "crates", "diffusion-sample", "tests", "it", "fixtures",
    "dpm_solver.json")

SOURCE = (f"huggingface/diffusers {diffusers.__version__} DPMSolverMultistepScheduler (PyPI; torch "
          f"{version('torch')}, numpy {version('numpy')}) via tools/gen_dpm_solver_reference.py")

T_TRAIN, BETA_START, BETA_END = 1000, 0.0001, 0.02
SHAPE = (2, 2, 3, 3)
MAX_STEPS = 20
NETWORK = {"epsilon": (0.9, 0.0003), "sample": (0.5, -0.0001), "v_prediction": (0.7, 0.0002)}

torch.set_grad_enabled(False)


def f32_list(x):
    """float32 values as Python floats, each the shortest decimal that round-trips as float32."""
    a = (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).astype(np.float32)
    assert np.all(np.isfinite(a)), "non-finite reference value"
    data = [float(str(v)) for v in a.reshape(-1)]
    assert np.array_equal(np.array(data, dtype=np.float64).astype(np.float32), a.reshape(-1))
    return data


def tensor(x):
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    assert a.dtype == np.float32, a.dtype
    return {"shape": list(a.shape), "data": f32_list(a)}


def f64_list(x):
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    assert np.all(np.isfinite(a))
    return [float(v) for v in a]


def net(x, t, prediction_type):
    """The stand-in network: A*x + B*float32(t), all float32."""
    a, b = (torch.tensor(v, dtype=torch.float32) for v in NETWORK[prediction_type])
    assert x.dtype == torch.float32
    s = torch.as_tensor(t).to(torch.float32)
    if prediction_type == "sample":
        return torch.tensor(0.5, dtype=torch.float32) * x - torch.tensor(0.0001, dtype=torch.float32) * s
    return a * x + b * s


def betas_f64(name):
    """The schedule's betas in float64, as tools/gen_diffusers_reference.py computes them (for the
    cosine schedule checked against this scheduler's own float32 betas, which it casts from the
    float64 values; its linear betas come from a float32 linspace, an ulp away)."""
    b = schedule_f64(name, T_TRAIN)
    if name == "squaredcos_cap_v2":
        assert torch.equal(b.float(), dpm_mod.betas_for_alpha_bar(T_TRAIN))
    return b


class FixedNoise:
    """Stands in for scheduling_dpmsolver_multistep.randn_tensor: returns noises[k] at call k."""

    def __init__(self, noises):
        self.noises, self.calls = noises, 0

    def __call__(self, shape, generator=None, device=None, dtype=None, **kw):
        assert tuple(shape) == SHAPE and dtype == torch.float32, (shape, dtype)
        assert generator is not None  # the pipeline's generator still reaches the call
        out = torch.from_numpy(self.noises[self.calls].copy())
        self.calls += 1
        return out


rng = np.random.default_rng(20240611)
x_T_np = rng.standard_normal(SHAPE).astype(np.float32)
noises_np = rng.standard_normal((MAX_STEPS, *SHAPE)).astype(np.float32)

ref = {"source": SOURCE, "init_noise_sigma": 1.0,
       "network": {k: f32_list(np.array(ab, dtype=np.float32)) for k, ab in NETWORK.items()},
       "inputs": {"x_T": tensor(x_T_np), "noises": tensor(noises_np)},
       "schedules": {}, "runs": []}

for name in ("linear", "squaredcos_cap_v2"):
    s = DPMSolverMultistepScheduler(num_train_timesteps=T_TRAIN, beta_start=BETA_START, beta_end=BETA_END,
                                    beta_schedule=name)
    assert s.alphas_cumprod.dtype == torch.float32 and s.sigmas.dtype == torch.float32
    sig = (((1 - s.alphas_cumprod) / s.alphas_cumprod) ** 0.5).numpy()  # as set_timesteps does
    assert sig.dtype == np.float32 and np.array_equal(sig, s.sigmas.numpy())
    log_sig = np.log(sig)
    assert log_sig.dtype == np.float32
    ac64 = torch.cumprod(1.0 - betas_f64(name), dim=0)
    d = (ac64 - s.alphas_cumprod.double()).abs().max().item()
    print(f"{name}: max |alphas_cumprod_f64 - alphas_cumprod| = {d:.3g}")
    ref["schedules"][name] = {"alphas_cumprod": f32_list(s.alphas_cumprod), "alphas_cumprod_f64": f64_list(ac64),
                              "sigmas": f32_list(sig), "log_sigmas": f32_list(log_sig)}


def run(algorithm_type, solver_order, prediction_type, n, spacing, beta_schedule, karras, begin_index=None):
    cfg = {"algorithm_type": algorithm_type, "solver_order": solver_order, "prediction_type": prediction_type,
           "num_inference_steps": n, "timestep_spacing": spacing, "beta_schedule": beta_schedule,
           "use_karras_sigmas": karras, "final_sigmas_type": "zero", "lower_order_final": True,
           "euler_at_final": False, "solver_type": "midpoint", "begin_index": begin_index}
    s = DPMSolverMultistepScheduler(
        num_train_timesteps=T_TRAIN, beta_start=BETA_START, beta_end=BETA_END, beta_schedule=beta_schedule,
        solver_order=solver_order, prediction_type=prediction_type, algorithm_type=algorithm_type,
        timestep_spacing=spacing, use_karras_sigmas=karras, final_sigmas_type="zero")
    for k in ("lower_order_final", "euler_at_final", "solver_type", "thresholding", "variance_type",
              "lambda_min_clipped", "steps_offset", "rescale_betas_zero_snr"):
        assert k not in cfg or s.config[k] == cfg[k], k
    assert not s.config.thresholding and s.config.steps_offset == 0 and s.config.variance_type is None
    assert s.config.lambda_min_clipped == -float("inf")

    # Capture the float64 intermediates of the Karras path (instance attributes shadow the methods).
    captured = {"karras": None, "t": []}
    if karras:
        to_karras, sigma_to_t = s._convert_to_karras, s._sigma_to_t

        def conv(*a, **kw):
            out = to_karras(*a, **kw)
            captured["karras"] = np.array(out, dtype=np.float64)
            return out

        def s2t(*a, **kw):
            out = sigma_to_t(*a, **kw)
            captured["t"].append(float(out))
            return out

        s._convert_to_karras, s._sigma_to_t = conv, s2t

    s.set_timesteps(n)
    assert s.init_noise_sigma == 1.0
    assert s.timesteps.dtype == torch.int64 and s.sigmas.dtype == torch.float32
    assert len(s.timesteps) == n and len(s.sigmas) == n + 1 and s.sigmas[-1].item() == 0.0
    cfg["timesteps"] = [int(t) for t in s.timesteps.tolist()]
    cfg["sigmas"] = f32_list(s.sigmas)
    train_sig = np.array(ref["schedules"][beta_schedule]["sigmas"], dtype=np.float32)
    if karras:
        assert captured["karras"] is not None and len(captured["t"]) == n
        assert np.array_equal(captured["karras"].astype(np.float32), s.sigmas.numpy()[:-1])
        cfg["karras_sigmas_f64"] = f64_list(captured["karras"])
        cfg["karras_timesteps_f64"] = f64_list(captured["t"])
    else:
        # np.interp at integer timesteps picks the training sigma itself.
        assert np.array_equal(s.sigmas.numpy()[:-1], train_sig[s.timesteps.numpy()])
    if begin_index is not None:
        s.set_begin_index(begin_index)

    x0_preds, orders = [], []
    convert = s.convert_model_output

    def convert_rec(*a, **kw):
        out = convert(*a, **kw)
        x0_preds.append(out.clone())
        return out

    s.convert_model_output = convert_rec
    for order, fn_name in ((1, "dpm_solver_first_order_update"), (2, "multistep_dpm_solver_second_order_update"),
                           (3, "multistep_dpm_solver_third_order_update")):
        def wrap(fn, order=order):
            def inner(*a, **kw):
                orders.append(order)
                return fn(*a, **kw)
            return inner
        setattr(s, fn_name, wrap(getattr(s, fn_name)))

    sde = algorithm_type.startswith("sde")
    noise = FixedNoise(noises_np)
    gen = torch.Generator().manual_seed(0)
    x = torch.from_numpy(x_T_np.copy()) * s.init_noise_sigma
    model_t, samples = [], []
    try:
        with mock.patch.object(dpm_mod, "randn_tensor", noise):
            for t in s.timesteps:
                assert isinstance(t, torch.Tensor) and t.dtype == torch.int64 and t.dim() == 0
                model_t.append(int(t))
                inp = s.scale_model_input(x, t)
                assert inp is x
                out = net(inp, t, prediction_type)
                x = s.step(out, t, x, generator=gen).prev_sample
                assert x.dtype == torch.float32
                samples.append(x.clone())
    except Exception as e:  # noqa: BLE001
        cfg["error"] = f"{type(e).__name__}: {e}"
        print("  error:", {k: cfg[k] for k in ("algorithm_type", "solver_order", "prediction_type",
                                                "num_inference_steps", "beta_schedule")}, cfg["error"])
        return cfg
    assert noise.calls == (n if sde else 0), noise.calls
    assert len(x0_preds) == n and len(orders) == n
    assert model_t == cfg["timesteps"]
    # final_sigmas_type "zero": the last step is first order onto sigma 0 and returns the data
    # prediction itself.
    assert orders[-1] == 1 and torch.equal(samples[-1], x0_preds[-1])
    cfg.update({"model_t": model_t, "orders": orders, "x_T": "x_T", "noises": "noises" if sde else None,
                "num_noise_calls": noise.calls, "x0_pred": tensor(torch.stack(x0_preds)),
                "samples": tensor(torch.stack(samples)), "final": tensor(samples[-1])})
    return cfg


ALGOS = [("dpmsolver++", 2), ("dpmsolver++", 3), ("sde-dpmsolver++", 2)]
PREDS = ("epsilon", "sample", "v_prediction")
for algo, order in ALGOS:
    for pred in PREDS:
        for n in (10, 20):
            for spacing in ("linspace", "trailing", "leading"):
                for bs in ("linear", "squaredcos_cap_v2"):
                    ref["runs"].append(run(algo, order, pred, n, spacing, bs, False))
# Karras sigmas (timestep_spacing only picks timesteps that Karras then replaces). With
# squaredcos_cap_v2 the plain loop fails (recorded as an error); it is rerun with begin_index 0.
for algo, order in ALGOS:
    for pred in ("epsilon", "v_prediction"):
        for n in (10, 20):
            for bs in ("linear", "squaredcos_cap_v2"):
                ref["runs"].append(run(algo, order, pred, n, "linspace", bs, True))
                if bs == "squaredcos_cap_v2":
                    ref["runs"].append(run(algo, order, pred, n, "linspace", bs, True, begin_index=0))

# The SDE noise must have gone in: the same run with other noise ends elsewhere.
a = run("sde-dpmsolver++", 2, "epsilon", 10, "linspace", "linear", False)
noises_np = noises_np[::-1].copy()
b = run("sde-dpmsolver++", 2, "epsilon", 10, "linspace", "linear", False)
assert a["final"] != b["final"]

os.makedirs(os.path.dirname(os.path.abspath(OUT)), exist_ok=True)
with open(OUT, "w") as f:
    json.dump(ref, f, separators=(",", ":"), allow_nan=False)
ok = sum("error" not in r for r in ref["runs"])
print(f"wrote {OUT}: {len(ref['runs'])} runs ({ok} complete, {len(ref['runs']) - ok} errors), "
      f"{os.path.getsize(OUT)} bytes")
