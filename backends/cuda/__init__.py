"""The NVIDIA GPU backend family (``cuda-tensorcore``): int8 tensor-core kernels through TVM CUDA."""
from lcpaq.backends.cuda import lower_gemm  # noqa: F401 (registers the GEMM lowerings)
from lcpaq.backends.cuda.backend import CudaTensorCoreBackend

__all__ = ["CudaTensorCoreBackend"]
