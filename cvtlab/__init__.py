"""cvtlab: convolutional vision transformers (CvT, LG-Transformer), exact to the papers and timm-native.

Importing this package registers every model with timm: `timm.create_model('cvt_13')` works after
`import cvtlab`.
"""
from . import models  # noqa: F401  (registers the families with timm)
from .benchmark import benchmark_model, compare_hf
from .checkpoint import load_checkpoint, save_model
from .classifier import Classifier, Prediction
from .folder import save_pretrained
from .hub import push_to_hub
from .errors import CheckpointError, ConfigError, CvtlabError, DataError
from .flops import count_macs, count_params
from .registry import convert_checkpoint, create_model, list_models, load_model
from .config import TrainConfig, make_config
from .deploy import FrozenCompiled, compile_for_inference, fuse_for_inference
from .inference import evaluate, predict
from .trainer import train

__all__ = [
    'create_model', 'list_models', 'load_model', 'load_checkpoint', 'save_pretrained', 'save_model',
    'convert_checkpoint', 'push_to_hub', 'Classifier', 'Prediction',
    'count_macs', 'count_params', 'benchmark_model', 'compare_hf', 'fuse_for_inference', 'compile_for_inference', 'FrozenCompiled', 'train', 'evaluate', 'predict', 'TrainConfig', 'make_config', 'CvtlabError', 'CheckpointError', 'ConfigError', 'DataError',
]
__version__ = '0.1.0'
