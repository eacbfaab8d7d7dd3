"""StyleGAN2-ADA networks (config F, skip generator, resnet discriminator) in TensorFlow/Keras.

A NHWC port of NVlabs/stylegan2-ada-pytorch ``training/networks.py`` with the same variables
(same shapes up to the Keras layout, stored unscaled), so NVlabs weights map 1:1 (see
``histaug_tf.interop.nvlabs_names``) and the same weights give the same images.

Call contract::

    G = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3,
                  mapping_kwargs=dict(num_layers=8), synthesis_kwargs=dict(channel_base=16384))
    img = G(z, c, truncation_psi=1, truncation_cutoff=None, noise_mode='random')  # [N,H,W,C]
    ws  = G.mapping(z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False)
    img = G.synthesis(ws, noise_mode='const')
    D = Discriminator(c_dim=0, img_resolution=256, img_channels=3)
    logits = D(img, c)                                                             # [N, 1]

``c`` is a one-hot float ``[N, c_dim]`` and is ignored (may be None) when ``c_dim == 0``.
All models build their variables in ``__init__`` and serialize to ``.keras``
(``G.save('g.keras')``; ``keras.saving.load_model('g.keras')`` once this module is imported).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import keras

from histaug_tf.ops import upfirdn2d as _fir
from histaug_tf.gan.layers import (CheckpointedLists, _Layer, _register, _dim,
                                   FullyConnectedLayer, Conv2dLayer,
                                   SynthesisLayer, ToRGBLayer, MinibatchStdLayer,
                                   setup_resample_filter,
                                   normalize_2nd_moment, noise_pool, tf_variable)


def _nf(channel_base, channel_max, res):
    return min(int(channel_base) // int(res), int(channel_max))


def _fp16_resolution(img_resolution_log2, num_fp16_res):
    return max(2 ** (img_resolution_log2 + 1 - int(num_fp16_res)), 8)


def assert_shape(x, shape, what):
    """The static shape of ``x`` must match ``shape`` (None = any), as the reference's
    ``misc.assert_shape`` at block boundaries. Checked while tracing (no cost in the compiled
    step); a mismatch is a ValueError naming the block and both shapes."""
    if x is None:
        return
    actual = tuple(x.shape)
    ok = len(actual) == len(shape) and all(
        e is None or a is None or int(a) == int(e) for a, e in zip(actual, shape))
    if not ok:
        want = "[" + ", ".join("N" if e is None else str(e) for e in shape) + "]"
        raise ValueError(f"{what}: expected shape {want}, got {list(actual)}")


def _check_resolution(img_resolution):
    r = int(img_resolution)
    if r < 4 or r & (r - 1):
        raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
    return r


# --------------------------------------------------------------------------------------------
# Mapping network.

@_register
class MappingNetwork(_Layer):
    """z (and the embedded label c) -> w, broadcast to ``num_ws``; tracks ``w_avg``.

    ``z`` is normalised by its second moment; with ``c_dim > 0`` the label goes through ``embed``
    (dense c_dim -> embed_features), is normalised and concatenated. Then ``num_layers`` dense
    layers (``activation``, ``lr_multiplier`` 0.01). ``w_avg`` (non-trainable ``[w_dim]``) is the
    moving average of w, updated with decay ``w_avg_beta`` when ``update_emas=True``.
    """

    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, embed_features=None,
                 layer_features=None, activation="lrelu", lr_multiplier=0.01, w_avg_beta=0.995,
                 **kwargs):
        super().__init__(**kwargs)
        self.z_dim = int(z_dim)
        self.c_dim = int(c_dim)
        self.w_dim = int(w_dim)
        self.num_ws = None if num_ws is None else int(num_ws)
        self.num_layers = int(num_layers)
        self.embed_features_arg = embed_features
        self.layer_features_arg = layer_features
        self.activation = activation
        self.lr_multiplier = float(lr_multiplier)
        self.w_avg_beta = None if w_avg_beta is None else float(w_avg_beta)

        embed_features = self.w_dim if embed_features is None else int(embed_features)
        if self.c_dim == 0:
            embed_features = 0
        layer_features = self.w_dim if layer_features is None else int(layer_features)
        features = [self.z_dim + embed_features] + [layer_features] * (self.num_layers - 1) \
            + [self.w_dim]
        self.embed = None
        if self.c_dim > 0:
            self.embed = FullyConnectedLayer(self.c_dim, embed_features, name="embed")
        self.fcs = [FullyConnectedLayer(features[i], features[i + 1], activation=activation,
                                        lr_multiplier=self.lr_multiplier, name=f"fc{i}")
                    for i in range(self.num_layers)]

    def build(self, input_shape=None):
        if self.embed is not None:
            self._build_child(self.embed)
        for fc in self.fcs:
            self._build_child(fc)
        self.w_avg = None
        if self.num_ws is not None and self.w_avg_beta is not None:
            # aggregation 'mean': under tf.distribute, an update made in replica context
            # averages the replicas' batch means.
            self.w_avg = self.add_weight(name="w_avg", shape=(self.w_dim,), initializer="zeros",
                                         trainable=False, aggregation="mean")

    def call(self, z, c=None, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        if self.z_dim > 0:
            assert_shape(z, [None, self.z_dim], f"{self.name} z")
        if self.c_dim > 0 and c is not None:
            assert_shape(c, [None, self.c_dim], f"{self.name} c")
        x = None
        if self.z_dim > 0:
            x = normalize_2nd_moment(tf.cast(z, tf.float32))
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this network is conditional (c_dim={self.c_dim}); pass c")
            y = normalize_2nd_moment(self.embed(tf.cast(c, tf.float32)))
            x = tf.concat([x, y], axis=1) if x is not None else y
        for fc in self.fcs:
            x = fc(x)

        if update_emas and self.w_avg is not None:
            batch_avg = tf.reduce_mean(tf.stop_gradient(x), axis=0)
            # lerp(batch_avg, w_avg, beta) = batch_avg + beta * (w_avg - batch_avg)
            self.w_avg.assign(batch_avg + self.w_avg_beta * (self.w_avg - batch_avg))

        if self.num_ws is not None:
            x = tf.tile(x[:, None, :], [1, self.num_ws, 1])

        if not (isinstance(truncation_psi, (int, float)) and truncation_psi == 1):
            if self.w_avg is None:
                raise ValueError("truncation needs w_avg (w_avg_beta is None)")
            psi = tf.cast(truncation_psi, tf.float32)
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg + psi * (x - self.w_avg)
            else:
                layer_psi = tf.where(tf.range(self.num_ws) < truncation_cutoff, psi, 1.0)
                x = self.w_avg + layer_psi[None, :, None] * (x - self.w_avg)
        return x

    def get_config(self):
        cfg = super().get_config()
        cfg.update(z_dim=self.z_dim, c_dim=self.c_dim, w_dim=self.w_dim, num_ws=self.num_ws,
                   num_layers=self.num_layers, embed_features=self.embed_features_arg,
                   layer_features=self.layer_features_arg, activation=self.activation,
                   lr_multiplier=self.lr_multiplier, w_avg_beta=self.w_avg_beta)
        return cfg


# --------------------------------------------------------------------------------------------
# Synthesis network.

@_register
class SynthesisBlock(_Layer):
    """One resolution of the skip generator: (const | conv0 up 2), conv1, ToRGB; image skip sum."""

    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last,
                 architecture="skip", resample_filter=(1, 3, 3, 1), conv_clamp=None,
                 use_fp16=False, use_noise=True, activation="lrelu", **kwargs):
        super().__init__(**kwargs)
        if architecture not in ("orig", "skip"):
            raise ValueError(f"synthesis architecture must be 'skip' or 'orig', got {architecture!r}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.w_dim = int(w_dim)
        self.resolution = int(resolution)
        self.img_channels = int(img_channels)
        self.is_last = bool(is_last)
        self.architecture = architecture
        self.resample_filter_taps = [float(v) for v in resample_filter]
        self.conv_clamp = None if conv_clamp is None else float(conv_clamp)
        self.use_fp16 = bool(use_fp16)
        self.use_noise = bool(use_noise)
        self.activation = activation
        self.resample_filter = setup_resample_filter(self.resample_filter_taps)
        self.num_conv = 0
        self.num_torgb = 0
        layer_kwargs = dict(w_dim=self.w_dim, resolution=self.resolution,
                            conv_clamp=self.conv_clamp, use_noise=self.use_noise,
                            activation=activation)
        self.conv0 = None
        if self.in_channels != 0:
            self.conv0 = SynthesisLayer(self.in_channels, self.out_channels, up=2,
                                        resample_filter=self.resample_filter_taps, name="conv0",
                                        **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(self.out_channels, self.out_channels, name="conv1",
                                    **layer_kwargs)
        self.num_conv += 1
        self.torgb = None
        if self.is_last or architecture == "skip":
            self.torgb = ToRGBLayer(self.out_channels, self.img_channels, w_dim=self.w_dim,
                                    conv_clamp=self.conv_clamp, name="torgb")
            self.num_torgb += 1

    def build(self, input_shape=None):
        if self.in_channels == 0:
            self.const = self.add_weight(
                name="const", shape=(self.resolution, self.resolution, self.out_channels),
                initializer=keras.initializers.RandomNormal(stddev=1.0))
        for child in (self.conv0, self.conv1, self.torgb):
            if child is not None:
                self._build_child(child)

    def call(self, x, img, ws, noise_mode="random", fused_modconv=False, force_fp32=False):
        dtype = tf.float16 if self.use_fp16 and not force_fp32 else tf.float32
        r, h = self.resolution, self.resolution // 2
        assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim], f"{self.name} ws")
        if self.in_channels != 0:
            assert_shape(x, [None, h, h, self.in_channels], f"{self.name} input")
        assert_shape(img, [None, h, h, self.img_channels], f"{self.name} input image")
        w_idx = 0
        if self.in_channels == 0:
            x = tf.cast(self.const, dtype)[None]
            x = tf.tile(x, [_dim(ws, 0), 1, 1, 1])
            x = self.conv1(x, ws[:, 0], noise_mode=noise_mode, fused_modconv=fused_modconv)
            w_idx = 1
        else:
            x = tf.cast(x, dtype)
            x = self.conv0(x, ws[:, 0], noise_mode=noise_mode, fused_modconv=fused_modconv)
            x = self.conv1(x, ws[:, 1], noise_mode=noise_mode, fused_modconv=fused_modconv)
            w_idx = 2
        if img is not None:
            img = _fir.upsample2d(img, self.resample_filter)
        if self.torgb is not None:
            y = self.torgb(x, ws[:, w_idx], fused_modconv=fused_modconv)
            y = tf.cast(y, tf.float32)
            img = img + y if img is not None else y
        assert_shape(x, [None, r, r, self.out_channels], f"{self.name} output")
        assert_shape(img, [None, r, r, self.img_channels], f"{self.name} output image")
        return x, img

    def get_config(self):
        cfg = super().get_config()
        cfg.update(in_channels=self.in_channels, out_channels=self.out_channels, w_dim=self.w_dim,
                   resolution=self.resolution, img_channels=self.img_channels,
                   is_last=self.is_last, architecture=self.architecture,
                   resample_filter=self.resample_filter_taps, conv_clamp=self.conv_clamp,
                   use_fp16=self.use_fp16, use_noise=self.use_noise, activation=self.activation)
        return cfg


@_register
class SynthesisNetwork(_Layer):
    """ws ``[N, num_ws, w_dim]`` -> images ``[N, R, R, img_channels]`` (about [-1, 1]).

    Channels at resolution r: ``min(channel_base // r, channel_max)``. The top ``num_fp16_res``
    resolutions run in float16 (clamped at ``conv_clamp``) unless ``force_fp32``.
    """

    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512,
                 num_fp16_res=0, architecture="skip", resample_filter=(1, 3, 3, 1),
                 conv_clamp=None, use_noise=True, activation="lrelu", **kwargs):
        super().__init__(**kwargs)
        self.w_dim = int(w_dim)
        self.img_resolution = _check_resolution(img_resolution)
        self.img_resolution_log2 = int(np.log2(self.img_resolution))
        self.img_channels = int(img_channels)
        self.channel_base = int(channel_base)
        self.channel_max = int(channel_max)
        self.num_fp16_res = int(num_fp16_res)
        self.architecture = architecture
        self.resample_filter_taps = [float(v) for v in resample_filter]
        self.conv_clamp = None if conv_clamp is None else float(conv_clamp)
        self.use_noise = bool(use_noise)
        self.activation = activation
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        fp16_res = _fp16_resolution(self.img_resolution_log2, self.num_fp16_res)
        self.num_ws = 0
        self.blocks = []
        for res in self.block_resolutions:
            in_ch = _nf(channel_base, channel_max, res // 2) if res > 4 else 0
            out_ch = _nf(channel_base, channel_max, res)
            block = SynthesisBlock(in_ch, out_ch, w_dim=self.w_dim, resolution=res,
                                   img_channels=self.img_channels,
                                   is_last=(res == self.img_resolution),
                                   architecture=architecture,
                                   resample_filter=self.resample_filter_taps,
                                   conv_clamp=self.conv_clamp,
                                   use_fp16=(res >= fp16_res and self.num_fp16_res > 0),
                                   use_noise=self.use_noise, activation=activation,
                                   name=f"b{res}")
            self.num_ws += block.num_conv
            if res == self.img_resolution:
                self.num_ws += block.num_torgb
            self.blocks.append(block)

    def build(self, input_shape=None):
        for b in self.blocks:
            self._build_child(b)

    def call(self, ws, noise_mode="random", fused_modconv=False, force_fp32=False):
        ws = tf.cast(ws, tf.float32)
        if ws.shape.rank != 3 or ws.shape[1] not in (None, self.num_ws) \
                or ws.shape[2] not in (None, self.w_dim):
            raise ValueError(f"ws must be [N, {self.num_ws}, {self.w_dim}], got {ws.shape}")
        x = img = None
        w_idx = 0
        with noise_pool(tf.shape(ws)[0], self._noise_sizes() if noise_mode == "random" else []):
            for block in self.blocks:
                n = block.num_conv + block.num_torgb
                cur = ws[:, w_idx:w_idx + n]
                w_idx += block.num_conv
                x, img = block(x, img, cur, noise_mode=noise_mode, fused_modconv=fused_modconv,
                               force_fp32=force_fp32)
        return img

    def _noise_sizes(self):
        """Values per image of each layer's random noise, in the order the layers draw it."""
        return [layer.resolution ** 2 for block in self.blocks for layer in (block.conv0, block.conv1)
                if layer is not None and layer.use_noise]

    def get_config(self):
        cfg = super().get_config()
        cfg.update(w_dim=self.w_dim, img_resolution=self.img_resolution,
                   img_channels=self.img_channels, channel_base=self.channel_base,
                   channel_max=self.channel_max, num_fp16_res=self.num_fp16_res,
                   architecture=self.architecture, resample_filter=self.resample_filter_taps,
                   conv_clamp=self.conv_clamp, use_noise=self.use_noise,
                   activation=self.activation)
        return cfg


@_register
class Generator(CheckpointedLists, keras.Model):
    """StyleGAN2 generator: ``G(z, c, truncation_psi=1, truncation_cutoff=None, noise_mode='random')``.

    Attributes: ``z_dim, c_dim, w_dim, num_ws, img_resolution, img_channels``, ``mapping``
    (:class:`MappingNetwork`, with ``mapping.w_avg``) and ``synthesis`` (:class:`SynthesisNetwork`).
    Output: NHWC float32 images in about [-1, 1].
    """

    def __init__(self, z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3,
                 mapping_kwargs=None, synthesis_kwargs=None, name="generator", **kwargs):
        super().__init__(name=name, **kwargs)
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        self.z_dim = int(z_dim)
        self.c_dim = int(c_dim)
        self.w_dim = int(w_dim)
        self.img_resolution = _check_resolution(img_resolution)
        self.img_channels = int(img_channels)
        self.mapping_kwargs = dict(mapping_kwargs or {})
        self.synthesis_kwargs = dict(synthesis_kwargs or {})
        self.synthesis = SynthesisNetwork(w_dim=self.w_dim, img_resolution=self.img_resolution,
                                          img_channels=self.img_channels, name="synthesis",
                                          **self.synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=self.z_dim, c_dim=self.c_dim, w_dim=self.w_dim,
                                      num_ws=self.num_ws, name="mapping", **self.mapping_kwargs)
        self.build()

    def build(self, input_shape=None):
        if not self.mapping.built:
            self.mapping.build()
        if not self.synthesis.built:
            self.synthesis.build()

    def call(self, z, c=None, truncation_psi=1, truncation_cutoff=None, noise_mode="random",
             update_emas=False, fused_modconv=False, force_fp32=False):
        ws = self.mapping(z, c, truncation_psi=truncation_psi,
                          truncation_cutoff=truncation_cutoff, update_emas=update_emas)
        return self.synthesis(ws, noise_mode=noise_mode, fused_modconv=fused_modconv,
                              force_fp32=force_fp32)

    def get_config(self):
        return dict(name=self.name, z_dim=self.z_dim, c_dim=self.c_dim, w_dim=self.w_dim,
                    img_resolution=self.img_resolution, img_channels=self.img_channels,
                    mapping_kwargs=self.mapping_kwargs, synthesis_kwargs=self.synthesis_kwargs)

    def get_build_config(self):
        return {}

    def build_from_config(self, config):
        pass


# --------------------------------------------------------------------------------------------
# Discriminator.

@_register
class DiscriminatorBlock(_Layer):
    """One resolution of the resnet (or orig) discriminator: [fromrgb], conv0, conv1 down 2, [skip]."""

    def __init__(self, in_channels, tmp_channels, out_channels, resolution, img_channels,
                 architecture="resnet", activation="lrelu", resample_filter=(1, 3, 3, 1),
                 conv_clamp=None, use_fp16=False, **kwargs):
        super().__init__(**kwargs)
        if architecture not in ("orig", "resnet"):
            raise ValueError(f"D architecture must be 'resnet' or 'orig', got {architecture!r}")
        self.in_channels = int(in_channels)
        self.tmp_channels = int(tmp_channels)
        self.out_channels = int(out_channels)
        self.resolution = int(resolution)
        self.img_channels = int(img_channels)
        self.architecture = architecture
        self.activation = activation
        self.resample_filter_taps = [float(v) for v in resample_filter]
        self.conv_clamp = None if conv_clamp is None else float(conv_clamp)
        self.use_fp16 = bool(use_fp16)
        cc = self.conv_clamp
        self.fromrgb = None
        if self.in_channels == 0:
            self.fromrgb = Conv2dLayer(self.img_channels, self.tmp_channels, kernel_size=1,
                                       activation=activation, conv_clamp=cc, name="fromrgb")
        self.conv0 = Conv2dLayer(self.tmp_channels, self.tmp_channels, kernel_size=3,
                                 activation=activation, conv_clamp=cc, name="conv0")
        self.conv1 = Conv2dLayer(self.tmp_channels, self.out_channels, kernel_size=3,
                                 activation=activation, down=2,
                                 resample_filter=self.resample_filter_taps, conv_clamp=cc,
                                 name="conv1")
        self.skip = None
        if architecture == "resnet":
            self.skip = Conv2dLayer(self.tmp_channels, self.out_channels, kernel_size=1,
                                    bias=False, down=2, resample_filter=self.resample_filter_taps,
                                    name="skip")

    def build(self, input_shape=None):
        for child in (self.fromrgb, self.conv0, self.conv1, self.skip):
            if child is not None:
                self._build_child(child)

    def call(self, x, img, force_fp32=False):
        dtype = tf.float16 if self.use_fp16 and not force_fp32 else tf.float32
        r = self.resolution
        if self.in_channels != 0:
            assert_shape(x, [None, r, r, self.in_channels], f"{self.name} input")
        if self.fromrgb is not None:
            assert_shape(img, [None, r, r, self.img_channels], f"{self.name} input image")
        if x is not None:
            x = tf.cast(x, dtype)
        if self.fromrgb is not None:
            y = self.fromrgb(tf.cast(img, dtype))
            x = x + y if x is not None else y
        if self.skip is not None:
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=np.sqrt(0.5))
            x = y + x
        else:
            x = self.conv0(x)
            x = self.conv1(x)
        assert_shape(x, [None, r // 2, r // 2, self.out_channels], f"{self.name} output")
        return x

    def get_config(self):
        cfg = super().get_config()
        cfg.update(in_channels=self.in_channels, tmp_channels=self.tmp_channels,
                   out_channels=self.out_channels, resolution=self.resolution,
                   img_channels=self.img_channels, architecture=self.architecture,
                   activation=self.activation, resample_filter=self.resample_filter_taps,
                   conv_clamp=self.conv_clamp, use_fp16=self.use_fp16)
        return cfg


@_register
class DiscriminatorEpilogue(_Layer):
    """4x4 head: minibatch stddev -> conv 3x3 -> dense -> out (1 or cmap_dim), projection by cmap."""

    def __init__(self, in_channels, cmap_dim, resolution, img_channels, mbstd_group_size=4,
                 mbstd_num_channels=1, activation="lrelu", conv_clamp=None, **kwargs):
        super().__init__(**kwargs)
        self.in_channels = int(in_channels)
        self.cmap_dim = int(cmap_dim)
        self.resolution = int(resolution)
        self.img_channels = int(img_channels)
        self.mbstd_group_size = None if mbstd_group_size is None else int(mbstd_group_size)
        self.mbstd_num_channels = int(mbstd_num_channels)
        self.activation = activation
        self.conv_clamp = None if conv_clamp is None else float(conv_clamp)
        self.mbstd = None
        if self.mbstd_num_channels > 0:
            self.mbstd = MinibatchStdLayer(self.mbstd_group_size, self.mbstd_num_channels,
                                           name="mbstd")
        self.conv = Conv2dLayer(self.in_channels + self.mbstd_num_channels, self.in_channels,
                                kernel_size=3, activation=activation, conv_clamp=self.conv_clamp,
                                name="conv")
        self.fc = FullyConnectedLayer(self.in_channels * self.resolution ** 2, self.in_channels,
                                      activation=activation, name="fc")
        self.out = FullyConnectedLayer(self.in_channels, 1 if self.cmap_dim == 0 else self.cmap_dim,
                                       name="out")

    def build(self, input_shape=None):
        for child in (self.mbstd, self.conv, self.fc, self.out):
            if child is not None:
                self._build_child(child)

    def call(self, x, cmap=None):
        r = self.resolution
        assert_shape(x, [None, r, r, self.in_channels], f"{self.name} input")
        if self.cmap_dim > 0:
            assert_shape(cmap, [None, self.cmap_dim], f"{self.name} cmap")
        x = tf.cast(x, tf.float32)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        # Flatten in NCHW order so that fc.weight is exactly NVlabs' (transposed).
        x = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [-1, self.in_channels * self.resolution ** 2])
        x = self.fc(x)
        x = self.out(x)
        if self.cmap_dim > 0:
            x = tf.reduce_sum(x * cmap, axis=1, keepdims=True) * (1.0 / np.sqrt(self.cmap_dim))
        return x

    def get_config(self):
        cfg = super().get_config()
        cfg.update(in_channels=self.in_channels, cmap_dim=self.cmap_dim,
                   resolution=self.resolution, img_channels=self.img_channels,
                   mbstd_group_size=self.mbstd_group_size,
                   mbstd_num_channels=self.mbstd_num_channels, activation=self.activation,
                   conv_clamp=self.conv_clamp)
        return cfg


@_register
class Discriminator(CheckpointedLists, keras.Model):
    """StyleGAN2 residual discriminator: ``D(img, c) -> logits [N, 1]``.

    ``img`` NHWC in [-1, 1]; ``c`` one-hot ``[N, c_dim]`` (conditioning by projection onto the
    label mapped by ``mapping``: an 8-layer MappingNetwork c -> cmap, as NVlabs' defaults).
    """

    def __init__(self, c_dim=0, img_resolution=256, img_channels=3, architecture="resnet",
                 channel_base=32768, channel_max=512, num_fp16_res=0, conv_clamp=None,
                 cmap_dim=None, block_kwargs=None, mapping_kwargs=None, epilogue_kwargs=None,
                 name="discriminator", **kwargs):
        super().__init__(name=name, **kwargs)
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        self.c_dim = int(c_dim)
        self.img_resolution = _check_resolution(img_resolution)
        if self.img_resolution < 8:
            raise ValueError("Discriminator needs img_resolution >= 8 (as NVlabs')")
        self.img_resolution_log2 = int(np.log2(self.img_resolution))
        self.img_channels = int(img_channels)
        self.architecture = architecture
        self.channel_base = int(channel_base)
        self.channel_max = int(channel_max)
        self.num_fp16_res = int(num_fp16_res)
        self.conv_clamp = None if conv_clamp is None else float(conv_clamp)
        self.cmap_dim_arg = cmap_dim
        self.block_kwargs = dict(block_kwargs or {})
        self.mapping_kwargs = dict(mapping_kwargs or {})
        self.epilogue_kwargs = dict(epilogue_kwargs or {})

        self.block_resolutions = [2 ** i for i in range(self.img_resolution_log2, 2, -1)]
        fp16_res = _fp16_resolution(self.img_resolution_log2, self.num_fp16_res)
        cmap = _nf(channel_base, channel_max, 4) if cmap_dim is None else int(cmap_dim)
        if self.c_dim == 0:
            cmap = 0
        self.cmap_dim = cmap
        common = dict(img_channels=self.img_channels, architecture=architecture,
                      conv_clamp=self.conv_clamp)
        self.blocks = []
        for res in self.block_resolutions:
            in_ch = _nf(channel_base, channel_max, res) if res < self.img_resolution else 0
            self.blocks.append(DiscriminatorBlock(
                in_ch, _nf(channel_base, channel_max, res), _nf(channel_base, channel_max, res // 2),
                resolution=res, use_fp16=(res >= fp16_res and self.num_fp16_res > 0),
                name=f"b{res}", **self.block_kwargs, **common))
        self.mapping = None
        if self.c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=self.c_dim, w_dim=cmap, num_ws=None,
                                          w_avg_beta=None, name="mapping", **self.mapping_kwargs)
        epi_common = dict(img_channels=self.img_channels, conv_clamp=self.conv_clamp)
        self.b4 = DiscriminatorEpilogue(_nf(channel_base, channel_max, 4), cmap_dim=cmap,
                                        resolution=4, name="b4", **self.epilogue_kwargs,
                                        **epi_common)
        self.build()

    def build(self, input_shape=None):
        for b in self.blocks:
            if not b.built:
                b.build()
        if self.mapping is not None and not self.mapping.built:
            self.mapping.build()
        if not self.b4.built:
            self.b4.build()

    def call(self, img, c=None, force_fp32=False):
        x = None
        img = tf.convert_to_tensor(img)
        r = self.img_resolution
        assert_shape(img, [None, r, r, self.img_channels], f"{self.name} img")
        for block in self.blocks:
            x = block(x, img, force_fp32=force_fp32)
            img = None
        cmap = None
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this discriminator is conditional (c_dim={self.c_dim}); pass c")
            cmap = self.mapping(None, c)
        return self.b4(x, cmap)

    def get_config(self):
        return dict(name=self.name, c_dim=self.c_dim, img_resolution=self.img_resolution,
                    img_channels=self.img_channels, architecture=self.architecture,
                    channel_base=self.channel_base, channel_max=self.channel_max,
                    num_fp16_res=self.num_fp16_res, conv_clamp=self.conv_clamp,
                    cmap_dim=self.cmap_dim_arg, block_kwargs=self.block_kwargs,
                    mapping_kwargs=self.mapping_kwargs, epilogue_kwargs=self.epilogue_kwargs)

    def get_build_config(self):
        return {}

    def build_from_config(self, config):
        pass


def count_params(model, trainable_only=True):
    """Number of (trainable) scalars, comparable to NVlabs' ``sum(p.numel() for p in parameters())``."""
    vs = model.trainable_variables if trainable_only else model.variables
    return int(sum(int(np.prod(v.shape)) for v in vs))


def copy_matching_variables(src_model, dst_model):
    """Copy variables from ``src_model`` to ``dst_model`` by variable path where the shapes match
    (reference ``copy_params_and_buffers``); returns the number copied."""
    src = {v.path: v for v in src_model.variables}
    n = 0
    for v in dst_model.variables:
        s = src.get(v.path)
        if s is not None and tuple(s.shape) == tuple(v.shape):
            v.assign(tf_variable(s))
            n += 1
    if n == 0:
        # Fall back to positional matching (same architecture built in another scope).
        sv, dv = list(src_model.variables), list(dst_model.variables)
        if len(sv) == len(dv) and all(tuple(a.shape) == tuple(b.shape) for a, b in zip(sv, dv)):
            for a, b in zip(sv, dv):
                b.assign(tf_variable(a))
            n = len(dv)
    return n


def freeze_d_variables(D, freezed):
    """Freeze-D: the variables of the first ``freezed`` D layers, numbered as the reference does
    (NVlabs ``DiscriminatorBlock.trainable_gen``): from the top-resolution block down, each
    block's fromrgb, conv0, conv1 and skip (those that exist) take consecutive indices; the
    epilogue is never frozen."""
    if not freezed:
        return []
    out = []
    idx = 0
    for block in getattr(D, "blocks", []):
        for name in ("fromrgb", "conv0", "conv1", "skip"):
            layer = getattr(block, name, None)
            if layer is None:
                continue
            if idx < freezed:
                out.extend(layer.trainable_variables)
            idx += 1
    return out
