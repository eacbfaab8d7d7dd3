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
    p = run(f"--data={real_dir}", f"--gen_data={real_dir}", "--metrics=fid,kid,pr",
            "--inception_weights=random", "--inception_resolution=75", "--batch=8",
            "--noper_class", f"--cache_dir={tmp_path / 'cache'}", f"--out={out}")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    m = res["metrics"]
    # Identical sets: FID 0 (up to round-off relative to the feature scale), every sample
    # inside the other set's manifold.
    scale = res["metrics"]["fid"] + 1.0
    assert abs(m["fid"]) < 1e-3 * scale and m["precision"] == 1.0 and m["recall"] == 1.0
    assert set(m) == {"fid", "kid", "precision", "recall"}
    assert res["num_real"] == 12 and res["num_gen"] == 12
    assert res["extractor"].startswith("keras-inception_v3-avgpool-75px-random-seed0")
    assert json.loads(out.read_text().splitlines()[-1]) == res


@pytest.mark.parametrize("args,msg", [
    (["--metrics=fid"], "--inception_weights is required"),
    (["--network={tmp}/nope.keras", "--inception_weights=random"], "nope.keras: network snapshot not found"),
    (["--gen_data={real}", "--metrics=fid,xyz", "--inception_weights=random"], "unknown metric 'xyz'"),
    (["--gen_data={real}", "--inception_weights={tmp}/w.h5"], "w.h5: Inception weights file not found"),
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
