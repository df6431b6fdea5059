from ttcjax.models.config import ModelConfig, RopeScaling
from ttcjax.models.llama import PARAM_AXES, Transformer, forward, init_model

__all__ = ["ModelConfig", "RopeScaling", "PARAM_AXES", "Transformer", "init_model", "forward"]
