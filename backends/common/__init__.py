"""What every backend shares: the integer graph and its reference, the Relax lowering framework,
build, measure, profile, deploy, tuning, and the :class:`~lcpaq.backends.common.backend.Backend`
interface families implement."""
