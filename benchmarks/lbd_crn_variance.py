"""Variance of the LBD rate gradient with and without common random numbers (CRN).

The antithetic pair of LBD masks is evaluated twice; other noise in the model (``nn.Dropout``,
a VAE's :math:`\\epsilon`) is either replayed for the second evaluation (common random numbers,
:func:`bayesdrop.objective`'s default) or drawn afresh. Both are unbiased; this measures how much
variance the replay removes, at fixed parameters, over repeated draws on one batch:

* a classification MLP (scikit-learn's 8x8 digits, 64-256-256-10, LBD before the two hidden
  layers and ``nn.Dropout(0.3)`` after each ReLU), trained briefly first;
* SIVAE (LBD input dropout; the other noise is the encoder's :math:`\\epsilon`, which SIVAE
  shares between the two evaluations; the alternative draws it afresh for the second one, as the
  authors' code does) on a synthetic click matrix.

Reports the ratio of total variances (fresh / common) of the rate gradient with a bootstrap
standard error. Process CPU time is irrelevant here; one thread.

    python benchmarks/lbd_crn_variance.py [--draws N]
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayesdrop import LearnableBernoulliDropout, objective
from bayesdrop.recsys.models import csr_batch
from bayesdrop.recsys.sivae import SIVAE


def ratio_with_se(fresh: Tensor, common: Tensor, boot: int = 500) -> tuple[float, float]:
    """Total-variance ratio of two sets of i.i.d. gradient draws and its bootstrap SE."""
    g = torch.Generator().manual_seed(0)

    def total_var(x: Tensor) -> Tensor:
        return x.var(0).sum()

    r = float(total_var(fresh) / total_var(common))
    n1, n2 = fresh.shape[0], common.shape[0]
    rs = []
    for _ in range(boot):
        i = torch.randint(0, n1, (n1,), generator=g)
        j = torch.randint(0, n2, (n2,), generator=g)
        rs.append(float(total_var(fresh[i]) / total_var(common[j])))
    return r, float(np.std(rs))


def mlp_draws(draws: int) -> dict[str, Tensor]:
    from sklearn.datasets import load_digits

    x_np, y_np = load_digits(return_X_y=True)
    x = torch.tensor(x_np / 16.0, dtype=torch.float32)
    y = torch.tensor(y_np)
    torch.manual_seed(0)
    model = nn.Sequential(
        LearnableBernoulliDropout(nn.Linear(64, 256), init_p=0.3),
        nn.ReLU(),
        nn.Dropout(0.3),
        LearnableBernoulliDropout(nn.Linear(256, 256), init_p=0.3),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(256, 10),
    )

    def nll(o: Tensor, t: Tensor) -> Tensor:
        return F.cross_entropy(o, t, reduction="none")

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(200):  # a partly trained model, not the initialisation
        idx = torch.randint(0, len(x), (64,))
        opt.zero_grad()
        objective(model, x[idx], y[idx], nll, len(x)).backward()
        opt.step()
    xb, yb = x[:64], y[:64]
    rates = [model[0].logit_p, model[3].logit_p]
    out = {}
    for crn in (True, False):
        gs = []
        for _ in range(draws):
            model.zero_grad()
            objective(model, xb, yb, nll, len(x), common_random_numbers=crn).backward()
            gs.append(torch.cat([r.grad.reshape(-1) for r in rates]))
        out["common" if crn else "fresh"] = torch.stack(gs)
    return out


class _FreshEps(SIVAE):
    """SIVAE whose second evaluation of the pair draws its own epsilon."""

    def _bound(self, x, values, beta, eps):  # type: ignore[no-untyped-def]
        if eps.shape[0] == 2:
            eps = torch.stack([eps[0], torch.randn_like(eps[1])])
        return super()._bound(x, values, beta, eps)


def sivae_draws(draws: int) -> dict[str, Tensor]:
    rng = np.random.default_rng(0)
    n_users, n_items = 64, 300
    clicks = sp.csr_matrix((rng.random((n_users, n_items)) < 0.08).astype(np.float32))
    x = csr_batch(clicks)
    out = {}
    for name, cls in (("common", SIVAE), ("fresh", _FreshEps)):
        torch.manual_seed(0)
        m = cls(n_items, hidden=64, latent=16, n_extra=2)
        gs = []
        for _ in range(draws):
            m.zero_grad()
            m.training_loss(x, beta=0.2).backward()
            gs.append(m.rates.logit_p.grad.clone())
        out[name] = torch.stack(gs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--draws", type=int, default=400)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"rate-gradient variance, {args.draws} draws each: fresh / common random numbers")
    print(f"{'model':<44} {'ratio':>7} {'SE':>6}")
    for name, fn in (
        ("MLP digits, LBD + nn.Dropout(0.3), batch 64", mlp_draws),
        ("SIVAE (V=2), epsilon, 64 users x 300 items", sivae_draws),
    ):
        d = fn(args.draws)
        r, se = ratio_with_se(d["fresh"], d["common"])
        print(f"{name:<44} {r:>7.2f} {se:>6.2f}")


if __name__ == "__main__":
    main()
