"""LG-Transformer's window attention for inference: windows gathered from the C-wide map, before the qkv Linear.

Why: `lg.AttentionPath` pads and rolls the map (`to_window_frame`: a copy each, the roll as two
concatenations), runs qkv, then cuts the 3C-wide result into windows and heads with one 8-d permute
(`windows.split_windows`) and undoes it all on the C-wide output. That permute alone copied 14.4 MB per
LG-Tiny stage-1 call at batch 4 in 7 ms, at 2 GB/s: its innermost run is one head's 32 floats. Here one
gather of C-wide rows (`window_order`) pads, rolls and cuts the windows at once; the per-token Linears (qkv,
proj) run on window-ordered tokens; q, k and v are strided views of qkv's output that attention reads in
place (SDPA's CPU kernel takes any strides); SDPA's output is laid out token-major, so proj reads it without
a copy; and one more gather puts the tokens back, unrolled and cropped. LG-Tiny at batch 8 on two threads:
1.05x over both steps (BENCHMARKS.md). Each path keeps its window mask (bias and -inf) for the last map
size. The same function (tests: 1e-5 against the model), the same parameters.
"""
import torch
import torch.nn.functional as F

from ..models import lg
from ..models.windows import window_bias_and_mask
from .attention import _swapped
from .blocks import runs_whole
from .kernels import weight_key

__all__ = ['WindowFirstPath', 'use_window_first_paths', 'window_order']

# sizes whose window order a path keeps (indices of a few KiB each)
MAX_WINDOW_ORDERS = 16


def window_order(h: int, w: int, window_size: int, shift: int, device: torch.device = None):
    """Where each token goes when an h x w map is padded to multiples of M, rolled by -shift and cut into
    M x M windows (`to_window_frame`, then windows in raster order, each window's N = M^2 tokens in a row).

    Returns `gather` (nW N): for every window slot, the index of the map token (row-major h w) it holds;
    a padding slot holds a real token of its own window (padding is masked out of real tokens' attention,
    so which one never matters, and a non-finite token stays inside its window, as with the model's zeros);
    `scatter` (h w): the window slot of every map token; and the padded sides Hp, Wp.
    """
    M = window_size
    Hp, Wp = -(-h // M) * M, -(-w // M) * M
    rows = (torch.arange(Hp, device=device) + shift) % Hp  # window-frame row r holds padded row (r + shift) % Hp
    cols = (torch.arange(Wp, device=device) + shift) % Wp
    real = (rows < h)[:, None] & (cols < w)[None, :]  # Hp Wp
    source = rows[:, None] * w + cols[None, :]  # Hp Wp, in the window frame (meaningless where not real)
    # (nh M) (nw M) -> (nh nw) (M M): window slots in order
    source = source.view(Hp // M, M, Wp // M, M).transpose(1, 2).reshape(-1, M * M)
    real = real.view(Hp // M, M, Wp // M, M).transpose(1, 2).reshape(-1, M * M)
    first_real = source.gather(1, real.int().argmax(1, keepdim=True))  # nW 1: every window has a real token
    gather = torch.where(real, source, first_real).reshape(-1)
    real = real.reshape(-1)
    scatter = torch.empty(h * w, dtype=torch.long, device=device)
    scatter[gather[real]] = torch.arange(gather.numel(), device=device)[real]
    return gather, scatter, Hp, Wp


class WindowFirstPath(lg.AttentionPath):
    """One LG path whose window attention starts from windows of the C-wide map (module docstring). In bf16
    too the attention is SDPA's: at LG's 49-token windows it measured 1.04x `attention.gemm_attention`."""

    last_mask = (None, None, None)  # (what it was made for, the mask, the table it came from): `_bias_and_mask`

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        # traced or compiled graphs keep the model's own steps, as do training (attention dropout) and calls
        # recording gradients for this path's own weights (the windows are written back in place, and the mask
        # kept below must not carry a graph from one call to the next)
        if (runs_whole(x) or torch.compiler.is_compiling() or self.training
                or (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()))):
            return super().attend(x)
        B, h, w, C = x.shape
        gather, scatter, Hp, Wp = self._window_order(h, w, x.device)
        heads, N = self.num_heads, self.window_size ** 2
        # pad, roll and cut into windows in one gather of C-wide rows; qkv is per token, so it commutes
        qkv = self.qkv(x.reshape(B, h * w, C).index_select(1, gather))  # B (nW N) 3C
        nW = gather.numel() // N
        # B (nW N) (3 h D) -> 3 B nW h N D -> 3 (B nW) h N D: views into qkv
        q, k, v = qkv.view(B, nW, N, 3, heads, -1).permute(3, 0, 1, 4, 2, 5).flatten(1, 2).unbind(0)
        mask = self._bias_and_mask(h, w, Hp, Wp, q.dtype)
        if mask.shape[0] == 1:  # one mask for every image's windows (no -inf anywhere, or one window each)
            out = self._attend_windows(q, k, v, mask).view(B, nW * N, C)
            return out.index_select(1, scatter).view(B, h, w, C)  # windows back to the map, one gather
        # windows differ in their masks: one image's windows at a time
        out = None
        for b in range(B):
            part = slice(b * nW, (b + 1) * nW)
            windows = self._attend_windows(q[part], k[part], v[part], mask).view(nW * N, C)
            out = windows.new_empty(B, h * w, C) if out is None else out  # proj's dtype (autocast may change it)
            torch.index_select(windows, 0, scatter, out=out[b])
        return out.view(B, h, w, C)

    def _bias_and_mask(self, h: int, w: int, Hp: int, Wp: int, dtype: torch.dtype) -> torch.Tensor:
        """The additive attention mask of this path's windows on an h x w map: the relative position bias, 1 h N
        N, when every window sees all of its tokens, else with each window's -inf mask, nW h N N. Kept for the
        last size, dtype and bias table: made on every call, it took 7 ms of an LG-Tiny call, mostly Python
        (BENCHMARKS.md); one size only, since at 896 px LG-Tiny's masks take 77 MiB."""
        table = self.relative_position_bias_table
        key = (h, w, dtype, weight_key(table))
        made_for, mask, _ = self.last_mask
        if made_for != key:
            if self.shift == 0 and (Hp, Wp) == (h, w):
                mask = self.rel_pos_bias().to(dtype).unsqueeze(0)
            else:
                nW, N = (Hp // self.window_size) * (Wp // self.window_size), self.window_size ** 2
                mask = window_bias_and_mask(self.rel_pos_bias(), h, w, Hp, Wp, self.window_size, self.shift,
                                            dtype).view(nW, self.num_heads, N, N)
            # one tuple, so concurrent callers never pair a mask with another's key; the table goes along (a view,
            # no copy) so that its storage stays alive and no other table can take its address
            self.last_mask = (key, mask, table.detach())
        return mask

    def __getstate__(self):  # deepcopy / pickle: a copy's table has another address, so its mask is made again
        return {**self.__dict__, 'last_mask': (None, None, None)}

    def _window_order(self, h: int, w: int, device: torch.device):
        key = (h, w, device)
        if key not in self.window_orders:
            if len(self.window_orders) >= MAX_WINDOW_ORDERS:  # inputs of ever new sizes: start again
                self.window_orders.clear()
            self.window_orders[key] = window_order(h, w, self.window_size, self.shift, device)
        return self.window_orders[key]

    def _attend_windows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention, then proj, in some windows: q, k, v (b nW) h N D -> (b nW) N C."""
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # laid out (b nW) N h D
        return self.proj(x.transpose(1, 2).flatten(2))  # (b nW) N C: flatten is a view of SDPA's layout


def use_window_first_paths(model: torch.nn.Module) -> torch.nn.Module:
    """Every LG `AttentionPath` of an eval `model` as a `WindowFirstPath`, in place."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is lg.AttentionPath:
                fast = _swapped(child, WindowFirstPath)
                fast.window_orders = {}
                setattr(parent, name, fast)
    return model
