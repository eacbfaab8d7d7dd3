"""Import a NVlabs StyleGAN2-ADA network pickle (TF1 or PyTorch) as a histaug_tf ``.keras`` snapshot.

    python -m histaug_tf.import_nvlabs --src=network-snapshot-001000.pkl --out=runs/imported

writes ``runs/imported/network-snapshot-001000.keras`` (G_ema, G, D and metadata), usable by
``python -m histaug_tf.generate --network=...`` and ``train_gan --resume=...``. The pickle is read
with a restricted unpickler: no code in it is ever executed, and torch is not needed.
"""
from absl import app, flags

from histaug_tf.common import run_main

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "NVlabs network pickle (.pkl) of stylegan2-ada (TF1) or "
                    "stylegan2-ada-pytorch.")
flags.DEFINE_string("out", None, "Output directory for the .keras snapshot.")
flags.DEFINE_string("name", None, "Snapshot file name without .keras (default: the pickle's name).")
flags.DEFINE_bool("overwrite", False, "Replace an existing snapshot of the same name.")
flags.DEFINE_bool("force_fp32", False, "Build the networks with num_fp16_res=0 (same weights).")
flags.mark_flags_as_required(["src", "out"])


def main(argv):
    del argv
    from histaug_tf.interop.nvlabs import import_network_pkl

    path = import_network_pkl(FLAGS.src, FLAGS.out, overwrite=FLAGS.overwrite,
                              force_fp32=FLAGS.force_fp32, name=FLAGS.name)
    print(path)


if __name__ == "__main__":
    app.run(run_main(main))
