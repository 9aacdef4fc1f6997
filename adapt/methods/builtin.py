"""The built-in methods. Each is trained by the same generic step, data and schedule (fair baselines)."""
from adapt.methods.base import Method, register_method

register_method(Method('source_only', 'labelled source only (the baseline)'))
register_method(Method('oracle', 'labelled target only (the upper bound; uses target labels)',
                       supervised=('target',)))
register_method(Method('dann', 'labelled source + image- and instance-level adversarial alignment (DA-Faster)',
                       losses='dann_image:0.1,dann_instance:0.1'))
register_method(Method('mmd', 'labelled source + multi-kernel MMD of pooled features', losses='mmd:1.0'))
register_method(Method('coral', 'labelled source + CORAL of pooled features', losses='coral:1.0'))
register_method(Method('entropy', 'labelled source + entropy minimisation on target instances',
                       losses='entropy:0.1'))
