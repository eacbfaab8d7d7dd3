"""Check that the tasks of a SLURM step (or a TF_CONFIG cluster) form one working TF cluster.

Run it with the same sbatch scripts as train_gan (``HISTAUG_PROGRAM=jobs/slurm/cluster_check.py``)
before spending GPU hours: every task selects its strategy with ``histaug_tf.distribute``, does one
all-reduce, then trains a tiny Keras linear regression with synchronous SGD for ``--steps`` steps,
checkpointing as train_gan does (a rerun with the same ``--outdir`` resumes), and writes

* ``<outdir>/stats.jsonl`` (chief only): one line per step: step, loss, replicas, workers;
* ``<outdir>/checkpoints/`` (chief; other workers write to a temp dir they delete);
* ``<outdir>/workers/worker-<i>.json`` (every worker): TF_CONFIG, the all-reduce result, the step it
  resumed from, the final weights — to check that all workers agree.

The data of replica ``r`` at step ``s`` is ``numpy.random.default_rng([seed, s, r])`` draws, so the
result can be recomputed by a plain NumPy loop over the global batch.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from histaug_tf import distribute  # noqa: E402
from histaug_tf.common import UserError, run_main  # noqa: E402

flags.DEFINE_string("outdir", None, "Run directory (shared by all workers).")
flags.DEFINE_integer("steps", 4, "Train until this global step (a rerun resumes).")
flags.DEFINE_integer("batch", 8, "Global batch; must be divisible by the number of replicas.")
flags.DEFINE_enum("strategy", "auto", list(distribute.STRATEGIES), "Distribution strategy.")
flags.DEFINE_integer("seed", 0, "Data seed.")
flags.DEFINE_integer("dim", 3, "Input features.")
flags.DEFINE_float("lr", 0.1, "SGD learning rate.")
flags.DEFINE_integer("ckpt_every", 2, "Checkpoint every this many steps (and at the end).")
flags.DEFINE_float("step_sleep", 0.0, "Seconds to sleep per step (to test preemption).")
FLAGS = flags.FLAGS


def replica_data(seed: int, step: int, replica: int, n: int, dim: int):
    import numpy as np
    rng = np.random.default_rng([seed, step, replica])
    x = rng.standard_normal((n, dim)).astype(np.float32)
    w_true = np.arange(1, dim + 1, dtype=np.float32)[:, None] / dim
    y = (x @ w_true + 0.5 + 0.1 * rng.standard_normal((n, 1))).astype(np.float32)
    return x, y


def run(outdir, steps, batch, strategy_name, seed, dim, lr, ckpt_every, step_sleep=0.0):
    strategy = distribute.get_strategy(strategy_name)  # before any other TF op
    import numpy as np
    import tensorflow as tf
    import keras

    stop = distribute.StopSignal()  # SIGTERM -> save a checkpoint and exit at the next step
    n_workers, index = distribute.worker_info(strategy)
    chief = distribute.is_chief(strategy)
    per_replica = distribute.per_replica_batch(batch, strategy)
    logging.info("cluster_check: %s on %s", distribute.describe(strategy), socket.gethostname())
    os.makedirs(outdir, exist_ok=True)

    # 1. one all-reduce: sum of (replica id + 1) over all replicas
    def one():
        ctx = tf.distribute.get_replica_context()
        return tf.cast(ctx.replica_id_in_sync_group, tf.float32) + 1.0
    allreduce = float(strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(one), axis=None))

    # 2. a tiny Keras model trained with synchronous SGD
    with strategy.scope():
        model = keras.Sequential([keras.Input((dim,)),
                                  keras.layers.Dense(1, kernel_initializer="zeros")])
        opt = keras.optimizers.SGD(learning_rate=lr)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        opt.build(model.trainable_variables)
    ckpt = tf.train.Checkpoint(model=model, optimizer=opt, step=step_var)
    chief_dir = os.path.join(outdir, "checkpoints")
    my_dir = distribute.worker_write_path(chief_dir, strategy)
    manager = tf.train.CheckpointManager(ckpt, my_dir, max_to_keep=2)
    latest = tf.train.latest_checkpoint(chief_dir)
    if latest:
        ckpt.restore(latest).assert_existing_objects_matched()
    resumed_from = int(step_var.numpy())
    stats_path = os.path.join(outdir, "stats.jsonl")
    if chief and os.path.exists(stats_path):  # drop lines of steps lost since the checkpoint
        with open(stats_path) as f:
            kept = [ln for ln in f if ln.strip() and json.loads(ln)["step"] <= resumed_from]
        with open(stats_path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(stats_path + ".tmp", stats_path)
    logging.info("cluster_check: %s", f"resumed from step {resumed_from} ({latest})" if latest
                 else "no checkpoint, starting at step 0")

    @tf.function
    def train_step(x, y):
        def fn(x, y):
            with tf.GradientTape() as tape:
                err = model(x, training=True) - y
                loss = tf.reduce_sum(tf.square(err)) / batch  # mean over the GLOBAL batch
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss
        per = strategy.run(fn, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per, axis=None)

    while int(step_var.numpy()) < steps:
        s = int(step_var.numpy())

        def value_fn(ctx, which, s=s):
            x, y = replica_data(seed, s, ctx.replica_id_in_sync_group, per_replica, dim)
            return tf.constant(x if which == 0 else y)
        x = strategy.experimental_distribute_values_from_function(lambda c: value_fn(c, 0))
        y = strategy.experimental_distribute_values_from_function(lambda c: value_fn(c, 1))
        loss = float(train_step(x, y))
        step_var.assign_add(1)
        if chief:
            with open(stats_path, "a") as f:
                f.write(json.dumps({"step": s + 1, "loss": loss,
                                    "replicas": strategy.num_replicas_in_sync,
                                    "workers": n_workers, "time": time.time()}) + "\n")
        if (s + 1) % ckpt_every == 0 or s + 1 == steps:
            manager.save(checkpoint_number=s + 1)  # every worker: saving is collective
        if step_sleep:
            time.sleep(step_sleep)
        if stop.should_stop(strategy):
            manager.save(checkpoint_number=int(step_var.numpy()))
            logging.info("cluster_check: signal %s: saved step %d, exiting", stop.signum,
                         int(step_var.numpy()))
            distribute.remove_worker_path(my_dir, strategy)
            sys.exit(143)

    weights = [v.numpy().tolist() for v in model.trainable_variables]
    info = {"worker_index": index, "num_workers": n_workers, "chief": chief,
            "host": socket.gethostname(), "pid": os.getpid(),
            "replicas": strategy.num_replicas_in_sync, "allreduce": allreduce,
            "tf_config": json.loads(os.environ.get("TF_CONFIG", "null")),
            "slurm": {k: v for k, v in os.environ.items()
                      if k in ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_PROCID",
                               "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST", "SLURM_RESTART_COUNT")},
            "describe": distribute.describe(strategy),
            "resumed_from": resumed_from, "final_step": int(step_var.numpy()),
            "weights": weights}
    wdir = os.path.join(outdir, "workers")
    os.makedirs(wdir, exist_ok=True)
    tmp = os.path.join(wdir, f".worker-{index}.json.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, os.path.join(wdir, f"worker-{index}.json"))
    distribute.remove_worker_path(my_dir, strategy)
    logging.info("cluster_check: worker %d/%d done: allreduce %.0f, steps %d -> %d",
                 index, n_workers, allreduce, resumed_from, info["final_step"])
    return info


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}")
    if not FLAGS.outdir:
        raise UserError("--outdir is required")
    run(FLAGS.outdir, FLAGS.steps, FLAGS.batch, FLAGS.strategy, FLAGS.seed, FLAGS.dim, FLAGS.lr,
        FLAGS.ckpt_every, FLAGS.step_sleep)


if __name__ == "__main__":
    app.run(run_main(main))
