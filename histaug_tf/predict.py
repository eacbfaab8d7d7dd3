"""Apply a trained classifier to new patches: ``python -m histaug_tf.predict``.

    python -m histaug_tf.predict --model=runs/clf --data=tfrecords/other_hospital --split=test \
        --out=predictions.csv
    python -m histaug_tf.predict --model=runs/clf --images=DIR --out=predictions.csv

``--model``: a ``train_classifier`` run directory (its ``model.keras``) or a ``.keras`` file. Writes
one CSV row per patch (key or path, group, p_positive, label if known) and ``<out>.json`` with the
skipped files and, when the labels are known, the metrics. See ``histaug_tf.apps.predict``.
"""
from absl import app, flags

from histaug_tf.common import UserError, run_main

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A train_classifier run directory or a .keras model file.")
flags.DEFINE_string("data", None, "A dataset directory (manifest.json) to predict.")
flags.DEFINE_string("split", "test", "Split of --data.")
flags.DEFINE_string("images", None, "Instead of --data: a folder of image files (searched "
                    "recursively; each must have the model's input size).")
flags.DEFINE_string("out", None, "Output CSV (a JSON report is written beside it).")
flags.DEFINE_integer("batch", 64, "Images per batch.")
flags.DEFINE_integer("n_boot", 1000, "Bootstrap replicates for the AUC interval (labelled data).")
flags.mark_flags_as_required(["model", "out"])


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    from histaug_tf.apps.predict import predict
    r = predict(FLAGS.model, FLAGS.out, data=FLAGS.data, split=FLAGS.split, images=FLAGS.images,
                batch_size=FLAGS.batch, n_boot=FLAGS.n_boot)
    line = f"wrote {r['predicted']} predictions to {FLAGS.out}"
    if r["skipped"]["count"]:
        line += f"; skipped {r['skipped']['count']} files (listed in the .json report)"
    if "metrics" in r:
        m = r["metrics"]
        line += f"; AUC {m['auc']:.4f} [{m['auc_ci'][0]:.4f}, {m['auc_ci'][1]:.4f}]"
    print(line)


if __name__ == "__main__":
    app.run(run_main(main))
