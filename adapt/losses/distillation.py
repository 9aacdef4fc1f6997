"""Distillation of a frozen model's outputs (Learning without Forgetting, Li and Hoiem 2016).

LwF keeps the old task by matching the old model's outputs on the new task's images: class probabilities
softened at a temperature T (T = 2 in the paper) and, for a detector, the box regression outputs. The
class term is a KL divergence rather than the paper's cross-entropy: the same gradient, but zero when the
two models agree, so its value reads as "how far the adapted model has moved".
"""
import jax
import jax.numpy as jnp


def softmax_kl(student_logits, teacher_logits, temperature=2.0):
    """KL(teacher || student) of the softmax at `temperature`, per row (last axis = classes)."""
    log_p_t = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    log_p_s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    return jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)


def sigmoid_kl(student_logits, teacher_logits, temperature=2.0):
    """Sum over classes of the Bernoulli KL(teacher || student) of sigmoids at `temperature`."""
    t, s = teacher_logits / temperature, student_logits / temperature
    p_t = jax.nn.sigmoid(t)
    # log p = log_sigmoid(x), log (1 - p) = log_sigmoid(-x): stable for large logits
    kl = p_t * (jax.nn.log_sigmoid(t) - jax.nn.log_sigmoid(s)) + (1 - p_t) * (
        jax.nn.log_sigmoid(-t) - jax.nn.log_sigmoid(-s))
    return jnp.sum(kl, axis=-1)


def box_l2(student_boxes, teacher_boxes):
    """Squared L2 distance of box outputs, per row (last axis = the 4 box codes)."""
    return jnp.sum((student_boxes - teacher_boxes) ** 2, axis=-1)
