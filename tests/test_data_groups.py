"""Own data done right: groups (slide/patient) from the path or a table column, splits by group
that never cut a slide, explicit classes, subsets by whole groups, and the manifest check that no
group straddles two splits."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from histaug_tf.common import UserError
from histaug_tf.data.convert import convert
from histaug_tf.data.folder import split_groups
from histaug_tf.data.manifest import load_manifest
from histaug_tf.data.pipeline import make_dataset
from histaug_tf.data.subsets import make_subsets, select_groups

S = 8


def _slides(root, n_slides=12, per_slide=40, classes=("normal", "tumour")):
    """<class>/<slide>/<patch>.png: slide k holds class k % 2, every patch with the slide's colour
    cast (what makes slide leakage inflate a classifier)."""
    rng = np.random.default_rng(0)
    truth = {}
    for k in range(n_slides):
        c = classes[k % 2]
        cast = rng.integers(0, 200, 3)
        d = os.path.join(root, c, f"slide{k:02d}")
        os.makedirs(d)
        for j in range(per_slide):
            img = np.clip(cast + rng.integers(0, 50, (S, S, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(d, f"p{j:02d}.png"))
            truth[f"folder/{c}/slide{k:02d}/p{j:02d}"] = f"slide{k:02d}"
    return truth


def _slides_by_split(out):
    got = {}
    for split in ("train", "valid", "test"):
        for ex in make_dataset(out, split, with_meta=True, pixel_range=None):
            got.setdefault(split, set()).add(ex["key"].numpy().decode().split("/")[2])
    return got


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("own") / "src")
    return root, _slides(root)


def test_random_split_leaks_slides_grouped_split_does_not(slides, tmp_path):
    src, truth = slides
    rand = str(tmp_path / "random")
    m = convert("folder", rand, src=src, workers=0, quiet=True, label_names=["normal", "tumour"])
    assert m["grouping"] == "none"
    r = _slides_by_split(rand)
    shared = r["train"] & r["test"]
    assert len(shared) >= 6, r  # patch by patch: most slides are in both train and test
    grp = str(tmp_path / "grouped")
    m = convert("folder", grp, src=src, workers=0, quiet=True, label_names=["normal", "tumour"],
                group_from="parent")
    assert m["grouping"] == "parent folder" and m["positive_class"] == "tumour"
    g = _slides_by_split(grp)
    for a in g:
        for b in g:
            assert a == b or not (g[a] & g[b]), (a, b, g)
    assert set().union(*g.values()) == {f"slide{k:02d}" for k in range(12)}
    assert {s: sorted(v) for s, v in g.items()} == {s: m["groups"][s] for s in g}
    # every record's group is its slide
    for ex in make_dataset(grp, "train", with_meta=True, pixel_range=None):
        assert ex["group"].numpy().decode() == truth[ex["key"].numpy().decode()]
    # the same with a regex on the path
    rx = str(tmp_path / "regex")
    m2 = convert("folder", rx, src=src, workers=0, quiet=True, label_names=["normal", "tumour"],
                 group_regex=r"/(slide\d+)/")
    assert m2["groups"] == m["groups"]


def test_split_groups_fractions_and_strata():
    gl = {f"g{i}": [i % 2] * (5 + i % 7) for i in range(60)}
    a = split_groups(gl, (0.7, 0.15, 0.15), 3)
    assert a == split_groups(gl, (0.7, 0.15, 0.15), 3) != split_groups(gl, (0.7, 0.15, 0.15), 4)
    for c in (0, 1):  # per class stratum, the example shares are close to the fractions
        tot = sum(len(v) for g, v in gl.items() if v[0] == c)
        for s, f in (("train", 0.7), ("valid", 0.15), ("test", 0.15)):
            n = sum(len(v) for g, v in gl.items() if v[0] == c and a[g] == s)
            assert abs(n / tot - f) < 0.06, (c, s, n / tot)


def test_two_classes_need_an_order(tmp_path):
    src = tmp_path / "idc"
    rng = np.random.default_rng(1)
    for c in ("IDC", "non-IDC"):
        for k in range(3):
            d = src / c / f"pat{c}{k}"
            d.mkdir(parents=True)
            for j in range(4):
                Image.fromarray(rng.integers(0, 255, (S, S, 3), dtype=np.uint8)).save(d / f"{j}.png")
    with pytest.raises(UserError) as e:
        convert("folder", str(tmp_path / "o"), src=str(src), workers=0, quiet=True)
    msg = str(e.value)
    assert msg.startswith(f"{src}: two classes ['IDC', 'non-IDC'] and no order") and \
        "--positive_class" in msg and "--label_names" in msg
    assert not (tmp_path / "o").exists() or not os.listdir(tmp_path / "o")
    m = convert("folder", str(tmp_path / "o1"), src=str(src), workers=0, quiet=True,
                label_names=["non-IDC", "IDC"], group_from="parent")
    assert m["label_names"] == ["non-IDC", "IDC"] and m["positive_class"] == "IDC"
    for ex in make_dataset(str(tmp_path / "o1"), "train", with_meta=True, pixel_range=None):
        cls = ex["key"].numpy().decode().split("/")[1]
        assert int(ex["label"]) == (1 if cls == "IDC" else 0)
    m = convert("folder", str(tmp_path / "o2"), src=str(src), workers=0, quiet=True,
                positive_class="IDC")
    assert m["label_names"] == ["non-IDC", "IDC"]


def test_table_input(slides, tmp_path):
    src, truth = slides
    table = os.path.join(src, "labels.csv")
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group"])
        for key, slide in sorted(truth.items()):
            rel = key[len("folder/"):] + ".png"
            w.writerow([rel, rel.split("/")[0], slide])
        w.writerow(["", "tumour", "x"])                         # a bad row: counted
    m = convert("table", str(tmp_path / "t"), src=table, workers=0, quiet=True,
                positive_class="tumour")
    assert m["input_report"]["bad_rows"]["count"] == 1
    assert m["grouping"] == "table column 'group'" and sum(
        v["num_examples"] for v in m["splits"].values()) == 480
    g = _slides_by_split(str(tmp_path / "t"))
    assert not (g["train"] & g["test"]) and not (g["train"] & g["valid"])
    with open(table, "a", newline="") as f:
        f.write("tumour/slide01/missing.png,tumour,slide01\n")
    with pytest.raises(UserError, match=r"labels.csv:\d+: image tumour/slide01/missing.png not found"):
        convert("table", str(tmp_path / "t2"), src=table, workers=0, quiet=True,
                positive_class="tumour")
    os.remove(table)


def test_subsets_by_group_and_the_manifest_check(slides, tmp_path):
    src, truth = slides
    d = str(tmp_path / "ds")
    convert("folder", d, src=src, workers=0, quiet=True, label_names=["normal", "tumour"],
            group_from="parent", split="0.7,0.15,0.15")
    res = make_subsets(d, "0.2,0.5", 0, str(tmp_path / "sub"), quiet=True, by="group")
    train_groups = load_manifest(d)["groups"]["train"]
    n_train = load_manifest(d)["splits"]["train"]["num_examples"]
    got = {}
    for f in (0.2, 0.5):
        keys = [ex["key"].numpy().decode() for ex in make_dataset(
            str(tmp_path / "sub" / f"frac{f:g}"), "train", with_meta=True, pixel_range=None)]
        slides_in = {truth[k] for k in keys}
        assert all(sum(truth[k] == s for k in keys) == 40 for s in slides_in)  # whole slides
        assert slides_in <= set(train_groups)
        assert abs(len(keys) / n_train - f) <= 40 / n_train + 1e-9
        assert res[f]["groups"]["train"] == sorted(slides_in)
        got[f] = slides_in
    assert got[0.2] < got[0.5]
    with pytest.raises(UserError, match="--by=group needs patches grouped"):
        rd = str(tmp_path / "rand")
        convert("folder", rd, src=src, workers=0, quiet=True, label_names=["normal", "tumour"])
        make_subsets(rd, "0.2", 0, str(tmp_path / "sub2"), quiet=True, by="group")
    # a manifest whose groups straddle two splits is refused when read
    p = os.path.join(d, "manifest.json")
    m = json.load(open(p))
    m["groups"]["test"].append(m["groups"]["train"][0])
    json.dump(m, open(p, "w"))
    with pytest.raises(UserError, match=rf"group '{m['groups']['train'][0]}' is in splits"):
        load_manifest(d)


def test_select_groups_nested_and_close():
    gl = {f"g{i}": [i % 2] * (10 + i % 5) for i in range(40)}
    sel = select_groups(gl, [0.1, 0.3], 0)
    assert sel[0.1] < sel[0.3]
    for f in (0.1, 0.3):
        for c in (0, 1):
            tot = sum(len(v) for v in gl.values() if v[0] == c)
            n = sum(len(gl[g]) for g in sel[f] if gl[g][0] == c)
            assert abs(n - f * tot) <= 7, (f, c, n, f * tot)  # within half the largest group
