"""histaug_tf: StyleGAN2-ADA (TensorFlow/Keras) for histopathology data augmentation.

Lower bounds are what the code needs; upper bounds are the newest versions tested.
"""
from setuptools import find_packages, setup

setup(
    name="histaug_tf",
    version="0.1.0",
    description="StyleGAN2-ADA in TensorFlow/Keras for histopathology data augmentation",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["histaug_tf", "histaug_tf.*"]),
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.10,<3.16",
        "absl-py>=2.1,<2.6",
        "h5py>=3.10,<3.17",
        "numpy>=1.26,<2.5",
        "pillow>=10.0,<14",
        "scikit-learn>=1.4,<1.10",
        "scipy>=1.11,<1.18",
        "pandas>=2.1,<3.2",
        "tensorboard>=2.21,<2.22",
        "matplotlib>=3.8,<3.12",
        "psutil>=5.9,<8",
    ],
    extras_require={
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4",
                 # an independent HED reference for the stain augmentation tests
                 "scikit-image>=0.22,<0.27"],
        # CUDA-enabled TensorFlow wheels (Linux x86_64).
        "gpu": ["tensorflow[and-cuda]>=2.21,<2.22"],
        # Importing NVlabs pickles needs nothing extra: tensor storages are parsed without torch
        # (see docs/importing.md).
        "import": [],
    },
)
