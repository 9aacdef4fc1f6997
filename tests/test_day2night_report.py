"""The report's combination of evaluation-stage results over methods and seeds, against hand computations,
and the validity checks of the protocol's configs (no training stage reads a test split)."""
import numpy as np
import pytest

from adapt.protocol.day2night import check_no_test_split, method_config, method_names
from adapt.protocol.spec import domains, extra_methods
from adapt.protocol.report import combine
from adapt.protocol.report_md import render
from experiments.configs import day2night

DOMAINS = ['day', 'dusk', 'night']


def _eval(day, dusk, night, params=100, step=60, samples=None):
    test = {d: {'AP50': v, 'AP': v / 2, 'images': 250}
            for d, v in zip(DOMAINS, (day, dusk, night))}
    return {'test': test, 'model': 'model', 'uses_target_labels': False, 'params': params, 'step': step,
            'samples': samples or {'source': 2000}, 'proxy_a_distance': {'C3': 1.5, 'C4': 2.0 - night}, 'oracle_selected': {},
            'frame_costs': [{'size': '160x160', 'part': 'detector', 'ms': 5.0, 'gflops': 0.2}]}


def _deps(seed, so_night, dann_night):
    s = f'@seed{seed}'
    return {f'evaluate/burn_in{s}': _eval(0.6, 0.1, 0.05),
            f'evaluate/method/source_only{s}': _eval(0.58, 0.1, so_night),
            f'evaluate/method/oracle{s}': {**_eval(0.2, 0.2, 0.35), 'uses_target_labels': True},
            f'evaluate/method/dann{s}': _eval(0.5, 0.12, dann_night, params=100,
                                              samples={'source': 2000, 'target': 2000}),
            f'evaluate/method/mean_teacher{s}': _eval(0.55, 0.1, 0.06, samples={'source': 2000, 'target': 2000}),
            f'evaluate/sequential/dusk{s}': _eval(0.4, 0.3, 0.1),
            f'evaluate/sequential/night{s}': _eval(0.3, 0.2, 0.33),
            **{f'method/{m}{s}': {'seconds': 120.0} for m in ('source_only', 'oracle', 'dann')},
            # the teacher makes the pseudo-labels: its diagnostics, not the student's, are the row's
            f'method/mean_teacher{s}': {'seconds': 120.0, 'validation': {
                'student/validation_night': _pseudo(9.0, 0.9, 0.9), 'teacher/validation_night': _pseudo(
                    0.5 + seed, 0.4 + 0.2 * seed, 0.1 + 0.1 * seed), 'teacher/validation_day': _pseudo(7.0, 0.9, 0.9)}}}


def _pseudo(per_image, precision, recall):
    return {'AP50': 0.1, 'pseudo_boxes_per_image': per_image, 'pseudo_precision': precision, 'pseudo_recall': recall}


def _boot(methods, seeds):
    """Bootstrap values per method and seed, two-valued: the 95 % interval is [v - 0.01, v + 0.01] around
    v = 0.5 (day), 0.1 (dusk), 0.05 (night)."""
    flat = {d: np.repeat([v - 0.01, v + 0.01], 50) for d, v in zip(DOMAINS, (0.5, 0.1, 0.05))}
    return {m: [{f'{d}/{k}': flat[d] for d in DOMAINS for k in ('AP50', 'AP')} for _ in seeds] for m in methods}


def test_rows_are_means_over_seeds_of_the_hand_transfer_metrics():
    config = day2night.get_config()
    deps = {**_deps(0, 0.05, 0.08), **_deps(1, 0.07, 0.13)}
    methods = ['source_only', 'oracle', 'dann', 'mean_teacher']
    boot = _boot(methods, [0, 1])
    four = lambda values: {k: np.array(values) for k in boot['dann'][0]}  # noqa: E731
    boot['dann'] = [four([0.1, -1, 0.3, 0.5]), four([0.3, 0.2, 0.5, 0.7])]
    boot['source_only'] = boot['oracle'] = boot['mean_teacher'] = [four([0.1, 0.1, 0.2, 0.2]), four([0.2, 0.3, 0.3, 0.4])]
    out = combine(config, deps, methods, [0, 1], DOMAINS, boot)
    dann = out['methods']['dann']
    assert dann['test_night']['AP50'] == pytest.approx(0.105)
    # per-resample seed means 0.2, 0.4, 0.6 (resample 1 undefined in seed 0): percentiles 2.5 and 97.5
    assert dann['test_night']['AP50_ci'] == pytest.approx([0.21, 0.59])
    assert dann['test_night']['AP50_std'] == pytest.approx(np.std([0.08, 0.13], ddof=1))
    # paired with source_only on the same resamples (resample 1 undefined in one seed): per-resample seed-mean
    # differences 0.05, 0.15, 0.3 -> percentiles 2.5 and 97.5 by linear interpolation
    assert dann['test_night']['AP50_diff'] == pytest.approx(((0.08 - 0.05) + (0.13 - 0.07)) / 2)
    assert dann['test_night']['AP50_diff_ci'] == pytest.approx([0.055, 0.2925])
    assert dann['test_night']['AP50_diff_excludes_0'] and 'AP50_diff' not in out['methods']['source_only']['test_night']
    assert out['methods']['oracle']['test_night']['AP50_diff_ci'] == [0.0, 0.0]
    res = out['resolution']
    assert res['seeds'] == 2 and res['comparisons'] == 9 and res['chance_marks'] == pytest.approx(0.45)
    # night: seed standard deviations of source_only, oracle, dann, mean_teacher; t[0.975, 1] = 12.7062 and
    # t[0.8, 1] = 1.3764 from the t table: (t + t) x sqrt(2) x s / sqrt(2)
    pooled = np.sqrt(np.mean(np.square([np.std([0.05, 0.07], ddof=1), 0.0, np.std([0.08, 0.13], ddof=1), 0.0])))
    assert res['domains']['night']['pooled_std'] == pytest.approx(pooled)
    assert res['domains']['night']['mdd'] == pytest.approx((12.7062 + 1.3764) * pooled, rel=1e-4)
    assert res['domains']['night']['marks'] == 1
    assert dann['gap_closed'] == pytest.approx(np.mean([(0.08 - 0.05) / (0.35 - 0.05), (0.13 - 0.07) / (0.35 - 0.07)]))
    assert dann['forgetting'] == pytest.approx(0.6 - 0.5) and dann['domain_gap'] == pytest.approx(0.58 - 0.105)
    # 3 x 0.2 GFLOPs x 60 steps x 16 images per domain x 2 domains
    assert dann['adapt_gflops'] == pytest.approx(3 * 0.2 * 60 * 16 * 2) and dann['adapt_minutes'] == 2.0
    assert out['methods']['oracle']['gap_closed'] == pytest.approx(1.0)
    assert dann['proxy_a_distance'] == pytest.approx({'C3': 1.5, 'C4': 2.0 - 0.105})  # the mean over seeds, per level
    assert out['methods']['mean_teacher']['pseudo_labels'] == pytest.approx(
        {'pseudo_boxes_per_image': 1.0, 'pseudo_precision': 0.5, 'pseudo_recall': 0.15})
    assert dann['pseudo_labels'] is None
    t = out['transfer']
    R = np.array([[0.6, 0.1, 0.05], [0.4, 0.3, 0.1], [0.3, 0.2, 0.33]])
    np.testing.assert_allclose(t['R'], R)
    assert t['ACC'] == pytest.approx(R[2].mean())
    assert t['BWT'] == pytest.approx(((0.3 - 0.6) + (0.2 - 0.3)) / 2)


def test_markdown_marks_target_labels_and_methods_below_source_only():
    config = day2night.get_config()
    methods = ['source_only', 'oracle', 'dann', 'mean_teacher']
    out = combine(config, _deps(0, 0.05, 0.04), methods, [0], DOMAINS, _boot(methods, [0]))
    report = {'roles': {'source': 'day', 'intermediate': 'dusk', 'target': 'night'}, 'seeds': [0],
              'settings': config.to_dict(),
              'settings_hash': 'h', 'commit': 'c', 'created': 't', 'packages': {}, 'figures': {},
              'splits': {'night/test': {'dataset': 'd', 'split': 'test_night', 'count': 250}}, **out}
    md = render(report)
    assert '| oracle† |' in md and '| dann | 0.500 [0.490, 0.510]' in md and '(below source only)' in md
    assert '| source_only | 0.580' in md and 'source_only (below' not in md
    assert 'BatchNorm policy (`source`' in md
    assert '## Differences from source_only' in md and 'One seed: seed noise is unmeasured' in md
    assert "across the table's 9 comparisons chance alone gives about 0.5 such marks" in md
    assert '| method | C3 | C4 |' in md and '| dann | 1.50 | 1.96 |' in md
    assert '## Self-training diagnostics' in md and '| mean_teacher | 0.50 | 0.400 | 0.100 |' in md
    assert '| dann | 0.' not in md.split('## Self-training diagnostics')[1].split('##')[0]


def test_training_configs_never_read_a_test_split_and_extra_rows_are_source_only_plus_losses():
    config = day2night.get_config()
    config.extra_methods = 'mine=coral:1.0,dann_image:0.1'
    assert extra_methods(config) == {'mine': 'coral:1.0,dann_image:0.1'}
    assert method_names(config)[-1] == 'mine'
    c = method_config(config, 'mine', 0, '/burn', '/unit')
    assert (c.method, c.adaptation_losses, c.init_run, c.eval_splits) == ('source_only', 'coral:1.0,dann_image:0.1',
                                                                         '/burn', '')
    check_no_test_split(c, {'test_day', 'test_night'})
    c.target_eval_splits = 'test_night[:10]'
    with pytest.raises(ValueError, match='would read the test split'):
        check_no_test_split(c, {'test_day', 'test_night'})
    config.methods = 'source_only,nope'
    with pytest.raises(ValueError, match="unknown method 'nope'; valid choices: source_only, oracle"):
        method_names(config)
    config.extra_methods = 'dann=coral:1.0'
    with pytest.raises(ValueError, match='is a registered method'):
        method_names(config)


def test_bdd100k_domains_are_the_published_split_with_a_held_out_validation():
    config = day2night.get_config()
    config.domains.update(day2night.bdd100k_domains())
    expected = {'day': ('bdd100k/daytime', 'train[:95%]', 'train[95%:]', 'validation'),
                'dusk': ('bdd100k/dawn_dusk', 'train[:95%]', 'train[95%:]', 'validation'),
                'night': ('bdd100k/night', 'train[:95%]', 'train[95%:]', 'validation')}
    assert {n: (d.dataset, d.train, d.validation, d.test) for n, d in domains(config).items()} == expected
