"""GAN metrics as NVlabs StyleGAN2-ADA computes them: FID and KID on the FID Inception
(``inception.py``, pytorch-fid's inception-2015-12-05 weights), precision/recall on VGG16 fc2
(``vgg.py``); see ``compute.py`` for names (fid50k_full, kid50k_full, pr50k3_full, ...).

``compute_metrics(metrics=['fid50k_full'], generator=Synthesizer(G), data_dir=..., inception_weights=PATH) -> dict``
is the one call the trainer and ``calc_metrics`` use; ``stats`` holds the formulas on feature
arrays; ``fid_features(images_uint8, weights_path)`` the FID features. TensorFlow is imported only
when features are computed.
"""
from histaug_tf.metrics.compute import (  # noqa: F401
    KNOWN_METRICS, check_metric_options, compute_metrics, parse_metric_spec, parse_metrics,
    training_metrics)
from histaug_tf.metrics.inception import fid_features  # noqa: F401
from histaug_tf.metrics.stats import (  # noqa: F401
    FeatureStats, frechet_distance, kernel_inception_distance, precision_recall)
