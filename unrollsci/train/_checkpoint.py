"""Checkpoint files: :func:`save_checkpoint` and :func:`load_checkpoint`."""

from __future__ import annotations

import warnings
from collections.abc import Sequence, Set
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._config import _build_object, _encode, _lookup, _name_of

# A checkpoint file is read with ``torch.load(..., weights_only=True)``: torch's restricted
# unpickler, which builds tensors, numbers, strings, dtypes, devices and plain containers
# and refuses every other global, so no code named in the file ever runs. The model is
# then built from a class looked up by name in the registry below (never imported from a
# name in the file) with a config that holds plain data only.

_FORMAT = "unrollsci-checkpoint-2"
_FORMAT_V1 = "unrollsci-checkpoint-1"  # config held pickled objects; still read, see below


def save_checkpoint(
    model: nn.Module, path: str | Path, *, extra: dict[str, Any] | None = None
) -> Path:
    """Save ``model`` so that :func:`load_checkpoint` rebuilds it without the training script.

    The model must implement ``get_config() -> dict`` returning its constructor keyword
    arguments as plain data: numbers, strings, None, tensors, dtypes, lists, tuples,
    dicts with string keys, numpy arrays, unrollsci operators (stored as their matrix,
    kernel, mask or geometry) and instances of registered classes (see
    :func:`register_checkpoint_class`). Anything else, e.g. a function, raises
    ``TypeError`` before the file is touched. ``extra`` must be plain data too.

    The file holds the model's checkpoint name, that config, the state dict,
    ``extra`` and, for a model with an integer ``active_layers`` (the layers its
    ``forward`` runs: layer-wise training sets it below ``num_layers``), that depth,
    which :func:`load_checkpoint` restores. It is written atomically (a temporary file
    in the same folder, then moved onto ``path``): a failed save leaves a previous file
    at ``path`` as it was. An existing file at ``path`` is replaced.
    """
    from .._io import atomic_save

    if not callable(getattr(model, "get_config", None)):
        raise TypeError(
            f"{type(model).__name__} has no get_config(); cannot write a self-contained "
            "checkpoint. Save model.state_dict() instead."
        )
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"Expected a checkpoint file path, but {path} is a directory.")
    config = model.get_config()
    if not isinstance(config, dict):
        raise TypeError(
            f"Expected {type(model).__name__}.get_config() to return a dict "
            f"(got {type(config).__name__})."
        )
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"Expected 'extra' to be a dict (got {type(extra).__name__}).")
    payload = {
        "format": _FORMAT,
        "class": _name_of(type(model)),
        "config": _encode(config, "config"),
        "state_dict": _encode(dict(model.state_dict()), "state_dict"),
        "extra": _encode(extra or {}, "extra"),
    }
    depth = getattr(model, "active_layers", None)
    if isinstance(depth, int) and not isinstance(depth, bool):
        payload["active_layers"] = int(depth)  # not a constructor argument: get_config lacks it
    _make_folder(path)
    return atomic_save(path, lambda f: torch.save(payload, f))


def _make_folder(path: Path) -> None:
    """Create the folder of ``path``; a file where a folder of it should be raises
    ``NotADirectoryError`` naming that file (not ``mkdir``'s bare "File exists")."""
    from .._io import check_output_folder

    check_output_folder(path.parent, what=f"the checkpoint {path}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a file appeared there meanwhile
        check_output_folder(path.parent, what=f"the checkpoint {path}")
        raise


def _check_zip(path: Path, what: str) -> None:
    """Verify the CRC-32 that ``torch.save`` stores for every member of its zip archive
    (torch's reader does not): a checkpoint whose bytes changed on disk or in a copy
    raises ``ValueError`` instead of loading other weights. One pass over the file. A
    member stored without a CRC (``torch.utils.serialization.config.save.compute_crc32 =
    False`` writes 0) is not checked; a file that is no zip archive (the legacy format of
    ``torch.save(..., _use_new_zipfile_serialization=False)``, or no torch file) is left to
    ``torch.load``."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0 or info.is_dir():
                    continue
                with archive.open(info) as member:  # raises BadZipFile on a CRC mismatch
                    while member.read(1 << 20):
                        pass
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as exc:
        raise ValueError(
            f"Checkpoint {path} could not be read (corrupted: {exc}); expected {what}."
        ) from None


def _read_payload(path: Path, map_location: Any) -> Any:
    """``torch.load(weights_only=True)`` with every failure as a ``ValueError``."""
    import pickle
    import re

    what = "an unrollsci checkpoint written by unrollsci.train.save_checkpoint"
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    if path.is_dir():
        raise IsADirectoryError(f"Expected a checkpoint file, but {path} is a directory.")
    if path.stat().st_size == 0:
        raise ValueError(f"Checkpoint {path} is empty (0 bytes); expected {what}.")
    _check_zip(path, what)
    # Format-1 files pickled these operators inside the config. The restricted unpickler
    # may create them (attribute dict only, no code of theirs runs); they are rebuilt
    # through their constructors from their matrix / geometry right after.
    from ..operators import MatrixOperator, Radon

    try:
        with torch.serialization.safe_globals([MatrixOperator, Radon]), warnings.catch_warnings():
            # newer torch announces its O(nnz) check of loaded sparse tensors (a sparse
            # operator's matrix) as a UserWarning: the check is what we want, the notice is
            # nothing a user can act on
            warnings.filterwarnings(
                "ignore", message="Validating sparse tensor invariants", category=UserWarning
            )
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found or "Weights only load failed" in str(exc):
            name = found.group(1) if found else "an object"
            raise ValueError(
                f"Checkpoint {path} holds pickled Python objects ({name}) and was not "
                "loaded: unrollsci reads checkpoints with weights_only=True (tensors and "
                "plain data only), so nothing in the file ran. Expected "
                f"{what}. A file from an older unrollsci whose config held other "
                "objects must be re-saved with save_checkpoint from the training script."
            ) from None
        raise ValueError(
            f"Checkpoint {path} could not be read (truncated, or not a torch file: {exc}); "
            f"expected {what}."
        ) from None
    except Exception as exc:  # the unpickler of a corrupt file may raise anything
        if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, RuntimeError) and any(m in str(exc) for m in _DEVICE_ERRORS):
            # the file was read; its tensors cannot be put where map_location says
            raise ValueError(
                f"Checkpoint {path} could not be loaded onto the device that map_location "
                f"selects. Expected a map_location that names a device this machine has, "
                f"e.g. map_location='cpu' (got map_location={map_location!r}: {first})."
            ) from None
        raise ValueError(
            f"Checkpoint {path} could not be read (truncated, or not a torch file: "
            f"{type(exc).__name__}: {first}); expected {what}."
        ) from None


# torch's messages when the tensors of a readable file cannot go where map_location says
_DEVICE_ERRORS = (
    "Attempting to deserialize object on",
    "don't know how to restore data location",
    "Invalid device",
    "invalid device",
    "device ordinal",
    "not compiled with",
)


def _check_map_location(map_location: Any) -> Any:
    """Validate ``map_location`` before the file is read; ``None`` becomes ``"cpu"``."""
    if map_location is None:
        return "cpu"
    if isinstance(map_location, dict) or (
        callable(map_location) and not isinstance(map_location, torch.device)
    ):
        return map_location  # torch.load's other forms; device errors come from the load
    if isinstance(map_location, bool) or not isinstance(map_location, (str, torch.device, int)):
        raise TypeError(
            "Expected 'map_location' to be None (the CPU), a device such as 'cpu' or "
            f"'cuda:0', a dict or a callable (got {type(map_location).__name__} "
            f"{map_location!r})."
        )
    try:
        device = torch.device(map_location)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(
            "Expected 'map_location' to be a device such as 'cpu' or 'cuda:0' "
            f"(got {map_location!r}: {str(exc).splitlines()[0] if str(exc) else exc})."
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "Expected 'map_location' to name a device this machine has (got "
            f"{map_location!r}, but torch.cuda.is_available() is False); pass "
            "map_location='cpu' (the default) and move the model with model.to(device)."
        )
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise ValueError(
                "Expected 'map_location' to name a device this machine has (got "
                f"{map_location!r}, but it has {count} CUDA device(s))."
            )
    return device


def load_checkpoint(
    path: str | Path,
    *,
    expected: type | Sequence[type] | None = None,
    map_location: str | torch.device | None = None,
) -> nn.Module:
    """Rebuild a model saved by :func:`save_checkpoint`.

    The file is read with ``torch.load(weights_only=True)``: only tensors, numbers,
    strings, dtypes, devices and plain containers are unpickled, and a file holding
    anything else (e.g. an object whose unpickling would run code) raises
    ``ValueError`` without running it. The model class is looked up by name among the
    registered checkpoint classes (unrollsci's models and
    :func:`register_checkpoint_class`, plus the classes in ``expected``); no module
    named in the file is imported and no callable named in it is called.

    Args:
        path: checkpoint file.
        expected: class (or classes) the checkpoint must hold; a mismatch raises
            ``ValueError`` naming both. A class given here may be built even when not
            registered.
        map_location: where the tensors are loaded, as for ``torch.load``: a device
            (``"cpu"``, ``"cuda:0"``, ``torch.device``), a dict or a callable. The default
            ``None`` loads onto the CPU, so a checkpoint saved from a GPU loads on any
            machine; move the model afterwards with ``model.to(device)``.

    A model saved with its ``active_layers`` (:func:`save_checkpoint`) comes back with
    it, so its ``forward`` runs the same layers; a file without it (older unrollsci)
    leaves the rebuilt model's own (all layers).

    Every saved tensor comes back in the dtype it was saved in: a model saved in one
    floating dtype is cast to it whole (as ``model.to(dtype)``), and a parameter or
    buffer saved in another dtype than the rebuilt model's (e.g. a float64 parameter
    next to float32 ones, or a complex128 one) is converted to the saved dtype, so a
    reload is bit for bit; a saved tensor the rebuilt model cannot hold in its dtype
    raises ``ValueError``.

    Raises:
        ValueError: the file is empty, truncated, not a torch file, not an unrollsci
            checkpoint, holds pickled objects, names an unregistered class, holds
            another class than ``expected``, or its config, weights or
            ``active_layers`` do not fit;
            ``map_location`` names no device this machine can load onto.
        TypeError: ``expected`` is not a class or a sequence of classes, or
            ``map_location`` is not a device, a dict or a callable.
        FileNotFoundError: no file at ``path``.
    """
    path = Path(path)
    exp: tuple[type, ...] = ()
    if expected is not None:
        if isinstance(expected, type):
            exp = (expected,)
        elif isinstance(expected, (Sequence, Set)) and not isinstance(expected, (str, bytes)):
            exp = tuple(expected)
        if not exp or not all(isinstance(e, type) for e in exp):
            raise TypeError(f"Expected 'expected' to be a class or classes (got {expected!r}).")
    map_location = _check_map_location(map_location)
    payload = _read_payload(path, map_location)
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt not in (_FORMAT, _FORMAT_V1):
        got = f"format {fmt!r}" if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(
            f"{path} is not an unrollsci checkpoint (expected a dict with format "
            f"{_FORMAT!r} as written by save_checkpoint, got {got})."
        )
    name, config, state = payload.get("class"), payload.get("config"), payload.get("state_dict")
    if not isinstance(name, str) or ":" not in name:
        raise ValueError(
            f"Checkpoint {path}: expected its class as a name 'module:Class' (got {name!r})."
        )
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise ValueError(
            f"Checkpoint {path}: expected a config dict and a state_dict dict (got "
            f"{type(config).__name__} and {type(state).__name__})."
        )
    cls = _lookup(name, exp, path)
    if exp and not issubclass(cls, exp):
        names = ", ".join(e.__name__ for e in exp)
        raise ValueError(f"Checkpoint {path} holds a {cls.__name__}, expected {names}.")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(
            f"Checkpoint {path}: expected a state_dict of named tensors (got {bad[0]!r})."
        )
    model = _build_object(name, config, "config", path, exp)
    model = _match_stored_dtype(model, state)
    _keep_stored_dtypes(model, state, path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(
            f"Checkpoint {path}: its weights do not fit the rebuilt {cls.__name__} ({exc})."
        ) from None
    if "active_layers" in payload:
        _restore_depth(model, payload["active_layers"], path)
    return model


def _restore_depth(model: nn.Module, depth: Any, path: Path) -> None:
    """Set the saved ``active_layers`` on the rebuilt model: an int in ``1..num_layers``."""
    _check_depth(model, depth, path)
    model.active_layers = depth


def _check_depth(model: nn.Module, depth: Any, path: Path) -> None:
    """Refuse a saved ``active_layers`` that ``model`` cannot take (``ValueError``): it
    must have the attribute, and ``depth`` must be an int in ``1..num_layers``."""
    name = type(model).__name__
    if not hasattr(model, "active_layers"):
        raise ValueError(
            f"Checkpoint {path}: expected the rebuilt {name} to have 'active_layers', as the "
            f"saved model had (active_layers={depth!r}); got a model without it."
        )
    num = getattr(model, "num_layers", None)
    top = num if isinstance(num, int) and not isinstance(num, bool) else None
    if (
        isinstance(depth, bool)
        or not isinstance(depth, int)
        or depth < 1
        or (top is not None and depth > top)
    ):
        within = f"1..{top}" if top is not None else "a positive int"
        raise ValueError(
            f"Checkpoint {path}: expected its active_layers to be an int in {within} "
            f"for the rebuilt {name} (got {depth!r})."
        )


def _match_stored_dtype(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Cast a rebuilt model to the floating dtype its weights were saved in.

    A model whose constructor takes no ``dtype`` is rebuilt in torch's default dtype;
    ``load_state_dict`` would then copy saved float64 weights into float32 tensors and
    round them silently. When the saved floating tensors share one dtype and the rebuilt
    model's share another, the model is cast first (as ``model.to(dtype)``, which the
    dtype rule supports for every model), so a reload is bit for bit. The parameters
    decide where the model has any (a model may keep float64 buffers, e.g. norms, whatever
    its dtype); otherwise all floating tensors do.
    """
    params = dict(model.named_parameters())
    stored = {v.dtype for k, v in state.items() if k in params and v.is_floating_point()}
    current = {p.dtype for p in params.values() if p.is_floating_point()}
    if not stored or not current:
        stored = {v.dtype for v in state.values() if v.is_floating_point()}
        tensors = [*model.parameters(), *model.buffers()]
        current = {t.dtype for t in tensors if t.is_floating_point()}
    if len(stored) == 1 and len(current) == 1 and stored != current:
        model = model.to(next(iter(stored)))
    return model


def _keep_stored_dtypes(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Give every parameter and buffer the floating or complex dtype it was saved in.

    After :func:`_match_stored_dtype` a model whose saved weights mix dtypes (a float64
    parameter next to float32 ones, a complex128 one where the constructor makes
    complex64) still holds some of them in another dtype, and ``load_state_dict`` would
    round them silently. Each such parameter or buffer is replaced by a copy in the
    saved dtype (a parameter stays a parameter, with its ``requires_grad``; a parameter
    shared under several names stays shared), so the copy that follows is exact. A saved
    floating or complex tensor whose entry is no parameter or buffer of the model, or
    whose model tensor is an integer one, cannot be converted: ``ValueError``.
    """
    current = model.state_dict(keep_vars=True)
    owners: dict[int, list[tuple[dict[str, Any], str]]] = {}
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for attr, t in table.items():
                if t is not None:
                    owners.setdefault(id(t), []).append((table, attr))
    wanted: dict[int, tuple[torch.Tensor, torch.dtype, str]] = {}
    for key, saved in state.items():
        have = current.get(key)
        if not isinstance(have, torch.Tensor) or have.dtype == saved.dtype:
            continue
        if not (saved.is_floating_point() or saved.is_complex()):
            continue  # integer / bool entries: load_state_dict copies them as before
        convertible = have.is_floating_point() or have.is_complex()
        if not convertible or id(have) not in owners:
            raise ValueError(
                f"Checkpoint {path}: expected the rebuilt {type(model).__name__} to hold "
                f"{key!r} as {saved.dtype}, as saved (got {have.dtype}, which it cannot "
                "change); loading it would round the saved values."
            )
        earlier = wanted.get(id(have))
        if earlier is not None and earlier[1] != saved.dtype:
            raise ValueError(
                f"Checkpoint {path}: expected the shared tensor {earlier[2]!r} / {key!r} "
                f"to be saved in one dtype (got {earlier[1]} and {saved.dtype})."
            )
        wanted[id(have)] = (have, saved.dtype, key)
    for tid, (have, dtype, _key) in wanted.items():
        if isinstance(have, nn.Parameter):
            new: torch.Tensor = nn.Parameter(
                have.detach().to(dtype), requires_grad=have.requires_grad
            )
        else:
            new = have.detach().to(dtype)
        for table, attr in owners[tid]:
            table[attr] = new
