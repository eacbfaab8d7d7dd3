"""StyleGAN2-ADA building blocks in TensorFlow/Keras (NHWC), weight-compatible with NVlabs.

Facts followed (NVlabs/stylegan2-ada-pytorch ``training/networks.py``):

* Equalized learning rate: weights are stored *unscaled*, initialised N(0, 1) / lr_multiplier and
  multiplied at run time by ``lr_multiplier / sqrt(fan_in)``; biases are multiplied by
  ``lr_multiplier``. A NVlabs weight therefore copies over unchanged (only transposed to Keras
  layout: dense ``[in, out]``, conv ``[kh, kw, in, out]``).
* Modulated convolution: styles scale the input channels, demodulation rescales every output
  channel of the per-sample weight to unit norm. ``fused_modconv=True`` builds per-sample weights
  and runs one grouped convolution; ``False`` scales the activations before and after a shared
  convolution. Both give the same result (to float rounding).
* Resampling convolutions follow ``torch_utils/ops/conv2d_resample.py``: ``up=2`` is a transposed
  convolution followed by the FIR filter (gain 4); ``down=2`` is the FIR filter followed by a
  strided convolution. Layers with ``up > 1`` use *convolution* (the reference passes
  ``flip_weight=False``); all others use correlation (``tf.nn.conv2d``), exactly as the reference.

Every layer creates its variables in ``build()`` from its constructor arguments alone (no input
shapes needed), so a parent can build the whole tree eagerly and variable paths are stable
(``synthesis/b64/conv0/affine/weight``); see ``histaug_tf.interop.nvlabs_names``.

Mixed precision follows the reference: variables are float32, blocks cast activations to float16
themselves. Keras' automatic input casting is therefore switched off for these layers.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np
import tensorflow as tf
import keras
from tensorflow.python.trackable import data_structures as _data_structures

from histaug_tf.ops import polyphase as _polyphase
from histaug_tf.ops import upfirdn2d as _fir
from histaug_tf.ops.bias_act import bias_act

PACKAGE = "histaug_tf"


# Per-layer noise ("random" noise mode). Outside ``noise_seed`` it comes from TensorFlow's global
# RNG, as before; the trainer draws it statelessly so that a run resumed from any checkpoint (and
# a process that loads cached graphs) continues with exactly the noise of an uninterrupted run.
_noise_seeds = threading.local()  # .stack: [[seed, draws so far], ...] of the open blocks;
#                                   .pools: the open noise_pool blocks


def _thread_list(name):
    if not hasattr(_noise_seeds, name):
        setattr(_noise_seeds, name, [])
    return getattr(_noise_seeds, name)


def _noise_stack():
    return _thread_list("stack")


@contextlib.contextmanager
def noise_seed(seed):
    """Inside: every ``random_noise`` draw traced in this thread is a stateless Philox normal
    keyed by ``seed`` (a [2] int64 tensor) folded with the draw's number in trace order, so each
    layer (and each call of the networks inside the block) gets its own stream. A ``seed`` of
    None changes nothing."""
    if seed is None:
        yield
        return
    stack = _noise_stack()
    stack.append([seed, 0])
    try:
        yield
    finally:
        stack.pop()


def _pool_stack():
    return _thread_list("pools")


class _NoisePool:
    """One normal draw [B, sum(sizes)] handed out as the next ``len(sizes)`` noise tensors."""

    def __init__(self, draw, sizes):
        self.draw, self.sizes, self.taken, self.offset = draw, list(sizes), 0, 0

    def take(self, shape):
        n = int(np.prod(shape[1:]))
        if self.taken >= len(self.sizes) or self.sizes[self.taken] != n:
            raise AssertionError(f"noise_pool: draw {self.taken} of {n} values per image does "
                                 f"not match the announced sizes {self.sizes}")
        cols = self.draw[:, self.offset:self.offset + n]
        self.taken, self.offset = self.taken + 1, self.offset + n
        return tf.reshape(cols, [-1] + [int(d) for d in shape[1:]])


@contextlib.contextmanager
def noise_pool(batch, sizes):
    """Inside: the next ``len(sizes)`` ``random_noise`` draws of this thread (``sizes[i]`` values
    per image, in that order) are slices of one standard normal draw ``[batch, sum(sizes)]``,
    itself one draw of the enclosing ``noise_seed`` block (or of TensorFlow's global RNG). In an
    XLA program every random draw is compiled on its own, so the synthesis network draws all its
    layers' noise at once. Empty ``sizes`` changes nothing."""
    if not sizes:
        yield
        return
    pools = _pool_stack()
    pool = _NoisePool(_normal_draw([batch, int(sum(sizes))]), sizes)
    pools.append(pool)
    try:
        yield
    finally:
        pools.pop()
    if pool.taken != len(pool.sizes):
        raise AssertionError(f"noise_pool: {pool.taken} of {len(pool.sizes)} announced draws taken")


def _normal_draw(shape, dtype=tf.float32):
    stack = _noise_stack()
    if not stack:
        return tf.random.normal(shape, dtype=dtype)
    entry = stack[-1]
    k, entry[1] = entry[1], entry[1] + 1
    seed = tf.random.experimental.stateless_fold_in(entry[0], k, alg="philox")
    return tf.random.stateless_normal(shape, seed, dtype=dtype, alg="philox")


def random_noise(shape, dtype=tf.float32):
    """A standard normal tensor for per-layer noise: a slice of the open ``noise_pool``, else its
    own draw; stateless under ``noise_seed``, else from TensorFlow's global RNG."""
    pools = _pool_stack()
    if pools:
        return tf.cast(pools[-1].take(shape), dtype)
    return _normal_draw(shape, dtype)


# Default gain of each activation (the NVlabs ``bias_act`` activation table).
ACT_GAIN = {"linear": 1.0, "relu": float(np.sqrt(2)), "lrelu": float(np.sqrt(2)),
            "tanh": 1.0, "sigmoid": 1.0, "elu": 1.0, "selu": 1.0, "softplus": 1.0,
            "swish": float(np.sqrt(2))}


def _register(cls):
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)


def normalize_2nd_moment(x, axis=-1, eps=1e-8):
    """``x / sqrt(mean(x**2) + eps)`` along ``axis``."""
    return x * tf.math.rsqrt(tf.reduce_mean(tf.square(x), axis=axis, keepdims=True) + eps)


def _dim(x, i):
    d = x.shape[i]
    return int(d) if d is not None else tf.shape(x)[i]


def setup_resample_filter(taps):
    """The FIR filter of the layers: NVlabs ``setup_filter`` (normalised to sum 1), kept separable
    (1-D) when ``taps`` is 1-D: the same filter (outer product) applied as two 1-D passes, which
    is cheaper to run and to compile under XLA."""
    arr = np.asarray(taps, np.float32)
    return _fir.setup_filter(arr, separable=(arr.ndim == 1))


def _filter_size(f):
    if f is None:
        return 1, 1
    shape = [int(s) for s in f.shape]
    return shape[-1], shape[0]


# --------------------------------------------------------------------------------------------
# Convolution with optional up/down-sampling (NHWC port of NVlabs conv2d_resample).

def _conv(x, w, stride=1, padding=(0, 0, 0, 0), groups=1, flip_weight=True):
    """``tf.nn.conv2d`` with explicit padding ``[x0, x1, y0, y1]``.

    ``w`` is ``[kh, kw, in/groups, out]``. ``flip_weight=True`` = correlation (tf/torch conv2d),
    False = true convolution. Groups > 1 use TF's implicit grouped convolution (input channels a
    multiple of the filter's).
    """
    if not flip_weight:
        w = tf.reverse(w, axis=[0, 1])
    px0, px1, py0, py1 = padding
    if stride > 1 and groups == 1 and _polyphase.current_impl() == "polyphase":
        return _polyphase.strided_conv2d(x, w, stride, ((py0, py1), (px0, px1)))
    pad = [[0, 0], [py0, py1], [px0, px1], [0, 0]]
    if max(padding) == 0:
        pad = "VALID"
    return tf.nn.conv2d(x, w, strides=stride, padding=pad)


def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True):
    """2-D convolution with optional up/down-sampling; NHWC port of NVlabs ``conv2d_resample``.

    Args:
        x: ``[N, H, W, C_in]``.
        w: ``[kh, kw, C_in // groups, C_out]`` (already scaled).
        f: FIR filter from ``upfirdn2d.setup_filter`` (or None).
        up, down: integer factors (1 or 2 in StyleGAN2).
        padding: int, padding relative to the upsampled image (as the reference).
        groups: grouped convolution (used by the fused modulated convolution).
        flip_weight: False = convolution, True = correlation (the reference's meaning).
    """
    kh, kw = int(w.shape[0]), int(w.shape[1])
    fw, fh = _filter_size(f)
    px0 = px1 = py0 = py1 = int(padding)
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    # 1x1 kernel, downsampling only: filter + decimate first, then convolve.
    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = _fir.upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1])
        return _conv(x, w, groups=groups, flip_weight=flip_weight)

    # 1x1 kernel, upsampling only: convolve first, then upsample.
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return _fir.upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up ** 2)

    # Downsampling only: filter, then strided convolution.
    if down > 1 and up == 1:
        x = _fir.upfirdn2d(x, f, padding=[px0, px1, py0, py1])
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    # Upsampling: transposed strided convolution, then the FIR filter (gain up**2).
    if up > 1 and groups == 1:
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        # torch conv_transpose2d(x, w^T, flip_weight=not flip_weight) == tf conv2d_transpose with
        # filters [kh, kw, out, in] (flipped when the reference would flip).
        wt = w if not flip_weight else tf.reverse(w, axis=[0, 1])
        wt = tf.transpose(wt, [0, 1, 3, 2])
        if _polyphase.current_impl() == "polyphase":
            x = _polyphase.conv2d_transpose(x, wt, up, crop=(pyt, pxt))
        else:
            n, h, wd = _dim(x, 0), _dim(x, 1), _dim(x, 2)
            out_shape = tf.stack([n, (h - 1) * up + kh - 2 * pyt, (wd - 1) * up + kw - 2 * pxt,
                                  int(w.shape[3])])
            x = tf.nn.conv2d_transpose(x, wt, output_shape=out_shape, strides=up,
                                       padding="VALID" if max(pxt, pyt) == 0 else
                                       [[0, 0], [pyt, pyt], [pxt, pxt], [0, 0]])
            if x.shape.rank == 4 and x.shape[1] is None and isinstance(h, int):
                x = tf.ensure_shape(x, [None, (h - 1) * up + kh - 2 * pyt,
                                        (wd - 1) * up + kw - 2 * pxt, int(w.shape[3])])
        x = _fir.upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt],
                           gain=up ** 2)
        if down > 1:
            x = _fir.upfirdn2d(x, f, down=down)
        return x

    if up == 1 and down == 1 and px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=(px0, px1, py0, py1), groups=groups, flip_weight=flip_weight)

    # Generic path (also grouped + upsampling): upsample + filter, then convolve, then decimate.
    x = _fir.upfirdn2d(x, f if up > 1 else None, up=up, padding=[px0, px1, py0, py1],
                       gain=up ** 2)
    x = _conv(x, w, groups=groups, flip_weight=flip_weight)
    if down > 1:
        x = _fir.upfirdn2d(x, f, down=down)
    return x


def modulated_conv2d(x, weight, styles, noise=None, up=1, down=1, padding=0,
                     resample_filter=None, demodulate=True, flip_weight=True,
                     fused_modconv=False):
    """Modulated (and demodulated) 2-D convolution, NHWC.

    Args:
        x: ``[N, H, W, I]`` activations.
        weight: ``[kh, kw, I, O]`` unscaled weight (float32 variable).
        styles: ``[N, I]`` modulation coefficients.
        noise: optional tensor broadcastable to the output, added after demodulation.
        fused_modconv: True = per-sample weights + one grouped convolution; False = scale the
            activations before and after a shared convolution (the reference's training path).
    Returns:
        ``[N, H', W', O]`` of ``x.dtype``.
    """
    kh, kw, in_ch, out_ch = (int(s) for s in weight.shape)
    weight = tf.convert_to_tensor(weight)
    styles = tf.cast(styles, tf.float32)

    # Pre-normalise to avoid float16 overflow (as the reference).
    if x.dtype == tf.float16 and demodulate:
        weight = weight * (1.0 / np.sqrt(in_ch * kh * kw)
                           / tf.reduce_max(tf.abs(weight), axis=[0, 1, 2], keepdims=True))
        styles = styles / tf.reduce_max(tf.abs(styles), axis=1, keepdims=True)

    dcoefs = None
    if demodulate:
        # sum_{kh,kw,i} (w * s_i)^2 = s^2 @ sum_{kh,kw} w^2
        wsq = tf.reduce_sum(tf.square(weight), axis=[0, 1])  # [I, O]
        dcoefs = tf.math.rsqrt(tf.matmul(tf.square(styles), wsq) + 1e-8)  # [N, O]

    if not fused_modconv:
        x = x * tf.cast(styles, x.dtype)[:, None, None, :]
        x = conv2d_resample(x, tf.cast(weight, x.dtype), f=resample_filter, up=up, down=down,
                            padding=padding, flip_weight=flip_weight)
        if demodulate:
            x = x * tf.cast(dcoefs, x.dtype)[:, None, None, :]
        if noise is not None:
            x = x + tf.cast(noise, x.dtype)
        return x

    # Fused: per-sample weights [N, kh, kw, I, O], batch folded into convolution groups.
    w = weight[None] * styles[:, None, None, :, None]
    if demodulate:
        w = w * dcoefs[:, None, None, None, :]
    n = _dim(x, 0)
    h, wd = _dim(x, 1), _dim(x, 2)
    xg = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, h, wd, -1])  # [1, H, W, N*I]
    wg = tf.reshape(tf.transpose(w, [1, 2, 3, 0, 4]), [kh, kw, in_ch, -1])  # [kh, kw, I, N*O]
    y = conv2d_resample(xg, tf.cast(wg, x.dtype), f=resample_filter, up=up, down=down,
                        padding=padding, groups=n, flip_weight=flip_weight)
    ho, wo = _dim(y, 1), _dim(y, 2)
    y = tf.transpose(tf.reshape(y, [ho, wo, -1, out_ch]), [2, 0, 1, 3])  # [N, H', W', O]
    if noise is not None:
        y = y + tf.cast(noise, y.dtype)
    return y


# --------------------------------------------------------------------------------------------
# Layers.

def tf_variable(v):
    """The ``tf.Variable`` behind a Keras 3 variable (what GradientTape watches and what an
    ``assign`` reads); anything else unchanged."""
    inner = getattr(v, "value", None)
    return inner if isinstance(inner, tf.Variable) else v


class CheckpointedLists:
    """Mixin for Keras layers and models: sublayers kept in a list attribute (``self.blocks =
    [...]``) are children of the layer in a ``tf.train.Checkpoint`` (keys ``blocks/0/...``).

    Keras 3 tracks such lists for ``.variables`` but hands them to TensorFlow's object graph only
    for SavedModel exports, so a checkpoint of a network held just the variables reachable
    through attributes: G_ema's weights, the constant noise buffers and, for G and D, everything
    their optimizers did not also hold were missing, and a resumed run restarted them.
    """

    _lists_on = True  # lists_in_checkpoints() switches them off (reading older checkpoints)

    @classmethod
    @contextlib.contextmanager
    def lists_in_checkpoints(cls, on=True):
        """Within the block the lists are (``on``) or are not children in checkpoints; off
        matches a checkpoint written before they were, object for object."""
        before = CheckpointedLists._lists_on
        CheckpointedLists._lists_on = bool(on)
        try:
            yield
        finally:
            CheckpointedLists._lists_on = before

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        children = super()._trackable_children(save_type, **kwargs)
        if save_type == "checkpoint" and CheckpointedLists._lists_on:
            for attr in getattr(self, "_tracked", ()):
                item = getattr(self, attr, None)
                if isinstance(item, list) and attr not in children and any(
                        isinstance(x, tf.__internal__.tracking.Trackable) for x in item):
                    children[attr] = self._checkpoint_list(attr, item)
        return children

    def _checkpoint_list(self, attr, item):
        """One wrapper per list for as long as the list holds the same objects: a checkpoint
        asks for the children more than once and identifies them by object."""
        cache = self.__dict__.get("_checkpoint_lists")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_checkpoint_lists", cache)  # past Keras' tracking
        ids = tuple(id(x) for x in item)
        hit = cache.get(attr)
        if hit is None or hit[0] != ids:
            hit = cache[attr] = (ids, _data_structures.ListWrapper(list(item)))
        return hit[1]


class _Layer(CheckpointedLists, keras.layers.Layer):
    """Base: no automatic input casting (blocks manage float16 themselves); build from config."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True

    def _build_child(self, child):
        if not child.built:
            child.build()


@_register
class FullyConnectedLayer(_Layer):
    """Equalized-lr dense layer: ``act(x @ (W * lr/sqrt(in)) + b * lr)``; ``W`` is ``[in, out]``."""

    def __init__(self, in_features, out_features, bias=True, activation="linear",
                 lr_multiplier=1.0, bias_init=0.0, **kwargs):
        super().__init__(**kwargs)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.use_bias = bool(bias)
        self.activation = activation
        self.lr_multiplier = float(lr_multiplier)
        self.bias_init = float(bias_init)
        self.weight_gain = self.lr_multiplier / np.sqrt(self.in_features)
        self.bias_gain = self.lr_multiplier

    def build(self, input_shape=None):
        self.weight = self.add_weight(
            name="weight", shape=(self.in_features, self.out_features),
            initializer=keras.initializers.RandomNormal(stddev=1.0 / self.lr_multiplier))
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.out_features,),
                                        initializer=keras.initializers.Constant(self.bias_init))

    def call(self, x):
        w = tf.cast(self.weight, x.dtype) * self.weight_gain
        x = tf.matmul(x, w)
        b = None
        if self.bias is not None:
            b = tf.cast(self.bias, x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear":
            return x + b if b is not None else x
        return bias_act(x, b, act=self.activation)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(in_features=self.in_features, out_features=self.out_features,
                   bias=self.use_bias, activation=self.activation,
                   lr_multiplier=self.lr_multiplier, bias_init=self.bias_init)
        return cfg


@_register
class Conv2dLayer(_Layer):
    """Equalized-lr convolution with optional up/down-sampling, bias, activation and clamp.

    Weight ``[k, k, in, out]`` scaled at run time by ``1/sqrt(in*k*k)``. ``call(x, gain=1)``
    multiplies the activation gain by ``gain`` and the clamp by ``gain`` (as the reference).
    """

    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation="linear",
                 up=1, down=1, resample_filter=(1, 3, 3, 1), conv_clamp=None,
                 trainable=True, **kwargs):
        super().__init__(trainable=trainable, **kwargs)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = int(kernel_size)
        self.use_bias = bool(bias)
        self.activation = activation
        self.up = int(up)
        self.down = int(down)
        self.resample_filter_taps = [float(v) for v in resample_filter]
        self.conv_clamp = None if conv_clamp is None else float(conv_clamp)
        self.resample_filter = setup_resample_filter(self.resample_filter_taps)
        self.padding = self.kernel_size // 2
        self.weight_gain = 1.0 / np.sqrt(self.in_channels * self.kernel_size ** 2)
        self.act_gain = ACT_GAIN[activation]

    def build(self, input_shape=None):
        k = self.kernel_size
        self.weight = self.add_weight(name="weight", shape=(k, k, self.in_channels, self.out_channels),
                                      initializer=keras.initializers.RandomNormal(stddev=1.0))
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.out_channels,), initializer="zeros")

    def call(self, x, gain=1):
        w = tf.cast(self.weight * self.weight_gain, x.dtype)
        flip_weight = self.up == 1  # as the reference
        x = conv2d_resample(x, w, f=self.resample_filter, up=self.up, down=self.down,
                            padding=self.padding, flip_weight=flip_weight)
        b = tf.cast(self.bias, x.dtype) if self.bias is not None else None
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, b, act=self.activation, gain=act_gain, clamp=act_clamp)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(in_channels=self.in_channels, out_channels=self.out_channels,
                   kernel_size=self.kernel_size, bias=self.use_bias, activation=self.activation,
                   up=self.up, down=self.down, resample_filter=self.resample_filter_taps,
                   conv_clamp=self.conv_clamp)
        return cfg


@_register
class SynthesisLayer(_Layer):
    """Modulated 3x3 convolution (optionally up 2) + noise + bias + lrelu (x sqrt2) + clamp.

    Variables: ``affine`` (dense w_dim -> in_channels, bias init 1), ``weight [k,k,in,out]``,
    ``bias [out]``, ``noise_strength []`` (init 0) and the non-trainable ``noise_const [res,res]``.
    """

    def __init__(self, in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1,
                 use_noise=True, activation="lrelu", resample_filter=(1, 3, 3, 1),
                 conv_clamp=None, **kwargs):
        super().__init__(**kwargs)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.w_dim = int(w_dim)
        self.resolution = int(resolution)
        self.kernel_size = int(kernel_size)
        self.up = int(up)
        self.use_noise = bool(use_noise)
        self.activation = activation
        self.resample_filter_taps = [float(v) for v in resample_filter]
        self.conv_clamp = None if conv_clamp is None else float(conv_clamp)
        self.resample_filter = setup_resample_filter(self.resample_filter_taps)
        self.padding = self.kernel_size // 2
        self.act_gain = ACT_GAIN[activation]
        self.affine = FullyConnectedLayer(self.w_dim, self.in_channels, bias_init=1, name="affine")

    def build(self, input_shape=None):
        self._build_child(self.affine)
        k = self.kernel_size
        self.weight = self.add_weight(name="weight", shape=(k, k, self.in_channels, self.out_channels),
                                      initializer=keras.initializers.RandomNormal(stddev=1.0))
        if self.use_noise:
            self.noise_const = self.add_weight(
                name="noise_const", shape=(self.resolution, self.resolution),
                initializer=keras.initializers.RandomNormal(stddev=1.0), trainable=False)
            self.noise_strength = self.add_weight(name="noise_strength", shape=(),
                                                  initializer="zeros")
        self.bias = self.add_weight(name="bias", shape=(self.out_channels,), initializer="zeros")

    def call(self, x, w, noise_mode="random", fused_modconv=False, gain=1):
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be random|const|none, got {noise_mode!r}")
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = random_noise([_dim(x, 0), self.resolution, self.resolution, 1]) \
                * self.noise_strength
        if self.use_noise and noise_mode == "const":
            noise = self.noise_const[None, :, :, None] * self.noise_strength
        flip_weight = self.up == 1
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=flip_weight,
                             fused_modconv=fused_modconv)
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, tf.cast(self.bias, x.dtype), act=self.activation, gain=act_gain,
                        clamp=act_clamp)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(in_channels=self.in_channels, out_channels=self.out_channels, w_dim=self.w_dim,
                   resolution=self.resolution, kernel_size=self.kernel_size, up=self.up,
                   use_noise=self.use_noise, activation=self.activation,
                   resample_filter=self.resample_filter_taps, conv_clamp=self.conv_clamp)
        return cfg


@_register
class ToRGBLayer(_Layer):
    """1x1 modulated convolution without demodulation, + bias, clamp (no activation)."""

    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, **kwargs):
        super().__init__(**kwargs)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.w_dim = int(w_dim)
        self.kernel_size = int(kernel_size)
        self.conv_clamp = None if conv_clamp is None else float(conv_clamp)
        self.weight_gain = 1.0 / np.sqrt(self.in_channels * self.kernel_size ** 2)
        self.affine = FullyConnectedLayer(self.w_dim, self.in_channels, bias_init=1, name="affine")

    def build(self, input_shape=None):
        self._build_child(self.affine)
        k = self.kernel_size
        self.weight = self.add_weight(name="weight", shape=(k, k, self.in_channels, self.out_channels),
                                      initializer=keras.initializers.RandomNormal(stddev=1.0))
        self.bias = self.add_weight(name="bias", shape=(self.out_channels,), initializer="zeros")

    def call(self, x, w, fused_modconv=False):
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, padding=self.kernel_size // 2,
                             fused_modconv=fused_modconv)
        return bias_act(x, tf.cast(self.bias, x.dtype), clamp=self.conv_clamp)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(in_channels=self.in_channels, out_channels=self.out_channels, w_dim=self.w_dim,
                   kernel_size=self.kernel_size, conv_clamp=self.conv_clamp)
        return cfg


@_register
class MinibatchStdLayer(_Layer):
    """Append the mean (over channels/pixels) std-dev over groups of ``group_size`` samples.

    The batch must be divisible by ``min(group_size, N)``; sample ``g*n + j`` is in group ``j``
    (as the reference's reshape ``[G, n, ...]``).
    """

    def __init__(self, group_size, num_channels=1, **kwargs):
        super().__init__(**kwargs)
        self.group_size = None if group_size is None else int(group_size)
        self.num_channels = int(num_channels)

    def build(self, input_shape=None):
        pass

    def call(self, x):
        n, h, w, c = (_dim(x, i) for i in range(4))
        if self.group_size is None:
            g = n
        elif isinstance(n, int):
            g = min(self.group_size, n)
        else:
            g = tf.minimum(self.group_size, n)
        f = self.num_channels
        cc = c // f
        y = tf.reshape(tf.cast(x, tf.float32) if x.dtype == tf.float16 else x,
                       [g, -1, h, w, f, cc])       # [G n H W F c]
        y = y - tf.reduce_mean(y, axis=0)
        y = tf.reduce_mean(tf.square(y), axis=0)   # [n H W F c]
        y = tf.sqrt(y + 1e-8)
        y = tf.reduce_mean(y, axis=[1, 2, 4])      # [n F]
        y = tf.reshape(y, [-1, 1, 1, f])
        y = tf.tile(y, [g, h, w, 1])               # [N H W F]
        return tf.concat([x, tf.cast(y, x.dtype)], axis=-1)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(group_size=self.group_size, num_channels=self.num_channels)
        return cfg
