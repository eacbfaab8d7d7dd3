"""The augmentation study end to end: ``python -m histaug_tf.experiment --flagfile=configs/experiment_demo.flags``.

For each dataset × fraction × seed: subset → GAN → generate (and a filtered set) → the classifiers of
the arms (baseline, classic, gan, gan_filtered, gan+classic) and TSTR → evaluation on the full test
split; then ``results.csv``, ``results.md`` and ``roc.png`` in
``--outdir``, and the table on stdout. Finished cells are skipped on rerun; a finished step made with
other flags is refused (``--redo_changed`` redoes it). See ``histaug_tf.apps.experiment``.
"""
from absl import app, flags

from histaug_tf.common import run_main

FLAGS = flags.FLAGS
flags.DEFINE_string("outdir", None, "Study directory (cells/, results.csv, results.md, roc.png).")
flags.DEFINE_list("data", [], "Dataset directories (with manifest.json). With --prepare, a missing "
                  "one is created (a bare name goes to <outdir>/data/<name>).")
flags.DEFINE_list("fractions", ["0.03", "0.2"], "Fractions of the training split; 1 = all the data "
                  "(baseline only).")
flags.DEFINE_list("seeds", ["0"], "Seeds (subset selection, GAN, generation, classifier).")
flags.DEFINE_string("prepare", "", "prepare_data --dataset for missing --data (e.g. synthetic_tissue).")
flags.DEFINE_string("prepare_args", "", "Extra prepare_data flags (one string).")
flags.DEFINE_string("subset_args", "", "Extra subset flags (one string).")
flags.DEFINE_integer("resolution", 32, "Study resolution (GAN, synthetic images and classifier).")
flags.DEFINE_enum("resize_mode", "crop", ["crop", "resize", "pad"], "How the classifier's images "
                  "reach --resolution.")
flags.DEFINE_enum("gan_mode", "conditional", ["conditional", "per_class"],
                  "One conditional GAN, or one unconditional GAN per class.")
flags.DEFINE_string("gan_cfg", "demo", "train_gan --cfg preset.")
flags.DEFINE_float("gan_kimg", 10, "train_gan --kimg (thousands of real images shown to D).")
flags.DEFINE_string("gan_args", "", "Extra train_gan flags (one string).")
flags.DEFINE_integer("num_synthetic_per_class", 1000, "Synthetic images generated per class.")
flags.DEFINE_float("truncation", 1.0, "Truncation psi for generation.")
flags.DEFINE_string("generate_args", "", "Extra generate flags (one string).")
flags.DEFINE_enum("arch", "small_cnn",
                  ["small_cnn", "resnet50", "densenet121", "efficientnetb0", "mobilenetv2"],
                  "Classifier architecture.")
flags.DEFINE_string("weights", "none", "Classifier weights: none | imagenet | PATH.")
flags.DEFINE_integer("clf_batch", 64, "Classifier batch size.")
flags.DEFINE_integer("clf_epochs", 30, "Classifier maximum epochs.")
flags.DEFINE_integer("clf_min_steps_per_epoch", 1, "Lower bound on classifier steps per epoch.")
flags.DEFINE_float("clf_lr", 1e-3, "Classifier learning rate.")
flags.DEFINE_integer("clf_patience", 5, "Early-stopping patience (epochs) on validation AUC.")
flags.DEFINE_enum("balance", "class_weight", ["class_weight", "sampling", "none"],
                  "Class-imbalance handling.")
flags.DEFINE_float("synthetic_ratio", 0.5, "Fraction of synthetic examples in augmented training.")
flags.DEFINE_integer("synthetic_count", None, "Instead of --synthetic_ratio: add this many "
                     "synthetic examples.")
flags.DEFINE_boolean("tstr", True, "Also train on synthetic only, test on real (TSTR).")
flags.DEFINE_list("arms", ["baseline", "classic", "gan", "gan_filtered", "gan+classic"],
                  "Classifiers of each cell: baseline (real, flips), classic (real, flips + "
                  "--classic_augment), gan (real + synthetic), gan_filtered (real + the synthetic "
                  "patches the baseline classifier agrees with), gan+classic.")
flags.DEFINE_list("full_data_arms", ["baseline"], "Arms of the fraction-1 cells (no GAN arms).")
flags.DEFINE_list("full_data_seeds", None, "Seeds of the fraction-1 cells (default: --seeds); "
                  "the all-data reference needs no subset, so one seed often suffices.")
flags.DEFINE_string("classic_augment", "flips,hed_light,hsv_light,bc",
                    "train_classifier --augment of the classic and gan+classic arms "
                    "(docs/classifier.md).")
flags.DEFINE_string("filter_min_confidence", "val", "gan_filtered: generate --min_confidence "
                    "(a probability, or 'val': the baseline classifier's decision at its "
                    "validation-chosen threshold).")
flags.DEFINE_float("filter_max_draws", 4.0, "gan_filtered: generate --filter_max_draws.")
flags.DEFINE_float("filter_min_kept", 0.5, "gan_filtered: generate --filter_min_kept (below it "
                   "the arm is recorded as refused).")
flags.DEFINE_boolean("memorization", True, "Check each cell's synthetic set for copies of its "
                     "training patches (docs/metrics.md).")
flags.DEFINE_integer("memorization_max", 2000, "Synthetic patches per cell in the memorisation "
                     "check (split evenly over the classes).")
flags.DEFINE_integer("n_boot", 1000, "Bootstrap replicates for AUC intervals.")
flags.DEFINE_string("strategy", "auto", "Classifier tf.distribute strategy.")
flags.DEFINE_boolean("mixed_precision", False, "mixed_float16 for the classifiers (GPUs).")
flags.DEFINE_boolean("aggregate_only", False, "Only rebuild the results from finished cells.")
flags.DEFINE_boolean("redo_changed", False, "Redo a finished step (subset, GAN, synthetic set, "
                     "classifier, prepared dataset) whose recorded flags differ from the current "
                     "ones; without it such a step is refused.")
flags.DEFINE_integer("stop_after_cells", 0, "Stop after this many newly finished cells (0 = all).")
flags.mark_flag_as_required("outdir")


def main(argv):
    del argv
    from histaug_tf.common import UserError
    from histaug_tf.apps.experiment import StudyConfig, run_study
    f = FLAGS
    try:
        fractions = [float(v) for v in f.fractions]
        seeds = [int(v) for v in f.seeds]
    except ValueError as e:
        raise UserError(f"--fractions/--seeds: {e}") from None
    cfg = StudyConfig(
        outdir=f.outdir, data=list(f.data), fractions=fractions, seeds=seeds, prepare=f.prepare,
        prepare_args=f.prepare_args, subset_args=f.subset_args, resolution=f.resolution,
        resize_mode=f.resize_mode, gan_mode=f.gan_mode, gan_cfg=f.gan_cfg, gan_kimg=f.gan_kimg,
        gan_args=f.gan_args, num_synthetic_per_class=f.num_synthetic_per_class,
        truncation=f.truncation, generate_args=f.generate_args, arch=f.arch, weights=f.weights,
        clf_batch=f.clf_batch, clf_epochs=f.clf_epochs,
        clf_min_steps_per_epoch=f.clf_min_steps_per_epoch, clf_lr=f.clf_lr,
        clf_patience=f.clf_patience, balance=f.balance,
        synthetic_ratio=None if f.synthetic_count is not None else f.synthetic_ratio,
        synthetic_count=f.synthetic_count, tstr=f.tstr, arms=list(f.arms),
        full_data_arms=list(f.full_data_arms),
        full_data_seeds=None if f.full_data_seeds is None else [int(v) for v in f.full_data_seeds],
        classic_augment=f.classic_augment, filter_min_confidence=f.filter_min_confidence,
        filter_max_draws=f.filter_max_draws, filter_min_kept=f.filter_min_kept,
        memorization=f.memorization, memorization_max=f.memorization_max,
        n_boot=f.n_boot, strategy=f.strategy,
        mixed_precision=f.mixed_precision, aggregate_only=f.aggregate_only,
        redo_changed=f.redo_changed,
        stop_after_cells=f.stop_after_cells)
    md = run_study(cfg)
    print(md, flush=True)


if __name__ == "__main__":
    app.run(run_main(main))
