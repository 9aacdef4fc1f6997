"""report.md from report.json's dict: what a reader checks, with every convention spelled out."""
from __future__ import annotations

MARK = '†'  # methods that read labelled target data


def _f(value, digits=3, signed=False):
    if value is None:
        return 'n/a'
    return f'{value:+.{digits}f}' if signed else f'{value:.{digits}f}'


def _cell(cell):
    text = _f(cell['AP50'])
    if cell.get('AP50_std') is not None:
        text += f" ± {cell['AP50_std']:.3f}"
    if cell.get('AP50_ci'):
        lo, hi = cell['AP50_ci']
        text += f' [{lo:.3f}, {hi:.3f}]'
    return text


def _name(method, row):
    return f'{method}{MARK}' if row['uses_target_labels'] else method


def _cost(row, size):
    hit = next((c for c in row['frame_costs'] if c['size'] == size), None)
    return (f"{hit['ms']:.1f}", f"{hit['gflops']:.2f}") if hit else ('n/a', 'n/a')


def _table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    return lines + ['| ' + ' | '.join(map(str, r)) + ' |' for r in rows]


def _difference(cell):
    if cell.get('AP50_diff') is None:
        return 'n/a'
    lo, hi = cell['AP50_diff_ci']
    return f"{cell['AP50_diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]" + (' *' if cell['AP50_diff_excludes_0'] else '')


def _differences(report, domains) -> list:
    """The section of paired differences from source_only and what the table can resolve."""
    res, methods = report.get('resolution'), report['methods']
    if not res or not res['comparisons']:
        return []
    out = ['## Differences from source_only', '',
           'Test mAP@0.5 of each row minus source_only\'s, with the 95 % paired bootstrap interval: both rows on the '
           'same resampled test images' + (', seeds paired by index (the interval of the seed-mean difference)'
                                          if res['seeds'] > 1 else '') +
           f". * marks an interval that excludes 0; across the table's {res['comparisons']} comparisons chance "
           f"alone gives about {res['chance_marks']:.1f} such marks (5 % each).", '']
    out += _table(['method'] + domains, [[_name(m, r)] + [_difference(r[f'test_{d}']) for d in domains]
                                         for m, r in methods.items() if m != 'source_only']) + ['']
    if res['seeds'] > 1:
        mdd = ', '.join(f"{d} {_f(res['domains'][d]['mdd'])}" for d in domains)
        out += [f"Minimum detectable difference at {res['seeds']} seeds (two-sided paired t-test, alpha 0.05, power "
                "0.8): (t[0.975, n-1] + t[0.8, n-1]) x sqrt(2) x s / sqrt(n), s the pooled seed standard deviation "
                f'of the rows\' mAP@0.5 on the domain: {mdd}. A smaller difference, marked or not, is within seed '
                'noise.', '']
    else:
        out += ['One seed: seed noise is unmeasured, and the intervals above see image sampling only (single-seed '
                'differences of 0.01-0.02 have reversed between machines in this protocol). Run `--seeds=3` to '
                'measure it.', '']
    return out


def render(report) -> str:
    roles, methods = report['roles'], report['methods']
    src, mid, tgt = roles['source'], roles['intermediate'], roles['target']
    sizes = sorted({c['size'] for row in methods.values() for c in row['frame_costs']},
                   key=lambda s: int(s.split('x')[0]))
    base = methods.get('source_only', {}).get(f'test_{tgt}', {}).get('AP50')
    seeds = report['seeds']
    out = ['# Day2Night report', '',
           f"Settings hash `{report['settings_hash']}`, commit `{report['commit']}`, {len(seeds)} seed(s) "
           f"({', '.join(map(str, seeds))}), created {report['created']}.", '',
           f'Test mAP@0.5 per domain ({src}: labelled source, {mid}: intermediate, {tgt}: target), with the '
           'bootstrap 95 % interval over test images in brackets' + (
               ' (of the mean over seeds, on the same resamples in every seed) and ± the standard deviation over '
               'seeds' if len(seeds) > 1 else '') +
           '. Every row is its run\'s last checkpoint and the model named; every method continued the same '
           'source-only burn-in for the same steps, schedule, augmentation and BatchNorm policy '
           f"(`{report['settings']['adapt']['bn_policy']}`; source_only and oracle included). "
           f'{MARK}: reads labelled {tgt} data (an upper bound or a labelled-data method, not unsupervised '
           f'adaptation). Gap closed: share of the source_only -> oracle {tgt} gap; forgetting: burn-in {src} '
           f'mAP@0.5 minus the method\'s. Adapt GFLOPs: an estimate of the detector\'s training, 3 x its forward '
           'GFLOPs x the images it saw (training-free methods: 0); adapt minutes: wall time of the method\'s stage, '
           'plus the UNIT stage for the methods that read the translator. ms/frame: one frame at a time (batch 1) '
           'on this machine.', '']
    header = ['method', f'{src}', f'{mid}', f'{tgt}', f'{tgt} mAP@[.5:.95]', 'gap closed', 'forgetting',
              'params added', 'adapt GFLOPs', 'adapt min'] + [f'ms/frame {s}' for s in sizes]
    rows = []
    for m, row in methods.items():
        night = row[f'test_{tgt}']['AP50']
        verdict = '' if base is None or m in ('source_only', 'oracle') or night is None else (
            ' (below source only)' if night < base else '')
        rows.append([_name(m, row), _cell(row[f'test_{src}']), _cell(row[f'test_{mid}']),
                     _cell(row[f'test_{tgt}']) + verdict, _f(row[f'test_{tgt}']['AP']),
                     _f(row['gap_closed'], 2, True), _f(row['forgetting'], 3, True), f"{row['params_added']:,}",
                     _f(row['adapt_gflops'], 0), _f(row['adapt_minutes'], 1)] + [_cost(row, s)[0] for s in sizes])
    out += _table(header, rows) + ['']
    out += _differences(report, [src, mid, tgt])
    out += ['## Method catalogue', '',
            'Labels used, parameters added at inference (a translator counts), the evaluated model, training '
            'samples per domain, and the per-frame inference cost.', '']
    rows = [[_name(m, r), r['labels'], r['model'], f"{r['params']:,}", f"{r['params_added']:,} "
             f"({r['bytes_added'] / 2 ** 20:.2f} MiB)", ', '.join(f'{k} {v:,}' for k, v in r['samples'].items()) or
             '-', r['steps']] + [_cost(r, s)[1] for s in sizes] for m, r in methods.items()]
    out += _table(['method', 'labels', 'model evaluated', 'params', 'added', 'training samples', 'steps']
                  + [f'GFLOPs/frame {s}' for s in sizes], rows) + ['']
    out += ['## Selection by an oracle (reported apart)', '',
            f'{tgt} test mAP@0.5 at the checkpoint with the best labelled {tgt}-validation mAP@0.5: selection '
            'that uses target labels, which unsupervised adaptation does not have. The main table never uses it.',
            '']
    out += _table(['method', f'{tgt} (last checkpoint)', f'{tgt} (oracle-selected)', 'selected step'],
                  [[_name(m, r), _f(r[f'test_{tgt}']['AP50']), _f(r['oracle_selected_AP50']),
                    r['oracle_selected_step'] if r['oracle_selected_step'] is not None else 'n/a']
                   for m, r in methods.items()]) + ['']
    pseudo = {m: r['pseudo_labels'] for m, r in methods.items() if r.get('pseudo_labels')}
    if pseudo:
        out += ['## Self-training diagnostics', '',
                f'What the self-training methods\' teachers would label on the {tgt} validation split at the end of '
                'adaptation (mean over seeds): pseudo-boxes per image, and their precision and recall against the '
                f'true boxes (IoU >= 0.5, same class). Measured at evaluation only; no training label of {tgt} is '
                'read for it.', '']
        out += _table(['method', 'pseudo-boxes per image', 'precision', 'recall'],
                      [[_name(m, methods[m]), _f(p['pseudo_boxes_per_image'], 2), _f(p['pseudo_precision']),
                        _f(p['pseudo_recall'])] for m, p in pseudo.items()]) + ['']
    out += _severity_section(report.get('severity'))
    t = report['transfer']
    levels = list(dict.fromkeys(k for r in methods.values() for k in (r['proxy_a_distance'] or {})))
    out += ['## Feature gap and sequential transfer', '',
            f'Proxy A-distance of the globally pooled backbone features at every level the detector reads, {src} vs '
            f'{tgt} test images: 2 - 4 x the held-out error of a ridge linear domain classifier (ridge 1, half the '
            'images held out; fixed in advance, not chosen by how it ranks the methods); 0: indistinguishable, '
            '2: separable.', '']
    out += _table(['method'] + levels, [[_name(m, r)] + [_f((r['proxy_a_distance'] or {}).get(k), 2) for k in levels]
                                        for m, r in methods.items()]) + ['']
    if t:
        out += [f"Sequential labelled training {' -> '.join(t['domains'])}: R[i][j] = test mAP@0.5 on domain j "
                'after training on domains 0..i (row 0: the burn-in).', '']
        out += _table(['after \\ on'] + t['domains'], [[d] + [_f(v) for v in r]
                                                        for d, r in zip(t['domains'], t['R'])])
        out += ['', f"ACC {_f(t['ACC'])}, BWT {_f(t['BWT'], 3, True)} (negative: forgetting), FWT_DR "
                f"{_f(t['FWT_DR'])}, BWT_DR {_f(t['BWT_DR'], 3, True)} (Diaz-Rodriguez et al. 2018).", '']
    else:
        out += ['No sequential run (sequential_steps 0): no transfer matrix.', '']
    out += ['## Data', '']
    out += _table(['domain/role', 'dataset', 'split', 'frames'],
                  [[k, v['dataset'], v['split'], f"{v['count']:,}"] for k, v in report['splits'].items()]) + ['']
    figs = report.get('figures', {})
    out += ['## Figures and files', ''] + [f'![{k}]({v})' for k, v in figs.items()] + [
        '', 'COCO detections and ground truth of every method and domain: `detections/<method>/`; every number '
        'above can be recomputed from them with pycocotools. Numbers by key: `report.json`.',
        '', 'Packages: ' + ', '.join(f'{k} {v}' for k, v in report['packages'].items()), '']
    return '\n'.join(out)


def _severity_section(sweep) -> list:
    if not sweep:
        return []
    levels = sweep['levels']
    heads = [f"{k} {sweep['names'][str(k)]}" for k in levels]
    out = ['## Night severity', '',
           f"{sweep['target']} test mAP@0.5 (share of the gap closed) per night severity level, seed {sweep['seed']}: "
           f"every level's rows continue the same burn-in; level {sweep['own_level']} is the main table's. "
           'Source only / oracle per level: ' + ', '.join(
               f'{k}: {_f(r, 2)}' for k, r in zip(levels, sweep['source_only_over_oracle'])) + '.', '']
    out += _table(['method'] + heads, [[m] + [f'{_f(v)} ({_f(g, 2, True)})' for v, g in
                                              zip(r['target_AP50'], r['gap_closed'])]
                                       for m, r in sweep['rows'].items()])
    return out + ['']
