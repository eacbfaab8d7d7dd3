"""The study orchestration: resume after SIGKILL without redoing finished cells, an uncorrupted
table regenerated from cell files, SLURM-array style single-cell runs + --aggregate_only, and the
table's numbers against the cell files and an independent DeLong computation.

The stages (subset, GAN, generate) and the classifiers are stubs here (the stubs write real dataset
directories and real predictions/metrics files); the real stages have their own tests."""
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

STUBS = textwrap.dedent('''
    import os, time, zlib
    import numpy as np
    from histaug_tf.apps import experiment as study
    from histaug_tf.classifier import evaluate as ev
    from histaug_tf.common import save_npz_atomic, write_json_atomic
    from histaug_tf.classifier import train as ct
    from histaug_tf.data.writer import DatasetWriter

    LOG = os.environ.get("STUB_LOG")
    DELAY = float(os.environ.get("STUB_DELAY", "0"))

    def note(msg):
        if LOG:
            with open(LOG, "a") as f:
                f.write(msg + "\\n")

    def write_ds(out, name, n_per_class, splits=("train",), source="real", seed=0,
                 label_names=("normal", "tumour")):
        rng = np.random.default_rng(seed)
        with DatasetWriter(out, name, (8, 8, 3), encoding="raw", overwrite=True,
                           label_names=label_names) as w:
            for split in splits:
                for c in (0, 1):
                    for i in range(n_per_class):
                        img = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
                        w.add(split, img, c, f"{name}/{split}/{c}/{i}", split, source=source)

    def arg(args, name):
        return [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")][0]

    def run_stage(module, args, log_path):
        note(f"stage {module} " + " ".join(args))
        time.sleep(DELAY)
        if module == "subset":
            f = float(arg(args, "fractions"))
            from histaug_tf.data.subsets import frac_dirname
            write_ds(os.path.join(arg(args, "out"), frac_dirname(f)), "sub", max(1, int(100 * f)))
        elif module == "train_gan":
            os.makedirs(arg(args, "outdir"), exist_ok=True)
        elif module == "prepare_data":
            out = arg(args, "out")
            write_ds(out, "prep", 10, splits=("train", "valid", "test"))
            if os.environ.get("STUB_DAMAGE"):  # one flipped byte in a shard, size unchanged
                p = os.path.join(out, "test-00000-of-00001.tfrecord")
                b = bytearray(open(p, "rb").read())
                b[100] ^= 0xFF
                open(p, "wb").write(b)
        elif module == "generate":
            write_ds(arg(args, "outdir"), "syn", 10, source="synthetic",
                     label_names=os.environ.get("STUB_SYN_LABELS", "normal,tumour").split(","))
        else:
            raise AssertionError(module)

    def run_classifier(kind, run_dir, cfg, seed, **kw):
        m = ct.read_metrics(run_dir)
        if m is not None:
            return m
        syn = kw.get("synthetic_data")
        note(f"clf {os.path.relpath(run_dir, cfg.outdir)} augment={kw.get('augment')} "
             f"synthetic={os.path.basename(syn) if syn else None}")
        os.makedirs(run_dir, exist_ok=True)
        time.sleep(DELAY)
        rng = np.random.default_rng(zlib.crc32(run_dir.encode()))
        y = np.arange(200) % 2                       # the same test set for every run
        strength = {"baseline": 1.0, "classic": 1.2, "gan": 1.4, "gan_filtered": 1.5,
                    "gan+classic": 1.6, "tstr": 0.6}[kind]
        p = 1 / (1 + np.exp(-(strength * (2 * y - 1) + rng.normal(size=200))))
        keys = np.array([f"k{i:03d}".encode() for i in range(200)])
        perm = rng.permutation(200)                  # runs may list the test set in any order
        extra = {}
        groups = None
        if os.environ.get("STUB_GROUPS"):  # 20 patients of 10 patches each
            groups = np.array([f"pat{i // 10}".encode() for i in range(200)])
            y = (np.arange(200) // 10) % 2
            p = 1 / (1 + np.exp(-(strength * (2 * y - 1) + rng.normal(size=200))))
            extra["groups"] = groups[perm]
        save_npz_atomic(os.path.join(run_dir, "predictions.npz"), labels=y[perm],
                            probs=p[perm], keys=keys[perm], **extra)
        m = ev.evaluate_scores(y, p, n_boot=50, groups=groups)
        write_json_atomic(os.path.join(run_dir, "metrics.json"), m)
        return m

    study.run_stage = run_stage
    study.run_classifier = run_classifier
''')


def _real_dataset(path):
    from histaug_tf.data.writer import DatasetWriter
    rng = np.random.default_rng(0)
    with DatasetWriter(str(path), "toy", (8, 8, 3), encoding="raw") as w:
        for split, n in (("train", 100), ("valid", 20), ("test", 100)):
            for c in (0, 1):
                for i in range(n):
                    w.add(split, rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), c,
                          f"toy/{split}/{c}/{i}", split)
    return str(path)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return _real_dataset(tmp_path_factory.mktemp("d") / "toy")


def _stubbed(monkeypatch):
    """Install the stubs into histaug_tf.apps.experiment for this test only."""
    from histaug_tf.apps import experiment as study
    saved = (study.run_stage, study.run_classifier)
    ns = {}
    exec(STUBS, ns)  # assigns study.run_stage / run_classifier
    stubs = (study.run_stage, study.run_classifier)
    study.run_stage, study.run_classifier = saved
    monkeypatch.setattr(study, "run_stage", stubs[0])
    monkeypatch.setattr(study, "run_classifier", stubs[1])


def _cfg(outdir, real, **kw):
    from histaug_tf.apps.experiment import StudyConfig
    base = dict(outdir=str(outdir), data=[real], fractions=[0.1, 0.5, 1.0], seeds=[0, 1],
                n_boot=50, resolution=8)
    base.update(kw)
    return StudyConfig(**base)


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_table_from_cells_and_independent_delong(real, tmp_path, monkeypatch):
    from histaug_tf.apps import experiment as study
    from histaug_tf.classifier import train as ct
    monkeypatch.setenv("STUB_LOG", str(tmp_path / "log"))
    _stubbed(monkeypatch)
    md = study.run_study(_cfg(tmp_path / "out", real))
    rows = _read_csv(tmp_path / "out" / "results.csv")
    arms = ["baseline", "classic", "gan", "gan_filtered", "gan+classic"]
    assert len(rows) == 4 * 5 + 2  # every arm in the scarce cells, the baseline at all data
    for f in ("0.1", "0.5"):
        for s in ("0", "1"):
            assert [r["arm"] for r in rows if (r["fraction"], r["seed"]) == (f, s)] == arms
    full = [r for r in rows if r["fraction"] == "1.0"]
    assert [r["arm"] for r in full] == ["baseline", "baseline"] and all(r["auc"] for r in full)
    cdir = tmp_path / "out" / "cells" / "toy" / "f0.1" / "s1"
    cell = {r["arm"]: r for r in rows if (r["fraction"], r["seed"]) == ("0.1", "1")}
    auc = {a: json.load(open(cdir / ("clf_" + a.replace("+", "_")) / "metrics.json"))["auc"]
           for a in arms}
    for a in arms:
        r = cell[a]
        assert float(r["auc"]) == pytest.approx(auc[a]) and int(r["n_train"]) == 20
        for ref in ("baseline", "classic"):
            if a == ref:
                assert r[f"delta_vs_{ref}"] == ""
            else:
                assert float(r[f"delta_vs_{ref}"]) == pytest.approx(auc[a] - auc[ref])
    r = cell["gan"]
    assert float(r["delta_vs_baseline_rel_pct"]) == pytest.approx(
        100 * (auc["gan"] - auc["baseline"]) / auc["baseline"])
    # DeLong p on the aligned predictions, recomputed here with explicit O(n^2) components
    def aligned(run):
        y, p, k = ct.load_predictions(str(cdir / run))
        i = np.argsort(k)
        return y[i], p[i]
    for arm, ref in (("gan", "baseline"), ("gan_filtered", "classic")):
        y, pa = aligned("clf_" + arm)
        yb, pb = aligned("clf_" + ref)
        assert np.array_equal(y, yb)
        pos, neg = np.where(y == 1)[0], np.where(y == 0)[0]

        def comps(s):
            psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
            return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)
        a1, v10a, v01a = comps(pa)
        a2, v10b, v01b = comps(pb)
        s10 = np.cov(np.stack([v10a, v10b]))
        s01 = np.cov(np.stack([v01a, v01b]))
        c = s10 / len(pos) + s01 / len(neg)
        z = (a1 - a2) / np.sqrt(c[0, 0] + c[1, 1] - 2 * c[0, 1])
        from scipy import stats
        assert float(cell[arm][f"delong_p_vs_{ref}"]) == pytest.approx(
            2 * stats.norm.sf(abs(z)), rel=1e-9)
    # every arm of the cell trained on the same real subset, with the stain augmentation where due
    log = open(tmp_path / "log").read().splitlines()
    want = {"baseline": "augment=flips synthetic=None",
            "classic": "augment=flips,hed_light,hsv_light,bc synthetic=None",
            "gan": "augment=flips synthetic=synthetic",
            "gan_filtered": "augment=flips synthetic=synthetic_filtered",
            "gan_classic": "augment=flips,hed_light,hsv_light,bc synthetic=synthetic"}
    for run, what in want.items():
        assert f"clf cells/toy/f0.1/s1/clf_{run} {what}" in log, (run, log)
    # the filtered set was asked of generate with the cell's baseline classifier
    gen = [ln for ln in log if ln.startswith("stage generate") and "f0.1/s1/synthetic_filtered" in ln]
    assert len(gen) == 1 and f"--filter_classifier={cdir}/clf_baseline" in gen[0] \
        and "--min_confidence=val" in gen[0]
    assert "| toy | 10 % | gan | 2 | 20 |" in md and "| toy | 100 % | baseline | 2 | 200 |" in md
    assert (tmp_path / "out" / "roc.png").read_bytes()[:4] == b"\x89PNG"
    # a rerun does nothing new and gives the same table
    n_lines = len(open(tmp_path / "log").readlines())
    md2 = study.run_study(_cfg(tmp_path / "out", real))
    assert md2 == md and len(open(tmp_path / "log").readlines()) == n_lines


def test_slurm_array_cells_then_aggregate_only(real, tmp_path, monkeypatch):
    from histaug_tf.apps import experiment as study
    _stubbed(monkeypatch)
    out = tmp_path / "shared"
    for f in (0.1, 1.0):
        for s in (0, 1):  # one cell per "array task"
            study.run_study(_cfg(out, real, fractions=[f], seeds=[s]))
    os.remove(out / "results.csv")
    md = study.run_study(_cfg(out, real, aggregate_only=True))
    assert len(_read_csv(out / "results.csv")) == 2 * 5 + 2 and "| toy | 10 % | gan | 2 | 20 |" in md
    with pytest.raises(Exception, match="no finished cells"):
        study.run_study(_cfg(tmp_path / "empty", real, aggregate_only=True))


def test_grouped_test_set_uses_the_cluster_bootstrap(real, tmp_path, monkeypatch):
    """When the test patches carry groups, a cell's p-values are the paired cluster bootstrap's
    (recomputed here from the two runs' predictions), with DeLong beside them."""
    from histaug_tf.apps import experiment as study
    from histaug_tf.classifier import evaluate as ev
    from histaug_tf.classifier import train as ct
    monkeypatch.setenv("STUB_GROUPS", "1")
    _stubbed(monkeypatch)
    out = tmp_path / "out"
    md = study.run_study(_cfg(out, real, fractions=[0.5], seeds=[0], arms=["baseline", "gan"],
                              tstr=False))
    row = [r for r in _read_csv(out / "results.csv") if r["arm"] == "gan"][0]
    cdir = out / "cells" / "toy" / "f0.5" / "s0"

    def aligned(run):
        y, p, k = ct.load_predictions(str(cdir / run))
        g = ct.load_groups(str(cdir / run))
        i = np.argsort(k)
        return y[i], p[i], g[i]
    y, pg, g = aligned("clf_gan")
    _, pb, _ = aligned("clf_baseline")
    want = ev.paired_cluster_bootstrap(y, pg, pb, g, n_boot=50, seed=0)
    assert row["p_method"] == "paired cluster bootstrap"
    assert float(row["p_vs_baseline"]) == pytest.approx(want["p_value"], rel=1e-12)
    assert float(row["cluster_p_vs_baseline"]) == float(row["p_vs_baseline"])
    assert float(row["delong_p_vs_baseline"]) == pytest.approx(ev.delong_test(y, pg, pb)["p_value"])
    assert row["auc_cluster_lo"] and row["auc_cluster_hi"]
    assert " cluster)" in md


def test_a_new_arm_runs_only_that_arm(real, tmp_path, monkeypatch):
    """A finished study given one more arm trains only that arm's classifier (no subset, GAN or
    synthetic set again); finished arms keep their results."""
    from histaug_tf.apps import experiment as study
    monkeypatch.setenv("STUB_LOG", str(tmp_path / "log"))
    _stubbed(monkeypatch)
    out = tmp_path / "out"
    study.run_study(_cfg(out, real, fractions=[0.5], seeds=[0], arms=["baseline", "gan"],
                         tstr=False))
    rows = _read_csv(out / "results.csv")
    assert [r["arm"] for r in rows] == ["baseline", "gan"]
    n = len(open(tmp_path / "log").readlines())
    study.run_study(_cfg(out, real, fractions=[0.5], seeds=[0], arms=["baseline", "gan", "classic"],
                         tstr=False))
    new = open(tmp_path / "log").read().splitlines()[n:]
    assert [ln.split()[:2] for ln in new] == [["clf", "cells/toy/f0.5/s0/clf_classic"]], new
    rows2 = _read_csv(out / "results.csv")
    assert [r["arm"] for r in rows2] == ["baseline", "classic", "gan"]
    assert [r["auc"] for r in rows2 if r["arm"] != "classic"] == [r["auc"] for r in rows]
    assert rows2[2]["delta_vs_classic"] != ""  # the finished arm is now also compared with it


def test_filter_refusal_is_a_result(real, tmp_path, monkeypatch):
    """When generate refuses the filtered set (the GAN's patches of a class do not look like it),
    the cell finishes: gan_filtered is a row marked refused, the other arms have their results,
    and a rerun does not ask generate again."""
    from histaug_tf.apps import experiment as study
    from histaug_tf.apps.generate import FILTER_REFUSED
    from histaug_tf.common import UserError
    monkeypatch.setenv("STUB_LOG", str(tmp_path / "log"))
    _stubbed(monkeypatch)
    stub_stage = study.run_stage

    def stage(module, args, log_path):
        if module == "generate" and any(a.startswith("--filter_classifier=") for a in args):
            stub_stage.__globals__["note"]("stage generate refused")
            raise UserError(f"{log_path}: stage generate failed with exit code 1: error: "
                            f"clf: {FILTER_REFUSED} 3 of 40 synthetic 'tumour' patches")
        stub_stage(module, args, log_path)
    monkeypatch.setattr(study, "run_stage", stage)
    out = tmp_path / "out"
    cfg = _cfg(out, real, fractions=[0.5], seeds=[0], tstr=False)
    md = study.run_study(cfg)
    rows = {r["arm"]: r for r in _read_csv(out / "results.csv")}
    assert rows["gan_filtered"]["status"] == "refused by the filter" and not rows["gan_filtered"]["auc"]
    assert all(rows[a]["auc"] for a in ("baseline", "classic", "gan", "gan+classic"))
    assert "| toy | 50 % | gan_filtered | 0 (1 refused) |" in md
    n = len(open(tmp_path / "log").readlines())
    (out / "cells" / "toy" / "f0.5" / "s0" / "cell.json").unlink()
    study.run_study(cfg)
    assert open(tmp_path / "log").read().splitlines()[n:] == []


@pytest.mark.slow
def test_resume_after_sigkill(real, tmp_path):
    driver = tmp_path / "driver.py"
    out = tmp_path / "out"
    log = tmp_path / "stub.log"
    driver.write_text(STUBS + textwrap.dedent(f'''
        import sys
        from absl import app
        from histaug_tf import experiment
        sys.argv = ["experiment", "--outdir={out}", "--data={real}", "--fractions=0.1,0.5,1",
                    "--seeds=0,1", "--n_boot=50", "--resolution=8"]
        app.run(experiment.main)
    '''))
    env = dict(os.environ, STUB_LOG=str(log), STUB_DELAY="0.3",
               PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(driver)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    cells = lambda: sorted(str(p.relative_to(out)) for p in out.rglob("cell.json"))  # noqa: E731
    t0 = time.time()
    while len(cells()) < 2 and time.time() - t0 < 120 and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.4)  # land inside the next cell
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = cells()
    assert 2 <= len(done_before) < 6, done_before
    mtimes = {c: os.path.getmtime(out / c) for c in done_before}
    log_before = log.read_text().splitlines()
    clf_before = [ln for ln in log_before if ln.startswith("clf ")]

    proc = subprocess.run([sys.executable, str(driver)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(cells()) == 6
    for c in done_before:  # finished cells untouched
        assert os.path.getmtime(out / c) == mtimes[c]
    clf_after = [ln for ln in log.read_text().splitlines()[len(log_before):]
                 if ln.startswith("clf ")]
    # no classifier of a finished cell ran again, and at most one run (the interrupted one) twice
    finished_dirs = {os.path.dirname(c) for c in done_before}
    assert not [ln for ln in clf_after if os.path.dirname(ln[4:].strip()) in finished_dirs]
    redone = set(clf_before) & set(clf_after)
    assert len(redone) <= 1, redone
    # every classifier ran: 4 scarce cells × (5 arms + TSTR) + 2 full cells × 1
    assert len(set(clf_before) | set(clf_after)) == 26
    rows = _read_csv(out / "results.csv")
    assert len(rows) == 4 * 5 + 2 and all(r["auc"] for r in rows)
    assert "| toy | 50 % | gan | 2 | 100 |" in proc.stdout  # the table is printed
    # a write cut by the kill leaves at most a hidden temporary file, never a partial result file
    assert {p.name for p in out.iterdir() if not p.name.startswith(".tmp-")} == {
        "cells", "results.csv", "results.md", "roc.png", "report.html"}


def test_per_class_gans(real, tmp_path, monkeypatch):
    """--gan_mode=per_class: one unconditional GAN per class on that class only, and generate
    gets both networks."""
    from histaug_tf.apps import experiment as study
    monkeypatch.setenv("STUB_LOG", str(tmp_path / "log"))
    _stubbed(monkeypatch)
    study.run_study(_cfg(tmp_path / "out", real, fractions=[0.5], seeds=[3], gan_mode="per_class",
                         tstr=False))
    lines = open(tmp_path / "log").read().splitlines()
    gans = [ln for ln in lines if ln.startswith("stage train_gan")]
    assert len(gans) == 2
    for c in (0, 1):
        g = [ln for ln in gans if f"--class_filter={c}" in ln]
        assert len(g) == 1 and "--nocond" in g[0] and f"gan_c{c}" in g[0] and "--seed=3" in g[0]
        assert "subsets/frac0.5" in g[0]  # trained on the cell's subset only
    gen = [ln for ln in lines if ln.startswith("stage generate")][0]
    cdir = str(tmp_path / "out" / "cells" / "toy" / "f0.5" / "s3")
    assert f"--networks=0:{cdir}/gan_c0,1:{cdir}/gan_c1" in gen
    rows = [r for r in _read_csv(tmp_path / "out" / "results.csv") if r["arm"] == "gan"]
    assert len(rows) == 1 and rows[0]["auc"] and not rows[0]["auc_tstr"]


@pytest.mark.slow
def test_changed_flags_refused_then_redone(real, tmp_path):
    """A finished step whose recorded flags differ from the current ones is refused in one line
    naming the step directory and the flags; --redo_changed redoes it and what depends on it (and
    only that); an unchanged rerun redoes nothing."""
    driver = tmp_path / "driver.py"
    out = tmp_path / "out"
    log = tmp_path / "stub.log"
    driver.write_text(STUBS + textwrap.dedent('''
        import sys
        from absl import app
        from histaug_tf import experiment
        from histaug_tf.common import run_main
        sys.argv = ["experiment"] + sys.argv[1:]
        app.run(run_main(experiment.main))
    '''))
    env = dict(os.environ, STUB_LOG=str(log),
               PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    base = [f"--outdir={out}", f"--data={real}", "--fractions=0.5", "--seeds=0", "--n_boot=50",
            "--notstr", "--resolution=8", "--arms=baseline,gan"]
    cdir = out / "cells" / "toy" / "f0.5" / "s0"

    def run(*extra):
        n = len(log.read_text().splitlines()) if log.exists() else 0
        p = subprocess.run([sys.executable, str(driver), *base, *extra], env=env,
                           capture_output=True, text=True, timeout=300)
        return p, log.read_text().splitlines()[n:] if log.exists() else []

    def error_line(p):
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
        lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1, p.stderr[-3000:]
        return lines[0]

    p, ran = run()
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(ran) == 5  # subset, train_gan, generate, clf baseline, clf gan
    cell = (cdir / "cell.json").read_text()

    p, ran = run("--gan_kimg=20")
    line = error_line(p)
    assert line.startswith(f"error: {cdir}/gan: made with other flags (") and \
        "gan_kimg: 10.0 -> 20.0" in line and "--redo_changed" in line, line
    assert ran == [] and (cdir / "cell.json").read_text() == cell

    p, ran = run("--clf_epochs=3")
    line = error_line(p)
    assert line.startswith(f"error: {cdir}/clf_baseline: made with other flags (") and \
        "epochs: 30 -> 3" in line, line
    assert ran == []

    p, ran = run("--subset_args=--shard_size=7")
    line = error_line(p)
    assert line.startswith(f"error: {cdir}/subsets/frac0.5: made with other flags (") and \
        "subset_args: '' -> '--shard_size=7'" in line, line
    assert ran == []

    p, ran = run("--gan_kimg=20", "--redo_changed")
    assert p.returncode == 0, p.stderr[-3000:]
    assert [ln.split()[1] for ln in ran] == ["train_gan", "generate", "cells/toy/f0.5/s0/clf_gan"]
    assert json.loads((cdir / "cell.json").read_text())["flags"]["gan"]["gan_kimg"] == 20.0

    p, ran = run("--gan_kimg=20")  # one-command resume of unchanged steps: nothing redone
    assert p.returncode == 0, p.stderr[-3000:]
    assert ran == []

    # a synthetic set whose labels are the real set's in the other order: refused, no table row
    env["STUB_SYN_LABELS"] = "tumour,normal"
    p, ran = run("--seeds=1")
    line = error_line(p)
    syn = out / "cells" / "toy" / "f0.5" / "s1" / "synthetic"
    assert line == (f"error: {syn}/manifest.json: label order ['tumour', 'normal'] differs from "
                    f"{real}/manifest.json's ['normal', 'tumour'] (the same label index means "
                    "another class)"), line
    assert not (syn.parent / "cell.json").exists() and not (syn.parent / "clf_gan").exists()
    assert {r["seed"] for r in _read_csv(out / "results.csv")} == {"0"}  # seed 0's arms only


@pytest.mark.slow
def test_prepared_dataset_is_verified_once(tmp_path):
    """--prepare: the dataset the study prepared is checked (sha256) right after preparing it; a
    damaged shard stops the study in one line naming it, before any cell runs."""
    driver = tmp_path / "driver.py"
    out = tmp_path / "out"
    driver.write_text(STUBS + textwrap.dedent('''
        import sys
        from absl import app
        from histaug_tf import experiment
        from histaug_tf.common import run_main
        sys.argv = ["experiment"] + sys.argv[1:]
        app.run(run_main(experiment.main))
    '''))
    env = dict(os.environ, STUB_LOG=str(tmp_path / "log"), STUB_DAMAGE="1",
               PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, str(driver), f"--outdir={out}", "--data=prep",
                        "--prepare=synthetic_tissue", "--fractions=0.5", "--seeds=0",
                        "--n_boot=50", "--notstr", "--resolution=8"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    shard = out / "data" / "prep" / "test-00000-of-00001.tfrecord"
    assert lines == [f"error: {shard}: sha256 differs from manifest {out}/data/prep/manifest.json"], \
        p.stderr[-3000:]
    assert not (out / "cells").exists()
    assert not (out / "steps" / "prepare-prep.json").exists()  # not recorded as done
    # a rerun does not take the damaged dataset for a finished step
    p2 = subprocess.run(p.args, env=env, capture_output=True, text=True, timeout=300)
    assert p2.returncode == 1 and [ln for ln in p2.stderr.splitlines()
                                   if ln.startswith("error:")] == lines, p2.stderr[-3000:]
    assert not (out / "cells").exists()
