"""The Arm family: int8 on the Armv8.2 dot-product instructions (:mod:`backend` registers it as
``arm-dotprod``), cross-compiled here and run on a board over TVM RPC."""
from lcpaq.backends.arm import lower_gemm  # noqa: F401  (register the lowerings)
from lcpaq.backends.arm.backend import ArmDotprodBackend

__all__ = ["ArmDotprodBackend"]
