"""Hostile and damaged input, through the real command lines: label lists that disagree between
datasets, a shard with flipped bytes, 16-bit and RGBA images at conversion, Ctrl-C during
prepare_data, --overwrite of a directory that is not a dataset. Each case: exit code, ONE error
line (no traceback), and what is (not) left on disk."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from histaug_tf.data.writer import DatasetWriter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 16


def cli(module, *args, timeout=600):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", HISTAUG_QUIET="1",
               CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-m", f"histaug_tf.{module}", *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


def one_error_line(p, rc=1):
    """The single 'error:' line of a failed run (asserts exit code and no traceback)."""
    assert p.returncode == rc, (p.returncode, p.stderr[-3000:])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, p.stderr[-3000:]
    return lines[0]


def write_set(path, label_names=("normal", "tumour"), splits=(("train", 24), ("valid", 8),
                                                               ("test", 8)), shard_size=8, seed=0):
    rng = np.random.default_rng(seed)
    k = len(label_names)
    with DatasetWriter(str(path), os.path.basename(str(path)), (SIZE, SIZE, 3),
                       label_names=label_names, shard_size=shard_size) as w:
        for split, n in splits:
            for i in range(n):
                c = i % k
                img = np.clip(rng.normal(80 + 100 * (c % 2), 30, (SIZE, SIZE, 3)), 0, 255)
                w.add(split, img.astype(np.uint8), c, f"{path}/{split}/{i}", split)
    return str(path)


def flip_byte(path, pos=300):
    b = bytearray(open(path, "rb").read())
    b[pos] ^= 0xFF
    with open(path, "wb") as f:
        f.write(b)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    return dict(
        real=write_set(root / "real"),
        swapped=write_set(root / "swapped", label_names=("tumour", "normal")),
        three=write_set(root / "three", label_names=("normal", "tumour", "other"),
                        splits=(("train", 24),)),
        renamed=write_set(root / "renamed", label_names=("benign", "malignant")),
    )


CLF = ["--epochs=1", "--batch=8", "--n_boot=10", "--augment=none", "--strategy=default"]


# ------------------------------------------------------------------------------ labels

@pytest.mark.parametrize("flag,other,msg", [
    ("synthetic_data", "swapped", "label order ['tumour', 'normal'] differs"),
    ("synthetic_data", "three", "3 classes ['normal', 'tumour', 'other'], but"),
    ("val_data", "swapped", "label order"),
    ("test_data", "renamed", "label names ['benign', 'malignant'] differ"),
])
def test_train_classifier_refuses_other_labels(sets, tmp_path, flag, other, msg):
    out = tmp_path / "clf"
    p = cli("train_classifier", f"--outdir={out}", f"--train_data={sets['real']}",
            f"--{flag}={sets[other]}", *CLF)
    line = one_error_line(p)
    assert msg in line, line
    # names both manifests
    assert os.path.join(sets[other], "manifest.json") in line
    assert os.path.join(sets["real"], "manifest.json") in line
    assert not out.exists()  # nothing written


def test_train_classifier_checks_resolution_before_writing(sets, tmp_path):
    out = tmp_path / "clf"
    p = cli("train_classifier", f"--outdir={out}", f"--train_data={sets['real']}",
            "--resolution=32", "--resize_mode=crop", *CLF)
    line = one_error_line(p)
    assert line == (f"error: {sets['real']}: cannot crop 16x16 images to 32x32; use "
                    "resize_mode=pad or resize"), line
    assert not out.exists()


@pytest.mark.slow
def test_calc_metrics_refuses_generated_set_with_other_labels(sets, tmp_path):
    out = tmp_path / "m.jsonl"
    p = cli("calc_metrics", f"--data={sets['real']}", f"--gen_data={sets['swapped']}",
            "--inception_weights=random", "--inception_resolution=75", "--batch=8",
            f"--cache_dir={tmp_path / 'cache'}", f"--out={out}")
    line = one_error_line(p)
    assert "label order" in line and os.path.join(sets["swapped"], "manifest.json") in line
    assert os.path.join(sets["real"], "manifest.json") in line
    assert not out.exists() and not (tmp_path / "cache").exists()


@pytest.fixture(scope="module")
def snapshot_run(tmp_path_factory):
    """A tiny conditional generator snapshot whose metadata records [normal, tumour]."""
    import keras

    from histaug_tf.gan.networks import Generator
    from histaug_tf.gan.presets import get_preset
    from histaug_tf.gan.snapshot import save_snapshot, snapshot_name

    keras.utils.set_random_seed(0)
    G = Generator(**get_preset("tiny", SIZE, c_dim=2, mixed_precision=False)["G_kwargs"])
    run = tmp_path_factory.mktemp("runs") / "cond"
    # the metadata train_gan writes: the typed config, label names in its data section
    from histaug_tf.gan.config import TrainingConfig
    opts = TrainingConfig.from_flat(label_names=["normal", "tumour"], c_dim=2).to_dict()
    save_snapshot(str(run / snapshot_name(0)), G, metadata={"training_options": opts})
    return str(run)


@pytest.mark.slow
def test_generate_refuses_label_names_other_than_the_gans(snapshot_run, tmp_path):
    out = tmp_path / "syn"
    p = cli("generate", f"--network={snapshot_run}", f"--outdir={out}", "--num_per_class=2",
            "--label_names=tumour,normal")
    line = one_error_line(p)
    assert "--label_names: label order ['tumour', 'normal']" in line and snapshot_run in line
    assert not out.exists()


@pytest.mark.slow
def test_generate_refuses_per_class_gans_trained_on_other_labels(tmp_path):
    import keras

    from histaug_tf.gan.networks import Generator
    from histaug_tf.gan.presets import get_preset
    from histaug_tf.gan.snapshot import save_snapshot, snapshot_name

    keras.utils.set_random_seed(0)
    G = Generator(**get_preset("tiny", SIZE, c_dim=0, mixed_precision=False)["G_kwargs"])
    p0 = save_snapshot(str(tmp_path / "u0" / snapshot_name(0)), G,
                       metadata={"training_options": {"label_names": ["normal", "tumour"]}})
    # p0 as snapshots before the typed config (flat options), p1 as train_gan writes now
    from histaug_tf.gan.config import TrainingConfig
    opts = TrainingConfig.from_flat(label_names=["tumour", "normal"]).to_dict()
    p1 = save_snapshot(str(tmp_path / "u1" / snapshot_name(0)), G,
                       metadata={"training_options": opts})
    out = tmp_path / "syn"
    p = cli("generate", f"--networks=0:{p0},1:{p1}", f"--outdir={out}", "--num_per_class=2")
    line = one_error_line(p)
    assert line == (f"error: {p1} (its training labels): label order ['tumour', 'normal'] differs "
                    f"from {p0} (its training labels)'s ['normal', 'tumour'] (the same label index "
                    "means another class)"), line
    assert not out.exists()


@pytest.mark.slow
def test_calc_metrics_refuses_network_trained_on_other_labels(sets, snapshot_run, tmp_path):
    p = cli("calc_metrics", f"--data={sets['renamed']}", f"--network={snapshot_run}",
            "--num_gen=4", "--inception_weights=random", "--inception_resolution=75",
            f"--cache_dir={tmp_path / 'cache'}")
    line = one_error_line(p)
    assert "label names ['normal', 'tumour'] differ" in line and snapshot_run in line
    assert os.path.join(sets["renamed"], "manifest.json") in line
    assert not (tmp_path / "cache").exists()


# ------------------------------------------------------------------------------ damaged shards

@pytest.fixture
def damaged(tmp_path):
    """A copy of a small dataset whose second train shard has one flipped byte (same size)."""
    d = write_set(tmp_path / "damaged")
    shard = os.path.join(d, "train-00001-of-00003.tfrecord")
    size = os.path.getsize(shard)
    flip_byte(shard)
    assert os.path.getsize(shard) == size
    return d, shard


@pytest.mark.slow
def test_train_classifier_names_damaged_shard(damaged, tmp_path):
    d, shard = damaged
    out = tmp_path / "clf"
    p = cli("train_classifier", f"--outdir={out}", f"--train_data={d}", *CLF)
    line = one_error_line(p)
    assert line.startswith(f"error: {shard}: damaged shard") and "corrupted record at" in line, line
    assert not (out / "metrics.json").exists()
    # --verify finds it before anything is written
    out2 = tmp_path / "clf2"
    p = cli("train_classifier", f"--outdir={out2}", f"--train_data={d}", "--verify", *CLF)
    line = one_error_line(p)
    assert line == f"error: {shard}: sha256 differs from manifest {d}/manifest.json", line
    assert not out2.exists()


@pytest.mark.slow
def test_calc_metrics_names_damaged_shard(sets, damaged, tmp_path):
    d, shard = damaged
    out = tmp_path / "m.jsonl"
    common = [f"--data={sets['real']}", f"--gen_data={d}", "--inception_weights=random",
              "--inception_resolution=75", "--batch=8", "--noper_class",
              f"--cache_dir={tmp_path / 'cache'}", f"--out={out}"]
    line = one_error_line(cli("calc_metrics", *common))
    assert line.startswith(f"error: {shard}: damaged shard") and "corrupted record at" in line, line
    assert not out.exists()
    line = one_error_line(cli("calc_metrics", "--verify", *common))
    assert line == f"error: {shard}: sha256 differs from manifest {d}/manifest.json", line
    assert not out.exists()


@pytest.mark.slow
def test_train_gan_names_damaged_shard(damaged, tmp_path):
    d, shard = damaged
    p = cli("train_gan", f"--data={d}", f"--outdir={tmp_path / 'run'}", "--cfg=tiny", "--batch=8",
            "--kimg=0.032", "--tick=0.016", "--aug=noaug", "--shuffle_buffer=0", "--notensorboard")
    line = one_error_line(p)
    assert line.startswith(f"error: {shard}: damaged shard") and "corrupted record at" in line, line


def test_prepare_data_verify(sets, damaged):
    d, shard = damaged
    p = cli("prepare_data", f"--verify={sets['real']}")
    assert p.returncode == 0 and "5 shards match" in p.stdout, p.stderr[-2000:]
    line = one_error_line(cli("prepare_data", f"--verify={d}"))
    assert line == f"error: {shard}: sha256 differs from manifest {d}/manifest.json", line


# ------------------------------------------------------------------------------ conversion

def test_16bit_scaled_and_alpha_composited_on_white(tmp_path):
    src = tmp_path / "src"
    for c in ("normal", "tumour"):
        (src / c).mkdir(parents=True)
    rng = np.random.default_rng(0)
    grey16 = rng.integers(0, 65536, (SIZE, SIZE), dtype=np.uint16)
    grey16[0, :3] = [0, 65535, 257 * 100]
    Image.fromarray(grey16).save(src / "normal" / "g16.png")  # 16-bit grey PNG ("I;16")
    rgba = rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
    rgba[0, 0] = [10, 20, 30, 0]        # fully transparent -> white
    rgba[0, 1] = [10, 20, 30, 255]      # opaque -> unchanged
    Image.fromarray(rgba, "RGBA").save(src / "tumour" / "rgba.png")
    plain = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(plain).save(src / "tumour" / "plain.png")
    out = tmp_path / "out"
    p = cli("prepare_data", "--dataset=folder", f"--src={src}", f"--out={out}", "--workers=0",
            "--split=1,0,0", "--label_names=normal,tumour")
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.load(open(out / "manifest.json"))
    assert m["input_report"]["16bit_scaled_to_8bit"] == 1
    assert m["input_report"]["alpha_composited_on_white"] == 1

    from histaug_tf.data.pipeline import make_dataset
    got = {ex["key"].numpy().decode(): ex["image"].numpy()
           for ex in make_dataset(str(out), "train", pixel_range=None, with_meta=True)}
    # references computed here, independently of the converter
    g8 = np.floor(grey16.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    assert list(g8[0, :3]) == [0, 255, 100]
    np.testing.assert_array_equal(got["folder/normal/g16"], np.stack([g8] * 3, -1))
    a = rgba[..., 3:].astype(np.float64) / 255
    ref = np.floor(rgba[..., :3] * a + 255 * (1 - a) + 0.5).astype(np.uint8)
    assert list(ref[0, 0]) == [255, 255, 255] and list(ref[0, 1]) == [10, 20, 30]
    np.testing.assert_array_equal(got["folder/tumour/rgba"], ref)
    np.testing.assert_array_equal(got["folder/tumour/plain"], plain)


def test_prepare_data_sigint_leaves_no_dataset(tmp_path):
    out = tmp_path / "synth"
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", HISTAUG_QUIET="1",
               CUDA_VISIBLE_DEVICES="")
    # A foreground process in a terminal has SIGINT at its default. A child inherits an ignored
    # SIGINT from its parent, and this test process can have it ignored for a moment (C's
    # system(), called from any thread, ignores SIGINT while its command runs): the conversion
    # then shrugs off Ctrl-C and finishes with exit 0 (seen once in CI). So the command runs
    # behind a shim that sets SIGINT to its default and execs it (same pid, same group).
    shim = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
            "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")
    proc = subprocess.Popen(
        [sys.executable, "-c", shim, "-m", "histaug_tf.prepare_data",
         "--dataset=synthetic_tissue",
         f"--out={out}", "--size=16", "--num_train=200000", "--num_valid=0", "--num_test=0",
         "--shard_size=64", "--workers=1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)  # its own process group: Ctrl-C reaches the encoder workers too
    t0 = time.time()
    # wait until shards are being written (some complete, one open)
    while time.time() - t0 < 240 and proc.poll() is None:
        if out.is_dir() and len([n for n in os.listdir(out) if n.startswith(".tmp-")]) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    _, err = proc.communicate(timeout=120)
    p = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
    line = one_error_line(p, rc=130)
    assert line.startswith(f"error: interrupted: {out}: no dataset written"), line
    assert not out.exists() or os.listdir(out) == [], os.listdir(out)


def test_overwrite_refuses_directory_with_foreign_tfrecords(tmp_path):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "records.tfrecord").write_bytes(b"someone else's data")
    p = cli("prepare_data", "--dataset=synthetic_tissue", f"--out={out}", "--size=16",
            "--num_train=8", "--num_valid=0", "--num_test=0", "--workers=0", "--overwrite")
    line = one_error_line(p)
    assert "--overwrite refused" in line and "records.tfrecord" in line, line
    assert (out / "records.tfrecord").read_bytes() == b"someone else's data"
    assert os.listdir(out) == ["records.tfrecord"]
