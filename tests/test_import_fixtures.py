"""Test helpers (no NVlabs code, no torch): write pickles with the structure of NVlabs StyleGAN2-ADA
network pickles, and evaluate NVlabs-layout weights with an independent NumPy reference.

* ``pt_param_shapes`` / ``tf1_param_shapes``: the variable names and shapes of NVlabs
  stylegan2-ada-pytorch ``training/networks.py`` and NVlabs stylegan2-ada (TF1)
  ``training/networks.py`` for a given (small) configuration, written from those files' structure.
* ``write_pytorch_pkl``: ``pickle.dump(dict(G=, D=, G_ema=, augment_pipe=, training_set_kwargs=))``
  structure: ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` modules whose tensors are
  ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` over ``torch.storage._load_from_bytes``
  legacy ``torch.save`` streams — the globals and byte layout PyTorch writes.
* ``write_tf1_pkl``: ``pickle.dump((G, D, Gs))`` of ``dnnlib.tflib.network.Network`` states with
  NumPy arrays pickled as ``numpy.core.multiarray._reconstruct`` (as NumPy 1.x wrote them).
* ``np_generator`` / ``np_discriminator``: a direct NumPy (NCHW, PyTorch layout) forward pass of
  StyleGAN2-ADA's G (skip) and D (resnet), loops and explicit padding, no TF.
"""
import collections
import io
import pickle
import struct

import numpy as np

# ---------------------------------------------------------------------------------------------
# A pickler that can name arbitrary globals without importing them.


class GlobalRef:
    def __init__(self, module, name):
        self.module, self.name = module, name


class Reduce:
    """Pickles as ``func(*args)`` followed by ``BUILD state`` when state is not None."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state


class NewObj:
    """Pickles as ``cls.__new__(cls)`` (NEWOBJ), dict items (SETITEMS), then ``BUILD state``."""

    def __init__(self, cls, state=None, dictitems=None):
        self.cls, self.state, self.dictitems = cls, state, dictitems


class _Writer(pickle._Pickler):
    def __init__(self, file, protocol, persistent=None):
        super().__init__(file, protocol=protocol)
        self._persistent = persistent

    def persistent_id(self, obj):
        return self._persistent(obj) if self._persistent else None

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, (GlobalRef, Reduce, NewObj)):
            x = self.memo.get(id(obj))
            if x is not None:
                self.write(self.get(x[0]))
                return
        if isinstance(obj, GlobalRef):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
            self.memoize(obj)
            return
        if isinstance(obj, Reduce):
            self.save(obj.func)
            self.save(tuple(obj.args))
            self.write(pickle.REDUCE)
            self.memoize(obj)
            if obj.state is not None:
                self.save(obj.state)
                self.write(pickle.BUILD)
            return
        if isinstance(obj, NewObj):
            self.save(obj.cls)
            self.write(pickle.EMPTY_TUPLE + pickle.NEWOBJ)
            self.memoize(obj)
            if obj.dictitems:
                self._batch_setitems(iter(obj.dictitems.items()))
            if obj.state is not None:
                self.save(obj.state)
                self.write(pickle.BUILD)
            return
        super().save(obj, save_persistent_id)


def dumps(obj, protocol=4, persistent=None):
    buf = io.BytesIO()
    _Writer(buf, protocol, persistent).dump(obj)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# PyTorch structure.

_ORDERED_DICT = GlobalRef("collections", "OrderedDict")
_MODULE_SRC = "# stand-in for the module source NVlabs embeds; it must never be executed\n"


def torch_storage_bytes(arr, key="140000000000000"):
    """A legacy torch.save stream of one FloatStorage holding ``arr`` (what _load_from_bytes gets)."""
    arr = np.array(arr, dtype="<f4", order="C").reshape(-1)
    buf = io.BytesIO()
    for obj in (0x1950A86A20F9469CFC6C, 1001,
                {"protocol_version": 1001, "little_endian": True,
                 "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(obj, buf, protocol=2)
    marker = object()
    pid = ("storage", GlobalRef("torch", "FloatStorage"), key, "cpu", arr.size, None)
    _Writer(buf, 2, lambda o: pid if o is marker else None).dump(marker)
    pickle.dump([key], buf, protocol=2)
    buf.write(struct.pack("<q", arr.size))
    buf.write(arr.tobytes())
    return buf.getvalue()


def torch_tensor(arr, parameter=True):
    arr = np.asarray(arr, dtype=np.float32)
    shape = tuple(arr.shape)
    stride = tuple(int(s) // 4 for s in np.array(arr, order="C").strides)
    storage = Reduce(GlobalRef("torch.storage", "_load_from_bytes"), (torch_storage_bytes(arr),))
    t = Reduce(GlobalRef("torch._utils", "_rebuild_tensor_v2"),
               (storage, 0, shape, stride, parameter, Reduce(_ORDERED_DICT, ())))
    if parameter:
        t = Reduce(GlobalRef("torch._utils", "_rebuild_parameter"),
                   (t, False, Reduce(_ORDERED_DICT, ())))
    return t


def easydict(d):
    return NewObj(GlobalRef("dnnlib.util", "EasyDict"),
                  dictitems={k: easydict(v) if isinstance(v, dict) else v for k, v in d.items()})


def persistent_module(class_name, params=(), buffers=(), modules=(), init_kwargs=None, attrs=None,
                      module_src=_MODULE_SRC):
    state = {"training": False,
             "_parameters": {k: torch_tensor(v, True) for k, v in dict(params).items()},
             "_buffers": {k: torch_tensor(v, False) for k, v in dict(buffers).items()},
             "_non_persistent_buffers_set": set(),
             "_backward_hooks": Reduce(_ORDERED_DICT, ()),
             "_forward_hooks": Reduce(_ORDERED_DICT, ()),
             "_forward_pre_hooks": Reduce(_ORDERED_DICT, ()),
             "_state_dict_hooks": Reduce(_ORDERED_DICT, ()),
             "_load_state_dict_pre_hooks": Reduce(_ORDERED_DICT, ()),
             "_modules": dict(modules),
             "_init_args": (),
             "_init_kwargs": easydict(init_kwargs or {})}
    state.update(attrs or {})
    meta = {"type": "class", "version": 6, "module_src": module_src, "class_name": class_name,
            "state": state}
    return Reduce(GlobalRef("torch_utils.persistence", "_reconstruct_persistent_obj"), (meta,))


_FILTER = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float32) / 64


def _classify(path, top):
    leaf = path[-1] if path else ""
    if not path:
        return top
    if top == "Generator":
        if path == ["mapping"]:
            return "MappingNetwork"
        if path == ["synthesis"]:
            return "SynthesisNetwork"
        if len(path) == 2 and path[0] == "synthesis":
            return "SynthesisBlock"
        if leaf in ("conv0", "conv1"):
            return "SynthesisLayer"
        if leaf == "torgb":
            return "ToRGBLayer"
        if leaf == "skip":
            return "Conv2dLayer"
        return "FullyConnectedLayer"
    if path == ["mapping"]:
        return "MappingNetwork"
    if path == ["b4"]:
        return "DiscriminatorEpilogue"
    if len(path) == 1:
        return "DiscriminatorBlock"
    if leaf in ("fc", "out", "embed") or leaf.startswith("fc"):
        return "FullyConnectedLayer"
    return "Conv2dLayer"


_BUFFER_NAMES = {"w_avg", "noise_const"}


def module_tree(state_dict, top, init_kwargs):
    """Nest a flat PyTorch state_dict into persistent modules (NVlabs class names)."""
    tree = {}
    for name, value in state_dict.items():
        node = tree
        parts = name.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value

    def build(node, path):
        cls = _classify(path, top)
        params = {k: v for k, v in node.items() if isinstance(v, np.ndarray)
                  and k not in _BUFFER_NAMES}
        buffers = {k: v for k, v in node.items() if isinstance(v, np.ndarray)
                   and k in _BUFFER_NAMES}
        if cls in ("SynthesisLayer", "Conv2dLayer", "SynthesisBlock", "DiscriminatorBlock"):
            buffers["resample_filter"] = _FILTER
        modules = {k: build(v, path + [k]) for k, v in node.items() if isinstance(v, dict)}
        if cls == "DiscriminatorEpilogue":
            modules["mbstd"] = persistent_module("MinibatchStdLayer",
                                                 attrs={"group_size": 4, "num_channels": 1})
        attrs = {"weight_gain": np.float64(0.125)} if cls == "FullyConnectedLayer" else {}
        return persistent_module(cls, params, buffers, modules,
                                 init_kwargs if not path else {}, attrs)

    return build(tree, [])


def write_pytorch_pkl(path, G_sd, G_kwargs, D_sd, D_kwargs, G_ema_sd=None, module_src=None):
    data = dict(
        training_set_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="x.zip",
                                 use_labels=bool(G_kwargs.get("c_dim")), max_size=10,
                                 xflip=False, resolution=G_kwargs["img_resolution"]),
        G=module_tree(G_sd, "Generator", G_kwargs),
        D=module_tree(D_sd, "Discriminator", D_kwargs),
        G_ema=module_tree(G_ema_sd if G_ema_sd is not None else G_sd, "Generator", G_kwargs),
        augment_pipe=persistent_module("AugmentPipe", buffers={"p": np.float32(0.25)},
                                       init_kwargs=dict(xflip=1, rotate90=1)),
    )
    if module_src is not None:
        data["G"].args[0]["module_src"] = module_src
    with open(path, "wb") as f:
        f.write(dumps(data, protocol=4))


# ---------------------------------------------------------------------------------------------
# Shapes of NVlabs networks.

def _channels(channel_base, channel_max, res):
    return min(channel_base // res, channel_max)


def pt_param_shapes_G(z_dim, c_dim, w_dim, img_resolution, img_channels, num_map, channel_base,
                      channel_max):
    """stylegan2-ada-pytorch Generator (skip architecture) state_dict names -> shapes."""
    s = {}
    feats = [z_dim + (w_dim if c_dim else 0)] + [w_dim] * num_map
    if c_dim:
        s["mapping.embed.weight"], s["mapping.embed.bias"] = (w_dim, c_dim), (w_dim,)
    for i in range(num_map):
        s[f"mapping.fc{i}.weight"], s[f"mapping.fc{i}.bias"] = (feats[i + 1], feats[i]), (feats[i + 1],)
    s["mapping.w_avg"] = (w_dim,)
    log2 = int(np.log2(img_resolution))
    for r in [2 ** i for i in range(2, log2 + 1)]:
        cout = _channels(channel_base, channel_max, r)
        cin = _channels(channel_base, channel_max, r // 2) if r > 4 else 0
        b = f"synthesis.b{r}"
        layers = []
        if r == 4:
            s[f"{b}.const"] = (cout, 4, 4)
            layers = [("conv1", cout)]
        else:
            layers = [("conv0", cin), ("conv1", cout)]
        for name, ci in layers:
            s[f"{b}.{name}.weight"] = (cout, ci, 3, 3)
            s[f"{b}.{name}.bias"] = (cout,)
            s[f"{b}.{name}.affine.weight"] = (ci, w_dim)
            s[f"{b}.{name}.affine.bias"] = (ci,)
            s[f"{b}.{name}.noise_strength"] = ()
            s[f"{b}.{name}.noise_const"] = (r, r)
        s[f"{b}.torgb.weight"] = (img_channels, cout, 1, 1)
        s[f"{b}.torgb.bias"] = (img_channels,)
        s[f"{b}.torgb.affine.weight"] = (cout, w_dim)
        s[f"{b}.torgb.affine.bias"] = (cout,)
    return s


def pt_param_shapes_D(c_dim, img_resolution, img_channels, channel_base, channel_max, cmap_dim,
                      num_map):
    """stylegan2-ada-pytorch Discriminator (resnet architecture) state_dict names -> shapes."""
    s = {}
    log2 = int(np.log2(img_resolution))
    for r in [2 ** i for i in range(log2, 2, -1)]:
        tmp = _channels(channel_base, channel_max, r)
        out = _channels(channel_base, channel_max, r // 2)
        if r == img_resolution:
            s[f"b{r}.fromrgb.weight"], s[f"b{r}.fromrgb.bias"] = (tmp, img_channels, 1, 1), (tmp,)
        s[f"b{r}.conv0.weight"], s[f"b{r}.conv0.bias"] = (tmp, tmp, 3, 3), (tmp,)
        s[f"b{r}.conv1.weight"], s[f"b{r}.conv1.bias"] = (out, tmp, 3, 3), (out,)
        s[f"b{r}.skip.weight"] = (out, tmp, 1, 1)
    c4 = _channels(channel_base, channel_max, 4)
    if c_dim:
        s["mapping.embed.weight"], s["mapping.embed.bias"] = (cmap_dim, c_dim), (cmap_dim,)
        for i in range(num_map):
            s[f"mapping.fc{i}.weight"], s[f"mapping.fc{i}.bias"] = (cmap_dim, cmap_dim), (cmap_dim,)
    s["b4.conv.weight"], s["b4.conv.bias"] = (c4, c4 + 1, 3, 3), (c4,)
    s["b4.fc.weight"], s["b4.fc.bias"] = (c4, c4 * 16), (c4,)
    n_out = cmap_dim if c_dim else 1
    s["b4.out.weight"], s["b4.out.bias"] = (n_out, c4), (n_out,)
    return s


def random_weights(shapes, rng):
    """Non-trivial random weights: biases, noise strengths, w_avg all non-zero."""
    out = {}
    for name, shape in shapes.items():
        if name.endswith("noise_strength"):
            v = rng.uniform(0.2, 0.6, size=shape)
        elif name.endswith("affine.bias"):
            v = 1 + 0.3 * rng.standard_normal(shape)
        elif name.endswith("bias") or name.endswith("w_avg"):
            v = 0.3 * rng.standard_normal(shape)
        else:
            v = rng.standard_normal(shape)
        out[name] = np.asarray(v, dtype=np.float32)
    return out


# ---------------------------------------------------------------------------------------------
# TF1 structure (NVlabs stylegan2-ada training/networks.py names), from PyTorch-layout weights.

def _np_array(arr):
    """A NumPy array pickled the way NumPy 1.x pickles it (numpy.core.multiarray._reconstruct)."""
    arr = np.array(arr, dtype=np.float32, order="C")  # (ascontiguousarray would make 0-d 1-d)
    dtype = Reduce(GlobalRef("numpy", "dtype"), ("f4", False, True),
                   (3, "<", None, None, None, -1, -1, 0))
    return Reduce(GlobalRef("numpy.core.multiarray", "_reconstruct"),
                  (GlobalRef("numpy", "ndarray"), (0,), b"b"),
                  (1, tuple(arr.shape), dtype, False, arr.tobytes()))


def tf1_network(name, func, static_kwargs, variables, components=None):
    state = {"version": 5, "name": name, "static_kwargs": static_kwargs,
             "components": components or {},
             "build_module_src": "raise SystemExit('must never run')\n",
             "build_func_name": func,
             "variables": [(k, _np_array(v)) for k, v in variables.items()],
             "input_shapes": [[None, 4]], "output_shapes": [[None, 4]],
             "input_names": ["x"], "output_names": ["y"]}
    return NewObj(GlobalRef("dnnlib.tflib.network", "Network"), state=state)


def pt_to_tf1_G(sd, img_resolution):
    """PyTorch-layout G weights -> the TF1 variables of G_main/G_mapping/G_synthesis."""
    conv = lambda w: np.transpose(w, (2, 3, 1, 0))           # [out,in,kh,kw] -> [kh,kw,in,out]
    convt = lambda w: np.transpose(w, (2, 3, 1, 0))[::-1, ::-1]  # TF conv2d_transpose kernel
    mapping, synthesis = {}, {}
    for name, v in sd.items():
        p = name.split(".")
        if p[0] == "mapping":
            if p[1] == "w_avg":
                continue
            tfn = "LabelEmbed" if p[1] == "embed" else "Dense" + p[1][2:]
            mapping[f"{tfn}/{p[2]}"] = v.T if p[2] == "weight" else v
            continue
        r = int(p[1][1:])
        scope = f"{r}x{r}"
        if p[2] == "const":
            synthesis[f"{scope}/Const/const"] = v[None]
            continue
        layer = {"conv0": "Conv0_up", "conv1": "Conv1" if r > 4 else "Conv", "torgb": "ToRGB"}[p[2]]
        key = ".".join(p[3:])
        if key == "weight":
            synthesis[f"{scope}/{layer}/weight"] = convt(v) if p[2] == "conv0" else conv(v)
        elif key == "bias":
            synthesis[f"{scope}/{layer}/bias"] = v
        elif key == "affine.weight":
            synthesis[f"{scope}/{layer}/mod_weight"] = v.T
        elif key == "affine.bias":
            synthesis[f"{scope}/{layer}/mod_bias"] = v - 1
        elif key == "noise_strength":
            synthesis[f"{scope}/{layer}/noise_strength"] = v
        elif key == "noise_const":
            log2 = int(np.log2(r))
            idx = 0 if r == 4 else (2 * log2 - 5 if p[2] == "conv0" else 2 * log2 - 4)
            synthesis[f"noise{idx}"] = v[None, None]
    return mapping, synthesis, {"dlatent_avg": sd["mapping.w_avg"]}


def pt_to_tf1_D(sd):
    conv = lambda w: np.transpose(w, (2, 3, 1, 0))
    out = {}
    for name, v in sd.items():
        p = name.split(".")
        if p[0] == "mapping":
            tfn = "LabelEmbed" if p[1] == "embed" else "Mapping" + p[1][2:]
            out[f"{tfn}/{p[2]}"] = v.T if p[2] == "weight" else v
            continue
        r = int(p[0][1:])
        if r == 4:
            tfn = {"conv": "4x4/Conv", "fc": "4x4/Dense0", "out": "Output"}[p[1]]
        else:
            tfn = f"{r}x{r}/" + {"fromrgb": "FromRGB", "conv0": "Conv0", "conv1": "Conv1_down",
                                 "skip": "Skip"}[p[1]]
        if p[2] == "weight":
            out[f"{tfn}/weight"] = conv(v) if v.ndim == 4 else v.T
        else:
            out[f"{tfn}/bias"] = v
    return out


def write_tf1_pkl(path, G_sd, G_ema_sd, D_sd, *, z_dim, c_dim, w_dim, img_resolution,
                  img_channels, num_map, fmap_base, fmap_max, mbstd_group_size, d_mapping_fmaps,
                  d_num_map=0, d_mapping_lrmul=None):
    def make_G(sd, name):
        mapping, synthesis, own = pt_to_tf1_G(sd, img_resolution)
        kw = dict(latent_size=z_dim, label_size=c_dim, dlatent_size=w_dim,
                  resolution=img_resolution, num_channels=img_channels, mapping_layers=num_map,
                  fmap_base=fmap_base, fmap_max=fmap_max, architecture="skip", num_fp16_res=0,
                  conv_clamp=None, truncation_psi=0.5, style_mixing_prob=0.9)
        comps = {"mapping": tf1_network("G_mapping", "G_mapping", dict(kw), mapping),
                 "synthesis": tf1_network("G_synthesis", "G_synthesis", dict(kw), synthesis)}
        return tf1_network(name, "G_main", kw, own, comps)

    D_kw = dict(label_size=c_dim, resolution=img_resolution, num_channels=img_channels,
                fmap_base=fmap_base, fmap_max=fmap_max, architecture="resnet",
                mbstd_group_size=mbstd_group_size, mapping_fmaps=d_mapping_fmaps,
                mapping_layers=d_num_map,
                **({} if d_mapping_lrmul is None else {"mapping_lrmul": d_mapping_lrmul}),
                num_fp16_res=0, conv_clamp=None)
    data = (make_G(G_sd, "G"), tf1_network("D", "D_main", D_kw, pt_to_tf1_D(D_sd)),
            make_G(G_ema_sd, "Gs"))
    with open(path, "wb") as f:
        f.write(dumps(data, protocol=3))


# ---------------------------------------------------------------------------------------------
# NumPy reference forward (NCHW, PyTorch layout).

def _lrelu(x):
    return np.where(x >= 0, x, 0.2 * x) * np.sqrt(2)


def _fc(x, w, b, lr=1.0, act=False):
    y = x @ (w * (lr / np.sqrt(w.shape[1]))).T + b * lr
    return _lrelu(y) if act else y


def _norm2(x):
    return x / np.sqrt(np.mean(x ** 2, axis=1, keepdims=True) + 1e-8)


def _xcorr(x, w, stride=1):
    """Cross-correlation of padded x [N,C,H,W] with w [O,C,kh,kw], 'valid', given stride."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, o, ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out


def _upfirdn(x, f, up=1, down=1, pad=(0, 0, 0, 0), gain=1.0):
    """Upsample by zero insertion, pad (x0, x1, y0, y1), convolve with f (true convolution), decimate."""
    n, c, h, w = x.shape
    if up > 1:
        z = np.zeros((n, c, h * up, w * up))
        z[:, :, ::up, ::up] = x
        x = z
    x0, x1, y0, y1 = pad
    x = np.pad(x, ((0, 0), (0, 0), (max(y0, 0), max(y1, 0)), (max(x0, 0), max(x1, 0))))
    x = x[:, :, max(-y0, 0):x.shape[2] - max(-y1, 0), max(-x0, 0):x.shape[3] - max(-x1, 0)]
    k = f[::-1, ::-1] * gain
    fh, fw = k.shape
    out = np.zeros((n, c, x.shape[2] - fh + 1, x.shape[3] - fw + 1))
    for i in range(fh):
        for j in range(fw):
            out += k[i, j] * x[:, :, i:i + out.shape[2], j:j + out.shape[3]]
    return out[:, :, ::down, ::down]


def _modconv(x, weight, styles, demodulate, up, noise=None):
    n = x.shape[0]
    out = []
    for i in range(n):
        w = weight * styles[i][None, :, None, None]
        if demodulate:
            w = w / np.sqrt(np.sum(w ** 2, axis=(1, 2, 3), keepdims=True) + 1e-8)
        xi = x[i:i + 1]
        if up == 1:
            k = w.shape[2] // 2
            y = _xcorr(np.pad(xi, ((0, 0), (0, 0), (k, k), (k, k))), w)
        else:  # upsample 2x with the [1,3,3,1] filter (gain 4), then the 3x3 conv (true convolution)
            y = _xcorr(_upfirdn(xi, _F, up=2, pad=(3, 2, 3, 2), gain=4), w[:, :, ::-1, ::-1])
        out.append(y)
    y = np.concatenate(out)
    if noise is not None:
        y = y + noise
    return y


_F = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float64) / 64


def np_mapping(p, z, c, num_map, psi=1.0, cutoff=None, num_ws=None, prefix="mapping.", lr=0.01):
    x = []
    if z is not None:
        x.append(_norm2(z))
    if c is not None:
        x.append(_norm2(_fc(c, p[prefix + "embed.weight"], p[prefix + "embed.bias"])))
    x = np.concatenate(x, axis=1)
    for i in range(num_map):
        x = _fc(x, p[f"{prefix}fc{i}.weight"], p[f"{prefix}fc{i}.bias"], lr=lr, act=True)
    if num_ws is None:
        return x
    ws = np.repeat(x[:, None], num_ws, axis=1)
    if psi != 1:
        w_avg = p[prefix + "w_avg"]
        cut = num_ws if cutoff is None else cutoff
        ws[:, :cut] = w_avg + psi * (ws[:, :cut] - w_avg)
    return ws


def np_generator(p, z, c, img_resolution, num_map, psi=1.0, cutoff=None):
    """G_ema(z, c, truncation_psi=psi, noise_mode='const') -> NCHW images (float64)."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    log2 = int(np.log2(img_resolution))
    num_ws = 2 * log2 - 2
    ws = np_mapping(p, z, c, num_map, psi, cutoff, num_ws)
    n = z.shape[0]

    def layer(x, name, w, up, r):
        styles = _fc(w, p[name + ".affine.weight"], p[name + ".affine.bias"])
        noise = p[name + ".noise_const"] * p[name + ".noise_strength"]
        y = _modconv(x, p[name + ".weight"], styles, True, up, noise[None, None])
        return _lrelu(y + p[name + ".bias"][None, :, None, None])

    def torgb(x, name, w):
        weight = p[name + ".weight"]
        styles = _fc(w, p[name + ".affine.weight"], p[name + ".affine.bias"]) / np.sqrt(
            weight.shape[1])
        return _modconv(x, weight, styles, False, 1) + p[name + ".bias"][None, :, None, None]

    x = np.repeat(p["synthesis.b4.const"][None], n, axis=0)
    x = layer(x, "synthesis.b4.conv1", ws[:, 0], 1, 4)
    img = torgb(x, "synthesis.b4.torgb", ws[:, 1])
    for k, r in enumerate([2 ** i for i in range(3, log2 + 1)]):
        b = f"synthesis.b{r}"
        x = layer(x, b + ".conv0", ws[:, 1 + 2 * k], 2, r)
        x = layer(x, b + ".conv1", ws[:, 2 + 2 * k], 1, r)
        img = _upfirdn(img, _F, up=2, pad=(2, 1, 2, 1), gain=4)
        img = img + torgb(x, b + ".torgb", ws[:, 3 + 2 * k])
    return img


def _conv_layer(x, w, b, act, pad, down=1, gain=1.0):
    wg = w / np.sqrt(w.shape[1] * w.shape[2] * w.shape[3])
    if down == 1:
        y = _xcorr(np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))), wg)
    elif w.shape[2] == 1:  # 1x1: filter + decimate, then conv
        y = _xcorr(_upfirdn(x, _F, down=2, pad=(1, 1, 1, 1)), wg)
    else:  # 3x3: filter with pad 2, then stride-2 conv
        y = _xcorr(_upfirdn(x, _F, pad=(2, 2, 2, 2)), wg, stride=2)
    if b is not None:
        y = y + b[None, :, None, None]
    return (_lrelu(y) if act else y) * gain


def np_discriminator(p, img, c, img_resolution, num_map, mbstd_group=4, map_lr=0.01):
    """D(img, c) -> logits [N, 1] for the resnet architecture (img NCHW)."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    x = None
    log2 = int(np.log2(img_resolution))
    for r in [2 ** i for i in range(log2, 2, -1)]:
        b = f"b{r}"
        if x is None:
            x = _conv_layer(img, p[b + ".fromrgb.weight"], p[b + ".fromrgb.bias"], True, 0)
        y = _conv_layer(x, p[b + ".skip.weight"], None, False, 0, down=2, gain=np.sqrt(0.5))
        x = _conv_layer(x, p[b + ".conv0.weight"], p[b + ".conv0.bias"], True, 1)
        x = _conv_layer(x, p[b + ".conv1.weight"], p[b + ".conv1.bias"], True, 1, down=2,
                        gain=np.sqrt(0.5))
        x = x + y
    n, ch, h, w = x.shape
    g = min(mbstd_group, n) if mbstd_group is not None else n
    y = x.reshape(g, n // g, 1, ch, h, w)
    y = np.sqrt(np.mean((y - y.mean(axis=0)) ** 2, axis=0) + 1e-8)   # [n/g, 1, ch, h, w]
    y = y.mean(axis=(2, 3, 4)).reshape(-1, 1, 1, 1)                  # [n/g, 1, 1, 1]
    y = np.tile(y, (g, 1, h, w))
    x = np.concatenate([x, y], axis=1)
    x = _conv_layer(x, p["b4.conv.weight"], p["b4.conv.bias"], True, 1)
    x = _fc(x.reshape(n, -1), p["b4.fc.weight"], p["b4.fc.bias"], act=True)
    x = _fc(x, p["b4.out.weight"], p["b4.out.bias"])
    if c is not None and "mapping.embed.weight" in p:
        cmap = np_mapping(p, None, c, num_map, lr=map_lr)
        x = np.sum(x * cmap, axis=1, keepdims=True) / np.sqrt(cmap.shape[1])
    return x


def test_fixture_self_check_upfirdn_identity():
    # upsample-then-downsample with the normalised filter and matching pads keeps a constant image
    x = np.ones((1, 1, 4, 4))
    y = _upfirdn(x, _F, up=2, pad=(2, 1, 2, 1), gain=4)
    assert y.shape == (1, 1, 8, 8)
    np.testing.assert_allclose(y[:, :, 2:-2, 2:-2], 1.0, atol=1e-12)


_ = collections  # (kept for parity with the real format: OrderedDict is referenced by name)
