"""The Arm backend's lowering table: conv and linear on the sdot kernels (:mod:`lower_gemm`);
integer transformer glue (layer norm, softmax, GELU on codes) through
:data:`~lcpaq.backends.common.lower_glue.GLUE`, codes (quantize, requantize, residual adds,
clamps, pooling, integer matmul) through its parent, the CPU families'
:data:`~lcpaq.backends.common.lower_codes.CODES`; float ops through TVM's frontend
(:data:`~lcpaq.backends.common.relax_frontend.COMMON`), scheduled by the CPU pipeline.

Conventions of the family: activations NHWC between kernels, int8 codes (int32 into residual
adds), channels padded to multiples of 4 and never sliced until the float output.
"""
from __future__ import annotations

from lcpaq.backends.common.lower_glue import GLUE
from lcpaq.backends.common.relax_lower import LoweringTable

LOWERINGS = LoweringTable("arm-dotprod", parent=GLUE)
