"""The Day2Night report: report.json (every number, keyed report['methods'][METHOD]['test_night']['AP50']),
report.md (the tables a reader checks), the figures, and the COCO files each number was computed from.

Every test number comes from an evaluation stage (adapt.protocol.evaluation); this module only combines
them: transfer metrics per seed, then mean and standard deviation over seeds. Intervals bootstrap the
number shown over test images: each evaluation stage keeps its bootstrap values (same resamples in every
seed), and the report takes the percentiles of their mean over seeds. Timing fields (minutes, ms) are
the only ones that differ between two runs of the same settings.
"""
from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess

import numpy as np

from adapt.protocol.spec import (domains, needs_unit, severity_levels, severity_methods, target_severity,
                                 trains)
from adapt.protocol.stages import Stage, canonical_json, seed_name

REPORT_DIR = 'report'
PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'tensorflow-cpu', 'tensorflow-datasets', 'numpy')
# What each method's labels are; the methods that read labelled target data are marked in every table.
LABELS = {True: 'source + target labels', False: 'source labels only'}


def report_stage(config, methods, seeds, stage_names) -> Stage:
    settings = {'protocol': config.to_dict(), 'methods': methods, 'seeds': seeds, 'version': 2}
    deps = tuple(n for n in stage_names if n != 'report')
    return Stage('report', settings, deps=deps, run=lambda ctx: write_report(ctx, config, methods, seeds),
                 headline=lambda r: f"{r['report_md']}")


def settings_hash(config) -> str:
    return hashlib.sha256(canonical_json(config.to_dict()).encode()).hexdigest()[:16]


def _commit() -> str:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 'unknown'
    return head.stdout.strip() + ('+uncommitted' if dirty.stdout.strip() else '') if head.returncode == 0 else 'unknown'


def _versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _mean_std(values):
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def _per_seed(config, deps, methods, seed, domain_names) -> dict:
    """{method: row} of one seed: the evaluation results plus the transfer metrics that need other rows."""
    from adapt.evaluation.transfer import domain_gap, forgetting, gap_closed
    ev = lambda name: deps[seed_name(f'evaluate/{name}', seed)]  # noqa: E731
    burn = ev('burn_in')
    source, target = config.source, config.target
    so = ev('method/source_only') if 'source_only' in methods else None
    oracle = ev('method/oracle') if 'oracle' in methods else None
    rows = {}
    for m in methods:
        e, t = ev(f'method/{m}'), deps[seed_name(f'method/{m}', seed)]
        night = e['test'][target]['AP50']
        steps = e['step']
        batch = config.adapt.batch_size * max(len(e['samples']), 1)  # images per step: each domain read
        train_cost = next((c['gflops'] for c in e['frame_costs'] if c['size'] == _train_size(config)), None)
        unit = deps.get(seed_name('unit', seed), {}) if needs_unit(config, m) else {}
        selected = e.get('oracle_selected') or {}
        rows[m] = {
            'test': e['test'], 'model': e['model'], 'uses_target_labels': e['uses_target_labels'],
            'gap_closed': (float(gap_closed(so['test'][target]['AP50'], night, oracle['test'][target]['AP50']))
                           if so and oracle else None),
            'domain_gap': float(domain_gap(so['test'][source]['AP50'], night)) if so else None,
            'forgetting': float(forgetting(burn['test'][source]['AP50'], e['test'][source]['AP50'])),
            'params': e['params'], 'params_added': e['params'] - burn['params'],
            'samples': e['samples'], 'steps': steps,
            'adapt_minutes': (t['seconds'] + unit.get('seconds', 0.0)) / 60,
            'adapt_gflops': 3 * train_cost * steps * batch if train_cost is not None else None,
            'frame_costs': e['frame_costs'], 'proxy_a_distance': e['proxy_a_distance'],
            'oracle_selected_AP50': selected.get('AP50', night if selected.get('same_as_last') else None),
            'oracle_selected_step': selected.get('step'), 'target_pr': e.get('target_pr'),
            'pseudo_labels': _pseudo_labels(t.get('validation', {}), config.domains[target].validation),
        }
    R = [[ev(name)['test'][d]['AP50'] for d in domain_names]
         for name in ['burn_in'] + [f'sequential/{d}' for d in domain_names[1:]]] if config.sequential_steps else None
    return {'rows': rows, 'R': R}


def _pseudo_labels(validation: dict, split: str):
    """A self-training run's pseudo-label diagnostics on the target's validation split at its end (its
    teacher's where it has one: the teacher makes the labels); None for another method."""
    from adapt.evaluation.pseudo_labels import METRICS
    metrics = validation.get(f'teacher/{split}', validation.get(split, {}))
    return {k: metrics[k] for k in METRICS} if METRICS[0] in metrics else None


def _train_size(config) -> str:
    from adapt.training.config import image_size
    return 'x'.join(map(str, image_size(config.burn_in)))


def combine(config, deps, methods, seeds, domain_names, boot) -> dict:
    """The report's numbers (see the module doc); `boot`: {method: one {'<domain>/<metric>': bootstrap
    values} per seed}."""
    from adapt.evaluation.transfer import bootstrap_interval, transfer_matrix_metrics
    per_seed = [_per_seed(config, deps, methods, s, domain_names) for s in seeds]
    baseline = 'source_only' if 'source_only' in methods else None
    first = per_seed[0]['rows']
    out = {}
    for m in methods:
        rows = [p['rows'][m] for p in per_seed]
        entry = {'model': first[m]['model'], 'uses_target_labels': first[m]['uses_target_labels'],
                 'labels': LABELS[first[m]['uses_target_labels']],
                 'training_free': not trains(config, m), 'params': first[m]['params'],
                 'params_added': first[m]['params_added'], 'bytes_added': 4 * first[m]['params_added'],
                 'samples': first[m]['samples'], 'steps': first[m]['steps'],
                 'frame_costs': first[m]['frame_costs'], 'target_pr': first[m]['target_pr'],
                 'oracle_selected_step': first[m]['oracle_selected_step']}
        for d in domain_names:
            cell = {}
            for metric in ('AP50', 'AP'):
                cell[metric], cell[f'{metric}_std'] = _mean_std([r['test'][d][metric] for r in rows])
                cell[f'{metric}_ci'] = list(bootstrap_interval([b[f'{d}/{metric}'] for b in boot[m]]))
            cell['images'] = first[m]['test'][d]['images']
            if baseline and m != baseline:
                cell.update(_paired_difference([p['rows'] for p in per_seed], boot, m, baseline, d))
            entry[f'test_{d}'] = cell
        for key in ('gap_closed', 'domain_gap', 'forgetting', 'adapt_minutes', 'adapt_gflops', 'oracle_selected_AP50'):
            entry[key], entry[f'{key}_std'] = _mean_std([r[key] for r in rows])
        distances = [r['proxy_a_distance'] for r in rows if r['proxy_a_distance']]
        entry['proxy_a_distance'] = ({level: _mean_std([d[level] for d in distances])[0] for level in distances[0]}
                                     if distances else None)
        pseudo = [r['pseudo_labels'] for r in rows if r['pseudo_labels']]
        entry['pseudo_labels'] = {k: _mean_std([p[k] for p in pseudo])[0] for k in pseudo[0]} if pseudo else None
        out[m] = entry
    resolution = _resolution(out, domain_names, len(seeds), baseline)
    if not config.sequential_steps:
        return {'methods': out, 'transfer': None, 'resolution': resolution}
    matrices = [np.asarray(p['R'], float) for p in per_seed]
    transfer = {'domains': domain_names, 'R': np.mean(matrices, 0).tolist()}
    transfer.update({k: float(v) for k, v in transfer_matrix_metrics(np.mean(matrices, 0)).items()})
    return {'methods': out, 'transfer': transfer, 'resolution': resolution}


def _paired_difference(rows, boot, method, baseline, domain) -> dict:
    """mAP@0.5 of `method` minus `baseline` on `domain`'s test images: the mean over seeds paired by index, its
    95 % paired bootstrap interval (the same resamples for both rows) and whether the interval excludes 0."""
    from adapt.evaluation.paired import paired_difference_interval
    pairs = [(r[method]['test'][domain]['AP50'], r[baseline]['test'][domain]['AP50']) for r in rows]
    if any(a is None or b is None for a, b in pairs):
        return {'AP50_diff': None, 'AP50_diff_ci': None, 'AP50_diff_excludes_0': False}
    low, high = paired_difference_interval([b[f'{domain}/AP50'] for b in boot[method]],
                                           [b[f'{domain}/AP50'] for b in boot[baseline]])
    return {'AP50_diff': float(np.mean([a - b for a, b in pairs])), 'AP50_diff_ci': [low, high],
            'AP50_diff_excludes_0': bool(low > 0 or high < 0)}


def _resolution(rows, domain_names, num_seeds, baseline) -> dict:
    """What the table can resolve: the paired comparisons made, how many marks chance alone gives (5 % of
    them), and per domain the pooled seed standard deviation of mAP@0.5 and the minimum detectable
    difference at the run's seeds (None with one seed: seed noise unmeasured)."""
    from adapt.evaluation.paired import minimum_detectable_difference, pooled_std
    compared = [m for m in rows if baseline and m != baseline]
    out = {'seeds': num_seeds, 'comparisons': len(compared) * len(domain_names),
           'chance_marks': 0.05 * len(compared) * len(domain_names), 'domains': {}}
    for d in domain_names:
        std = pooled_std([r[f'test_{d}']['AP50_std'] for r in rows.values()])
        out['domains'][d] = {'pooled_std': std, 'mdd': minimum_detectable_difference(std, num_seeds),
                             'marks': sum(rows[m][f'test_{d}']['AP50_diff_excludes_0'] for m in compared)}
    return out


def _bootstrap_values(ctx, methods, seeds) -> dict:
    from adapt.protocol.evaluation import BOOTSTRAP_FILE
    out = {}
    for m in methods:
        out[m] = []
        for s in seeds:
            with np.load(os.path.join(ctx.dep_workdirs[seed_name(f'evaluate/method/{m}', s)], BOOTSTRAP_FILE)) as f:
                out[m].append({k: f[k] for k in f.files})
    return out


def _copy_files(root, ctx, methods, seeds, domain_names) -> dict:
    """The first seed's COCO detections / ground truth of every method and domain, copied beside the report
    -> {method: {domain: {'detections': path, 'ground_truth': path}}} (paths relative to the report)."""
    out = {}
    for m in methods:
        name = seed_name(f'evaluate/method/{m}', seeds[0])
        src, files = ctx.dep_workdirs[name], ctx.deps[name]['files']
        out[m] = {}
        for d in domain_names:
            out[m][d] = {}
            for kind, file in files[d].items():
                rel = os.path.join('detections', m, f'{d}_{kind}.json')
                os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
                shutil.copyfile(os.path.join(src, file), os.path.join(root, rel))
                out[m][d][kind] = rel
    return out


def write_report(ctx, config, methods, seeds) -> dict:
    from adapt.protocol import figures
    root = os.path.join(ctx.root, REPORT_DIR)
    os.makedirs(root, exist_ok=True)
    domain_names = list(domains(config))
    combined = combine(config, ctx.deps, methods, seeds, domain_names, _bootstrap_values(ctx, methods, seeds))
    files = _copy_files(root, ctx, methods, seeds, domain_names)
    for m in methods:
        combined['methods'][m]['files'] = files[m]
    stage_dirs = {name: os.path.relpath(path, ctx.root) for name, path in ctx.dep_workdirs.items()}
    for m in methods:
        combined['methods'][m]['workdirs'] = {
            'train': [stage_dirs[seed_name(f'method/{m}', s)] for s in seeds],
            'evaluation': [stage_dirs[seed_name(f'evaluate/method/{m}', s)] for s in seeds]}
    report = {'protocol': 'day2night', 'created': datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec='seconds'), 'commit': _commit(), 'packages': _versions(), 'settings_hash': settings_hash(config),
              'settings': config.to_dict(), 'seeds': seeds, 'domains': {d: config.domains[d].to_dict()
                                                                       for d in domain_names},
              'roles': {'source': config.source, 'intermediate': config.intermediate, 'target': config.target},
              'splits': ctx.deps['data']['splits'], 'selection': 'last checkpoint', **combined,
              'stages': stage_dirs}
    report['severity'] = severity_sweep(config, ctx.deps, methods)
    report['figures'] = _figures(root, ctx, report, methods, seeds, domain_names, figures)
    with open(os.path.join(root, 'report.json'), 'w') as f:
        json.dump(_json_safe(report), f, indent=1)
    from adapt.protocol.report_md import render
    with open(os.path.join(root, 'report.md'), 'w') as f:
        f.write(render(report))
    return {'report_md': os.path.join(root, 'report.md'), 'report_json': os.path.join(root, 'report.json')}


def severity_sweep(config, deps, methods) -> dict | None:
    """Each swept row's target mAP@0.5 (and source mAP@0.5) per night severity level, seed 0, and its share of
    that level's source-only -> oracle gap; the target's own level reads the main rows' evaluations. None
    without `severities`."""
    from adapt.datasets.daynight_synth.exposure import LEVELS
    from adapt.evaluation.transfer import gap_closed
    levels = severity_levels(config)
    if not levels:
        return None
    own = target_severity(config)

    def test(row, level):
        prefix = '' if level == own else f'severity{level}/'
        return deps[seed_name(f'evaluate/{prefix}method/{row}', 0)]['test']
    rows = severity_methods(config, methods)
    night = {m: [test(m, k)[config.target]['AP50'] for k in levels] for m in rows}
    names = {level.severity: level.name for level in LEVELS}
    out = {'levels': levels, 'names': {str(k): names[k] for k in levels}, 'own_level': own, 'seed': 0,
           'target': config.target,
           'source_only_over_oracle': [float(s / o) if o > 0 else None
                                       for s, o in zip(night['source_only'], night['oracle'])],
           'rows': {}}
    for m in rows:
        out['rows'][m] = {
            'target_AP50': night[m],
            'source_AP50': [test(m, k)[config.source]['AP50'] for k in levels],
            'gap_closed': [None if not np.isfinite(g) else float(g) for g in (
                gap_closed(s, v, o) for s, v, o in zip(night['source_only'], night[m], night['oracle']))]}
    return out


def _json_safe(value):
    """NaN / Inf (an undefined metric, e.g. FWT without a baseline) as null: report.json stays strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _figures(root, ctx, report, methods, seeds, domain_names, figures) -> dict:
    from adapt.protocol.evaluation import EXAMPLES_FILE
    rows = report['methods']
    bars = {m: {d: (rows[m][f'test_{d}']['AP50'], *(rows[m][f'test_{d}']['AP50_ci'] or (None, None)))
                for d in domain_names} for m in methods}
    out = {'bar_chart': os.path.basename(figures.bar_chart(bars, os.path.join(root, 'map50.png'),
                                                           title='test mAP@0.5 per method and domain'))}
    curves = {m: (np.asarray(rows[m]['target_pr']['recall']), np.asarray(rows[m]['target_pr']['precision']))
              for m in methods if rows[m].get('target_pr')}
    if curves:
        out['precision_recall'] = os.path.basename(figures.precision_recall_chart(
            curves, os.path.join(root, f'precision_recall_{report["roles"]["target"]}.png'),
            title=f'{report["roles"]["target"]} test, IoU 0.5'))
    if report['severity']:
        out['severity'] = os.path.basename(figures.severity_chart(report['severity'],
                                                                  os.path.join(root, 'severity.png')))
    strip = []
    for m in methods:
        path = os.path.join(ctx.dep_workdirs[seed_name(f'evaluate/method/{m}', seeds[0])], EXAMPLES_FILE)
        if not os.path.exists(path):
            continue
        with np.load(path) as ex:
            if not strip:
                strip.append((f'{report["roles"]["target"]} (raw)', [(f'#{i}', x) for i, x in enumerate(ex['raw'])]))
            if 'translated' in ex:
                strip.append((f'{m}: input', [(f'#{i}', x) for i, x in enumerate(ex['translated'])]))
            strip.append((m, [(f'#{i}', x) for i, x in enumerate(ex['drawn'])]))
    if strip:
        out['examples'] = os.path.basename(figures.image_strip(strip, os.path.join(root, 'examples.png')))
    return out
