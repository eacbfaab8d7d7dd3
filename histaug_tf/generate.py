"""Generate a labelled synthetic dataset from trained generator snapshots.

    python -m histaug_tf.generate --network=runs/00001-demo --outdir=tfrecords/synthetic \
        --num_per_class=1000 --trunc=1 --seed=0 --grid

``--network``: a ``.keras`` snapshot or a run directory (its latest snapshot) of a conditional
network; or ``--networks=0:PATH,1:PATH`` for one network per class. Writes the ``train`` split of
a dataset (``source=synthetic``) with a manifest naming the snapshots and flags.
"""
from absl import app, flags

from histaug_tf.common import UserError, run_main

FLAGS = flags.FLAGS
flags.DEFINE_string("network", None, "A .keras snapshot or a run directory (latest snapshot) of a "
                    "conditional generator.")
flags.DEFINE_string("networks", None, "One generator per class: CLASS:PATH[,CLASS:PATH...].")
flags.DEFINE_string("outdir", None, "Output dataset directory.")
flags.DEFINE_integer("num_per_class", None, "Images per class.")
flags.DEFINE_integer("num", None, "Same as --num_per_class (use with --classes).")
flags.DEFINE_list("classes", None, "Class indices to generate (default: all).")
flags.DEFINE_float("trunc", 1.0, "Truncation psi.")
flags.DEFINE_integer("trunc_cutoff", None, "Truncation cutoff (number of ws layers; default all).")
flags.DEFINE_enum("noise_mode", "const", ["const", "random", "none"], "Per-layer noise.")
flags.DEFINE_integer("seed", 0, "First seed; class k uses seeds seed..seed+num_per_class-1.")
flags.DEFINE_integer("batch", 32, "Images per generator call.")
flags.DEFINE_boolean("grid", False, "Also write grid-<label>.png (first 64 images per class).")
flags.DEFINE_list("label_names", None, "Label names (default: from the snapshot, else normal,tumour).")
flags.DEFINE_string("name", None, "Dataset name (default: the output directory's name).")
flags.DEFINE_string("run_name", None, "Run id used in keys and groups (default: the run directory's name).")
flags.DEFINE_enum("encoding", "png", ["png", "raw"], "Image encoding in the shards.")
flags.DEFINE_integer("shard_size", 4096, "Examples per shard.")
flags.DEFINE_boolean("overwrite", False, "Replace an existing output dataset.")
flags.DEFINE_boolean("jit", False, "Compile the generator with XLA.")
flags.DEFINE_string("filter_classifier", None, "A finished train_classifier run (e.g. on the GAN's "
                    "real subset): keep a synthetic patch only when it gives the patch's class at "
                    "least --min_confidence; oversample until each class has --num_per_class.")
flags.DEFINE_string("min_confidence", "0.5", "With --filter_classifier: the least probability of "
                    "the conditioning class for a patch to be kept, or 'val': the classifier's "
                    "decision at the balanced (Youden) threshold it chose on its validation split.")
flags.DEFINE_float("filter_max_draws", 4.0, "With --filter_classifier: draw at most this many "
                   "times --num_per_class patches per class.")
flags.DEFINE_float("filter_min_kept", 0.5, "With --filter_classifier: refuse the set (no output) "
                   "when a class keeps fewer than this fraction of --num_per_class.")


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    from histaug_tf.apps.generate import generate_dataset

    if not FLAGS.outdir:
        raise UserError("--outdir is required")
    n = FLAGS.num_per_class
    if FLAGS.num is not None:
        if n is not None and n != FLAGS.num:
            raise UserError(f"--num={FLAGS.num} and --num_per_class={n} disagree")
        n = FLAGS.num
    if n is None:
        raise UserError("--num_per_class (or --num) is required")
    try:
        classes = [int(c) for c in FLAGS.classes] if FLAGS.classes else None
    except ValueError:
        raise UserError(f"--classes={','.join(FLAGS.classes)}: expected integers") from None
    used = {k: getattr(FLAGS, k) for k in (
        "network", "networks", "outdir", "num_per_class", "num", "classes", "trunc", "trunc_cutoff",
        "noise_mode", "seed", "batch", "grid", "label_names", "name", "run_name", "encoding",
        "shard_size", "jit", "filter_classifier", "min_confidence", "filter_max_draws",
        "filter_min_kept")}
    res = generate_dataset(
        FLAGS.outdir, network=FLAGS.network, networks=FLAGS.networks, num_per_class=n,
        classes=classes, truncation_psi=FLAGS.trunc, truncation_cutoff=FLAGS.trunc_cutoff,
        noise_mode=FLAGS.noise_mode, seed=FLAGS.seed, batch_size=FLAGS.batch, grid=FLAGS.grid,
        label_names=FLAGS.label_names, name=FLAGS.name, run_name=FLAGS.run_name,
        encoding=FLAGS.encoding, shard_size=FLAGS.shard_size, overwrite=FLAGS.overwrite,
        jit_compile=FLAGS.jit, flags=used, filter_classifier=FLAGS.filter_classifier,
        min_confidence=FLAGS.min_confidence, filter_max_draws=FLAGS.filter_max_draws,
        filter_min_kept=FLAGS.filter_min_kept)
    m = res["manifest"]
    print(f"wrote {m['splits']['train']['num_examples']} images {m['image_shape']} "
          f"(class counts {m['splits']['train']['class_counts']}) to {FLAGS.outdir} "
          f"at {res['images_per_second']:.1f} img/s")
    filt = m.get("provenance", {}).get("filter")
    if filt:
        print("filter: " + "; ".join(f"{k} kept {v['kept']} of {v['drawn']} drawn"
                                     for k, v in filt["per_class"].items()))


if __name__ == "__main__":
    app.run(run_main(main))
