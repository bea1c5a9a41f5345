"""Plan, then execute: pure plans built from headers + config, a streaming executor."""

from .execute import ExecuteResult, execute
from .plan import Plan, TensorOp, plan_extract_depth, plan_layers, plan_prune

__all__ = ["ExecuteResult", "Plan", "TensorOp", "execute", "plan_extract_depth", "plan_layers", "plan_prune"]
