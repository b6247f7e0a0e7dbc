"""Slow, obviously-correct references for every numerical shortcut of genmeasures.

Each function here computes a quantity the library computes faster, by the most literal route
available (dense matrices, explicit loops and enumeration). The tests compare the two in float64
on tiny networks.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from torch import nn

from genmeasures.seeding import derive_seed


def dense_matrix(linear_map: Callable[[torch.Tensor], torch.Tensor], input_shape: tuple[int, ...]):
    """The matrix of a linear map, one column per basis vector of the input space."""
    size = int(np.prod(input_shape))
    columns = []
    for index in range(size):
        basis = torch.zeros(size, dtype=torch.float64)
        basis[index] = 1.0
        columns.append(linear_map(basis.reshape(1, *input_shape)).reshape(-1))
    return torch.stack(columns, dim=1).numpy()


def conv_operator_norm(conv: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Largest singular value of the dense matrix of ``x ↦ conv(x)`` without bias."""
    conv = conv.double()

    def apply(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return conv(x) - (conv(torch.zeros_like(x)) if conv.bias is not None else 0)

    return float(np.linalg.svd(dense_matrix(apply, input_shape), compute_uv=False)[0])


def circular_conv2d_norm_fft(kernel: torch.Tensor, side: int) -> float:
    """Sedghi et al.'s exact norm of a circular, stride-1 2-D conv on a side×side input.

    The conv is block-diagonalized by the 2-D DFT: its singular values are those of the
    c_out × c_in matrices of the kernel's DFT at each frequency. PyTorch's conv is a
    cross-correlation, which has the same singular values as the convolution.
    """
    transformed = np.fft.fft2(kernel.detach().double().numpy(), s=(side, side), axes=(2, 3))
    return max(
        float(np.linalg.svd(transformed[:, :, u, v], compute_uv=False)[0])
        for u in range(side)
        for v in range(side)
    )


def mlp_path_sum_by_enumeration(linears: list[nn.Linear]) -> float:
    """S of the path norm for a ReLU MLP, by enumerating every path from an input or a bias.

    A path starting at input unit i contributes Π_l W_l[h_l, h_{l-1}]²; a path starting at the
    bias of layer l at unit h_l contributes b_l[h_l]² times the squared weights after it. With
    an all-ones input, S is the sum of all these products over every output unit.
    """
    weights = [layer.weight.detach().double().numpy() for layer in linears]
    biases = [
        np.zeros(layer.out_features) if layer.bias is None else layer.bias.detach().double().numpy()
        for layer in linears
    ]
    total = 0.0
    for start in range(len(weights) + 1):
        # start = 0: paths from the inputs; start = l ≥ 1: paths from the bias of layer l.
        first_units = (
            range(weights[0].shape[1]) if start == 0 else range(weights[start - 1].shape[0])
        )
        later = weights[start:]
        for first in first_units:
            head = 1.0 if start == 0 else biases[start - 1][first] ** 2
            for units in itertools.product(*(range(w.shape[0]) for w in later)):
                product = head
                previous = first
                for w, unit in zip(later, units, strict=True):
                    product *= w[unit, previous] ** 2
                    previous = unit
                total += product
    return total


def margin_percentile(logits: np.ndarray, labels: np.ndarray) -> float:
    """γ: the k-th smallest margin with k = max(1, ⌊m/10⌋), by sorting in numpy."""
    margins = []
    for row, label in zip(logits, labels, strict=True):
        others = np.delete(row, label)
        margins.append(row[label] - others.max())
    k = max(1, len(margins) // 10)
    return float(np.sort(margins)[k - 1])


def fisher_rao_by_loop(model: nn.Module, weights: list[torch.Tensor], inputs, labels) -> float:
    """(d+1)²/m Σ_j ⟨w, ∇_w ℓ_j⟩², one backward pass per example."""
    return (len(weights) + 1) ** 2 * fisher_rao_norm_by_loop(model, weights, inputs, labels)


def fisher_rao_norm_by_loop(model: nn.Module, weights: list[torch.Tensor], inputs, labels) -> float:
    """Liang et al. (2019)'s Fisher-Rao norm (1/m) Σ_j ⟨w, ∇_w ℓ_j⟩², one backward per example."""
    total = 0.0
    for x, y in zip(inputs, labels, strict=True):
        loss = F.cross_entropy(model(x[None]), y[None])
        grads = torch.autograd.grad(loss, weights)
        inner = sum(float((w.detach() * g).sum()) for w, g in zip(weights, grads, strict=True))
        total += inner**2
    return total / len(labels)


def transformer_block_matrices(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The weight matrices of ``networks.TransformerBlock``, written out by hand (out × in).

    The packed attention input projection is three maps (query, key, value); its bias, the
    LayerNorms' affine parameters and every other bias are additive and are not listed.
    """
    embed = model.attn.embed_dim
    packed = model.attn.in_proj_weight.detach().double()
    return [
        ("attn.in_proj_weight[q]", packed[:embed]),
        ("attn.in_proj_weight[k]", packed[embed : 2 * embed]),
        ("attn.in_proj_weight[v]", packed[2 * embed :]),
        ("attn.out_proj", model.attn.out_proj.weight.detach().double()),
        ("mlp.0", model.mlp[0].weight.detach().double()),
        ("mlp.2", model.mlp[2].weight.detach().double()),
        ("head", model.head.weight.detach().double()),
    ]


def input_grad_norm_by_loop(model: nn.Module, inputs, labels) -> float:
    """Mean over examples of ‖∇_x ℓ(f(x), y)‖₂, one backward pass per example."""
    norms = []
    for x, y in zip(inputs, labels, strict=True):
        x = x[None].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y[None]), x)
        norms.append(float(grad.norm()))
    return float(np.mean(norms))


def entropy_terms_by_loop(logits: np.ndarray) -> float:
    """Mean over examples of Σ_c p_c log p_c, with softmax written out."""
    values = []
    for row in logits:
        shifted = np.exp(row - row.max())
        p = shifted / shifted.sum()
        values.append(sum(pc * np.log(pc) for pc in p if pc > 0))
    return float(np.mean(values))


def gradient_variance_by_loop(model: nn.Module, inputs, labels) -> float:
    """Σ_j ‖g_j − ḡ‖² / n over every parameter, one backward pass per example, in eval mode.

    ``g_j`` is the gradient of example j's cross-entropy with respect to all parameters of
    ``model``; the gradients are stacked into an n × P matrix and the population variance is
    taken column by column, then summed.
    """
    model = model.eval()
    parameters = list(model.parameters())
    rows = []
    for x, y in zip(inputs, labels, strict=True):
        loss = F.cross_entropy(model(x[None]), y[None])
        grads = torch.autograd.grad(loss, parameters)
        rows.append(torch.cat([g.detach().double().reshape(-1) for g in grads]))
    gradients = torch.stack(rows).numpy()
    deviations = gradients - gradients.mean(axis=0)
    return float((deviations**2).sum() / len(gradients))


# ----------------------------------------------------------------------------- curvature


def loss_hessian(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Hessian of the mean cross-entropy over all examples w.r.t. every parameter of ``model``.

    The parameters are flattened and concatenated in ``named_parameters()`` order (weights and
    biases); the loss is one forward pass over the whole data, in the model's current mode, with
    no mini-batches. ``torch.autograd.functional.hessian`` differentiates it twice.
    """
    named = [(name, p.detach()) for name, p in model.named_parameters()]
    flat = torch.cat([p.flatten() for _, p in named])

    def loss(theta: torch.Tensor) -> torch.Tensor:
        params, start = {}, 0
        for name, p in named:
            params[name] = theta[start : start + p.numel()].reshape(p.shape)
            start += p.numel()
        return F.cross_entropy(torch.func.functional_call(model, params, (inputs,)), labels)

    return torch.autograd.functional.hessian(loss, flat, vectorize=True)


def parameter_slices(model: nn.Module) -> dict[str, slice]:
    """Position of each parameter in the flattened vector of :func:`loss_hessian`."""
    slices, start = {}, 0
    for name, p in model.named_parameters():
        slices[name] = slice(start, start + p.numel())
        start += p.numel()
    return slices


def dense_weight_matrix(module: nn.Module, values: torch.Tensor) -> np.ndarray:
    """Per-weight ``values`` (shaped like the weight) as a dense ``out × (c_in · kernel)`` matrix.

    A Linear weight is returned as it is. Output channel o of a convolution with g groups sees
    only the input channels of its group: its row holds its kernel at those channels and zeros at
    every other channel, so the matrix is block-diagonal, the layer's map from all inputs.
    """
    values = values.detach().double().numpy()
    if isinstance(module, nn.Linear):
        return values
    out_channels, in_per_group = values.shape[:2]
    groups = module.groups
    kernel = values.shape[2:]
    dense = np.zeros((out_channels, in_per_group * groups, *kernel))
    for o in range(out_channels):
        group = o // (out_channels // groups)
        dense[o, group * in_per_group : (group + 1) * in_per_group] = values[o]
    return dense.reshape(out_channels, -1)


def hessian_diagonal_matrices(
    model: nn.Module, modules: list[nn.Module], hessian: torch.Tensor
) -> list[np.ndarray]:
    """Each module's weight entries of ``diag(hessian)``, as :func:`dense_weight_matrix`."""
    names = {id(p): name for name, p in model.named_parameters()}
    slices = parameter_slices(model)
    diagonal = hessian.diagonal()
    return [
        dense_weight_matrix(m, diagonal[slices[names[id(m.weight)]]].reshape(m.weight.shape))
        for m in modules
    ]


def _exp_terms(coefficients: np.ndarray, exponents: np.ndarray) -> np.ndarray:
    """``coefficients · e^{exponents}``, and 0 where a coefficient is 0 whatever its exponent."""
    with np.errstate(over="ignore"):
        return np.where(coefficients > 0, coefficients * np.exp(exponents), 0.0)


def balanced_sum_by_scipy(m: np.ndarray) -> float:
    """``inf over γ of Σ_ik M_ik e^{γ_i − γ_k}`` (eq 35's ``NS_l²``), by scipy's BFGS.

    M is divided by its sum first, so the objective is 1 at γ = 0 and the gradient tolerance
    1e-13 is relative. Where the infimum is not attained (zero rows or columns), BFGS drives
    some γ_i far out and stops once the vanishing terms are below that tolerance.
    """
    total = m.sum()
    if total == 0:
        return 0.0
    normalized = m / total

    def objective(gamma: np.ndarray) -> tuple[float, np.ndarray]:
        terms = _exp_terms(normalized, gamma[:, None] - gamma[None, :])
        return float(terms.sum()), terms.sum(axis=1) - terms.sum(axis=0)

    result = minimize(
        objective,
        np.zeros(len(m)),
        jac=True,
        method="BFGS",
        options={"gtol": 1e-13, "maxiter": 10_000},
    )
    return total * float(result.fun)


def two_sided_by_scipy(f: np.ndarray, u: np.ndarray) -> float:
    """``inf over γ, γ' of Σ_ij F_ij e^{γ_i + γ'_j} + U_ij e^{−γ_i − γ'_j}``, by scipy's BFGS.

    The preprint's per-layer objective (``NORMALIZED_SHARPNESS.md`` §5). Scaling F by a and U by
    b scales the infimum by sqrt(ab), so both are divided by their sums first.
    """
    f_total, u_total = f.sum(), u.sum()
    if f_total == 0 or u_total == 0:
        return 0.0
    f, u = f / f_total, u / u_total
    rows = len(f)

    def objective(scales: np.ndarray) -> tuple[float, np.ndarray]:
        exponents = scales[:rows, None] + scales[None, rows:]
        difference = _exp_terms(f, exponents) - _exp_terms(u, -exponents)
        value = _exp_terms(f, exponents).sum() + _exp_terms(u, -exponents).sum()
        return float(value), np.concatenate([difference.sum(axis=1), difference.sum(axis=0)])

    result = minimize(
        objective,
        np.zeros(rows + f.shape[1]),
        jac=True,
        method="BFGS",
        options={"gtol": 1e-13, "maxiter": 10_000},
    )
    return float(np.sqrt(f_total * u_total)) * float(result.fun)


# ----------------------------------------------------------------------------- perturbation

PERTURBATION_SEARCHES = (
    "pacbayes-sigma",
    "pacbayes-mag-sigma",
    "sharpness-alpha",
    "sharpness-mag-alpha",
)
_PERTURBED_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_EVALUATION_BATCH = 512


def perturbed_parameters(model: nn.Module) -> list[nn.Parameter]:
    """θ: weight then bias (if any) of every Linear / Conv1d-3d, in ``model.modules()`` order."""
    parameters = []
    for module in model.modules():
        if isinstance(module, _PERTURBED_MODULES):
            parameters.append(module.weight)
            if module.bias is not None:
                parameters.append(module.bias)
    return parameters


def all_parameters(model: nn.Module) -> list[nn.Parameter]:
    """θ of a network that cannot be folded: every parameter, in ``named_parameters()`` order."""
    return [parameter for _, parameter in model.named_parameters()]


def correct_count(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> int:
    """How many examples have ``argmax`` of the logits equal to the label, in batches of 512."""
    correct = 0
    with torch.no_grad():
        for start in range(0, len(labels), _EVALUATION_BATCH):
            batch = slice(start, start + _EVALUATION_BATCH)
            correct += int((model(inputs[batch]).argmax(dim=1) == labels[batch]).sum())
    return correct


def perturbation_search_by_loops(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    search: str,
    seed: int = 0,
    s_min: float = 0.0,
    s_max: float = 2.0,
    steps: int = 20,
    target: float = 0.1,
    tolerance: float = 0.01,
    interval_tolerance: float = 0.0,
    samples: int | None = None,
    eps: float = 1e-3,
    ascent_steps: int = 20,
    ascent_batch: int = 128,
    ascent_rule: str = "gradient",
    step_size: float | None = None,
    eval_subset: int | None = None,
    parameters_of: Callable[[nn.Module], list[nn.Parameter]] = perturbed_parameters,
) -> dict:
    """The literal reference of ``MEASURES.md`` §2.4: bisection × draws, each scored on all of E.

    ``search`` is one of ``pacbayes-sigma``, ``pacbayes-mag-sigma``, ``sharpness-alpha``,
    ``sharpness-mag-alpha``. The model must have no BatchNorm (fold it first). One deep copy of
    it, in eval mode, is perturbed in place; θ0 (the weights and biases of every Linear and Conv
    module) is kept as clones. Draw or restart k uses its own generator, re-seeded with
    ``derive_seed(seed, "perturbation/" + search, k)`` every time it is used (common random
    numbers), so ``A(s)`` is a fixed function of s. ``parameters_of`` chooses θ in the copy:
    by default the Linear/Conv weights and biases (:func:`perturbed_parameters`), or
    :func:`all_parameters` for a network that cannot be folded.

    - PAC-Bayes: ``A(s)`` is the mean over ``samples`` draws of ``acc(θ0 + u; E)`` with
      ``u = s·z`` (``pacbayes-sigma``) or ``u = sqrt(s²θ0² + eps²)·z`` (``pacbayes-mag-sigma``),
      ``z ~ N(0, I)``. It is computed as the total number of correct predictions over all draws
      divided by ``samples · |E|`` (exactly rounded).
    - Sharpness: box half-widths ``r = s`` (``sharpness-alpha``) or ``r = s|θ0| + eps``
      (``sharpness-mag-alpha``); each restart starts at ``u = r(U − 1/2)``, takes
      ``ascent_steps`` projected ascent steps on the mean cross-entropy of minibatches of the
      whole training set, and is scored on E; ``A(s)`` is the minimum over restarts.

    Returns:
        A dict with ``value`` (the last midpoint s), ``converged``, ``reason`` (``"tolerance"``,
        ``"interval"`` or ``"max-steps"``), ``saturated`` (``"high"``, ``"low"`` or None),
        ``a0``, ``history`` (one ``(s, A(s), |a0 − A(s)|)`` triple per bisection step),
        ``evaluations`` (times E was scored, a0 included) and ``ascent_steps_run`` (gradient
        steps over all restarts and bisection steps).
    """
    if search not in PERTURBATION_SEARCHES:
        raise ValueError(f"unknown search {search!r}; expected one of {PERTURBATION_SEARCHES}")
    if ascent_rule not in ("gradient", "sign"):
        raise ValueError(f"unknown ascent_rule {ascent_rule!r}; expected 'gradient' or 'sign'")
    if not 0.0 <= s_min < s_max:
        raise ValueError(f"need 0 <= s_min < s_max, got [{s_min}, {s_max}]")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    pacbayes = search.startswith("pacbayes")
    if samples is None:
        samples = 10 if pacbayes else 3
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if ascent_steps < 0 or ascent_batch < 1:
        raise ValueError("need ascent_steps >= 0 and ascent_batch >= 1")
    if step_size is None:
        step_size = 0.1 if ascent_rule == "gradient" else 0.25
    m = len(labels)
    if m == 0 or inputs.shape[0] != m:
        raise ValueError(f"need as many inputs as labels, at least one; got {inputs.shape[0]}, {m}")
    if eval_subset is not None and not 1 <= eval_subset <= m:
        raise ValueError(f"eval_subset must be in [1, {m}], got {eval_subset}")

    perturbed = copy.deepcopy(model).eval()
    for parameter in perturbed.parameters():
        parameter.requires_grad_(False)
    parameters = parameters_of(perturbed)
    if not parameters:
        raise ValueError("the model has no Linear or Conv weights to perturb")
    theta0 = [p.detach().clone() for p in parameters]
    if not pacbayes:
        for parameter in parameters:
            parameter.requires_grad_(True)

    purpose = "perturbation/" + search
    if eval_subset is None:
        eval_inputs, eval_labels = inputs, labels
    else:
        subset_seed = derive_seed(seed, purpose + "/eval-subset")
        subset_generator = torch.Generator().manual_seed(subset_seed)
        chosen = torch.randperm(m, generator=subset_generator)[:eval_subset].to(labels.device)
        eval_inputs, eval_labels = inputs[chosen], labels[chosen]
    n_eval = len(eval_labels)
    evaluations = 0
    ascent_steps_run = 0

    def set_perturbation(u: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for parameter, start, offset in zip(parameters, theta0, u, strict=True):
                parameter.copy_(start + offset)

    def score() -> int:
        nonlocal evaluations
        evaluations += 1
        return correct_count(perturbed, eval_inputs, eval_labels)

    def generator(k: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(seed, purpose, k))

    def pacbayes_estimate(s: float) -> float:
        correct = 0
        for k in range(samples):
            g = generator(k)
            u = []
            for start in theta0:
                z = torch.randn(start.shape, generator=g, dtype=start.dtype).to(start.device)
                if search == "pacbayes-sigma":
                    u.append(s * z)
                else:
                    u.append(torch.sqrt(s**2 * start**2 + eps**2) * z)
            set_perturbation(u)
            correct += score()
        return correct / (samples * n_eval)

    def sharpness_estimate(s: float) -> float:
        nonlocal ascent_steps_run
        if search == "sharpness-alpha":
            radii = [torch.full_like(start, s) for start in theta0]
        else:
            radii = [s * start.abs() + eps for start in theta0]
        accuracies = []
        for k in range(samples):
            g = generator(k)
            u = []
            for start, r in zip(theta0, radii, strict=True):
                uniform = torch.rand(start.shape, generator=g, dtype=start.dtype).to(start.device)
                u.append(r * (uniform - 0.5))
            for _ in range(ascent_steps):
                if m > ascent_batch:
                    batch = torch.randperm(m, generator=g)[:ascent_batch]
                else:
                    batch = torch.arange(m)
                batch = batch.to(labels.device)
                set_perturbation(u)
                for parameter in parameters:
                    parameter.grad = None
                loss = F.cross_entropy(perturbed(inputs[batch]), labels[batch])
                loss.backward()
                with torch.no_grad():
                    stepped = []
                    for offset, r, parameter in zip(u, radii, parameters, strict=True):
                        gradient = parameter.grad
                        if ascent_rule == "gradient":
                            moved = offset + step_size * gradient
                        else:
                            moved = offset + step_size * r * torch.sign(gradient)
                        stepped.append(torch.maximum(torch.minimum(moved, r), -r))
                    u = stepped
                ascent_steps_run += 1
            set_perturbation(u)
            accuracies.append(score() / n_eval)
        return min(accuracies)

    estimate = pacbayes_estimate if pacbayes else sharpness_estimate

    a0 = score() / n_eval
    lo, hi = s_min, s_max
    moved_lo = moved_hi = False
    history: list[tuple[float, float, float]] = []

    def result(s: float, converged: bool, reason: str) -> dict:
        saturated = "high" if not moved_hi else "low" if not moved_lo else None
        return {
            "value": s,
            "converged": converged,
            "reason": reason,
            "saturated": saturated,
            "a0": a0,
            "history": history,
            "evaluations": evaluations,
            "ascent_steps_run": ascent_steps_run,
        }

    for _ in range(steps):
        s = (lo + hi) / 2
        accuracy = estimate(s)
        deviation = abs(a0 - accuracy)
        history.append((s, accuracy, deviation))
        if abs(deviation - target) < tolerance:
            return result(s, True, "tolerance")
        if hi - lo < interval_tolerance:
            return result(s, moved_lo and moved_hi, "interval")
        if deviation > target:
            hi, moved_hi = s, True
        else:
            lo, moved_lo = s, True
    return result(s, False, "max-steps")


def train_epochs_with_torch_optim(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    config: object,
    epochs: int,
) -> nn.Module:
    """The textbook training loop: ``torch.optim``, ``loss.backward()``, one torch thread.

    ``epochs`` passes over the data in the order of the run's data-order stream, dropout drawn
    from torch's global generator seeded with the run's torch stream, the learning rate of each
    update set from ``config.lr_milestones``, decoupled weight decay ``ϑ ← (1 − η_t·λ)·ϑ``
    before each ``optimizer.step()`` and ``config.l2`` as torch.optim's ``weight_decay``. The
    training kernel must give the same bits (no loss checks change training).
    """
    from genmeasures.zoo.optimizers import OPTIMIZER_TABLE
    from genmeasures.zoo.recording import TORCH_STREAM, training_streams

    entry = OPTIMIZER_TABLE[config.optimizer]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = entry.torch_class(
        params, lr=config.lr, weight_decay=config.l2, **entry.torch_settings()
    )
    order_gen, _, _ = training_streams(config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    step = 0
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(config.seed, TORCH_STREAM))
            model.train()
            for _ in range(epochs):
                order = torch.randperm(len(labels), generator=order_gen)
                for lo in range(0, len(labels), config.batch_size):
                    index = order[lo : lo + config.batch_size]
                    loss = F.cross_entropy(model(inputs[index]), labels[index])
                    optimizer.zero_grad()
                    loss.backward()
                    lr = config.lr * 0.1 ** sum(step >= t for t in config.lr_milestones)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    with torch.no_grad():
                        for p in params:
                            p.mul_(1 - lr * config.weight_decay)
                    optimizer.step()
                    step += 1
    finally:
        torch.set_num_threads(threads)
    return model


def robust_environments_by_loop(
    configs: list[tuple],
    mu: list[float],
    gap: list[float],
    test_size: float,
    min_ess: float,
) -> dict[tuple[int, tuple], tuple[float, float]]:
    """The environments of Dziugaite et al. 2020 from their definitions, one measure at a time.

    ``configs`` holds each model's values of the hyperparameter types (its seeds left out), so
    two models form a coupled pair when their tuples differ in exactly one place i; the
    environment of the pair is i and the values of every other type. Each pair of models is
    visited once (the sign-error and the weight are symmetric in the two models). A pair's
    weight is the paper's code's Hoeffding weight, times 2: the confidence that both test errors
    lie within |Δg|/2 of their expectations, p = max(0, 1 − 2 exp(−n Δg²/2))², then
    max(0, 2p − 1); with n = inf, exp(−inf) = 0. A model whose measure is NaN is in no pair.

    Returns:
        {(i, other values): (loss, effective sample size)} of the environments with some weight
        and an ESS of at least ``min_ess`` (up to a relative 1e-9).
    """
    import math

    sums: dict[tuple[int, tuple], list[float]] = {}
    for a, b in itertools.combinations(range(len(mu)), 2):
        differ = [i for i in range(len(configs[a])) if configs[a][i] != configs[b][i]]
        if len(differ) != 1 or math.isnan(mu[a]) or math.isnan(mu[b]):
            continue
        i = differ[0]
        key = (i, configs[a][:i] + configs[a][i + 1 :])
        delta_gap = gap[a] - gap[b]
        if delta_gap == 0:
            weight = 0.0
        else:
            p = max(0.0, 1.0 - 2.0 * math.exp(-test_size * delta_gap**2 / 2.0)) ** 2
            weight = max(0.0, 2.0 * p - 1.0)
        sign_mu = (mu[a] > mu[b]) - (mu[a] < mu[b])
        sign_gap = (delta_gap > 0) - (delta_gap < 0)
        error = (1 - sign_mu * sign_gap) / 2
        sums.setdefault(key, [0.0, 0.0, 0.0])
        sums[key][0] += weight
        sums[key][1] += weight**2
        sums[key][2] += weight * error
    kept = {}
    for key, (total, square, weighted) in sums.items():
        if total > 0:
            ess = total**2 / square
            if ess >= min_ess * (1 - 1e-9):
                kept[key] = (weighted / total, ess)
    return kept


def mixup_accuracy_by_loop(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    pairs: tuple[torch.Tensor, torch.Tensor],
    lam: float,
) -> float:
    """Label-wise mixup accuracy: each pair mixed and classified alone, one class at a time.

    For every pair (i, j) of ``pairs`` (both of class c), the network classifies
    ``lam·x_i + (1 − lam)·x_j`` as a batch of one; a class's accuracy is the fraction of its pairs
    classified c, and the value is the mean of the classes' accuracies.
    """
    hits: dict[int, list[bool]] = {}
    for i, j in zip(pairs[0].tolist(), pairs[1].tolist(), strict=True):
        assert labels[i] == labels[j] and i != j
        mixed = lam * inputs[i] + (1.0 - lam) * inputs[j]
        with torch.no_grad():
            predicted = int(model(mixed.unsqueeze(0))[0].argmax())
        hits.setdefault(int(labels[i]), []).append(predicted == int(labels[i]))
    return float(np.mean([np.mean(class_hits) for class_hits in hits.values()]))


def label_variation_by_loop(features: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Label variation over the k-nearest-neighbour graph, node by node (Lassance et al. 2020).

    Node i's neighbours are the k other nodes of largest cosine similarity (numpy's stable
    argsort: ties go to the lower index); its term is ``‖y_i‖² − (1/k) Σ_j ⟨y_i, y_j⟩``, the i-th
    diagonal entry of ``Yᵀ(I − D^{-1/2} A D^{-1/2})Y`` with out-degree D = k. The value is the
    mean of the terms.
    """
    n = len(features)
    norms = np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    unit = features / norms
    total = 0.0
    for i in range(n):
        similarity = np.array([float(unit[i] @ unit[j]) for j in range(n)])
        similarity[i] = -np.inf
        neighbours = np.argsort(-similarity, kind="stable")[:k]
        total += float(targets[i] @ targets[i])
        total -= sum(float(targets[i] @ targets[j]) for j in neighbours) / k
    return total / n


def power_law_fit_by_loop(values) -> tuple[float, float, float, int]:
    """Clauset et al.'s power-law fit, one candidate x_min at a time: (α, x_min, D, tail size).

    Each distinct value but the largest is a candidate x_min; its tail is every value ≥ x_min,
    ``α = 1 + n / Σ ln(x/x_min)`` over the tail, and D the largest gap between the fitted CDF
    ``1 − (x/x_min)^{1−α}`` and the empirical one ``k/n`` at the k-th smallest tail value. The
    fit is the candidate of smallest D (the first among equals).
    """
    import math

    data = sorted(float(v) for v in values)
    best = None
    for xmin in sorted(set(data))[:-1]:
        tail = [v for v in data if v >= xmin]
        n = len(tail)
        alpha = 1 + n / sum(math.log(v / xmin) for v in tail)
        distance = 0.0
        for k, v in enumerate(tail):
            distance = max(distance, abs(1 - (v / xmin) ** (1 - alpha) - k / n))
        if best is None or distance < best[2]:
            best = (alpha, xmin, distance, n)
    return best


def marchenko_pastur_median_by_quadrature(ratio: float) -> float:
    """Median of the Marchenko-Pastur law (variance 1, ratio M/N ≤ 1): quad of its density."""
    import math

    from scipy.integrate import quad
    from scipy.optimize import brentq

    a, b = (1 - math.sqrt(ratio)) ** 2, (1 + math.sqrt(ratio)) ** 2

    def density(x: float) -> float:
        return math.sqrt(max((b - x) * (x - a), 0.0)) / (2 * math.pi * ratio * x)

    def cdf(x: float) -> float:
        return quad(density, a, x, limit=400, epsabs=1e-14, epsrel=1e-13)[0]

    return brentq(lambda x: cdf(x) - 0.5, a, b, xtol=1e-15, rtol=1e-14)


def mp_outliers_by_formula(weight: np.ndarray) -> tuple[int, float]:
    """(count, edge): squared singular values of W above ``median · (1 + √(M/N))² / median_MP``."""
    squared = np.linalg.svd(np.asarray(weight, dtype=np.float64), compute_uv=False) ** 2
    n, m = max(weight.shape), min(weight.shape)
    edge = (
        float(np.median(squared))
        * (1 + np.sqrt(m / n)) ** 2
        / marchenko_pastur_median_by_quadrature(m / n)
    )
    return int(np.sum(squared > edge)), edge


def adaptive_box_maxima(
    loss_of_eps: Callable[[np.ndarray], float], size: int, rho: float, grid_points: int
) -> tuple[float, float]:
    """The largest loss at the vertices of the box ``|ε_i| ≤ ρ`` and on a regular grid in it.

    Every vertex (``2^size`` points) and every point of the grid with ``grid_points`` values per
    coordinate (vertices included when ``grid_points ≥ 2``) is evaluated one by one.

    Returns:
        ``(vertex maximum, grid maximum)``.
    """
    vertices = max(
        loss_of_eps(np.array(point)) for point in itertools.product((-rho, rho), repeat=size)
    )
    axis = np.linspace(-rho, rho, grid_points)
    grid = max(loss_of_eps(np.array(point)) for point in itertools.product(axis, repeat=size))
    return float(vertices), float(grid)


def softmax_regression_loss(weight: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean cross-entropy of ``x ↦ x Wᵀ`` for one weight ``(classes, inputs)`` or a stack of them.

    Args:
        weight: ``(classes, inputs)`` or ``(draws, classes, inputs)``.
        x: ``(n, inputs)``.
        y: ``(n,)`` integer labels.

    Returns:
        The loss, a scalar or one per stacked weight.
    """
    logits = np.einsum("ni,...ci->...nc", x, weight)
    shift = logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(logits - shift).sum(axis=-1)) + shift[..., 0]
    picked = logits[..., np.arange(len(y)), y]
    return (log_z - picked).mean(axis=-1)


def adaptive_average_by_monte_carlo(
    weight: np.ndarray, x: np.ndarray, y: np.ndarray, rho: float, draws: int, seed: int
) -> tuple[float, float]:
    """``E_ε L(W + |W| ⊙ ε) − L(W)``, ε ~ N(0, ρ² I), for softmax regression, and its std error.

    Plain Monte-Carlo with numpy's generator, ``draws`` independent draws in chunks.
    """
    rng = np.random.default_rng(seed)
    base = float(softmax_regression_loss(weight, x, y))
    samples = []
    for start in range(0, draws, 10_000):
        count = min(10_000, draws - start)
        eps = rng.normal(0.0, rho, size=(count, *weight.shape))
        samples.append(softmax_regression_loss(weight + np.abs(weight) * eps, x, y) - base)
    values = np.concatenate(samples)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(draws))


def relative_flatness_by_hessian(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    head: str,
    feature_producer: str | None = None,
    pooled: bool = False,
) -> float:
    """``Σ_{s,s'} ⟨w_s, w_s'⟩ Tr H_{s,s'}`` from the full loss Hessian, summed by loops.

    ``head`` names the classification head (Linear, or a 1×1 convolution before global average
    pooling); ``w_s`` is its weight row (output) s, flattened. The Hessian is
    :func:`loss_hessian` of the whole model, of which the head's weight block is read.

    With ``feature_producer`` (the name of the layer whose output, after a ReLU, is the head's
    input), the features are first normalized the way the authors' code does it, by
    reparameterizing the network: output i of the producer (its weight row and bias) is divided
    by the standard deviation σ_i of the layer's input channel i over ``inputs`` (for a
    convolution: over examples and positions, or with ``pooled`` over examples of the channel's
    spatial mean, the features of a NiN head), and the layer's weights reading channel i are
    multiplied by σ_i. Channels with σ_i = 0 are left out of the sum.
    """
    model = copy.deepcopy(model)
    head_module = model.get_submodule(head)
    channels = head_module.weight.shape[1]
    kept_channels = list(range(channels))
    if feature_producer is not None:
        seen = []
        handle = head_module.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        with torch.no_grad():
            model(inputs)
        handle.remove()
        features = seen[0]
        if features.ndim > 2:  # the channels' spatial means, or every position as an example
            by_channel = features.transpose(0, 1).reshape(channels, -1).T
            features = features.flatten(2).mean(dim=2) if pooled else by_channel
        sigma = features.std(dim=0, correction=0)
        kept_channels = [i for i in range(channels) if sigma[i] > 0]
        producer = model.get_submodule(feature_producer)
        with torch.no_grad():
            for i in kept_channels:
                producer.weight[i] /= sigma[i]
                producer.bias[i] /= sigma[i]
                head_module.weight[:, i] *= sigma[i]
    per_channel = head_module.weight[0, 0].numel()  # kernel entries per input channel
    kept = [c * per_channel + r for c in kept_channels for r in range(per_channel)]
    hessian = loss_hessian(model, inputs, labels)
    block = hessian[parameter_slices(model)[f"{head}.weight"]][
        :, parameter_slices(model)[f"{head}.weight"]
    ]
    weight = head_module.weight.detach().flatten(1)
    rows, width = weight.shape
    total = 0.0
    for s in range(rows):
        for t in range(rows):
            inner = sum(float(weight[s, k] * weight[t, k]) for k in kept)
            trace = sum(float(block[s * width + k, t * width + k]) for k in kept)
            total += inner * trace
    return total
