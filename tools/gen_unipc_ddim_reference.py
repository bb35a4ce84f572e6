#!/usr/bin/env python3
"""Generate golden values from huggingface diffusers' UniPCMultistepScheduler and DDIMScheduler for
diffusion-sample's tests: whole sampling runs (UniPC bh2 / bh1, orders 2 and 3, with the UniC
corrector; DDIM with eta 0 and 0.5) driven by a deterministic stand-in network that the Rust test
can evaluate itself.

Imports diffusers (installed from PyPI) -- nothing of it is copied here -- and writes
crates/diffusion-sample/tests/it/fixtures/unipc_ddim.json.

Usage:
    python3 -m venv venv && venv/bin/pip install numpy torch diffusers==0.42.1
    venv/bin/python tools/gen_unipc_ddim_reference.py [out.json]

(Generated with diffusers 0.42.1, torch 2.15.0, numpy 2.4.6 on CPU; the exact versions used are
recorded in the file's "source" field.)

Each run is what a diffusers pipeline does with the scheduler:

    scheduler = UniPCMultistepScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                        beta_schedule=..., **config)     (or DDIMScheduler)
    scheduler.set_timesteps(num_inference_steps)
    [scheduler.set_begin_index(0)]                  UniPC only, only where "begin_index" is 0
    x = x_T * scheduler.init_noise_sigma            init_noise_sigma is 1.0 (checked)
    for k, t in enumerate(scheduler.timesteps):     t: a 0-d torch.int64 tensor
        out = net(scheduler.scale_model_input(x, t), t)    (scale_model_input is the identity for
                                                            both schedulers: checked, so no
                                                            "model_in" is stored)
        UniPC: x = scheduler.step(out, t, x).prev_sample
        DDIM:  x = scheduler.step(out, t, x, eta=eta, variance_noise=V).prev_sample
               V = inputs["noises"][k] where eta > 0 (no generator), None where eta = 0

The stand-in network, for x (2,2,3,3) float32 and the model timestep t converted to float32
(s = float32(t); the timesteps are int64, so s is exact):
    out = A*x + B*s,  (A, B) = (0.9, 0.0003) for prediction_type "epsilon",
                               (0.5, -0.0001) for "sample",
                               (0.7, 0.0002) for "v_prediction",
  with A, B rounded to float32 first and everything in float32: each product rounded, then the
  sum rounded ("sample" is written 0.5*x - 0.0001*s, the same number). The same (A, B) are in the
  file's "network" field. (Same network and same x_T as tools/gen_dpm_solver_reference.py.)

What UniPCMultistepScheduler computes (predict_x0=True, thresholding off, VP schedule)
--------------------------------------------------------------------------------------
Schedule. ᾱ = the scheduler's float32 alphas_cumprod (see "schedules"). set_timesteps picks the
int64 timesteps t_0 > ... > t_{N-1} (linspace: round(linspace(0, 999, N+1)) reversed, last
dropped; leading: r = 1000 // (N+1), (N, N-1, ..., 1) * r (+ steps_offset, 0 here); trailing:
round(arange(1000, 0, -1000/N)) - 1; Karras: see below) and the float32 sigmas
σ_k = sqrt((1 - ᾱ[t_k]) / ᾱ[t_k]) for k < N (np.interp at integer t picks the training sigma
itself), σ_N = 0 ("zero"; "sigma_min": σ_N = sqrt((1 - ᾱ[0]) / ᾱ[0]), float32). From a sigma the
solver takes
    α(σ) = 1 / sqrt(σ² + 1),   s(σ) = σ α(σ),   λ(σ) = log α(σ) - log s(σ)      (= -log σ)
all evaluated in float32 exactly in that form (λ is not computed as -log σ). At σ = 0:
α = 1, s = 0, λ = +inf.

Data prediction (convert_model_output, at step k, from the sample x_k the network saw and its
output m): epsilon: x̂ = (x_k - s_k m) / α_k;  sample: x̂ = m;  v_prediction: x̂ = α_k x_k - s_k m
(α_k, s_k = α(σ_k), s(σ_k)). Write D_k for the x̂ of step k.

Coefficients for one update from σ_a to σ_b with history points σ_{a-1}, σ_{a-2}, ...:
    h = λ(σ_b) - λ(σ_a)  (> 0),   hh = -h,   hφ1 = expm1(hh) = e^{-h} - 1,
    B(h) = hh          for bh1,
    B(h) = expm1(hh)   for bh2  (= hφ1),
    r_i = (λ(σ_{a-i}) - λ(σ_a)) / h   (i = 1, 2, ...; negative),   D1_i = (D_{a-i} - D_a) / r_i,
    g_1 = hφ1/hh - 1,  g_{j+1} = g_j/hh - 1/(j+1)!,   b_j = g_j * j! / B(h)   (j = 1, 2, ...),
    R = the p×p matrix with rows (r_1^{j-1}, ..., r_{p-1}^{j-1}, 1^{j-1}), j = 1..p
        (row 1 all ones; the last column is r = 1, the new point).
  (At order 2 solving R[:1,:1] ρ = b_1 would give ρ^p_1 = b_1; diffusers uses 0.5 instead.)

Predictor UniP-p (multistep_uni_p_bh_update) at step k, from x^c_k (the corrected sample, below)
with D_k, D_{k-1}, ...:  a = k, b = k+1,
    x_{k+1} = (s_b / s_a) x^c_k - α_b hφ1 D_k - α_b B(h) Σ_{i=1}^{p-1} ρ^p_i D1_i
  p = 1: no sum (x_{k+1} = (s_b/s_a) x^c_k - α_b hφ1 D_k, DDIM / DPM-Solver++ 1).
  p = 2: ρ^p_1 = 0.5 FIXED (not solved).
  p = 3: (ρ^p_1, ρ^p_2) = solve(R[:2,:2], (b_1, b_2)) in float32, i.e. rows (1, 1) and (r_1, r_2).
  Final step onto σ_N = 0 (order 1 by lower_order_final): s_b = 0, α_b = 1, hφ1 = -1, so
  x_N = D_{N-1} exactly (bit for bit; checked) -- for bh2. For bh1, B(h) = -inf and diffusers
  multiplies α_b B(h) by the empty sum 0: -inf * 0 = NaN, so every bh1 run with
  final_sigmas_type "zero" ends in an all-NaN sample (recorded as "error", see below).
  Karras + "sigma_min": σ_{N-1} = σ_N = σ_min, so the last step has h = 0 (hφ1 = 0, B(h) = 0 for
  both bh1 and bh2) and returns x^c_{N-1} unchanged (bit for bit; checked): the last network
  call only feeds the corrector of that step.

Corrector UniC-p (multistep_uni_c_bh_update) at step k >= 1, run before the predictor, with p =
the order the predictor of step k-1 used, from x^c_{k-1} (the sample step k-1's predictor started
from) to the predicted x_k, with the new D_k:  a = k-1, b = k, history D_{k-2}, ..., and
    x^c_k = (s_b / s_a) x^c_{k-1} - α_b hφ1 D_{k-1}
            - α_b B(h) (Σ_{i=1}^{p-1} ρ^c_i D1_i + ρ^c_p (D_k - D_{k-1}))
  with D1_i = (D_{k-1-i} - D_{k-1}) / r_i,  r_i = (λ(σ_{k-1-i}) - λ(σ_{k-1})) / h.
  p = 1: ρ^c_1 = 0.5 FIXED.  p >= 2: (ρ^c_1..ρ^c_p) = solve(R, (b_1..b_p)) (full p×p, float32).
  It runs when k >= 1 and k-1 is not in disable_corrector (disable_corrector=[0] skips the
  correction of the sample step 0 produced). Never after the last step (x_N is not corrected).
  The data prediction kept in the history is D_k computed from the UNcorrected x_k (what the
  network saw); it is not recomputed from x^c_k. The predictor of step k then starts from x^c_k.
  Where the corrector does not run, x^c_k = x_k.

Orders: p_k = min(solver_order, N - k, k + 1)  (lower_order_final True: N - k; warm-up: k + 1,
diffusers' lower_order_nums). So the last step is order 1 and, for order 3, the one before it is
order 2. The corrector of step k uses p_{k-1}.

Karras (use_karras_sigmas): with the training sigmas σ^tr (float32, as a float64 numpy array)
and log_sigmas = log σ^tr (float32), σ_min = σ^tr[0], σ_max = σ^tr[999] (as float64),
σ_k = (σ_max^{1/7} + k/(N-1) (σ_min^{1/7} - σ_max^{1/7}))^7 in float64, k = 0..N-1 (recorded as
"karras_sigmas_f64"); t_k = round(_sigma_to_t(σ_k)) cast to int64, where _sigma_to_t linearly
interpolates log σ_k in log_sigmas between neighbouring integer indices, w clipped to [0, 1]
(recorded unrounded as "karras_timesteps_f64"; numpy round is half-to-even); the sigmas are then
cast to float32 and σ_N appended (0 for "zero"; for "sigma_min" the last Karras sigma again,
which is σ^tr[0]). The timesteps only feed the network; the solver uses σ.
With squaredcos_cap_v2 the first timesteps repeat (999, 999, 999, ...); step() then starts at
index 1 of the repeated first timestep (index_for_timestep takes the second match), and at the
N-th call (step index N) the order min(solver_order, N - N, ...) is 0 and diffusers' own
`assert self.this_order > 0` fails -> recorded as "error"; those runs are repeated with
set_begin_index(0), which run normally.

Zero terminal SNR (rescale_betas_zero_snr=True): diffusers rescales the float32 betas
(arXiv 2305.08891 Algorithm 1), takes the float32 cumprod, whose last entry is exactly 0, and
then UniPC REPLACES alphas_cumprod[999] by 2**-24 = 5.9604644775390625e-08 (the smallest positive
fp16 subnormal) so that σ[999] = sqrt((1 - 2**-24)/2**-24) ≈ 4096 is finite. DDIM keeps the 0.
Both are recorded ("schedules" keys ending "_zsnr_unipc" / "_zsnr_ddim").

What DDIMScheduler computes
---------------------------
Timesteps (set_timesteps): linspace: round(linspace(0, 999, N)) reversed (includes 0); leading:
r = 1000 // N, (N-1, ..., 0) * r + steps_offset; trailing: round(arange(1000, 0, -1000/N)) - 1.
steps_offset only affects "leading" (so it is only varied there).

At step k with t = t_k (int64) and prev = t - 1000 // N  (NOT t_{k+1}: with linspace spacing the
two differ, e.g. N = 10: t = 888 -> prev = 788):
    ᾱ_t = ᾱ[t],  ᾱ_p = ᾱ[prev] if prev >= 0 else final_alpha_cumprod,
    final_alpha_cumprod = 1.0 if set_alpha_to_one else ᾱ[0]   (float32),
    β_t = 1 - ᾱ_t,
    epsilon:      x̂0 = (x - sqrt(β_t) m) / sqrt(ᾱ_t),        ε̂ = m
    sample:       x̂0 = m,                                    ε̂ = (x - sqrt(ᾱ_t) x̂0) / sqrt(β_t)
    v_prediction: x̂0 = sqrt(ᾱ_t) x - sqrt(β_t) m,            ε̂ = sqrt(ᾱ_t) m + sqrt(β_t) x
                  (ε̂ comes straight from v and x, not from x̂0; with ᾱ_t = 0 (zero SNR, t = 999)
                  this is x̂0 = -m, ε̂ = x)
    clip_sample: x̂0 = clamp(x̂0, -clip_sample_range, clip_sample_range) AFTER ε̂ was computed;
                 ε̂ is not recomputed (use_clipped_model_output False), so only the x̂0 term
                 sees the clipping.
    var = ((1 - ᾱ_p) / (1 - ᾱ_t)) (1 - ᾱ_t / ᾱ_p),   σ_t = eta sqrt(var)
    x_{k+1} = sqrt(ᾱ_p) x̂0 + sqrt(1 - ᾱ_p - σ_t²) ε̂ + σ_t z_k
  (the σ_t z_k term only where eta > 0; z_k = inputs["noises"][k]). All float32 (powers ** 0.5,
  eta a Python float multiplied into a float32 tensor; 0.5 is exact).

Format
------
A tensor is {"shape": [...], "data": [flat, row-major floats]}; each float is the shortest
decimal that parses back to the same float32 (parse as f32, or as f64 then cast). Lists of
float32 values ("sigmas", "alphas_cumprod", ...) are written the same way. Values marked f64 are
float64, written as Python's repr (the shortest decimal that round-trips as f64).

    {"source": str,
     "init_noise_sigma": 1.0,
     "network": {prediction_type: [A, B]},
     "inputs": {"x_T": tensor (2,2,3,3) N(0,1), float32 (the same x_T as dpm_solver.json),
                "noises": tensor (50,2,2,3,3) N(0,1), float32 (DDIM eta > 0)},
     "schedules": {key: schedule},
     "unipc_runs": [unipc_run],
     "ddim_runs": [ddim_run]}

schedule, key "linear" / "squaredcos_cap_v2" (betas = linspace(1e-4, 0.02, 1000) in float32 / the
Glide cosine schedule, betas_for_alpha_bar with max_beta 0.999, cast to float32; the same for
both schedulers, checked):
    {"alphas_cumprod": [1000 float32]   what the scheduler holds (torch's CPU cumprod of float32
                                        accumulates in float64 and rounds each entry to float32)
     "alphas_cumprod_f64": [1000 f64]   cumprod(1 - betas) with the betas in float64 and the
                                        product in float64
     "sigmas": [1000 float32]           sqrt((1 - alphas_cumprod) / alphas_cumprod) as torch
                                        computes it in float32 (UniPC's training sigmas)
     "log_sigmas": [1000 float32]}      numpy.log of "sigmas" in float32 (Karras σ -> t)
key "<beta>_zsnr_unipc": {"alphas_cumprod", "sigmas", "log_sigmas"} for rescale_betas_zero_snr
    (alphas_cumprod[999] = 2**-24, see above; all other entries equal "<beta>_zsnr_ddim")
key "<beta>_zsnr_ddim": {"alphas_cumprod"} (alphas_cumprod[999] = 0.0)

unipc_run:
    {"scheduler": "UniPCMultistepScheduler",
     "solver_type": "bh2"|"bh1", "solver_order": 2|3, "prediction_type": str,
     "num_inference_steps": 10|20, "timestep_spacing": "linspace"|"leading"|"trailing",
     "beta_schedule": "linear"|"squaredcos_cap_v2", "rescale_betas_zero_snr": bool,
     "schedule": str (the key of "schedules" holding this run's ᾱ),
     "use_karras_sigmas": bool, "final_sigmas_type": "zero"|"sigma_min",
     "predict_x0": true, "lower_order_final": true, "disable_corrector": [int],
     "steps_offset": 0, "thresholding": false, "begin_index": null|0,
     "timesteps": [int]        scheduler.timesteps after set_timesteps (int64, descending)
     "sigmas": [float32]       scheduler.sigmas after set_timesteps (len N+1)
     "karras_sigmas_f64": [f64], "karras_timesteps_f64": [f64]     Karras runs only (see above)
     and, where the loop raised (Karras + squaredcos_cap_v2 without a begin index),
     "error": str and nothing else; otherwise
     "model_t": [int]          the timestep the network got at each step (= "timesteps")
     "orders": [int]           p_k, the order of the predictor at step k
     "corrector_orders": [int|null]  the order of the corrector that ran at the start of step k,
                               null where it did not run (always at k = 0)
     "rhos_p": [[float32]|null]  ρ^p used by the predictor of step k (null for order 1)
     "rhos_c": [[float32]|null]  ρ^c used by the corrector of step k (null where it did not run)
     "x_T": "x_T"
     "x0_pred": tensor (N,2,2,3,3)       D_k, what convert_model_output returned at step k
     "predictor_in": tensor (N,2,2,3,3)  x^c_k, the sample the predictor of step k started from
                                         (the corrected sample, or the step's input)
     "samples": tensor (N,2,2,3,3)       x_{k+1} = prev_sample returned by step k, k = 0..N-1
     "final": tensor (2,2,3,3)           = samples[N-1]
    bh1 runs with final_sigmas_type "zero" end in NaN (see above): they carry
     "error": "final sample is NaN ..." AND all the fields above except that "samples" holds only
     the N-1 finite samples and there is no "final".

ddim_run:
    {"scheduler": "DDIMScheduler", "eta": 0.0|0.5, "set_alpha_to_one": bool, "steps_offset": 0|1,
     "prediction_type": str, "num_inference_steps": 10|50, "timestep_spacing": str,
     "beta_schedule": str, "rescale_betas_zero_snr": bool, "schedule": str,
     "clip_sample": bool, "clip_sample_range": 1.0, "thresholding": false,
     "use_clipped_model_output": false,
     "final_alpha_cumprod": float32, "timesteps": [int],
     "model_t": [int]          every step's network timestep (= "timesteps")
     "prev_timesteps": [int]   t_k - 1000 // N (negative: final_alpha_cumprod is used)
     "alpha_prod_t": [float32], "alpha_prod_t_prev": [float32]   ᾱ_t, ᾱ_p per step
     "variance": [float32]     var per step (what _get_variance returned)
     "x_T": "x_T", "noises": "noises"|null,
     "stored_steps": [int]     the steps k whose x̂0 / sample are stored: all for N = 10; for
                               N = 50 only k = 0, 1, 24, 49 (to keep the file small)
     "x0_pred": tensor (len(stored_steps),2,2,3,3)   pred_original_sample at those steps (after
                                                      clipping)
     "samples": tensor (len(stored_steps),2,2,3,3)   prev_sample at those steps
     "final": tensor (2,2,3,3)}                      the last sample

Precision: diffusers computes the steps in float32 (torch tensors, 0-d float32 tensors for σ, α,
λ, h, the coefficients; torch.linalg.solve in float32); only UniPC's set_timesteps goes through
float64 numpy (np.interp, Karras, _sigma_to_t) before casting the sigmas to float32. Timesteps
are int64 everywhere (UniPC's timestep_list is only used with solver_p, unset here). Torch's
float32 sqrt / exp / log / expm1 on this CPU are not all correctly rounded, and expm1/log of
λ-differences amplify f32 rounding (h is a difference of two f32 λ's), so compare with a
tolerance rather than bit for bit. An all-float64 re-implementation of the formulas above (with
every stored value parsed as float32 first -- parsing e.g. ᾱ[0] = 0.9999 as a float64 instead
costs 2e-5 in the last DDIM step) matched every recorded sample, x^c_k and D_k of every complete
run to within 8.3e-6 of max(1, |x|) (UniPC; DDIM: 2.0e-6), measured when this file was generated.
"""
import json
import os
import sys
import traceback
from importlib.metadata import version
from unittest import mock

import numpy as np
import torch

import diffusers
from diffusers import DDIMScheduler, UniPCMultistepScheduler
from diffusers.schedulers import scheduling_ddim as ddim_mod
from diffusers.schedulers import scheduling_unipc_multistep as unipc_mod

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_diffusers_reference import schedule_f64  # noqa: E402

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "crates", "diffusion-sample", "tests", "it", "fixtures",
    "unipc_ddim.json")

SOURCE = (f"huggingface/diffusers {diffusers.__version__} UniPCMultistepScheduler and DDIMScheduler (PyPI; "
          f"torch {version('torch')}, numpy {version('numpy')}) via tools/gen_unipc_ddim_reference.py")

T_TRAIN, BETA_START, BETA_END = 1000, 0.0001, 0.02
SHAPE = (2, 2, 3, 3)
MAX_STEPS = 50
NETWORK = {"epsilon": (0.9, 0.0003), "sample": (0.5, -0.0001), "v_prediction": (0.7, 0.0002)}
PREDS = ("epsilon", "sample", "v_prediction")
BETAS = ("linear", "squaredcos_cap_v2")

torch.set_grad_enabled(False)


def f32_list(x):
    """float32 values as Python floats, each the shortest decimal that round-trips as float32."""
    a = (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).astype(np.float32)
    assert np.all(np.isfinite(a)), "non-finite reference value"
    data = [float(str(v)) for v in a.reshape(-1)]
    assert np.array_equal(np.array(data, dtype=np.float64).astype(np.float32), a.reshape(-1))
    return data


def f32(x):
    (v,) = f32_list(torch.as_tensor(x).reshape(1))
    return v


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
    """The schedule's betas in float64 (tools/gen_diffusers_reference.py), for the cosine schedule
    checked against this scheduler's own float32 betas."""
    b = schedule_f64(name, T_TRAIN)
    if name == "squaredcos_cap_v2":
        assert torch.equal(b.float(), unipc_mod.betas_for_alpha_bar(T_TRAIN))
    return b


rng = np.random.default_rng(20240611)  # the seed of gen_dpm_solver_reference.py: the same x_T
x_T_np = rng.standard_normal(SHAPE).astype(np.float32)
noises_np = rng.standard_normal((MAX_STEPS, *SHAPE)).astype(np.float32)

ref = {"source": SOURCE, "init_noise_sigma": 1.0,
       "network": {k: f32_list(np.array(ab, dtype=np.float32)) for k, ab in NETWORK.items()},
       "inputs": {"x_T": tensor(x_T_np), "noises": tensor(noises_np)},
       "schedules": {}, "unipc_runs": [], "ddim_runs": []}


def common(**kw):
    return dict(num_train_timesteps=T_TRAIN, beta_start=BETA_START, beta_end=BETA_END, **kw)


for name in BETAS:
    s = UniPCMultistepScheduler(**common(beta_schedule=name))
    d_s = DDIMScheduler(**common(beta_schedule=name))
    assert torch.equal(s.alphas_cumprod, d_s.alphas_cumprod)
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

    z = UniPCMultistepScheduler(**common(beta_schedule=name, rescale_betas_zero_snr=True))
    zd = DDIMScheduler(**common(beta_schedule=name, rescale_betas_zero_snr=True))
    assert zd.alphas_cumprod[-1].item() == 0.0
    assert z.alphas_cumprod[-1].item() == 2.0 ** -24
    assert torch.equal(z.alphas_cumprod[:-1], zd.alphas_cumprod[:-1])
    zsig = (((1 - z.alphas_cumprod) / z.alphas_cumprod) ** 0.5).numpy()
    assert np.array_equal(zsig, z.sigmas.numpy())
    ref["schedules"][f"{name}_zsnr_unipc"] = {"alphas_cumprod": f32_list(z.alphas_cumprod), "sigmas": f32_list(zsig),
                                              "log_sigmas": f32_list(np.log(zsig))}
    ref["schedules"][f"{name}_zsnr_ddim"] = {"alphas_cumprod": f32_list(zd.alphas_cumprod)}


def describe(e):
    """The exception, and where in diffusers it was raised (a bare assert has no message)."""
    fr = traceback.extract_tb(e.__traceback__)[-1]
    return f"{type(e).__name__}: {e} (at {os.path.basename(fr.filename)}:{fr.lineno}: {fr.line})"


def schedule_key(beta_schedule, zsnr, which):
    return f"{beta_schedule}_zsnr_{which}" if zsnr else beta_schedule


# --------------------------------------------------------------------------------------------- UniPC

class SolveRecorder:
    """Wraps torch.linalg.solve (which UniPC calls for the order >= 2 corrector and the order-3
    predictor) to record the solved ρ."""

    def __init__(self):
        self.real, self.out = torch.linalg.solve, []

    def __call__(self, *a, **kw):
        r = self.real(*a, **kw)
        self.out.append(r.clone())
        return r


def unipc_run(solver_type, order, pred, n, spacing, beta_schedule, karras=False, final_sigmas_type="zero",
              disable_corrector=(), zsnr=False, begin_index=None):
    cfg = {"scheduler": "UniPCMultistepScheduler", "solver_type": solver_type, "solver_order": order,
           "prediction_type": pred, "num_inference_steps": n, "timestep_spacing": spacing,
           "beta_schedule": beta_schedule, "rescale_betas_zero_snr": zsnr,
           "schedule": schedule_key(beta_schedule, zsnr, "unipc"), "use_karras_sigmas": karras,
           "final_sigmas_type": final_sigmas_type, "predict_x0": True, "lower_order_final": True,
           "disable_corrector": list(disable_corrector), "steps_offset": 0, "thresholding": False,
           "begin_index": begin_index}
    s = UniPCMultistepScheduler(**common(
        beta_schedule=beta_schedule, solver_order=order, prediction_type=pred, solver_type=solver_type,
        predict_x0=True, lower_order_final=True, disable_corrector=list(disable_corrector),
        timestep_spacing=spacing, use_karras_sigmas=karras, final_sigmas_type=final_sigmas_type,
        rescale_betas_zero_snr=zsnr))
    c = s.config
    assert (c.solver_type, c.steps_offset, c.thresholding, c.solver_p, c.use_flow_sigmas) == \
        (solver_type, 0, False, None, False)
    assert not (c.use_exponential_sigmas or c.use_beta_sigmas or c.use_dynamic_shifting)
    assert c.sigma_min is None and c.sigma_max is None
    sched = ref["schedules"][cfg["schedule"]]
    assert np.array_equal(s.alphas_cumprod.numpy(), np.array(sched["alphas_cumprod"], dtype=np.float32))

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
    assert len(s.timesteps) == n and len(s.sigmas) == n + 1
    cfg["timesteps"] = [int(t) for t in s.timesteps.tolist()]
    cfg["sigmas"] = f32_list(s.sigmas)
    train_sig = np.array(sched["sigmas"], dtype=np.float32)
    if final_sigmas_type == "zero":
        assert s.sigmas[-1].item() == 0.0
    else:
        assert s.sigmas[-1].item() == train_sig[0]
    if karras:
        assert captured["karras"] is not None and len(captured["t"]) == n
        assert np.array_equal(captured["karras"].astype(np.float32), s.sigmas.numpy()[:-1])
        assert cfg["timesteps"] == [int(v) for v in np.round(captured["t"])]
        cfg["karras_sigmas_f64"] = f64_list(captured["karras"])
        cfg["karras_timesteps_f64"] = f64_list(captured["t"])
    else:
        assert np.array_equal(s.sigmas.numpy()[:-1], train_sig[s.timesteps.numpy()])
    if begin_index is not None:
        s.set_begin_index(begin_index)

    x0_preds, pred_in, orders, corr_orders = [], [], [], []
    rec = {"p": None, "c": None}
    convert, uni_p, uni_c = s.convert_model_output, s.multistep_uni_p_bh_update, s.multistep_uni_c_bh_update
    solver = SolveRecorder()

    def convert_rec(*a, **kw):
        out = convert(*a, **kw)
        x0_preds.append(out.clone())
        return out

    def p_rec(*a, **kw):
        assert not a and set(kw) == {"model_output", "sample", "order"}
        orders.append(kw["order"])
        pred_in.append(kw["sample"].clone())
        k0 = len(solver.out)
        out = uni_p(*a, **kw)
        o = kw["order"]
        if o == 1:
            assert len(solver.out) == k0
        elif o == 2:
            assert len(solver.out) == k0
            rec["p"] = [0.5]
        else:
            assert len(solver.out) == k0 + 1
            rec["p"] = f32_list(solver.out[-1])
        return out

    def c_rec(*a, **kw):
        assert not a and set(kw) == {"this_model_output", "last_sample", "this_sample", "order"}
        o = kw["order"]
        corr_orders[-1] = o
        k0 = len(solver.out)
        out = uni_c(*a, **kw)
        if o == 1:
            assert len(solver.out) == k0
            rec["c"] = [0.5]
        else:
            assert len(solver.out) == k0 + 1
            rec["c"] = f32_list(solver.out[-1])
        return out

    s.convert_model_output, s.multistep_uni_p_bh_update, s.multistep_uni_c_bh_update = convert_rec, p_rec, c_rec
    rhos_p, rhos_c = [], []
    x = torch.from_numpy(x_T_np.copy()) * s.init_noise_sigma
    model_t, samples = [], []
    try:
        with mock.patch.object(torch.linalg, "solve", solver):
            for t in s.timesteps:
                assert isinstance(t, torch.Tensor) and t.dtype == torch.int64 and t.dim() == 0
                model_t.append(int(t))
                corr_orders.append(None)
                rec["p"] = rec["c"] = None
                inp = s.scale_model_input(x, t)
                assert inp is x
                out = net(inp, t, pred)
                x = s.step(out, t, x).prev_sample
                assert x.dtype == torch.float32
                rhos_p.append(rec["p"])
                rhos_c.append(rec["c"])
                samples.append(x.clone())
    except Exception as e:  # noqa: BLE001
        cfg["error"] = describe(e)
        print("  error:", {k: cfg[k] for k in ("solver_type", "solver_order", "prediction_type",
                                                "num_inference_steps", "beta_schedule", "use_karras_sigmas")},
              cfg["error"])
        return cfg
    assert len(x0_preds) == n and len(orders) == n and len(pred_in) == n
    assert model_t == cfg["timesteps"]
    assert orders == [min(order, n - k, k + 1) for k in range(n)], orders
    assert corr_orders == [None] + [None if (k - 1) in disable_corrector else orders[k - 1] for k in range(1, n)]
    for k in range(n):
        if corr_orders[k] is None:
            assert torch.equal(pred_in[k], samples[k - 1] if k else torch.from_numpy(x_T_np))
    cfg.update({"model_t": model_t, "orders": orders, "corrector_orders": corr_orders, "rhos_p": rhos_p,
                "rhos_c": rhos_c, "x_T": "x_T", "x0_pred": tensor(torch.stack(x0_preds)),
                "predictor_in": tensor(torch.stack(pred_in))})
    assert all(torch.isfinite(v).all() for v in samples[:-1])
    if not torch.isfinite(samples[-1]).any():
        assert solver_type == "bh1" and final_sigmas_type == "zero"
        cfg["error"] = ("final sample is NaN: at sigma 0, B(h) = hh = -inf for bh1 and diffusers computes "
                        "alpha_t * B_h * 0 = NaN (the first N-1 samples are stored)")
        cfg["samples"] = tensor(torch.stack(samples[:-1]))
        print("  NaN final (bh1, sigma 0):", pred, n, spacing, beta_schedule)
        return cfg
    if karras and final_sigmas_type == "sigma_min":
        # h = 0 on the last step: it returns its input.
        assert s.sigmas[-1] == s.sigmas[-2] and orders[-1] == 1 and torch.equal(samples[-1], pred_in[-1])
    if final_sigmas_type == "zero":
        # The last step is first order onto sigma 0 and returns the data prediction itself.
        assert orders[-1] == 1 and torch.equal(samples[-1], x0_preds[-1])
    cfg.update({"samples": tensor(torch.stack(samples)), "final": tensor(samples[-1])})
    return cfg


U = ref["unipc_runs"]
for st, order, fst in (("bh2", 2, "zero"), ("bh2", 3, "zero"), ("bh1", 2, "sigma_min")):
    for pred in PREDS:
        for n in (10, 20):
            for spacing in ("linspace", "leading", "trailing"):
                if st == "bh1" and spacing == "leading":
                    continue  # bh1 differs from bh2 only in B(h); kept small
                for bs in BETAS:
                    U.append(unipc_run(st, order, pred, n, spacing, bs, final_sigmas_type=fst))
# bh1 onto sigma 0 (NaN in diffusers), bh1 order 3, bh2 onto sigma_min.
for pred in ("epsilon", "v_prediction"):
    U.append(unipc_run("bh1", 2, pred, 10, "linspace", "linear"))
for n in (10, 20):
    U.append(unipc_run("bh1", 3, "epsilon", n, "linspace", "linear", final_sigmas_type="sigma_min"))
    U.append(unipc_run("bh1", 3, "v_prediction", n, "trailing", "squaredcos_cap_v2", final_sigmas_type="sigma_min"))
    U.append(unipc_run("bh2", 2, "epsilon", n, "linspace", "linear", final_sigmas_type="sigma_min"))
    U.append(unipc_run("bh2", 3, "v_prediction", n, "trailing", "squaredcos_cap_v2", final_sigmas_type="sigma_min"))
# The corrector skipped after step 0.
for order in (2, 3):
    for n in (10, 20):
        U.append(unipc_run("bh2", order, "epsilon", n, "linspace", "linear", disable_corrector=[0]))
U.append(unipc_run("bh2", 2, "v_prediction", 10, "trailing", "squaredcos_cap_v2", disable_corrector=[0]))
# Karras sigmas (linspace: the spacing only picks timesteps that Karras replaces). With
# squaredcos_cap_v2 the plain loop fails (recorded as an error); it is rerun with begin_index 0.
for st, order, fst in (("bh2", 2, "zero"), ("bh2", 3, "zero"), ("bh1", 2, "sigma_min")):
    for pred in ("epsilon", "v_prediction"):
        for n in (10, 20):
            for bs in BETAS:
                U.append(unipc_run(st, order, pred, n, "linspace", bs, karras=True, final_sigmas_type=fst))
                if bs == "squaredcos_cap_v2":
                    U.append(unipc_run(st, order, pred, n, "linspace", bs, karras=True, final_sigmas_type=fst,
                                       begin_index=0))
U.append(unipc_run("bh2", 2, "sample", 10, "linspace", "linear", karras=True))
# Zero terminal SNR.
for order in (2, 3):
    for n in (10, 20):
        for bs in BETAS:
            U.append(unipc_run("bh2", order, "v_prediction", n, "trailing", bs, zsnr=True))
U.append(unipc_run("bh1", 2, "v_prediction", 10, "trailing", "linear", zsnr=True, final_sigmas_type="sigma_min"))

# The corrector must matter: the same run without it ends elsewhere.
a = unipc_run("bh2", 2, "epsilon", 10, "linspace", "linear")
b = unipc_run("bh2", 2, "epsilon", 10, "linspace", "linear", disable_corrector=list(range(10)))
assert a["final"] != b["final"] and all(c is None for c in b["corrector_orders"])


# ---------------------------------------------------------------------------------------------- DDIM

def ddim_stored_steps(n):
    return list(range(n)) if n <= 20 else [0, 1, n // 2 - 1, n - 1]


def ddim_run(eta, set_alpha_to_one, steps_offset, pred, n, spacing, beta_schedule, clip_sample=False, zsnr=False):
    cfg = {"scheduler": "DDIMScheduler", "eta": eta, "set_alpha_to_one": set_alpha_to_one,
           "steps_offset": steps_offset, "prediction_type": pred, "num_inference_steps": n,
           "timestep_spacing": spacing, "beta_schedule": beta_schedule, "rescale_betas_zero_snr": zsnr,
           "schedule": schedule_key(beta_schedule, zsnr, "ddim"), "clip_sample": clip_sample,
           "clip_sample_range": 1.0, "thresholding": False, "use_clipped_model_output": False}
    try:
        s = DDIMScheduler(**common(beta_schedule=beta_schedule, clip_sample=clip_sample, clip_sample_range=1.0,
                                   set_alpha_to_one=set_alpha_to_one, steps_offset=steps_offset,
                                   prediction_type=pred, timestep_spacing=spacing, rescale_betas_zero_snr=zsnr))
        assert not s.config.thresholding
        sched = ref["schedules"][cfg["schedule"]]
        assert np.array_equal(s.alphas_cumprod.numpy(), np.array(sched["alphas_cumprod"], dtype=np.float32))
        assert s.final_alpha_cumprod.dtype == torch.float32
        assert s.final_alpha_cumprod.item() == (1.0 if set_alpha_to_one else s.alphas_cumprod[0].item())
        cfg["final_alpha_cumprod"] = f32(s.final_alpha_cumprod)
        s.set_timesteps(n)
        assert s.init_noise_sigma == 1.0
        assert s.timesteps.dtype == torch.int64 and len(s.timesteps) == n
        cfg["timesteps"] = [int(t) for t in s.timesteps.tolist()]

        variances = []
        get_var = s._get_variance

        def var_rec(*a, **kw):
            v = get_var(*a, **kw)
            variances.append(v.clone())
            return v

        s._get_variance = var_rec
        x = torch.from_numpy(x_T_np.copy()) * s.init_noise_sigma
        model_t, prev_t, samples, x0 = [], [], [], []
        for k, t in enumerate(s.timesteps):
            assert isinstance(t, torch.Tensor) and t.dtype == torch.int64 and t.dim() == 0
            model_t.append(int(t))
            prev_t.append(int(t) - T_TRAIN // n)
            inp = s.scale_model_input(x, t)
            assert inp is x
            out = net(inp, t, pred)
            noise = torch.from_numpy(noises_np[k].copy()) if eta > 0 else None
            o = s.step(out, t, x, eta=eta, variance_noise=noise)
            x = o.prev_sample
            assert x.dtype == torch.float32 and torch.isfinite(x).all()
            samples.append(x.clone())
            x0.append(o.pred_original_sample.clone())
    except Exception as e:  # noqa: BLE001
        cfg["error"] = describe(e)
        print("  DDIM error:", cfg, cfg["error"])
        return cfg
    assert model_t == cfg["timesteps"] and len(variances) == n
    ac = s.alphas_cumprod
    a_t = torch.stack([ac[t] for t in model_t])
    a_p = torch.stack([ac[p] if p >= 0 else s.final_alpha_cumprod for p in prev_t])
    if clip_sample:
        assert all(v.abs().max() <= 1.0 for v in x0)
    keep = ddim_stored_steps(n)
    cfg.update({"model_t": model_t, "prev_timesteps": prev_t, "alpha_prod_t": f32_list(a_t),
                "alpha_prod_t_prev": f32_list(a_p), "variance": f32_list(torch.stack(variances)),
                "x_T": "x_T", "noises": "noises" if eta > 0 else None, "stored_steps": keep,
                "x0_pred": tensor(torch.stack([x0[k] for k in keep])),
                "samples": tensor(torch.stack([samples[k] for k in keep])), "final": tensor(samples[-1])})
    return cfg


D = ref["ddim_runs"]
SPACINGS = (("linspace", 0), ("trailing", 0), ("leading", 0), ("leading", 1))  # steps_offset: leading only
for eta in (0.0, 0.5):
    for one in (True, False):
        for pred in PREDS:
            for n in (10, 50):
                for spacing, off in SPACINGS:
                    for bs in BETAS:
                        D.append(ddim_run(eta, one, off, pred, n, spacing, bs))
# clip_sample=True (range 1.0).
for eta in (0.0, 0.5):
    for pred in PREDS:
        for spacing, off in (("leading", 1), ("trailing", 0)):
            D.append(ddim_run(eta, True, off, pred, 10, spacing, "linear", clip_sample=True))
    D.append(ddim_run(eta, False, 0, "v_prediction", 50, "linspace", "squaredcos_cap_v2", clip_sample=True))
# Zero terminal SNR (eta 0; also one eta 0.5).
for one in (True, False):
    for n in (10, 50):
        for bs in BETAS:
            D.append(ddim_run(0.0, one, 0, "v_prediction", n, "trailing", bs, zsnr=True))
D.append(ddim_run(0.5, True, 0, "v_prediction", 10, "trailing", "linear", zsnr=True))

# Clipping and the noise must matter.
a = ddim_run(0.0, True, 1, "epsilon", 10, "leading", "linear")
b = ddim_run(0.0, True, 1, "epsilon", 10, "leading", "linear", clip_sample=True)
c = ddim_run(0.5, True, 1, "epsilon", 10, "leading", "linear")
assert a["final"] != b["final"] and a["final"] != c["final"]
assert any(v != 0.0 for v in c["variance"])

os.makedirs(os.path.dirname(os.path.abspath(OUT)), exist_ok=True)
with open(OUT, "w") as f:
    json.dump(ref, f, separators=(",", ":"), allow_nan=False)
for key in ("unipc_runs", "ddim_runs"):
    ok = sum("error" not in r for r in ref[key])
    print(f"{key}: {len(ref[key])} runs ({ok} complete, {len(ref[key]) - ok} with an error)")
print(f"wrote {OUT}: {os.path.getsize(OUT)} bytes")
