"""The training state :func:`~unrollsci.train.fit` keeps in its checkpoint, so that a run
resumes where it stopped, on any number of processes.

One file holds everything: the model (config and weights, readable by
:func:`~unrollsci.train.load_checkpoint` as any checkpoint) and, under
``extra["fit_state"]``, the position in the schedule, the optimizer and gradient-scaler
state, the data generator and every rank's torch RNG state, the early-stopping bookkeeping
and the history so far. Only plain data: the file is read with ``weights_only=True``.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import math
import numbers
from pathlib import Path
from typing import Any

import torch
from torch import nn

STATE_KEY = "fit_state"
STATE_VERSION = 1
# fit arguments a resumed run must share with the run that wrote the checkpoint (epochs may
# grow: the run then goes on)
RESUME_ARGS = (
    "seed",
    "lr",
    "batch_size",
    "steps_per_epoch",
    "schedule",
    "stage_epochs",
    "weight_decay",
    "lr_decay",
    "clip_grad",
    "patience",
    "mixed_precision",
)
# optional inputs a resumed run must give (or not) as the run that wrote the checkpoint did:
# stored as "<name> given" (a checkpoint written before they were stored is not refused).
# Not "callback": it only watches and may stop the run, and a run halted by its callback
# is resumed without it to go on (tests/train/test_distributed.py, the "schedule" case).
RESUME_GIVEN = ("val_data", "lr_factor")
# config keys (per checkpoint class name) a resumed run may change: the seed that only draws
# the initial weights (which a resume replaces), and UnrolledCT's arithmetic of its CNNs
# (docs/ct.md: switched on a trained model, the weights the same)
RESUME_FREE_KEYS = {
    "unrollsci.unrolled:UnrolledAnalysisFISTA": ("seed",),
    "unrollsci.imaging:UnrolledCT": ("precision",),
}


def copy_state(state: dict[str, Any]) -> dict[str, Any]:
    """An independent copy of a ``state_dict``, as ``copy.deepcopy`` would give.

    ``copy.deepcopy`` fails on sparse CSR/CSC/BSR/BSC tensors (they have no storage), which
    the state of a model on a :class:`~unrollsci.operators.SparseOperator` holds. Every
    tensor entry is cloned (``detach().clone()``, which works for every layout; a tensor
    under two names stays one tensor), every other entry is deep-copied, and the mapping
    keeps its type and the ``_metadata`` that ``load_state_dict`` reads.
    """
    memo: dict[int, Any] = {}
    for v in state.values():
        if isinstance(v, torch.Tensor) and id(v) not in memo:
            memo[id(v)] = v.detach().clone()
    return copy.deepcopy(state, memo)


def _keys_to_str(d: dict) -> dict[str, Any]:
    return {str(k): v for k, v in d.items()}


def encode_optimizer(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer ``state_dict`` with string keys (the checkpoint format needs them)."""
    return {
        "state": {str(k): _keys_to_str(v) for k, v in state["state"].items()},
        "param_groups": [dict(g) for g in state["param_groups"]],
    }


def decode_optimizer(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "state": {int(k): dict(v) for k, v in state["state"].items()},
        "param_groups": [dict(g) for g in state["param_groups"]],
    }


def save_fit_checkpoint(path: str | Path, model: nn.Module, state: dict[str, Any]) -> Path:
    """Write ``model`` and the training ``state`` to ``path`` (atomically, one file)."""
    from ._checkpoint import save_checkpoint

    return save_checkpoint(model, path, extra={STATE_KEY: state})


def load_fit_state(
    path: str | Path, model: nn.Module
) -> tuple[dict[str, Any], dict[str, Any], Any, Any]:
    """``(state, weights, depth, config)`` from a checkpoint written by
    ``fit(checkpoint=...)``.

    ``weights`` is the model's state dict at the end of the last finished epoch; ``depth``
    the ``active_layers`` the run trained at, where the file records one, else None (an
    end-to-end run of a truncated model continues at that depth); ``config`` the model's
    config as stored (plain data, see :func:`check_resume_config`). ``model`` (whose class
    the file must hold) is not changed: :mod:`._resume` checks, then applies.
    """
    from ._checkpoint import _FORMAT, _read_payload
    from ._config import _main_match, _name_of

    path = Path(path)
    payload = _read_payload(path, "cpu")
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(
            f"{path} is not an unrollsci checkpoint written by fit(checkpoint=...); "
            "cannot resume from it."
        )
    extra = payload.get("extra")
    state = extra.get(STATE_KEY) if isinstance(extra, dict) else None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ValueError(
            f"Checkpoint {path} holds no training state (it was written by save_checkpoint, "
            "or by fit without a checkpoint= path); resume needs a file written by "
            "fit(checkpoint=...)."
        )
    if payload.get("class") != _name_of(type(model)) and not _main_match(
        str(payload.get("class")), type(model)
    ):
        raise ValueError(
            f"Checkpoint {path} was written for a {payload.get('class')}; the model to "
            f"resume is a {_name_of(type(model))}."
        )
    weights = state.get("weights")
    if weights is None:
        weights = payload["state_dict"]
    if not isinstance(weights, dict):
        raise ValueError(
            f"Checkpoint {path}: expected its weights as a state_dict dict (got "
            f"{type(weights).__name__}); cannot resume from it."
        )
    return state, weights, payload.get("active_layers"), payload.get("config")


def check_resume_config(path: str | Path, stored: Any, model: nn.Module) -> None:
    """Raise ``ValueError`` if ``model.get_config()`` is not the config ``stored`` in the
    checkpoint ``path`` (as :func:`~unrollsci.train.save_checkpoint` encoded it), naming
    every differing key with both values.

    Arrays compare by shape and values (a permutation given as a list matches the same
    one stored as an array), floats NaN-aware. Not compared: what a resume replaces or
    cannot check, i.e. the values of learned tensors in a config (an operator built with
    ``parameter=True``, an ``nn.Parameter``: their shapes are compared, the weights come
    from the file), :data:`RESUME_FREE_KEYS`, and values a checkpoint cannot store (a
    callable, which the run that wrote the file did not have). A key that one side lacks
    (a file from before the key was stored) is compared with the constructor's default.
    """
    from ._config import _encode, _name_of

    get = getattr(model, "get_config", None)
    mine = get() if callable(get) else None
    if not isinstance(mine, dict) or not isinstance(stored, dict):
        return
    free = RESUME_FREE_KEYS.get(_name_of(type(model)), ())
    defaults = _defaults(type(model))
    diff = []
    for key in [*mine, *(k for k in stored if k not in mine)]:
        if key in free or (key not in mine and key not in defaults):
            continue
        if key not in stored and key not in defaults:
            continue
        try:
            ours = _encode(mine[key] if key in mine else defaults[key], f"config[{key!r}]")
            theirs = stored[key] if key in stored else _encode(defaults[key], "default")
        except TypeError:  # code (a callable): not stored, nothing to compare with
            continue
        if not _same(ours, theirs):
            shown, then = _show(ours), _show(theirs)
            diff.append(
                f"{key}={shown} with other values than the checkpoint's"
                if shown == then
                else f"{key}={shown} (checkpoint: {then})"
            )
    if diff:
        name = type(model).__name__
        raise ValueError(
            f"Cannot resume from {path}: it holds the weights of a {name} of another "
            f"configuration, which do not fit this {name}: expected the configuration of "
            f"the run that wrote it (got {'; '.join(diff)})."
        )


def _defaults(cls: type) -> dict[str, Any]:
    """The constructor's keyword defaults of ``cls`` ({} where they cannot be read)."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _array(value: Any) -> torch.Tensor | None:
    """A tensor or a stored numpy array (``{_NDARRAY: tensor}``) as a tensor, else None."""
    from ._config import _NDARRAY

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict) and set(value) == {_NDARRAY}:
        t = value[_NDARRAY]
        return t if isinstance(t, torch.Tensor) else None
    return None


def _parts(t: torch.Tensor) -> list[torch.Tensor]:
    """The strided tensors that define ``t`` (its index and value arrays if sparse)."""
    t = t.detach().cpu()
    if t.layout == torch.strided:
        return [t]
    if t.layout == torch.sparse_coo:
        t = t.coalesce()
        return [t.indices(), t.values()]
    if t.layout in (torch.sparse_csr, torch.sparse_bsr):
        return [t.crow_indices(), t.col_indices(), t.values()]
    return [t.ccol_indices(), t.row_indices(), t.values()]


def _same_tensor(a: torch.Tensor, b: torch.Tensor, shape_only: bool) -> bool:
    if tuple(a.shape) != tuple(b.shape):
        return False
    if shape_only:
        return True
    if a.layout != b.layout:
        a, b = a.detach().cpu().to_dense(), b.detach().cpu().to_dense()
    pa, pb = _parts(a), _parts(b)
    for x, y in zip(pa, pb, strict=True):
        if x.shape != y.shape:
            return False
        common = torch.promote_types(x.dtype, y.dtype)
        x, y = x.to(common), y.to(common)
        if common.is_floating_point or common.is_complex:
            if not bool(torch.isclose(x, y, rtol=0.0, atol=0.0, equal_nan=True).all()):
                return False
        elif not torch.equal(x, y):
            return False
    return True


def _same(a: Any, b: Any, shape_only: bool = False) -> bool:
    """Whether two encoded config values are the same (see :func:`check_resume_config`)."""
    from ._config import _OBJECT

    ta, tb = _array(a), _array(b)
    if ta is not None or tb is not None:
        if isinstance(a, nn.Parameter) or isinstance(b, nn.Parameter):
            shape_only = True  # a learned tensor: its values are weights
        try:  # a list of numbers against an array: compared as arrays
            ta = ta if ta is not None else torch.as_tensor(a)
            tb = tb if tb is not None else torch.as_tensor(b)
        except (TypeError, ValueError, RuntimeError):
            return False
        return _same_tensor(ta, tb, shape_only)
    if isinstance(a, dict) and isinstance(b, dict):
        if _OBJECT not in a and _OBJECT not in b:
            return a.keys() == b.keys() and all(_same(a[k], b[k], shape_only) for k in a)
        ca, cb = a.get("config"), b.get("config")
        if a.get(_OBJECT) != b.get(_OBJECT) or not (isinstance(ca, dict) and isinstance(cb, dict)):
            return False
        # an operator's learned matrix (parameter=True) holds weights: shapes only. A key
        # one side lacks is a file from before it was stored: its default was used.
        learned = bool(ca.get("parameter")) or bool(cb.get("parameter"))
        return all(
            _same(ca[k], cb[k], shape_only or (learned and not isinstance(ca[k], dict)))
            for k in ca.keys() & cb.keys()
        )
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y, shape_only) for x, y in zip(a, b, strict=True))
    numeric = isinstance(a, numbers.Number) and isinstance(b, numbers.Number)
    if numeric and isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) and math.isnan(b):
            return True
    if not numeric and type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:  # an object whose == is no bool
        return False


def _show(value: Any) -> str:
    """A short description of an encoded config value, for the refusal."""
    from ._config import _OBJECT

    t = _array(value)
    if t is not None:
        dtype = str(t.dtype).replace("torch.", "")
        text = f"<{dtype} array of shape {tuple(t.shape)}>"
    elif isinstance(value, dict) and _OBJECT in value:
        text = f"{str(value[_OBJECT]).rpartition(':')[2]}(...)"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k!r}: {_show(v)}" for k, v in value.items()) + "}"
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_show(v) for v in value) + "]"
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_resume_args(path: str | Path, state: dict[str, Any], args: dict[str, Any]) -> None:
    """Raise ``ValueError`` if a resumed run changes a training argument, or gives
    ``val_data`` / ``lr_factor`` where the run that wrote ``state`` did not (or the
    reverse)."""
    stored = state.get("args", {})
    diff = [
        f"{k}={args[k]!r} (checkpoint: {stored.get(k)!r})"
        for k in RESUME_ARGS
        if k in stored and stored[k] != args[k]
    ]
    if diff:
        raise ValueError(
            f"Cannot resume from {path} with other training arguments: {', '.join(diff)}. "
            "Resume with the arguments of the run that wrote it (only 'epochs' may grow)."
        )
    for name in RESUME_GIVEN:
        key = f"{name} given"
        if key in stored and key in args and bool(stored[key]) != bool(args[key]):
            then, now = ("given", "None") if stored[key] else ("None", "given")
            raise ValueError(
                f"Cannot resume from {path}: expected {name} {then}, as in the run that "
                f"wrote it (got {name} {now}); the best weights, early stopping, the "
                "learning rates and when the run stops depend on it."
            )


def rank_seed(seed: int, rank: int, epoch: int | None = None) -> int:
    """The seed of torch's global generator on ``rank`` of a run seeded ``seed``: ``seed``
    itself on rank 0 (a one-process run is seeded as it always was), else 63 bits of a
    SHA-256 of ``(seed, rank)``, so that the ranks draw different dropout masks for their
    different rows. ``epoch``: a rank that joins a resumed run at that epoch without a
    saved state (a larger world size than the checkpoint's) starts a fresh stream."""
    if rank == 0 and epoch is None:
        return seed
    digest = hashlib.sha256(f"unrollsci.fit:{seed}:{rank}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def rank_rng_states(ctx: Any) -> list[torch.Tensor]:
    """torch's global generator state of every rank, in rank order (a collective under
    torch.distributed: every rank calls it)."""
    state = torch.get_rng_state()
    if not ctx.enabled:
        return [state]
    import torch.distributed as dist

    mine = state.to(ctx.comm_device)
    out = [torch.empty_like(mine) for _ in range(ctx.world)]
    dist.all_gather(out, mine)
    return [t.cpu() for t in out]


def seed_rank_rng(seed: int, ctx: Any, saved: dict[str, Any] | None) -> None:
    """Seed torch's global generator for this rank (:func:`rank_seed`), or restore the
    state a checkpoint saved for it. A checkpoint of fewer ranks (or one written before
    every rank's state was saved, which holds rank 0's only) leaves the ranks beyond them
    a fresh stream, ``rank_seed(seed, rank, epoch)``, seeded by the epoch it resumes at."""
    if saved is None:
        torch.manual_seed(rank_seed(seed, ctx.rank))
        return
    states = saved.get("torch_rng_ranks") or [saved["torch_rng"]]
    if ctx.rank < len(states):
        torch.set_rng_state(states[ctx.rank])
    else:
        torch.manual_seed(rank_seed(seed, ctx.rank, int(saved["epoch"])))


def replace_model(path: str | Path, model: nn.Module) -> None:
    """Store ``model`` in a checkpoint written by ``fit`` and keep its training state (so
    that ``resume`` still continues the run), on rank 0 only; every rank waits for it.

    For code that picks the model to keep after ``fit`` (e.g. ``fit_preconditioner``
    keeping the untrained weights when training did not beat them).
    """
    import torch.distributed as dist

    from ._checkpoint import _read_payload, save_checkpoint
    from ._distributed import is_main_process

    if is_main_process():
        payload = _read_payload(Path(path), "cpu")
        extra = dict(payload.get("extra") or {})
        state = extra.get(STATE_KEY)
        if isinstance(state, dict) and state.get("weights") is None:
            state["weights"] = payload["state_dict"]
        save_checkpoint(model, path, extra=extra)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
