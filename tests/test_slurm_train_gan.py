"""train_gan itself (tiny preset, 16 px, a few images) through jobs/slurm/train_gan_multinode.sbatch
on the local single-node SLURM with 2 tasks on the CPU (the session's one cluster, shared with
test_slurm_integration.py: tests/conftest.py, tests/_slurm_cluster.py): one cluster of 2 workers, chief-only outputs, identical weights on both workers,
a resubmission that resumes from the checkpoint, and the one-line errors for an indivisible --batch
and for a dataset with fewer shards than workers.
"""
import json
import os
import sys

import pytest

from test_slurm_integration import MULTINODE, TWO_TASKS, free_port_pair, sbatch_wait

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROBE = os.path.join("tests", "_slurm_train_gan_probe.py")


def make_tiny_datasets(root):
    from histaug_tf.data.synthetic_tissue import render_patch
    from histaug_tf.data.writer import DatasetWriter
    for name, n in (("two_shards", 16), ("one_shard", 8)):
        with DatasetWriter(os.path.join(root, name), name, (16, 16, 3), shard_size=8) as w:
            for i in range(n):
                w.add("train", render_patch(i, i % 2, size=16), i % 2, f"t/{i}", "g")
    return os.path.join(root, "two_shards"), os.path.join(root, "one_shard")


def train_gan_env(tmp_path, data, outdir):
    flagfile = tmp_path / "gan.flags"
    flagfile.write_text("\n".join([f"--data={data}", "--cfg=tiny", "--resolution=16", "--batch=8",
                                   "--kimg=0.016", "--tick=0.008", "--snap=1", "--aug=noaug",
                                   "--shuffle_buffer=16"]) + "\n")
    return {"HISTAUG_PROGRAM": PROBE, "HISTAUG_PYTHON": sys.executable,
            "HISTAUG_FLAGFILE": str(flagfile), "HISTAUG_OUTDIR": outdir,
            "HISTAUG_PORT_BASE": str(free_port_pair()), "CUDA_VISIBLE_DEVICES": "",
            "TF_CPP_MIN_LOG_LEVEL": "2"}


def load_probes(outdir):
    return [json.load(open(os.path.join(outdir, "probe", f"worker-{i}.json"))) for i in range(2)]


@pytest.mark.slow
def test_train_gan_two_tasks_one_cluster_chief_outputs_and_resume(slurm, tmp_path):
    data, _ = make_tiny_datasets(str(tmp_path / "data"))
    outdir = str(tmp_path / "gan")
    env = train_gan_env(tmp_path, data, outdir)
    log = str(tmp_path / "gan-%j.out")

    jobid, rc = sbatch_wait(slurm, MULTINODE, TWO_TASKS + [f"--output={log}"], [], env, 900)
    out1 = open(log.replace("%j", jobid)).read()
    assert rc == 0, out1[-5000:] + slurm.logs()
    comp = slurm.jobcomp(jobid)
    assert len(comp) == 1 and "JobState=COMPLETED" in comp[0] and "ProcCnt=2" in comp[0], comp
    p = load_probes(outdir)
    assert [x["worker_index"] for x in p] == [0, 1] and [x["is_chief"] for x in p] == [True, False]
    assert all(x["num_workers"] == 2 and x["num_replicas"] == 2 for x in p)
    assert p[0]["tf_config"]["cluster"] == p[1]["tf_config"]["cluster"]
    assert len(p[0]["tf_config"]["cluster"]["worker"]) == 2
    assert all(x["resumed_from"] is None and x["nimg"] == 16 for x in p)
    assert p[0]["num_variables"] > 50 and p[0]["digests"] == p[1]["digests"]  # identical weights
    # one set of outputs, written by the chief
    names = sorted(os.listdir(outdir))
    assert [n for n in names if n.startswith("events.out.tfevents")].__len__() == 1, names
    assert {"checkpoints", "stats.jsonl", "training_options.json", "probe"} <= set(names), names
    assert [n for n in names if n.startswith("network-snapshot-")] == ["network-snapshot-000000.keras"]
    assert not [n for n in names if "workertemp" in n or "worker1" in n], names
    ticks = [json.loads(ln)["tick"] for ln in open(os.path.join(outdir, "stats.jsonl"))]
    assert ticks == [0, 1]

    # the same script again with a longer --kimg: resumes from the checkpoint, does not restart
    jobid2, rc = sbatch_wait(slurm, MULTINODE, TWO_TASKS + [f"--output={log}"], ["--kimg=0.032"],
                             env, 900)
    out2 = open(log.replace("%j", jobid2)).read()
    assert rc == 0, out2[-5000:] + slurm.logs()
    q = load_probes(outdir)
    assert all(x["resumed_from"] and x["resumed_from"].endswith("ckpt-2") for x in q), q
    assert all(x["nimg"] == 32 for x in q)
    assert q[0]["digests"] == q[1]["digests"] and q[0]["digests"] != p[0]["digests"]
    ticks = [json.loads(ln)["tick"] for ln in open(os.path.join(outdir, "stats.jsonl"))]
    assert ticks == [0, 1, 2, 3]
    assert "Resuming from" in out2 and "Resuming from" not in out1
    print("\n".join(["", "== jobcomp.txt (train_gan)"] + comp + slurm.jobcomp(jobid2)))
    for o in (out1, out2):
        print("== train_gan job log (excerpt)")
        print("\n".join(ln for ln in o.splitlines() if "histaug job" in ln or ln.startswith(
            ("tick ", "Resuming", "Training for", "MultiWorkerMirroredStrategy"))))


@pytest.mark.slow
def test_train_gan_clear_errors_batch_and_shards(slurm, tmp_path):
    data, one_shard = make_tiny_datasets(str(tmp_path / "data"))
    env = train_gan_env(tmp_path, data, str(tmp_path / "gan"))
    log = str(tmp_path / "err-%j.out")
    cases = [(["--batch=7"], "error: --batch=7 is not divisible by 2 replicas"),
             ([f"--data={one_shard}"],
              f"error: {one_shard}: split 'train' has 1 shard(s), fewer than the 2 workers")]
    for extra, expected in cases:
        jobid, rc = sbatch_wait(slurm, MULTINODE, TWO_TASKS + [f"--output={log}"], extra, env, 600)
        out = open(log.replace("%j", jobid)).read()
        assert rc != 0 and slurm.job(jobid)["JobState"] == "FAILED", out[-3000:]
        errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
        assert errors and all(ln.startswith(expected) for ln in errors), out[-3000:]
        assert not os.path.exists(os.path.join(tmp_path, "gan", "checkpoints"))
        print("\n".join(errors))
