"""Training configurations (``--cfg``) of StyleGAN2-ADA, plus small CPU presets.

The reference values are NVlabs/stylegan2-ada-pytorch ``train.py`` ``cfg_specs``::

    name       ref_gpus  kimg    mb  mbstd  fmaps  lrate   gamma  ema  ramp  map
    auto       (GPUs)    25000   *   *      *      *       *      *    0.05  2
    stylegan2  8         25000   32  4      1      0.002   10     10   None  8
    paper256   8         25000   64  8      0.5    0.0025  1      20   None  8
    paper512   8         25000   64  8      1      0.0025  0.5    20   None  8
    paper1024  8         25000   32  4      1      0.002   2      10   None  8
    cifar      2         100000  64  32     1      0.0025  0.01   500  0.05  2

``auto`` (``*``) by resolution ``res`` and GPU count ``gpus``:
``mb = max(min(gpus * min(4096 // res, 32), 64), gpus)``, ``mbstd = min(mb // gpus, 4)``,
``fmaps = 1 if res >= 512 else 0.5``, ``lrate = 0.002 if res >= 1024 else 0.0025``,
``gamma = 0.0002 * res**2 / mb``, ``ema = mb * 10 / 32``.

Common to all (train.py / training_loop.py / loss.py defaults): z_dim = w_dim = 512,
channel_base = fmaps * 32768, channel_max = 512, G mapping layers = ``map``, the D label mapping
keeps NVlabs' default (8 layers), num_fp16_res = 4 and conv_clamp = 256 (mixed precision),
Adam(betas (0, 0.99), eps 1e-8), R1 every 16 D steps, path length every 4 G steps
(weight 2, decay 0.01, batch shrink 2), style mixing 0.9. ``cifar`` disables path length
regularisation and style mixing and uses the ``orig`` (non-residual) discriminator.

Small CPU presets (ours):

* ``tiny``: for tests, 16-32 px: z = w = 32, channel_base 512, channel_max 32, 2 mapping layers,
  batch 8, mbstd 4.
* ``demo``: a run of minutes on 2 CPU cores at 32 px: z = w = 512, channel_base 4096,
  channel_max 128 (128 channels at every resolution 4-32), 8 mapping layers, batch 16, mbstd 4,
  lr 0.0025, gamma from the auto formula, ema 10 kimg with ramp-up 0.05, 2 kimg (a pipeline
  demonstration, not a converged GAN). The same configuration is used for the speed comparison
  with NVlabs' PyTorch code.

``batch_gpu`` = ``mb // ref_gpus`` is the reference's samples per GPU and round: on fewer GPUs than
``ref_gpus`` each replica accumulates gradients over several rounds (e.g. paper256 on one GPU: 8
rounds of 8). ``train_gan`` uses it unless ``--batch`` (then one round per replica) or
``--batch_gpu`` is given.

Mixed precision (float16 on the top 4 resolutions) is on for the NVlabs presets only when
``mixed_precision=True`` (default: when a GPU is visible); on CPUs it is off, which changes no
parameter and no result beyond float rounding.
"""
from __future__ import annotations

import copy

from histaug_tf.common import UserError

CFG_SPECS = {
    "auto": dict(ref_gpus=-1, kimg=25000, mb=-1, mbstd=-1, fmaps=-1, lrate=-1, gamma=-1, ema=-1,
                 ramp=0.05, map=2),
    "stylegan2": dict(ref_gpus=8, kimg=25000, mb=32, mbstd=4, fmaps=1, lrate=0.002, gamma=10,
                      ema=10, ramp=None, map=8),
    "paper256": dict(ref_gpus=8, kimg=25000, mb=64, mbstd=8, fmaps=0.5, lrate=0.0025, gamma=1,
                     ema=20, ramp=None, map=8),
    "paper512": dict(ref_gpus=8, kimg=25000, mb=64, mbstd=8, fmaps=1, lrate=0.0025, gamma=0.5,
                     ema=20, ramp=None, map=8),
    "paper1024": dict(ref_gpus=8, kimg=25000, mb=32, mbstd=4, fmaps=1, lrate=0.002, gamma=2,
                      ema=10, ramp=None, map=8),
    "cifar": dict(ref_gpus=2, kimg=100000, mb=64, mbstd=32, fmaps=1, lrate=0.0025, gamma=0.01,
                  ema=500, ramp=0.05, map=2),
}

# Small CPU presets: explicit channel_base instead of fmaps.
CPU_SPECS = {
    "tiny": dict(ref_gpus=1, kimg=1, mb=8, mbstd=4, channel_base=512, channel_max=32,
                 lrate=0.0025, gamma=None, ema=1, ramp=0.05, map=2, z_dim=32, w_dim=32),
    "demo": dict(ref_gpus=1, kimg=2, mb=16, mbstd=4, channel_base=4096, channel_max=128,
                 lrate=0.0025, gamma=None, ema=10, ramp=0.05, map=8, z_dim=512, w_dim=512),
}

PRESETS = tuple(CFG_SPECS) + tuple(CPU_SPECS)

DESCRIPTIONS = {
    "auto": "NVlabs 'auto': hyperparameters from resolution and GPU count",
    "stylegan2": "NVlabs StyleGAN2 config F (with mixed precision)",
    "paper256": "NVlabs ADA paper, 256x256 (half channels)",
    "paper512": "NVlabs ADA paper, 512x512",
    "paper1024": "NVlabs ADA paper, 1024x1024",
    "cifar": "NVlabs ADA paper, CIFAR-10 (orig D, no PL reg, no style mixing)",
    "tiny": "tests: tiny networks (<=32 channels), 16-32 px",
    "demo": "CPU demo: 32 px, 128 channels, 8 mapping layers (minutes on 2 cores)",
}


def _gpu_visible():
    try:
        import tensorflow as tf
        return bool(tf.config.list_physical_devices("GPU"))
    except Exception:  # pragma: no cover
        return False


def get_preset(cfg, resolution, gpus=1, c_dim=0, img_channels=3, mixed_precision=None):
    """Resolve ``cfg`` for a dataset of ``resolution`` trained on ``gpus`` replicas.

    Args:
        cfg: one of :data:`PRESETS`.
        resolution: image size (power of two, >= 8).
        gpus: number of replicas (only ``auto`` depends on it, as the reference).
        c_dim: number of classes (0 = unconditional); filled into G/D kwargs.
        img_channels: 1 or 3.
        mixed_precision: float16 on the top 4 resolutions (NVlabs presets); None = GPU visible.

    Returns:
        dict with ``cfg, description, resolution, ref_gpus, kimg, batch, batch_gpu,
        mbstd_group, fmaps, map_layers, lr, G_lr, D_lr, gamma, ema_kimg, ema_rampup, G_kwargs,
        D_kwargs, G_opt_kwargs, D_opt_kwargs, loss_kwargs, G_reg_interval, D_reg_interval``.
        ``Generator(**p['G_kwargs'])`` and ``Discriminator(**p['D_kwargs'])`` build the networks.
    """
    if cfg not in PRESETS:
        raise UserError(f"--cfg: unknown preset {cfg!r}; choose one of {', '.join(PRESETS)}")
    res = int(resolution)
    if res < 8 or res & (res - 1):
        raise UserError(f"resolution {resolution}: must be a power of two >= 8")
    gpus = int(gpus)
    if gpus < 1:
        raise UserError(f"gpus must be >= 1, got {gpus}")
    if mixed_precision is None:
        mixed_precision = _gpu_visible()

    if cfg in CFG_SPECS:
        spec = dict(CFG_SPECS[cfg])
        if cfg == "auto":
            spec["ref_gpus"] = gpus
            spec["mb"] = max(min(gpus * min(4096 // res, 32), 64), gpus)
            spec["mbstd"] = min(spec["mb"] // gpus, 4)
            spec["fmaps"] = 1 if res >= 512 else 0.5
            spec["lrate"] = 0.002 if res >= 1024 else 0.0025
            spec["gamma"] = 0.0002 * (res ** 2) / spec["mb"]
            spec["ema"] = spec["mb"] * 10 / 32
        channel_base = int(spec["fmaps"] * 32768)
        channel_max = 512
        z_dim = w_dim = 512
        num_fp16_res = 4 if mixed_precision else 0
        conv_clamp = 256
    else:
        spec = dict(CPU_SPECS[cfg])
        spec["fmaps"] = spec["channel_base"] / 32768
        if spec["gamma"] is None:  # the auto heuristic at this resolution and batch
            spec["gamma"] = 0.0002 * (res ** 2) / spec["mb"]
        channel_base = spec["channel_base"]
        channel_max = spec["channel_max"]
        z_dim, w_dim = spec["z_dim"], spec["w_dim"]
        num_fp16_res = 4 if mixed_precision else 0
        conv_clamp = 256

    G_kwargs = dict(z_dim=z_dim, c_dim=int(c_dim), w_dim=w_dim, img_resolution=res,
                    img_channels=int(img_channels),
                    mapping_kwargs=dict(num_layers=spec["map"]),
                    synthesis_kwargs=dict(channel_base=channel_base, channel_max=channel_max,
                                          num_fp16_res=num_fp16_res, conv_clamp=conv_clamp))
    D_kwargs = dict(c_dim=int(c_dim), img_resolution=res, img_channels=int(img_channels),
                    architecture="resnet", channel_base=channel_base, channel_max=channel_max,
                    num_fp16_res=num_fp16_res, conv_clamp=conv_clamp,
                    epilogue_kwargs=dict(mbstd_group_size=spec["mbstd"]))
    loss_kwargs = dict(r1_gamma=spec["gamma"], style_mixing_prob=0.9, pl_weight=2.0,
                       pl_batch_shrink=2, pl_decay=0.01)
    if cfg == "cifar":
        loss_kwargs["pl_weight"] = 0.0
        loss_kwargs["style_mixing_prob"] = 0.0
        D_kwargs["architecture"] = "orig"
    opt = dict(lr=spec["lrate"], betas=(0.0, 0.99), eps=1e-8)
    return copy.deepcopy(dict(
        cfg=cfg, description=DESCRIPTIONS[cfg], resolution=res, ref_gpus=spec["ref_gpus"],
        kimg=spec["kimg"], batch=spec["mb"], batch_gpu=spec["mb"] // max(spec["ref_gpus"], 1),
        mbstd_group=spec["mbstd"], fmaps=spec["fmaps"], map_layers=spec["map"],
        lr=spec["lrate"], G_lr=spec["lrate"], D_lr=spec["lrate"], gamma=spec["gamma"],
        ema_kimg=spec["ema"], ema_rampup=spec["ramp"], mixed_precision=bool(mixed_precision),
        G_kwargs=G_kwargs, D_kwargs=D_kwargs, G_opt_kwargs=dict(opt), D_opt_kwargs=dict(opt),
        loss_kwargs=loss_kwargs, G_reg_interval=4, D_reg_interval=16))
