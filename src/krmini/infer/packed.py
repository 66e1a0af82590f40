"""CPU decoding with weights laid out once for oneDNN instead of on every matmul.

In bf16, `F.linear` on CPU hands the weight to oneDNN in PyTorch's row-major layout and oneDNN
reorders it into its blocked layout on every call. Generation multiplies the same weights by one
token at a time, thousands of times, so that reorder is a large share of each step. Packing every
linear layer once (`torch.ops.mkldnn._reorder_linear_weight`, the kernels `torch.compile` uses on
CPU with frozen weights) removes it, and the outputs are bit-identical. fp32 is left to MKL, which
needs no reorder and is faster than oneDNN on small matrices.

Inference only: a packed layer holds an opaque oneDNN tensor instead of `weight`, so a packed model
cannot be trained, saved or exported — pack the copy that generates.
"""

from __future__ import annotations

import torch
from torch import nn


class PackedLinear(nn.Module):
    """y = x Wᵀ through oneDNN with W pre-packed (no bias: our model has none)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")


def can_pack(model: nn.Module) -> bool:
    """bf16 weights on the CPU and a PyTorch built with oneDNN (x86-64 and most arm64 builds)."""
    weight = next(model.parameters())
    return (weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


@torch.no_grad()
def pack_for_decoding(model: nn.Module) -> nn.Module:
    """Replace every bias-free `nn.Linear` with a `PackedLinear`, in place; a no-op where it cannot help."""
    if not can_pack(model):
        return model
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear and child.bias is None:
                setattr(module, name, PackedLinear(child))
    return model
