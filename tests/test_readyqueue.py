"""The bucket queue on its own, against a sorted-list model (hypothesis)."""

from hypothesis import given
from hypothesis import strategies as st

from aem_loop.core import ReadyQueue


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 99)), max_size=300))
def test_matches_stable_priority_model(ops):
    q = ReadyQueue()
    model: list[tuple[int, int]] = []  # (level, seq)
    for seq, (is_push, level) in enumerate(ops):
        if is_push or not model:
            q.push_at(seq, level)
            model.append((level, seq))
        else:
            best = max(model, key=lambda t: (t[0], -t[1]))
            model.remove(best)
            assert q.pop() == (best[1], best[0])
        assert len(q) == len(model)
        assert q.top() == (max(lv for lv, _ in model) if model else -1)
    assert list(q) == [s for _, s in sorted(model, key=lambda t: (-t[0], t[1]))]


def test_levels_below_and_depths():
    q = ReadyQueue()
    for lv in (3, 50, 50, 99):
        q.push_at(object(), lv)
    assert list(q.levels_below(99)) == [50, 3]
    assert q.depths() == {3: 1, 50: 2, 99: 1}
    q.clear()
    assert not q and q.top() == -1
