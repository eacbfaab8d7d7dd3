"""Nested, stratified, seeded subsets of a dataset's train split.

    python -m histaug_tf.subset --src=tfrecords/pcam --fractions=0.03,0.2 --seed=0 --out=tfrecords/pcam_subsets

writes ``<out>/frac0.03/`` and ``<out>/frac0.2/``, each a dataset (manifest naming its parent) whose
train split is the subset and whose other splits reference the parent's shards. Thin entry:
flags → ``histaug_tf.data.subsets.make_subsets``.
"""
from absl import app, flags

from histaug_tf.common import run_main

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "Parent dataset directory (with manifest.json).")
flags.DEFINE_list("fractions", ["0.03", "0.2"], "Fractions of the train split, e.g. 0.03,0.2.")
flags.DEFINE_integer("seed", 0, "Selection seed (same seed: nested and stable).")
flags.DEFINE_string("out", None, "Output directory; subsets go to <out>/frac<f>/.")
flags.DEFINE_string("split", "train", "Split to take subsets of.")
flags.DEFINE_integer("shard_size", 4096, "Examples per shard of the subsets.")
flags.DEFINE_bool("overwrite", False, "Replace existing subset directories.")
flags.DEFINE_enum("by", "example", ["example", "group"], "example: stratified by class, example "
                  "by example; group: whole groups (slides/patients) until the fraction of "
                  "examples is reached.")
flags.mark_flags_as_required(["src", "out"])


def main(argv):
    del argv
    from histaug_tf.data.subsets import make_subsets

    res = make_subsets(FLAGS.src, ",".join(FLAGS.fractions), FLAGS.seed, FLAGS.out, split=FLAGS.split,
                       overwrite=FLAGS.overwrite, shard_size=FLAGS.shard_size, by=FLAGS.by)
    for f, m in res.items():
        print(f"frac {f:g}: {FLAGS.split} {m['splits'][FLAGS.split]['num_examples']} "
              f"{m['splits'][FLAGS.split]['class_counts']}")


if __name__ == "__main__":
    app.run(run_main(main))
