"""The sparsifier and scorer of docs/design.md steps 3-4: exactly k_top weights, k_top+1 rows with credit,
a query-dependent scorer, the softmax phase, the tie rule."""

from __future__ import annotations

import pytest
import torch

from sab.model import SABLSTM
from sab.sparse_attention import EPS, Scorer, attention_weights, select_top, sparse_weights, top_scores


def _one_step(k_top: int, n: int, seed: int = 0):
    torch.manual_seed(seed)
    scorer = Scorer(6, 5, "uniform").double()
    memory = torch.randn(3, n, 6, dtype=torch.float64, requires_grad=True)
    query = torch.randn(3, 6, dtype=torch.float64)
    weights = attention_weights(scorer(query, scorer.keys(memory)), k_top)
    summary = torch.bmm(weights.unsqueeze(1), memory).squeeze(1)
    return scorer, memory, query, weights, summary


@pytest.mark.parametrize("k_top,n", [(1, 4), (3, 10), (5, 20)])
def test_exactly_k_top_weights_and_k_top_plus_one_rows_get_credit(k_top, n):
    scorer, memory, _, weights, summary = _one_step(k_top, n)
    assert ((weights > 0).sum(dim=1) == k_top).all()
    total = weights.sum(dim=1)  # Σr / (Σr + ε): one, short by ε over the gap to the threshold
    assert ((total <= 1) & (total > 1 - 1e-3)).all()
    summary.mul(torch.randn_like(summary)).sum().backward()
    rows_with_credit = (memory.grad.abs().sum(dim=2) > 0).sum(dim=1)
    assert (rows_with_credit == k_top + 1).all()
    # the extra row is the threshold: weight zero, yet credited through δ
    top = select_top(scorer(torch.zeros(3, 6, dtype=torch.float64), scorer.keys(memory)).detach(), k_top)
    assert top.shape == (3, k_top + 1)


def test_softmax_while_memory_is_small():
    _, memory, _, weights, summary = _one_step(k_top=5, n=3)
    assert (weights > 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(3, dtype=torch.float64))
    summary.sum().backward()
    assert (memory.grad.abs().sum(dim=2) > 0).all()


def test_gathered_weights_equal_dense_weights():
    scores = torch.randn(4, 12, dtype=torch.float64)
    dense = attention_weights(scores, 3)
    top = select_top(scores, 3)
    sparse = sparse_weights(scores.gather(1, top))
    torch.testing.assert_close(dense.gather(1, top), sparse)
    assert (sparse[:, -1] == 0).all()  # the threshold keeps a weight of exactly 0


def test_top_scores_picks_what_the_stable_sort_picks():
    """topk's fast path and its tie fallback select the same memories, and the same threshold, as the sort."""
    g = torch.Generator().manual_seed(0)
    tied = torch.tensor([[1.0, 3.0, 2.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    for scores in (torch.randn(6, 40, generator=g), tied):
        values, top = top_scores(scores, 2)
        want = select_top(scores, 2)
        assert top[:, -1].tolist() == want[:, -1].tolist()  # the threshold δ
        assert [set(r) for r in top.tolist()] == [set(r) for r in want.tolist()]
        torch.testing.assert_close(values, scores.gather(1, top))


def test_ties_lower_index_wins():
    scores = torch.tensor([[1.0, 3.0, 2.0, 3.0, 2.0]])
    assert select_top(scores, 2).tolist() == [[1, 3, 2]]
    assert select_top(torch.zeros(1, 4), 1).tolist() == [[0, 1]]
    # all tied: nothing clears the threshold; the summary is zero rather than a division by zero
    assert attention_weights(torch.zeros(2, 5), 2).abs().sum() == 0


def test_epsilon_is_the_authors_literal():
    assert EPS == pytest.approx(1e-7)


def test_scorer_depends_on_the_query():
    """On a fixed memory, two queries rank and weigh memories differently (the authors' scorer cannot)."""
    torch.manual_seed(1)
    scorer = Scorer(8, 8, "uniform").double()
    keys = scorer.keys(torch.randn(1, 12, 8, dtype=torch.float64))
    w1 = attention_weights(scorer(torch.randn(1, 8, dtype=torch.float64), keys), 3)
    w2 = attention_weights(scorer(torch.randn(1, 8, dtype=torch.float64), keys), 3)
    assert (w1 - w2).abs().max() > 0.05


def test_every_scorer_parameter_gets_gradient():
    scorer, _, _, _, summary = _one_step(k_top=3, n=10)
    summary.mul(torch.randn_like(summary)).sum().backward()
    for name, p in scorer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_model_scorer_gets_gradient_through_the_sab_engine():
    from sab.methods import METHODS
    from sab.tasks.base import Batch, cross_entropy

    torch.manual_seed(2)
    model = SABLSTM(3, 8, 3, k_top=2, k_att=2, scorer_init="uniform")
    batch = Batch(torch.randn(2, 30, 3), torch.randint(0, 3, (2, 30)), torch.arange(30))
    METHODS["sab"].engine(model, batch, cross_entropy, 5)
    for name, p in model.scorer.named_parameters():
        assert p.grad.abs().sum() > 0, name


def test_memory_starts_empty_and_attention_is_recorded():
    """No zero entry: steps before the first write have no summary; k_top weights per step after."""
    torch.manual_seed(3)
    model = SABLSTM(3, 8, 3, k_top=2, k_att=3, scorer_init="uniform")
    logits, attention = model.infer(torch.randn(2, 20, 3), return_attention=True)
    assert logits.shape == (2, 20, 3)
    assert attention.shape == (2, 20, 20 // 3)
    nonzero = (attention > 0).sum(dim=2)
    assert (nonzero[:, :3] == 0).all()  # steps 1-3: memory empty (h3 is written after step 3 reads)
    assert (nonzero[:, 3:6] == 1).all()  # one memory: softmax over it
    assert (nonzero[:, 9:] == 2).all()  # |M| > k_top: exactly k_top
    # a memory is never read before it is written
    for t in range(20):
        assert attention[:, t, t // 3 :].abs().sum() == 0


def test_bad_k_top_is_refused():
    with pytest.raises(ValueError, match="k_top must be >= 1"):
        SABLSTM(3, 8, 3, k_top=0)
