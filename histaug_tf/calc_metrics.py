"""FID / KID / precision-recall of a generator (or a generated dataset) against a real dataset.

    python -m histaug_tf.calc_metrics --network=runs/00001-demo --data=tfrecords/demo \
        --metrics=fid50k_full,kid50k_full,pr50k3_full \\
        --inception_weights=pt_inception-2015-12-05-6726825d.pth \\
        --vgg16_weights=vgg16_weights_tf_dim_ordering_tf_kernels.h5

Prints one JSON object (metrics, counts, extractor, timings); ``--out=FILE`` also appends it to
FILE as a JSON line. Real-data statistics are cached (``--cache_dir``).
"""
import json
import os

from absl import app, flags

from histaug_tf.common import UserError, run_main

FLAGS = flags.FLAGS
flags.DEFINE_string("network", None, "A .keras snapshot or a run directory (latest snapshot).")
flags.DEFINE_string("networks", None, "One generator per class: CLASS:PATH[,CLASS:PATH...].")
flags.DEFINE_string("gen_data", None, "Instead of a network: a generated dataset directory.")
flags.DEFINE_string("data", None, "The real dataset directory.")
flags.DEFINE_string("split", "train", "Split of --data.")
flags.DEFINE_string("gen_split", "train", "Split of --gen_data.")
flags.DEFINE_list("metrics", ["fid50k_full"], "NVlabs names: fid50k_full, kid50k_full, "
                  "pr50k3_full, fid10k, ...; pr..._inc: precision/recall on Inception features; "
                  "memorization: share of generated images nearer a --data image than real "
                  "images come to each other (docs/metrics.md).")
flags.DEFINE_integer("num_gen", None, "Generated images (with --network); default: from the metric name (fid10k) or 50000.")
flags.DEFINE_float("trunc", 1.0, "Truncation psi.")
flags.DEFINE_integer("trunc_cutoff", None, "Truncation cutoff.")
flags.DEFINE_enum("noise_mode", "random", ["const", "random", "none"], "Per-layer noise.")
flags.DEFINE_integer("resolution", None, "Map real images to this size (default: the network's).")
flags.DEFINE_enum("resize_mode", "crop", ["crop", "resize", "pad"], "How real images are mapped.")
flags.DEFINE_string("inception_weights", None, "pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                    "(required for fid/kid), or 'random' (seeded random weights, names get "
                    "_random) or 'keras_imagenet' (Keras' InceptionV3, names get _kerasinc).")
flags.DEFINE_string("vgg16_weights", None, "Keras VGG16 (include_top) weights .h5 for precision/"
                    "recall (pr50k3_full).")
flags.DEFINE_integer("inception_seed", 0, "Seed of the random Inception weights.")
flags.DEFINE_integer("inception_resolution", 299, "Inception input size (only with random weights; >= 75).")
flags.DEFINE_integer("batch", 64, "Images per batch.")
flags.DEFINE_integer("seed", 0, "Seed of latents, labels and subsets.")
flags.DEFINE_string("cache_dir", None, "Real-statistics cache (default ~/.cache/histaug_tf/stats).")
flags.DEFINE_boolean("cache", True, "Use the real-statistics cache.")
flags.DEFINE_boolean("per_class", True, "Also per-class FID when both sides are labelled.")
flags.DEFINE_integer("max_real_features", None, "Real images for KID and precision/recall "
                     "(default: as NVlabs, from the metric name).")
flags.DEFINE_boolean("jit", False, "XLA-compile the generator and the extractor.")
flags.DEFINE_boolean("verify", False, "Check every shard's sha256 against its manifest first.")
flags.DEFINE_string("out", None, "Append the result as a JSON line to this file.")


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    from histaug_tf.apps.calc_metrics import calc_metrics

    result = calc_metrics(
        metrics=FLAGS.metrics, data_dir=FLAGS.data, network=FLAGS.network, networks=FLAGS.networks,
        gen_data_dir=FLAGS.gen_data, split=FLAGS.split, gen_split=FLAGS.gen_split,
        num_gen=FLAGS.num_gen, truncation_psi=FLAGS.trunc, truncation_cutoff=FLAGS.trunc_cutoff,
        noise_mode=FLAGS.noise_mode, resolution=FLAGS.resolution, resize_mode=FLAGS.resize_mode,
        inception_weights=FLAGS.inception_weights, vgg16_weights=FLAGS.vgg16_weights,
        inception_seed=FLAGS.inception_seed,
        inception_resolution=FLAGS.inception_resolution, batch_size=FLAGS.batch, seed=FLAGS.seed,
        cache_dir=FLAGS.cache_dir, use_cache=FLAGS.cache, per_class=FLAGS.per_class,
        max_real_features=FLAGS.max_real_features, jit_compile=FLAGS.jit,
        verify=FLAGS.verify)
    line = json.dumps(result, sort_keys=True)
    print(line)
    if FLAGS.out:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
        with open(FLAGS.out, "a", encoding="utf-8") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    app.run(run_main(main))
