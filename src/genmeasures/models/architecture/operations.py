"""What the analysis knows about modules and operations: leaves, homogeneous units, merges."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from genmeasures.models.probe import BN_TYPES, POOLING_AND_RESHAPE_TYPES, WEIGHT_TYPES

ATTENTION_TYPES = (nn.MultiheadAttention,)
EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)
NORM_TYPES: dict[type[nn.Module], str] = {
    nn.LayerNorm: "layernorm",
    nn.GroupNorm: "groupnorm",
    nn.RMSNorm: "rmsnorm",
    nn.InstanceNorm1d: "instancenorm",
    nn.InstanceNorm2d: "instancenorm",
    nn.InstanceNorm3d: "instancenorm",
    nn.LocalResponseNorm: "local-response-norm",
}
LEAF_TYPES = WEIGHT_TYPES + BN_TYPES + ATTENTION_TYPES + EMBEDDING_TYPES + tuple(NORM_TYPES)
HOMOGENEOUS_MODULES = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.Identity,
    *POOLING_AND_RESHAPE_TYPES,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
)
HOMOGENEOUS_FUNCTIONS = {
    F.relu,
    torch.relu,
    F.relu_,
    F.leaky_relu,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.transpose,
    torch.permute,
    torch.mean,
    torch.sum,
    torch.amax,
    operator.getitem,
    operator.neg,
    operator.pos,
}
HOMOGENEOUS_METHODS = {
    "view",
    "view_as",
    "reshape",
    "reshape_as",
    "flatten",
    "unflatten",
    "permute",
    "transpose",
    "t",
    "movedim",
    "contiguous",
    "squeeze",
    "unsqueeze",
    "relu",
    "relu_",
    "mean",
    "sum",
    "amax",
    "clone",
    "detach",
    "to",
    "float",
    "double",
    "half",
    "type",
    "chunk",
    "split",
    "neg",
}
NON_TENSOR_METHODS = {"size", "dim", "ndimension", "numel", "item", "tolist", "type_as"}
ADDITIONS = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub}
ADDITION_METHODS = {"add", "add_", "sub", "sub_"}
PRODUCTS = {
    operator.mul,
    operator.imul,
    operator.truediv,
    operator.itruediv,
    torch.mul,
    torch.div,
}
PRODUCT_METHODS = {"mul", "mul_", "div", "div_"}
MATRIX_PRODUCTS = {operator.matmul, torch.matmul, torch.bmm, torch.mm, torch.einsum, F.linear}
MATRIX_PRODUCT_METHODS = {"matmul", "bmm", "mm"}
CONCATENATIONS = {torch.cat, torch.concat, torch.stack, torch.hstack, torch.vstack}
#: Operations that make a network more than a chain when they combine two activations.
COMBINATIONS = (
    (ADDITIONS, ADDITION_METHODS, "residual addition"),
    (PRODUCTS, PRODUCT_METHODS, "multiplicative gate"),
    (MATRIX_PRODUCTS, MATRIX_PRODUCT_METHODS, "attention"),
    (CONCATENATIONS, set(), "concatenation"),
)
ATTENTION_FUNCTIONS = {F.scaled_dot_product_attention, F.multi_head_attention_forward}
NORM_FUNCTIONS = {
    F.layer_norm: "layernorm",
    F.group_norm: "groupnorm",
    F.rms_norm: "rmsnorm",
    F.instance_norm: "instancenorm",
    F.batch_norm: "batchnorm-functional",
    F.normalize: "normalize",
    F.local_response_norm: "local-response-norm",
}
BN_FOR = {
    nn.Linear: nn.BatchNorm1d,
    nn.Conv1d: nn.BatchNorm1d,
    nn.Conv2d: nn.BatchNorm2d,
    nn.Conv3d: nn.BatchNorm3d,
}
