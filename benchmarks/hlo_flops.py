"""Floating-point operations of an XLA program, counted from its HLO text.

Counts the multiply-adds of every ``dot`` and ``convolution`` instruction (2 FLOPs each) — the
matrix and convolution work that dominates a GAN step; element-wise ops, reductions and the
optimizer update are not counted (they are < 1 % of the FLOPs of a conv net and memory-bound).
Convolution windows are counted exactly: a kernel tap that falls on padding (or between the rows
of an input dilation, as in a transposed convolution's gradient) is not counted.

Use with ``tf.function(..., jit_compile=True).experimental_get_compiler_ir(*args)(stage="hlo")``
(the program as lowered from the TensorFlow graph, before XLA's optimisations).
"""
import re

_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\w+)\[([\d,]*)\]")
_OP = re.compile(r"\s(dot|convolution)\((.*?)\)(?:,|$)")
_OPERAND = re.compile(r"(?:\w+\[([\d,]*)\](?:\{[\d,]*\})?\s+)?%([\w.\-]+)")


def _dims(s):
    return [int(x) for x in s.split(",") if x]


def _window(line):
    """{size, stride, pad_lo, pad_hi, lhs_dilate, rhs_dilate} per spatial dim of ``window={...}``."""
    m = re.search(r"window=\{([^}]*)\}", line)
    if not m:
        return None
    fields = dict(kv.split("=", 1) for kv in m.group(1).split())
    size = [int(x) for x in fields["size"].split("x")]
    n = len(size)

    def get(name, default):
        return [int(x) for x in fields[name].split("x")] if name in fields else [default] * n

    pads = ([tuple(int(v) for v in p.split("_")) for p in fields["pad"].split("x")]
            if "pad" in fields else [(0, 0)] * n)
    return dict(size=size, stride=get("stride", 1), lhs_dilate=get("lhs_dilate", 1),
                rhs_dilate=get("rhs_dilate", 1), pad=pads)


def _valid_taps(in_size, out_size, k, stride, pad_lo, lhs_dil, rhs_dil):
    """Number of (output position, kernel tap) pairs of one spatial dim that read a real input
    element (not padding, not a hole of the lhs dilation)."""
    dilated = (in_size - 1) * lhs_dil + 1
    n = 0
    for o in range(out_size):
        for t in range(k):
            p = o * stride + t * rhs_dil - pad_lo
            if 0 <= p < dilated and p % lhs_dil == 0:
                n += 1
    return n


def count_flops(hlo_text):
    """``{"dot": flops, "convolution": flops, "total": flops, "instructions": n}`` of an HLO
    module's text. Raises ValueError when an instruction cannot be parsed (rather than
    undercounting silently)."""
    shapes = {}
    out = {"dot": 0, "convolution": 0}
    count = 0
    for line in hlo_text.splitlines():
        d = _DEF.match(line)
        if not d:
            continue
        name, _, dims = d.group(1), d.group(2), _dims(d.group(3))
        shapes[name] = dims
        m = _OP.search(line)
        if not m:
            continue
        kind = m.group(1)
        operands = []
        for dm, ref in _OPERAND.findall(m.group(2)):
            operands.append(_dims(dm) if dm or ref not in shapes else shapes[ref])
        if len(operands) != 2:
            raise ValueError(f"cannot parse operands of: {line.strip()[:200]}")
        lhs, rhs = operands
        if kind == "dot":
            c = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
            contract = 1
            for i in _dims(c.group(1)) if c else []:
                contract *= lhs[i]
            prod = 1
            for x in dims:
                prod *= x
            out["dot"] += 2 * prod * contract
        else:
            lab = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", line)
            win = _window(line)
            if not lab or win is None:
                raise ValueError(f"cannot parse convolution: {line.strip()[:200]}")
            ll, rl, ol = lab.groups()
            macs = dims[ol.index("b")] * dims[ol.index("f")] * rhs[rl.index("i")]
            for s in range(len(win["size"])):
                sd = str(s)
                macs *= _valid_taps(lhs[ll.index(sd)], dims[ol.index(sd)], rhs[rl.index(sd)],
                                    win["stride"][s], win["pad"][s][0], win["lhs_dilate"][s],
                                    win["rhs_dilate"][s])
            out["convolution"] += 2 * macs
        count += 1
    out["total"] = out["dot"] + out["convolution"]
    out["instructions"] = count
    return out
