"""Paper-neutral primitives that timm.layers does not provide in the form a released checkpoint needs."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNormFp32(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype, result cast back.

    parity: the official CvT LayerNorm upcasts to fp32 (eps 1e-5), which keeps bf16/fp16 autocast
    runs numerically close to fp32 ones.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)
