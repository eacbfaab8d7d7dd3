"""GAN metrics: FID, KID and precision/recall on Inception-v3 features (see ``compute.py``).

``compute_metrics(metrics=['fid', 'kid', 'pr'], G=..., data_dir=..., num_gen=...) -> dict`` is
the one call the trainer and ``calc_metrics`` use; ``stats`` holds the formulas on feature arrays.
TensorFlow is imported only when features are computed.
"""
from histaug_tf.metrics.compute import (  # noqa: F401
    KNOWN_METRICS, compute_metrics, parse_metric_spec, parse_metrics, training_metrics)
from histaug_tf.metrics.stats import (  # noqa: F401
    FeatureStats, frechet_distance, kernel_inception_distance, precision_recall)
