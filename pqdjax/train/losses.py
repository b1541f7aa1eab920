"""Per-example classification losses and their weighted mean."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """-log softmax(logits)[label]. logits [N, C], labels int [N] -> [N]."""
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]


def soft_label_kl(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)) per example (Hinton et al. 2015).

    The T^2 keeps gradient magnitudes comparable across temperatures.
    [N, C], [N, C] -> [N].
    """
    teacher_log_probs = jax.nn.log_softmax(teacher_logits / temperature)
    student_log_probs = jax.nn.log_softmax(student_logits / temperature)
    teacher_probs = jnp.exp(teacher_log_probs)
    kl = jnp.sum(teacher_probs * (teacher_log_probs - student_log_probs), axis=1)
    return temperature**2 * kl

