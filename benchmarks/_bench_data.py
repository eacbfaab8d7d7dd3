"""Shared helpers of the data benchmarks: realistic 96×96 patches fast, RSS sampling, machine load."""
from __future__ import annotations

import os
import threading
import time

import numpy as np


def base_patches(n_unique=256, size=96, seed=0):
    """``n_unique`` synthetic tissue patches (rendered once) and their labels."""
    from histaug_tf.data.synthetic_tissue import render_patch

    labels = np.arange(n_unique) % 2
    return np.stack([render_patch(seed + i, int(labels[i]), size) for i in range(n_unique)]), labels


def variant_chunk(base, labels, start, stop, seed=0):
    """Rows start..stop of an endless set of distinct patches: a base patch rolled, flipped and with
    fresh sensor noise, so every row differs (as in real data, PNG sees no repeats)."""
    rng = np.random.default_rng([seed, start])
    n = stop - start
    idx = (np.arange(start, stop) * 7919) % len(base)
    out = base[idx].copy()
    for j in range(n):
        dy, dx = rng.integers(0, base.shape[1], 2)
        im = np.roll(out[j], (dy, dx), axis=(0, 1))
        if rng.random() < 0.5:
            im = im[:, ::-1]
        out[j] = im
    noise = rng.integers(-2, 3, out.shape, dtype=np.int16)
    out = np.clip(out.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return out, labels[idx]


class TreeRssSampler:
    """Samples the RSS of a process and its descendants every ``interval`` s (psutil)."""

    def __init__(self, pid, interval=0.05):
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak_tree = 0
        self.peak_main = 0
        self.peak_single = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
                rss = []
                for p in procs:
                    try:
                        rss.append(p.memory_info().rss)
                    except psutil.Error:
                        rss.append(0)
                self.peak_main = max(self.peak_main, rss[0])
                self.peak_single = max(self.peak_single, max(rss))
                self.peak_tree = max(self.peak_tree, sum(rss))
            except psutil.Error:
                pass
            time.sleep(self.interval)

    def start(self):
        self._t.start()
        return self

    def stop(self):
        self._stop.set()
        self._t.join()


def machine_note():
    la = os.getloadavg()
    return {"cpu_count": os.cpu_count(), "load_avg_1_5_15": [round(v, 2) for v in la],
            "note": "2-core machine shared with other developers' jobs; load average shows the "
                    "competition for the CPU during the run"}
