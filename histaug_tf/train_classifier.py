"""Train and evaluate a binary patch classifier: ``python -m histaug_tf.train_classifier --flagfile=...``.

Real data (``--train_data``), optionally mixed with synthetic data (``--synthetic_data`` with
``--synthetic_ratio`` or ``--synthetic_count``); early stopping on validation AUC; the test split's
metrics go to ``<outdir>/metrics.json``. See ``histaug_tf.classifier.train``.
"""
from absl import app, flags

from histaug_tf.common import run_main

FLAGS = flags.FLAGS
flags.DEFINE_string("outdir", None, "Run directory (metrics.json, best.weights.h5, tb/, roc.png).")
flags.DEFINE_string("train_data", None, "Dataset directory (manifest.json) to train on.")
flags.DEFINE_string("train_split", "train", "Split of --train_data to train on.")
flags.DEFINE_string("synthetic_data", None, "Synthetic dataset directory to mix in (optional).")
flags.DEFINE_string("synthetic_split", "train", "Split of --synthetic_data.")
flags.DEFINE_float("synthetic_ratio", None, "Long-run fraction of synthetic examples in training.")
flags.DEFINE_integer("synthetic_count", None, "Add this many synthetic examples to the real ones.")
flags.DEFINE_string("val_data", None, "Validation dataset (default: --train_data).")
flags.DEFINE_string("val_split", "valid", "Validation split (early stopping on its AUC).")
flags.DEFINE_string("test_data", None, "Test dataset (default: --train_data).")
flags.DEFINE_string("test_split", "test", "Test split.")
flags.DEFINE_enum("arch", "small_cnn",
                  ["small_cnn", "resnet50", "densenet121", "efficientnetb0", "mobilenetv2"],
                  "Classifier architecture.")
flags.DEFINE_string("weights", "none", "none | imagenet (downloads) | PATH to a weights file.")
flags.DEFINE_integer("resolution", None, "Square input resolution (default: the dataset's).")
flags.DEFINE_enum("resize_mode", "crop", ["crop", "resize", "pad"], "How to reach --resolution.")
flags.DEFINE_integer("batch", 64, "Global batch size.")
flags.DEFINE_integer("epochs", 30, "Maximum number of epochs (one epoch = one pass over the real data).")
flags.DEFINE_integer("min_steps_per_epoch", 1, "Lower bound on steps per epoch (tiny subsets).")
flags.DEFINE_float("lr", 1e-3, "AdamW learning rate.")
flags.DEFINE_float("weight_decay", 1e-4, "AdamW weight decay.")
flags.DEFINE_float("dropout", 0.2, "Dropout before the output layer.")
flags.DEFINE_integer("patience", 5, "Stop after this many epochs without a better validation AUC.")
flags.DEFINE_enum("balance", "class_weight", ["class_weight", "sampling", "none"],
                  "Class-imbalance handling.")
flags.DEFINE_string("augment", "flips", "Training augmentation, a comma list of: flips (flips and "
                    "90-degree rotations), hed|hed_light|hed_strong (HED stain jitter), "
                    "hsv|hsv_light|hsv_strong, bc (brightness/contrast), none. "
                    "See histaug_tf/classifier/stain.py and docs/classifier.md.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("strategy", "auto", "auto | default | mirrored | multiworker.")
flags.DEFINE_boolean("mixed_precision", False, "mixed_float16 (GPUs).")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"], "XLA for the train step.")
flags.DEFINE_integer("n_boot", 1000, "Bootstrap replicates for the AUC interval.")
flags.DEFINE_float("threshold", 0.5, "Decision threshold on P(class 1) for accuracy/P/R/F1.")
flags.DEFINE_float("fixed_specificity", 0.9, "Also report test sensitivity/specificity at the "
                   "threshold that reaches this specificity on the validation split.")
flags.DEFINE_boolean("overwrite", False, "Redo a finished run.")
flags.DEFINE_boolean("verify", False, "Check every input shard's sha256 against its manifest "
                     "before training (reads every shard once).")
flags.mark_flags_as_required(["outdir", "train_data"])


def main(argv):
    del argv
    from histaug_tf.classifier.train import train_classifier
    f = FLAGS
    train_classifier(
        f.outdir, f.train_data, synthetic_data=f.synthetic_data, synthetic_ratio=f.synthetic_ratio,
        synthetic_count=f.synthetic_count, val_data=f.val_data, test_data=f.test_data,
        train_split=f.train_split, synthetic_split=f.synthetic_split, val_split=f.val_split,
        test_split=f.test_split, arch=f.arch, weights=f.weights, resolution=f.resolution,
        resize_mode=f.resize_mode, batch_size=f.batch, epochs=f.epochs,
        min_steps_per_epoch=f.min_steps_per_epoch, learning_rate=f.lr,
        weight_decay=f.weight_decay, dropout=f.dropout, patience=f.patience, balance=f.balance,
        augment=f.augment, seed=f.seed, strategy=f.strategy, mixed_precision=f.mixed_precision,
        jit_compile=f.jit_compile, n_boot=f.n_boot, threshold=f.threshold, overwrite=f.overwrite,
        verify=f.verify, fixed_specificity=f.fixed_specificity)


if __name__ == "__main__":
    app.run(run_main(main))
