#!/usr/bin/env python3
"""Fits the rational approximation of erf that `crates/encoder/src/fastmath.rs` uses for GELU:
erf(z) ~ z * P(z^2) / Q(z^2) on [0, 4] (erf is odd; beyond 4 it is 1 to within 1.6e-8 and the
code clamps z), P and Q of degree 5, Q(0) = 1. Linearised least squares (Loeb) with Lawson's
reweighting towards the minimax fit, in f64 against mpmath's erf; then the largest error of the
f32 coefficients evaluated in f32 as the code does (Horner, one division).

    /tmp/pyref/venv/bin/python scripts/fit-erf.py     # numpy and mpmath (the peer venv has both)
"""
import mpmath
import numpy as np

mpmath.mp.dps = 30
DEGREE, Z_MAX, POINTS, ROUNDS = 5, 4.0, 4000, 60


def fit():
    # Points dense near both ends (Chebyshev spacing).
    z = (np.cos(np.linspace(np.pi, 0, POINTS)) + 1) / 2 * Z_MAX
    f = np.array([float(mpmath.erf(v)) for v in z])
    s = z * z
    q_previous = np.ones(POINTS)
    weights = np.ones(POINTS)
    for _ in range(ROUNDS):
        # Unknowns P0..P5, Q1..Q5; the residual z P(s) - f Q(s) over the last round's Q.
        columns = [z * s**k for k in range(DEGREE + 1)]
        columns += [-f * s**k for k in range(1, DEGREE + 1)]
        a = np.stack(columns, 1)
        scale = np.sqrt(weights) / np.abs(q_previous)
        solution, *_ = np.linalg.lstsq(a * scale[:, None], f * scale, rcond=None)
        p = solution[: DEGREE + 1]
        q = np.concatenate([[1.0], solution[DEGREE + 1 :]])
        q_values = sum(q[k] * s**k for k in range(DEGREE + 1))
        error = z * sum(p[k] * s**k for k in range(DEGREE + 1)) / q_values - f
        q_previous = q_values
        weights = weights * (np.abs(error) + 1e-30)
        weights /= weights.mean()
    return p, q, np.abs(error).max()


def horner_f32(coefficients, s):
    acc = np.full_like(s, np.float32(coefficients[-1]))
    for c in coefficients[-2::-1]:
        acc = (acc * s + np.float32(c)).astype(np.float32)
    return acc


def main():
    p, q, exact = fit()
    z = np.linspace(0, Z_MAX, 40001).astype(np.float32)
    s = (z * z).astype(np.float32)
    got = (z * horner_f32(p, s) / horner_f32(q, s)).astype(np.float32).astype(np.float64)
    want = np.array([float(mpmath.erf(float(v))) for v in z])
    print(f"max |error|: {exact:.2e} in f64, {np.abs(got - want).max():.2e} in f32")
    print("P:", ", ".join(f"{float(np.float32(c)):.8e}" for c in p))
    print("Q:", ", ".join(f"{float(np.float32(c)):.8e}" for c in q))


if __name__ == "__main__":
    main()
