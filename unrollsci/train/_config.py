"""Plain-data encoding of model configs, and the checkpoint class registry.

A config is stored as plain data that ``torch.load(weights_only=True)`` accepts: numbers,
strings, tensors, dtypes and plain containers; numpy arrays as ``{_NDARRAY: tensor}``;
unrollsci operators as their constructor's plain data and instances of registered classes
as ``{_OBJECT: name, "config": {...}}``. Classes are looked up by name in the registry
below (never imported from a name in the file).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

_OBJECT = "__unrollsci_object__"  # {_OBJECT: name, "config": {...}}: a registered object
_NDARRAY = "__numpy_array__"  # {_NDARRAY: tensor}: a numpy array, stored as a tensor

# Trainable models and the config objects they hold, by checkpoint name. Constants of
# this module (name -> (module, attribute)); imported only when a checkpoint needs one.
_BUILTIN: dict[str, tuple[str, str]] = {
    f"unrollsci.{mod}:{name}": (f"unrollsci.{mod}", name)
    for mod, names in {
        "unrolled": (
            "LISTA",
            "LISTACP",
            "ALISTA",
            "UnrolledFISTA",
            "ADMMNet",
            "LAMP",
            "PreconditionedLISTA",
            "BlockLISTA",
            "UnrolledAnalysisFISTA",
        ),
        "graph": ("UnrolledGraphGD", "StepController"),
        "precond": ("LearnedPreconditioner",),
        "imaging": ("UnrolledCT", "ConvexRidgeCT"),
    }.items()
    for name in names
}
# Operators a config may hold, stored as their constructor's plain data (see _OPERATORS).
_OPERATOR_NAMES = (
    "MatrixOperator",
    "SparseOperator",
    "Convolution",
    "Mask",
    "Radon",
    "ComposedOperator",
    "SumOperator",
    "ScaledOperator",
    "AdjointOperator",
    "ReshapeOperator",
    "IdentityOperator",
    "GramOperator",
)
_USER: dict[str, type] = {}


def _builtin_class(name: str) -> type:
    mod, attr = _BUILTIN[name]
    return getattr(importlib.import_module(mod), attr)


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def register_checkpoint_class(cls: type | None = None, name: str | None = None) -> Any:
    """Allow :func:`load_checkpoint` to build ``cls`` (a model, or an object in a config).

    unrollsci's own trainable models are registered already. A class of yours must
    implement ``get_config() -> dict`` returning its constructor keyword arguments as
    plain data (numbers, strings, None, tensors, dtypes, lists, tuples, dicts with string
    keys, unrollsci operators, or instances of registered classes). It is stored under
    ``name`` (default ``"module:QualifiedName"``). Usable as a class decorator, with or
    without a name (``@register_checkpoint_class(name="lab:MyNet")``); returns ``cls``.

    A class defined in a script run as ``python3 mymodule.py`` has the module
    ``__main__`` and is stored as ``"__main__:MyNet"``. Such a name is matched, by the
    qualified name alone, against the one registered or ``expected=`` class of that
    qualified name (``mymodule.MyNet`` once another script imports ``mymodule``), and the
    other way round; nothing named by a file is ever imported. Give ``name=`` for a name
    that does not depend on how the defining file was run.
    """
    if cls is None:  # @register_checkpoint_class(name=...): the decorator itself
        return lambda c: register_checkpoint_class(c, name)
    if not isinstance(cls, type):
        raise TypeError(f"Expected a class to register (got {type(cls).__name__}).")
    if not callable(getattr(cls, "get_config", None)):
        raise TypeError(
            f"Expected a class with a get_config() method returning its constructor "
            f"arguments ({cls.__name__} has none)."
        )
    key = _class_path(cls) if name is None else name
    if not isinstance(key, str) or ":" not in key:
        raise ValueError(f"Expected a name of the form 'module:Class' (got {key!r}).")
    if key in _BUILTIN or (key in _USER and _USER[key] is not cls):
        raise ValueError(f"The checkpoint name {key!r} is taken by another class.")
    _USER[key] = cls
    return cls


def registered_checkpoint_classes() -> list[str]:
    """Names of the classes :func:`load_checkpoint` may build (built-in and registered)."""
    return sorted({*_BUILTIN, *_USER})


def _name_of(cls: type) -> str:
    """The checkpoint name of ``cls``: its registered name, else ``module:Class``."""
    for key, mod_attr in _BUILTIN.items():
        if cls.__name__ == mod_attr[1] and cls.__module__.startswith(mod_attr[0]):
            if _builtin_class(key) is cls:
                return key
    for key, user in _USER.items():
        if user is cls:
            return key
    return _class_path(cls)


def _main_match(name: str, cls: type) -> bool:
    """Whether ``name`` and ``cls`` agree up to a ``__main__`` module.

    A class defined in a script run as ``python3 mymodule.py`` is ``__main__.MyNet``
    there and ``mymodule.MyNet`` where another script imports it: a stored
    ``"__main__:MyNet"`` matches the latter by its qualified name, and a stored
    ``"mymodule:MyNet"`` the former (only classes already registered or expected).
    """
    module, _, qualname = name.partition(":")
    return qualname == cls.__qualname__ and "__main__" in (module, cls.__module__)


def _lookup(name: str, expected: tuple[type, ...], path: Path) -> type:
    """The class registered as ``name`` (or one of ``expected`` of that name)."""
    if name in _BUILTIN:
        return _builtin_class(name)
    if name in _USER:
        return _USER[name]
    for cls in expected:
        if name in (_class_path(cls), _name_of(cls)):
            return cls
    if name.startswith("unrollsci.") and ":" in name:
        # format-1 files name the defining private module ("unrollsci.precond._model:
        # LearnedPreconditioner"), which may since have moved inside its subpackage: match
        # the subpackage and the class name against the registry (nothing is imported).
        module, _, cls_name = name.partition(":")
        key = f"{'.'.join(module.split('.')[:2])}:{cls_name}"
        if key in _BUILTIN:
            return _builtin_class(key)
    # a class saved from (or loaded in) a script run as __main__: match the expected,
    # else the registered, classes of the same qualified name; never import anything
    for pool, where in ((expected, "expected="), (tuple(_USER.values()), "registered")):
        found = list(dict.fromkeys(c for c in pool if _main_match(name, c)))
        if len(found) == 1:
            return found[0]
        if found:
            shown = ", ".join(_class_path(c) for c in found)
            raise ValueError(
                f"Checkpoint {path} names the class {name!r}, which matches several "
                f"{where} classes by its qualified name ({shown}); pass the one meant as "
                "expected=cls to load_checkpoint."
            )
    module, _, qualname = name.partition(":")
    if module == "__main__":
        hint = (
            f" It was saved from a script run as __main__: import the module that defines "
            f"{qualname}, then register that class (register_checkpoint_class) or pass it "
            f"as expected= to load_checkpoint (a class of the qualified name {qualname!r} "
            "matches). For a stored name that does not depend on how the script is run, "
            f"register the class with name='mylab:{qualname}' before saving."
        )
    else:
        hint = (
            " Register your own class with unrollsci.train.register_checkpoint_class(cls) "
            "or pass expected=cls to load_checkpoint."
        )
    raise ValueError(
        f"Checkpoint {path} names the class {name!r}, which is not a registered checkpoint "
        f"class; nothing was imported or run.{hint}"
    )


def _operators() -> dict[str, type]:
    from .. import operators

    return {name: getattr(operators, name) for name in _OPERATOR_NAMES}


def _operator_config(op: Any) -> tuple[str, dict[str, Any]] | None:
    """Constructor arguments of an unrollsci operator, or None for another class."""
    ops = _operators()
    kind = next((n for n, c in ops.items() if type(op) is c), None)
    if kind == "MatrixOperator":
        return kind, {
            "matrix": op.matrix.detach(),
            "parameter": isinstance(op.matrix, nn.Parameter),
        }
    if kind == "SparseOperator":
        return kind, {"matrix": op.matrix.detach()}
    if kind == "Convolution":
        return kind, {
            "kernel": op.kernel.detach(),
            "in_shape": list(op.in_shape),
            "boundary": op.boundary,
            "parameter": isinstance(op.kernel, nn.Parameter),
        }
    if kind == "Mask":
        return kind, {"mask": op.mask.detach(), "subsample": bool(op.subsample)}
    if kind == "Radon":
        return kind, {
            "image_size": int(op.image_size),
            "angles": op.angles.detach().cpu(),
            "circle": bool(op.circle),
            "method": op.method,
        }
    if kind == "ComposedOperator":
        return kind, {"outer": op.outer, "inner": op.inner}
    if kind == "SumOperator":
        return kind, {"a": op.a, "b": op.b}
    if kind == "ScaledOperator":
        return kind, {"op": op.op, "scale": float(op.scale)}
    if kind == "AdjointOperator":
        return kind, {"op": op.op}
    if kind == "ReshapeOperator":
        return kind, {"in_shape": list(op.in_shape), "out_shape": list(op.out_shape)}
    if kind == "IdentityOperator":
        return kind, {"shape": list(op.in_shape)}
    if kind == "GramOperator":
        shift = op.shift
        learned = isinstance(shift, nn.Parameter)
        if isinstance(shift, torch.Tensor):
            shift = shift.detach()
        return kind, {"op": op.op, "shift": shift, "parameter": learned}
    return None


def _build_operator(kind: str, cfg: dict[str, Any]) -> Any:
    ops = _operators()
    if kind == "MatrixOperator":
        matrix = cfg["matrix"]
        return ops[kind](nn.Parameter(matrix) if cfg.get("parameter") else matrix)
    if kind == "Convolution":
        kernel = nn.Parameter(cfg["kernel"]) if cfg.get("parameter") else cfg["kernel"]
        return ops[kind](kernel, cfg["in_shape"], boundary=cfg["boundary"])
    if kind == "GramOperator":
        shift = cfg["shift"]
        return ops[kind](cfg["op"], nn.Parameter(shift) if cfg.get("parameter") else shift)
    if kind == "Mask":
        return ops[kind](cfg["mask"], subsample=cfg["subsample"])
    if kind == "Radon":
        # checkpoints from before "method" was stored load with the default ("auto")
        method = cfg.get("method", "auto")
        return ops[kind](cfg["image_size"], cfg["angles"], circle=cfg["circle"], method=method)
    return ops[kind](**cfg)


_PLAIN = (str, int, float, complex, bool, type(None), torch.dtype, torch.device)


#: named alternatives to a function, per config key, for the "stores no code" hint
_NAMED_OPTIONS = {
    "ordering": "ordering='grid' or 'rcm', or the permutations as {name: perm}",
    "prox": "prox='soft', 'nonneg', 'group' (with group_size= or groups=) or 'box'",
}


def _plain_hint(value: Any, where: str = "") -> str:
    if callable(value) and not isinstance(value, nn.Module):
        key = next((k for k in _NAMED_OPTIONS if f"['{k}']" in where), None)
        example = f" (e.g. {_NAMED_OPTIONS[key]})" if key else ""
        return (
            f" A checkpoint stores no code: give a named option instead{example} and pass "
            "functions again after loading."
        )
    return (
        f" Register its class with unrollsci.train.register_checkpoint_class "
        f"(it needs get_config()) if {type(value).__name__} should be stored."
    )


def _encode(value: Any, where: str) -> Any:
    """``value`` as plain data that ``torch.load(weights_only=True)`` accepts."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, torch.Tensor):
        return value if isinstance(value, nn.Parameter) else value.detach()
    try:
        import numpy as np

        if isinstance(value, np.ndarray):
            return {_NDARRAY: torch.from_numpy(np.ascontiguousarray(value))}
        if isinstance(value, np.generic):
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, (list, tuple)):
        out = [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return out if isinstance(value, list) else tuple(out)
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str) or k in (_OBJECT, _NDARRAY)]
        if bad:
            raise TypeError(
                f"Cannot store {where} in a checkpoint: expected a dict with string keys "
                f"(got the key {bad[0]!r})."
            )
        return {k: _encode(v, f"{where}[{k!r}]") for k, v in value.items()}
    op = _operator_config(value)
    if op is not None:
        kind, cfg = op
        return {_OBJECT: f"unrollsci.operators:{kind}", "config": _encode(cfg, where)}
    name = _name_of(type(value))
    if (name in _BUILTIN or name in _USER) and callable(getattr(value, "get_config", None)):
        return {_OBJECT: name, "config": _encode(value.get_config(), where)}
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise TypeError(
        f"Cannot store {where} in a checkpoint: it is a {type(value).__name__} ({shown}); "
        "a checkpoint holds plain data only (numbers, strings, None, tensors, dtypes, "
        "lists, tuples, dicts with string keys, unrollsci operators and instances of "
        f"registered classes).{_plain_hint(value, where)}"
    )


def _decode(value: Any, where: str, path: Path, expected: tuple[type, ...]) -> Any:
    """Rebuild plain data written by :func:`_encode` (and format-1 operator objects)."""
    if isinstance(value, (torch.Tensor, *_PLAIN)):
        return value
    if isinstance(value, (list, tuple)):
        out = [_decode(v, f"{where}[{i}]", path, expected) for i, v in enumerate(value)]
        return out if isinstance(value, list) else tuple(out)
    if isinstance(value, dict):
        if set(value) == {_NDARRAY} and isinstance(value[_NDARRAY], torch.Tensor):
            return value[_NDARRAY].numpy()
        if set(value) == {_OBJECT, "config"}:
            return _build_object(value[_OBJECT], value["config"], where, path, expected)
        return {str(k): _decode(v, f"{where}[{k!r}]", path, expected) for k, v in value.items()}
    op = _operator_config(value)  # a format-1 file's pickled operator: rebuilt afresh
    if op is not None:
        kind, cfg = op
        return _build_operator(kind, _decode(_encode(cfg, where), where, path, expected))
    raise ValueError(
        f"Checkpoint {path}: {where} holds a {type(value).__name__}; expected plain data."
    )


def _build_object(name: Any, cfg: Any, where: str, path: Path, expected: tuple[type, ...]) -> Any:
    if not isinstance(name, str) or not isinstance(cfg, dict):
        raise ValueError(
            f"Checkpoint {path}: {where} is not a valid stored object (expected a class "
            f"name and a config dict, got {type(name).__name__} and {type(cfg).__name__})."
        )
    kwargs = _decode(cfg, where, path, expected)
    if name.startswith("unrollsci.operators:") and name.split(":", 1)[1] in _OPERATOR_NAMES:
        builder: Any = lambda **kw: _build_operator(name.split(":", 1)[1], kw)  # noqa: E731
    else:
        builder = _lookup(name, expected, path)
    try:
        return builder(**kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(
            f"Checkpoint {path}: could not rebuild {name} for {where} from its stored "
            f"config ({type(exc).__name__}: {exc})."
        ) from exc
