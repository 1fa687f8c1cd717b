"""tf.distribute strategies for `--strategy`: default, mirrored, multi_worker, tpu.

```python
from keras_fusion import distribution

strategy = distribution.make_strategy("mirrored")
with strategy.scope():
    ...  # build and compile the model
```
"""

import os
import socket

from keras_fusion import _keras_internals, storage


def make_strategy(name, tpu=None):
    """The tf.distribute strategy for `--strategy`."""
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return multi_worker_strategy()
    if name == "tpu":
        check_tpu_reachable(tpu)
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"strategy must be one of default, mirrored, multi_worker, tpu; got {name!r}.")


def is_distributed(strategy):
    """True for a strategy other than TensorFlow's default (no distribution)."""
    import tensorflow as tf

    with strategy.scope():
        return tf.distribute.has_strategy()


def check_tpu_reachable(tpu, timeout=5.0):
    """Raise a ValueError at once when `tpu` cannot be reached.

    TensorFlow's resolver would otherwise wait on an address or a metadata
    server that never answers. `tpu` is a `grpc://HOST:PORT` address, `local`
    (a Cloud TPU VM's own chips) or a TPU name (resolved through the GCE
    metadata server, which only Google Cloud VMs reach).
    """
    if not tpu:
        raise ValueError(
            "--strategy=tpu needs --tpu (a TPU name, 'local' on a TPU VM, or grpc://HOST:PORT)."
        )
    if tpu == "local":
        if not (storage.glob("/dev/accel*") or storage.glob("/dev/vfio/[0-9]*")):
            raise ValueError(
                "--tpu=local: this machine has no TPU device "
                "(no /dev/accel* or /dev/vfio/*); run on a "
                "Cloud TPU VM, or give a TPU name or grpc://HOST:PORT."
            )
        return
    if tpu.startswith("grpc://"):
        host, _, port = tpu[len("grpc://") :].rpartition(":")
        where, what = (
            (host, int(port)) if port.isdigit() else (tpu[len("grpc://") :], 8470),
            f"--tpu={tpu}",
        )
    else:
        host = (
            os.environ.get("GCE_METADATA_IP")
            or os.environ.get("GCE_METADATA_HOST")
            or "metadata.google.internal"
        )
        where = (host.split(":")[0], int(host.split(":")[1]) if ":" in host else 80)
        what = f"--tpu={tpu} (a TPU name, resolved through the GCE metadata server {where[0]})"
    try:
        socket.create_connection(where, timeout=timeout).close()
    except OSError as error:
        raise ValueError(
            f"no TPU reachable: {what} does not answer ({error}). "
            "Check the name or address, that this VM is "
            "in the TPU's network, or run without --strategy=tpu."
        ) from None


def multi_worker_strategy(timeout_seconds=None):
    """`MultiWorkerMirroredStrategy` from TF_CONFIG, patched for Keras 3.15.

    Create it at program start, before any other TensorFlow op. With
    `timeout_seconds`, a collective that waits longer (a worker died or
    hangs) fails instead of blocking forever.

    Two Keras 3.15 bugs break `fit` with dict inputs under this strategy,
    with or without growth; `_keras_internals.patch_strategy_reduce` works
    around them.
    """
    import tensorflow as tf

    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING,
        timeout_seconds=timeout_seconds,
    )
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    return _keras_internals.patch_strategy_reduce(strategy)
