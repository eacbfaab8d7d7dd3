"""Train StyleGAN2-ADA on a dataset directory (run directory: docs/architecture.md).

    python -m histaug_tf.train_gan --flagfile=configs/demo.flags
    python -m histaug_tf.train_gan --data=tfrecords/pcam_3pct --outdir=runs/pcam --cfg=paper256 \
        --resolution=64 --resize=crop --mirror --kimg=5000

Rerunning the same command resumes from the latest checkpoint in --outdir (the previous one
when the latest cannot be read); a rerun with options that change the networks or the data
(--cfg, --resolution, --cond, --class_filter, the dataset's labels) is refused.
"""
from absl import app, flags, logging

from histaug_tf.common import run_main

FLAGS = flags.FLAGS

flags.DEFINE_string("data", None, "Dataset directory (from prepare_data or subset).")
flags.DEFINE_string("outdir", None, "Run directory (created; a rerun resumes from it).")
flags.DEFINE_string("cfg", "auto", "Preset: auto, stylegan2, paper256, paper512, paper1024, "
                    "cifar, tiny, demo.")
flags.DEFINE_integer("resolution", None, "Training resolution (power of two); default: the "
                     "dataset's when it is a square power of two.")
flags.DEFINE_enum("resize", "crop", ["crop", "resize", "pad"],
                  "How patches map to --resolution.")
flags.DEFINE_bool("mirror", False, "Random x-flips of the training images (the reference's "
                  "--mirror); the same as --flips=x.")
flags.DEFINE_enum("flips", None, ["none", "x", "xy", "all"],
                  "Random transforms of the training images: none, x (horizontal flips), xy "
                  "(horizontal and vertical flips), all (x/y flips and 90-degree rotations, for "
                  "histology). Default: x with --mirror, else none.")
flags.DEFINE_bool("cond", False, "Class-conditional G and D.")
flags.DEFINE_integer("class_filter", None, "Train on this class only (one GAN per class).")
flags.DEFINE_integer("batch", None, "Global batch (default: the preset's).")
flags.DEFINE_integer("batch_gpu", None, "Samples per replica and round: each replica splits its "
                     "batch into rounds of this size and sums their gradients (less memory). "
                     "Default: the preset's (as the reference), or the per-replica batch with "
                     "--batch.")
flags.DEFINE_float("kimg", None, "Training length in thousands of real images (default: preset).")
flags.DEFINE_float("tick", 4.0, "kimg per tick (progress line, stats.jsonl, checkpoint).")
flags.DEFINE_integer("snap", 50, "Ticks between network snapshots and fakes grids (0 = end only).")
flags.DEFINE_float("gamma", None, "R1 gamma (default: the preset's).")
flags.DEFINE_enum("aug", "ada", ["ada", "noaug", "fixed"], "Augmentation mode.")
flags.DEFINE_float("p", None, "Augment probability (initial for ada, fixed for fixed).")
flags.DEFINE_float("target", 0.6, "ADA target r_t.")
flags.DEFINE_string("augpipe", "bgc", "Augment pipe preset: blit, geom, color, filter, noise, "
                    "cutout, bg, bgc, bgcf, bgcfn, bgcfnc.")
flags.DEFINE_float("ada_kimg", 500.0, "ADA speed: kimg for p to move from 0 to 1.")
flags.DEFINE_string("strategy", "auto", "auto, default, mirrored or multiworker.")
flags.DEFINE_bool("jit", False, "XLA-compile the per-replica loss/gradient computation.")
flags.DEFINE_string("jit_phases", "auto", "With --jit, the phases XLA compiles: 'all', a comma "
                    "list of Gmain,Greg,Dmain,Dreg, or 'auto' (all; on one CPU replica Gmain "
                    "and Dmain only: the regularisers' compilation would lengthen the start "
                    "by more than XLA saves them).")
flags.DEFINE_bool("mixed_precision", None, "float16 on the top resolutions (default: on GPU).")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_list("metrics", [], "Metrics to compute at snapshots (needs histaug_tf.metrics).")
flags.DEFINE_float("metrics_kimg", None, "Compute metrics at most every this many kimg.")
flags.DEFINE_string("inception_weights", None, "For --metrics fid/kid: pytorch-fid's "
                    "pt_inception-2015-12-05-6726825d.pth, or 'random' / 'keras_imagenet' (names "
                    "get _random / _kerasinc). Required with --metrics.")
flags.DEFINE_string("vgg16_weights", None, "For --metrics pr50k3_full: Keras VGG16 .h5 weights.")
flags.DEFINE_string("resume", None, "Start from this network snapshot (.keras; transfer "
                    "learning). Ignored when --outdir already has a checkpoint.")
flags.DEFINE_integer("freezed", 0, "Freeze-D: number of D layers (from the top) to freeze.")
flags.DEFINE_bool("deterministic", False, "Bit-reproducible on CPU (op determinism, seeded RNG "
                  "restarted at every checkpoint).")
flags.DEFINE_integer("shuffle_buffer", 10000, "Shuffle buffer of training records.")
flags.DEFINE_integer("checkpoint_ticks", 1, "Ticks between checkpoints.")
flags.DEFINE_enum("noise_mode", "random", ["random", "const", "none"],
                  "Synthesis per-layer noise during training.")
flags.DEFINE_enum("input_sharding", "file", ["file", "batch"],
                  "Multi-worker input: shard by file, or every worker reads and slices the "
                  "global batch (bitwise equal to one replica).")
flags.DEFINE_float("style_mixing", None, "Style mixing probability (default: the preset's).")
flags.DEFINE_float("pl_weight", None, "Path length weight (default: the preset's).")
flags.DEFINE_float("ema_kimg", None, "G EMA half-life in kimg (default: the preset's).")
flags.DEFINE_float("lr", None, "Learning rate of G and D (default: the preset's).")
flags.DEFINE_bool("tensorboard", True, "Write TensorBoard event files.")
flags.DEFINE_bool("verify", False, "Check every shard of --data against the sha256 in its "
                  "manifest before starting (reads the whole dataset once).")


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TF's INFO chatter (checkpoint sharding, ...)
    from histaug_tf.apps.train_gan import launch
    # every flag of this module is a launch() keyword of the same name
    # (launch turns a damaged input shard into one line naming it)
    launch(**{f.name: f.value for f in FLAGS.get_flags_for_module(__name__)})


def run():
    app.run(run_main(main))


if __name__ == "__main__":
    run()
