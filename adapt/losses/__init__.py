"""Pure loss functions `loss(outputs, targets, **hparams) -> (scalar, metrics dict)`."""
from adapt.losses.detection import sigmoid_focal_loss, smooth_l1, ssd_loss

__all__ = ["sigmoid_focal_loss", "smooth_l1", "ssd_loss"]
