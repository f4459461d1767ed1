"""Paper-neutral primitives that carry parity with released checkpoints (everything else comes from timm.layers)."""
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


def tokens_to_map(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """B (H W) C -> B C H W."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], H, W)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """B C H W -> B (H W) C."""
    return x.flatten(2).transpose(1, 2)
