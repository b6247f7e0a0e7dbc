"""The issue's measure domains written out, and the checks every network's results share.

The sets are written by hand, not read from the registry, so that a test fails when a measure's
declared domain drifts from the one issue 14 gives it.
"""

from __future__ import annotations

import math

import genmeasures as gm

SPECTRAL_CHAIN = [
    "spec-init",
    "spec-orig",
    "spec-init-main",
    "spec-orig-main",
    "prod-of-spec-over-margin",
    "prod-of-spec",
    "sum-of-spec-over-margin",
    "sum-of-spec",
]
#: The heavy-tailed spectral metrics (Martin & Mahoney 2021, issue 19): weight matrices only.
HEAVY_TAILED = [
    "ht-alpha",
    "ht-alpha-weighted",
    "ht-log-alpha-norm",
    "ht-stable-rank",
    "ht-mp-outliers",
]
#: ... of which those that fit a power law, undefined on matrices with fewer than 10 eigenvalues.
POWER_LAW_FITS = {"ht-alpha", "ht-alpha-weighted", "ht-log-alpha-norm", "ht-mp-outliers"}
#: The representation measures of the PGDL 2020 winners (issue 19): any differentiable network
#: with a classification head.
REPRESENTATION = {"db-index", "mixup-error", "db-times-mixup", "label-variation"}
#: Adaptive sharpness (Kwon et al. 2021; Andriushchenko et al. 2023, issue 19): any
#: differentiable network (the unfolded network's parameters are perturbed).
ADAPTIVE = {"adaptive-sharpness-linf", "adaptive-sharpness-l2", "adaptive-sharpness-avg"}
#: Relative flatness (Petzka et al. 2021, issue 19): any differentiable network whose logits are
#: an affine map of the penultimate features.
RELATIVE = {"relative-flatness"}
#: The issue's domains, written out: what each measure's definition needs.
CHAIN = {
    "vc-dim",
    "num-params",
    "prod-of-fro-over-margin",
    "sum-of-fro-over-margin",
    *SPECTRAL_CHAIN,
    *(f"{name}-reshaped" for name in SPECTRAL_CHAIN),
}
HOMOGENEOUS = {"path-norm", "path-norm-over-margin"}
WEIGHTS = {
    "param-norm",
    "frob-distance",
    "prod-of-fro",
    "sum-of-fro",
    "fro-over-spec",
    "fro-over-spec-reshaped",
    "spec-dist",
    "spec-dist-reshaped",
    "normalized-sharpness",
    "normalized-sharpness-arxiv",
    *HEAVY_TAILED,
}
RECORDS = {"num-step-to-0.1-loss", "num-step-0.1-to-0.01-loss", "grad-noise-epoch-1"}


def assert_values_and_reasons(results: gm.Results) -> None:
    """Every ``ok`` value is finite; every ``unsupported`` one is NaN and names where and why.

    "Where" is a module, the model's top-level forward, or the inputs (token ids for a measure
    that differentiates with respect to them).
    """
    for name in results:
        result = results[name]
        if result.status == "ok":
            assert math.isfinite(result.value), name
        elif result.status == "unsupported":
            assert math.isnan(result.value), name
            named = ("`", "module '", "the model's top-level forward", "the inputs are")
            assert any(where in result.message for where in named), result.message
