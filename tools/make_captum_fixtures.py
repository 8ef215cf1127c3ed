"""Write tests/fixtures/captum_gradients.npz: Captum's gradient attributions of a tiny fixed model.

    python tools/make_captum_fixtures.py      (needs torch and captum: pip install -e ".[bench]")

The model (its weights stored in the file, so the tests rebuild it in JAX without torch):
``conv`` = tanh(3x3 conv, 2 -> 3 channels, SAME, bias) on (N, 6, 7, 2) inputs, ``pool`` = 2x2
average pooling (-> 3x3, the last column dropped, as PyTorch's floor mode does), ``logits`` =
the pool maps averaged over (h, w) times a (3, 4) matrix. Attributions are stored NHWC.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "captum_gradients.npz"
IG_METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
N_STEPS, BASELINE = 7, 0.2


def torch_tiny(arrays: dict):
    """The fixture's model in PyTorch (NCHW), from its stored weights."""
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 3, 3, padding=1)
            self.conv.weight.data = torch.tensor(arrays["conv_kernel"]).permute(3, 2, 0, 1).contiguous()
            self.conv.bias.data = torch.tensor(arrays["conv_bias"])
            self.tanh, self.pool = torch.nn.Tanh(), torch.nn.AvgPool2d(2)

        def forward(self, x):
            return self.pool(self.tanh(self.conv(x))).mean(dim=(2, 3)) @ torch.tensor(arrays["dense"])

    return Tiny().eval()


def main() -> None:
    import torch
    from captum.attr import InputXGradient, IntegratedGradients, LayerAttribution, LayerGradCam, Saliency

    rng = np.random.default_rng(0)
    arrays = {"x": rng.uniform(size=(3, 6, 7, 2)).astype(np.float32),
              "conv_kernel": rng.normal(size=(3, 3, 2, 3)).astype(np.float32),
              "conv_bias": rng.normal(size=3).astype(np.float32),
              "dense": rng.normal(size=(3, 4)).astype(np.float32),
              "targets": np.array([0, 3, 1])}

    model = torch_tiny(arrays)
    x = torch.tensor(arrays["x"]).permute(0, 3, 1, 2).contiguous().requires_grad_()
    target = torch.tensor(arrays["targets"])
    nhwc = lambda t: t.detach().permute(0, 2, 3, 1).numpy().astype(np.float32)
    arrays["saliency"] = nhwc(Saliency(model).attribute(x, target=target))
    arrays["input_x_gradient"] = nhwc(InputXGradient(model).attribute(x, target=target))
    for method in IG_METHODS:
        attr, delta = IntegratedGradients(model).attribute(x, baselines=BASELINE, target=target, n_steps=N_STEPS,
                                                           method=method, return_convergence_delta=True)
        arrays[f"ig_{method}"], arrays[f"ig_{method}_delta"] = nhwc(attr), delta.detach().numpy().astype(np.float32)
    for layer in ("tanh", "pool"):
        cam = LayerGradCam(model, getattr(model, layer)).attribute(x, target=target, relu_attributions=True)
        arrays[f"gradcam_{layer}"] = cam[:, 0].detach().numpy().astype(np.float32)
        for mode in ("bilinear", "nearest"):
            up = LayerAttribution.interpolate(cam, (6, 7), interpolate_mode=mode)
            arrays[f"gradcam_{layer}_{mode}"] = up[:, 0].detach().numpy().astype(np.float32)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays, n_steps=N_STEPS, baseline=BASELINE)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
