"""One training loop for every unrolled model in unrollsci.

``fit(model, loss_fn, data, ...)`` runs Adam over mini-batches with a tqdm progress
bar, an optional validation set with early stopping (the best weights are
restored), a fixed seed, end-to-end or layer-wise (greedy) schedules, and
checkpoints that rebuild the model without the training script.

The loss is a callable ``loss_fn(model, batch) -> scalar tensor`` so the same loop
serves sparse coding, graph solvers, preconditioners and CT.

``fit`` runs data-parallel through ``torch.distributed`` (DistributedDataParallel; gloo on
CPUs, NCCL on GPUs) when launched by ``torchrun`` or asked to, with ``batch_size`` the
global batch, and offers bfloat16 / float16 mixed precision for the CNN and GNN layers.

Layout: :mod:`._fit` (the loop), :mod:`._args` (its argument checks, callable before
``fit``, and the progress bar), :mod:`._checks` (argument and data checks),
:mod:`._data` (data forms, history, validation pass), :mod:`._distributed` (process group,
sharding, DDP), :mod:`._precision` (mixed precision), :mod:`._state` (resumable training
state), :mod:`._checkpoint` (the file format, save and load), :mod:`._config` (plain-data
encoding of configs and operators, and the registry of checkpoint classes),
:mod:`._layerwise` (the staged layer-wise schedule of the LISTA papers, :func:`fit_layerwise`).
"""

from __future__ import annotations

# The private helpers below stay importable from here as before the split. The registry
# dict ``_USER`` lives in ``._config``: rebind it there (``unrollsci.train._config._USER``),
# not here; mutating it through either name is the same dict.
from ._checkpoint import (  # noqa: F401  (private helpers: re-exported)
    _FORMAT,
    _FORMAT_V1,
    _read_payload,
    load_checkpoint,
    save_checkpoint,
)
from ._checks import _check_data, _check_factor, _check_loss  # noqa: F401
from ._config import (  # noqa: F401  (private helpers: re-exported)
    _BUILTIN,
    _NDARRAY,
    _OBJECT,
    _OPERATOR_NAMES,
    _PLAIN,
    _USER,
    _build_object,
    _build_operator,
    _builtin_class,
    _class_path,
    _decode,
    _encode,
    _lookup,
    _name_of,
    _operator_config,
    _operators,
    _plain_hint,
    register_checkpoint_class,
    registered_checkpoint_classes,
)
from ._data import Batch, History, LossFn, _evaluate, iterate_batches  # noqa: F401
from ._distributed import is_main_process
from ._fit import fit
from ._layerwise import LayerwiseHistory, fit_layerwise, layer_nmse_db

__all__ = [
    "fit",
    "fit_layerwise",
    "LayerwiseHistory",
    "layer_nmse_db",
    "History",
    "save_checkpoint",
    "load_checkpoint",
    "register_checkpoint_class",
    "registered_checkpoint_classes",
    "iterate_batches",
    "is_main_process",
]
