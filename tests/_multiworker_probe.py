"""``python -m histaug_tf.train_gan`` with a probe, for tests/test_multiworker_train_gan.py.

Runs train_gan's entry point unchanged (its real input_fn, StopSignal and exit status). The probe
records, per worker, a digest of every real image of every batch the trainer consumed (in order)
and, when ``Trainer.run`` returns (also after a SIGTERM stop), the step, nimg, ``stopped_by_signal``
and the variables' digests, into ``<outdir>/probe/worker-<i>.json``. The trainer's own iterator is
left in place (it is checkpointed); only ``next()`` on it is observed.
"""
import hashlib
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from histaug_tf.gan import trainer as _trainer  # noqa: E402


def image_digest(x) -> str:
    """Digest of one image in [-1, 1] as the uint8 it was stored as (independent of float noise)."""
    u8 = np.clip(np.round((np.asarray(x, np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return hashlib.sha1(u8.tobytes()).hexdigest()[:16]


class _Observed:
    def __init__(self, it, batches):
        self.it, self.batches = it, batches

    def __next__(self):
        x, y = next(self.it)
        self.batches.append([image_digest(img) for img in x.numpy()])
        return x, y


_orig_next, _orig_run = _trainer.Trainer._next_batch, _trainer.Trainer.run


def _probed_next_batch(self):
    it = self.iterator
    self.iterator = _Observed(it, self.__dict__.setdefault("_probe_batches", []))
    try:
        return _orig_next(self)
    finally:
        self.iterator = it


def _probed_run(self):
    result = _orig_run(self)
    digests = {}
    for name, model in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
        for i, v in enumerate(model.weights):
            digests[f"{name}/{i}/{v.path}"] = hashlib.sha256(v.numpy().tobytes()).hexdigest()
    info = {"worker_index": self.worker_index, "num_workers": self.num_workers,
            "worker_batch": self.worker_batch, "step": int(self.step_var.numpy()),
            "nimg": int(self.nimg_var.numpy()), "stopped_by_signal": self.stopped_by_signal,
            "batches": self.__dict__.get("_probe_batches", []), "digests": digests}
    d = os.path.join(self.run_dir, "probe")
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".worker-{self.worker_index}.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, os.path.join(d, f"worker-{self.worker_index}.json"))
    return result


_trainer.Trainer._next_batch = _probed_next_batch
_trainer.Trainer.run = _probed_run

if __name__ == "__main__":
    from histaug_tf import train_gan
    train_gan.run()
