"""The jaxviz CNN in PyTorch, with the same weights, for the Captum comparison.

Only the benchmarks import this (torch is an optional extra).
"""

from __future__ import annotations

import numpy as np


def torch_cnn(model, variables, *, layer: str = "fc1"):
    """A ``torch.nn.Sequential`` (NCHW input) computing ``jaxviz.forward(..., layer=layer)``.

    Supports ``layer`` in {"fc1", "logits"}. Batch norm uses the running
    statistics (inference); the flatten order is converted from NHWC to NCHW.
    """
    import torch
    from torch import nn

    if layer not in ("fc1", "logits"):
        raise ValueError(f"layer: expected 'fc1' or 'logits', got {layer!r}")
    params, stats = variables["params"], variables["batch_stats"]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32)))
    layers: list = []
    conv = 0
    for width in model.widths:
        for _ in range(model.convs_per_block):
            conv += 1
            kernel = np.asarray(params[f"conv{conv}"]["kernel"])  # (3, 3, in, out)
            c = nn.Conv2d(kernel.shape[2], width, 3, padding=1, bias=False)
            c.weight.data = t(kernel.transpose(3, 2, 0, 1))
            bn = nn.BatchNorm2d(width, eps=1e-5)
            bn.weight.data = t(params[f"conv{conv}_bn"]["scale"])
            bn.bias.data = t(params[f"conv{conv}_bn"]["bias"])
            bn.running_mean.data = t(stats[f"conv{conv}_bn"]["mean"])
            bn.running_var.data = t(stats[f"conv{conv}_bn"]["var"])
            layers += [c, bn, nn.ReLU()]
        layers.append(nn.MaxPool2d(2))
    side = 32 // 2 ** len(model.widths)
    channels = model.widths[-1]
    fc1 = np.asarray(params["fc1"]["kernel"])  # rows in NHWC flatten order (h, w, c)
    fc1 = fc1.reshape(side, side, channels, -1).transpose(2, 0, 1, 3).reshape(side * side * channels, -1)
    dense = nn.Linear(fc1.shape[0], fc1.shape[1])
    dense.weight.data, dense.bias.data = t(fc1.T), t(params["fc1"]["bias"])
    layers += [nn.Flatten(), dense, nn.ReLU()]
    if layer == "logits":
        out = nn.Linear(model.hidden, model.num_classes)
        out.weight.data = t(np.asarray(params["logits"]["kernel"]).T)
        out.bias.data = t(params["logits"]["bias"])
        layers.append(out)
    return nn.Sequential(*layers).eval()
