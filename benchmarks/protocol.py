"""The growth-against-scratch protocol that the benchmarks share.

`growth_vs_scratch.py` (v1, frozen) and `growth_vs_scratch_v2.py` build on
these, and `step_time.py` takes its model shapes from here: no benchmark
script imports another.

- `Setup`, `Data`: the settings every arm shares, and the tokenizer, corpus
  and held-out batches;
- `divide_width`, `halve_depth`: the configs that growth starts from;
- `interpolate`, `flops_to_reach`: reading a loss-against-FLOPs curve;
- `plot`: the curves of every arm, with scratch's final loss.
"""

import dataclasses
import os

from benchmark_utils import corpus_batches


@dataclasses.dataclass
class Setup:
    """The shared settings of every arm."""

    target: dict
    steps: int
    eval_every: int
    batch_size: int
    input_length: int
    target_length: int
    growth_fraction: float
    rewarmup_steps: int
    eval_batches: int

    @property
    def shape(self):
        return (self.batch_size, self.input_length, self.target_length)

    def step_flops(self, config):
        from keras_fusion import flops

        return flops.training_flops(config, *self.shape)

    @property
    def budget(self):
        return self.steps * self.step_flops(self.target)


class Data:
    """The tokenizer, corpus and validation batches every arm shares."""

    def __init__(self, vocabulary_size, workdir, setup, corpus="embedded"):
        """`corpus`: a `load_corpus` spec, or a function of the split."""
        from keras_fusion import data

        load = corpus if callable(corpus) else lambda split: data.load_corpus(corpus, split)
        self.train_texts = load("train")
        self.valid_texts = load("validation")
        self.tokenizer_path = data.train_tokenizer(
            self.train_texts, vocabulary_size, os.path.join(workdir, "tokenizer")
        )
        self.vocabulary_size = data.vocabulary_size(self.tokenizer_path)
        self.setup = setup

    def dataset(self, seed, training=True):
        return corpus_batches(
            self.train_texts if training else self.eval_texts(),
            self.tokenizer_path,
            self.vocabulary_size,
            self.setup.shape,
            seed,
            training,
            self.setup.eval_batches,
        )

    def eval_texts(self):
        """The documents the held-out batches are cut from, in order."""
        return self.valid_texts

    def train_tokens(self):
        """How many tokens the training texts hold."""
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(model_file=self.tokenizer_path)
        return sum(map(len, processor.encode(self.train_texts)))


def divide_width(config, parts):
    """The config of one of `parts` models whose fusion is `config`."""
    for key in ("hidden_dim", "num_heads", "intermediate_dim"):
        if config[key] % parts:
            raise ValueError(f"{key}={config[key]} does not split into {parts} models")
    return dict(
        config,
        hidden_dim=config["hidden_dim"] // parts,
        num_heads=config["num_heads"] // parts,
        intermediate_dim=config["intermediate_dim"] // parts,
    )


def halve_depth(config):
    """The config of the half-depth model that `deepen` and `stack` start from."""
    if config["num_layers"] % 2:
        raise ValueError(f"num_layers={config['num_layers']} does not halve")
    return dict(config, num_layers=config["num_layers"] // 2)


def interpolate(rows, flops):
    """Eval loss at `flops` by linear interpolation between evaluations."""
    points = [(r["flops"], r["eval_loss"]) for r in rows]
    for (f0, l0), (f1, l1) in zip(points, points[1:]):
        if f0 <= flops <= f1:
            return l0 + (l1 - l0) * (flops - f0) / (f1 - f0) if f1 > f0 else l1
    return points[-1][1] if flops > points[-1][0] else points[0][1]


def flops_to_reach(rows, loss, budget):
    """FLOPs at which the eval loss first falls to `loss` (None if never)."""
    points = [(r["flops"], r["eval_loss"]) for r in rows]
    for (f0, l0), (f1, l1) in zip(points, points[1:]):
        if f0 > budget:
            break
        if l1 <= loss:
            at = f1 if l0 == l1 else f0 + (f1 - f0) * (l0 - loss) / (l0 - l1)
            at = max(f0, at) if l0 > loss else f0
            return at if at <= budget else None
    return None


def plot(groups, budget, target_loss, path, title, marks=((0.6, "0.6 x budget"),)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    for index, (label, records) in enumerate(groups.items()):
        color = f"C{index}"
        for k, record in enumerate(records):
            rows = [r for r in record["rows"] if r["flops"] <= budget * 1.05]
            axis.plot(
                [r["flops"] for r in rows],
                [r["eval_loss"] for r in rows],
                color=color,
                alpha=0.8,
                linewidth=1.2,
                label=label if k == 0 else None,
            )
            for r in rows:
                if r["growth"]:
                    axis.axvline(r["flops"], color=color, linestyle=":", alpha=0.5)
    axis.axhline(
        target_loss, color="black", linewidth=0.8, linestyle="--", label="scratch loss at budget"
    )
    for fraction, label in marks:
        axis.axvline(fraction * budget, color="grey", linewidth=0.8, linestyle="-.", label=label)
    axis.set_xlabel("training FLOPs (every model of the arm)")
    axis.set_ylabel("held-out loss")
    axis.set_title(title, fontsize=10)
    losses = [r["eval_loss"] for records in groups.values() for rec in records for r in rec["rows"]]
    axis.set_ylim(min(losses) - 0.05, min(max(losses), target_loss + 1.5))
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path + ".partial.png", dpi=100)
    plt.close(figure)
    os.replace(path + ".partial.png", path)
