"""LG-Transformer's window attention for inference: windows cut from the C-wide map, before the qkv Linear.

Why: `lg.AttentionPath` runs qkv on the map, then cuts the 3C-wide result into windows and heads with one
8-d permute (`windows.split_windows`), and undoes it on the C-wide output (`merge_windows`). That permute
copied 14.4 MB per LG-Tiny stage-1 call at batch 4 in 7 ms, at 2 GB/s: its innermost run is one head's 32
floats. Here the windows are cut from the C-wide map instead (a 3x smaller copy of rows of C floats), the
per-token Linears (qkv, proj) run on window-ordered tokens, and q, k and v are strided views of qkv's
output that attention reads in place (SDPA's CPU kernel, and `attention.gemm_attention` in bf16, take any
strides). SDPA's output is laid out token-major, so proj reads it without a copy; one copy puts the
windows back. The same function (tests: 1e-5 against the model), the same parameters.
"""
import torch
import torch.nn.functional as F

from ..models import lg
from ..models.windows import from_window_frame, to_window_frame, window_bias_and_mask
from .attention import _swapped, gemm_attention
from .blocks import runs_whole

__all__ = ['WindowFirstPath', 'map_to_windows', 'use_window_first_paths', 'windows_to_map']


def map_to_windows(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """B Hp Wp C (sides multiples of M) -> B nW N C: each window's N = M^2 tokens in a row, windows in raster order."""
    M, (B, Hp, Wp, C) = window_size, x.shape
    # B (nh M) (nw M) C -> B nh nw M M C -> B (nh nw) (M M) C
    return x.view(B, Hp // M, M, Wp // M, M, C).permute(0, 1, 3, 2, 4, 5).reshape(B, -1, M * M, C)


def windows_to_map(x: torch.Tensor, Hp: int, Wp: int, window_size: int, out: torch.Tensor = None) -> torch.Tensor:
    """The inverse of `map_to_windows`: B nW N C -> B Hp Wp C, written into `out` if given (one copy)."""
    M, B, C = window_size, x.shape[0], x.shape[-1]
    out = x.new_empty(B, Hp, Wp, C) if out is None else out
    # B (nh M) (nw M) C seen as B nh nw M M C, the windows' order
    out.view(B, Hp // M, M, Wp // M, M, C).permute(0, 1, 3, 2, 4, 5).copy_(x.view(B, Hp // M, Wp // M, M, M, C))
    return out


class WindowFirstPath(lg.AttentionPath):
    """One LG path whose window attention starts from windows of the C-wide map (module docstring).
    `gemm=True` runs the attention as `gemm_attention` (the bf16 path)."""

    gemm = False

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        if runs_whole(x) or torch.compiler.is_compiling():  # traced or compiled graphs keep the model's own steps
            return super().attend(x)
        h, w = x.shape[1:3]
        x = to_window_frame(x, self.window_size, self.shift)  # B Hp Wp C
        B, Hp, Wp, C = x.shape
        heads, N = self.num_heads, self.window_size ** 2
        qkv = self.qkv(map_to_windows(x, self.window_size))  # B nW N 3C
        nW = qkv.shape[1]
        # B nW N (3 h D) -> 3 B nW h N D -> 3 (B nW) h N D: views into qkv
        q, k, v = qkv.view(B, nW, N, 3, heads, -1).permute(3, 0, 1, 4, 2, 5).flatten(1, 2).unbind(0)
        if self.shift == 0 and (Hp, Wp) == (h, w):  # every window sees all of its tokens: one bias for all
            mask = self.rel_pos_bias().to(q.dtype).unsqueeze(0)  # 1 h N N
            out = windows_to_map(self._attend_windows(q, k, v, mask, nW), Hp, Wp, self.window_size)
            return from_window_frame(out, h, w, self.shift)
        # windows differ in their masks: the bias and mask of one image's windows, image by image
        mask = window_bias_and_mask(self.rel_pos_bias(), h, w, Hp, Wp, self.window_size, self.shift,
                                    q.dtype).view(nW, heads, N, N)
        out = x.new_empty(B, Hp, Wp, C)
        for b in range(B):
            part = slice(b * nW, (b + 1) * nW)
            windows_to_map(self._attend_windows(q[part], k[part], v[part], mask, nW), Hp, Wp, self.window_size,
                           out[b:b + 1])
        return from_window_frame(out, h, w, self.shift)

    def _attend_windows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                        windows: int) -> torch.Tensor:
        """Attention, then proj, in the windows of some images: q, k, v (b nW) h N D -> b nW N C."""
        if self.gemm:
            x = gemm_attention(q, k, v, mask)
        else:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # laid out (b nW) N h D
        x = self.proj(x.transpose(1, 2).flatten(2))  # (b nW) N C: flatten is a view of SDPA's layout
        return x.view(-1, windows, *x.shape[1:])


def use_window_first_paths(model: torch.nn.Module, gemm: bool = False) -> torch.nn.Module:
    """Every LG `AttentionPath` of an eval `model` as a `WindowFirstPath`, in place."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is lg.AttentionPath:
                fast = _swapped(child, WindowFirstPath)
                fast.gemm = gemm
                setattr(parent, name, fast)
    return model
