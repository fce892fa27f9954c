r"""SIVAE: the semi-implicit VAE whose implicit mixing is learned input dropout (LBD paper §2.3).

A dropout mask :math:`z` on the input turns the Gaussian encoder into a semi-implicit posterior,

.. math::
    q_\psi(\eta \mid x) = \mathbb E_{z\sim p_\alpha(z)}\,
        \mathcal N\big(\eta;\ \mu_\psi(x, z),\ \mathrm{diag}\,\Sigma_\psi(x, z)\big),

trained with the asymptotically exact bound of Yin & Zhou (2018), eq. (6) of the paper: per user,
with one mask :math:`z_0`, :math:`\eta \sim q(\eta|x, z_0)` and :math:`V` extra masks
:math:`z_1..z_V`,

.. math::
    f(x; z_{0:V}, \eta) = -\log p_\omega(x\mid\eta)
        + \beta\Big[\log\frac{1}{V+1}\sum_{v=0}^{V} q_\psi(\eta\mid x, z_v) - \log p(\eta)\Big],

whose expectation upper-bounds the negative ELBO and tends to it as :math:`V\to\infty`
(:math:`\beta` is annealed as in Mult-VAE). The per-item drop rates :math:`p_j` are learned:

* ``noise="lbd"``: exact Bernoulli masks; the gradient of :math:`\mathbb E[f]` with respect to the
  keep logits :math:`\phi_j = -\mathrm{logit}\,p_j` is the ARM (or DisARM) estimate over all
  :math:`(V+1)` masks, using the paper's **per-user** product
  :math:`\frac1B\sum_u (f_u(z^{(1)}_u) - f_u(z^{(2)}_u))(u_{uvj} - \tfrac12)` (``arm_product=
  "per-user"``), plus the pathwise part through the inverted scale :math:`1/(1-p_j)`. Terms of
  items a user never clicked are left out: their mask does not touch the loss, so their ARM term
  has conditional mean exactly zero (a Rao-Blackwellisation that keeps the estimate unbiased).
  ``arm_product="batch-mean"`` is the ablation with the batch-level product: all masks of the
  batch (every user, mask sample and item, clicked or not) are treated as one Bernoulli vector
  whose loss is the batch mean :math:`\bar f`, so the one number
  :math:`\bar f(z^{(1)}) - \bar f(z^{(2)})` multiplies every coefficient,
  :math:`(\bar f^{(1)} - \bar f^{(2)})\sum_{u}(u_{uvj} - \tfrac12)`, plus the same pathwise
  part. Both products are unbiased estimates of the *same* gradient; the ablation differs only
  in variance (higher: every user's coefficient carries every other user's loss difference).

  The authors' released code (TensorFlow, ``ardywibowo/LBD``, collaborative filtering) computes
  :math:`(\bar f^{(1)} - \bar f^{(2)})\cdot\frac1B\sum_u(u_{uj} - \tfrac12)` (the batch *mean* of
  the coefficients, over all items, with one uniform per user and item shared by the mixture
  samples and independent Gaussian noise in the two evaluations) from a pair of evaluations
  separate from the one that trains the weights, and applies it alone to the rates with their
  own Adam: the rate variable is not among the weights' optimiser's variables, so the pathwise
  part is absent. Its mean is the ARM part of the gradient divided by B (immaterial for Adam,
  which is invariant to a constant rescaling), without the pathwise part. ``"batch-mean"`` keeps
  that estimator's batch-level product, scaled by B so that, with the pathwise part, it estimates
  the true gradient without bias.
* ``noise="concrete"``: relaxed Bernoulli masks (temperature ``temperature``), pathwise rates.
* ``noise="gaussian"``: multiplicative :math:`\mathcal N(1, \alpha_j)` noise with learned
  :math:`\alpha_j = p_j/(1-p_j)`, pathwise rates.

Eval mode uses the noiseless input and :math:`\eta = \mu_\psi(x)` (inverted scaling makes the mask
the identity in expectation), as Mult-VAE does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_choice, check_int, check_positive, check_probability
from ..estimators import COEFFICIENTS, PAIR_ESTIMATORS, antithetic_masks
from ..functional.bernoulli import LOGIT_BOUND, bernoulli_dropout, uniform_dtype
from ..functional.concrete import concrete_dropout
from ..functional.gaussian import gaussian_dropout
from ..nn import ConcreteDropout, LearnableBernoulliDropout
from ..nn._base import DropoutModule
from .models import CSRBatch, _MultBase, multinomial_nll, normalized_values, row_ids, stacked_csr

__all__ = [
    "SIVAE",
    "LearnedGaussianRates",
    "NOISES",
    "ARM_PRODUCTS",
    "sivi_log_q",
    "standard_normal_log_prob",
]

NOISES = ("lbd", "concrete", "gaussian")
ARM_PRODUCTS = ("per-user", "batch-mean")
_LOG_2PI = math.log(2.0 * math.pi)


def standard_normal_log_prob(eta: Tensor) -> Tensor:
    r""":math:`\log\mathcal N(\eta; 0, I)` summed over the last dimension."""
    return -0.5 * (eta.pow(2) + _LOG_2PI).sum(-1)


def sivi_log_q(eta: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    r"""Log of the (V+1)-component mixture :math:`\frac{1}{V+1}\sum_v\mathcal N(\eta;\mu_v,\sigma_v^2)`.

    .. math::
        \log\tilde q(\eta) = \operatorname{logsumexp}_v\Big[-\tfrac12\sum_d\Big(\log 2\pi
            + \log\sigma^2_{vd} + \frac{(\eta_d-\mu_{vd})^2}{\sigma^2_{vd}}\Big)\Big] - \log(V+1)

    Args:
        eta: ``(..., users, d)``.
        mu, logvar: ``(..., V+1, users, d)`` (component axis third from the end).

    Returns:
        ``(..., users)``.
    """
    diff = eta.unsqueeze(-3) - mu
    comp = -0.5 * (_LOG_2PI + logvar + diff.pow(2) * torch.exp(-logvar)).sum(-1)
    return torch.logsumexp(comp, dim=-2) - math.log(comp.shape[-2])


class SIVAE(_MultBase):
    r"""Semi-implicit Mult-VAE with learned per-item input dropout (Boluki et al. 2020, eq. 6).

    Same encoder/decoder as :class:`~bayesdrop.recsys.models.MultVAE` (``[items -> 600 -> 2*200]``,
    ``[200 -> 600 -> items]``, tanh, multinomial likelihood, L2-normalised input); the fixed input
    dropout is replaced by learned rates and the KL term by the semi-implicit bound (module
    docstring).

    Args:
        n_items: number of items.
        hidden, latent: layer sizes (600, 200).
        noise: ``"lbd"``, ``"concrete"`` or ``"gaussian"``.
        init_p: initial drop probability of every item (0.5, Mult-VAE's rate).
        n_extra: V, the extra mask samples of the bound (>= 0; 0 is the plain ELBO with a
            single-sample mixture).
        estimator: ``"arm"`` (the paper) or ``"disarm"`` for ``noise="lbd"``.
        arm_product: ``"per-user"`` (the paper) or ``"batch-mean"`` (the batch-level product of
            the authors' code, made unbiased; module docstring).
        temperature: Concrete relaxation temperature.
        l2: :math:`\lambda` of :math:`\lambda\sum\|W\|^2` (0, as Mult-VAE).
        generator: optional generator for every draw of the training step.

    Example:
        >>> import scipy.sparse as sp
        >>> from bayesdrop.recsys.models import csr_batch
        >>> m = SIVAE(30, hidden=8, latent=4, n_extra=2)
        >>> x = csr_batch(sp.eye(30, format="csr")[:4] + sp.eye(30, k=1, format="csr")[:4])
        >>> m.training_loss(x, beta=0.2).dim()
        0
        >>> m.p.shape
        torch.Size([30])
    """

    def __init__(
        self,
        n_items: int,
        hidden: int = 600,
        latent: int = 200,
        *,
        noise: str = "lbd",
        init_p: float = 0.5,
        n_extra: int = 5,
        estimator: str = "arm",
        arm_product: str = "per-user",
        temperature: float = 0.1,
        l2: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(n_items, hidden, latent, 2 * latent, 0.0, l2)
        self.noise = check_choice("noise", noise, NOISES)
        init_p = check_probability("init_p", init_p)
        self.n_extra = check_int("n_extra", n_extra, minimum=0)
        self.estimator = check_choice("estimator", estimator, PAIR_ESTIMATORS)
        self.arm_product = check_choice("arm_product", arm_product, ARM_PRODUCTS)
        self.temperature = check_positive("temperature", temperature)
        self.generator = generator
        # The rates live in bayesdrop modules (bare form: p, parameters, repr); the training step
        # applies their functional noise to the stored values of the sparse input itself. Their
        # kl() is not used: the semi-implicit bound accounts for the mixing distribution.
        self.rates: DropoutModule
        if noise == "lbd":
            self.rates = LearnableBernoulliDropout(
                num_features=n_items, init_p=init_p, estimator=estimator
            )
        elif noise == "concrete":
            self.rates = ConcreteDropout(
                num_features=n_items, init_p=init_p, temperature=temperature, granularity="unit"
            )
        else:
            self.rates = LearnedGaussianRates(n_items, init_p=init_p)

    def extra_repr(self) -> str:
        return (
            f"noise={self.noise!r}, n_extra={self.n_extra}, estimator={self.estimator!r}, "
            f"arm_product={self.arm_product!r}, l2={self.l2}"
        )

    @property
    def p(self) -> Tensor:
        """Per-item drop probabilities, detached (for Gaussian rates :math:`\\alpha/(1+\\alpha)`)."""
        return self.rates.p

    def _logit_p(self) -> Tensor:
        """Per-item drop logits (Gaussian: :math:`\\log\\alpha = \\mathrm{logit}\\,p`), clamped."""
        param = getattr(self.rates, "log_alpha" if self.noise == "gaussian" else "logit_p")
        if not isinstance(param, Tensor):
            raise TypeError(f"{type(self.rates).__name__} holds no rate logits")
        return param.clamp(-LOGIT_BOUND, LOGIT_BOUND)

    # ------------------------------------------------------------------------------ encoder
    def encode(self, x: Tensor | CSRBatch, values: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of :math:`q(\\eta|x, z)`; ``values`` are the (noisy, normalised)
        stored values of CSR ``x`` (default: the noiseless normalised input)."""
        x = self._check_input(x)
        if isinstance(x, CSRBatch):
            v = normalized_values(x) if values is None else values
            h = torch.tanh(self.input_layer(x, v))
        else:
            h = torch.tanh(self.input_layer(F.normalize(x.to(torch.float32), dim=1)))
        out = self.encoder_out(h)
        return out[:, : self.latent], out[:, self.latent :]

    def forward(self, x: Tensor | CSRBatch) -> Tensor:
        mu, _ = self.encode(x)
        return self.decode(mu)

    def _rand(
        self, shape: tuple[int, ...], like: Tensor, dtype: torch.dtype | None = None
    ) -> Tensor:
        dtype = like.dtype if dtype is None else dtype
        return torch.rand(shape, dtype=dtype, device=like.device, generator=self.generator)

    def _bound(self, x: CSRBatch, values: Tensor, beta: float, eps: Tensor) -> Tensor:
        """Per-user bound :math:`f` for each leading sample set of ``values``.

        ``values`` has shape ``(S, V+1, nnz)``; returns ``(S, users)``.
        """
        s, m, nnz = values.shape
        b = x.shape[0]
        big = stacked_csr(x, s * m)
        mu, logvar = self.encode(big, values.reshape(-1))
        mu = mu.reshape(s, m, b, self.latent)
        logvar = logvar.reshape(s, m, b, self.latent)
        eta = mu[:, 0] + torch.exp(0.5 * logvar[:, 0]) * eps
        nll = multinomial_nll(self.decode(eta.reshape(s * b, -1)).reshape(s, b, -1), x)
        if beta == 0.0:
            return nll
        return nll + beta * (sivi_log_q(eta, mu, logvar) - standard_normal_log_prob(eta))

    # ------------------------------------------------------------------------------ training
    def training_loss(
        self, x: Tensor | CSRBatch, beta: float, *, eps: Tensor | None = None
    ) -> Tensor:
        r"""Mean over users of the bound :math:`f`, with the rate surrogate added for LBD.

        The returned value is the bound itself; one ``backward()`` gives pathwise gradients for
        the network and, for LBD, the ARM/DisARM estimate for the rates.

        Args:
            x: a :class:`~bayesdrop.recsys.models.CSRBatch` of users.
            beta: KL weight :math:`\beta \ge 0`.
            eps: optional standard-normal draw ``(users, latent)`` for
                :math:`\eta = \mu + \sigma\epsilon` (drawn from ``generator`` otherwise).
        """
        x = self._check_input(x)
        if not isinstance(x, CSRBatch):
            raise TypeError("SIVAE trains on CSRBatch input (its masks act on stored values)")
        beta = check_positive("beta", beta, allow_zero=True)
        rows = row_ids(x)
        v = normalized_values(x, rows)
        logit_p = self._logit_p()[x.col]
        m = self.n_extra + 1
        b = x.shape[0]
        if eps is None:
            eps = torch.randn(
                (b, self.latent), dtype=v.dtype, device=v.device, generator=self.generator
            )
        elif tuple(eps.shape) != (b, self.latent):
            raise ValueError(f"eps must have shape ({b}, {self.latent}), got {tuple(eps.shape)}")
        if self.noise == "lbd":
            loss = self._lbd_loss(x, rows, v, logit_p, beta, eps)
        else:
            if self.noise == "concrete":
                u = self._rand((m, v.numel()), v).clamp(1e-6, 1.0 - 1e-6)
                noisy = concrete_dropout(v, logit_p, self.temperature, u)
            else:  # multiplicative N(1, alpha) with alpha = exp(log_alpha) per item
                noise = torch.randn(
                    (m, v.numel()), dtype=v.dtype, device=v.device, generator=self.generator
                )
                noisy = gaussian_dropout(v, torch.exp(logit_p), eps=noise)
            loss = self._bound(x, noisy.unsqueeze(0), beta, eps.unsqueeze(0))[0].mean()
        return loss + self.l2_penalty() if self.l2 else loss

    def _lbd_loss(
        self, x: CSRBatch, rows: Tensor, v: Tensor, logit_p: Tensor, beta: float, eps: Tensor
    ) -> Tensor:
        m = self.n_extra + 1
        b = x.shape[0]
        dtype = uniform_dtype(v.dtype, logit_p.dtype)  # float32 or float64 uniforms
        keep_logit = (-logit_p).detach().to(dtype)
        if self.arm_product == "batch-mean":
            # One Bernoulli vector over every (mask sample, user, item): uniforms for all of them.
            u_dense = self._rand((m, b, self.n_items), v, dtype)
            u = u_dense[:, rows, x.col]
        else:
            u = self._rand((m, v.numel()), v, dtype)
        z1, z2 = antithetic_masks(keep_logit, u)
        masks = torch.stack([z1, z2])  # (2, V+1, nnz)
        values = bernoulli_dropout(v, logit_p, masks)
        f = self._bound(x, values, beta, eps.unsqueeze(0).expand(2, -1, -1))  # (2, users)
        loss = f.mean()
        coefficient = COEFFICIENTS[self.estimator]
        phi = -self._logit_p()  # keep logits, with grad
        with torch.no_grad():
            fd = f.detach().to(dtype)
            if self.arm_product == "per-user":
                coef = coefficient(u, z1, z2, keep_logit)  # (V+1, nnz)
                per = ((fd[0] - fd[1])[rows] * coef).sum(0) / b  # per stored value
                g = torch.zeros(self.n_items, dtype=dtype, device=v.device)
                g.index_add_(0, x.col, per)
            else:
                full = phi.detach().to(dtype).expand(b, -1)
                z1d, z2d = antithetic_masks(full, u_dense)
                coef = coefficient(u_dense, z1d, z2d, full)  # (V+1, users, items)
                g = (fd[0].mean() - fd[1].mean()) * coef.sum(dim=(0, 1))
        surrogate = (phi * g.to(phi.dtype)).sum()
        return loss + (surrogate - surrogate.detach()).to(loss.dtype)


class LearnedGaussianRates(DropoutModule):
    r"""Per-unit variances :math:`\alpha_k` of multiplicative :math:`\mathcal N(1, \alpha_k)` noise.

    The holder of SIVAE-GDrop's learned rates (bare form, ``num_features`` units): parameter
    ``log_alpha``, read-only ``p`` :math:`= \alpha/(1+\alpha)`. Its forward applies
    :func:`~bayesdrop.functional.gaussian_dropout` to ``(*, num_features)`` inputs in training
    mode and is the identity in eval mode; there is no prior (``kl()`` is zero).

    Example:
        >>> m = LearnedGaussianRates(3, init_p=0.2)
        >>> m.p
        tensor([0.2000, 0.2000, 0.2000])
    """

    def __init__(
        self, num_features: int, *, init_p: float = 0.5, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(generator)
        self.num_features = check_int("num_features", num_features)
        init_p = check_probability("init_p", init_p)
        self.log_alpha = nn.Parameter(
            torch.full((num_features,), math.log(init_p) - math.log1p(-init_p))
        )

    @property
    def p(self) -> Tensor:
        return torch.sigmoid(self.log_alpha.clamp(-LOGIT_BOUND, LOGIT_BOUND)).detach()

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}"

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if not self.sampling:
            return x
        alpha = torch.exp(self.log_alpha.clamp(-LOGIT_BOUND, LOGIT_BOUND)).to(x.dtype)
        return gaussian_dropout(x, alpha, generator=self.generator)
