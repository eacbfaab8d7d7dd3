"""How long TensorFlow takes to turn each XLA phase program of the trainer into HLO, and why.

    PYTHONPATH=. python benchmarks/bench_lowering.py --preset=demo --batch=32
    PYTHONPATH=. python benchmarks/bench_lowering.py --op_costs      # per-op lowering cost
    PYTHONPATH=. python benchmarks/bench_lowering.py --rng_costs     # per random draw, compiled

Prints one JSON object. With ``--jit`` the trainer's phases are XLA programs, and every process
converts each program's graph to HLO (TensorFlow's tf2xla) before it compiles it or finds it in
the persistent compilation cache: this part of the warm-up is paid by a cached start too. Per
phase (Gmain, Greg, Dmain, Dreg): ``trace_s`` (tracing it, in the warm-up step), ``lower_s``
(``experimental_get_compiler_ir(...)(stage="hlo")`` on the traced program: tf2xla only, no LLVM),
``nodes`` (graph nodes, function bodies included) and ``per_op_mlir`` — the instances of op
types that TensorFlow 2.21 lowers through a per-op MLIR pipeline (``PER_OP_MLIR``; ~3 ms each
against ~0.2-0.5 ms for the others: ``--op_costs`` measures it for a list of op types).
"""
import argparse
import collections
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Op types of the trainer's programs that TensorFlow 2.21 lowers to XLA by a per-op MLIR pipeline
# (``--op_costs`` on 2026-12-01: 2.7-3.9 ms per instance, every other op type 0.2-0.8 ms).
PER_OP_MLIR = ("Sqrt", "Rsqrt", "SqrtGrad", "RsqrtGrad", "Sign", "IsNan", "IsInf", "Floor",
               "Cos", "Sigmoid", "Exp", "Abs", "Tanh", "Reciprocal", "Relu", "Einsum", "Select",
               "StatelessRandomUniformV2", "StatelessRandomNormalV2")


def _op_builders():
    import tensorflow as tf

    def grad_of(fn):
        def g(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = fn(x)
            return tape.gradient(y, x)
        return g

    return {
        "Mul": lambda x: x * 1.5, "Sub": lambda x: x - 0.5, "Square": tf.square,
        "Maximum": lambda x: tf.maximum(x, 0.1), "Equal": lambda x: tf.equal(x, 1.0),
        "NotEqual": lambda x: tf.not_equal(x, x), "SelectV2": lambda x: tf.where(x > 0, x, 0.0),
        "Pow": lambda x: tf.pow(x, 0.5), "Log": tf.math.log, "Sin": tf.sin,
        "Softplus": tf.nn.softplus, "LeakyRelu": lambda x: tf.nn.leaky_relu(x, 0.2),
        "MatMul": lambda x: tf.matmul(x, x), "BatchMatMulV2": lambda x: tf.matmul(x[None], x[None]),
        "Conv2D": lambda x: tf.nn.conv2d(x[None, :, :, None], tf.ones([3, 3, 1, 2]), 1, "SAME"),
        "Sqrt": tf.sqrt, "Rsqrt": tf.math.rsqrt, "SqrtGrad": grad_of(tf.sqrt),
        "RsqrtGrad": grad_of(tf.math.rsqrt), "Sign": tf.sign, "IsNan": tf.math.is_nan,
        "IsInf": tf.math.is_inf, "Floor": tf.floor, "Cos": tf.cos, "Sigmoid": tf.sigmoid,
        "Exp": tf.exp, "Abs": tf.abs, "Tanh": tf.tanh, "Reciprocal": tf.math.reciprocal,
        "Relu": tf.nn.relu, "Einsum": lambda x: tf.einsum("ij,jk->ik", x, x),
        "Select": lambda x: tf.raw_ops.Select(condition=x > 1, x=x, y=-x),
        "StatelessRandomUniformV2": lambda x: x + tf.random.stateless_uniform([4, 4], [1, 2]),
        "StatelessRandomNormalV2": lambda x: x + tf.random.stateless_normal([4, 4], [1, 2]),
    }


def op_costs(n=100):
    """Milliseconds of HLO lowering per instance of each op type: a program of ``n`` instances
    (each on its own input, each summed into the output), lowered once after tracing."""
    import tensorflow as tf

    out = {}
    for name, fn in _op_builders().items():
        def prog(x, fn=fn):
            return tf.add_n([tf.reduce_sum(tf.cast(fn(x + float(i)), tf.float32))
                             for i in range(n)])
        f = tf.function(prog, jit_compile=True, autograph=False)
        x = tf.ones([4, 4])
        f.get_concrete_function(x)
        t0 = time.perf_counter()
        f.experimental_get_compiler_ir(x)(stage="hlo")
        out[name] = round((time.perf_counter() - t0) / n * 1000, 2)
    return out


def rng_costs(n=20):
    """Milliseconds per random draw in an XLA program, the whole first call (tracing, lowering,
    XLA compilation, one run) of a program of ``n`` draws of [4, 8] summed into its output, for
    the draws the trainer's programs hold: the augment pipe's ``tf.random.Generator`` draws, the
    per-layer noise (``layers.random_noise``: a fold-in and a stateless normal), plain stateless
    draws, and a multiply for comparison."""
    import tensorflow as tf

    from histaug_tf.gan.layers import noise_seed, random_noise

    gen = tf.random.Generator.from_seed(1)
    seed = tf.constant([1, 2], tf.int64)
    kinds = {
        "multiply (baseline)": lambda i, x: x * float(i + 1),
        "Generator.uniform": lambda i, x: gen.uniform([4, 8]),
        "Generator.normal": lambda i, x: gen.normal([4, 8]),
        "stateless_uniform": lambda i, x: tf.random.stateless_uniform([4, 8], seed + i),
        "stateless_normal": lambda i, x: tf.random.stateless_normal([4, 8], seed + i),
        "layers.random_noise": lambda i, x: random_noise([4, 8]),
    }
    out = {}
    for name, draw in kinds.items():
        def prog(x, draw=draw):
            with noise_seed(seed):
                return tf.add_n([draw(i, x) for i in range(n)])
        f = tf.function(prog, jit_compile=True, autograph=False)
        x = tf.ones([4, 8])
        t0 = time.perf_counter()
        f(x).numpy()
        out[name] = round((time.perf_counter() - t0) / n * 1000, 1)
    return out


def phase_lowering(preset, resolution, batch, p, augpipe):
    from bench_train import build_trainer, xla_program

    with tempfile.TemporaryDirectory() as run_dir:
        t, _, aug = build_trainer(run_dir, preset, resolution, batch, True, p, augpipe)
        trace, orig = {}, dict(t._phase_fns)
        for name, fn in orig.items():
            def wrapped(*a, _fn=fn, _name=name):
                if _name not in trace:
                    t0 = time.perf_counter()
                    _fn.get_concrete_function(*a)
                    trace[_name] = round(time.perf_counter() - t0, 2)
                return _fn(*a)
            t._phase_fns[name] = wrapped
        t0 = time.perf_counter()
        t.train_step()  # step 0: every phase traced, compiled and run once
        first = time.perf_counter() - t0
        phases = {}
        for name in trace:
            prog = xla_program(orig[name])
            if prog is None:  # not one XLA program (several replicas)
                continue
            upd, cf, args = prog
            gd = cf.graph.as_graph_def()
            ops = [n.op for n in gd.node] + [n.op for f in gd.library.function
                                             for n in f.node_def]
            t0 = time.perf_counter()
            upd.experimental_get_compiler_ir(*args)(stage="hlo")
            mlir = collections.Counter(o for o in ops if o in PER_OP_MLIR)
            phases[name] = {"trace_s": trace[name], "lower_s": round(time.perf_counter() - t0, 2),
                            "nodes": len(ops), "per_op_mlir": sum(mlir.values()),
                            "per_op_mlir_by_type": dict(mlir.most_common())}
    return {"preset": preset, "resolution": resolution, "batch": batch, "augment": aug,
            "first_step_s": round(first, 2), "phases": phases,
            "lower_s_total": round(sum(v["lower_s"] for v in phases.values()), 2),
            "nodes_total": sum(v["nodes"] for v in phases.values()),
            "per_op_mlir_total": sum(v["per_op_mlir"] for v in phases.values())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--p", type=float, default=0.2)
    ap.add_argument("--augpipe", default="bgc")
    ap.add_argument("--op_costs", action="store_true",
                    help="measure the lowering cost per instance of a list of op types instead")
    ap.add_argument("--rng_costs", action="store_true",
                    help="measure the whole first call (compilation included) per random draw "
                    "in an XLA program instead")
    args = ap.parse_args()
    import tensorflow as tf
    out = {"benchmark": "lowering", "tensorflow": tf.__version__}
    if args.op_costs:
        out["ms_per_instance"] = op_costs()
    elif args.rng_costs:
        out["first_call_ms_per_draw"] = {n: rng_costs(n) for n in (10, 40)}
    else:
        out.update(phase_lowering(args.preset, args.resolution, args.batch, args.p,
                                  args.augpipe))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
