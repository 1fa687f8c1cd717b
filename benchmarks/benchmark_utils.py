"""What every benchmark prints and records: the machine, the versions, and a
fresh process per measured operation."""

import concurrent.futures
import datetime
import glob
import importlib.metadata
import json
import multiprocessing
import os
import platform
import statistics
import sys


def script_setup(script):
    """Prepare a benchmark script run directly: TensorFlow backend and quiet
    logs by default, the repository root and `benchmarks/` importable.
    Returns the repository root."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    here = os.path.dirname(os.path.abspath(script))
    root = os.path.dirname(here)
    for path in (root, here):
        if path not in sys.path:
            sys.path.insert(0, path)
    return root


def in_fresh_process(fn, *args):
    """Run `fn(*args)` in a new spawned process and return its result."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def meminfo_kib(field, path="/proc/meminfo"):
    """A `Name: value kB` field of a /proc file, in KiB."""
    with open(path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in {path}")


def machine_info():
    """CPU model, core counts, RAM, platform and Python version."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        ram = meminfo_kib("MemTotal") * 1024
    except (OSError, RuntimeError):
        ram = None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return dict(
        cpu_model=cpu,
        cpu_count=os.cpu_count(),
        usable_cpus=usable,
        ram_bytes=ram,
        platform=platform.platform(),
        python=platform.python_version(),
    )


def versions():
    """Installed versions of the stack."""
    out = {}
    for name in ("tensorflow", "keras", "keras-hub", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_result(result, path):
    """Write a benchmark's `result` dict (with `machine` and `versions`) as
    JSON to `path` and print the machine line that heads its report."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    machine = result["machine"]
    print(f"Machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs; {result['versions']}")


def save_json(result, output):
    """Write `result` as indented JSON to `output` atomically (a temporary
    file, then a rename), and say where, with the benchmark's wall time."""
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = output + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    os.replace(tmp, output)
    shown = os.path.relpath(output)
    if shown.startswith(".."):
        shown = os.path.abspath(output)
    took = result.get("benchmark_wall_seconds")
    print(f"\nWrote {shown}" + ("" if took is None else f" (benchmark took {took:.0f} s)") + ".")


def corpus_batches(texts, tokenizer_path, vocabulary_size, shape, seed, training, eval_batches):
    """Span-corruption batches of `texts` at `shape` (batch size, input and
    target length): shuffled and repeated for training, else the first
    `eval_batches` batches in order, cached. Build them after the models
    are seeded: `keras.utils.set_random_seed` deletes an eager
    tensorflow-text tokenizer's resource."""
    from keras_fusion import data

    batch_size, input_length, target_length = shape
    ds = data.make_dataset(
        texts,
        data.load_tokenizer(tokenizer_path),
        vocabulary_size,
        batch_size,
        input_length=input_length,
        target_length=target_length,
        seed=seed,
        shuffle=training,
        repeat=training,
    )
    return ds if training else ds.take(eval_batches).cache()


def open_part(path, **fields):
    """The part file at `path` when it exists (a killed part resumes), else
    a new one: its name, today's date, the machine, the versions, `fields`,
    0 seconds and no runs yet."""
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return dict(
        name=os.path.splitext(os.path.basename(path))[0],
        date=datetime.date.today().isoformat(),
        machine=machine_info(),
        versions=versions(),
        **fields,
        seconds=0.0,
        runs=[],
    )


def part_files(prefix):
    """Every part file under `<prefix>.parts/`: a list of `(path, part)`, in name order."""
    parts = []
    for path in sorted(glob.glob(os.path.join(prefix + ".parts", "*.json"))):
        with open(path) as f:
            parts.append((path, json.load(f)))
    return parts


def read_parts(prefix):
    """Every part file under `<prefix>.parts/`, in name order."""
    return [part for _, part in part_files(prefix)]


def mean_std(values):
    """Mean and sample standard deviation (0 for one value)."""
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
