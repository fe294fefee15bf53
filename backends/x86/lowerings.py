"""The x86 backend's lowering table: integer-graph ops to calls of its kernels.

Lowerings register into :data:`LOWERINGS` from :mod:`lower_gemm` (VNNI conv and dense, vector
depthwise, windowed VNNI grouped conv) and :mod:`lower_float` (fp32 conv and dense on the
profiler's kernels, and the float ops around them); the integer transformer glue (layer norm,
softmax, GELU on codes) to :data:`GLUE`, codes (quantize, requantize, residual adds, clamps,
pooling, integer matmul) to its parent, the CPU families' :data:`CODES`, the rest to :data:`COMMON`.

Conventions of the family: activations are NHWC between kernels, uint8 codes (int32 into
residual adds), channels padded to the kernels' multiples (16 outputs; inputs to 4) and never
sliced until the float output; weights, biases and requantization parameters are constants.
"""
from __future__ import annotations

from lcpaq.backends.common.lower_glue import GLUE
from lcpaq.backends.common.relax_lower import LoweringTable

LOWERINGS = LoweringTable("x86-vnni", parent=GLUE)
