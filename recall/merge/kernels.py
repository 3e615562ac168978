"""Pure merge kernels: the N models' versions of one tensor in, the merged tensor out.

Every kernel has the signature `kernel(tensors, weights, base, **params) -> Tensor`: `tensors` are the
N inputs in float32, `weights` a (N,) tensor (this tensor's layer-group row), `base` the base model's
version or None; a method that needs_fisher also gets `fishers`, each model's diagonal Fisher of
the tensor. Kernels never see files or tensor names and never modify their inputs, so the
streaming engine serves them all and tests can call them on hand-made tensors.

The task-vector methods follow mergekit 0.1.5's `GeneralizedTaskArithmeticMerge`, the de-facto
reference: delta_q = theta_q - base; sparsify each delta; multiply by w_q; optionally keep only the
entries that agree with the elected sign; sum; optionally divide by the summed weights of the entries
kept; multiply by `scale` (lambda); add to base.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Sparsifier = Callable[[torch.Tensor], torch.Tensor]  # delta -> sparse delta


def weighted_sum(tensors: list[torch.Tensor], weights: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
    """sum_q w_q theta_q, or theta_0 + sum_q w_q (theta_q - theta_0) in delta space when a base is given."""
    if base is None:
        out = tensors[0] * weights[0]
        for t, w in zip(tensors[1:], weights[1:]):
            out.add_(t, alpha=float(w))
        return out
    out = base.clone()
    for t, w in zip(tensors, weights):
        out.add_(t - base, alpha=float(w))
    return out


def magnitude_trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Zero all but the k = max(1, int(density * n)) entries of largest magnitude (TIES "trim"), in place.

    kthvalue is a linear-time selection, about 8x faster than sorting; entries tied with the k-th
    magnitude are all kept, so a tensor with repeated magnitudes may keep a few more than k.
    """
    n = delta.numel()
    if density >= 1 or n == 0:
        return delta
    k = max(1, int(density * n))
    magnitude = delta.abs()
    threshold = magnitude.reshape(-1).kthvalue(n - k + 1).values
    # 1 where |delta| >= threshold, else 0, in float ops (several times faster than bool masks on CPU).
    keep = magnitude.sub_(threshold).sign_().add_(1).clamp_(max=1)
    return delta.mul_(keep)


def dare_drop(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Drop each entry with probability 1 - density and rescale the survivors by 1/density (DARE), in place."""
    if density >= 1:
        return delta
    keep = torch.rand(delta.shape, generator=generator).sub_(density).sign_().clamp_(max=0)  # -1 kept, 0 dropped
    return delta.mul_(keep).div_(-density)


def weighted_deltas(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    base: torch.Tensor,
    sparsify: Sparsifier | None = None,
    chain: bool = False,
) -> list[torch.Tensor]:
    """w_q * sparsify(theta_q - base) for every model: the task vectors the task-vector methods combine.
    With `chain`, theta_q - theta_{q-1} (theta_0 = base): see "Continual and spectral merges" below."""
    deltas = []
    for t, w, previous in zip(tensors, weights, [base, *tensors[:-1]] if chain else [base] * len(tensors)):
        delta = t - previous  # a new tensor: the sparsifiers may work in place on it
        deltas.append((sparsify(delta) if sparsify else delta).mul_(float(w)))
    return deltas


def summed(deltas: list[torch.Tensor]) -> torch.Tensor:
    """sum_q delta_q (into the first delta)."""
    out = deltas[0]
    for d in deltas[1:]:
        out.add_(d)
    return out


def disjoint_merge(deltas: list[torch.Tensor], weights: torch.Tensor, normalize: bool) -> torch.Tensor:
    """TIES sign election and disjoint merge of weighted deltas (overwrites them).

    The elected sign of each entry is the sign of the summed weighted deltas (a zero sum counts as
    positive); only deltas of that sign are added. With normalize, the sum is divided by the summed
    weights of the models that contributed to the entry (entries nobody contributes to stay 0).
    """
    # Float ops throughout: several times faster than bool masks on CPU.
    sign = torch.zeros_like(deltas[0])
    for d in deltas:
        sign.add_(d)
    sign.sign_().add_(0.5).sign_()  # +1 where the sum is >= 0, else -1
    total = torch.zeros_like(sign)
    divisor, contributes = (torch.zeros_like(sign), torch.empty_like(sign)) if normalize else (None, None)
    for d, w in zip(deltas, weights):
        agreeing = d.mul_(sign).clamp_(min=0)  # |d| where d has the elected sign, else 0 (zeros never agree)
        total.add_(agreeing)
        if divisor is not None:
            divisor.add_(torch.sign(agreeing, out=contributes), alpha=float(w))  # sign: 1 where agreeing, else 0
    total.mul_(sign)
    if divisor is not None:
        total.div_(divisor.masked_fill_(divisor == 0, 1))
    return total


def task_arithmetic(
    tensors: list[torch.Tensor], weights: torch.Tensor, base: torch.Tensor, *, scale: float = 1.0
) -> torch.Tensor:
    """Task arithmetic (Ilharco et al. 2023): base + scale * sum_q w_q (theta_q - base)."""
    return summed(weighted_deltas(tensors, weights, base)).mul_(scale).add_(base)


def ties(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    base: torch.Tensor,
    *,
    density: float,
    scale: float = 1.0,
    normalize: bool = True,
) -> torch.Tensor:
    """TIES-Merging (Yadav et al. 2023): trim each task vector to its top `density`, elect signs, disjoint mean.

    With normalize (the default, as in the paper and mergekit's `ties`), each entry is the weighted mean
    of the kept deltas that agree with the elected sign; without it, their weighted sum.
    """
    deltas = weighted_deltas(tensors, weights, base, lambda d: magnitude_trim(d, density))
    return disjoint_merge(deltas, weights, normalize).mul_(scale).add_(base)


def dare_linear(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    base: torch.Tensor,
    *,
    density: float,
    scale: float = 1.0,
    seed: int = 0,
) -> torch.Tensor:
    """DARE (Yu et al. 2023) then task arithmetic: random drop, rescale by 1/density, weighted sum."""
    generator = torch.Generator().manual_seed(seed)
    deltas = weighted_deltas(tensors, weights, base, lambda d: dare_drop(d, density, generator))
    return summed(deltas).mul_(scale).add_(base)


def dare_ties(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    base: torch.Tensor,
    *,
    density: float,
    scale: float = 1.0,
    seed: int = 0,
    normalize: bool = False,
) -> torch.Tensor:
    """DARE then TIES sign election; a plain sum by default, as in mergekit (the rescale already restores mass)."""
    generator = torch.Generator().manual_seed(seed)
    deltas = weighted_deltas(tensors, weights, base, lambda d: dare_drop(d, density, generator))
    return disjoint_merge(deltas, weights, normalize).mul_(scale).add_(base)


def magmax(
    tensors: list[torch.Tensor], weights: torch.Tensor, base: torch.Tensor, *, scale: float = 1.0
) -> torch.Tensor:
    """MagMax (Marczak et al. 2024): per entry, the task vector of largest magnitude over the models.

    theta = base + scale * delta_{q*}, q* = argmax_q |w_q delta_q| entrywise, delta_q = theta_q - base.
    MagMax itself has no per-model weights: they default to 1 (then this is the paper's rule), and
    other weights scale each task vector before the selection, as in the other task-vector methods.
    On a tie in magnitude (+d against -d included) the earlier model wins, as the first index of an
    argmax would.

    With unit weights and scale 1 the selection is associative, maxmag(maxmag(a, b), c) =
    maxmag(a, b, c) (earlier-wins breaks ties consistently at every step), so a sequential chain that
    merges (previous merged model, new fine-tune) on the same base at each step gives the same model
    as merging all the fine-tunes at once (up to the rounding of each stored intermediate model).
    """
    best = None
    for t, w in zip(tensors, weights):
        delta = (t - base).mul_(float(w))
        # Strictly greater: on a tie the earlier model keeps the entry.
        best = delta if best is None else torch.where(delta.abs() > best.abs(), delta, best)
    return best.mul_(scale).add_(base)


def fisher(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    base: torch.Tensor | None = None,
    *,
    fishers: list[torch.Tensor],
    floor: float = 1e-10,
) -> torch.Tensor:
    """Fisher merging (Matena & Raffel 2022): per entry, sum_q w_q F_q theta_q / sum_q w_q F_q.

    F is floored at `floor` (their "fisher floor"), so an entry no example moved in any model gets
    the plain weighted average instead of 0/0.
    """
    numerator = torch.zeros_like(tensors[0])
    denominator = torch.zeros_like(tensors[0])
    for t, f, w in zip(tensors, fishers, weights):
        wf = f.float().clamp(min=floor).mul_(float(w))
        numerator.addcmul_(wf, t)
        denominator.add_(wf)
    return numerator.div_(denominator)


# Continual and spectral merges. Their task vectors are deltas from the base, or, with `chain`, the
# deltas of a sequence in which each model was fine-tuned from the one before (the pipeline's
# sequential steps merge [previous merge, new fine-tune]): the first model minus the base is what the
# chain merged so far, the new fine-tune minus the previous model what this step learned. Deltas from
# the base would count the history twice (the new fine-tune's delta repeats it). Matrices get the
# spectral rules; other tensors each paper's rule for them. Spectra are cut at the matrix's numerical
# rank: a LoRA delta's null singular vectors are arbitrary, and the papers' rules, written for
# full-rank deltas, would spread or project along them.


def mean_vector(tensors: list[torch.Tensor], weights: torch.Tensor, base: torch.Tensor, scale: float) -> torch.Tensor:
    """Iso-C's and TSV-M's rule for non-matrices: base + scale * mean_q w_q (theta_q - base), the models'
    average at unit weights (in a chain too: there it averages the previous merge and the new model)."""
    return summed(weighted_deltas(tensors, weights, base)).mul_(scale / len(tensors)).add_(base)


def thin_svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torch.linalg.svd(full_matrices=False), in float64 when LAPACK's divide and conquer fails to converge
    in the matrix's own precision (it can on many repeated singular values: stacked orthonormal blocks,
    rank-deficient residuals), cast back."""
    try:
        return torch.linalg.svd(matrix, full_matrices=False)
    except torch.linalg.LinAlgError:
        if matrix.dtype == torch.float64:
            raise
        return tuple(t.to(matrix.dtype) for t in torch.linalg.svd(matrix.double(), full_matrices=False))


def ranked_svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, S, Vh of the thin SVD restricted to the nonzero singular values (torch.linalg.matrix_rank's tolerance)."""
    if not matrix.any():  # a tensor no task changed (a LoRA leaves most alone): skip its SVD
        m, n = matrix.shape
        return matrix.new_zeros(m, 0), matrix.new_zeros(0), matrix.new_zeros(0, n)
    u, s, vh = thin_svd(matrix)
    k = int((s > s[0] * max(matrix.shape) * torch.finfo(s.dtype).eps).sum())
    return u[:, :k], s[:k], vh[:k]


def orthonormalized(m: torch.Tensor) -> torch.Tensor:
    """The nearest matrix with orthonormal columns (rows, for a wide one): U Vh of m's SVD (orthogonal Procrustes)."""
    u, _, vh = thin_svd(m)
    return u @ vh


def iso_c(
    tensors: list[torch.Tensor], weights: torch.Tensor, base: torch.Tensor, *, scale: float = 1.0, chain: bool = False
) -> torch.Tensor:
    """Iso-C (Marczak et al. 2025): per matrix, the task vectors' sum with every nonzero singular value
    replaced by their mean (one flat spectrum over the sum's row and column spaces), times scale."""
    if base.dim() != 2:
        return mean_vector(tensors, weights, base, scale)
    u, s, vh = ranked_svd(summed(weighted_deltas(tensors, weights, base, chain=chain)))
    return (u * (s.mean() * scale) @ vh).add_(base) if s.numel() else base.clone()


def iso_cts(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    base: torch.Tensor,
    *,
    common: float = 0.8,
    scale: float = 1.0,
    chain: bool = False,
) -> torch.Tensor:
    """Iso-CTS (Marczak et al. 2025): the sum's top `common` share of directions, plus an equal share of
    each task's own top directions outside them, orthonormalized together, with one flat spectrum.

    The shares are of the sum's rank (the paper's min(m, n) for its full-rank deltas).
    """
    if base.dim() != 2:
        return mean_vector(tensors, weights, base, scale)
    deltas = weighted_deltas(tensors, weights, base, chain=chain)
    u, s, vh = ranked_svd(summed([d.clone() for d in deltas]))
    rank, n = s.numel(), len(deltas)
    if rank == 0:
        return base.clone()
    per_task = round((rank - int(rank * common)) / n)  # as the paper: equal task shares, the rest common
    k = rank - per_task * n
    us, ss, vhs = [u[:, :k]], [s[:k]], [vh[:k]]
    for d in deltas:
        tu, ts, tvh = ranked_svd(d - u[:, :k] @ (u[:, :k].T @ d))
        us.append(tu[:, :per_task])
        ss.append(ts[:per_task])
        vhs.append(tvh[:per_task])
    flat = torch.cat(ss).mean() * scale
    return (orthonormalized(torch.cat(us, 1)) * flat @ orthonormalized(torch.cat(vhs))).add_(base)


def tsv_m(
    tensors: list[torch.Tensor], weights: torch.Tensor, base: torch.Tensor, *, scale: float = 1.0, chain: bool = False
) -> torch.Tensor:
    """TSV-M (Gargiulo et al. 2025): per matrix, each task vector's top min(m, n) / N singular components,
    their stacked singular vectors decorrelated (each stack replaced by its nearest orthonormal one,
    orthogonal Procrustes), then summed: U_perp diag(S) V_perp^T, times scale."""
    if base.dim() != 2:
        return mean_vector(tensors, weights, base, scale)
    keep = min(base.shape) // len(tensors)
    parts = [ranked_svd(d) for d in weighted_deltas(tensors, weights, base, chain=chain)]
    s = torch.cat([p[1][:keep] for p in parts])
    if not s.numel():
        return base.clone()
    u = orthonormalized(torch.cat([p[0][:, :keep] for p in parts], 1))
    vh = orthonormalized(torch.cat([p[2][:keep] for p in parts]))
    return (u * (s * scale) @ vh).add_(base)


def off_subspace(delta: torch.Tensor, merged: torch.Tensor, energy: float) -> torch.Tensor:
    """OPCM's projection: `delta` without its components on the pairs (u_i, v_i) of `merged`'s singular
    vectors, and on the block u_i v_j^T of its leading directions (those before the cumulative singular
    value share first exceeds `energy`)."""
    u, s, vh = ranked_svd(merged)
    if not s.numel():
        return delta
    lead = int((s.cumsum(0) / s.sum() > energy).float().argmax())
    inner = u.T @ delta @ vh.T
    removed = torch.diag_embed(inner.diagonal())
    removed[:lead, :lead] = inner[:lead, :lead]
    return delta - u @ removed @ vh


def opcm(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    base: torch.Tensor,
    *,
    energy: float = 0.5,
    chain: bool = False,
) -> torch.Tensor:
    """OPCM (Tang et al. 2025), models taken in the order given: each task vector, off the running
    merge's singular subspace (`off_subspace`; other tensors unprojected), is added to the running
    merge, whose norm is then set to the mean norm of the task vectors.

    The paper sets one norm for the whole model; streaming one tensor at a time, the norm is each
    tensor's, and its mean is over the task vectors that change the tensor (a base model among the
    inputs, or a LoRA that leaves the tensor alone, is not a task there).
    """
    deltas = weighted_deltas(tensors, weights, base, chain=chain)
    merged = deltas[0]
    for d in deltas[1:]:
        merged = merged + (off_subspace(d, merged, energy) if base.dim() == 2 else d)
    norms = [float(d.norm()) for d in deltas if d.any()]
    norm = float(merged.norm())
    return merged.mul_(sum(norms) / len(norms) / norm).add_(base) if norm else base.clone()


def lines(
    tensors: list[torch.Tensor], weights: torch.Tensor, base: torch.Tensor, *, chain: bool = False
) -> torch.Tensor:
    """LiNeS (Wang et al. 2025): task arithmetic with layer-group weights that grow linearly with depth
    (the `depth` weight source builds them; a kernel sees only its tensor's row). In a chain the running
    merge was scaled when the chain made it, so only the later task vectors are scaled again."""
    if chain:
        weights = torch.cat([torch.ones(1), weights[1:]])
    return summed(weighted_deltas(tensors, weights, base, chain=chain)).add_(base)
