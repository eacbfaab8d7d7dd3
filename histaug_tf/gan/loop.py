"""The training loop around the step (``gan/trainer.py``): ticks, and what happens at them.

``TrainingLoop.run`` calls ``trainer.train_step()`` until ``total_kimg``; every ``kimg_per_tick``
(and at the end) it closes a tick: one record of timing, progress, resources and the tick's
statistics, then the tick hooks in a fixed order, all at the same cadence:

1. ``check_finite``: a NaN/Inf loss stops the run (the last good checkpoint is kept);
   ``progress_line``: the tick's line on the chief's log;
2. ``FakesGrid``: the G_ema grid ``fakesKKKKKK.png`` every ``image_snapshot_ticks`` (and at the end);
3. ``NetworkSnapshot``: ``network-snapshot-KKKKKK.keras`` every ``snapshot_ticks`` (and at the end),
   then the metrics of that snapshot into the record;
4. ``StatsLog``: the record to ``stats.jsonl`` and TensorBoard (chief only);
5. the checkpoint every ``checkpoint_ticks`` (and at the end).

Between ticks, every ``stop_check_steps`` steps all workers ask the ``StopSignal`` (SIGTERM) and,
when it fired, save one checkpoint at the same step and return. Where the files go:
docs/architecture.md, "GAN run directory".
"""
from __future__ import annotations

import json
import os
import resource
import time

import numpy as np
import tensorflow as tf

from histaug_tf.common import UserError, save_png, write_text_atomic
from histaug_tf.data.images import image_grid, to_uint8


class NonFiniteLossError(UserError):
    """Training produced a NaN/Inf loss; the run stops and keeps its last good checkpoint."""


def format_time(seconds: float) -> str:
    s = int(np.rint(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {(s // 60) % 60:02d}m {s % 60:02d}s"
    return f"{s // 86400}d {(s // 3600) % 24:02d}h {(s // 60) % 60:02d}m"


def fakes_grid(G_ema, z_dim, c_dim, grid_size):
    """The fixed-latent grid of G_ema (seed 123, one class per row cycling), uint8."""
    gw, gh = grid_size
    n = gw * gh
    z = np.random.RandomState(123).randn(n, z_dim).astype(np.float32)
    if c_dim > 0:
        c = np.eye(c_dim, dtype=np.float32)[np.arange(n) // gw % c_dim]
    else:
        c = np.zeros([n, 0], np.float32)
    imgs = [np.asarray(G_ema(tf.constant(z[i:i + 16]), tf.constant(c[i:i + 16]),
                             noise_mode="const")) for i in range(0, n, 16)]
    return image_grid(to_uint8(np.concatenate(imgs)), gw)


class Tick:
    """What the hooks of one tick see: its index, the images trained so far, whether the run is
    done, the record being written (hooks may add to it) and the fakes grid when one was made."""

    def __init__(self, index, nimg, done, record):
        self.index, self.nimg, self.done, self.record = index, nimg, done, record
        self.grid = None

    def every(self, ticks):
        """At the end, and every ``ticks`` ticks (None/0: at the end only)."""
        return self.done or bool(ticks and self.index % ticks == 0)


def check_finite(loop, tick):
    bad = [k for k, v in tick.record.items() if k.startswith("Loss/") and not k.endswith("/std")
           and not np.isfinite(v)]
    if bad:
        last = loop.trainer.ckpt_manager.latest_checkpoint or "none"
        raise NonFiniteLossError(
            f"{loop.run_dir}: non-finite loss ({', '.join(bad)}) at kimg {tick.nimg / 1000:.1f}"
            f" (tick {tick.index}); stopped; the last good checkpoint is {last}")


def progress_line(loop, tick):
    rec = tick.record
    loop.log(f"tick {tick.index:<5d} kimg {tick.nimg / 1000:<8.1f} "
             f"time {format_time(rec['Timing/total_sec']):<12s} "
             f"sec/tick {rec['Timing/sec_per_tick']:<7.1f} "
             f"sec/kimg {rec['Timing/sec_per_kimg']:<7.2f} "
             f"maintenance {rec['Timing/maintenance_sec']:<6.1f} "
             f"cpumem {rec['Resources/peak_rss_gb']:<6.2f} "
             f"augment {rec['Progress/augment']:.3f}")


class FakesGrid:
    def __init__(self, every, grid_size):
        self.every_ticks, self.grid_size = every, tuple(grid_size)

    def grid(self, trainer):
        return fakes_grid(trainer.G_ema, trainer.z_dim, trainer.c_dim, self.grid_size)

    def begin(self, loop):
        if loop.is_chief and not loop.trainer.resumed_from:
            save_png(os.path.join(loop.run_dir, "fakes_init.png"), self.grid(loop.trainer))

    def __call__(self, loop, tick):
        if loop.is_chief and tick.every(self.every_ticks):
            tick.grid = self.grid(loop.trainer)
            save_png(os.path.join(loop.run_dir, f"fakes{tick.nimg // 1000:06d}.png"), tick.grid)


class NetworkSnapshot:
    """``snapshot_fn(path, G_ema, G, D, metadata)`` (chief), then ``metrics_fn(G_ema, path,
    kimg) -> {name: value}`` (every worker: the metrics may be computed in parallel)."""

    def __init__(self, every, snapshot_fn=None, metrics_fn=None):
        self.every_ticks, self.snapshot_fn, self.metrics_fn = every, snapshot_fn, metrics_fn

    def __call__(self, loop, tick):
        if not tick.every(self.every_ticks):
            return
        t = loop.trainer
        path = None
        if self.snapshot_fn is not None:
            path = os.path.join(loop.run_dir, f"network-snapshot-{tick.nimg // 1000:06d}.keras")
            if loop.is_chief:
                md = {"kimg": tick.nimg / 1000.0, "nimg": tick.nimg,
                      "step": int(t.step_var.numpy()), "augment_p": float(t.ada.p.numpy()),
                      "training_options": loop.options}
                self.snapshot_fn(path, t.G_ema, t.G, t.D, md)
        if self.metrics_fn is not None:
            res = self.metrics_fn(t.G_ema, path, tick.nimg / 1000.0) or {}
            tick.record.update({f"Metrics/{k}": float(v) for k, v in res.items()
                                if isinstance(v, (int, float, np.floating, np.integer))})


class StatsLog:
    """``stats.jsonl`` (one JSON record per tick; on resume the records of ticks not yet
    checkpointed are dropped) and TensorBoard scalars and the fakes grid, at ``nimg``."""

    def __init__(self, tensorboard=True):
        self.tensorboard = tensorboard
        self.writer = None

    def begin(self, loop):
        if not loop.is_chief:
            return
        self.path = os.path.join(loop.run_dir, "stats.jsonl")
        if loop.trainer.resumed_from and os.path.exists(self.path):
            keep = []
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        if json.loads(line).get("tick", 0) < loop.start_tick:
                            keep.append(line)
                    except ValueError:
                        pass
            write_text_atomic(self.path, "".join(keep))
        if self.tensorboard:
            self.writer = tf.summary.create_file_writer(loop.run_dir)

    def __call__(self, loop, tick):
        if not loop.is_chief:
            return
        rec = tick.record
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if self.writer is not None:
            with self.writer.as_default():
                for k, v in rec.items():
                    if k in ("tick", "timestamp") or not isinstance(v, (int, float)):
                        continue
                    if np.isfinite(v):
                        tf.summary.scalar(k, v, step=tick.nimg)
                if tick.grid is not None:
                    tf.summary.image("fakes", tick.grid[None], step=tick.nimg)
            self.writer.flush()

    def end(self, loop):
        if self.writer is not None:
            self.writer.close()


class TrainingLoop:
    """Ticks around a ``Trainer`` (the step). ``hooks`` run at every tick end, in order, each
    ``hook(loop, tick)``; a hook with ``begin(loop)``/``end(loop)`` is also called before the
    first step and after the last. The checkpoint every ``checkpoint_ticks`` comes last."""

    def __init__(self, trainer, *, total_kimg, kimg_per_tick, checkpoint_ticks=1, hooks=(),
                 options=None, stop_signal=None, stop_check_steps=4, log=print):
        self.trainer = trainer
        self.run_dir = trainer.run_dir
        self.is_chief = trainer.is_chief
        self.total_kimg = float(total_kimg)
        self.kimg_per_tick = float(kimg_per_tick)
        self.checkpoint_ticks = max(1, int(checkpoint_ticks))
        self.hooks = list(hooks)
        self.options = options
        self.stop_signal = stop_signal
        self.stop_check_steps = max(1, int(stop_check_steps))
        self.log = log if self.is_chief else (lambda *a, **k: None)
        self.stopped_by_signal = None

    def _record(self, tick_index, nimg, start_time, tick_start, tick_end, tick_start_nimg,
                maintenance):
        t = self.trainer
        stats = t.stats.read()
        sec_tick = tick_end - tick_start
        dn = max(nimg - tick_start_nimg, 1)
        peak_gpu = 0.0
        try:
            if tf.config.list_logical_devices("GPU"):
                peak_gpu = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**30
        except (ValueError, RuntimeError):
            pass
        rec = {
            "tick": tick_index, "kimg": nimg / 1000.0, "nimg": nimg,
            "step": int(t.step_var.numpy()),
            "Timing/total_sec": tick_end - start_time,
            "Timing/sec_per_tick": sec_tick,
            "Timing/sec_per_kimg": sec_tick / dn * 1000.0,
            "Timing/images_per_sec": dn / max(sec_tick, 1e-9),
            "Timing/maintenance_sec": maintenance,
            "Progress/augment": float(t.ada.p.numpy()),
            "Progress/rt": stats.get("Loss/signs/real", float("nan")),
            "Progress/pl_mean": float(t.pl_mean.numpy()),
            "Resources/peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "Resources/peak_gpu_mem_gb": peak_gpu,
            "timestamp": tick_end,
        }
        rec.update(stats)
        return rec

    def run(self):
        t = self.trainer
        # The first input batch before anything is written: a damaged input shard (or any other
        # input error) stops the run while its directory is still untouched.
        t.prefetch_batch()
        os.makedirs(self.run_dir, exist_ok=True)
        self.start_tick = cur_tick = int(t.tick_var.numpy())
        if self.is_chief and self.options:
            write_text_atomic(os.path.join(self.run_dir, "training_options.json"),
                              json.dumps(self.options, indent=2, sort_keys=True,
                                         default=str) + "\n")
        for hook in self.hooks:
            if hasattr(hook, "begin"):
                hook.begin(self)
        start_time = time.time()
        tick_start_nimg = int(t.nimg_var.numpy())
        tick_start_time = start_time
        maintenance = 0.0
        self.log(f"Training for {self.total_kimg:g} kimg "
                 f"(batch {t.batch}, {t.num_replicas} replica(s))...")
        self.stopped_by_signal = None
        while True:
            if int(t.nimg_var.numpy()) >= self.total_kimg * 1000 and cur_tick > 0:
                break  # already complete (rerun of a finished run)
            t.train_step()
            nimg = int(t.nimg_var.numpy())
            done = nimg >= self.total_kimg * 1000
            # SIGTERM (preemption, scancel, SLURM requeue): every worker checks at the same steps,
            # so all of them save the same checkpoint and leave together.
            if (self.stop_signal is not None and not done
                    and int(t.step_var.numpy()) % self.stop_check_steps == 0
                    and self.stop_signal.should_stop(t.strategy)):
                t.save_checkpoint()
                self.stopped_by_signal = self.stop_signal.signum
                self.log(f"signal {self.stop_signal.signum}: checkpoint saved at kimg "
                         f"{nimg / 1000:.3f} (step {int(t.step_var.numpy())}); exiting — rerun "
                         "the same command to resume")
                break
            if not done and cur_tick != 0 and nimg < tick_start_nimg + self.kimg_per_tick * 1000:
                continue
            tick_end = time.time()
            tick = Tick(cur_tick, nimg, done,
                        self._record(cur_tick, nimg, start_time, tick_start_time, tick_end,
                                     tick_start_nimg, maintenance))
            for hook in self.hooks:
                hook(self, tick)
            cur_tick += 1
            t.tick_var.assign(cur_tick)
            if done or cur_tick % self.checkpoint_ticks == 0:
                t.save_checkpoint()
            tick_start_nimg = nimg
            tick_start_time = time.time()
            maintenance = tick_start_time - tick_end
            if done:
                break
        for hook in self.hooks:
            if hasattr(hook, "end"):
                hook.end(self)
        self.log("Exiting...")
        return self


def default_hooks(*, snapshot_ticks, image_snapshot_ticks=None, grid_size=(8, 4),
                  snapshot_fn=None, metrics_fn=None, tensorboard=True):
    """The tick hooks of a training run, in their order."""
    return [check_finite, progress_line,
            FakesGrid(image_snapshot_ticks or snapshot_ticks, grid_size),
            NetworkSnapshot(snapshot_ticks, snapshot_fn, metrics_fn),
            StatsLog(tensorboard)]
