"""Instruments the growth benchmarks share: a tiny model and its data, and
clocks for steps, tracing, garbage collection and the parts of a growth.

`growth_overhead.py` and `preparation_interference.py` measure with them.
"""

import time

TINY_CONFIG = dict(
    vocabulary_size=1000,
    num_layers=2,
    hidden_dim=64,
    num_heads=4,
    intermediate_dim=128,
    dropout=0.0,
)
BATCH_SIZE = 16
SEQUENCE_LENGTH = 64
NUM_BATCHES = 8  # distinct random batches, repeated
LEARNING_RATE = 1e-3


def dataset(seed=0, vocab=TINY_CONFIG["vocabulary_size"]):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    n = NUM_BATCHES * BATCH_SIZE
    shape = (n, SEQUENCE_LENGTH)
    x = {
        "encoder_token_ids": rng.integers(1, vocab, shape).astype("int32"),
        "encoder_padding_mask": np.ones(shape, "int32"),
        "decoder_token_ids": rng.integers(1, vocab, shape).astype("int32"),
        "decoder_padding_mask": np.ones(shape, "int32"),
    }
    y = rng.integers(0, vocab, shape).astype("int32")
    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .batch(BATCH_SIZE, drop_remainder=True)
        .cache()
        .repeat()
        .prefetch(tf.data.AUTOTUNE)
    )


def wrap(backbone):
    import keras

    from keras_fusion.models import FusionT5Seq2SeqLM, GrowingT5Seq2SeqLM

    model = GrowingT5Seq2SeqLM(FusionT5Seq2SeqLM(backbone))
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def tracing_count(model):
    """(id, trace count, inner trace count) of the train function's tf.functions.

    Keras' train function is a Python closure over two `tf.function`s:
    `multi_step_on_iterator` (called every step) and `one_step_on_data`
    (behind a `functools.wraps` wrapper); a count that grows after the first
    step means a retrace.
    """
    function = getattr(model, "train_function", None)
    # GrowingT5Seq2SeqLM wraps Keras' function (to record the data's spec).
    while function is not None and "function" in getattr(function, "__code__", None).co_freevars:
        function = function.__closure__[
            function.__code__.co_freevars.index("function")
        ].cell_contents
    if function is None or not getattr(function, "__closure__", None):
        return None, None, None
    found = {}
    for name, cell in zip(function.__code__.co_freevars, function.__closure__):
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if not hasattr(value, "experimental_get_tracing_count"):
            value = getattr(value, "__wrapped__", None)
        if hasattr(value, "experimental_get_tracing_count"):
            found[name] = (id(value), int(value.experimental_get_tracing_count()))
    outer = found.get("multi_step_on_iterator", (id(function), None))
    inner = found.get("one_step_on_data", (None, None))
    return outer[0], outer[1], inner[1]


class GCClock:
    """Seconds spent in Python's garbage collector, summed (gc.callbacks), and
    the number of collections (`full`: of generation 2)."""

    total = 0.0
    collections = 0
    full = 0
    _start = None

    @classmethod
    def install(cls):
        import gc

        if cls._callback not in gc.callbacks:
            gc.callbacks.append(cls._callback)

    @classmethod
    def _callback(cls, phase, info):
        if phase == "start":
            cls._start = time.perf_counter()
        elif cls._start is not None:
            cls.total += time.perf_counter() - cls._start
            cls.collections += 1
            cls.full += info["generation"] == 2
            cls._start = None


class TraceClock:
    """Seconds spent tracing tf.functions in Python, summed (outermost calls,
    less the Python GC time within them).

    Wraps TensorFlow's `tracing_compilation.trace_function` (which every
    `tf.function` call goes through: a cache lookup, or a trace on a miss).
    """

    total = 0.0
    installed = False
    _depth = 0

    @classmethod
    def install(cls):
        if cls.installed:
            return
        try:
            from tensorflow.python.eager.polymorphic_function import tracing_compilation
        except ImportError:  # another TensorFlow layout: no trace timing
            return
        original = tracing_compilation.trace_function

        def trace_function(*args, **kwargs):
            cls._depth += 1
            start, gc_start = time.perf_counter(), GCClock.total
            try:
                return original(*args, **kwargs)
            finally:
                cls._depth -= 1
                if cls._depth == 0:  # Python GC inside is counted as GC
                    cls.total += time.perf_counter() - start - (GCClock.total - gc_start)

        tracing_compilation.trace_function = trace_function
        cls.installed = True


def step_timer():
    import keras

    GCClock.install()
    TraceClock.install()

    class StepTimer(keras.callbacks.Callback):
        """Times every training step (wall, process CPU, Python GC); keeps
        the trace counts of the train function after each step."""

        def __init__(self):
            super().__init__()
            self.steps = []
            self._begin = None

        def on_train_batch_begin(self, batch, logs=None):
            self._trace = TraceClock.total
            self._gc = GCClock.total
            self._cpu = time.process_time()
            self._begin = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            end = time.perf_counter()
            cpu = time.process_time() - self._cpu
            gc_seconds = GCClock.total - self._gc
            trace_seconds = TraceClock.total - self._trace
            function, traces, inner_traces = tracing_count(self.model)
            self.steps.append(
                dict(
                    begin=self._begin,
                    end=end,
                    cpu=cpu,
                    gc=gc_seconds,
                    trace=trace_seconds,
                    function=function,
                    traces=traces,
                    inner_traces=inner_traces,
                )
            )

    return StepTimer()


class Breakdown:
    """Times the parts of a growth (`keras_fusion.growing.apply_growth`) by
    wrapping what it calls."""

    def __init__(self, entry_class):
        import gc

        from keras_fusion import growing, growth_ahead, optimizer_state
        from keras_fusion.models import FusionT5Seq2SeqLM, GrowingT5Seq2SeqLM

        self.targets = [
            (entry_class, "grown_parameters", "operator (grown parameter arrays)"),
            (optimizer_state, "read_slots", "read optimizer state"),
            (optimizer_state, "map_slots", "map optimizer state"),
            (growth_ahead.Preparation, "wait", "wait for the preparation"),
            (growth_ahead.Preparation, "adopt", "write into the prepared model"),
            (FusionT5Seq2SeqLM, "from_parameters", "build the grown model (synchronous)"),
            (optimizer_state, "rebuild", "rebuild optimizer with state (synchronous)"),
            (GrowingT5Seq2SeqLM, "replace_lm", "replace_lm (swap, reset functions)"),
            (gc, "collect", "gc.collect (free the replaced model)"),
            (growing, "release_free_memory", "malloc_trim (free pages to the system)"),
        ]
        self.seconds = {}

    def __enter__(self):
        self.saved = []
        for owner, name, label in self.targets:
            if isinstance(owner, type):  # the class that defines it (an entry's base class)
                owner = next(c for c in owner.__mro__ if name in c.__dict__)
            self.saved.append((owner, name, owner.__dict__[name]))
            original = getattr(owner, name)  # bound, for a classmethod

            def timed(*args, _original=original, _label=label, **kwargs):
                start = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    self.seconds[_label] = self.seconds.get(_label, 0.0) + (
                        time.perf_counter() - start
                    )

            setattr(owner, name, timed)
        return self

    def __exit__(self, *exc):
        for owner, name, original in self.saved:
            setattr(owner, name, original)
        return False


class Preparations:
    """Collects the `growth_ahead.Preparation`s started (for their times)."""

    def __enter__(self):
        from keras_fusion import growth_ahead

        self.started = []
        self.original = growth_ahead.Preparation.start

        def start(preparation, _original=self.original):
            self.started.append(preparation)
            return _original(preparation)

        growth_ahead.Preparation.start = start
        return self

    def __exit__(self, *exc):
        from keras_fusion import growth_ahead

        growth_ahead.Preparation.start = self.original
        return False
