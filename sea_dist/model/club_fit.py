"""Q's inner fit (CLUB's variational nets), computed with few, large kernels.

What is fitted is unchanged: ``steps`` Adam steps on the summed negative log-likelihood of the
(x, y) pairs, each pair's loss a mean over its rows, exactly as autograd plus
``torch.optim.Adam`` would do it. Why it is written by hand: Q is tiny (32 -> 8 -> 32, two
heads, ~1.1k parameters) and its rows are few thousand, so autograd's ~60 small kernels per
step and the optimizer's per-tensor loop cost more than the arithmetic. Here one inner step is,
per Q, 2 matmul kernels forward and 3 backward (both heads batched together), ~12
elementwise passes into buffers allocated once, and one Adam update over one flat buffer
holding every Q's parameters (one Q per modality in ``within_modality`` mode): about 4x less
CPU than autograd on a default-dataset step (``benchmarks/club_fit.py``).

On a CPU the gradient of an inner step is by default computed by a compiled C kernel instead
(:mod:`sea_dist.model.club_native`, ``kernel="auto"``): the torch form above still streams
its [64, rows] intermediates through memory a dozen times per step, the kernel keeps a block
of rows in registers through the whole step, about 2x faster again. The torch form stays for
GPUs, for CPUs without a C compiler, and as the kernel's reference in the tests.

The fit runs with one intra-op thread (:func:`intra_op_threads`): its kernels last tens to
hundreds of microseconds, and splitting them over threads costs more in wake-ups than it
saves. On the 2-core machine under load, one default-dataset fit took 0.31 s on one thread
and 13 s on two (the autograd fit: 1.3 s and 35 s).

The optimizer's state is read from and written back to the caller's ``torch.optim.Adam``, so
checkpoints, resumes and the reference-style optimizer stay as they were.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch
from torch import nn

from sea_dist.model.club_native import ClubKernel, club_kernel
from sea_dist.model.losses import GaussianPredictor, club_learning_loss

Pair = tuple[GaussianPredictor, torch.Tensor, torch.Tensor]
_LOG2E = 1.0 / math.log(2.0)


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, restoring the previous count after."""
    previous = torch.get_num_threads()
    if previous == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _layers(net: GaussianPredictor) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
    """(mu in, logvar in, mu out, logvar out) of one Q, checked against the shape fitted here."""
    mu_in, mu_out, lv_in, lv_out = net.mu[0], net.mu[2], net.logvar[0], net.logvar[2]
    expected = (nn.Linear, nn.ReLU, nn.Linear, nn.Linear, nn.ReLU, nn.Linear, nn.Tanh)
    found = tuple(type(m) for m in (*net.mu, *net.logvar))
    if found != expected or mu_in.out_features != lv_in.out_features:
        raise TypeError(f"fit_club: unexpected Q layout {found}")
    return mu_in, lv_in, mu_out, lv_out


class _NetFit:
    """One Q and its rows, laid out so every kernel of a step is a plain, well-shaped one.

    Rows run along the columns (activations are [features, rows]): the matmuls then have the
    long dimension as their output's width, about twice as fast as the row-major form for
    these shapes. Q's parameters are views of the fit's flat buffer, in the order
    ``shapes`` gives: ``w1`` [2h, d_x] stacks both heads' input layers (mu rows first),
    ``b1`` [2h, 1], ``w2`` [2, d_y, h] and ``b2`` [2, d_y, 1] both heads' output layers
    (mu, then logvar), so each output-layer kernel serves both heads at once. Scratch buffers
    are allocated once per fit and reused within a step: fresh multi-hundred-kB tensors at
    every step cost page faults, and a small working set stays in cache.

    The loss is ``scale * sum_rows weight * nll(row)``; ``weights`` [1, R] (None = all 1)
    counts how often a row stands for identical rows merged by
    :func:`sea_dist.model.objective.gather_fitting_pairs`.
    """

    def __init__(
        self,
        net: GaussianPredictor,
        x: torch.Tensor,
        y: torch.Tensor,
        scale: float,
        weights: torch.Tensor | None,
        kernel: str = "auto",
    ):
        mu_in, _, mu_out, _ = _layers(net)
        self.net, self.scale, self.hidden = net, scale, mu_in.out_features
        rows, d_x, d_y, h = x.shape[0], x.shape[1], y.shape[1], self.hidden
        self.shapes = {
            "w1": (2 * h, d_x),
            "b1": (2 * h, 1),
            "w2": (2, d_y, h),
            "b2": (2, d_y, 1),
        }
        self.like = x.new_empty(())  # the fit's dtype and device
        self.weights = None if weights is None else weights.reshape(1, rows).to(x)
        self.native = None
        if x.device.type == "cpu" and x.dtype == torch.float32:
            compiled = club_kernel(d_x, h, d_y, kernel)
            if compiled is not None:
                self.native = _NativeInputs(compiled, x, y, self.weights)
                return  # the torch form's buffers are not needed
        elif kernel == "native":
            raise ValueError(f"fit_club: the native kernel fits float32 CPU rows, got {x.dtype} on {x.device}")
        self.x = x.contiguous()  # [R, d_x]: the input layer's weight gradient
        self.x_t = x.t().contiguous()  # [d_x, R]
        self.y_t = y.t().contiguous()  # [d_y, R]
        new = lambda *shape: x.new_empty(shape)  # noqa: E731
        self.act, self.g_act, self.relu_on = new(2 * h, rows), new(2 * h, rows), new(2 * h, rows)
        self.out, self.g_out = new(2, d_y, rows), new(2, d_y, rows)  # (mu, 2z), (dL/dmu, dL/dz)
        self.w2_scaled, self.b2_scaled, self.g_w2_t = new(2, d_y, h), new(2, d_y, 1), new(2, h, d_y)
        self.head_scale = x.new_tensor([1.0, 2.0]).view(2, 1, 1)  # the logvar head yields 2z
        self.two = x.new_full((), 2.0) if weights is None else 2.0 * self.weights
        self.log2e = x.new_full((), _LOG2E)

    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for name, shape in self.shapes.items():
            n = math.prod(shape)
            out[name] = flat[offset : offset + n].view(shape)
            offset += n
        return out

    def parameter_views(self, flat: torch.Tensor) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(module parameter, its place in ``flat``) for every parameter of this Q."""
        v, h = self.views(flat), self.hidden
        mu_in, lv_in, mu_out, lv_out = _layers(self.net)
        return [
            (mu_in.weight, v["w1"][:h]),
            (lv_in.weight, v["w1"][h:]),
            (mu_in.bias, v["b1"][:h, 0]),
            (lv_in.bias, v["b1"][h:, 0]),
            (mu_out.weight, v["w2"][0]),
            (lv_out.weight, v["w2"][1]),
            (mu_out.bias, v["b2"][0, :, 0]),
            (lv_out.bias, v["b2"][1, :, 0]),
        ]

    def gradients(self, p: dict[str, torch.Tensor], grad: dict[str, torch.Tensor], want_loss: bool) -> float:
        """Write d(loss)/d(parameters) into ``grad``; the loss value only when asked (a sync).

        With mu, logvar = Q(x), d = mu - y, logvar = tanh(z), a row's loss is
        ``d^2 exp(-logvar) / 2 + logvar / 2`` (summed over dims). tanh(z) is taken as
        2 sigmoid(2z) - 1 (sigmoid is ~6x cheaper than tanh on CPU; the two agree to ~1e-7),
        so with sg = sigmoid(2z): exp(-logvar) = exp(1 - 2 sg), tanh'(z) = 4 sg (1 - sg).
        logvar's gradient is a difference, 1 - d^2 exp(-logvar), that cancels as Q fits: it is
        formed as autograd forms it (exactly 0 where d^2 exp(-logvar) is exactly 1) and
        ``scale`` is applied only to the small weight gradients.
        """
        if self.native is not None:
            return self.native.gradients(p["w1"], grad["w1"], self.scale, want_loss)
        h, s, w = self.hidden, self.scale, self.weights
        act, out, g_out, g_act = self.act, self.out, self.g_out, self.g_act
        rows = act.shape[1]
        torch.addmm(p["b1"], p["w1"], self.x_t, out=act).relu_()
        heads = act.view(2, h, rows)  # (mu's hidden units, logvar's)
        torch.mul(p["w2"], self.head_scale, out=self.w2_scaled)
        torch.mul(p["b2"], self.head_scale, out=self.b2_scaled)
        torch.baddbmm(self.b2_scaled, self.w2_scaled, heads, out=out)  # (mu, 2z)
        diff, sig = out[0].sub_(self.y_t), out[1].sigmoid_()  # d = mu - y, sg
        g_mu, g_lv = g_out[0], g_out[1]
        # exp(-logvar) = 2^(log2(e) (1 - 2 sg)): exp2 is ~3x cheaper than exp on CPU
        torch.add(self.log2e, sig, alpha=-2.0 * _LOG2E, out=g_mu).exp2_()
        if w is not None:
            g_mu.mul_(w)
        g_mu.mul_(diff)  # dL/dmu / scale = w d exp(-logvar)
        loss = 0.0
        if want_loss:
            logvar = 2.0 * sig - 1.0
            if w is not None:
                logvar.mul_(w)
            loss = s * float(0.5 * (diff * g_mu).sum() + 0.5 * logvar.sum())
        # dL/dz / scale = w (1 - d^2 exp(-logvar)) / 2 * 4 sg (1 - sg) = (2w - 2 d dL/dmu) (sg - sg^2)
        torch.addcmul(self.two, diff, g_mu, value=-2.0, out=g_lv)
        g_lv.mul_(sig.addcmul_(sig, sig, value=-1.0))
        # [2, h, R] @ [2, R, d_y] runs ~2x faster than the [2, d_y, R] @ [2, R, h] it transposes
        torch.bmm(heads, g_out.transpose(1, 2), out=self.g_w2_t)
        torch.mul(self.g_w2_t.transpose(1, 2), s, out=grad["w2"])
        torch.sum(g_out, dim=2, keepdim=True, out=grad["b2"]).mul_(s)
        torch.bmm(p["w2"].transpose(1, 2), g_out, out=g_act.view(2, h, rows))
        g_act.mul_(torch.sign(act, out=self.relu_on))  # ReLU's derivative: act >= 0, 0 where off
        grad["w1"].addmm_(g_act, self.x, beta=0.0, alpha=s)
        torch.sum(g_act, dim=1, keepdim=True, out=grad["b1"]).mul_(s)
        return loss


class _NativeInputs:
    """One Q's rows laid out for the compiled kernel (``club_native``): the same [features,
    rows] layout, padded to a whole number of vectors with rows of weight 0 (which add
    exactly nothing), plus the kernel's scratch memory, allocated once per fit."""

    def __init__(self, kernel: ClubKernel, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None):
        rows = x.shape[0]
        stride = -(-rows // kernel.lanes) * kernel.lanes
        self.kernel, self.stride = kernel, stride
        self.x_t = x.new_zeros(x.shape[1], stride)
        self.x_t[:, :rows] = x.t()
        self.y_t = y.new_zeros(y.shape[1], stride)
        self.y_t[:, :rows] = y.t()
        self.weight = x.new_zeros(stride)
        self.weight[:rows] = 1.0 if weights is None else weights.reshape(rows)
        self._scratch = torch.empty(kernel.scratch_bytes + 64, dtype=torch.uint8)
        self.scratch = self._scratch.data_ptr() + (-self._scratch.data_ptr()) % 64  # vector-aligned

    def gradients(self, params: torch.Tensor, grad: torch.Tensor, scale: float, want_loss: bool) -> float:
        """``params``/``grad``: the first view of this Q's contiguous segment of the flat
        buffers (the kernel reads and writes the whole segment in :class:`_NetFit`'s order)."""
        loss = self.kernel.step(
            self.x_t.data_ptr(), self.y_t.data_ptr(), self.weight.data_ptr(), self.stride,
            params.data_ptr(), grad.data_ptr(), scale, int(want_loss), self.scratch,
        )
        return scale * loss if want_loss else 0.0


def _net_fits(
    pairs: list[Pair], row_weights: torch.Tensor | None, rows_in_total: float | None = None, kernel: str = "auto"
) -> list[_NetFit]:
    """One :class:`_NetFit` per Q. A Q's pairs are one concatenated batch weighted by their
    number: the sum of the pairs' means when their row counts are equal, as they are.
    With ``rows_in_total`` (rows shared out over workers) a Q with no rows here stays in:
    every worker's flat gradient must have the same layout."""
    by_net: dict[int, tuple[GaussianPredictor, list, list]] = {}
    for net, x, y in pairs:
        if row_weights is not None and x.shape[0] != row_weights.shape[0]:
            raise ValueError("fit_club: row_weights needs one weight per row of every pair")
        entry = by_net.setdefault(id(net), (net, [], []))
        entry[1].append(x.detach())
        entry[2].append(y.detach())
    fits = []
    for net, xs, ys in by_net.values():
        dtype = net.mu[0].weight.dtype  # Q fits in its own precision (fp32), whatever the views'
        x, y = torch.cat(xs).to(dtype), torch.cat(ys).to(dtype)
        weights = None if row_weights is None else torch.cat([row_weights] * len(xs))
        if rows_in_total is not None:
            total = rows_in_total * len(xs)
        elif not x.shape[0]:
            continue
        else:
            total = x.shape[0] if weights is None else float(weights.sum())
        fits.append(_NetFit(net, x, y, len(xs) / total, weights, kernel))
    return fits


def _adam_settings(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> dict:
    """The Adam hyper-parameters shared by ``params``; only what plain Adam does is supported."""
    if not isinstance(optimizer, torch.optim.Adam):
        raise TypeError(f"fit_club needs torch.optim.Adam, got {type(optimizer).__name__}")
    wanted = {id(p) for p in params}
    settings = None
    for group in optimizer.param_groups:
        if not any(id(p) in wanted for p in group["params"]):
            continue
        if group["weight_decay"] or group["amsgrad"] or group["maximize"]:
            raise ValueError("fit_club supports plain Adam (no weight decay, amsgrad or maximize)")
        found = {"lr": float(group["lr"]), "betas": tuple(map(float, group["betas"])), "eps": float(group["eps"])}
        if settings is not None and found != settings:
            raise ValueError("fit_club: Q's parameters must share one Adam setting")
        settings = found
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    if settings is None or not wanted <= in_optimizer:
        raise ValueError("fit_club: every Q parameter must be in the optimizer")
    return settings


def fit_club(
    pairs: list[Pair],
    optimizer: torch.optim.Optimizer,
    steps: int,
    after_backward: Callable[[], None] | None = None,
    threads: int | None = 1,
    row_weights: torch.Tensor | None = None,
    rows_in_total: float | None = None,
    reduce_gradients: Callable[[torch.Tensor], object] | None = None,
    kernel: str = "auto",
) -> float:
    """Q's inner loop: ``steps`` Adam steps on the summed negative log-likelihood of the
    pairs (each pair's loss is a mean over its rows; with ``row_weights``, one weight per row
    shared by every pair, a weighted mean: a row of weight k counts as k equal rows).

    The reference shuffles the rows before every step; the loss is a full-batch mean, so
    the order changes nothing and we skip it. A distributed caller either

    - passes every worker's rows (:func:`sea_dist.model.objective.gather_fitting_pairs`): no
      collective inside the loop, every worker computes the same fit; or
    - passes its share of the rows, ``rows_in_total`` (the summed row weight of one pair over
      all shares: the means' denominator) and ``reduce_gradients``, called once per step
      with the flat gradient of every Q, to sum in place over the workers; or
    - passes its own rows and ``after_backward``, called once per step while the
      parameters' ``.grad`` hold that step's gradients (it may average them in place).

    ``threads``: intra-op threads for the fit (None = leave as is). ``kernel``: how each inner
    step's gradient is computed on a CPU: ``auto`` (the compiled kernel of
    :mod:`sea_dist.model.club_native` where it builds, else torch ops), ``native`` or ``torch``
    (same numbers to float rounding). Returns the last step's loss (this worker's rows' part
    of it when the rows are shared out).
    """
    if not pairs or steps <= 0:
        return 0.0
    device = pairs[0][1].device.type
    # Q fits in fp32 even when called inside a mixed-precision (autocast) region
    with intra_op_threads(threads) if threads else contextlib.nullcontext(), torch.autocast(device, enabled=False):
        fits = _net_fits(pairs, row_weights, rows_in_total, kernel)
        return _fit(fits, optimizer, steps, after_backward, reduce_gradients)


def _fit(
    fits: list[_NetFit],
    optimizer: torch.optim.Optimizer,
    steps: int,
    after_backward: Callable[[], None] | None,
    reduce_gradients: Callable[[torch.Tensor], object] | None,
) -> float:
    if not fits:
        return 0.0
    x0 = fits[0].like
    sizes = [f.size() for f in fits]
    flat = x0.new_empty(sum(sizes))
    flat_grad = torch.zeros_like(flat)
    exp_avg, exp_avg_sq = torch.zeros_like(flat), torch.zeros_like(flat)
    bounds = [0]
    for n in sizes:
        bounds.append(bounds[-1] + n)
    views, grads, placed = [], [], []
    for fit, lo, hi in zip(fits, bounds, bounds[1:]):
        views.append(fit.views(flat[lo:hi]))
        grads.append(fit.views(flat_grad[lo:hi]))
        placed += [
            (param, (value, grad, m, v))
            for (param, value), (_, grad), (_, m), (_, v) in zip(
                fit.parameter_views(flat[lo:hi]),
                fit.parameter_views(flat_grad[lo:hi]),
                fit.parameter_views(exp_avg[lo:hi]),
                fit.parameter_views(exp_avg_sq[lo:hi]),
            )
        ]
    params = [param for param, _ in placed]
    settings = _adam_settings(optimizer, params)
    steps_done = set()
    with torch.no_grad():
        for param, (value, grad, m, v) in placed:
            value.copy_(param)
            state = optimizer.state.get(param, {})
            if state:
                m.copy_(state["exp_avg"])
                v.copy_(state["exp_avg_sq"])
                steps_done.add(float(state["step"]))
            else:
                steps_done.add(0.0)
            if after_backward is not None:
                param.grad = grad  # the hook sees (and may rewrite in place) this step's gradients
    if len(steps_done) != 1:
        raise ValueError("fit_club: Q's parameters are at different Adam steps")
    step = steps_done.pop()
    lr, (beta1, beta2), eps = settings["lr"], settings["betas"], settings["eps"]
    last = 0.0
    with torch.no_grad():
        for i in range(steps):
            want_loss = i == steps - 1
            last = sum(f.gradients(p, g, want_loss) for f, p, g in zip(fits, views, grads))
            if reduce_gradients is not None:
                reduce_gradients(flat_grad)
            if after_backward is not None:
                after_backward()
            # torch.optim.Adam's single-tensor update, op for op, over the flat buffer
            step += 1
            exp_avg.lerp_(flat_grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(flat_grad, flat_grad, value=1 - beta2)
            step_size = lr / (1 - beta1**step)
            denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
            flat.addcdiv_(exp_avg, denom, value=-step_size)
        scalar_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        for param, (value, grad, m, v) in placed:
            param.copy_(value)
            param.grad = None
            optimizer.state[param] = {
                "step": torch.tensor(step, dtype=scalar_dtype),
                "exp_avg": m.clone(),
                "exp_avg_sq": v.clone(),
            }
    return last


def fit_club_reference(
    pairs: list[Pair],
    optimizer: torch.optim.Optimizer,
    steps: int,
    after_backward: Callable[[], None] | None = None,
) -> float:
    """The same fit stated plainly (autograd, ``optimizer.step()``): what :func:`fit_club`
    must equal. Kept for the equality tests and the side-by-side benchmark, not for training
    (it costs several times more per step)."""
    if not pairs or steps <= 0:
        return 0.0
    grouped: dict[int, tuple[GaussianPredictor, list, list]] = {}
    for net, x, y in pairs:
        grouped.setdefault(id(net), (net, [], []))
        grouped[id(net)][1].append(x.detach())
        grouped[id(net)][2].append(y.detach())
    batches = [(net, torch.cat(xs), torch.cat(ys), len(xs)) for net, xs, ys in grouped.values()]
    last = 0.0
    for _ in range(steps):
        loss = sum(count * club_learning_loss(net, x, y) for net, x, y, count in batches)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if after_backward is not None:
            after_backward()
        optimizer.step()
        last = float(loss.detach())
    return last
