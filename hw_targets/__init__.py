"""Hardware targets as data: ``load_target("x86-host")``; ``available_targets()`` lists them."""
from lcpaq.hw_targets.target import Target, available_targets, load_target

__all__ = ["Target", "available_targets", "load_target"]
