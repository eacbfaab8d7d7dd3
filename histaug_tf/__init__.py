"""histaug_tf: StyleGAN2-ADA in TensorFlow/Keras for histopathology data augmentation."""

__version__ = "0.1.0"
