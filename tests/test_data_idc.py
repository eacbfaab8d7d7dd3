"""IDC and folder conversion on trees built here: patient-level splits, labels from folder and
filename, undersized patches, stray files, the nested duplicate tree, bad files."""
import collections
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from histaug_tf.common import UserError
from histaug_tf.data import pipeline
from histaug_tf.data.convert import convert
from histaug_tf.data.idc import split_patients

from test_data_pcam import error_lines, run_cli  # noqa: E402  (same tests dir)


def make_idc(root, n_patients=10, seed=0, nested=True):
    """Returns {key: (image uint8 as stored, label, patient)} and the number of undersized files."""
    rng = np.random.default_rng(seed)
    truth, undersized = {}, 0
    for p in range(n_patients):
        pid = str(8860 + 7 * p)
        for lab in (0, 1):
            d = os.path.join(root, pid, str(lab))
            os.makedirs(d)
            for j in range(int(rng.integers(2, 6))):
                x, y = 51 * j + 1, 101 * lab + 1
                h, w = (50, 50)
                if rng.random() < 0.2:
                    h, w = int(rng.integers(20, 50)), int(rng.integers(30, 51))
                    undersized += 1
                img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(img).save(os.path.join(d, f"{pid}_idx5_x{x}_y{y}_class{lab}.png"))
                truth[f"idc/{pid}/x{x}_y{y}"] = (img, lab, pid)
        open(os.path.join(root, pid, ".DS_Store"), "wb").write(b"\0\1junk")
        open(os.path.join(root, pid, "0", ".DS_Store"), "wb").write(b"\0\1junk")
    open(os.path.join(root, "README.txt"), "w").write("IDC dataset")
    if nested:  # the archive's nested duplicate of (some of) the tree
        os.makedirs(os.path.join(root, "IDC_regular_ps50_idx5"))
        for pid in sorted(os.listdir(root))[:3]:
            if pid.isdigit():
                shutil.copytree(os.path.join(root, pid), os.path.join(root, "IDC_regular_ps50_idx5", pid))
    return truth, undersized


def read_all(out, split):
    return {ex["key"].numpy().decode(): (ex["image"].numpy(), int(ex["label"]), ex["group"].numpy().decode())
            for ex in pipeline.make_dataset(out, split, pixel_range=None, with_meta=True)}


def test_idc_splits_labels_undersized_strays(tmp_path):
    src, out = str(tmp_path / "idc"), str(tmp_path / "out")
    truth, n_under = make_idc(src)
    assert n_under > 0
    m = convert("idc", out, src=src, split="0.6,0.2,0.2", split_seed=0, shard_size=7, workers=0, quiet=True)
    got, patients_of = {}, {}
    for split in ("train", "valid", "test"):
        recs = read_all(out, split)
        assert len(recs) == m["splits"][split]["num_examples"]
        labs = collections.Counter(r[1] for r in recs.values())
        assert set(labs) == {0, 1}, split  # both classes in every split
        assert m["splits"][split]["class_counts"] == [labs[0], labs[1]]
        for k in recs:
            assert k not in got, f"duplicate {k}"
        got.update(recs)
        patients_of[split] = {r[2] for r in recs.values()}
    assert not (patients_of["train"] & patients_of["valid"]) and not (patients_of["train"] & patients_of["test"])
    assert not (patients_of["valid"] & patients_of["test"])
    assert set(got) == set(truth)  # nothing from the nested copy, nothing lost
    for key, (img, lab, pid) in got.items():
        src_img, src_lab, src_pid = truth[key]
        assert lab == src_lab and pid == src_pid and key.startswith(f"idc/{pid}/")
        ref = np.full((50, 50, 3), 255, np.uint8)  # undersized: padded bottom/right with white
        ref[: src_img.shape[0], : src_img.shape[1]] = src_img
        np.testing.assert_array_equal(img, ref)
    rep = m["input_report"]
    assert rep["undersized_padded"] == n_under and rep["undersized_dropped"] == 0
    ign = rep["ignored"]["paths"]
    assert "README.txt" in ign and "IDC_regular_ps50_idx5" in ign
    assert any(p.endswith(".DS_Store") for p in ign)
    assert m["label_names"] == ["normal", "idc"]
    assert sorted(sum(rep["patients"].values(), []), key=int) == sorted({v[2] for v in truth.values()}, key=int)

    out2 = str(tmp_path / "out2")
    m2 = convert("idc", out2, src=src, split="0.6,0.2,0.2", undersized="drop", workers=2, quiet=True)
    assert m2["input_report"]["undersized_dropped"] == n_under
    assert sum(v["num_examples"] for v in m2["splits"].values()) == len(truth) - n_under
    # the same seed gives the same patient split; the labels must still match
    assert m2["input_report"]["patients"] == rep["patients"]


def test_patient_split_stratified_and_seeded():
    rng = np.random.default_rng(0)
    pos = {str(i): float(rng.random()) for i in range(279)}
    a = split_patients(pos, (0.7, 0.15, 0.15), 0)
    b = split_patients(pos, (0.7, 0.15, 0.15), 0)
    c = split_patients(pos, (0.7, 0.15, 0.15), 1)
    assert a == b and a != c
    cnt = collections.Counter(a.values())
    assert abs(cnt["train"] - 0.7 * 279) <= 1 and abs(cnt["valid"] - 0.15 * 279) <= 1
    for s in ("train", "valid", "test"):  # each split spans the range of tumour fractions
        fr = np.array([pos[p] for p in a if a[p] == s])
        assert abs(np.median(fr) - 0.5) < 0.12 and fr.min() < 0.1 and fr.max() > 0.9


def test_idc_class_mismatch_error_and_skip_bad(tmp_path):
    src, out = str(tmp_path / "idc"), str(tmp_path / "out")
    truth, _ = make_idc(src, nested=False)
    pid = sorted(d for d in os.listdir(src) if d.isdigit())[0]
    bad = os.path.join(src, pid, "0", f"{pid}_idx5_x9999_y9999_class1.png")
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(bad)
    rc, err = run_cli("--dataset=idc", f"--src={src}", f"--out={out}", "--workers=0")
    assert rc == 1 and error_lines(err) == [
        f"error: {bad}: filename says class1 but the file is in folder '0' (pass --skip_bad to skip such files)"]
    assert not os.path.exists(out)
    m = convert("idc", out, src=src, skip_bad=True, workers=0, quiet=True)
    assert m["input_report"]["skipped"] == [
        {"file": os.path.relpath(bad, src), "problem": "filename says class1 but the file is in folder '0'"}]
    assert sum(v["num_examples"] for v in m["splits"].values()) == len(truth)


def test_idc_corrupt_image(tmp_path):
    src, out = str(tmp_path / "idc"), str(tmp_path / "out")
    make_idc(src, n_patients=6, nested=False)
    pid = sorted(d for d in os.listdir(src) if d.isdigit())[2]
    f = sorted(os.listdir(os.path.join(src, pid, "1")))[0]
    p = os.path.join(src, pid, "1", f)
    blob = open(p, "rb").read()
    open(p, "wb").write(blob[:60])  # truncated PNG
    rc, err = run_cli("--dataset=idc", f"--src={src}", f"--out={out}", "--workers=0", "--split=0.5,0.25,0.25")
    lines = error_lines(err)
    assert rc == 1 and len(lines) == 1 and lines[0].startswith(f"error: {p}: corrupt or unreadable image")
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    m = convert("idc", out, src=src, split="0.5,0.25,0.25", skip_bad=True, workers=0, overwrite=True, quiet=True)
    assert [s["file"] for s in m["input_report"]["skipped"]] == [os.path.relpath(p, src)]


def test_idc_too_few_patients(tmp_path):
    src = str(tmp_path / "idc")
    make_idc(src, n_patients=2, nested=False)
    with pytest.raises(UserError, match="too few patients"):
        convert("idc", str(tmp_path / "out"), src=src, workers=0, quiet=True)


def test_folder_dataset(tmp_path):
    src, out = str(tmp_path / "f"), str(tmp_path / "out")
    rng = np.random.default_rng(3)
    truth = {}
    for cname in ("benign", "malignant", "aa_other"):
        os.makedirs(os.path.join(src, cname))
        for j in range(10):
            img = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            ext = ".png" if j % 2 else ".tif"
            Image.fromarray(img).save(os.path.join(src, cname, f"im{j}{ext}"))
            truth[f"folder/{cname}/im{j}"] = (img, cname)
    open(os.path.join(src, "benign", "notes.md"), "w").write("x")
    m = convert("folder", out, src=src, split="0.6,0.2,0.2", workers=0, quiet=True)
    assert m["label_names"] == ["aa_other", "benign", "malignant"]
    assert m["label_map"] == {"aa_other": 0, "benign": 1, "malignant": 2}
    got = {}
    for split in ("train", "valid", "test"):
        recs = read_all(out, split)
        assert m["splits"][split]["class_counts"] == [{"train": 6, "valid": 2, "test": 2}[split]] * 3
        got.update(recs)
    assert set(got) == set(truth)
    for k, (img, lab, _) in got.items():
        np.testing.assert_array_equal(img, truth[k][0])
        assert m["label_names"][lab] == truth[k][1]
    assert m["input_report"]["ignored"]["paths"] == ["benign/notes.md"]
    # a corrupt jpg: one line naming it
    open(os.path.join(src, "benign", "broken.jpg"), "wb").write(b"\xff\xd8\xff\xe0garbage")
    rc, err = run_cli("--dataset=folder", f"--src={src}", f"--out={tmp_path / 'o2'}", "--workers=0")
    assert rc == 1 and error_lines(err)[0].startswith(f"error: {os.path.join(src, 'benign', 'broken.jpg')}: corrupt")
