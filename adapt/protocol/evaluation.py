"""The Day2Night evaluation stage: the only reader of the test splits.

For one trained run it writes, in its stage workdir, the COCO detections and ground truth of every
domain's test split (anyone can recompute each number with pycocotools) and the metrics on bootstrap
resamples of the test images (the report's intervals, BOOTSTRAP_FILE), and returns the metrics, the
target's precision-recall curve, the proxy A-distance of its backbone features at every level the detector
reads (source vs target test images; the held-out ridge classifier of adapt.evaluation.transfer, fixed in
advance, not chosen by how it ranks the methods), its size and per-frame cost, and the target metrics of the checkpoint an oracle would pick on
labelled target validation (reported apart).
"""
from __future__ import annotations

import functools
import json
import os

import numpy as np

from adapt.protocol.stages import canonical_json

EXAMPLES_FILE = 'examples.npz'
BOOTSTRAP_FILE = 'bootstrap.npz'  # {'<domain>/<metric>': bootstrap_values}: the report's multi-seed intervals


def evaluated_model(run) -> str:
    """What a run's numbers are of: the teacher of a mean-teacher run (as published), else its EMA when it
    kept one, else the trained model."""
    if 'teacher' in ((run.state.get('aux') or {}).get('method') or {}):
        return 'teacher'
    return 'ema' if run.uses_ema else 'model'


def model_variables(run, model: str) -> dict:
    if model == 'teacher':
        return run.state['aux']['method']['teacher']
    return run.variables(ema=model == 'ema')


def count_params(tree) -> int:
    import jax
    return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def translator_params(config) -> int:
    """Parameters of the frozen generator a translated detector runs in front of its detector (0 otherwise)."""
    if config.detector != 'translated' or config.translated.transform != 'unit':
        return 0
    from adapt.runs import load_run
    unit = load_run(config.translated.unit_run, 'unit', config.translated.unit_step)
    return count_params(unit.state['params']['gen'])


def selection_steps(workdir: str, split: str, model: str) -> dict:
    """{step: AP50 of `model` on `split`} from the run's validation rows (metrics.jsonl; a run that evaluates
    several models labels them '<model>/<split>')."""
    labels = (f'{model}/{split}/AP50', f'{split}/AP50')
    steps = {}
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        for line in f:
            row = json.loads(line)
            value = next((row[k] for k in labels if k in row), None)
            if row.get('split') == 'eval' and value is not None:
                steps[int(row['step'])] = float(value)
    return steps


@functools.lru_cache(maxsize=None)
def _frame_costs(config_json: str, num_classes: int, sizes: str):
    """Per-frame cost of an architecture (cached: most methods share the burn-in's)."""
    import ml_collections

    from adapt.evaluation.efficiency import frame_costs, parse_frame_sizes
    from adapt.training.config import image_size
    config = ml_collections.ConfigDict(json.loads(config_json))
    parsed = parse_frame_sizes(sizes, image_size(config))
    return tuple(r for r in frame_costs(config, num_classes, parsed) if r['part'] == 'detector')


def _pooled_features(run, detector, images, batch_size):
    """{level: [N, C]}: the global-average-pooled features of `images` [N, H, W, 3] at every backbone level the
    detector reads (translated first for a translated detector: the features the detector computes),
    `batch_size` at a time through one jitted extractor (run eagerly, the backbone compiled one program per
    operation)."""
    from adapt.evaluation.translation_eval import pooled_levels_fn
    from adapt.models.frozen_features import from_detector
    from adapt.models.layers import FEATURE_STRIDES
    from adapt.models.translated import TranslatedDetector
    levels = [level for level in detector.feature_levels if level in FEATURE_STRIDES]
    pooled = pooled_levels_fn(from_detector(detector, run.variables()), levels)
    rows = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        if isinstance(detector, TranslatedDetector):
            batch = detector.translate(batch)
        rows.append({k: np.asarray(v) for k, v in pooled(batch).items()})
    return {level: np.concatenate([r[level] for r in rows]) for level in levels}


def evaluate_run(ctx, workdir, domains, config, builders, full=True) -> dict:
    """Test metrics of the run in `workdir` on every domain (see the module doc); `full` adds bootstrap values,
    curves, features, costs, examples and the oracle-selected column (the methods' rows)."""
    from adapt.evaluation import write_json
    from adapt.evaluation.curves import precision_recall
    from adapt.evaluation.detector_eval import Evaluator
    from adapt.evaluation.transfer import bootstrap_values, proxy_a_distance
    from adapt.evaluation.voc import match_detections
    from adapt.models.inference import draw_detections, voc_inputs
    from adapt.run_models import run_detector
    from adapt.runs import load_run
    from adapt.training import make_mesh, replicate
    run = load_run(workdir, 'detector')
    detector, mesh = run_detector(run), make_mesh()
    model = evaluated_model(run)
    variables = replicate(model_variables(run, model), mesh)
    source, target = domains[config.source], domains[config.target]
    result = {'method': run.config.method, 'model': model, 'step': run.step, 'uses_target_labels':
              bool(run.record.get('uses_target_labels')), 'samples': run.record.get('samples', {}),
              'params': count_params(model_variables(run, model)['params']) + translator_params(run.config),
              'test': {}, 'files': {}}
    examples, boot, kept = {}, {}, {}  # kept: the proxy A-distance's images, decoded once with the test set
    # One evaluator (one compiled predict function) per dataset: its test splits share it.
    evaluators = {name: Evaluator(run.config, builders(name), detector,
                                  [d.test for d in domains.values() if d.dataset == name], mesh)
                  for name in dict.fromkeys(d.dataset for d in domains.values())}
    for dom in domains.values():
        ctx.print_fn(f'  {ctx.name}: {dom.name} test ({dom.dataset} {dom.test}) ...')
        evaluator = evaluators[dom.dataset]
        shown = config.num_examples if full and dom.name == target.name else 0
        featured = config.feature_images if full and dom.name in (source.name, target.name) else 0
        metrics, pred, gt, dets = evaluator.evaluate(variables, dom.test, keep_images=max(shown, featured))
        files = {'detections': f'detections_{dom.name}.json', 'ground_truth': f'ground_truth_{dom.name}.json'}
        write_json(dets, os.path.join(ctx.workdir, files['detections']))
        write_json(gt, os.path.join(ctx.workdir, files['ground_truth']))
        entry = {k: float(metrics[k]) for k in ('AP50', 'AP', 'AP75') if k in metrics}
        entry['images'] = len(gt['images'])
        if full:
            for metric in ('AP50', 'AP'):
                boot[f'{dom.name}/{metric}'] = bootstrap_values(gt, dets, metric, config.bootstrap_samples)
        result['test'][dom.name], result['files'][dom.name] = entry, files
        if featured:
            kept[dom.name] = pred['images'][:featured]
        if shown:
            images = pred['images'][:shown]
            examples = {'raw': np.round(images * 255).astype(np.uint8), 'drawn': np.stack([
                draw_detections(*args, evaluator.names, gt_boxes=g, scale=2) for *args, g in zip(
                    images, pred['canvas_boxes'], pred['classes'], pred['scores'], pred['canvas_gt_boxes'])])}
            if hasattr(detector, 'translate'):
                examples['translated'] = np.round(np.asarray(detector.translate(images)) * 255).astype(np.uint8)
        if full and dom.name == target.name:
            curve = precision_recall(match_detections(*voc_inputs(pred), len(evaluator.names), 0.5))
            result['target_pr'] = {k: np.round(curve[k], 5).tolist() for k in ('recall', 'precision')}
    if examples:
        np.savez_compressed(os.path.join(ctx.workdir, EXAMPLES_FILE), **examples)
    if boot:
        np.savez(os.path.join(ctx.workdir, BOOTSTRAP_FILE), **boot)
    if not full:
        return result
    try:
        source_feats, target_feats = (_pooled_features(run, detector, kept[d.name], run.config.eval_batch_size)
                                      for d in (source, target))
        result['proxy_a_distance'] = {level: float(proxy_a_distance(source_feats[level], target_feats[level]))
                                      for level in source_feats}
    except (KeyError, ValueError) as error:  # a family without a backbone of ours (shared_latent)
        ctx.print_fn(f'  {ctx.name}: no proxy A-distance ({error})')
        result['proxy_a_distance'] = None
    cost_config = canonical_json(run.config.to_dict())
    result['frame_costs'] = [dict(r) for r in _frame_costs(cost_config, len(run.class_names), config.frame_sizes)]
    result['oracle_selected'] = _oracle_selected(run, target, evaluators[target.dataset], mesh)
    return result


def _oracle_selected(run, target, evaluator, mesh) -> dict:
    """Target test metrics at the checkpoint with the best labelled target-validation AP50 (what selection by
    an oracle reports; kept apart from the main columns)."""
    from adapt.runs import load_run
    from adapt.training import replicate
    scores = selection_steps(run.workdir, target.validation, evaluated_model(run))
    kept = {s: v for s, v in scores.items() if os.path.isdir(os.path.join(run.workdir, 'checkpoints', str(s)))}
    if not kept:
        return {}
    step = max(kept, key=lambda s: (kept[s], s))
    if step == run.step:  # the last checkpoint: the main column's numbers
        return {'step': step, 'validation_AP50': kept[step], 'same_as_last': True}
    chosen = load_run(run.workdir, 'detector', step)  # the same detector: the run's evaluator serves
    metrics = evaluator.evaluate(replicate(model_variables(chosen, evaluated_model(chosen)), mesh), target.test)[0]
    return {'step': step, 'validation_AP50': kept[step], 'AP50': float(metrics['AP50']), 'AP': float(metrics['AP']),
            'same_as_last': False}


def headline(result) -> str:
    cells = [f"{name} AP50 {m['AP50']:.3f}" for name, m in result['test'].items()]
    return f"{result['method']} ({result['model']}): " + ', '.join(cells)
