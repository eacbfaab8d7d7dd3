"""The on-disk cache of traced step functions (histaug_tf/graph_cache.py): a second process
loads the graphs instead of tracing them and trains exactly as a process without the cache; the
key changes with what the graphs depend on; damaged entries and captures it cannot recreate fall
back to tracing."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from histaug_tf import graph_cache

HERE = os.path.dirname(os.path.abspath(__file__))
PHASES = {"Gmain", "Greg", "Dmain", "Dreg", "EMA"}


def _probe(tmp_path, tag, jit, cache, seed=None, class_counts=None):
    env = dict(os.environ, HISTAUG_GRAPH_CACHE=cache, PYTHONPATH=os.path.dirname(HERE))
    out = str(tmp_path / tag)
    run = [] if seed is None else [str(seed), ",".join(map(str, class_counts))]
    subprocess.run([sys.executable, os.path.join(HERE, "_graph_cache_probe.py"),
                    str(tmp_path / f"run-{tag}"), out, "1" if jit else "0"] + run,
                   env=env, check=True, timeout=600)
    with np.load(out + ".npz") as z:
        weights = {k: z[k] for k in z.files}
    return weights, json.load(open(out + ".json"))


def _adder(v):
    """A tf.function that adds its argument to ``v`` and returns the new value."""
    @tf.function
    def f(x):
        v.assign_add(x)
        return v.read_value()
    return f


@pytest.mark.parametrize("jit", [False, True])
def test_second_process_loads_the_graphs_and_trains_as_without_cache(tmp_path, jit):
    cache = str(tmp_path / "graphs")
    ref, ref_info = _probe(tmp_path, "off", jit, "off")
    first, first_info = _probe(tmp_path, "first", jit, cache)
    second, second_info = _probe(tmp_path, "second", jit, cache)
    assert {n for n, i in ref_info.items() if i["source"] == "plain"} >= PHASES
    assert {n for n, i in first_info.items() if i["source"] == "traced"} == PHASES, first_info
    assert {n for n, i in second_info.items() if i["source"] == "loaded"} == PHASES, second_info
    assert all(second_info[n]["traces"] == 0 for n in PHASES), second_info  # nothing traced
    assert len([f for f in os.listdir(cache) if f.endswith(".npz")]) == len(PHASES)
    assert ref.keys() == first.keys() == second.keys()
    moved = [k for k in ref if k.startswith("G|")]
    assert moved
    for k in ref:
        np.testing.assert_array_equal(first[k], ref[k], err_msg=k)
        np.testing.assert_array_equal(second[k], ref[k], err_msg=k)


def test_gans_of_one_study_share_graphs_and_keep_their_seed_and_labels(tmp_path):
    """The GANs of a study differ in seed and subset (class counts): a run of seed 1 with labels
    drawn 1:3 loads the graphs traced by a run of seed 0 with labels 3:1, and still trains
    exactly as seed 1 with 1:3 does without the cache (the seed and the label distribution are
    variables of the graphs, not constants baked in by the first run)."""
    cache = str(tmp_path / "graphs")
    ref, _ = _probe(tmp_path, "ref", False, "off", seed=1, class_counts=[1, 3])
    first, first_info = _probe(tmp_path, "first", False, cache, seed=0, class_counts=[3, 1])
    second, second_info = _probe(tmp_path, "second", False, cache, seed=1, class_counts=[1, 3])
    assert {n for n, i in first_info.items() if i["source"] == "traced"} == PHASES, first_info
    assert {n for n, i in second_info.items() if i["source"] == "loaded"} == PHASES, second_info
    assert ref.keys() == second.keys()
    for k in ref:
        np.testing.assert_array_equal(second[k], ref[k], err_msg=k)
    # the runs differ: otherwise the comparison above could not tell a baked-in seed
    assert any(not np.array_equal(first[k], ref[k]) for k in ref if k.startswith("G|"))


def _entry(t, phase="Dreg"):
    real, real_c = t._next_batch()
    return t._phase_fns[phase].entry_path([real, real_c, tf.constant(0, tf.int64)])


def test_key_follows_what_the_graphs_depend_on(tmp_path, monkeypatch):
    from _graph_cache_probe import make_trainer
    monkeypatch.setenv("HISTAUG_GRAPH_CACHE", str(tmp_path / "graphs"))
    base = _entry(make_trainer(tmp_path / "a", jit=False))
    assert base == _entry(make_trainer(tmp_path / "b", jit=False))  # another run directory
    assert base == _entry(make_trainer(tmp_path / "s", jit=False, seed=7))  # seed: a variable
    assert base != _entry(make_trainer(tmp_path / "c", jit=False, gamma=0.25))  # R1 gamma
    assert base != _entry(make_trainer(tmp_path / "d", jit=True))
    # TF's global seed: stateful random ops (an unseeded augment pipe; networks drawing noise
    # outside layers.noise_seed) take their op seeds from it at trace time
    assert base != _entry(make_trainer(tmp_path / "e", jit=False, global_seed=6))


def test_a_resumed_run_that_trains_longer_loads_the_graphs(tmp_path, monkeypatch):
    """Resuming with a longer --kimg (the usual resume) has the key of the run it continues:
    the length is not in the graphs, nor is what restoring a checkpoint changes (the
    checkpoint's save counter, which exists only after a save or restore unless created up
    front, and tf.Module's restore bookkeeping on the ADA state)."""
    from _graph_cache_probe import make_trainer
    monkeypatch.setenv("HISTAUG_GRAPH_CACHE", str(tmp_path / "graphs"))
    first = make_trainer(tmp_path / "run", jit=False, kimg=1)
    base = _entry(first)
    first.train_step()
    first.save_checkpoint()
    resumed = make_trainer(tmp_path / "run", jit=False, kimg=2)
    assert resumed.resumed_from
    assert _entry(resumed) == base


def test_source_fingerprint_covers_every_python_file(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    (pkg / "notes.txt").write_text("not code\n")
    fp = lambda: graph_cache.source_fingerprint.__wrapped__(str(pkg))  # noqa: E731 (uncached)
    base = fp()
    (pkg / "notes.txt").write_text("changed\n")
    assert fp() == base
    (pkg / "sub" / "b.py").write_text("y = 3\n")
    changed = fp()
    assert changed != base
    (pkg / "sub" / "c.py").write_text("")
    assert fp() != changed


def test_cached_function_binds_captures_of_the_new_process(tmp_path):
    """A closed form: f(x) adds x * c to v and returns 2 v. The entry written with variable v is
    loaded for variable w (same path): it updates w, not v, and returns w's values."""
    c = tf.constant([3.0, 4.0])

    def make(var):
        @tf.function
        def f(x):
            var.assign_add(x * c)
            return var.read_value() * 2.0
        return f

    v = tf.Variable([1.0, 2.0])
    logs = []
    f1 = graph_cache.CachedFunction(make(v), "f", {"k": 1}, lambda: [("v", v)],
                                    directory=str(tmp_path), log=logs.append)
    np.testing.assert_array_equal(f1(tf.constant(1.0))[0], [8.0, 12.0])
    assert f1.last_prepare["source"] == "traced"
    w = tf.Variable([1.0, 2.0])
    fn2 = make(w)
    f2 = graph_cache.CachedFunction(fn2, "f", {"k": 1}, lambda: [("v", w)],
                                    directory=str(tmp_path), log=logs.append)
    np.testing.assert_array_equal(f2(tf.constant(2.0))[0], [14.0, 20.0])
    assert f2.last_prepare["source"] == "loaded" and fn2.experimental_get_tracing_count() == 0
    np.testing.assert_array_equal(w.numpy(), [7.0, 10.0])
    np.testing.assert_array_equal(v.numpy(), [4.0, 6.0])
    # another key: its own entry
    f3 = graph_cache.CachedFunction(make(w), "f", {"k": 2}, lambda: [("v", w)],
                                    directory=str(tmp_path), log=logs.append)
    f3.prepare(tf.constant(1.0))
    assert f3.last_prepare["source"] == "traced"
    assert not logs, logs


def test_unlisted_capture_runs_uncached(tmp_path):
    v = tf.Variable(1.0)
    logs = []
    cf = graph_cache.CachedFunction(_adder(v), "f", {}, lambda: [], directory=str(tmp_path),
                                    log=logs.append)
    assert float(cf(tf.constant(2.0))) == 3.0
    assert cf.last_prepare["source"] == "uncached"
    assert logs == ["note: graph cache: f not cached (capture 0 is a resource that is not a "
                    "listed variable)"], logs
    assert not os.listdir(tmp_path)


def test_damaged_entry_is_reported_and_traced_again(tmp_path):
    v = tf.Variable([1.0, 2.0])

    def make():
        @tf.function
        def f(x):
            v.assign_add(x * tf.ones([2]))
            return v.read_value()
        return f

    logs = []
    f1 = graph_cache.CachedFunction(make(), "f", {}, lambda: [("v", v)],
                                    directory=str(tmp_path), log=logs.append)
    path = f1.entry_path([tf.constant(1.0)])
    f1(tf.constant(1.0))
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])  # cut short (a crash mid-copy, a full disk)
    f2 = graph_cache.CachedFunction(make(), "f", {}, lambda: [("v", v)],
                                    directory=str(tmp_path), log=logs.append)
    np.testing.assert_array_equal(f2(tf.constant(1.0))[0], [3.0, 4.0])
    assert f2.last_prepare["source"] == "traced"
    assert len(logs) == 1 and logs[0].startswith(f"warning: graph cache {path}: "), logs
    assert logs[0].endswith("; tracing again")
    assert open(path, "rb").read() != data[:len(data) // 2]  # written again, whole
    f3 = graph_cache.CachedFunction(make(), "f", {}, lambda: [("v", v)],
                                    directory=str(tmp_path), log=logs.append)
    f3.prepare(tf.constant(1.0))
    assert f3.last_prepare["source"] == "loaded"


def test_least_recently_used_entries_are_pruned(tmp_path, monkeypatch):
    monkeypatch.setattr(graph_cache, "MAX_ENTRIES", 2)
    v = tf.Variable(1.0)

    def entry(k):
        cf = graph_cache.CachedFunction(_adder(v), "f", {"k": k}, lambda: [("v", v)],
                                        directory=str(tmp_path))
        cf.prepare(tf.constant(1.0))
        return cf.entry_path([tf.constant(1.0)]), cf.last_prepare["source"]

    a, _ = entry(1)
    b, _ = entry(2)
    os.utime(a, (1, 1))  # a was written first ...
    os.utime(b, (2, 2))
    assert entry(1) == (a, "loaded")  # ... but loading it made it the most recently used
    c, _ = entry(3)
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in (a, c))


def test_a_failing_cache_never_stops_the_call(tmp_path):
    v = tf.Variable(1.0)

    def broken():
        raise RuntimeError("listing failed")

    logs = []
    cf = graph_cache.CachedFunction(_adder(v), "f", {}, broken, directory=str(tmp_path),
                                    log=logs.append)
    assert float(cf(tf.constant(2.0))) == 3.0
    assert cf.last_prepare["source"] == "uncached"
    assert logs == ["warning: graph cache: f not cached (listing failed)"]


def test_cache_directory_default_and_switch(tmp_path, monkeypatch):
    """``$HISTAUG_GRAPH_CACHE`` unset: ``$XDG_CACHE_HOME/histaug_tf/graphs``; ``off``: no cache;
    a relative path: made absolute (docs/speed.md)."""
    monkeypatch.delenv("HISTAUG_GRAPH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert graph_cache.graph_cache_dir() == str(tmp_path / "histaug_tf" / "graphs")
    monkeypatch.setenv("HISTAUG_GRAPH_CACHE", "Off")
    assert graph_cache.graph_cache_dir() is None
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HISTAUG_GRAPH_CACHE", "g")
    assert graph_cache.graph_cache_dir() == str(tmp_path / "g")
