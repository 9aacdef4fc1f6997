"""Training methods on one generic step: a method is weighted loss terms plus hooks (see base.py).

base.py (Method, StepContext, Term, the METHODS registry), builtin.py (source_only, oracle, dann, mmd,
coral, entropy), step.py (the generic data-parallel step), trainer.py (state, data, loop, evaluation),
translation.py (UNIT).
"""
from adapt.methods.base import METHODS, Method, StepContext, Term, get_method, register_method, resolve_terms
from adapt.methods import builtin  # noqa: E402,F401  (registers the built-in methods first, in this order)

__all__ = ["METHODS", "Method", "StepContext", "Term", "get_method", "register_method", "resolve_terms"]
