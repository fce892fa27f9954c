"""convert on timm models (ViT with fused attention and drop path, ConvNeXt with its Mlp dropout
of rate 0), random weights, nothing downloaded.

timm imports torchvision, whose PyPI wheels for a given torch are CUDA builds; with a CPU build
of torch, torchvision must come from the same index as torch (the PyTorch CPU wheel index), or
``import timm`` fails. These tests skip where timm does not import.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayesdrop
from bayesdrop.nn import DropoutModule

timm = pytest.importorskip("timm")


def make(arch: str, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(arch, pretrained=False, num_classes=2, **kwargs).eval()


MODELS = {
    "vit": lambda: make(
        "vit_tiny_patch16_224",
        img_size=32,
        patch_size=8,
        depth=2,
        drop_rate=0.1,
        attn_drop_rate=0.1,
        proj_drop_rate=0.1,
        drop_path_rate=0.1,
    ),
    "convnext": lambda: make("convnext_atto", drop_path_rate=0.1, drop_rate=0.1),
}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("family", ["lbd", "concrete"])
def test_convert_timm_model(name, family):
    model = MODELS[name]()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    new, report = bayesdrop.convert(model, family, example_inputs=x)
    # every nn.Dropout of rate 0 (timm's Mlp builds them) is left and listed, never a refusal
    zero = {n for n, m in model.named_modules() if isinstance(m, nn.Dropout) and m.p == 0}
    assert zero <= set(report.fixed)
    assert all("p = 0" in report.fixed[n] for n in zero)
    new.eval()
    with torch.no_grad():
        # the attention may be switched from the fused kernel to the reference computation
        torch.testing.assert_close(new(x), expected, rtol=0, atol=1e-5)
    new.train()
    loss = bayesdrop.objective(
        new, x, torch.tensor([0, 1]), lambda o, y: F.cross_entropy(o, y, reduction="none"), 100
    )
    loss.backward()
    assert bool(torch.isfinite(loss))
    ours = [m for m in new.modules() if isinstance(m, DropoutModule)]
    assert ours and all(
        p.grad is not None and bool(torch.isfinite(p.grad).all())
        for m in ours
        for p in m.rate_parameters()
    )
