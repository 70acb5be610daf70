"""One place per method: the model it trains, the engine that fills its gradients, the spec fields
it reads, what it costs in memory and where its attention looks (docs/design.md, "The method").

    method = METHODS["sab"]
    model = method.build(ModelShape(10, 64, 10), Knobs(k_top=3, k_att=5))
    result = method.engine(model, batch, loss_fn, k_trunc)          # -> StepResult(loss, logits)

Adding a method is one `Method` entry here plus its engine function; the harness (cell identity,
reports, attention maps) and the benchmarks (memory estimates) read everything else from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from torch import nn

from sab import credit
from sab.model import SABLSTM, LSTMModel
from sab.transformer import CausalTransformer


@dataclass(frozen=True)
class Knobs:
    """The method parameters a trial spec carries; each method reads only those in its `reads`.

    These defaults are the trial spec's defaults (sab.train.TrialSpec takes them from here).
    """

    k_trunc: int = 5
    k_top: int = 3
    k_att: int = 5
    attn_size: int | None = None
    scorer_init: str = "auto"  # resolved per task by sab.train.resolved_scorer_init; without a task, zero

    @classmethod
    def of(cls, spec: object) -> Knobs:
        """The knobs of any object that has them as attributes (a TrialSpec, a benchmark config)."""
        return cls(**{f.name: getattr(spec, f.name, f.default) for f in fields(cls)})


KNOBS = tuple(f.name for f in fields(Knobs))
"""Every method parameter: the fields a method may read (a cell's identity keeps only the read ones)."""


@dataclass(frozen=True)
class ModelShape:
    """Sizes a task and a spec give every model."""

    input_size: int
    hidden_size: int
    output_size: int


@dataclass(frozen=True)
class Footprint:
    """What a memory estimate needs: one training step of batch B, hidden H, L steps."""

    batch_size: int
    hidden_size: int
    seq_len: int
    knobs: Knobs = Knobs()
    bytes_per_float: int = 4
    replay_group: int = 1  # sab: segments whose replay records are held at once

    @property
    def lstm_step_bytes(self) -> int:
        """Bytes one LSTM step keeps for backward (the fused CPU kernel's workspace is ~16H floats)."""
        return 16 * self.hidden_size * self.batch_size * self.bytes_per_float


@dataclass(frozen=True)
class Method:
    """A credit-assignment method: how to build its model, train it one step, and what it costs."""

    name: str
    summary: str
    build: Callable[[ModelShape, Knobs], nn.Module]
    engine: Callable[..., credit.StepResult]
    reads: tuple[str, ...]
    memory_bytes: Callable[[Footprint], int]
    memory_stride: Callable[[Knobs], int] | None = None
    """Steps between memory writes of an attention model (its attention map's slots); None: no attention."""
    replays: bool = False
    """The engine replays segments (sab.replay): a replay group applies to it."""


def _lstm(shape: ModelShape, knobs: Knobs) -> nn.Module:
    return LSTMModel(shape.input_size, shape.hidden_size, shape.output_size)


def _sab_lstm(shape: ModelShape, knobs: Knobs) -> nn.Module:
    return SABLSTM(*_sizes(shape), k_top=knobs.k_top, k_att=knobs.k_att, attn_size=knobs.attn_size, scorer_init=_scorer_init(knobs))


def _scorer_init(knobs: Knobs) -> str:
    """The model's initialisation: `auto` needs the task (sab.train resolves it first); alone it means zero."""
    return "zero" if knobs.scorer_init == "auto" else knobs.scorer_init


def _dense_lstm(shape: ModelShape, knobs: Knobs) -> nn.Module:
    return SABLSTM(*_sizes(shape), k_top=None, k_att=1, attn_size=knobs.attn_size, scorer_init=_scorer_init(knobs))


def _transformer(shape: ModelShape, knobs: Knobs) -> nn.Module:
    return CausalTransformer(*_sizes(shape))


def _sizes(shape: ModelShape) -> tuple[int, int, int]:
    return shape.input_size, shape.hidden_size, shape.output_size


def _full_graph_bytes(f: Footprint) -> int:
    return f.lstm_step_bytes * f.seq_len


def _dense_attention_bytes(f: Footprint, k_att: int) -> int:
    """Stacked banks, keys and tanh of every step against every memory: Σ_t |M_t| pairs."""
    pairs = f.seq_len * f.seq_len // (2 * k_att)
    return 4 * f.hidden_size * f.batch_size * f.bytes_per_float * pairs + _full_graph_bytes(f)


def _two_pass_bytes(f: Footprint) -> int:
    """Bank, keys and G per memory, boundary states per segment, and one replay group's records."""
    B, H, L, k, w = f.batch_size, f.hidden_size, f.seq_len, f.knobs, f.bytes_per_float
    return 3 * H * B * w * (L // k.k_att + 1) + 2 * H * B * w * (L // k.k_trunc + 1) + f.lstm_step_bytes * 2 * k.k_trunc * f.replay_group


def _transformer_bytes(f: Footprint) -> int:
    """Attention scores and weights of every layer and head, saved for backward."""
    B, H, L, w = f.batch_size, f.hidden_size, f.seq_len, f.bytes_per_float
    return 3 * 2 * 4 * B * L * L * w + 40 * H * B * L * w


_ATTENTION = ("attn_size", "scorer_init")

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("bptt", "plain LSTM, full BPTT through the fused nn.LSTM", _lstm, credit.bptt, (), _full_graph_bytes),
        Method(
            "bptt_cell",
            "plain LSTM, full BPTT through a step loop (the loop's cost reference)",
            _lstm,
            credit.bptt_cell,
            (),
            _full_graph_bytes,
        ),
        Method(
            "tbptt",
            "plain LSTM, a backward after each k_trunc chunk",
            _lstm,
            credit.tbptt,
            ("k_trunc",),
            lambda f: f.lstm_step_bytes * f.knobs.k_trunc,
        ),
        Method(
            "self_attention",
            "LSTM + dense softmax attention over every past state, full BPTT",
            _dense_lstm,
            credit.self_attention,
            _ATTENTION,
            lambda f: _dense_attention_bytes(f, 1),
            lambda knobs: 1,
        ),
        Method(
            "sab_reference",
            "SAB through plain autograd over the whole graph (obviously right; memory ~ L²/k_att)",
            _sab_lstm,
            credit.sab_reference,
            ("k_trunc", "k_top", "k_att", *_ATTENTION),
            lambda f: _dense_attention_bytes(f, f.knobs.k_att),
            lambda knobs: knobs.k_att,
        ),
        Method(
            "sab",
            "SAB in two passes: memory O(L/k_att + L/k_trunc) states",
            _sab_lstm,
            credit.sab,
            ("k_trunc", "k_top", "k_att", *_ATTENTION),
            _two_pass_bytes,
            lambda knobs: knobs.k_att,
            replays=True,
        ),
        Method("transformer", "a small causal Transformer, full backprop", _transformer, credit.transformer, (), _transformer_bytes),
    )
}
"""Every method by name: the `method` of a trial."""

METHOD_NAMES = tuple(METHODS)

SUBJECT = "sab"
"""The method the comparisons are about."""
REFERENCES = ("bptt", "tbptt")
"""The methods SUBJECT is compared against in every report's contrast line."""


def method(name: str) -> Method:
    """The registry entry of `name`; an unknown name is one clear error naming the valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHOD_NAMES)}")
    return METHODS[name]


def build_model(name: str, input_size: int, hidden_size: int, output_size: int, **knobs) -> nn.Module:
    """The model method `name` trains, e.g. `build_model("sab", 10, 64, 10, k_top=3, k_att=5)`."""
    return method(name).build(ModelShape(input_size, hidden_size, output_size), Knobs(**knobs))
