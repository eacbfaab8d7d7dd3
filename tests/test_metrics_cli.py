"""python -m histaug_tf.calc_metrics: JSON output, and one-line errors on bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from histaug_tf.data.writer import DatasetWriter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", HISTAUG_QUIET="1")
    return subprocess.run([sys.executable, "-m", "histaug_tf.calc_metrics", *args],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("cli") / "real")
    rng = np.random.default_rng(0)
    with DatasetWriter(d, "real", (16, 16, 3)) as w:
        for i in range(12):
            w.add("train", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), i % 2, f"r/{i}", "g")
    return d


@pytest.mark.slow
def test_calc_metrics_dataset_against_itself(real_dir, tmp_path):
    out = tmp_path / "m.jsonl"
    p = run(f"--data={real_dir}", f"--gen_data={real_dir}", "--metrics=fid,kid,pr_inc",
            "--inception_weights=random", "--inception_resolution=75", "--batch=8",
            "--noper_class", f"--cache_dir={tmp_path / 'cache'}", f"--out={out}")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    m = res["metrics"]
    # Random weights: every name says so. Identical sets: FID 0 up to the round-off of the
    # eigen-decompositions (measured: 0.0 after clipping the negative round-off, with a trace of
    # the feature covariance of 0.26), every sample inside the other set's manifold.
    assert set(m) == {"fid_random", "kid_random", "pr_inc_random_precision", "pr_inc_random_recall"}
    assert 0.0 <= m["fid_random"] < 1e-9
    assert m["pr_inc_random_precision"] == 1.0 and m["pr_inc_random_recall"] == 1.0
    assert res["num_real"] == 12 and res["num_gen"] == 12
    assert res["extractor"].startswith("fid-inception-2015-12-05-pool3-75px-random-seed0")
    assert json.loads(out.read_text().splitlines()[-1]) == res


@pytest.mark.parametrize("args,msg", [
    (["--metrics=fid"], "--inception_weights is required"),
    (["--metrics=fid", "--inception_weights=imagenet"], "renamed keras_imagenet"),
    (["--metrics=pr50k3_full", "--inception_weights=random"], "pr50k3_full: precision/recall uses VGG16"),
    (["--metrics=fid", "--inception_weights={tmp}/w.pth"], "w.pth: Inception weights file not found"),
    (["--network={tmp}/nope.keras", "--inception_weights=random"], "nope.keras: network snapshot not found"),
    (["--gen_data={real}", "--metrics=fid,xyz", "--inception_weights=random"], "unknown metric 'xyz'"),
])
def test_calc_metrics_errors_are_one_line(real_dir, tmp_path, args, msg):
    args = [a.format(tmp=tmp_path, real=real_dir) for a in args]
    if not any(a.startswith(("--network", "--gen_data")) for a in args):
        args.append(f"--gen_data={real_dir}")
    p = run(f"--data={real_dir}", f"--cache_dir={tmp_path / 'cache'}", *args)
    assert p.returncode == 1
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and msg in lines[0], p.stderr
    assert "Traceback" not in p.stderr
    assert not os.path.exists(tmp_path / "cache")


def test_train_gan_refuses_metrics_without_weights(real_dir, tmp_path):
    """train_gan --metrics=fid50k_full without --inception_weights: one line, before training."""
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", HISTAUG_QUIET="1")
    for extra, msg in (([], "--inception_weights is required"),
                       (["--inception_weights=random", "--metrics=fid50k_full,pr50k3_full"],
                        "pr50k3_full: precision/recall uses VGG16"),
                       (["--inception_weights=random", "--metrics=fid50k_full,kid2k"],
                        "ask for different numbers of generated images")):
        out = tmp_path / "run"
        p = subprocess.run([sys.executable, "-m", "histaug_tf.train_gan", f"--data={real_dir}",
                            f"--outdir={out}", "--cfg=tiny", "--metrics=fid50k_full", *extra],
                           capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 1
        lines = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and msg in lines[0], p.stderr
        assert "Traceback" not in p.stderr and not out.exists()
