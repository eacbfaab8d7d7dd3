"""Convert a raw patch dataset into sharded TFRecords + manifest.json.

    python -m histaug_tf.prepare_data --dataset=pcam --src=DIR --out=tfrecords/pcam
    python -m histaug_tf.prepare_data --dataset=idc  --src=DIR --out=tfrecords/idc --split=0.7,0.15,0.15
    python -m histaug_tf.prepare_data --dataset=folder --src=DIR --out=tfrecords/mine
    python -m histaug_tf.prepare_data --dataset=synthetic_tissue --out=tfrecords/synth --size=64 \
        --num_train=2000 --num_valid=500 --num_test=500 --seed=0
    python -m histaug_tf.prepare_data --verify=tfrecords/pcam     # every shard's sha256

Ctrl-C (SIGINT) stops a conversion with one line and exit code 130, leaving no dataset (no
manifest; temporary shards removed). Thin entry: flags → ``histaug_tf.data.convert.convert``. TensorFlow is imported only inside main,
so the spawned encoder processes (which re-import this module) stay light.
"""
import sys

from absl import app, flags

from histaug_tf.common import UserError, exit_now, run_main

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", None, ["pcam", "idc", "folder", "table", "synthetic_tissue"],
                  "Input format (table: a CSV path,label[,group][,split] given as --src).")
flags.DEFINE_string("src", None, "Input directory (not needed for synthetic_tissue).")
flags.DEFINE_string("out", None, "Output dataset directory (default tfrecords/<dataset>).")
flags.DEFINE_enum("encoding", "png", ["png", "raw"], "Image encoding in the TFRecords.")
flags.DEFINE_integer("shard_size", 4096, "Examples per shard.")
flags.DEFINE_bool("overwrite", False, "Replace an existing output directory.")
flags.DEFINE_integer("workers", None, "Encoder processes (default: number of cores; 0 = inline).")
flags.DEFINE_string("split", "0.7,0.15,0.15", "idc/folder/table: train,valid,test fractions "
                    "(idc: by patient; folder/table: by group when groups are given, else by "
                    "image; stratified by class).")
flags.DEFINE_integer("split_seed", 0, "idc/folder: seed of the split.")
flags.DEFINE_enum("undersized", "pad", ["pad", "drop"],
                  "idc/folder: patches smaller than the dataset size are padded (white) or dropped.")
flags.DEFINE_bool("skip_bad", False, "idc/folder: skip bad files (class/folder mismatch, corrupt "
                  "images) instead of failing; each is listed in the manifest.")
flags.DEFINE_list("label_names", None, "folder/table: class names in label order (label 0, 1, "
                  "...); with two classes this or --positive_class is required.")
flags.DEFINE_string("positive_class", None, "folder/table: the class that gets label 1 (tumour) "
                    "when there are two.")
flags.DEFINE_enum("group_from", "none", ["none", "parent"], "folder: the group (slide/patient) "
                  "of an image: parent = the folder holding it (<class>/<slide>/<patch>.png). "
                  "Splits are then made by group.")
flags.DEFINE_string("group_regex", None, "folder: a regex with one capture group applied to the "
                    "image path below --src; the capture is its group.")
flags.DEFINE_string("tmp_dir", None, "pcam: where .h5.gz files are decompressed "
                    "(default: a temporary folder inside --out, deleted after use).")
flags.DEFINE_integer("num_train", 2000, "synthetic_tissue: train patches.")
flags.DEFINE_integer("num_valid", 500, "synthetic_tissue: valid patches.")
flags.DEFINE_integer("num_test", 500, "synthetic_tissue: test patches.")
flags.DEFINE_integer("size", 64, "synthetic_tissue: patch size in pixels.")
flags.DEFINE_integer("seed", 0, "synthetic_tissue: generator seed.")
flags.DEFINE_float("positive_fraction", 0.5, "synthetic_tissue: fraction of class-1 patches.")
flags.DEFINE_string("verify", None, "Instead of converting: check every shard of this dataset "
                    "directory against its manifest (size and sha256).")


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.verify:
        from histaug_tf.data.manifest import verify_shards
        n = verify_shards(FLAGS.verify)
        print(f"verified {FLAGS.verify}: {n} shards match manifest.json (size and sha256)")
        return
    if not FLAGS.dataset:
        raise UserError("--dataset is required (or --verify=DIR)")
    out = FLAGS.out or f"tfrecords/{FLAGS.dataset}"
    try:
        _convert(out)
    except KeyboardInterrupt:
        print(f"error: interrupted: {out}: no dataset written (no manifest; temporary files "
              "removed)", file=sys.stderr, flush=True)
        # The pool and the writers are unwound by now; the interpreter's teardown is what can
        # hang (CI under load: the line printed, then no exit within 120 s), as in run_main.
        exit_now(130)


def _convert(out):
    from histaug_tf.data.convert import convert

    kw = {}
    if FLAGS.dataset in ("idc", "folder", "table"):
        kw.update(split=FLAGS.split, split_seed=FLAGS.split_seed, undersized=FLAGS.undersized)
    if FLAGS.dataset in ("folder", "table"):
        kw.update(label_names=FLAGS.label_names, positive_class=FLAGS.positive_class,
                  group_from=FLAGS.group_from, group_regex=FLAGS.group_regex)
    if FLAGS.dataset == "synthetic_tissue":
        kw.update(num_train=FLAGS.num_train, num_valid=FLAGS.num_valid, num_test=FLAGS.num_test,
                  size=FLAGS.size, seed=FLAGS.seed, positive_fraction=FLAGS.positive_fraction)
    flag_values = {f.name: f.value for f in FLAGS.get_flags_for_module(__name__)}
    m = convert(FLAGS.dataset, out, src=FLAGS.src,
                encoding=FLAGS.encoding, shard_size=FLAGS.shard_size, overwrite=FLAGS.overwrite,
                workers=FLAGS.workers, skip_bad=FLAGS.skip_bad, tmp_dir=FLAGS.tmp_dir,
                flags=flag_values, **kw)
    counts = ", ".join(f"{s} {v['num_examples']} {v['class_counts']}" for s, v in m["splits"].items())
    print(f"wrote {out}: {counts}")


if __name__ == "__main__":
    app.run(run_main(main))
