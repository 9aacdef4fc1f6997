"""The Day2Night protocol end to end at test size (tests/day2night_tiny.py): the report's numbers are
pycocotools' on the files beside them, test splits are read by the evaluation stages alone, a stage
stopped midway resumes to the same report, and the command again reuses every stage."""
import json
import os
import shutil
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.coco_reference import bootstrap_reference, pycocotools_summary
from tests.script_runner import ROOT

TIMING = ('adapt_minutes', 'adapt_minutes_std', 'frame_costs', 'created')


def _strip_timing(value):
    if isinstance(value, dict):
        return {k: _strip_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_strip_timing(v) for v in value]
    return value


def _with_planted_hits(predict_split):
    """predict_split whose first detections of each image are its ground truth, jittered, with random scores
    (seeded by the real detections, so a resumed run plants the same): a 40-step tiny detector finds almost
    nothing, and metrics of zero would agree with pycocotools whatever the files held."""
    def planted(*args, **kwargs):
        pred = predict_split(*args, **kwargs)
        rng = np.random.default_rng(zlib.crc32(pred['image_id'].tobytes() + pred['scores'].tobytes()))
        m = min(pred['gt_boxes'].shape[1], pred['boxes'].shape[1])
        hit = pred['gt_mask'][:, :m] & (rng.random(pred['gt_mask'][:, :m].shape) < 0.7)
        shift = np.tile(rng.normal(0, 0.02, (*hit.shape, 2)), 2)  # the same for both corners
        moved = np.clip(pred['gt_boxes'][:, :m] + shift, 0, 1)
        pred['boxes'][:, :m] = np.where(hit[..., None], moved, pred['boxes'][:, :m])
        pred['classes'][:, :m] = np.where(hit, pred['gt_labels'][:, :m], pred['classes'][:, :m])
        pred['scores'][:, :m] = np.where(hit, rng.uniform(0.3, 1.0, hit.shape), pred['scores'][:, :m])
        pred['det_mask'][:, :m] |= hit
        return pred
    return planted


@pytest.fixture(scope='module')
def protocol(env, tmp_path_factory):
    """(root, stage of every split read, printed lines) of one tiny protocol run."""
    from adapt.evaluation import detector_eval
    from adapt.protocol import run_graph
    from adapt.protocol.day2night import build_stages
    from tests import day2night_tiny
    root = str(tmp_path_factory.mktemp('day2night') / 'run')
    lines, reads = [], []
    original = tfds.core.DatasetBuilder.as_dataset

    def recording(self, *args, **kwargs):
        stage = next((line.split()[2] for line in reversed(lines) if line.startswith('stage ')), None)
        reads.append((stage, str(kwargs.get('split', args[0] if args else None))))
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tfds.core.DatasetBuilder, 'as_dataset', recording)
        patch.setattr(detector_eval, 'predict_split', _with_planted_hits(detector_eval.predict_split))
        run_graph(build_stages(day2night_tiny.get_config(), data_dir=env[1]), root, print_fn=lines.append)
    return root, reads, lines


def test_report_numbers_are_pycocotools_on_the_files_beside_them(protocol):
    from tests import day2night_tiny
    root = protocol[0]
    report = json.load(open(os.path.join(root, 'report', 'report.json')))
    methods = day2night_tiny.METHODS.split(',')
    assert list(report['methods']) == methods
    resampled = {}  # (method, domain) -> pycocotools' AP50 on every bootstrap resample
    for method in methods:
        row = report['methods'][method]
        for domain in ('day', 'dusk', 'night'):
            files = row['files'][domain]
            gt, dets = (json.load(open(os.path.join(root, 'report', files[key])))
                        for key in ('ground_truth', 'detections'))
            ref = pycocotools_summary(gt, dets)
            cell = row[f'test_{domain}']
            for metric in ('AP50', 'AP'):
                want = max(ref[metric], 0.0) if ref[metric] != -1 else None
                assert cell[metric] == pytest.approx(want, abs=1e-12), (method, domain, metric)
                if want is not None:  # one seed: the interval is the image bootstrap of the files beside
                    interval = bootstrap_reference(gt, dets, metric, day2night_tiny.get_config().bootstrap_samples)
                    assert cell[f'{metric}_ci'] == pytest.approx(list(interval[1:]), abs=1e-12)
                    resampled[method, domain] = interval[0] if metric == 'AP50' else resampled.get((method, domain))
    for domain in ('day', 'dusk', 'night'):  # the paired difference: the same resamples of the same images
        oracle, so = resampled['oracle', domain], resampled['source_only', domain]
        defined = (oracle != -1) & (so != -1)
        low_high = np.percentile(oracle[defined] - so[defined], [2.5, 97.5])
        cell = report['methods']['oracle'][f'test_{domain}']
        assert cell['AP50_diff_ci'] == pytest.approx(list(low_high), abs=1e-12), domain
        assert cell['AP50_diff'] == pytest.approx(
            cell['AP50'] - report['methods']['source_only'][f'test_{domain}']['AP50'], abs=1e-12)
        assert cell['AP50_diff_excludes_0'] == bool(low_high[0] > 0 or low_high[1] < 0)
    rows = report['methods']
    assert rows['oracle']['uses_target_labels'] and not rows['source_only']['uses_target_labels']
    assert rows['source_only']['model'] == 'model' and rows['source_only']['params_added'] == 0
    so, oracle = (rows[m]['test_night']['AP50'] for m in ('source_only', 'oracle'))
    assert 0 < so < 1 and len({rows[m][f'test_{d}']['AP'] for m in rows for d in ('day', 'dusk', 'night')}) > 2
    for m in rows:  # the closed form, NaN where the oracle does not beat source only
        night = rows[m]['test_night']['AP50']
        want = (night - so) / (oracle - so) if oracle > so else None  # NaN, which report.json writes as null
        assert rows[m]['gap_closed'] == (want if want is None else pytest.approx(want, abs=1e-12)), m
    burn = json.load(open(os.path.join(root, report['stages']['evaluate/burn_in@seed0'], 'stage.json')))['result']
    assert rows['source_only']['forgetting'] == pytest.approx(burn['test']['day']['AP50']
                                                             - rows['source_only']['test_day']['AP50'])
    assert report['transfer'] is None
    for m in rows:  # at every backbone level the tiny detector reads
        assert set(rows[m]['proxy_a_distance']) == {'C3', 'C4'}
        assert all(0 <= v <= 2 for v in rows[m]['proxy_a_distance'].values())
    assert report['splits']['night/test'] == {'dataset': 'daynight_synth/tiny/1.1.0', 'split': 'test_night',
                                              'count': 2}
    md = open(os.path.join(root, 'report', 'report.md')).read()
    assert 'oracle†' in md and 'Selection by an oracle' in md
    assert '## Differences from source_only' in md and 'One seed: seed noise is unmeasured' in md
    assert report['resolution']['comparisons'] == 3 and report['resolution']['domains']['night']['mdd'] is None
    for figure in report['figures'].values():
        assert os.path.getsize(os.path.join(root, 'report', figure)) > 1000


def test_severity_sweep_is_pycocotools_on_each_levels_files_over_the_same_scenes(protocol):
    """Level 2's rows are their own stages (same burn-in, night of tiny_sev2); level 4's are the main rows. Each
    level's night mAP@0.5 is pycocotools' on that level's evaluation files, its share of the gap the closed form,
    and both levels' night ground truth is the same boxes (the same scenes, another camera)."""
    root = protocol[0]
    report = json.load(open(os.path.join(root, 'report', 'report.json')))
    sweep = report['severity']
    assert sweep['levels'] == [2, 4] and sweep['own_level'] == 4 and sweep['names'] == {'2': 'dim', '4': 'unexposed'}
    assert list(sweep['rows']) == ['source_only', 'oracle']
    truth = {}
    for k, prefix in ((2, 'severity2/'), (4, '')):
        workdir = os.path.join(root, report['stages'][f'evaluate/{prefix}method/source_only@seed0'])
        truth[k] = json.load(open(os.path.join(workdir, 'ground_truth_night.json')))
        for m, row in sweep['rows'].items():
            workdir = os.path.join(root, report['stages'][f'evaluate/{prefix}method/{m}@seed0'])
            gt, dets = (json.load(open(os.path.join(workdir, f'{kind}_night.json')))
                        for kind in ('ground_truth', 'detections'))
            want = max(pycocotools_summary(gt, dets)['AP50'], 0.0)
            assert row['target_AP50'][sweep['levels'].index(k)] == pytest.approx(want, abs=1e-12), (m, k)
        if k == 4:
            assert [r['target_AP50'][1] for r in sweep['rows'].values()] == [
                report['methods'][m]['test_night']['AP50'] for m in sweep['rows']]
    boxes = lambda gt: sorted((a['image_id'], tuple(a['bbox']), a['category_id']) for a in gt['annotations'])  # noqa: E731
    assert boxes(truth[2]) == boxes(truth[4]) and boxes(truth[4])
    for i in range(2):
        so, oracle = sweep['rows']['source_only']['target_AP50'][i], sweep['rows']['oracle']['target_AP50'][i]
        for row in sweep['rows'].values():
            want = (row['target_AP50'][i] - so) / (oracle - so) if oracle > so else None
            assert row['gap_closed'][i] == (want if want is None else pytest.approx(want, abs=1e-12))
        assert sweep['source_only_over_oracle'][i] == (pytest.approx(so / oracle) if oracle > 0 else None)
    assert os.path.getsize(os.path.join(root, 'report', report['figures']['severity'])) > 0


@pytest.mark.parametrize('severities, methods, message', [
    ('7', 'source_only,oracle', 'night severity 7; valid choices: 1, 2, 3, 4'),
    ('2,x', 'source_only,oracle', "severities: 'x' is not a level number"),
    ('2', 'source_only,dann', 'severities need the oracle row'),
])
def test_bad_severity_settings_are_one_line_errors(severities, methods, message):
    """What experiments.day2night checks before it starts (a usage error, exit 2)."""
    from adapt.protocol.spec import severity_methods
    from tests import day2night_tiny
    config = day2night_tiny.get_config()
    config.severities = severities
    with pytest.raises(ValueError, match=message) as error:
        severity_methods(config, methods.split(','))
    assert '\n' not in str(error.value)
    config.domains.night.dataset = 'bdd100k/night'
    config.severities = '2'
    with pytest.raises(ValueError, match="levels of daynight_synth, not of 'bdd100k/night'"):
        severity_methods(config, ['source_only', 'oracle'])


def test_test_splits_are_read_by_the_evaluation_stages_alone(protocol):
    reads = protocol[1]
    test_reads = {stage for stage, split in reads if split.startswith('test_')}
    assert test_reads and all(stage.startswith('evaluate/') for stage in test_reads), test_reads
    trained = {stage for stage, split in reads if split.startswith('train_')}
    assert {'burn_in@seed0', 'method/source_only@seed0', 'method/oracle@seed0'} <= trained


def test_a_stage_stopped_midway_resumes_to_the_same_report(protocol, tmp_path, env):
    """A copy of the finished run as a stop inside method/source_only's training leaves it: no stage.json there
    (nor in the stages after it), its last checkpoint gone. The same protocol resumes that stage from its
    step-1 checkpoint and writes the same report, timing aside."""
    from adapt.protocol import run_graph
    from adapt.protocol.day2night import build_stages
    from tests import day2night_tiny
    root = str(tmp_path / 'run')
    shutil.copytree(protocol[0], root)
    report = json.load(open(os.path.join(root, 'report', 'report.json')))
    stages = report['stages']
    for name in ('method/source_only@seed0', 'evaluate/method/source_only@seed0'):
        os.remove(os.path.join(root, stages[name], 'stage.json'))
    shutil.rmtree(os.path.join(root, stages['method/source_only@seed0'], 'checkpoints', '2'))
    shutil.rmtree(os.path.join(root, 'report'))
    report_stage = next(p for p in os.listdir(os.path.join(root, 'stages')) if p.startswith('report-'))
    shutil.rmtree(os.path.join(root, 'stages', report_stage))
    lines = []
    from adapt.evaluation import detector_eval
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(detector_eval, 'predict_split', _with_planted_hits(detector_eval.predict_split))
        run_graph(build_stages(day2night_tiny.get_config(), data_dir=env[1]), root, print_fn=lines.append)
    ran = [line.split()[2] for line in lines if line.startswith('stage ')]
    assert ran == ['method/source_only@seed0', 'evaluate/method/source_only@seed0', 'report']
    assert 'resuming' in next(line for line in lines if line.startswith('stage 1/3'))
    again = json.load(open(os.path.join(root, 'report', 'report.json')))
    for key in ('methods', 'transfer', 'splits'):
        assert _strip_timing(again[key]) == _strip_timing(report[key]), key


def test_the_command_again_reuses_every_stage_and_bad_flags_are_one_line(protocol, env):
    root = protocol[0]
    base = [sys.executable, '-m', 'experiments.day2night', '--config=tests/day2night_tiny.py', f'--workdir={root}',
            f'--data_dir={env[1]}']
    start = time.time()
    done = subprocess.run(base, cwd=ROOT, env=env[0], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.time() - start < 60 and '0 to run' in done.stdout and 'report: ' in done.stdout
    bad = subprocess.run(base + ['--methods=source_only,nope'], cwd=ROOT, env=env[0], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count('\n') == 0
    assert "unknown method 'nope'; valid choices: source_only, oracle" in bad.stderr
