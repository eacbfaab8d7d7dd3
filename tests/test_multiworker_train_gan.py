"""train_gan itself (its real input_fn and StopSignal) under MultiWorkerMirroredStrategy with 2
local worker processes (TF_CONFIG on localhost ports), tiny preset at 16 px:

* production input sharding (``--input_sharding=file``, the default): over the first epoch the
  workers read disjoint examples, worker i exactly the examples of shards i, i+2, ..., and the
  union is the split; the same for ``--input_sharding=batch`` (each worker its slice of the
  global batch);
* a real two-process stop: SIGTERM to ONE worker only; both stop at the same step, both save
  that step (model checkpoint + each worker's input state) and both exit with 143.

What a worker consumed is recorded by tests/_multiworker_probe.py (digests of the real images of
every batch the trainer took); the expected shard contents are the images this test wrote.
"""
import hashlib
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from _helpers import start_workers

HERE = os.path.dirname(os.path.abspath(__file__))
PROBE = os.path.join(HERE, "_multiworker_probe.py")
N, SHARD, BATCH = 16, 4, 8  # 4 shards of 4; global batch 8 = 4 per worker; one epoch = 2 steps

pytestmark = pytest.mark.slow


def _digest(u8):
    return hashlib.sha1(np.ascontiguousarray(u8, np.uint8).tobytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """16 distinct patches in 4 shards (shard k holds examples 4k..4k+3); digest -> index."""
    from histaug_tf.data.synthetic_tissue import render_patch
    from histaug_tf.data.writer import DatasetWriter
    root = str(tmp_path_factory.mktemp("mw") / "toy")
    index = {}
    with DatasetWriter(root, "toy", (16, 16, 3), shard_size=SHARD) as w:
        for i in range(N):
            img = render_patch(i, i % 2, size=16)
            index[_digest(img)] = i
            w.add("train", img, i % 2, f"t/{i}", f"g{i}")
    assert len(index) == N  # every patch is distinct: a digest names one example
    return root, index


def _start(data_dir, outdir, extra):
    return start_workers(PROBE, [f"--data={data_dir}", f"--outdir={outdir}",
                                 "--strategy=multiworker", "--cfg=tiny", "--resolution=16",
                                 f"--batch={BATCH}", "--aug=noaug", "--shuffle_buffer=16",
                                 "--snap=0", "--notensorboard", *extra])


def _finish(procs, timeout=600):
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        logs = [p.communicate()[0][-2000:] for p in procs]
        pytest.fail(f"workers did not finish in {timeout} s:\n" + "\n---\n".join(logs))
    return outs


def _probes(outdir):
    return [json.load(open(os.path.join(outdir, "probe", f"worker-{i}.json"))) for i in range(2)]


def _first_epoch(probe, index):
    """Example indices of the batches this worker consumed during one epoch of the split."""
    steps = N // BATCH
    batches = probe["batches"][:steps]
    assert len(batches) == steps and all(len(b) == BATCH // 2 for b in batches), probe["batches"]
    return [index[d] for b in batches for d in b]


def _check_disjoint_cover(probes, index, expected=None):
    seen = [_first_epoch(p, index) for p in probes]
    for s in seen:
        assert len(s) == len(set(s)), seen  # no example twice within a worker's epoch
    assert not set(seen[0]) & set(seen[1]), seen  # the workers read disjoint examples
    assert sorted(seen[0] + seen[1]) == list(range(N)), seen  # ... and together the split
    if expected is not None:
        assert [sorted(s) for s in seen] == expected, seen


@pytest.fixture(scope="module")
def stopped_run(data, tmp_path_factory):
    """Two workers, file-sharded input, a long --kimg; SIGTERM to worker 1 only after 2 ticks."""
    data_dir, _ = data
    outdir = str(tmp_path_factory.mktemp("mwstop") / "run")
    procs = _start(data_dir, outdir, ["--kimg=100", "--tick=0.016"])
    stats = os.path.join(outdir, "stats.jsonl")
    deadline = time.time() + 400
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if os.path.exists(stats) and sum(1 for _ in open(stats)) >= 2:
            break
        time.sleep(0.5)
    if not all(p.poll() is None for p in procs) or time.time() >= deadline:
        for p in procs:
            p.kill()
        pytest.fail("workers did not reach tick 1:\n" + "\n---\n".join(
            p.communicate()[0][-2000:] for p in procs))
    procs[1].send_signal(signal.SIGTERM)  # one worker only, the non-chief
    t_signal = time.time()
    outs = _finish(procs, timeout=300)
    return dict(outdir=outdir, procs=procs, outs=outs, seconds=time.time() - t_signal)


def test_file_sharded_input_two_workers_disjoint_and_cover_the_split(stopped_run, data):
    _, index = data
    probes = _probes(stopped_run["outdir"])
    assert [p["worker_index"] for p in probes] == [0, 1]
    assert all(p["num_workers"] == 2 and p["worker_batch"] == BATCH // 2 for p in probes)
    # worker i reads shards i, i+2: examples 0-3, 8-11 (worker 0) and 4-7, 12-15 (worker 1)
    _check_disjoint_cover(probes, index, expected=[[0, 1, 2, 3, 8, 9, 10, 11],
                                                   [4, 5, 6, 7, 12, 13, 14, 15]])


def test_sigterm_to_one_worker_stops_both_at_the_same_step_with_143(stopped_run):
    procs, outs, outdir = stopped_run["procs"], stopped_run["outs"], stopped_run["outdir"]
    assert [p.returncode for p in procs] == [143, 143], [o[-2000:] for o in outs]
    p0, p1 = _probes(outdir)
    assert p0["stopped_by_signal"] == p1["stopped_by_signal"] == signal.SIGTERM
    step = p0["step"]
    assert p1["step"] == step and p0["nimg"] == p1["nimg"] == step * BATCH
    assert step % 4 == 0 and step >= 4  # a stop-check boundary after the 2 ticks waited for
    assert p0["digests"] == p1["digests"]  # same weights at the stop
    ck = os.path.join(outdir, "checkpoints")
    import tensorflow as tf
    latest = tf.train.latest_checkpoint(ck)
    assert latest and latest.endswith(f"ckpt-{step}"), os.listdir(ck)
    reader = tf.train.load_checkpoint(latest)
    assert int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == step
    for i in range(2):  # each worker saved its input state at that same step
        assert os.path.exists(os.path.join(ck, f"input-worker{i:03d}", f"ckpt-{step}.index"))
    assert "signal 15: checkpoint saved" in outs[0], outs[0][-2000:]  # the chief's log line
    assert not [f for f in os.listdir(outdir) if f.startswith("network-snapshot-")]
    print(f"\nSIGTERM to worker 1 -> both stopped at step {step}, exit 143, "
          f"{stopped_run['seconds']:.1f} s after the signal")


def test_batch_sharded_input_two_workers_disjoint_and_cover_the_split(data, tmp_path):
    data_dir, index = data
    outdir = str(tmp_path / "run")
    procs = _start(data_dir, outdir, ["--kimg=0.016", "--tick=0.016", "--input_sharding=batch"])
    outs = _finish(procs)
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]
    probes = _probes(outdir)
    _check_disjoint_cover(probes, index)
    assert probes[0]["digests"] == probes[1]["digests"]
