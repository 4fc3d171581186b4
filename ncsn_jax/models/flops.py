"""Model FLOPs counted from a function's jaxpr: what model FLOPs utilisation (MFU) is measured against.

Only convolutions and matrix products are counted, at 2 FLOPs per multiply-accumulate (the usual
convention, and what the compiler cannot make cheaper); elementwise work is left out. Counting the
traced program, not the compiled one, gives the same number on every backend.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
from jax.extend import core


def _conv_flops(eqn) -> int:
    lhs, rhs = (v.aval for v in eqn.invars)
    out = eqn.outvars[0].aval
    dims = eqn.params["dimension_numbers"]
    kernel_spatial = [rhs.shape[d] for d in dims.rhs_spec[2:]]
    in_features = rhs.shape[dims.rhs_spec[1]]  # per feature group
    return 2 * math.prod(out.shape) * math.prod(kernel_spatial) * in_features


def _dot_flops(eqn) -> int:
    lhs, rhs = (v.aval for v in eqn.invars)
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
    contracted = math.prod(lhs.shape[d] for d in lhs_contract)
    batch = math.prod(lhs.shape[d] for d in lhs_batch)
    lhs_free = math.prod(s for d, s in enumerate(lhs.shape) if d not in (*lhs_contract, *lhs_batch))
    rhs_free = math.prod(s for d, s in enumerate(rhs.shape) if d not in (*rhs_contract, *rhs_batch))
    return 2 * batch * lhs_free * rhs_free * contracted


def _sub_jaxprs(params: dict[str, Any]):
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, core.Jaxpr):
                yield item


class FlopCount(NamedTuple):
    """FLOPs of one call, 2 per multiply-accumulate.

    Attributes:
      convolutions: of the convolutions.
      matrix_products: of the matrix products (in the NCSNv2 networks: the bilinear resizes of the
        fusion blocks, which this implementation writes as matrix products).
    """

    convolutions: int
    matrix_products: int

    @property
    def total(self) -> int:
        return self.convolutions + self.matrix_products


def _jaxpr_flops(jaxpr) -> FlopCount:
    convolutions = matrix_products = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            convolutions += _conv_flops(eqn)
        elif name == "dot_general":
            matrix_products += _dot_flops(eqn)
        else:
            repeats = eqn.params.get("length", 1) if name == "scan" else 1
            # A custom derivative's forward and its rule are both in the params: count the forward only.
            subs = list(_sub_jaxprs(eqn.params))
            if name.startswith("custom_"):
                subs = subs[:1]
            for sub in subs:
                count = _jaxpr_flops(sub)
                convolutions += repeats * count.convolutions
                matrix_products += repeats * count.matrix_products
    return FlopCount(convolutions, matrix_products)


def count_flops(fn: Callable[..., Any], *args: Any) -> FlopCount:
    """Convolution and matrix-product FLOPs of one call of `fn(*args)`.

    `args` may be arrays or `jax.ShapeDtypeStruct`s; nothing is computed. Loops of known length (scan)
    are counted in full; `while` loops are not supported.
    """
    return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)
