"""Operating a workspace: ``converge doctor`` (what is ready, each fix) and ``converge stats``."""
