"""``python -m histaug_tf.train_gan`` with a probe, for tests/test_slurm_integration.py.

Runs train_gan's own entry point unchanged; after ``Trainer.run`` returns, each worker writes
``<outdir>/probe/worker-<i>.json`` with its worker index, replica count, resume point and a digest
of every G / D / G_ema variable, so the test can check that all workers ended with identical weights.
"""
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from histaug_tf.gan import trainer as _trainer  # noqa: E402

_orig_run = _trainer.Trainer.run


def _probed_run(self):
    result = _orig_run(self)
    digests = {}
    for name, model in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
        for i, v in enumerate(model.weights):
            digests[f"{name}/{i}/{v.path}"] = hashlib.sha256(v.numpy().tobytes()).hexdigest()
    info = {"worker_index": self.worker_index, "num_workers": self.num_workers,
            "is_chief": self.is_chief, "num_replicas": self.num_replicas,
            "resumed_from": self.resumed_from, "step": int(self.step_var.numpy()),
            "nimg": int(self.nimg_var.numpy()), "num_variables": len(digests),
            "digests": digests, "tf_config": json.loads(os.environ.get("TF_CONFIG", "null"))}
    d = os.path.join(self.run_dir, "probe")
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".worker-{self.worker_index}.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, os.path.join(d, f"worker-{self.worker_index}.json"))
    return result


_trainer.Trainer.run = _probed_run

if __name__ == "__main__":
    from histaug_tf import train_gan
    train_gan.run()
