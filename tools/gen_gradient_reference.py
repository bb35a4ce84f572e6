#!/usr/bin/env python3
"""Generate the gradients of guided-diffusion's networks that diffusion-models' gradient tests
(and the backend-parity suite) compare against.

For each network of `tools/gen_models_reference.py` (the state dicts it saved in
crates/diffusion-models/tests/it/fixtures/*.pt, built again with openai/guided-diffusion's own
`UNetModel` / `EncoderUNetModel` at commit 22e0df8 -- nothing of it is copied here), plus one
16x16 class-conditional UNet shaped like the default preset (where the Winograd and im2col
convolution paths and the multi-chunk kernels run), it evaluates the training-style loss

    L = mean((net(x, t[, y]) - target)^2)

and records dL/dx in full and, for every parameter tensor, four numbers that identify it and its
gradient without relying on parameter names or layouts: its element count, the sum of its values
(random weights make this unique), the sum of its squared gradient, and the dot product of its
gradient with its own values. The Rust side finds each of its parameters by (count, sum).

Usage (same checkout and venv as gen_models_reference.py):
    venv/bin/python tools/gen_gradient_reference.py path/to/guided-diffusion

Writes crates/diffusion-models/tests/it/fixtures/{gradients.json, unet_default_like.pt}.
"""
import json
import os
import sys

import torch as th

sys.path.insert(0, sys.argv[1])
from guided_diffusion.unet import EncoderUNetModel, UNetModel  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
FIX = os.path.join(os.path.dirname(__file__), "..", "crates", "diffusion-models", "tests", "it", "fixtures")
th.manual_seed(1)


def ds_of(image_size, resolutions):
    return tuple(image_size // r for r in resolutions)


def torch_kwargs(cfg):
    return dict(
        image_size=cfg["image_size"], in_channels=cfg["in_channels"], model_channels=cfg["model_channels"],
        out_channels=cfg["out_channels"], num_res_blocks=cfg["num_res_blocks"],
        attention_resolutions=ds_of(cfg["image_size"], cfg["attention_resolutions"]),
        channel_mult=tuple(cfg["channel_mult"]), conv_resample=cfg["conv_resample"],
        num_heads=cfg["num_heads"], num_head_channels=cfg["num_head_channels"] or -1,
        use_scale_shift_norm=cfg["use_scale_shift_norm"], resblock_updown=cfg["resblock_updown"],
        use_new_attention_order=cfg["attention_order"] == "new",
    )


def flat(t):
    return {"shape": list(t.shape), "data": [float(v) for v in t.detach().reshape(-1)]}


def case(name, kind, model, cfg, batch, pool=None, num_classes=None):
    size, cin = cfg["image_size"], cfg["in_channels"]
    x = th.randn(batch, cin, size, size, requires_grad=True)
    t = th.tensor([float(v) for v in th.linspace(0, 999, batch).round()])
    y = th.arange(batch) % num_classes if num_classes else None
    out = model(x, t, y) if y is not None else model(x, t)
    target = th.randn_like(out)
    loss = ((out - target) ** 2).mean()
    loss.backward()
    params = []
    for p in model.parameters():
        g = (p.grad if p.grad is not None else th.zeros_like(p)).double()
        w = p.detach().double()
        params.append({"numel": p.numel(), "sum": float(w.sum()), "grad_sq": float((g * g).sum()),
                       "grad_dot_w": float((g * w).sum())})
    return {"name": name, "kind": kind, "pool": pool, "config": cfg, "x": flat(x), "t": t.tolist(),
            "y": y.tolist() if y is not None else None, "target": flat(target), "loss": float(loss),
            "x_grad": flat(x.grad), "params": params}


models = json.load(open(os.path.join(FIX, "reference.json")))
cases = []
for c in models["unets"]:
    m = UNetModel(num_classes=c["config"]["num_classes"], **torch_kwargs(c["config"]))
    m.load_state_dict(th.load(os.path.join(FIX, c["name"] + ".pt")))
    m.train()
    cases.append(case(c["name"], "unet", m, c["config"], 3, num_classes=c["config"]["num_classes"]))
for c in models["classifiers"]:
    m = EncoderUNetModel(pool=c["pool"], **torch_kwargs(c["config"]))
    m.load_state_dict(th.load(os.path.join(FIX, c["name"] + ".pt")))
    m.train()
    cases.append(case(c["name"], "classifier", m, c["config"], 3, pool=c["pool"]))

# Shaped like the default preset (16x16, 32 channels, attention at 8x8 with 2 heads, scale-shift
# norm, 4 classes), one channel multiplier to keep the fixture small.
default_like = {
    "image_size": 16, "in_channels": 3, "model_channels": 32, "out_channels": 3, "num_res_blocks": 1,
    "attention_resolutions": [8], "channel_mult": [1, 1], "dropout": 0.0, "conv_resample": True,
    "num_classes": 4, "num_heads": 2, "num_head_channels": None, "num_heads_upsample": None,
    "attention_order": "legacy", "use_scale_shift_norm": True, "resblock_updown": False,
    "rescale_residual": False, "norm_groups": 32,
}
m = UNetModel(num_classes=4, **torch_kwargs(default_like))
with th.no_grad():
    for p in m.parameters():
        p.copy_(th.randn_like(p) * 0.1)
th.save(m.state_dict(), os.path.join(FIX, "unet_default_like.pt"))
m.train()
cases.append(case("unet_default_like", "unet", m, default_like, 8, num_classes=4))

out = {"source": "openai/guided-diffusion@22e0df8 via tools/gen_gradient_reference.py (float32, as the reference computes; the per-parameter sums in float64)", "cases": cases}
with open(os.path.join(FIX, "gradients.json"), "w") as f:
    json.dump(out, f, separators=(",", ":"))
print("wrote", len(cases), "cases")
