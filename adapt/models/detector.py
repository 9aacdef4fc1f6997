"""The detector interface and the registry of detector families.

A detector family (SSD, RetinaNet, ...) is a builder `build(config, num_classes, image_size, generator=None) ->
Detector` for images of `image_size` (h, w), registered under its name (the built-in ones in
adapt.models.families, which also builds them, passing the config's image size); `config.detector` names the
family and `config[name]` is the family's own settings block. The
train step, the evaluator, inference and the frozen-feature code use only this interface:

  init(key) -> variables {'params', 'batch_stats'}
  apply(variables, images01, train, labels=None) -> (outputs, features, batch_stats)
      outputs: the raw head outputs (whatever `loss` and `postprocess` read);
      labels: in the training pass of a labelled batch, its {'boxes', 'labels', 'mask'}, for a family
        whose forward pass uses the ground truth (Faster R-CNN adds the true boxes to its proposals);
        None on unlabelled and evaluation passes, which every family must support;
      features: named feature maps of the backbone and neck [B, h, w, c] (`feature_levels`, in order), and
        the K instances (per-object features: the top-K anchors of a dense family, the RoIs of Faster R-CNN):
          'instance_logits' [B, K, C'] (their class logits; `score_kind` says softmax or sigmoid) and
            'instance_mask' [B, K] (the valid ones);
          'instances' {group: {'features': [B, K, D_group], 'mask': [B, K]}}: their features by group, a group
            being one feature space (one domain classifier each): a dense family has one group per head level
            (named after it; D_group its channels), Faster R-CNN the one group 'roi' (the RoI head's hidden
            features). Slot k of a group holds instance k when its mask is set there (zeros elsewhere); each
            valid instance is in exactly one group;
      batch_stats: the new BatchNorm statistics (averaged over `axis_name` when training in a step).
  loss(outputs, batch, axis_name, key) -> (scalar, metrics): the supervised loss on a labelled batch
      {'boxes', 'labels', 'mask'} (targets and matching inside); normalisers are averaged over
      `axis_name` so one step on N devices equals one on 1 device. `key` (the step's, one per loss
      call) is for families that sample anchors or RoIs: they draw with per-example keys
      (adapt.training.parallel.example_keys) so 1 and N devices draw the same. Metrics include
      'cls_loss' and 'box_loss' (mean_teacher trains on the classification part only).
  postprocess(outputs) -> adapt.nms.Detections with [B, max_detections] rows and num_valid [B].
  backbone(variables) -> (backbone name, module, its variables); with_backbone(variables, tree) puts
      imported backbone weights in place: parameter paths stay inside the family's module.
  for_input(name) -> Detector: the detector for inputs of `name`, a training domain ('source', 'target')
      or an evaluation split ('validation_night'); the same variables fit every one. A family with
      domain-specific layers (shared_latent: one encoder per domain) routes there; default: itself.
  frozen_params: regexes of 'detector/...' parameter paths the family never trains (shared_latent's frozen
      encoder), frozen in the optimizer under every method; default: none.
  dense_scores(outputs) -> (logits [B, N, C'], 'softmax' | 'sigmoid'): class predictions at positions
      fixed by the image size (anchors, grid cells), so two images' predictions compare position by
      position (semantic consistency); default: 'cls_logits' with `score_kind`.
  reference_postprocess(outputs) -> Detections or None: what `postprocess` must equal, by the plain path
      (a family whose postprocess is a faster equivalent: experiments/benchmark.py checks it on a trained
      run's outputs); default None: `postprocess` is itself the plain path.
  alignment_levels: the feature maps image-level alignment losses use when their hyper-parameters name none
      (a dense family: the fewest head levels holding 80 % of the source's positive anchors, derived before its
      run starts and stored in run.json: adapt.models.alignment_levels).
  from_saved(variables) -> variables: variables saved by an earlier version of the family, fitted to this one
      (init_run reads them so; evaluation applies saved variables as they are, flax reading only the
      parameters a module has); default: as they are.
"""
from __future__ import annotations

import abc

from adapt.registry import Registry

DETECTORS = Registry('detector')


class Detector(abc.ABC):
    """A built detector for one image size and class count (see the module docstring)."""
    name: str
    num_classes: int
    image_size: tuple
    score_kind: str          # 'softmax' (background column 0) or 'sigmoid'
    feature_levels: tuple    # names of the feature maps in `apply`'s features, shallow to deep
    alignment_levels: tuple  # the maps image-level alignment losses use by default

    @abc.abstractmethod
    def init(self, key): ...

    @abc.abstractmethod
    def apply(self, variables, images, train=False, labels=None): ...

    @abc.abstractmethod
    def loss(self, outputs, batch, axis_name=None, key=None): ...

    @abc.abstractmethod
    def postprocess(self, outputs): ...

    @abc.abstractmethod
    def backbone(self, variables): ...

    @abc.abstractmethod
    def with_backbone(self, variables, collection, tree): ...

    def for_input(self, name: str) -> 'Detector':
        return self

    @property
    def frozen_params(self) -> tuple:
        return ()

    def dense_scores(self, outputs):
        return outputs['cls_logits'], self.score_kind

    def reference_postprocess(self, outputs):
        return None

    def from_saved(self, variables):
        return variables
