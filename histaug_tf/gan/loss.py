"""StyleGAN2-ADA losses: non-saturating logistic, lazy R1, path length regularisation, style mixing.

Semantics follow NVlabs stylegan2-ada-pytorch ``training/loss.py`` / ``training_loop.py``:

* Gmain: ``softplus(-D(G(z)))`` per sample.
* Greg (every ``G_reg_interval`` = 4 steps): path length penalty on ``batch_gpu // pl_batch_shrink``
  samples per round; ``pl_lengths = sqrt(mean_w(sum_c(d(sum(img * noise)) / dws)^2))`` with
  ``noise ~ N(0,1) / sqrt(H*W)``; ``pl_mean <- lerp(pl_mean, mean(pl_lengths), pl_decay)``
  (the gradient flows through the freshly lerped mean as in the reference);
  loss ``pl_weight * (pl_lengths - pl_mean)^2`` times the phase gain (the interval).
* Dmain: ``softplus(D(G(z))) + softplus(-D(x))`` per sample.
* Dreg (every ``D_reg_interval`` = 16 steps): R1 ``gamma/2 * ||dD(x)/dx||^2`` times the gain;
  it reports the signs of D(real) too, which ADA's r_t averages with those of Dmain.
* Without lazy regularisation (interval None) the trainer runs Gboth/Dboth every step: the main
  loss and the regulariser in one phase with gain 1 (``D_both`` shares one D(aug(x)) forward).
* Augmentation (ADA) is applied inside ``run_D`` to real and fake images, so R1 differentiates
  through the augment pipe with respect to the un-augmented real images.
* Style mixing: with probability ``style_mixing_prob`` the ws from a second latent replace the
  first ones from a cutoff drawn uniformly in ``[1, num_ws)``.

All randomness (latents, mixing latents, cutoff, path-length noise) is an explicit input, drawn by
the trainer from a stateless RNG keyed on (seed, step, phase): the loss is a pure function of its
inputs and the variables, which makes distributed runs equal to single-replica runs and resumed
runs equal to uninterrupted ones. Functions return *per-sample* losses; the trainer sums them and
divides by the samples of one round on all replicas (the reference's per-round ``mean``, averaged
over GPUs), multiplied by the phase gain; the rounds' gradients are summed.

Also here: ``lazy_regularization`` (lr/beta rescaling) and the G EMA schedule
(``ema_beta``, ``update_ema``).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from histaug_tf.gan.layers import tf_variable


# ---------------------------------------------------------------------------------------------
# Schedules.

def lazy_regularization(lr: float, betas: tuple[float, float], reg_interval: int | None):
    """Lazy regularisation rescaling: ``c = I/(I+1)``; returns ``(lr*c, (b1**c, b2**c))``.

    With ``reg_interval`` None (no lazy regularisation) the values are returned unchanged.
    """
    if not reg_interval:
        return float(lr), tuple(float(b) for b in betas)
    c = reg_interval / (reg_interval + 1)
    return float(lr) * c, tuple(float(b) ** c for b in betas)


def ema_beta(batch_size: int, cur_nimg: int, ema_kimg: float, ema_rampup: float | None) -> float:
    """The G EMA decay per step: ``0.5 ** (batch / max(ema_nimg, 1e-8))`` where
    ``ema_nimg = ema_kimg * 1000``, limited to ``cur_nimg * ema_rampup`` when a ramp-up is set."""
    ema_nimg = ema_kimg * 1000.0
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


def paired_variables(src_model, dst_model):
    """Pairs (src_var, dst_var) of two models of identical structure, matched by position and
    checked by shape. Trainable variables first, then the rest (buffers)."""
    pairs = []
    for kind in ("trainable_variables", "non_trainable_variables"):
        s, d = list(getattr(src_model, kind)), list(getattr(dst_model, kind))
        if len(s) != len(d):
            raise ValueError(f"models differ: {len(s)} vs {len(d)} {kind}")
        for a, b in zip(s, d):
            if tuple(a.shape) != tuple(b.shape):
                raise ValueError(f"variable shapes differ: {a.path} {a.shape} vs {b.path} {b.shape}")
            pairs.append((a, b, kind == "trainable_variables"))
    return pairs


def update_ema(G, G_ema, beta):
    """``p_ema <- lerp(p, p_ema, beta) = p + (p_ema - p) * beta`` for trainable variables; buffers
    (w_avg, constant noise, ...) copied. Call in cross-replica context (or without a strategy)."""
    beta = tf.convert_to_tensor(beta, tf.float32)
    for p, p_ema, trainable in paired_variables(G, G_ema):
        v = tf_variable(p)
        if trainable and v.dtype.is_floating:
            b = tf.cast(beta, v.dtype)
            p_ema.assign(v + (p_ema.value - v) * b)
        else:
            p_ema.assign(v)


# ---------------------------------------------------------------------------------------------
# Loss.

def _nhwc_spatial(img):
    return int(img.shape[1]) * int(img.shape[2])


class StyleGAN2Loss:
    """The StyleGAN2(-ADA) objectives as pure per-sample functions of explicit random inputs.

    Args:
      G: generator with ``G.mapping(z, c, update_emas=False)`` -> ws ``[N, num_ws, w_dim]`` and
        ``G.synthesis(ws, noise_mode=...)`` -> images NHWC in [-1, 1].
      D: discriminator, ``D(img, c)`` -> logits ``[N, 1]``.
      augment_pipe: callable applied to images before D (ADA), or None.
      r1_gamma: R1 weight gamma (penalty ``gamma/2 * ||grad||^2``).
      style_mixing_prob, pl_weight, pl_batch_shrink, pl_decay: as in the reference.
      noise_mode: per-layer noise in synthesis during training ('random'; 'const'/'none' for
        deterministic tests).
    """

    # Every statistic the objectives below report (per sample), by name: what the trainer
    # accumulates per tick (gan/stats.py). The reference's ``training_stats.report`` names.
    STAT_NAMES = (
        "Loss/G/loss", "Loss/G/reg", "Loss/pl_penalty",
        "Loss/D/loss", "Loss/D/reg", "Loss/r1_penalty",
        "Loss/scores/fake", "Loss/signs/fake", "Loss/scores/real", "Loss/signs/real",
    )

    def __init__(self, G, D, augment_pipe=None, r1_gamma=10.0, style_mixing_prob=0.9,
                 pl_weight=2.0, pl_batch_shrink=2, pl_decay=0.01, noise_mode="random"):
        self.G = G
        self.D = D
        self.augment_pipe = augment_pipe
        self.r1_gamma = float(r1_gamma)
        self.style_mixing_prob = float(style_mixing_prob)
        self.pl_weight = float(pl_weight)
        self.pl_batch_shrink = int(pl_batch_shrink)
        self.pl_decay = float(pl_decay)
        self.noise_mode = noise_mode

    # -- randomness helpers (used by the trainer; stateless, keyed by an int32[2] seed) --------

    def mixing_cutoff(self, seed):
        """Cutoff index for style mixing: uniform in [1, num_ws) with prob ``style_mixing_prob``,
        else ``num_ws`` (no mixing). ``seed`` is a stateless seed (int32/int64 [2])."""
        num_ws = int(self.G.num_ws)
        if self.style_mixing_prob <= 0 or num_ws < 2:
            return tf.constant(num_ws, tf.int32)
        s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        cutoff = tf.random.stateless_uniform([], s1, minval=1, maxval=num_ws, dtype=tf.int32)
        u = tf.random.stateless_uniform([], s2)
        return tf.where(u < self.style_mixing_prob, cutoff, tf.constant(num_ws, tf.int32))

    # -- forward passes --------------------------------------------------------------------------

    def run_G(self, z, c, mix_z=None, cutoff=None):
        """Returns ``(img, ws, ws_unmixed_first)``: ``ws`` after style mixing (when ``mix_z`` is
        given), and the first mapping's ``ws[:, 0]`` (for the w_avg tracking done by the caller)."""
        ws = self.G.mapping(z, c, update_emas=False)
        w0 = ws[:, 0]
        if mix_z is not None and cutoff is not None:
            ws2 = self.G.mapping(mix_z, c, update_emas=False)
            idx = tf.range(tf.shape(ws)[1])[tf.newaxis, :, tf.newaxis]
            ws = tf.where(idx < cutoff, ws, ws2)
        img = self.G.synthesis(ws, noise_mode=self.noise_mode)
        return img, ws, w0

    def run_D(self, img, c):
        if self.augment_pipe is not None:
            img = self.augment_pipe(img)
        return self.D(img, c)

    # -- phases ----------------------------------------------------------------------------------

    def G_main(self, z, c, mix_z=None, cutoff=None):
        """Gmain per-sample loss ``softplus(-D(G(z)))`` and stats."""
        img, _, w0 = self.run_G(z, c, mix_z, cutoff)
        logits = tf.cast(self.run_D(img, c), tf.float32)
        loss = tf.nn.softplus(-logits)[:, 0]
        return loss, {"Loss/G/loss": loss, "Loss/scores/fake": logits[:, 0],
                      "Loss/signs/fake": tf.sign(logits[:, 0])}, w0

    def G_pl(self, z, c, pl_noise, pl_mean, mix_z=None, cutoff=None, mean_fn=None):
        """Path length regularisation on ``z`` (the caller passes the shrunk batch).

        ``pl_noise`` is standard normal noise with the image's shape (divided by sqrt(H*W) here).
        ``mean_fn`` averages ``pl_lengths`` over the *global* pl batch (an all-reduce under a
        strategy); defaults to the local mean.
        Returns ``(per-sample loss = pl_weight * penalty, new_pl_mean, stats, w0)``.
        """
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            ws = self.G.mapping(z, c, update_emas=False)
            w0 = ws[:, 0]
            if mix_z is not None and cutoff is not None:
                ws2 = self.G.mapping(mix_z, c, update_emas=False)
                idx = tf.range(tf.shape(ws)[1])[tf.newaxis, :, tf.newaxis]
                ws = tf.where(idx < cutoff, ws, ws2)
            tape.watch(ws)
            img = self.G.synthesis(ws, noise_mode=self.noise_mode)
            noise = tf.cast(pl_noise, img.dtype) / np.sqrt(_nhwc_spatial(img))
            out = tf.reduce_sum(tf.cast(img * noise, tf.float32))
        grads = tape.gradient(out, ws)
        grads = tf.cast(grads, tf.float32)
        pl_lengths = tf.sqrt(tf.reduce_mean(tf.reduce_sum(tf.square(grads), axis=2), axis=1))
        batch_mean = mean_fn(pl_lengths) if mean_fn is not None else tf.reduce_mean(pl_lengths)
        new_pl_mean = pl_mean + (batch_mean - pl_mean) * self.pl_decay
        penalty = tf.square(pl_lengths - new_pl_mean)
        loss = penalty * self.pl_weight
        return loss, tf.stop_gradient(new_pl_mean), {"Loss/pl_penalty": penalty,
                                                      "Loss/G/reg": loss}, w0

    def D_main(self, real, real_c, z, c, mix_z=None, cutoff=None):
        """Dmain per-sample loss ``softplus(D(G(z))) + softplus(-D(x))`` and stats.
        Fake images are computed without a gradient path to G."""
        img, _, w0 = self.run_G(z, c, mix_z, cutoff)
        img = tf.stop_gradient(img)
        fake_logits = tf.cast(self.run_D(img, c), tf.float32)[:, 0]
        real_logits = tf.cast(self.run_D(real, real_c), tf.float32)[:, 0]
        loss = tf.nn.softplus(fake_logits) + tf.nn.softplus(-real_logits)
        return loss, {"Loss/D/loss": loss,
                      "Loss/scores/fake": fake_logits, "Loss/signs/fake": tf.sign(fake_logits),
                      "Loss/scores/real": real_logits, "Loss/signs/real": tf.sign(real_logits)}, w0

    def _real_logits_r1(self, real, real_c):
        """``D(aug(x))`` (one augmentation, one forward) and the R1 penalty
        ``||dD(aug(x))/dx||^2`` (sum over H, W, C) per sample."""
        real = tf.convert_to_tensor(real)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(real)
            logits = self.run_D(real, real_c)
            out = tf.reduce_sum(tf.cast(logits, tf.float32))
        grads = tf.cast(tape.gradient(out, real), tf.float32)
        penalty = tf.reduce_sum(tf.square(grads), axis=[1, 2, 3])
        return tf.cast(logits, tf.float32)[:, 0], penalty

    def D_r1(self, real, real_c):
        """R1: per-sample ``gamma/2 * ||dD(aug(x))/dx||^2`` and stats. Like the reference, the
        phase also reports the scores and signs of the reals it sees (ADA's r_t averages the
        signs of both the Dmain and the Dreg phases)."""
        real_logits, penalty = self._real_logits_r1(real, real_c)
        loss = penalty * (self.r1_gamma / 2)
        return loss, {"Loss/r1_penalty": penalty, "Loss/D/reg": loss,
                      "Loss/scores/real": real_logits, "Loss/signs/real": tf.sign(real_logits)}

    def D_both(self, real, real_c, z, c, mix_z=None, cutoff=None):
        """Dmain and R1 fused (the reference's Dboth phase, without lazy regularisation): the
        reals go through the augment pipe and D once; their logits serve the main loss and R1.
        Per-sample loss ``softplus(D(G(z))) + softplus(-D(x)) + gamma/2 * ||dD(x)/dx||^2``."""
        img, _, w0 = self.run_G(z, c, mix_z, cutoff)
        img = tf.stop_gradient(img)
        fake_logits = tf.cast(self.run_D(img, c), tf.float32)[:, 0]
        real_logits, penalty = self._real_logits_r1(real, real_c)
        main = tf.nn.softplus(fake_logits) + tf.nn.softplus(-real_logits)
        reg = penalty * (self.r1_gamma / 2)
        return main + reg, {
            "Loss/D/loss": main, "Loss/r1_penalty": penalty, "Loss/D/reg": reg,
            "Loss/scores/fake": fake_logits, "Loss/signs/fake": tf.sign(fake_logits),
            "Loss/scores/real": real_logits, "Loss/signs/real": tf.sign(real_logits)}, w0
