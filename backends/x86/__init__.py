"""The x86 backend family: AVX-512 VNNI int8 kernels (:mod:`backend` registers it as ``x86-vnni``)."""
from lcpaq.backends.x86 import lower_float, lower_gemm  # noqa: F401  (register the lowerings)
from lcpaq.backends.x86.backend import X86VnniBackend

__all__ = ["X86VnniBackend"]
