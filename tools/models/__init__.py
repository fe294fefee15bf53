"""lcpaq."""
