"""Training methods on one generic step: a method is weighted loss terms plus hooks (see base.py).

base.py (Method, StepContext, Term, the METHODS registry), builtin.py (source_only, oracle, dann, mmd,
coral, entropy), pseudo_label.py (self-training in rounds), mean_teacher.py (an EMA teacher on weak views
supervising strong views), fine_tune.py (fine_tune on N labelled target images, feature_extract), lwf.py
(Learning without Forgetting), translate_train.py (training on source images translated to the target),
shared_latent.py (a detection head on the UNIT shared latent space), training_free.py (online
translation, gamma, histeq, AdaBN: no detector training), step.py
(the generic data-parallel step). adapt.trainers.detection trains them.
"""
from adapt.methods.base import METHODS, Method, StepContext, Term, get_method, register_method, resolve_terms
from adapt.methods import builtin  # noqa: E402,F401  (registers the built-in methods first, in this order)
from adapt.methods import pseudo_label  # noqa: E402,F401
from adapt.methods import mean_teacher  # noqa: E402,F401
from adapt.methods import fine_tune  # noqa: E402,F401
from adapt.methods import lwf  # noqa: E402,F401
from adapt.methods import translate_train  # noqa: E402,F401
from adapt.methods import shared_latent  # noqa: E402,F401
from adapt.methods import training_free  # noqa: E402,F401

__all__ = ["METHODS", "Method", "StepContext", "Term", "get_method", "register_method", "resolve_terms"]
