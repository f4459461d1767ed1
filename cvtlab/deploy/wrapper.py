"""The base of cvtlab's inference wrappers: a module around a model that answers for it."""
import torch.nn as nn


class Wrapper(nn.Module):
    """An `nn.Module` holding a model under the attribute named by `wrapped`; attributes not found on the
    wrapper (`num_classes`, `pretrained_cfg`, `forward_head`, ...) are looked up on that model."""
    wrapped = 'model'

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == self.wrapped:
                raise
            return getattr(super().__getattr__(self.wrapped), name)
