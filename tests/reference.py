"""Plain NumPy references written from the papers' equations, in float64, one row at a
time where the paper updates per row.  The tests drive them alongside rmbandit."""
from __future__ import annotations

import numpy as np


class LinearGaussianRef:
    """Bayesian linear regression per arm (BayesianRouter Sec. 3; LinUCB when
    noise_var = prior_var = 1): Sigma' = (Sigma^-1 + X^T X / s2)^-1,
    mu' = Sigma' (Sigma^-1 mu + X^T r / s2).  Kept in precision form A, b = A mu."""

    def __init__(self, k, d, prior_var=1.0, noise_var=1.0, prior_mean=None):
        self.A = np.stack([np.eye(d) / prior_var] * k)
        mean = np.zeros((k, d)) if prior_mean is None else np.broadcast_to(prior_mean, (k, d)).astype(float)
        self.b = mean / prior_var
        self.noise_var = noise_var

    def mean(self):
        return np.stack([np.linalg.solve(a, b) for a, b in zip(self.A, self.b)])

    def cov(self):
        return np.linalg.inv(self.A)

    def ucb(self, contexts, alpha):
        quad = np.einsum("bd,kde,be->bk", contexts, self.cov(), contexts)
        return contexts @ self.mean().T + alpha * np.sqrt(quad)

    def thompson(self, contexts, noise):
        """h^T w with w ~ N(mu, Sigma), written as mean + sd * z for a given z [B, K]."""
        quad = np.einsum("bd,kde,be->bk", contexts, self.cov(), contexts)
        return contexts @ self.mean().T + np.sqrt(quad) * noise

    def update(self, contexts, arms, rewards):
        for c, a, r in zip(contexts, arms, rewards):
            self.A[a] += np.outer(c, c) / self.noise_var
            self.b[a] += r * c / self.noise_var


class Exp3Ref:
    """LASeR App. A eq. (3)-(4)."""

    def __init__(self, k, gamma, lr=1.0):
        self.S = np.zeros(k)
        self.gamma, self.lr, self.k = gamma, lr, k

    def probs(self):
        e = np.exp(self.lr * self.S - np.max(self.lr * self.S))
        return (1 - self.gamma) * e / e.sum() + self.gamma / self.k

    def update(self, arms, rewards):
        p = self.probs()
        for a, r in zip(arms, rewards):
            self.S[a] += r / p[a]


def quantile_rescale_ref(history, r, lo=0.2, hi=0.8):
    """Graves et al. 2017 rescaling into [0, 1] against the past rewards."""
    if len(history) == 0:
        return 0.5
    q_lo, q_hi = np.quantile(history, [lo, hi])
    if r < q_lo:
        return 0.0
    if r > q_hi:
        return 1.0
    if q_hi == q_lo:
        return 0.5
    return (r - q_lo) / (q_hi - q_lo)


class MLPRef:
    """d -> h1 -> h2 -> 1 ReLU MLP with hand-written backprop (NeuralUCB)."""

    def __init__(self, params):
        self.p = {k: np.asarray(v, np.float64).copy() for k, v in params.items()}

    def forward(self, x):
        z0 = x @ self.p["w0"] + self.p["b0"]
        h0 = np.maximum(z0, 0)
        z1 = h0 @ self.p["w1"] + self.p["b1"]
        h1 = np.maximum(z1, 0)
        return (h1 @ self.p["w2"] + self.p["b2"])[0], (x, z0, h0, z1, h1)

    def grad(self, x):
        """d f / d params for one x."""
        _, (x, z0, h0, z1, h1) = self.forward(x)
        g = {"w2": h1[:, None] * np.ones((1, 1)), "b2": np.ones(1)}
        d1 = self.p["w2"][:, 0] * (z1 > 0)
        g["w1"], g["b1"] = np.outer(h0, d1), d1
        d0 = (self.p["w1"] @ d1) * (z0 > 0)
        g["w0"], g["b0"] = np.outer(x, d0), d0
        return g
