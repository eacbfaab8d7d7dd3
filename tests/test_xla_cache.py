"""The persistent XLA compilation cache that every stage turns on (common.enable_xla_cache)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

APP = r"""
import sys
from absl import app
from histaug_tf import common

def main(argv):
    import tensorflow as tf
    @tf.function(jit_compile=True)
    def f(x):
        return tf.reduce_sum(tf.sin(x) * 3.0 + x * x)
    print("value", float(f(tf.ones([7]))))
    print("flags", __import__("os").environ.get("TF_XLA_FLAGS", ""))

app.run(common.run_main(main))
"""


def _run(tmp_path, **env_extra):
    script = tmp_path / "app.py"
    script.write_text(APP)
    env = {k: v for k, v in os.environ.items() if k not in ("TF_XLA_FLAGS", "HISTAUG_XLA_CACHE")}
    env.update(PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", HOME=str(tmp_path / "home"), **env_extra)
    env.pop("XDG_CACHE_HOME", None)
    p = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def _entries(d):
    return sorted(f for f in os.listdir(d) if f.startswith("xla_compile_cache")) if os.path.isdir(d) else []


def test_stage_writes_and_reuses_the_cache(tmp_path):
    cache = tmp_path / "xla"
    out1 = _run(tmp_path, HISTAUG_XLA_CACHE=str(cache))
    first = _entries(cache)
    assert len(first) == 1, first            # the one jit-compiled program was stored
    mtime = os.path.getmtime(cache / first[0])
    out2 = _run(tmp_path, HISTAUG_XLA_CACHE=str(cache))
    assert _entries(cache) == first and os.path.getmtime(cache / first[0]) == mtime  # read, not rewritten
    assert out1.splitlines()[0] == out2.splitlines()[0]


def test_default_dir_is_the_users_cache(tmp_path):
    out = _run(tmp_path)
    d = tmp_path / "home" / ".cache" / "histaug_tf" / "xla"
    assert f"--tf_xla_persistent_cache_directory={d}" in out
    assert len(_entries(d)) == 1


@pytest.mark.parametrize("value", ["off"])
def test_switched_off(tmp_path, value):
    out = _run(tmp_path, HISTAUG_XLA_CACHE=value)
    assert "persistent_cache" not in out
    assert not (tmp_path / "home" / ".cache" / "histaug_tf").exists()


def test_users_own_flag_wins(tmp_path):
    mine = tmp_path / "mine"
    out = _run(tmp_path, HISTAUG_XLA_CACHE=str(tmp_path / "ours"),
               TF_XLA_FLAGS=f"--tf_xla_persistent_cache_directory={mine}")
    assert out.count("persistent_cache_directory") == 1
    assert len(_entries(mine)) == 1 and not (tmp_path / "ours").exists()
