"""Side-by-side UNIT train-step timing: our JAX step vs an equivalent PyTorch implementation (CPU).

    pip install torch==2.13.0          # into the venv; NOT a project requirement (this script only)
    python benchmarks/torch_unit_reference.py                          # the unit_quick architecture
    python benchmarks/torch_unit_reference.py --dim=32 --n_res=4 --dis_dim=32 --dis_layers=4 --batch_size=8

The PyTorch model mirrors adapt/models/unit.py layer by layer (same names, reflect padding, instance norm
without affine, layer norm = GroupNorm(1, C), nearest upsampling + conv5x5, 3-scale critics with
count_include_pad=False pooling) and the step mirrors adapt/trainers/unit_step.py: one generator forward
with latent noise, a critic Adam update on the detached translations, then a generator Adam update
against the updated critics (LSGAN, reference loss weights, Adam(lr, 0.5, 0.999) + L2 weight decay).
Before timing, the JAX parameters are copied into the PyTorch model and the deterministic translations
and the first step's losses of both are compared, so both sides run the same computation.
Timing alternates rounds of both frameworks (the machine is shared: one-sided load would bias a
sequential comparison) and reports the median and best per-step wall time, plus the load average.
"""
import argparse
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))


# ------------------------------------------------------------------------------------ PyTorch model
class ConvBlock(nn.Module):
    def __init__(self, cin, cout, k, stride=1, pad=0, norm='none', act='relu', pad_type='reflect'):
        super().__init__()
        self.pad, self.pad_mode = pad, 'reflect' if pad_type == 'reflect' else 'constant'
        self.conv = nn.Conv2d(cin, cout, k, stride, bias=norm != 'instance')
        self.norm = (nn.InstanceNorm2d(cout, eps=1e-5) if norm == 'instance' else
                     nn.GroupNorm(1, cout, eps=1e-5) if norm == 'layer' else None)
        self.act = act

    def forward(self, x):
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, mode=self.pad_mode)
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return {'relu': F.relu, 'lrelu': lambda y: F.leaky_relu(y, 0.2), 'tanh': torch.tanh,
                'none': lambda y: y}[self.act](x)


# Low-resolution neighbour (0, 1, 2 = i-1, i, i+1) of each 5x5 tap, per output phase (adapt's _TAPS).
TAPS = torch.zeros(2, 3, 5)
for _p in range(2):
    for _k in range(5):
        TAPS[_p, (_p + _k) // 2, _k] = 1.0
SUBPIXEL = False  # --subpixel: adapt's algorithm (UpConv) instead of the textbook one


class UpBlock(nn.Module):
    """Upsample (nearest x2) -> pad 2 -> conv5x5 -> layer norm -> ReLU (replicate padding where the rest
    of the model reflects, as adapt/models/unit.py documents). Textbook form (the reference code's), or
    with SUBPIXEL the same function computed as adapt's UpConv does (folded 3x3 conv + pixel shuffle)."""
    def __init__(self, cin, cout, pad_type):
        super().__init__()
        self.pad_mode = 'replicate' if pad_type == 'reflect' else 'constant'
        self.conv = nn.Conv2d(cin, cout, 5)
        self.norm = nn.GroupNorm(1, cout, eps=1e-5)

    def forward(self, x):
        if SUBPIXEL:
            w = self.conv.weight                                       # [O, I, 5, 5]
            folded = torch.einsum('pak,qbl,oikl->opqiab', TAPS, TAPS, w).reshape(4 * w.shape[0], w.shape[1], 3, 3)
            y = F.conv2d(F.pad(x, (1,) * 4, mode=self.pad_mode), folded, self.conv.bias.repeat_interleave(4))
            y = F.pixel_shuffle(y, 2)
        else:
            y = self.conv(F.pad(F.interpolate(x, scale_factor=2, mode='nearest'), (2,) * 4, mode=self.pad_mode))
        return F.relu(self.norm(y))


class ResBlocks(nn.Module):
    def __init__(self, n, c, pad_type):
        super().__init__()
        self.n = n
        for i in range(n):
            setattr(self, f'res{i}_0', ConvBlock(c, c, 3, pad=1, norm='instance', pad_type=pad_type))
            setattr(self, f'res{i}_1', ConvBlock(c, c, 3, pad=1, norm='instance', act='none', pad_type=pad_type))

    def forward(self, x):
        for i in range(self.n):
            x = x + getattr(self, f'res{i}_1')(getattr(self, f'res{i}_0')(x))
        return x


class EncoderFront(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.conv_in = ConvBlock(3, a.dim, 7, pad=3, norm='instance', pad_type=a.pad_type)
        self.n_down = a.n_downsample
        for i in range(a.n_downsample):
            setattr(self, f'down{i}', ConvBlock(a.dim * 2 ** i, a.dim * 2 ** (i + 1), 4, 2, 1, 'instance',
                                                pad_type=a.pad_type))
        self.res = ResBlocks(a.n_res - a.n_shared, a.dim * 2 ** a.n_downsample, a.pad_type)

    def forward(self, x):
        x = self.conv_in(x)
        for i in range(self.n_down):
            x = getattr(self, f'down{i}')(x)
        return self.res(x)


class DecoderBack(nn.Module):
    def __init__(self, a):
        super().__init__()
        c = a.dim * 2 ** a.n_downsample
        self.res = ResBlocks(a.n_res - a.n_shared, c, a.pad_type)
        self.n_up = a.n_downsample
        for i in range(a.n_downsample):
            setattr(self, f'up{i}', UpBlock(c, c // 2, a.pad_type))
            c //= 2
        self.conv_out = ConvBlock(c, 3, 7, pad=3, act='tanh', pad_type=a.pad_type)

    def forward(self, x):
        x = self.res(x)
        for i in range(self.n_up):
            x = getattr(self, f'up{i}')(x)
        return self.conv_out(x)


class UNIT(nn.Module):
    def __init__(self, a):
        super().__init__()
        c = a.dim * 2 ** a.n_downsample
        self.enc_a, self.enc_b, self.dec_a, self.dec_b = EncoderFront(a), EncoderFront(a), DecoderBack(a), DecoderBack(a)
        self.enc_shared, self.dec_shared = ResBlocks(a.n_shared, c, a.pad_type), ResBlocks(a.n_shared, c, a.pad_type)

    def generate(self, x_a, x_b, noise, noise_cycle):
        b = x_a.shape[0]
        h = self.enc_shared(torch.cat([self.enc_a(x_a), self.enc_b(x_b)]))
        s = self.dec_shared(h + noise)
        to_a, to_b = self.dec_a(s), self.dec_b(s)
        x_aa, x_ba, x_ab, x_bb = to_a[:b], to_a[b:], to_b[:b], to_b[b:]
        h2 = self.enc_shared(torch.cat([self.enc_b(x_ab), self.enc_a(x_ba)]))
        s2 = self.dec_shared(h2 + noise_cycle)
        return dict(x_a=x_a, x_b=x_b, h_a=h[:b], h_b=h[b:], x_aa=x_aa, x_bb=x_bb, x_ab=x_ab, x_ba=x_ba,
                    h_ab=h2[:b], h_ba=h2[b:], x_aba=self.dec_a(s2[:b]), x_bab=self.dec_b(s2[b:]))


class MultiScaleDiscriminator(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.scales, self.layers = a.num_scales, a.dis_layers
        for s in range(a.num_scales):
            cin = 3
            for i in range(a.dis_layers):
                setattr(self, f'scale{s}_conv{i}', ConvBlock(cin, a.dis_dim * 2 ** i, 4, 2, 1, act='lrelu',
                                                             pad_type=a.pad_type))
                cin = a.dis_dim * 2 ** i
            setattr(self, f'scale{s}_out', nn.Conv2d(cin, 1, 1))

    def forward(self, x):
        outs = []
        for s in range(self.scales):
            y = x
            for i in range(self.layers):
                y = getattr(self, f'scale{s}_conv{i}')(y)
            outs.append(getattr(self, f'scale{s}_out')(y))
            x = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
        return outs


class Discriminators(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.dis_a, self.dis_b = MultiScaleDiscriminator(a), MultiScaleDiscriminator(a)


W = dict(gan=1.0, recon=10.0, kl=0.01, cycle=10.0, cycle_kl=0.01)


def d_loss(dis, out):
    def pair(d, real, fake):
        maps = d(torch.cat([real, fake]))
        b = real.shape[0]
        return sum(torch.mean((m[:b] - 1) ** 2) + torch.mean(m[b:] ** 2) for m in maps)
    return W['gan'] * (pair(dis.dis_a, out['x_a'], out['x_ba'].detach()) + pair(dis.dis_b, out['x_b'], out['x_ab'].detach()))


def g_loss(dis, out):
    ls = lambda maps: sum(torch.mean((m - 1) ** 2) for m in maps)  # noqa: E731
    l1 = lambda x, y: torch.mean(torch.abs(x - y))  # noqa: E731
    kl = lambda mu: torch.mean(mu ** 2)  # noqa: E731
    return (W['gan'] * (ls(dis.dis_a(out['x_ba'])) + ls(dis.dis_b(out['x_ab'])))
            + W['recon'] * (l1(out['x_aa'], out['x_a']) + l1(out['x_bb'], out['x_b']))
            + W['kl'] * (kl(out['h_a']) + kl(out['h_b']))
            + W['cycle'] * (l1(out['x_aba'], out['x_a']) + l1(out['x_bab'], out['x_b']))
            + W['cycle_kl'] * (kl(out['h_ab']) + kl(out['h_ba'])))


def torch_step(gen, dis, opt_g, opt_d, x_a, x_b, noise, noise_cycle):
    out = gen.generate(x_a, x_b, noise, noise_cycle)
    opt_d.zero_grad(set_to_none=True)
    ld = d_loss(dis, out)
    ld.backward()
    opt_d.step()
    opt_g.zero_grad(set_to_none=True)
    lg = g_loss(dis, out)   # against the updated critics, through the same generator graph
    lg.backward()
    opt_g.step()
    return ld.detach(), lg.detach()


# --------------------------------------------------------------------------------- weights transfer
def load_flax(module, params):
    """Copy a flax param tree (HWIO kernels, scale/bias) into the same-named PyTorch module."""
    flat = {}

    def walk(tree, prefix):
        for k, v in tree.items():
            if isinstance(v, dict):
                walk(v, prefix + [k])
            else:
                v = np.asarray(v)
                name = {'kernel': 'weight', 'scale': 'weight'}.get(k, k)
                flat['.'.join(prefix + [name])] = torch.from_numpy(v.transpose(3, 2, 0, 1).copy() if v.ndim == 4 else v.copy())
    walk(params, [])
    state = module.state_dict()
    missing = set(state) ^ set(flat)
    if missing:
        raise KeyError(f'parameter names differ: {sorted(missing)[:6]}')
    module.load_state_dict(flat)


def parse_args(argv=None):
    p = argparse.ArgumentParser()
    for name, default in (('dim', 16), ('n_downsample', 2), ('n_res', 2), ('n_shared', 1), ('dis_dim', 16),
                          ('dis_layers', 3), ('num_scales', 3), ('batch_size', 4), ('image_size', 64),
                          ('rounds', 6), ('steps_per_round', 5)):
        p.add_argument(f'--{name}', type=int, default=default)
    p.add_argument('--pad_type', default='reflect')
    p.add_argument('--channels_last', action='store_true', help='PyTorch NHWC memory format')
    p.add_argument('--subpixel', action='store_true', help='PyTorch: upsampling convs in adapt\'s sub-pixel form')
    p.add_argument('--keep_ynn', action='store_true', help='JAX: keep XLA:CPU YNNPACK fusions (slow convs)')
    return p.parse_args(argv)


def build(a, framework):
    """Everything one framework needs: (run(n) -> None, description). JAX makes the initial parameters
    for both, so both start from the same weights."""
    import jax
    from experiments.configs import unit_quick
    from adapt.models.unit import UNITConfig
    from adapt.trainers.unit import init_state
    from adapt.trainers.unit_step import make_train_step
    from adapt.training import data_parallel, make_mesh, replicate, shard_batch, to_host
    config = unit_quick.get_config()
    config.model.update(dim=a.dim, n_downsample=a.n_downsample, n_res=a.n_res, n_shared=a.n_shared,
                        dis_dim=a.dis_dim, dis_layers=a.dis_layers, num_scales=a.num_scales, pad_type=a.pad_type)
    config.batch_size, config.image_size = a.batch_size, a.image_size
    cfg = UNITConfig.from_mapping(config.model)
    B, S = a.batch_size, a.image_size
    rng = np.random.default_rng(0)
    batch = {'a': rng.random((B, S, S, 3), np.float32), 'b': rng.random((B, S, S, 3), np.float32)}
    state0 = init_state(config)
    if framework == 'jax':
        mesh = make_mesh(1)
        step = data_parallel(make_train_step(cfg), mesh)
        box = {'state': replicate(state0, mesh)}
        jbatch = shard_batch(batch, mesh)

        def run(n):
            for _ in range(n):
                box['state'], metrics, _ = step(box['state'], jbatch)
            jax.block_until_ready(metrics)
        return run, f'jax {jax.__version__}, XLA_FLAGS="{os.environ.get("XLA_FLAGS", "")}"'

    gen, dis = UNIT(a), Discriminators(a)
    load_flax(gen, to_host(state0.params['gen']))
    load_flax(dis, to_host(state0.params['disc']))
    opt_g = torch.optim.Adam(gen.parameters(), lr=config.lr, betas=(0.5, 0.999), weight_decay=1e-4)
    opt_d = torch.optim.Adam(dis.parameters(), lr=config.lr, betas=(0.5, 0.999), weight_decay=1e-4)
    nchw = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # noqa: E731
    x_a, x_b = nchw(batch['a'] * 2 - 1), nchw(batch['b'] * 2 - 1)
    if a.channels_last:
        gen, dis = gen.to(memory_format=torch.channels_last), dis.to(memory_format=torch.channels_last)
        x_a, x_b = x_a.contiguous(memory_format=torch.channels_last), x_b.contiguous(memory_format=torch.channels_last)
    shape = (2 * B, cfg.dim * cfg.stride, S // cfg.stride, S // cfg.stride)

    def run(n):
        for _ in range(n):
            torch_step(gen, dis, opt_g, opt_d, x_a, x_b, torch.randn(shape), torch.randn(shape))
    return run, (f'torch {torch.__version__} ({"channels_last" if a.channels_last else "NCHW"}, '
                 f'{"sub-pixel" if SUBPIXEL else "textbook"} upsampling convs, '
                 f'{torch.get_num_threads()} threads)')


def worker(framework, argv, conn):
    """A process timing one framework on request: ('run', n) -> (wall s, CPU s); idle in between, so the
    other framework's rounds run alone."""
    a = parse_args(argv)
    global SUBPIXEL
    SUBPIXEL = a.subpixel
    if framework == 'jax' and a.keep_ynn:
        os.environ['ADAPT_KEEP_YNNPACK'] = '1'  # importing adapt would turn YNNPACK off
    run, description = build(a, framework)
    t = time.perf_counter()
    run(1)  # JAX: compile
    conn.send((description, time.perf_counter() - t))
    while True:
        msg = conn.recv()
        if msg is None:
            return
        walls, cpus = [], []
        for _ in range(msg):  # each step timed alone: one stalled step (PyTorch's OpenMP threads stall
            t, c = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)  # for seconds now and then
            run(1)                                                                  # on a loaded machine) is
            c2 = resource.getrusage(resource.RUSAGE_SELF)                           # one outlier, not a round
            walls.append(time.perf_counter() - t)
            cpus.append(c2.ru_utime + c2.ru_stime - c.ru_utime - c.ru_stime)
        conn.send((walls, cpus))


def check_equivalence(a):
    """Same parameters -> same translation and the same generator objective in both frameworks."""
    import jax.numpy as jnp
    from experiments.configs import unit_quick
    from adapt.losses.gan import unit_generator_loss
    from adapt.models.unit import UNIT as JaxUNIT, Discriminators as JaxDiscriminators, UNITConfig
    from adapt.trainers.unit import init_state
    from adapt.trainers.unit_step import generate
    from adapt.training import to_host
    config = unit_quick.get_config()
    config.model.update(dim=a.dim, n_downsample=a.n_downsample, n_res=a.n_res, n_shared=a.n_shared,
                        dis_dim=a.dis_dim, dis_layers=a.dis_layers, num_scales=a.num_scales, pad_type=a.pad_type)
    config.image_size = a.image_size
    cfg = UNITConfig.from_mapping(config.model)
    B, S = 2, a.image_size
    rng = np.random.default_rng(1)
    x_a, x_b = rng.uniform(-1, 1, (B, S, S, 3)).astype(np.float32), rng.uniform(-1, 1, (B, S, S, 3)).astype(np.float32)
    params = to_host(init_state(config).params)
    gen, dis = UNIT(a), Discriminators(a)
    load_flax(gen, params['gen'])
    load_flax(dis, params['disc'])
    n_params = lambda m: sum(x.numel() for x in m.parameters())  # noqa: E731
    n_jax = lambda t: sum(int(np.prod(np.shape(x))) for x in __import__('jax').tree.leaves(t))  # noqa: E731
    print(f'parameters: generator {n_params(gen):,} (JAX {n_jax(params["gen"]):,}), critics '
          f'{n_params(dis):,} (JAX {n_jax(params["disc"]):,})')
    zero = jnp.zeros((2 * B, S // cfg.stride, S // cfg.stride, cfg.dim * cfg.stride))
    out = generate(JaxUNIT(cfg), params['gen'], jnp.asarray(x_a), jnp.asarray(x_b), zero, zero)
    critics = lambda x, d: JaxDiscriminators(cfg).apply({'params': params['disc']}, x, d)  # noqa: E731
    jax_loss = unit_generator_loss({**out, 'd_ba': critics(out['x_ba'], 'a'), 'd_ab': critics(out['x_ab'], 'b')})[0]
    nchw = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # noqa: E731
    with torch.no_grad():
        tz = torch.zeros(2 * B, cfg.dim * cfg.stride, S // cfg.stride, S // cfg.stride)
        theirs = gen.generate(nchw(x_a), nchw(x_b), tz, tz)
        torch_loss = g_loss(dis, theirs)
    diff = max(float(np.abs(np.asarray(out[k]) - theirs[k].numpy().transpose(0, 2, 3, 1)).max())
               for k in ('x_ab', 'x_ba', 'x_aba', 'x_bab'))
    print(f'translations and cycles, max |JAX - PyTorch| = {diff:.2e}; generator objective at zero noise: '
          f'JAX {float(jax_loss):.6f}, PyTorch {float(torch_loss):.6f}')


def main():
    import multiprocessing as mp
    global SUBPIXEL
    a = parse_args()
    for SUBPIXEL in sorted({False, a.subpixel}):
        check_equivalence(a)
    ctx = mp.get_context('spawn')
    workers = {}
    for name in ('jax', 'torch'):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(name, sys.argv[1:], child), daemon=True)
        proc.start()
        description, first = parent.recv()
        workers[name] = (proc, parent, description)
        print(f'{description}: first step (JAX: compile) {first:.1f} s')
    wall = {k: [] for k in workers}
    cpu = {k: [] for k in workers}
    for _ in range(a.rounds):
        for name, (_, conn, _) in workers.items():
            conn.send(a.steps_per_round)
            w, c = conn.recv()
            wall[name] += w
            cpu[name] += c
    for _, conn, _ in workers.values():
        conn.send(None)
    print(f'UNIT train step (critic + generator update), batch {a.batch_size}, {a.image_size}x{a.image_size}, '
          f'dim {a.dim}, n_res {a.n_res} ({a.n_shared} shared), critics {a.dis_dim}x{a.dis_layers} layers x '
          f'{a.num_scales} scales, {a.pad_type} padding, {os.cpu_count()} CPUs, {a.rounds} alternating rounds of '
          f'{a.steps_per_round} steps, each step timed:')
    for name in workers:
        print(f'  {name:6s} wall median {np.median(wall[name]) * 1000:7.1f} ms/step   best '
              f'{np.min(wall[name]) * 1000:7.1f}   mean {np.mean(wall[name]) * 1000:7.1f}   process CPU time median '
              f'{np.median(cpu[name]) * 1000:7.1f} ms/step')
    print(f'  JAX / PyTorch wall (median): {np.median(wall["jax"]) / np.median(wall["torch"]):.2f}; '
          f'load average {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
    main()
