"""Reading PyTorch-saved files without torch and without running code from them.

* :mod:`.safe_pickle` — the restricted unpickler (allow-listed globals mapped to inert stand-ins)
  and the ``torch.save`` zip / legacy stream readers;
* :mod:`.limits` — the byte limits every read is held to;
* :mod:`.state_dict` — ``load_state_dict(path) -> {name: np.ndarray}`` (the FID Inception weights).

A foundation-level package: it imports only :mod:`histaug_tf.common` and NumPy, so both the
metrics (Inception weights) and the NVlabs importer (:mod:`histaug_tf.interop`) build on it.
"""
