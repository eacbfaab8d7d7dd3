"""Presets against the values of NVlabs/stylegan2-ada-pytorch train.py (cfg_specs and auto formulas)."""
import pytest

from histaug_tf.common import UserError
from histaug_tf.gan.presets import PRESETS, get_preset

# train.py cfg_specs: (ref_gpus, kimg, mb, mbstd, fmaps, lrate, gamma, ema, ramp, map)
REFERENCE = {
    "stylegan2": (8, 25000, 32, 4, 1, 0.002, 10, 10, None, 8),
    "paper256": (8, 25000, 64, 8, 0.5, 0.0025, 1, 20, None, 8),
    "paper512": (8, 25000, 64, 8, 1, 0.0025, 0.5, 20, None, 8),
    "paper1024": (8, 25000, 32, 4, 1, 0.002, 2, 10, None, 8),
    "cifar": (2, 100000, 64, 32, 1, 0.0025, 0.01, 500, 0.05, 2),
}


@pytest.mark.parametrize("cfg", sorted(REFERENCE))
def test_fixed_presets_match_train_py(cfg):
    ref_gpus, kimg, mb, mbstd, fmaps, lrate, gamma, ema, ramp, mp = REFERENCE[cfg]
    p = get_preset(cfg, 256, mixed_precision=True)
    assert (p["ref_gpus"], p["kimg"], p["batch"], p["mbstd_group"], p["fmaps"]) == (ref_gpus, kimg, mb, mbstd, fmaps)
    assert (p["G_lr"], p["D_lr"], p["gamma"], p["ema_kimg"], p["ema_rampup"], p["map_layers"]) == (lrate, lrate, gamma, ema, ramp, mp)
    assert p["batch_gpu"] == mb // ref_gpus
    syn = p["G_kwargs"]["synthesis_kwargs"]
    assert syn["channel_base"] == int(fmaps * 32768) == p["D_kwargs"]["channel_base"]
    assert syn["channel_max"] == 512 and syn["num_fp16_res"] == 4 and syn["conv_clamp"] == 256
    assert p["G_kwargs"]["mapping_kwargs"]["num_layers"] == mp
    assert p["G_kwargs"]["z_dim"] == p["G_kwargs"]["w_dim"] == 512
    assert p["D_kwargs"]["epilogue_kwargs"]["mbstd_group_size"] == mbstd
    assert p["G_opt_kwargs"] == dict(lr=lrate, betas=(0.0, 0.99), eps=1e-8)
    assert (p["G_reg_interval"], p["D_reg_interval"]) == (4, 16)
    if cfg == "cifar":
        assert p["loss_kwargs"]["pl_weight"] == 0 and p["loss_kwargs"]["style_mixing_prob"] == 0
        assert p["D_kwargs"]["architecture"] == "orig"
    else:
        assert p["loss_kwargs"]["pl_weight"] == 2 and p["loss_kwargs"]["style_mixing_prob"] == 0.9
        assert p["D_kwargs"]["architecture"] == "resnet"


# auto, worked by hand from train.py:
#   mb = max(min(gpus * min(4096 // res, 32), 64), gpus); mbstd = min(mb // gpus, 4)
#   fmaps = 1 if res >= 512 else 0.5; lrate = 0.002 if res >= 1024 else 0.0025
#   gamma = 0.0002 * res**2 / mb; ema = mb * 10 / 32
@pytest.mark.parametrize("res,gpus,mb,mbstd,fmaps,lrate,gamma,ema", [
    (256, 1, 16, 4, 0.5, 0.0025, 0.8192, 5.0),
    (256, 8, 64, 4, 0.5, 0.0025, 0.2048, 20.0),
    (64, 2, 64, 4, 0.5, 0.0025, 0.0128, 20.0),
    (512, 8, 64, 4, 1, 0.0025, 0.8192, 20.0),
    (1024, 8, 32, 4, 1, 0.002, 6.5536, 10.0),
    (1024, 1, 4, 4, 1, 0.002, 52.4288, 1.25),
])
def test_auto_formulas(res, gpus, mb, mbstd, fmaps, lrate, gamma, ema):
    p = get_preset("auto", res, gpus=gpus)
    assert (p["batch"], p["mbstd_group"], p["fmaps"], p["lr"]) == (mb, mbstd, fmaps, lrate)
    assert p["gamma"] == pytest.approx(gamma) and p["ema_kimg"] == pytest.approx(ema)
    assert p["ema_rampup"] == 0.05 and p["map_layers"] == 2 and p["ref_gpus"] == gpus


def test_cpu_presets():
    demo = get_preset("demo", 32, mixed_precision=False)
    syn = demo["G_kwargs"]["synthesis_kwargs"]
    assert (syn["channel_base"], syn["channel_max"], syn["num_fp16_res"]) == (4096, 128, 0)
    assert demo["G_kwargs"]["mapping_kwargs"]["num_layers"] == 8
    assert demo["gamma"] == pytest.approx(0.0002 * 32 ** 2 / demo["batch"])
    tiny = get_preset("tiny", 16, c_dim=2, img_channels=1)
    assert tiny["G_kwargs"]["synthesis_kwargs"]["channel_max"] <= 32
    assert tiny["G_kwargs"]["c_dim"] == tiny["D_kwargs"]["c_dim"] == 2
    assert tiny["G_kwargs"]["img_channels"] == tiny["D_kwargs"]["img_channels"] == 1


def test_every_preset_resolves_and_bad_input_is_a_user_error():
    for cfg in PRESETS:
        p = get_preset(cfg, 64)
        assert p["cfg"] == cfg and p["description"]
    with pytest.raises(UserError):
        get_preset("nope", 64)
    with pytest.raises(UserError):
        get_preset("auto", 48)
    with pytest.raises(UserError):
        get_preset("auto", 64, gpus=0)
