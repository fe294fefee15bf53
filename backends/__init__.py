"""lcpaq backends: ``common/`` (generic) and one package per hardware family (``x86/``...),
chosen by the target's data (see :mod:`lcpaq.backends.common.backend`)."""
