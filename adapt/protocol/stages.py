"""A research protocol as a graph of stages, each in its own sub-workdir keyed by a hash of its settings.

A `Stage` names its work (`run`), everything that determines its result (`settings`, a JSON dict) and the
stages whose results it reads (`deps`). Its key is the first 12 hex digits of the sha256 of the canonical
JSON of {name, settings, deps: {dep name: dep key}}, so editing a stage's settings re-keys it and,
through the dep keys, every stage that depends on it (transitively) and nothing else. Its sub-workdir is
`<root>/stages/<sanitised name>-<key>/`.

A stage is complete when `<subdir>/stage.json` exists: {name, key, settings, deps, result, seconds,
finished_at}, written atomically (temp file + os.replace) only after `run` returned. `run_graph` reuses
complete stages (a re-run is cheap), and hands the sub-workdir of an incomplete one (a stage killed or
failed mid-way) to `run` again as it is. So **`run(ctx)` must be resumable and idempotent in
`ctx.workdir`**: restore from its own checkpoints there (the training loop does, from orbax), overwrite
rather than append, and give the same result from a partial workdir as from an empty one. Then SIGKILL
in the middle of a stage followed by the same command gives the result of an uninterrupted run.

Not covered by the key: the code. After changing what a stage computes, put a version in its settings:
that re-keys its dependants too (deleting its sub-workdir re-runs that stage alone). Sub-workdirs of
old keys are kept (switching a setting back reuses them); `graph.json` lists only the current ones.
One process (or one multi-host job, `write=False` off process 0) per root at a time: there is no lock.

`<root>/graph.json` lists every stage: name, key, subdir (relative to root), deps, status (complete,
running, failed, partial: an unfinished sub-workdir, pending: none yet), and for complete stages the
headline, seconds and result. It is rewritten atomically whenever a stage starts, finishes or fails.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import re
import tempfile
import time
from typing import Any, Callable, Iterable, Mapping

STAGES_DIR = 'stages'
STAGE_FILE = 'stage.json'
GRAPH_FILE = 'graph.json'
KEY_LENGTH = 12
SEED_SEPARATOR = '@seed'


@dataclasses.dataclass(frozen=True)
class Stage:
    """One unit of work. `run(ctx) -> dict` does it in `ctx.workdir` (resumably, see the module doc) and
    returns a small JSON result; `headline(result) -> str` is its progress-line summary (default: its
    first few scalar entries)."""
    name: str
    settings: Mapping[str, Any]
    deps: tuple = ()
    run: Callable[['StageContext'], Any] = None
    headline: Callable[[dict], str] | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f'stage name must be a non-empty string, got {self.name!r}')
        if not isinstance(self.settings, Mapping):
            raise TypeError(f'stage {self.name!r}: settings must be a dict, got {type(self.settings).__name__}')
        deps = (self.deps,) if isinstance(self.deps, str) else tuple(self.deps)
        object.__setattr__(self, 'deps', deps)
        if not callable(self.run):
            raise TypeError(f'stage {self.name!r}: run must be callable, got {self.run!r}')


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, ASCII, no NaN/Inf: the same text for equal data in any dict order.
    (Tuples read as lists; 1 and 1.0 are different settings.)"""
    return json.dumps(value, sort_keys=True, separators=(',', ':'), ensure_ascii=True, allow_nan=False)


def stage_key(name: str, settings: Mapping[str, Any], dep_keys: Mapping[str, str]) -> str:
    try:
        text = canonical_json({'name': name, 'settings': settings, 'deps': dict(dep_keys)})
    except (TypeError, ValueError) as error:
        raise TypeError(f'stage {name!r}: settings are not plain JSON ({_one_line(error)})') from None
    return hashlib.sha256(text.encode('ascii')).hexdigest()[:KEY_LENGTH]


def stage_keys(stages: Iterable[Stage]) -> dict[str, str]:
    """{name: key} in dependency order (validates the graph like `run_graph`)."""
    return _keys(_order(list(stages)))


def stage_subdir(name: str, key: str) -> str:
    """Sub-workdir of a stage relative to the root: `stages/<name with [^A-Za-z0-9._@=+-] as _>-<key>`."""
    return os.path.join(STAGES_DIR, f"{re.sub(r'[^A-Za-z0-9._@=+-]', '_', name)}-{key}")


def seed_name(name: str, seed: int) -> str:
    return f'{name}{SEED_SEPARATOR}{seed}'


def expand_seeds(make_stages: Callable[[int], Iterable[Stage]], seeds: int | Iterable[int]) -> list[Stage]:
    """The stages of every seed: `make_stages(seed)` builds one seed's stages under their plain names;
    each becomes `<name>@seed<k>` with `seed: k` in its settings, and its deps on stages of the same
    seed are renamed likewise. Deps on other names (seed-independent stages such as the data, which the
    caller lists once) stay as they are. `seeds`: a count N (seeds 0..N-1) or the seeds themselves;
    a stage's key does not depend on how many seeds there are, so --seeds=3 after --seeds=1 reuses seed 0.
    An aggregating stage depends on `[seed_name(n, k) for k in seeds]`."""
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    out = []
    for seed in seeds:
        group = list(make_stages(seed))
        names = {stage.name for stage in group}
        for stage in group:
            if stage.settings.get('seed', seed) != seed:
                raise ValueError(f'stage {stage.name!r} of seed {seed} has seed {stage.settings["seed"]!r} '
                                 'in its settings')
            out.append(dataclasses.replace(
                stage, name=seed_name(stage.name, seed), settings={**stage.settings, 'seed': seed},
                deps=tuple(seed_name(d, seed) if d in names else d for d in stage.deps)))
    return out


class StageContext:
    """What `run` gets: `name`, `key`, `root`, `workdir` (its sub-workdir, created), `settings`, `deps`
    ({dep name: result}), `dep_workdirs` ({dep name: sub-workdir}), `resumed` (the workdir held an
    unfinished attempt), `print_fn`, and `progress(step, total, extra='')` for long stages."""

    def __init__(self, *, name, key, root, workdir, settings, deps, dep_workdirs, resumed, print_fn,
                 clock=time.time, progress_every=30.0):
        self.name, self.key, self.root, self.workdir = name, key, root, workdir
        self.settings, self.deps, self.dep_workdirs, self.resumed = settings, deps, dep_workdirs, resumed
        self.print_fn, self._clock, self._every = print_fn, clock, progress_every
        self._start = self._last_print = clock()
        self._base = None  # (step, time) of the first progress call: the rate counts steps done in this process

    def progress(self, step: int, total: int, extra: str = '', unit: str = 'steps') -> str | None:
        """Print (and return) `  <name>: <step>/<total> <unit> (p%) | <rate> <unit>/s | elapsed H:MM:SS |
        ETA H:MM:SS[ | extra]` at most every `progress_every` seconds (the first no earlier than that
        after the stage started); None when nothing was printed. The rate counts from the first call, so a
        stage resumed at step 500 does not count steps 0..499 as done in no time."""
        now = self._clock()
        if self._base is None:
            self._base = (step, now)
        if now - self._last_print < self._every:
            return None
        self._last_print = now
        done, spent = step - self._base[0], now - self._base[1]
        rate = done / spent if done > 0 and spent > 0 else None
        eta = (total - step) / rate if rate else None
        parts = [f'  {self.name}: {step}/{total} {unit} ({100 * step / max(total, 1):.0f}%)',
                 f'{rate:.3g} {unit}/s' if rate else f'? {unit}/s',
                 f'elapsed {format_duration(now - self._start)}', f'ETA {format_duration(eta)}']
        line = ' | '.join(parts + ([extra] if extra else []))
        self.print_fn(line)
        return line


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds in (float('inf'), float('-inf')):
        return '?'
    seconds = int(round(max(seconds, 0)))
    return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def default_headline(result: Mapping[str, Any], limit: int = 3) -> str:
    """The first `limit` scalar entries, `k=v` (floats to 4 significant digits)."""
    items = [(k, v) for k, v in result.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    text = ' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in items[:limit])
    return text or '-'


def read_stage(workdir: str) -> dict | None:
    """The completion record in a sub-workdir, or None when the stage has not finished there."""
    try:
        with open(os.path.join(workdir, STAGE_FILE)) as f:
            record = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and 'result' in record else None


def run_graph(stages: Iterable[Stage], root: str, *, only: Iterable[str] | None = None,
              print_fn: Callable[[str], Any] | None = None, clock: Callable[[], float] = time.time,
              progress_every: float = 30.0, write: bool = True) -> dict[str, dict]:
    """Run the stages under `root`, reusing complete ones; returns {name: result} of the stages run or
    reused, in dependency order.

    `only`: names of stages to bring up to date, plus everything they depend on (a plain name also
    selects its `@seed<k>` variants). `print_fn`: gets one line per event (default: print, flushed).
    `clock`: seconds, for timings and progress lines. `write=False` (the non-zero processes of a
    multi-host job) writes neither stage.json nor graph.json but runs the same plan.
    Errors in the graph raise ValueError/TypeError (one line) before anything runs; a failing stage
    prints `stage <name> failed: <error>`, leaves its stage.json unwritten and re-raises.
    """
    print_fn = print_fn or _echo
    root = os.path.abspath(root)
    order = _order(list(stages))
    keys = _keys(order)
    selected = _select(order, only)
    workdirs = {s.name: os.path.join(root, stage_subdir(s.name, keys[s.name])) for s in order}

    records = {s.name: _complete_record(workdirs[s.name], keys[s.name]) for s in order}
    status = {s.name: 'complete' if records[s.name] else
              'partial' if os.path.isdir(workdirs[s.name]) else 'pending' for s in order}
    errors: dict[str, str] = {}
    todo = [s.name for s in order if s.name in selected and not records[s.name]]

    def save_graph():
        if write:
            _write_graph(root, order, keys, status, records, errors)

    print_fn(f'protocol: {len(selected)} stages, {len(selected) - len(todo)} complete, {len(todo)} to run '
             f'in {root}')
    save_graph()
    results = {}
    for stage in order:
        name = stage.name
        if name not in selected:
            continue
        if records[name]:
            results[name] = records[name]['result']
            print_fn(f'reuse {name} ({keys[name]}): {_headline(stage, results[name])}')
            continue
        workdir = workdirs[name]
        resumed = os.path.isdir(workdir) and bool(os.listdir(workdir))
        os.makedirs(workdir, exist_ok=True)
        print_fn(f'stage {todo.index(name) + 1}/{len(todo)} {name} ({keys[name]}) ...'
                 + (' resuming its unfinished workdir' if resumed else ''))
        status[name] = 'running'
        save_graph()
        ctx = StageContext(name=name, key=keys[name], root=root, workdir=workdir,
                           settings=_plain(stage.settings), deps={d: results[d] for d in stage.deps},
                           dep_workdirs={d: workdirs[d] for d in stage.deps}, resumed=resumed,
                           print_fn=print_fn, clock=clock, progress_every=progress_every)
        start = clock()
        try:
            result = stage.run(ctx)
            result = _plain({} if result is None else result, what=f'stage {name!r} result')
            if not isinstance(result, dict):
                raise TypeError(f'stage {name!r} returned {type(result).__name__}, not a dict')
        except BaseException as error:
            status[name], errors[name] = 'failed', _one_line(error) or type(error).__name__
            print_fn(f'stage {name} failed: {errors[name]}')
            save_graph()
            raise
        seconds = clock() - start
        record = {'name': name, 'key': keys[name], 'settings': ctx.settings,
                  'deps': {d: keys[d] for d in stage.deps}, 'result': result, 'seconds': round(seconds, 3),
                  'finished_at': datetime.datetime.fromtimestamp(clock(), datetime.timezone.utc)
                  .isoformat(timespec='seconds')}
        if write:
            _write_json(os.path.join(workdir, STAGE_FILE), record)
        records[name], status[name], results[name] = record, 'complete', result
        save_graph()
        print_fn(f'done {name} in {seconds:.1f} s: {_headline(stage, result)}')
    return results


# --- internals ---------------------------------------------------------------------------------------------

def _echo(line: str) -> None:
    print(line, flush=True)


def _one_line(error: BaseException) -> str:
    text = ' '.join(str(error).split())
    return f'{type(error).__name__}: {text}' if text else type(error).__name__


def _plain(value, what='settings'):
    """A JSON round trip: what a reused stage reads back from disk is what a fresh run hands on. Arrays and
    array scalars (NumPy, JAX) in a result become plain numbers and lists (`tolist()`)."""
    default = None if what == 'settings' else _tolist
    try:
        return json.loads(json.dumps(value, default=default))
    except (TypeError, ValueError) as error:
        raise TypeError(f'{what} not JSON-serialisable ({_one_line(error)})') from None


def _tolist(value):
    if hasattr(value, 'tolist'):
        return value.tolist()
    raise TypeError(f'Object of type {type(value).__name__} is not JSON serializable')


def _order(stages: list[Stage]) -> list[Stage]:
    """Dependency order, stable: among the stages whose deps are done, the one declared first."""
    by_name = {}
    for stage in stages:
        if not isinstance(stage, Stage):
            raise TypeError(f'not a Stage: {stage!r}')
        if stage.name in by_name:
            raise ValueError(f'duplicate stage name {stage.name!r}')
        by_name[stage.name] = stage
    for stage in stages:
        for dep in stage.deps:
            if dep not in by_name:
                raise ValueError(f'stage {stage.name!r} depends on unknown stage {dep!r}')
    done, order, remaining = set(), [], list(stages)
    while remaining:
        ready = next((s for s in remaining if all(d in done for d in s.deps)), None)
        if ready is None:
            raise ValueError(f'dependency cycle: {" -> ".join(_find_cycle(remaining))}')
        remaining.remove(ready)
        done.add(ready.name)
        order.append(ready)
    return order


def _find_cycle(remaining: list[Stage]) -> list[str]:
    """Every remaining stage waits on another remaining one: follow first unfinished deps until one repeats."""
    deps = {s.name: [d for d in s.deps] for s in remaining}
    path, name = [], remaining[0].name
    while name not in path:
        path.append(name)
        name = next(d for d in deps[name] if d in deps)
    return path[path.index(name):] + [name]


def _keys(order: list[Stage]) -> dict[str, str]:
    keys = {}
    for stage in order:
        keys[stage.name] = stage_key(stage.name, stage.settings, {d: keys[d] for d in stage.deps})
    return keys


def _select(order: list[Stage], only) -> set[str]:
    names = [s.name for s in order]
    if only is None:
        return set(names)
    only = [only] if isinstance(only, str) else list(only)
    wanted = set()
    for entry in only:
        match = {n for n in names if n == entry or n.split(SEED_SEPARATOR)[0] == entry}
        if not match:
            raise ValueError(f'only: unknown stage {entry!r}; stages: {", ".join(names)}')
        wanted |= match
    deps = {s.name: s.deps for s in order}
    stack = list(wanted)
    while stack:
        for dep in deps[stack.pop()]:
            if dep not in wanted:
                wanted.add(dep)
                stack.append(dep)
    return wanted


def _complete_record(workdir: str, key: str) -> dict | None:
    record = read_stage(workdir)
    return record if record is not None and record.get('key') == key else None


def _headline(stage: Stage, result: dict) -> str:
    try:
        return str(stage.headline(result)) if stage.headline else default_headline(result)
    except Exception as error:  # a summary bug must not lose a finished stage
        return f'(headline failed: {_one_line(error)})'


def _write_graph(root, order, keys, status, records, errors) -> None:
    entries = []
    for stage in order:
        name = stage.name
        entry = {'name': name, 'key': keys[name], 'subdir': stage_subdir(name, keys[name]),
                 'deps': list(stage.deps), 'status': status[name]}
        if records[name]:
            entry.update(headline=_headline(stage, records[name]['result']), seconds=records[name].get('seconds'),
                         finished_at=records[name].get('finished_at'), result=records[name]['result'])
        if status[name] == 'failed':
            entry['error'] = errors.get(name)
        entries.append(entry)
    _write_json(os.path.join(root, GRAPH_FILE), {'root': root, 'stages': entries})


def _write_json(path: str, value) -> None:
    """Atomic: a uniquely named temp file in the same directory, fsynced, then os.replace."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp', dir=directory)
    try:
        with os.fdopen(fd, 'w') as f:
            json.dump(value, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
