"""adapt.protocol.stages: hash keys, reuse, resume after a failure or a real SIGKILL, errors, `only`,
graph.json, progress lines, seeds. Hand-built graphs of tiny Python stages (no JAX); the whole file runs
in well under a second plus three short child processes."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from adapt.protocol import (GRAPH_FILE, STAGE_FILE, Stage, StageContext, expand_seeds, format_duration,
                            read_stage, run_graph, seed_name, stage_key, stage_keys, stage_subdir)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resumable(name, log, crash=None):
    """A stage that does half its work into `half.json` (reused when there), may then 'die', and returns a
    value built from its settings and its deps' results: the same whether or not it was interrupted."""
    def run(ctx):
        half_path = os.path.join(ctx.workdir, 'half.json')
        log.append((name, os.path.exists(half_path), ctx.resumed))
        assert sorted(ctx.deps) == sorted(ctx.dep_workdirs)
        for dep, workdir in ctx.dep_workdirs.items():  # deps are complete, in their own sub-workdirs
            assert read_stage(workdir)['result'] == ctx.deps[dep]
        if os.path.exists(half_path):
            with open(half_path) as f:
                half = json.load(f)
        else:
            half = ctx.settings['x'] + sum(r['value'] for r in ctx.deps.values())
            with open(half_path, 'w') as f:
                json.dump(half, f)
        if crash is not None and crash.pop(name, False):
            raise RuntimeError('killed mid-way\n(second line)')
        return {'value': 10 * half + 1, 'name': name}
    return run


def diamond(log, crash=None, **x):
    """a -> b, a -> c, (b, c) -> d; `x` overrides a stage's setting x."""
    def make(name, deps):
        return Stage(name, {'x': x.get(name, ord(name)), 'cfg': {'lr': 0.1, 'layers': [1, 2]}}, deps,
                     resumable(name, log, crash), headline=lambda r: f'value {r["value"]}')
    return [make('a', ()), make('b', ('a',)), make('c', ('a',)), make('d', ('b', 'c'))]


def ran(log):
    return [entry[0] for entry in log]


def graph_status(root):
    with open(os.path.join(root, GRAPH_FILE)) as f:
        return {s['name']: s['status'] for s in json.load(f)['stages']}


def test_keys_stable_in_any_dict_order_and_change_for_the_edited_stage_and_its_dependants_only():
    # An independent recomputation of the documented key, and a literal: the key is the same in every process.
    text = json.dumps({'name': 'a', 'settings': {'lr': 0.1, 'nested': {'b': 1, 'a': [1, 2]}}, 'deps': {}},
                      sort_keys=True, separators=(',', ':'))
    expected = hashlib.sha256(text.encode()).hexdigest()[:12]
    assert stage_key('a', {'nested': {'a': (1, 2), 'b': 1}, 'lr': 0.1}, {}) == expected == '5c46a5da1a5a'
    assert stage_key('d', {'x': 4}, {'c': 'bbbbbbbbbbbb', 'b': 'aaaaaaaaaaaa'}) == '3b3171aa4da6'

    base = stage_keys(diamond([]))
    assert base == stage_keys(diamond([])) and len(set(base.values())) == 4
    reordered = [Stage(s.name, dict(reversed(list(s.settings.items()))), tuple(reversed(s.deps)), s.run)
                 for s in reversed(diamond([]))]
    assert stage_keys(reordered) == base
    changed = lambda **x: {n for n, k in stage_keys(diamond([], **x)).items() if k != base[n]}  # noqa: E731
    assert changed(b=5) == {'b', 'd'}
    assert changed(c=5) == {'c', 'd'}
    assert changed(d=5) == {'d'}
    assert changed(a=5) == {'a', 'b', 'c', 'd'}
    assert changed(a=float(ord('a'))) == {'a', 'b', 'c', 'd'}  # 97.0 is not 97: documented


def test_second_run_runs_nothing_and_returns_the_same_results(tmp_path):
    log, lines = [], []
    first = run_graph(diamond(log), tmp_path, print_fn=lines.append)
    assert ran(log) == ['a', 'b', 'c', 'd']
    assert first['d'] == {'value': 10 * (ord('d') + first['b']['value'] + first['c']['value']) + 1, 'name': 'd'}
    assert list(first) == ['a', 'b', 'c', 'd']
    assert [line.split(' (')[0] for line in lines if line.startswith('stage ')] == [
        'stage 1/4 a', 'stage 2/4 b', 'stage 3/4 c', 'stage 4/4 d']
    assert any(line.startswith('done d in ') and line.endswith(f'value {first["d"]["value"]}') for line in lines)

    keys = stage_keys(diamond([]))
    record = read_stage(os.path.join(tmp_path, stage_subdir('d', keys['d'])))
    assert set(record) == {'name', 'key', 'settings', 'deps', 'result', 'seconds', 'finished_at'}
    assert (record['name'], record['key'], record['deps'], record['result']) == (
        'd', keys['d'], {'b': keys['b'], 'c': keys['c']}, first['d'])
    assert record['settings'] == {'x': ord('d'), 'cfg': {'lr': 0.1, 'layers': [1, 2]}}

    lines.clear()
    again = run_graph(diamond(log), tmp_path, print_fn=lines.append)
    assert ran(log) == ['a', 'b', 'c', 'd'] and again == first
    assert lines[0] == f'protocol: 4 stages, 4 complete, 0 to run in {tmp_path}'
    assert lines[1:] == [f'reuse {n} ({keys[n]}): value {first[n]["value"]}' for n in 'abcd']

    # An edited setting re-runs that stage and its dependants only; the old sub-workdirs stay.
    log.clear()
    edited = run_graph(diamond(log, c=1), tmp_path, print_fn=lines.append)
    assert ran(log) == ['c', 'd'] and edited['b'] == first['b'] and edited['d'] != first['d']
    assert len(os.listdir(os.path.join(tmp_path, 'stages'))) == 6


def test_failed_stage_leaves_no_stage_json_and_the_next_call_resumes_only_it(tmp_path):
    log, lines = [], []
    with pytest.raises(RuntimeError, match='killed mid-way'):
        run_graph(diamond(log, crash={'b': True}), tmp_path / 'run', print_fn=lines.append)
    assert lines[-1] == 'stage b failed: RuntimeError: killed mid-way (second line)'
    keys = stage_keys(diamond([]))
    b_dir = os.path.join(tmp_path, 'run', stage_subdir('b', keys['b']))
    assert os.path.exists(os.path.join(b_dir, 'half.json')) and not os.path.exists(os.path.join(b_dir, STAGE_FILE))
    assert graph_status(tmp_path / 'run') == {'a': 'complete', 'b': 'failed', 'c': 'pending', 'd': 'pending'}
    with open(os.path.join(tmp_path, 'run', GRAPH_FILE)) as f:
        assert json.load(f)['stages'][1]['error'] == 'RuntimeError: killed mid-way (second line)'

    log.clear()
    resumed = run_graph(diamond(log), tmp_path / 'run', print_fn=lines.append)
    # a is reused; b runs again on its partial workdir (and says so); c, d had not run yet.
    assert log == [('b', True, True), ('c', False, False), ('d', False, False)]
    assert f'stage 1/3 b ({keys["b"]}) ... resuming its unfinished workdir' in lines
    assert resumed == run_graph(diamond([]), tmp_path / 'clean', print_fn=lambda line: None)
    assert graph_status(tmp_path / 'run') == dict.fromkeys('abcd', 'complete')


CHILD = textwrap.dedent('''
    import json, os, signal, sys
    from adapt.protocol import Stage, run_graph

    def stage(name, deps, kill=False):
        def run(ctx):
            half = os.path.join(ctx.workdir, 'half.json')
            if not os.path.exists(half):
                with open(half, 'w') as f:
                    json.dump(ctx.settings['x'] + sum(r['v'] for r in ctx.deps.values()), f)
                if kill:
                    os.kill(os.getpid(), signal.SIGKILL)
            with open(half) as f:
                return {'v': 3 * json.load(f)}
        return Stage(name, {'x': len(name)}, deps, run)

    kill = os.environ.get('KILL') == '1'
    stages = [stage('data', ()), stage('method/dann', ('data',), kill), stage('report', ('method/dann',))]
    print(json.dumps(run_graph(stages, sys.argv[1], print_fn=lambda line: None)))
''')


def test_sigkill_mid_stage_then_the_same_command_gives_the_uninterrupted_result(tmp_path):
    def child(root, kill):
        env = {**os.environ, 'KILL': '1' if kill else '0', 'PYTHONPATH': REPO}
        return subprocess.run([sys.executable, '-c', CHILD, str(root)], env=env, capture_output=True, text=True,
                              timeout=60)
    killed = child(tmp_path / 'run', kill=True)
    assert killed.returncode == -signal.SIGKILL
    assert graph_status(tmp_path / 'run') == {'data': 'complete', 'method/dann': 'running', 'report': 'pending'}
    [subdir] = [d for d in os.listdir(tmp_path / 'run' / 'stages') if d.startswith('method_dann-')]
    assert os.listdir(tmp_path / 'run' / 'stages' / subdir) == ['half.json']  # no stage.json, no temp file
    again = child(tmp_path / 'run', kill=True)  # the same command; the stage resumes past the kill point
    clean = child(tmp_path / 'clean', kill=False)
    assert again.returncode == clean.returncode == 0, again.stderr + clean.stderr
    assert json.loads(again.stdout) == json.loads(clean.stdout)


@pytest.mark.parametrize('stages, message', [
    ([Stage('x', {}, (), print), Stage('a', {}, ('c',), print), Stage('b', {}, ('a',), print),
      Stage('c', {}, ('b',), print)], 'dependency cycle: a -> c -> b -> a'),
    ([Stage('a', {}, ('a',), print)], 'dependency cycle: a -> a'),
    ([Stage('a', {}, (), print), Stage('b', {}, ('a', 'zz'), print)], "stage 'b' depends on unknown stage 'zz'"),
    ([Stage('a', {}, (), print), Stage('a', {'x': 1}, (), print)], "duplicate stage name 'a'"),
])
def test_graph_errors_are_one_line_and_run_nothing(tmp_path, stages, message):
    with pytest.raises(ValueError) as error:
        run_graph(stages, tmp_path, print_fn=lambda line: None)
    assert str(error.value) == message
    assert not os.listdir(tmp_path)


def test_setting_result_and_only_errors_are_one_line(tmp_path):
    with pytest.raises(TypeError) as error:
        stage_keys([Stage('a', {'classes': {'car'}}, (), print)])
    assert str(error.value).startswith("stage 'a': settings are not plain JSON (TypeError: Object of type set")
    with pytest.raises(ValueError, match=r"^only: unknown stage 'zz'; stages: a, b, c, d$"):
        run_graph(diamond([]), tmp_path, only={'zz'}, print_fn=lambda line: None)
    array = type('Array', (), {'tolist': lambda self: [1.5, 2]})  # NumPy/JAX arrays and scalars in a result
    assert run_graph([Stage('arr', {}, (), lambda ctx: {'ap': array()})], tmp_path,
                     print_fn=lambda line: None) == {'arr': {'ap': [1.5, 2]}}
    lines = []
    with pytest.raises(TypeError) as error:
        run_graph([Stage('a', {}, (), lambda ctx: {'model': object()})], tmp_path, print_fn=lines.append)
    assert '\n' not in str(error.value) and lines[-1].startswith("stage a failed: TypeError: stage 'a' result not")
    assert read_stage(os.path.join(tmp_path, stage_subdir('a', stage_keys([Stage('a', {}, (), print)])['a']))) is None


def test_only_runs_the_named_stage_and_its_deps(tmp_path):
    log = []
    out = run_graph(diamond(log), tmp_path, only={'b'}, print_fn=lambda line: None)
    assert ran(log) == ['a', 'b'] and list(out) == ['a', 'b']
    assert graph_status(tmp_path) == {'a': 'complete', 'b': 'complete', 'c': 'pending', 'd': 'pending'}
    out = run_graph(diamond(log), tmp_path, only='d', print_fn=lambda line: None)
    assert ran(log) == ['a', 'b', 'c', 'd'] and list(out) == ['a', 'b', 'c', 'd']


def test_graph_json_lists_every_stage_with_key_subdir_and_status(tmp_path):
    run_graph(diamond([]), tmp_path, only={'c'}, print_fn=lambda line: None)
    keys = stage_keys(diamond([]))
    with open(tmp_path / GRAPH_FILE) as f:
        graph = json.load(f)
    assert graph['root'] == str(tmp_path)
    assert [(s['name'], s['key'], s['subdir'], s['deps'], s['status']) for s in graph['stages']] == [
        ('a', keys['a'], f'stages/a-{keys["a"]}', [], 'complete'),
        ('b', keys['b'], f'stages/b-{keys["b"]}', ['a'], 'pending'),
        ('c', keys['c'], f'stages/c-{keys["c"]}', ['a'], 'complete'),
        ('d', keys['d'], f'stages/d-{keys["d"]}', ['b', 'c'], 'pending')]
    a = graph['stages'][0]
    assert a['result'] == {'value': 971, 'name': 'a'} and a['headline'] == 'value 971' and a['seconds'] >= 0
    assert read_stage(tmp_path / a['subdir'])['result'] == a['result']
    assert not [f for f in os.listdir(tmp_path) if f.endswith('.tmp')]
    assert stage_subdir('method/dann@seed0', 'k') == 'stages/method_dann@seed0-k'


def test_progress_lines_with_a_fake_clock(tmp_path):
    now = [100.0]
    calls = []

    def run(ctx):
        for t, step in [(100, 500), (105, 510), (110, 520), (115, 530), (121, 542)]:
            now[0] = t
            calls.append(ctx.progress(step, 1000, 'loss 0.5' if step == 520 else ''))
        return {'AP50': 0.33012, 'steps': 542, 'note': 'x', 'flag': True}

    lines = []
    run_graph([Stage('burn_in', {}, (), run)], tmp_path, print_fn=lines.append, clock=lambda: now[0],
              progress_every=10)
    # Resumed at step 500: the rate counts from the first call (20 steps in 10 s), not from step 0.
    assert calls == [None, None,
                     '  burn_in: 520/1000 steps (52%) | 2 steps/s | elapsed 0:00:10 | ETA 0:04:00 | loss 0.5',
                     None,
                     '  burn_in: 542/1000 steps (54%) | 2 steps/s | elapsed 0:00:21 | ETA 0:03:49']
    assert lines[-3:-1] == [calls[2], calls[4]]
    assert lines[-1] == 'done burn_in in 21.0 s: AP50=0.3301 steps=542 note=x'

    # The first call comes late (e.g. after a compile): no rate yet.
    ctx = StageContext(name='s', key='k', root='.', workdir='.', settings={}, deps={}, dep_workdirs={},
                       resumed=False, print_fn=lambda line: None, clock=lambda: now[0], progress_every=30)
    now[0] += 31
    assert ctx.progress(3, 7, unit='images') == '  s: 3/7 images (43%) | ? images/s | elapsed 0:00:31 | ETA ?'
    assert format_duration(3725.4) == '1:02:05' and format_duration(None) == '?'


def test_expand_seeds(tmp_path):
    log = []

    def per_seed(seed):
        return [Stage('burn_in', {'x': seed}, ('data',), resumable('burn_in', log)),
                Stage('method/dann', {'x': 1, 'seed': seed}, ('burn_in',), resumable('dann', log))]

    def graph(n):
        return ([Stage('data', {'x': 0}, (), resumable('data', log))] + expand_seeds(per_seed, n)
                + [Stage('report', {'x': 0}, tuple(seed_name('method/dann', k) for k in range(n)),
                         resumable('report', log))])

    stages = graph(2)
    assert [(s.name, s.deps, s.settings) for s in stages[1:5]] == [
        ('burn_in@seed0', ('data',), {'x': 0, 'seed': 0}),
        ('method/dann@seed0', ('burn_in@seed0',), {'x': 1, 'seed': 0}),
        ('burn_in@seed1', ('data',), {'x': 1, 'seed': 1}),
        ('method/dann@seed1', ('burn_in@seed1',), {'x': 1, 'seed': 1})]
    one, three = stage_keys(graph(1)), stage_keys(graph(3))
    assert all(one[n] == three[n] for n in one if n != 'report')
    assert three['burn_in@seed1'] != three['burn_in@seed0']
    assert [s.name for s in expand_seeds(per_seed, [7])] == ['burn_in@seed7', 'method/dann@seed7']
    with pytest.raises(ValueError, match=r"^stage 'b' of seed 1 has seed 0 in its settings$"):
        expand_seeds(lambda seed: [Stage('b', {'seed': 0}, (), print)], 2)

    out = run_graph(graph(2), tmp_path, only={'burn_in'}, print_fn=lambda line: None)
    assert list(out) == ['data', 'burn_in@seed0', 'burn_in@seed1']
    out = run_graph(graph(2), tmp_path, print_fn=lambda line: None)
    assert ran(log) == ['data', 'burn_in', 'burn_in', 'dann', 'dann', 'report'] and len(out) == 6
