"""The engines compute the gradients docs/design.md defines: two-pass SAB = the one-graph reference, and
the reference itself checked independently (against TBPTT/BPTT, gradcheck, a hand-derived path)."""

from __future__ import annotations

import pytest
import torch

from sab.credit import reference_loss
from sab.methods import METHODS, build_model
from sab.model import lstm_step
from sab.tasks.base import Batch, cross_entropy


def _batch(B: int, L: int, inputs: int, classes: int, dtype=torch.float64, seed: int = 0, positions=None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    positions = torch.arange(L) if positions is None else torch.tensor(positions)
    x = torch.randn(B, L, inputs, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (B, len(positions)), generator=g)
    return Batch(x, y, positions)


def _grads(method: str, model, batch: Batch, k_trunc) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = METHODS[method].engine(model, batch, cross_entropy, k_trunc)
    grads = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}
    return out.loss, grads


def _max_relative_error(a: dict, b: dict) -> float:
    return max(((a[n] - b[n]).norm() / b[n].norm().clamp_min(1e-300)).item() for n in b)


# (L, k_trunc, k_att, k_top): k_att <, =, > k_trunc; the |M| <= k_top phase; partial last segments.
PARITY_CASES = [
    (17, 3, 2, 2),  # k_att < k_trunc, partial last segment (17 = 5*3 + 2)
    (17, 4, 4, 3),  # k_att = k_trunc, whole run inside |M| <= k_top for a while
    (40, 5, 5, 3),  # k_att = k_trunc
    (40, 4, 7, 2),  # k_att > k_trunc, k_trunc does not divide k_att
    (40, 6, 3, 20),  # |M| <= k_top for the whole sequence (softmax phase only)
    (100, 10, 3, 5),  # many memories per segment
    (100, 7, 10, 3),  # partial last segment, k_att > k_trunc
    (100, 100, 5, 3),  # one segment (k_trunc >= L)
]


@pytest.mark.parametrize("L,k_trunc,k_att,k_top", PARITY_CASES)
def test_two_pass_sab_equals_reference_float64(L, k_trunc, k_att, k_top):
    torch.manual_seed(L + k_trunc + k_att + k_top)
    model = build_model("sab", 5, 8, 4, k_top=k_top, k_att=k_att, scorer_init="uniform").double()
    batch = _batch(3, L, 5, 4)
    ref_loss, ref = _grads("sab_reference", model, batch, k_trunc)
    loss, got = _grads("sab", model, batch, k_trunc)
    assert abs(loss - ref_loss) <= 1e-12 * abs(ref_loss)
    assert _max_relative_error(got, ref) <= 1e-10
    assert all(g.abs().sum() > 0 for g in ref.values())


@pytest.mark.parametrize("group", [2, 3, 64])
@pytest.mark.parametrize("L,k_trunc,k_att,k_top", PARITY_CASES)
def test_grouped_replay_equals_reference_float64(L, k_trunc, k_att, k_top, group):
    """Segments replayed forward `group` at a time (sab.replay; a GPU's default) give the same
    gradients, the inputs' included, as the reference: groups of 2 and 3 leave partial groups
    and singletons beside them, 64 takes every full sparse segment at once."""
    torch.manual_seed(L + k_trunc + k_att + k_top)
    model = build_model("sab", 5, 8, 4, k_top=k_top, k_att=k_att, scorer_init="uniform").double()
    batch = _batch(3, L, 5, 4)
    x = batch.inputs.clone().requires_grad_()
    batch = Batch(x, batch.targets, batch.positions)
    _, ref = _grads("sab_reference", model, batch, k_trunc)
    ref["inputs"], x.grad = x.grad, None
    model.replay_group = group
    _, got = _grads("sab", model, batch, k_trunc)
    got["inputs"] = x.grad
    assert _max_relative_error(got, ref) <= 1e-10


@pytest.mark.parametrize("group", [1, 3])
@pytest.mark.parametrize("L,k_trunc,k_att,k_top", PARITY_CASES)
def test_sorted_credit_sum_of_the_gpu_equals_reference_float64(L, k_trunc, k_att, k_top, group, monkeypatch):
    """G's credit summed as a GPU sums it (sab.replay.accumulate_rows: index_put_ with accumulate, the
    deterministic path, instead of index_add_'s atomics), run here on the CPU: the same gradients as
    the reference, alone and in replay groups, and the same as index_add_'s to float64 rounding."""
    import sab.replay

    torch.manual_seed(L + k_trunc + k_att + k_top)
    model = build_model("sab", 5, 8, 4, k_top=k_top, k_att=k_att, scorer_init="uniform").double()
    model.replay_group = group
    batch = _batch(3, L, 5, 4)
    _, ref = _grads("sab_reference", model, batch, k_trunc)
    _, added = _grads("sab", model, batch, k_trunc)
    monkeypatch.setattr(sab.replay, "SORTED_CREDIT_DEVICES", {"cpu"})
    _, sorted_sum = _grads("sab", model, batch, k_trunc)
    assert _max_relative_error(sorted_sum, ref) <= 1e-10
    assert _max_relative_error(sorted_sum, added) <= 1e-12


def test_accumulate_rows_sums_repeated_rows_on_either_path(monkeypatch):
    """A memory read at several steps gets the sum of their credit, whichever path sums it."""
    import sab.replay

    rows = torch.tensor([2, 0, 2, 2, 1])
    values = torch.arange(10, dtype=torch.float64).view(5, 2)
    expected = torch.tensor([[2.0, 3.0], [8.0, 9.0], [0.0 + 4 + 6, 1.0 + 5 + 7]])
    for devices in (set(), {"cpu"}):
        monkeypatch.setattr(sab.replay, "SORTED_CREDIT_DEVICES", devices)
        target = torch.zeros(3, 2, dtype=torch.float64)
        sab.replay.accumulate_rows(target, rows, values)
        assert torch.equal(target, expected), devices


def test_replay_groups_only_full_sparse_live_segments_in_replay_order():
    """The plan of groups: last segment first; only full segments whose every step reads through
    the sparsifier share a group (here from step 20: (k_top+1) k_att); dead segments are skipped."""
    from sab.replay import _groups

    live = [True] * 9 + [True]  # L = 48 in segments of 5: the last is partial (45..47)
    assert _groups(live, 48, 5, 20, 3) == [[9], [6, 7, 8], [4, 5], [3], [2], [1], [0]]
    live[7] = False
    assert _groups(live, 48, 5, 20, 3) == [[9], [5, 6, 8], [4], [3], [2], [1], [0]]
    assert _groups(live, 48, 5, 20, 1) == [[9], [8], [6], [5], [4], [3], [2], [1], [0]]


@pytest.mark.parametrize("L,k_trunc,k_att,k_top", [(40, 5, 5, 3), (17, 3, 2, 2), (100, 7, 10, 3)])
def test_two_pass_sab_equals_reference_from_the_zero_scorer(L, k_trunc, k_att, k_top):
    """The default initialisation (w = 0, b = 0): every score ties, so the sparsifier's weights start
    at 0 and the tie rule picks; the two engines must still agree, and w must learn (through the
    softmax phase)."""
    torch.manual_seed(0)
    model = build_model("sab", 5, 8, 4, k_top=k_top, k_att=k_att, scorer_init="zero").double()
    assert model.scorer.weight.abs().sum() == 0 and model.scorer.query.bias.abs().sum() == 0
    batch = _batch(3, L, 5, 4)
    ref_loss, ref = _grads("sab_reference", model, batch, k_trunc)
    loss, got = _grads("sab", model, batch, k_trunc)
    assert abs(loss - ref_loss) <= 1e-12 * abs(ref_loss)
    assert _max_relative_error(got, ref) <= 1e-10
    assert ref["scorer.weight"].abs().sum() > 0


def test_two_pass_sab_equals_reference_with_sparse_positions():
    """Loss only at a few steps (as adding / classification): empty segments are skipped exactly."""
    torch.manual_seed(1)
    model = build_model("sab", 4, 6, 3, k_top=2, k_att=3, scorer_init="uniform").double()
    batch = _batch(2, 40, 4, 3, positions=[11, 39])
    _, ref = _grads("sab_reference", model, batch, 4)
    _, got = _grads("sab", model, batch, 4)
    assert _max_relative_error(got, ref) <= 1e-10


def test_two_pass_sab_equals_reference_float32_long():
    torch.manual_seed(0)
    model = build_model("sab", 10, 32, 10, k_top=5, k_att=10, scorer_init="uniform")
    batch = _batch(4, 300, 10, 10, dtype=torch.float32)
    _, ref = _grads("sab_reference", model, batch, 10)
    _, got = _grads("sab", model, batch, 10)
    assert _max_relative_error(got, ref) <= 1e-4


def _copy_lstm_weights(sab_model, plain_model) -> None:
    plain_model.lstm.load_state_dict(sab_model.lstm.state_dict())
    H = sab_model.hidden_size
    with torch.no_grad():
        plain_model.readout.weight.copy_(sab_model.readout.weight[:, :H])
        plain_model.readout.bias.copy_(sab_model.readout.bias)


def test_sab_without_memories_is_tbptt_and_with_one_segment_is_bptt():
    """k_att > L leaves the memory empty (s = 0): SAB must reduce to the plain LSTM's engines."""
    torch.manual_seed(2)
    L = 30
    sab_model = build_model("sab", 5, 8, 4, k_top=2, k_att=L + 1).double()
    plain = build_model("tbptt", 5, 8, 4).double()
    _copy_lstm_weights(sab_model, plain)
    batch = _batch(3, L, 5, 4)
    H = sab_model.hidden_size

    def lstm_part(grads):
        out = {k: v for k, v in grads.items() if k.startswith("lstm.")}
        out["readout.weight"] = grads["readout.weight"][:, :H]
        out["readout.bias"] = grads["readout.bias"]
        return out

    for method, k_trunc in (("tbptt", 7), ("bptt", L)):
        _, want = _grads(method, plain, batch, k_trunc)
        for engine in ("sab", "sab_reference"):
            _, got = _grads(engine, sab_model, batch, k_trunc)
            assert _max_relative_error(lstm_part(got), want) <= 1e-10, (engine, method)


@pytest.mark.parametrize("positions", [None, [2, 17, 22], [21]])  # every step; quiet chunks between (run as one call); the last only
def test_tbptt_equals_one_graph_detach_reference(positions):
    from sab.credit import _cell_loop

    torch.manual_seed(3)
    model = build_model("tbptt", 5, 8, 4).double()
    batch = _batch(3, 23, 5, 4, positions=positions)
    model.zero_grad()
    _cell_loop(model, batch, cross_entropy, k_trunc=5)
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    _, got = _grads("tbptt", model, batch, 5)
    assert _max_relative_error(got, want) <= 1e-10
    _, full = _grads("bptt", model, batch, None)
    assert _max_relative_error(full, want) > 1e-3  # truncation really cut something


def test_bptt_cell_equals_fused_bptt():
    torch.manual_seed(4)
    model = build_model("bptt", 5, 8, 4).double()
    batch = _batch(3, 23, 5, 4)
    _, fused = _grads("bptt", model, batch, None)
    _, loop = _grads("bptt_cell", model, batch, None)
    assert _max_relative_error(loop, fused) <= 1e-10


def test_reference_gradcheck():
    """The reference's autograd graph against finite differences (one segment, away from ties)."""
    torch.manual_seed(5)
    model = build_model("sab", 3, 4, 3, k_top=2, k_att=2, scorer_init="uniform").double()
    batch = _batch(2, 12, 3, 3)
    x = batch.inputs.clone().requires_grad_()

    def loss_of(inputs):
        return reference_loss(model, Batch(inputs, batch.targets, batch.positions), cross_entropy, None)[0]

    assert torch.autograd.gradcheck(loss_of, (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("engine", ["sab", "sab_reference"])
def test_hand_derived_gradient_path(engine):
    """k_trunc=1 cuts every local edge, k_att=2, k_top=1, L=6, loss at step 6 only (1-based).

    Step 6 reads M = {h2, h4} (both get credit: the kept one and the threshold); h4 = ĥ4 + s4 and
    s4 = h2 (softmax over one memory); h2 = ĥ2 (empty memory at step 2). Each ĥ_t sees only x_t.
    So exactly x2, x4, x6 get gradient; TBPTT at the same k_trunc reaches only x6.
    """
    torch.manual_seed(6)
    model = build_model("sab", 3, 4, 3, k_top=1, k_att=2, scorer_init="uniform").double()
    batch = _batch(2, 6, 3, 3, positions=[5])
    x = batch.inputs.clone().requires_grad_()
    METHODS[engine].engine(model, Batch(x, batch.targets, batch.positions), cross_entropy, 1)
    reached = [t + 1 for t in range(6) if x.grad[:, t].abs().sum() > 0]
    assert reached == [2, 4, 6]

    plain = build_model("tbptt", 3, 4, 3).double()
    x2 = batch.inputs.clone().requires_grad_()
    METHODS["tbptt"].engine(plain, Batch(x2, batch.targets, batch.positions), cross_entropy, 1)
    assert [t + 1 for t in range(6) if x2.grad[:, t].abs().sum() > 0] == [6]


def test_credit_skips_the_local_window_between_memories():
    """k_trunc=2, k_att=4, k_top=1, L=8, loss at step 8: credit reaches x3, x4 (through h4) and x7, x8."""
    torch.manual_seed(7)
    model = build_model("sab", 3, 4, 3, k_top=1, k_att=4, scorer_init="uniform").double()
    batch = _batch(2, 8, 3, 3, positions=[7])
    x = batch.inputs.clone().requires_grad_()
    METHODS["sab"].engine(model, Batch(x, batch.targets, batch.positions), cross_entropy, 2)
    assert [t + 1 for t in range(8) if x.grad[:, t].abs().sum() > 0] == [3, 4, 7, 8]


def test_self_attention_is_dense_full_bptt():
    torch.manual_seed(8)
    model = build_model("self_attention", 3, 4, 3)
    assert model.k_top is None and model.k_att == 1
    batch = _batch(2, 10, 3, 3, dtype=torch.float32, positions=[9])
    x = batch.inputs.clone().requires_grad_()
    METHODS["self_attention"].engine(model, Batch(x, batch.targets, batch.positions), cross_entropy, 2)
    assert (x.grad.abs().sum(dim=(0, 2)) > 0).all()  # k_trunc is ignored: every step is reached


def test_lstm_step_matches_torch_lstm_cell():
    torch.manual_seed(9)
    cell = torch.nn.LSTMCell(3, 5).double()
    x, h, c = torch.randn(2, 3).double(), torch.randn(2, 5).double(), torch.randn(2, 5).double()
    want_h, want_c = cell(x, (h, c))
    scale = torch.ones(20, dtype=torch.float64)
    scale[10:15] = 2  # the cell-gate rows doubled, as ScaledCell does
    gates_x = (x @ cell.weight_ih.t() + cell.bias_ih + cell.bias_hh) * scale
    got_h, got_c = lstm_step(gates_x, h, c, cell.weight_hh * scale.unsqueeze(1))
    torch.testing.assert_close(got_h, want_h)
    torch.testing.assert_close(got_c, want_c)


def test_unknown_method_is_one_clear_error():
    with pytest.raises(ValueError, match=r"unknown method 'sabb'; valid: bptt, bptt_cell, tbptt"):
        build_model("sabb", 1, 2, 3)


@pytest.mark.parametrize(
    "L,k_trunc,k_att,k_top,positions", [(c[0], c[1], c[2], c[3], None) for c in PARITY_CASES] + [(40, 4, 3, 2, [11, 39])]
)
def test_static_shapes_path_equals_todays_path_float64(L, k_trunc, k_att, k_top, positions):
    """Issue #13 item 3's CPU check: the shape-static path (a padded bank scored whole with -inf
    on the unwritten slots; every segment replayed, with no read-back of the picks) gives the
    gradients of the default path and of the reference at 1e-10, alone and with replay groups;
    its no-grad inference gives the same logits and attention."""
    torch.manual_seed(L + k_trunc + k_att + k_top)
    model = build_model("sab", 5, 8, 4, k_top=k_top, k_att=k_att, scorer_init="uniform").double()
    batch = _batch(3, L, 5, 4, positions=positions)
    _, ref = _grads("sab_reference", model, batch, k_trunc)
    _, today = _grads("sab", model, batch, k_trunc)
    model.static_shapes = True
    for group in (1, 3):
        model.replay_group = group
        _, got = _grads("sab", model, batch, k_trunc)
        assert _max_relative_error(got, today) <= 1e-10 and _max_relative_error(got, ref) <= 1e-10
    plain = model.first_pass(batch.inputs, batch.positions, record_attention=True)
    static = model.first_pass(batch.inputs, batch.positions, record_attention=True, static_shapes=True)
    assert torch.allclose(plain.logits, static.logits, rtol=0, atol=1e-12)
    assert torch.allclose(plain.attention, static.attention, rtol=0, atol=1e-12)


def test_static_shapes_path_scores_the_same_shape_at_every_step():
    """What a CUDA graph needs of pass 1: the scorer's (B, |M|, A) block has one shape for the
    whole sequence on the static path, where the default path's grows with the memories."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class ScorerShapes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.shapes: set[tuple[int, ...]] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket.__name__ == "sigmoid_" and out.dim() == 3:
                self.shapes.add(tuple(out.shape))
            return out

    model = build_model("sab", 5, 8, 4, k_top=2, k_att=3)
    x = torch.randn(2, 30, 5)
    seen = {}
    for static in (False, True):
        recorder = ScorerShapes()
        with torch.no_grad(), recorder:
            model.first_pass(x, torch.arange(30), static_shapes=static)
        seen[static] = recorder.shapes
    assert seen[True] == {(2, 10, 8)}
    assert len(seen[False]) == 9  # |M| = 1 .. 9 as the memories are written
