"""report.html: every cell of the study is in it, every picture is embedded and decodes as an image,
real and synthetic patches per class are the datasets' own pixels, and what is missing is said."""
import base64
import io
import os
import re

import numpy as np
from PIL import Image

from test_experiment import _cfg, _real_dataset, _stubbed


def _fake_grid(path, value):
    Image.fromarray(np.full((16, 32, 3), value, np.uint8)).save(path)


def test_report_lists_every_cell_with_embedded_pictures(tmp_path, monkeypatch):
    from histaug_tf.apps import experiment as study, report
    real = _real_dataset(tmp_path / "toy")
    _stubbed(monkeypatch)
    stub_stage = study.run_stage

    def stage(module, args, log_path):
        stub_stage(module, args, log_path)
        if module == "train_gan":
            rd = [a.split("=", 1)[1] for a in args if a.startswith("--outdir=")][0]
            _fake_grid(os.path.join(rd, "fakes_init.png"), 10)
            _fake_grid(os.path.join(rd, "fakes000004.png"), 200)
        if module == "generate":  # the stub's synthetic set has the subset's pixels: make it differ
            from histaug_tf.data.writer import DatasetWriter
            rd = [a.split("=", 1)[1] for a in args if a.startswith("--outdir=")][0]
            rng = np.random.default_rng(99)
            with DatasetWriter(rd, "syn", (8, 8, 3), encoding="raw", overwrite=True) as w:
                for c in (0, 1):
                    for i in range(10):
                        w.add("train", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), c,
                              f"syn/{c}/{i}", "syn", source="synthetic")

    monkeypatch.setattr(study, "run_stage", stage)
    out = tmp_path / "out"
    study.run_study(_cfg(out, real, fractions=[0.1, 1.0], seeds=[0, 1]))
    path = out / "report.html"
    idx = report.report_index(str(path))
    cells = sorted(r["dir"] for r in study.load_cells(str(out)))
    assert sorted(idx["cells"]) == cells and len(cells) == 4
    # ROC + per cell (4) a reliability diagram + per GAN cell (2): 2 classes x (real +
    # synthetic) + 2 fakes grids + closest pairs
    assert idx["images"] == 1 + 4 + 2 * (2 * 2 + 2 + 1), idx
    assert idx["missing"] == []
    text = path.read_text()
    uris = re.findall(r'<img src="data:image/png;base64,([^"]+)"', text)
    for u in uris:
        Image.open(io.BytesIO(base64.b64decode(u))).load()
    # The first real grid of the first GAN cell holds exactly the subset's first class-0 patches.
    from histaug_tf.data.pipeline import make_dataset
    gan_cell = [c for c in cells if "/f0.1/" in c or "f0p1" in c or "f0.1" in c][0]
    sub = [d for d in (out / gan_cell / "subsets").iterdir() if (d / "manifest.json").exists()][0]
    first = next(iter(make_dataset(str(sub), "train", pixel_range=None, batch_size=8, class_filter=0,
                                   deterministic=True)))[0].numpy()
    section = text.split(f'<h3 id="{gan_cell}"')[1]
    grid = np.asarray(Image.open(io.BytesIO(base64.b64decode(
        re.findall(r'<img src="data:image/png;base64,([^"]+)"', section)[1]))))
    expect = np.concatenate(list(first), axis=1)
    assert grid.shape == expect.shape and np.array_equal(grid, expect)
    syn = next(iter(make_dataset(str(out / gan_cell / "synthetic"), "train", pixel_range=None,
                                 batch_size=8, class_filter=1, deterministic=True)))[0].numpy()
    syn_grid = np.asarray(Image.open(io.BytesIO(base64.b64decode(
        re.findall(r'<img src="data:image/png;base64,([^"]+)"', section)[4]))))
    assert np.array_equal(syn_grid, np.concatenate(list(syn), axis=1))
    assert not np.array_equal(syn_grid, expect)
    assert "+11.3 %" in text and "seed 1" in text


def test_missing_pictures_are_named(tmp_path, monkeypatch):
    from histaug_tf.apps import experiment as study, report
    real = _real_dataset(tmp_path / "toy")
    _stubbed(monkeypatch)
    out = tmp_path / "out"
    study.run_study(_cfg(out, real, fractions=[0.1], seeds=[0]))
    idx = report.report_index(str(out / "report.html"))
    assert any("fakes" in m for m in idx["missing"]), idx    # the stub GAN wrote no fakes
