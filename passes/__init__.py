"""lcpaq's passes. Importing this package registers every pass for pipeline specs."""
from lcpaq.passes.base import Pass, PassError, PassResult, register_pass, registered_passes
from lcpaq.passes.context import PassContext
from lcpaq.passes.pipeline import (
    Pipeline, calibration_phase, ilp_phase, parse_spec, prepare_phase, sensitivity_phase, uniform_phase,
)

from lcpaq.passes import (  # noqa: F401,E402  (registration)
    assign_uniform, bias_correct, calibrate, cost, distill, fake_quant, finetune, fisher, fold_bn, hessian, ilp, pareto,
    quant_scheme, shape_prop,
)

__all__ = [
    "Pass", "PassContext", "PassError", "PassResult", "Pipeline", "calibration_phase", "ilp_phase", "parse_spec",
    "prepare_phase", "register_pass", "registered_passes", "sensitivity_phase", "uniform_phase",
]
