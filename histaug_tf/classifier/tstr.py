"""TSTR — train on synthetic, test on real: how much class information a synthetic set carries.

A classifier is trained on the synthetic set alone (its ``train`` split), early-stopped on the real
validation split and evaluated on the real test split. Its test AUC is the TSTR AUC: 0.5 means the
synthetic images carry no usable class information, values near the real-data baseline mean they
carry about as much as real patches do.
"""
from __future__ import annotations


def tstr(out_dir: str, synthetic_data: str, real_data: str, *, synthetic_split: str = "train",
         val_split: str = "valid", test_split: str = "test", **train_kwargs) -> dict:
    """Train on ``synthetic_data`` only, validate/test on ``real_data``; return the metrics dict."""
    from histaug_tf.classifier.train import train_classifier
    return train_classifier(out_dir, synthetic_data, train_split=synthetic_split,
                            val_data=real_data, val_split=val_split, test_data=real_data,
                            test_split=test_split, **train_kwargs)
