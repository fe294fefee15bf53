"""The CUDA backend's lowering table: conv and linear on the tensor-core GEMM kernels and
depthwise convs on a direct kernel (:mod:`lcpaq.backends.cuda.lower_gemm`); codes (quantize,
requantize, residual adds, clamps, pooling, integer matmul) through the shared
:data:`~lcpaq.backends.common.lower_codes.CODES` lowerings, left unscheduled so that the CUDA
pipeline's dlight rules schedule them like the float glue from TVM's frontend.

Conventions of the family: activations NHWC between kernels, int8 codes (int32 into residual
adds), channels padded to multiples of 4 (16 at GEMM outputs) and never sliced until the float
output.
"""
from __future__ import annotations

from lcpaq.backends.common.lower_codes import CODES
from lcpaq.backends.common.relax_lower import LoweringTable

LOWERINGS = LoweringTable("cuda-tensorcore", parent=CODES)
