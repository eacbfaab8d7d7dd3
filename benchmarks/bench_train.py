"""Training throughput of the StyleGAN2-ADA trainer: images/s and sec/kimg per preset, jit on/off.

    python benchmarks/bench_train.py                       # tiny, demo (jit off and on), paper256
    python benchmarks/bench_train.py --presets=demo --batch=32 --jit=off --steps=16

Prints one JSON object. Each configuration runs the real trainer step (Gmain, Greg every 4,
Dmain, Dreg every 16, G EMA, ADA bookkeeping) on random in-memory reals (the input pipeline is
benchmarked by the data developer). After a warm-up step (tracing / XLA compilation, reported as
``warmup_s``) it times ``--steps`` steps starting at step 1, so that 16 steps contain the same
4 path-length and 1 R1 phases per 16 steps as a long run. Augmentation: the bgc pipe at a fixed
p (default 0.2), as in the NVlabs reference measurement quoted in docs/speed.md.

What each result explains (docs/speed.md, "Where the time goes"):
* ``phase_s_per_call``: wall seconds per call of each phase function (Gmain, Greg, Dmain, Dreg,
  the G EMA update) over the timed steps, and ``host_rest_s_per_step`` — the rest of the step
  (input batch, counters, ADA bookkeeping, Python). Phase calls run synchronously (TensorFlow's
  eager executor returns when the function is done), so the wrappers add no synchronisation.
* ``warmup``: the warm-up step split into ``trace_s`` (tracing every phase function to a graph,
  timed separately before the step) and ``compile_and_first_run_s`` (XLA compilation — or a
  persistent-cache load — plus one execution of each phase; per phase in
  ``first_call_s_per_phase``), and ``compile_s_est`` (that minus the steady-state time of the
  same phases).
* ``jit_phases``: the phases XLA compiled (``--jit_phases``, as train_gan's flag).
* ``flops_per_call``: FLOPs per phase call counted from the dot/convolution instructions of the
  phase's XLA program (``benchmarks/hlo_flops.py``, HLO as lowered from the graph), when the phase
  is one XLA program (null otherwise, e.g. with ``--jit=off``); ``gflops_per_s`` = FLOPs of the timed steps / their wall time,
  against ``matmul_peak_gflops``, a float32 1024x1024 XLA matmul timed in the same process with
  the same threads.
* ``peak_rss_gb``: the process's peak resident memory after this configuration.
* ``allocator``: like every stage, the benchmark restarts itself under jemalloc when
  ``HISTAUG_MALLOC`` asks for it (``histaug_tf.common.preload_allocator``); else ``glibc``.
"""
import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# (preset, resolution, batch) defaults
DEFAULTS = {"tiny": (16, 8), "demo": (32, 32), "paper256": (256, 2)}


def build_trainer(run_dir, preset_name, resolution, batch, jit, p, augpipe, seed=0,
                  channels=None, jit_phases="auto"):
    """The real ``Trainer`` on random in-memory reals (bgc-style pipe at a fixed p).
    Returns ``(trainer, preset, augment_name)``."""
    import numpy as np
    import tensorflow as tf

    from histaug_tf.gan import augment
    from histaug_tf.apps.train_gan import networks_builder
    from histaug_tf.gan.presets import get_preset
    from histaug_tf.gan.config import TrainingConfig
    from histaug_tf.gan.trainer import Trainer

    preset = get_preset(preset_name, resolution, gpus=1, c_dim=0, img_channels=3,
                        mixed_precision=False)
    if channels:  # (channel_base, channel_max, mapping layers), e.g. the paper's at 32 px
        cb, cm, nmap = channels
        preset["G_kwargs"]["synthesis_kwargs"].update(channel_base=cb, channel_max=cm)
        preset["G_kwargs"]["mapping_kwargs"]["num_layers"] = nmap
        preset["D_kwargs"].update(channel_base=cb, channel_max=cm)

    build = networks_builder(preset)
    make_pipe = lambda: augment.make_augment_pipe(augpipe, p=p, seed=seed)  # noqa: E731
    reals = np.random.RandomState(seed).uniform(-1, 1, (batch, resolution, resolution, 3))
    reals = reals.astype(np.float32)

    def input_fn(nw, wi, wb, s):
        ds = tf.data.Dataset.from_tensors((reals[:wb], np.zeros([wb], np.int32)))
        return ds.repeat()

    lk = preset["loss_kwargs"]
    config = TrainingConfig.from_flat(
        outdir=run_dir, batch=batch, G_lr=preset["G_lr"], D_lr=preset["D_lr"],
        gamma=preset["gamma"], pl_weight=lk["pl_weight"], style_mixing=lk["style_mixing_prob"],
        ema_kimg=preset["ema_kimg"], ema_rampup=preset["ema_rampup"], p=p, target=None,
        jit=jit, jit_phases=jit_phases, seed=seed, tensorboard=False)
    t = Trainer(config, strategy=tf.distribute.get_strategy(), build_networks=build,
                input_fn=input_fn, make_augment_pipe=make_pipe, log=lambda *a, **k: None)
    return t, preset, f"{augpipe}@p={p}"


def bench_one(preset_name, resolution, batch, jit, steps, p, augpipe, seed=0, channels=None,
              profile_dir=None, jit_phases="auto"):
    import numpy as np
    import tensorflow as tf

    from hlo_flops import count_flops

    with tempfile.TemporaryDirectory() as run_dir:
        t, preset, aug_name = build_trainer(run_dir, preset_name, resolution, batch, jit, p,
                                            augpipe, seed=seed, channels=channels,
                                            jit_phases=jit_phases)
        calls = {}    # phase -> [seconds per call] in the timed steps
        args_of = {}  # phase -> the arguments of its first call (for the FLOP count)
        orig = {}     # phase -> its own function (behind the timing wrapper)
        trace = {}    # phase -> seconds to trace it (warm-up step only)
        first = {}    # phase -> seconds of its first call after tracing (compile + first run)
        graphs = {}   # phase -> "traced" | "loaded" (graph cache) | "uncached"
        mode = {"warm": True}

        def timed(name, fn):
            orig[name] = fn

            def wrapper(*a):
                if mode["warm"] and name not in args_of:
                    args_of[name] = a
                    t_ = time.perf_counter()
                    if hasattr(fn, "prepare"):  # graph cache: load the graph, or trace and save
                        graphs[name] = fn.prepare(*a)["source"]
                    else:
                        fn.get_concrete_function(*a)  # tracing only; the call below compiles
                    trace[name] = time.perf_counter() - t_
                t_ = time.perf_counter()
                out = fn(*a)
                if mode["warm"] and name not in first:
                    first[name] = time.perf_counter() - t_
                if not mode["warm"]:
                    calls.setdefault(name, []).append(time.perf_counter() - t_)
                return out
            return wrapper

        def install():  # (again after anything that rebuilds the functions)
            for k, f in list(t._phase_fns.items()):
                if not getattr(f, "_bench_wrapped", False):
                    w = timed(k, f)
                    w._bench_wrapped = True
                    t._phase_fns[k] = w
            if not getattr(t._ema_step, "_bench_wrapped", False):
                t._ema_step = timed("EMA", t._ema_step)
                t._ema_step._bench_wrapped = True

        install()
        rw = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        t.train_step()  # step 0: all four phases (tracing / compilation)
        _ = t.G.trainable_variables[0].numpy()
        warm = time.perf_counter() - t0
        mode["warm"] = False
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        warm_cpu = (r0.ru_utime - rw.ru_utime) + (r0.ru_stime - rw.ru_stime)
        step_times = []
        if profile_dir:
            tf.profiler.experimental.start(profile_dir)
        t0 = time.perf_counter()
        for _ in range(steps):
            ts = time.perf_counter()
            t.train_step()
            step_times.append(time.perf_counter() - ts)
        _ = t.G_ema.trainable_variables[0].numpy()
        dt = time.perf_counter() - t0
        if profile_dir:
            tf.profiler.experimental.stop()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        # FLOPs per phase call from the phase's XLA program (None when it is not one program)
        flops = {}
        for name, a in args_of.items():
            flops[name] = _phase_flops(orig[name], a, count_flops, jit)
    n = steps * batch
    per_call = {k: round(float(np.mean(v)), 4) for k, v in calls.items()}
    n_calls = {k: len(v) for k, v in calls.items()}
    phase_total = sum(sum(v) for v in calls.values())
    step_flops = None
    if flops and all(flops.get(k) is not None for k in n_calls if k != "EMA"):
        step_flops = sum(flops[k] * n_calls[k] for k in n_calls if k != "EMA")
    # the warm-up step ran every phase once: compile estimate = its time less tracing and less
    # the steady-state time of one call of each of those phases
    steady = sum(np.mean(calls[k]) for k in args_of if k in calls)
    return {
        "preset": preset_name, "resolution": resolution, "batch": batch, "jit": bool(jit),
        "jit_phases": list(t.jit_phases),  # the phases XLA compiled (--jit_phases resolved)
        "channels": {"channel_base": preset["G_kwargs"]["synthesis_kwargs"]["channel_base"],
                     "channel_max": preset["G_kwargs"]["synthesis_kwargs"]["channel_max"],
                     "mapping_layers": preset["G_kwargs"]["mapping_kwargs"]["num_layers"]},
        "augment": aug_name, "steps": steps, "images": n, "seconds": round(dt, 3),
        "images_per_sec": round(n / dt, 3), "sec_per_kimg": round(dt / n * 1000, 2),
        "warmup_s": round(warm, 2),
        "warmup": {"trace_s": round(sum(trace.values()), 2),
                   "trace_s_per_phase": {k: round(v, 2) for k, v in trace.items()},
                   # per phase: "traced" (and saved), "loaded" from the graph cache, "uncached"
                   "graphs": graphs,
                   "compile_and_first_run_s": round(warm - sum(trace.values()), 2),
                   # per phase: its first call after tracing (XLA compilation or cache load,
                   # graph optimisation, one execution)
                   "first_call_s_per_phase": {k: round(v, 2) for k, v in first.items()},
                   "compile_s_est": round(warm - sum(trace.values()) - steady, 2),
                   # process CPU seconds of the warm-up step (less sensitive to other load)
                   "cpu_s": round(warm_cpu, 2)},
        "phase_s_per_call": per_call, "phase_calls": n_calls,
        "host_rest_s_per_step": round((dt - phase_total) / steps, 4),
        "step_s_median": round(float(np.median(step_times)), 4),
        "flops_per_call": flops or None,
        "gflops_per_s": None if step_flops is None else round(step_flops / dt / 1e9, 2),
        # process CPU time (user + sys): less sensitive than wall time to other load on the host
        "cpu_sec_per_kimg": round(cpu / n * 1000, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "params_G": int(sum(np.prod(v.shape) for v in t.G.trainable_variables)),
        "params_D": int(sum(np.prod(v.shape) for v in t.D.trainable_variables)),
    }


def xla_program(phase_fn):
    """``(program, concrete function, zero arguments of its traced signature)`` of a traced
    trainer phase whose work after its random draws is one XLA program (``xla_update``);
    None when it is not."""
    import tensorflow as tf

    upd = getattr(phase_fn, "xla_update", None)
    if upd is None:
        return None
    cf = upd._list_all_concrete_functions_for_serialization()[0]
    spec_args, _ = cf.structured_input_signature
    args = tf.nest.map_structure(
        lambda s: None if s is None else tf.zeros(s.shape, s.dtype), spec_args)
    return upd, cf, args


def _phase_flops(fn, args, count_flops, jit):
    """FLOPs of one call of a phase: of its XLA program ``fn.xla_update`` (the trainer's phase
    after its random draws, one program), or of ``fn`` itself when it is jit-compiled. A phase
    that runs without XLA while others use it (``--jit_phases``) is counted from a jit-compiled
    copy of the same Python function (its own TensorFlow ops lowered to HLO, not run). None when
    none of these lowers (e.g. several replicas) or with ``--jit=off``."""
    import tensorflow as tf

    try:
        if hasattr(fn, "prepare"):  # a graph-cache wrapper: trace the function itself (untimed)
            fn.get_concrete_function(*args)
        prog = xla_program(fn)
        if prog is not None:
            fn, _, args = prog
        elif jit and not getattr(fn, "_jit_compile", None):
            fn = tf.function(fn.python_function, jit_compile=True, autograph=False)
        return count_flops(fn.experimental_get_compiler_ir(*args)(stage="hlo"))["total"]
    except Exception:  # noqa: BLE001 - not jit-compiled as a whole (older trainers)
        return None


def matmul_peak_gflops(n=1024, reps=10):
    """Best achieved float32 GFLOP/s of an n x n matmul in this process: the better of an
    XLA-compiled one and TensorFlow's own kernel (oneDNN/Eigen)."""
    import tensorflow as tf

    a = tf.random.stateless_normal([n, n], (1, 2))
    b = tf.random.stateless_normal([n, n], (3, 4))
    best = float("inf")
    for jit in (True, False):
        f = tf.function(lambda x, y: tf.matmul(x, y), jit_compile=jit)
        f(a, b).numpy()
        for _ in range(reps):
            t0 = time.perf_counter()
            f(a, b).numpy()
            best = min(best, time.perf_counter() - t0)
    return round(2 * n ** 3 / best / 1e9, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="tiny,demo,paper256")
    ap.add_argument("--jit", default="off,on", help="off, on, or off,on")
    ap.add_argument("--batch", type=int, default=None, help="override every preset's batch")
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--profile_dir", default=None,
                    help="record a TensorFlow profile of the timed steps here (slows them; "
                         "summarise it with benchmarks/xla_op_times.py)")
    ap.add_argument("--p", type=float, default=0.2)
    ap.add_argument("--augpipe", default="bgc")
    ap.add_argument("--threads", type=int, default=None, help="intra/inter op threads")
    ap.add_argument("--inter_threads", type=int, default=None,
                    help="inter-op threads (default: --threads); 0 = TensorFlow's default")
    ap.add_argument("--channels", default=None,
                    help="channel_base,channel_max,mapping_layers overriding the preset's "
                    "(e.g. 16384,512,2: the paper's channels, for the reference comparison)")
    ap.add_argument("--jit_phases", default="auto",
                    help="with --jit=on: the phases XLA compiles, as train_gan's --jit_phases "
                    "(auto, all, or a comma list of Gmain,Greg,Dmain,Dreg)")
    ap.add_argument("--seed", type=int, default=0,
                    help="the run's seed (another seed is another GAN of a study: with the same "
                    "configuration it loads the graphs and XLA programs of the first)")
    ap.add_argument("--paper256_jit", action="store_true",
                    help="also compile paper256 with XLA (slow to compile on CPU)")
    args = ap.parse_args()
    from histaug_tf.common import preload_allocator
    allocator = preload_allocator()  # as every stage: $HISTAUG_MALLOC=jemalloc restarts under it
    import tensorflow as tf
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    inter = args.threads if args.inter_threads is None else args.inter_threads
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    peak0 = matmul_peak_gflops()
    results = []
    for name in [s for s in args.presets.split(",") if s]:
        res, batch = DEFAULTS.get(name, (32, 16))
        res = args.resolution or res
        batch = args.batch or batch
        for j in [s for s in args.jit.split(",") if s]:
            jit = j == "on"
            if name == "paper256" and jit and not args.paper256_jit:
                continue
            steps = args.steps if name != "paper256" else min(args.steps, 4)
            channels = [int(x) for x in args.channels.split(",")] if args.channels else None
            prof = (os.path.join(args.profile_dir, f"{name}_jit{j}") if args.profile_dir
                    else None)
            results.append(bench_one(name, res, batch, jit, steps, args.p, args.augpipe,
                                     seed=args.seed, channels=channels, profile_dir=prof,
                                     jit_phases=args.jit_phases))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    peak1 = matmul_peak_gflops()
    for r in results:
        if r["gflops_per_s"] is not None:
            r["fraction_of_matmul_peak"] = round(r["gflops_per_s"] / max(peak0, peak1), 3)
    out = {
        "benchmark": "train", "tensorflow": tf.__version__, "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "threads": args.threads,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        # float32 matmul 1024^3 (XLA or TF kernel), best of 10 each, before and after the runs
        "matmul_peak_gflops_before_after": [peak0, peak1],
        "xla_flags": os.environ.get("TF_XLA_FLAGS", ""),
        # the preloaded allocator (common.preload_allocator; $HISTAUG_MALLOC), or glibc's
        "allocator": allocator or "glibc",
        "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(default)"),
        "results": results,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
