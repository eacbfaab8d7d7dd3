"""``calc_metrics``: resolve the command line's networks / datasets, then ``compute_metrics``."""
from __future__ import annotations

import os
import time

from histaug_tf.common import UserError
from histaug_tf.metrics.compute import compute_metrics, parse_metrics


def calc_metrics(metrics, data_dir, network=None, networks=None, gen_data_dir=None,
                 inception_weights=None, vgg16_weights=None, inception_seed=0,
                 inception_resolution=299, batch_size=64, jit_compile=False, **kwargs) -> dict:
    """Returns ``{'metrics': {...}, 'network'|'networks'|'gen_data': ..., 'data': ..., details}``."""
    from histaug_tf.gan.generate_lib import load_generator, parse_networks_map
    from histaug_tf.metrics.compute import check_metric_options

    if not data_dir:
        raise UserError("--data (the real dataset directory) is required")
    wanted = parse_metrics(metrics)
    if not wanted:
        raise UserError("--metrics: nothing to compute")
    given = [x for x in (network, networks, gen_data_dir) if x]
    if len(given) != 1:
        raise UserError("give exactly one of --network, --networks and --gen_data")
    weights = check_metric_options(metrics, inception_weights, vgg16_weights)
    if not os.path.isdir(data_dir):
        raise UserError(f"{data_dir}: dataset directory does not exist")
    out = {"data": os.path.abspath(data_dir)}
    G = None
    if network:
        G, _meta, path = load_generator(network)
        out["network"] = os.path.abspath(path)
    elif networks:
        G = {}
        out["networks"] = {}
        for c, p in sorted(parse_networks_map(networks).items()):
            G[c], _meta, path = load_generator(p)
            out["networks"][str(c)] = os.path.abspath(path)
    else:
        out["gen_data"] = os.path.abspath(gen_data_dir)
    details = {}
    t0 = time.monotonic()
    out["metrics"] = compute_metrics(metrics, data_dir=data_dir, G=G, gen_data_dir=gen_data_dir,
                                     inception_weights=weights["inception_weights"],
                                     vgg16_weights=weights["vgg16_weights"],
                                     inception_seed=inception_seed,
                                     inception_resolution=inception_resolution,
                                     batch_size=batch_size,
                                     jit_compile=jit_compile, details=details, **kwargs)
    out["seconds"] = time.monotonic() - t0
    out.update(details)
    return out
