"""Shared set-up: TensorFlow backend, quiet logs, the repository on sys.path."""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Training steps on CPU otherwise page-fault their buffers in afresh each
# step (keras_fusion.memory.retain_freed_memory); tools.train and the
# benchmarks, which the tests also run in subprocesses, set it themselves.
from keras_fusion import memory  # noqa: E402

memory.retain_freed_memory()
