"""adapt: domain adaptation for object detection in JAX."""
