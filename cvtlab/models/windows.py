"""Swin's multi-head self-attention inside (shifted) M x M windows, as pure functions on B H W C maps.

LG-Transformer (`lg.py`) runs one such attention per path. Windows that run past the map are padded and
the padding is masked out of attention; the shift is cyclic, with Swin's mask for the tokens that wrap
around. Windows and heads share one dimension, so SDPA sees 4-D tensors (exportable).
"""
import torch
import torch.nn.functional as F

__all__ = ['relative_position_index', 'window_attention_mask', 'window_attention', 'to_window_frame',
           'from_window_frame', 'attend_in_windows', 'split_windows', 'window_bias_and_mask', 'merge_windows']


def relative_position_index(window_size: int) -> torch.Tensor:
    """N x N indices into a (2M-1)^2 bias table, N = M^2: (dy + M-1) * (2M-1) + (dx + M-1), query minus key."""
    M = window_size
    coords = torch.stack(torch.meshgrid(torch.arange(M), torch.arange(M), indexing='ij')).flatten(1)  # 2 N
    rel = coords[:, :, None] - coords[:, None, :] + (M - 1)  # 2 N N, each in [0, 2M-2]
    return rel[0] * (2 * M - 1) + rel[1]


def window_attention_mask(H: int, W: int, Hp: int, Wp: int, window_size: int, shift: int,
                            device: torch.device) -> torch.Tensor:
    """Which tokens of each window may attend to each other: nW N N bool (nW windows of N = M^2 tokens).

    Two tokens of a window may attend iff they carry the same label. Padding (rows >= H or columns >= W
    of the padded Hp x Wp map) is label 0, so real tokens never see it. With a cyclic shift, the rows and
    columns that wrap around (the first `shift` ones) get their own labels, as Swin's shift mask does.
    """
    M = window_size
    rows, cols = torch.arange(Hp, device=device), torch.arange(Wp, device=device)
    valid = (rows < H)[:, None] & (cols < W)[None, :]  # Hp Wp
    wrapped = 2 * (rows < shift).long()[:, None] + (cols < shift).long()[None, :]  # Hp Wp, in 0..3
    labels = torch.roll((1 + wrapped) * valid, (-shift, -shift), dims=(0, 1))
    # (nh M) (nw M) -> (nh nw) (M M)
    labels = labels.view(Hp // M, M, Wp // M, M).transpose(1, 2).reshape(-1, M * M)
    return labels[:, :, None] == labels[:, None, :]


def window_attention(qkv: torch.Tensor, num_heads: int, window_size: int, shift: int, rel_pos_bias: torch.Tensor,
                     dropout_p: float = 0.0) -> torch.Tensor:
    """Multi-head self-attention inside M x M windows, optionally cyclically shifted (Swin W-MSA / SW-MSA).

    Args:
        qkv: B H W 3C map of queries, keys and values (any H, W; padded to multiples of M, then cropped).
        rel_pos_bias: h N N additive bias, N = M^2.

    Returns the B H W C map. `AttentionPath` runs the same steps with the padding and the shift moved in
    front of its qkv Linear (per token, so they commute with it), where the map is 3x narrower.
    """
    H, W = qkv.shape[1:3]
    x = attend_in_windows(to_window_frame(qkv, window_size, shift), H, W, num_heads, window_size, shift,
                          rel_pos_bias, dropout_p)
    return from_window_frame(x, H, W, shift)


def to_window_frame(x: torch.Tensor, window_size: int, shift: int) -> torch.Tensor:
    """B H W C -> B Hp Wp C: padded to multiples of M, then rolled by -shift (the shifted windows' frame)."""
    M = window_size
    x = F.pad(x, (0, 0, 0, (-x.shape[2]) % M, 0, (-x.shape[1]) % M))  # always (by 0 if it fits): no shape branch
    if shift > 0:  # a static setting of the path, not a shape
        x = torch.roll(x, (-shift, -shift), dims=(1, 2))
    return x


def from_window_frame(x: torch.Tensor, H: int, W: int, shift: int) -> torch.Tensor:
    """The inverse of `to_window_frame`: B Hp Wp C -> B H W C (rolled back, padding cropped)."""
    if shift > 0:
        x = torch.roll(x, (shift, shift), dims=(1, 2))
    return x[:, :H, :W]  # always cropped (a view)


def attend_in_windows(qkv: torch.Tensor, H: int, W: int, num_heads: int, window_size: int, shift: int,
                      rel_pos_bias: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """Window attention on a map already in the window frame (`to_window_frame`): B Hp Wp 3C -> B Hp Wp C.

    H, W are the real sizes before padding, for the mask. Windows and heads share one dimension, so SDPA
    sees 4-D tensors and the per-image mask (bias + window labels) broadcasts over the batch without a copy.
    """
    q, k, v = split_windows(qkv, num_heads, window_size)  # B (nW h) N D each
    mask = window_bias_and_mask(rel_pos_bias, H, W, qkv.shape[1], qkv.shape[2], window_size, shift, q.dtype)
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return merge_windows(x, qkv.shape[1], qkv.shape[2], window_size)


def split_windows(qkv: torch.Tensor, num_heads: int, window_size: int):
    """B Hp Wp 3C -> q, k, v, each B (nW h) N D: the windows' tokens, head by head (N = M^2)."""
    M, h = window_size, num_heads
    # sizes read off the tensor (not unflatten): an ONNX trace then keeps them symbolic
    B, Hp, Wp = qkv.shape[0], qkv.shape[1], qkv.shape[2]
    nh, nw = Hp // M, Wp // M
    # B (nh M) (nw M) (3 h D) -> B nh M nw M 3 h D -> 3 B nh nw h M M D -> 3 B (nh nw h) (M M) D
    qkv = qkv.reshape(B, nh, M, nw, M, 3, h, -1).permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, B, nh * nw * h, M * M, -1)
    return qkv.unbind(0)


def window_bias_and_mask(rel_pos_bias: torch.Tensor, H: int, W: int, Hp: int, Wp: int, window_size: int,
                         shift: int, dtype: torch.dtype) -> torch.Tensor:
    """The additive attention mask of every window: relative position bias, -inf between tokens that may
    not attend to each other (`window_attention_mask`): 1 (nW h) N N."""
    allowed = window_attention_mask(H, W, Hp, Wp, window_size, shift, rel_pos_bias.device)  # nW N N
    mask = rel_pos_bias.to(dtype).unsqueeze(0).masked_fill(~allowed.unsqueeze(1), float('-inf'))  # nW h N N
    # a 4-D mask (a 3-D one sends SDPA's CPU dispatch to the slow math kernel)
    return mask.flatten(0, 1).unsqueeze(0)


def merge_windows(x: torch.Tensor, Hp: int, Wp: int, window_size: int) -> torch.Tensor:
    """The inverse of `split_windows` for the attention's output: B (nW h) N D -> B Hp Wp (h D)."""
    M = window_size
    B, nh, nw = x.shape[0], Hp // M, Wp // M
    # B (nh nw h) (M M) D -> B nh nw h M M D -> B nh M nw M h D -> B (nh M) (nw M) (h D)
    return x.reshape(B, nh, nw, -1, M, M, x.shape[-1]).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, Hp, Wp, -1)
