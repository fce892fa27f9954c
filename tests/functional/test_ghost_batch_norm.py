"""functional.ghost_batch_norm against F.batch_norm on each ghost batch; gradients in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bayesdrop.functional import ghost_batch_norm, ghost_groups


def test_ghost_groups_are_contiguous_blocks():
    assert ghost_groups(7, 3).tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert ghost_groups(4, 8).tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("ghost_size", [1, 2, 3, 7, 10])
def test_each_ghost_batch_matches_batch_norm_with_its_own_statistics(ghost_size):
    x = torch.randn(7, 3, 4, dtype=torch.float64)
    w, b = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    out, mean, var = ghost_batch_norm(x, ghost_size, w, b, eps=1e-3)
    for chunk, got in zip(x.split(ghost_size), out.split(ghost_size)):
        ref = F.batch_norm(chunk, None, None, w, b, training=True, eps=1e-3)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mean, x.mean((0, 2)), rtol=1e-12, atol=1e-12)
    chunks = x.split(ghost_size)
    expected = sum(len(c) / 7 * c.transpose(0, 1).reshape(3, -1).var(1) for c in chunks)
    torch.testing.assert_close(var, expected, rtol=1e-12, atol=1e-12)


def test_gradcheck_with_a_smaller_last_ghost_batch():
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: ghost_batch_norm(a[0], 2, a[1], a[2]).output, (x, w, b)
    )
