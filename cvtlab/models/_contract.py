"""The timm model-contract methods CvT and LGTransformer share (classifier reset, gradient
checkpointing, intermediate-layer pruning): both keep a `head` over `num_features`, a final `norm`
and a `stages` ModuleList whose stages carry a `grad_checkpointing` flag."""
from typing import List, Optional, Union

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models._features import feature_take_indices


class StagedClassifierMixin:
    """Mixed into an nn.Module that defines `head`, `norm`, `stages`, `num_features`, `num_classes`,
    `global_pool` and `_check_pool(global_pool)`."""
    zero_head_bias = True  # a new head's bias starts at 0 (CvT overrides: parity with the official init)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = self._check_pool(global_pool)
        ref = next(self.parameters())  # build the new head on the model's device and dtype
        if num_classes > 0:
            self.head = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            trunc_normal_(self.head.weight, std=0.02)
            if self.zero_head_bias:
                nn.init.zeros_(self.head.bias)
        else:
            self.head = nn.Identity()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices
