"""Audit (Dec 13, the docs as a new user reads them): checkpoints of a class defined in a
script run as ``__main__``, and ``fit`` given a list of tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unrollsci.train import _config, fit, iterate_batches, load_checkpoint, save_checkpoint
from unrollsci.train import register_checkpoint_class as register

F64 = torch.float64


@pytest.fixture
def registry(monkeypatch):
    """Classes registered by a test are forgotten after it (the dict _lookup reads)."""
    monkeypatch.setattr(_config, "_USER", {})
    return _config._USER


def _net_class(module: str, qualname: str = "MyNet") -> type:
    """A model class as defined in ``module`` (``"__main__"``: a script run directly)."""

    def __init__(self, width=3):
        nn.Module.__init__(self)
        self.width = width
        self.layer = nn.Linear(width, width, dtype=F64)

    cls = type(
        qualname,
        (nn.Module,),
        {
            "__init__": __init__,
            "get_config": lambda self: {"width": self.width},
            "forward": lambda self, x: self.layer(x),
        },
    )
    cls.__module__, cls.__qualname__ = module, qualname
    return cls


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- __main__ checkpoints
def test_main_checkpoint_loads_in_a_script_that_imports_the_module(tmp_path, registry):
    """``python3 mymodule.py`` saves ``__main__:MyNet``; another script that imports
    ``mymodule`` (registering ``mymodule.MyNet``) or passes ``expected=mymodule.MyNet``
    loads it (docs/unrolled.md, "Checkpoints")."""
    as_script = register(_net_class("__main__"))
    saved = as_script(width=4)
    path = save_checkpoint(saved, tmp_path / "net.pt")
    assert torch.load(path, weights_only=True)["class"] == "__main__:MyNet"
    registry.clear()  # the other script: nothing of the first one is registered

    imported = _net_class("mymodule_d13")
    net = load_checkpoint(path, expected=imported)
    assert type(net) is imported and net.width == 4 and _same_weights(net, saved)
    register(imported)  # "import mymodule" runs the decorator
    net = load_checkpoint(path)
    assert type(net) is imported and _same_weights(net, saved)


def test_checkpoint_of_an_imported_class_loads_in_the_script_run_as_main(tmp_path, registry):
    saved = _net_class("mymodule_d13")(width=2)
    path = save_checkpoint(saved, tmp_path / "net.pt")
    assert torch.load(path, weights_only=True)["class"] == "mymodule_d13:MyNet"
    as_script = _net_class("__main__")
    net = load_checkpoint(path, expected=as_script)
    assert type(net) is as_script and _same_weights(net, saved)


def test_main_checkpoint_unmatched_or_ambiguous_is_refused(tmp_path, registry):
    path = save_checkpoint(_net_class("__main__")(), tmp_path / "net.pt")
    # another qualified name never matches; the message says what will work
    with pytest.raises(ValueError, match=r"run as __main__.*expected=.*name='mylab:MyNet'"):
        load_checkpoint(path, expected=_net_class("mymodule_d13", "OtherNet"))
    with pytest.raises(ValueError, match="not a registered checkpoint class"):
        load_checkpoint(path)
    # two registered classes of that qualified name: no guess
    register(_net_class("lab_a"))
    register(_net_class("lab_b"))
    with pytest.raises(ValueError, match=r"matches several registered classes .*lab_a:MyNet"):
        load_checkpoint(path)
    chosen = _net_class("lab_c")
    assert type(load_checkpoint(path, expected=chosen)) is chosen  # expected= decides


def test_main_name_is_only_matched_never_imported(tmp_path, registry):
    """``__main__:<name>`` from a file matches only registered or expected classes."""
    marker = tmp_path / "ran"
    payload = {
        "format": "unrollsci-checkpoint-2",
        "class": "__main__:system",
        "config": {"command": f"touch {marker}"},
        "state_dict": {},
    }
    torch.save(payload, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a registered checkpoint class"):
        load_checkpoint(tmp_path / "evil.pt", expected=nn.Module)
    assert not marker.exists()


# ---------------------------------------------------------------- fit: a list of tensors
def _loss(model, y):
    assert isinstance(y, torch.Tensor), f"loss_fn got a {type(y).__name__}"
    return model(y).pow(2).mean()


def test_fit_refuses_a_list_of_tensors_as_ambiguous():
    """docs/getting-started.md: a list of three (16, 5) batches was read as three columns
    of one data set, the loss got a tuple of 3 tensors."""
    torch.manual_seed(0)
    model = nn.Linear(5, 2, dtype=F64)
    batches = [torch.randn(16, 5, dtype=F64) for _ in range(3)]
    for kw in ({}, {"batch_size": 4}):
        with pytest.raises(TypeError, match=r"a list of 3 tensors .*reads two ways.*tuple"):
            fit(model, _loss, batches, epochs=1, progress=False, **kw)
    with pytest.raises(TypeError, match=r"a list of 2 tensors"):
        fit(model, _loss, batches[0], val_data=batches[:2], epochs=1, progress=False)


def test_tuple_columns_and_lists_of_batches_keep_their_meaning():
    """A tuple of tensors is the columns of one data set (rows of one permutation drawn
    from the generator); a list of tuples is batches, each as it is."""
    y = torch.arange(10.0, dtype=F64)[:, None]
    x = -y
    got = list(iterate_batches((y, x), 4, torch.Generator().manual_seed(3), None))
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    assert [len(b[0]) for b in got] == [4, 4, 2]
    rows = torch.cat([b[0] for b in got])[:, 0]
    assert torch.equal(rows, perm.to(F64)) and all(torch.equal(b[1], -b[0]) for b in got)
    items = [(y[:3], x[:3]), (y[3:], x[3:])]
    out = list(iterate_batches(items, None, torch.Generator(), None))
    assert len(out) == 2 and all(o is i for o, i in zip(out, items, strict=True))
    # fit on a list of 1-tuples: each batch reaches loss_fn as it is
    seen = []
    model = nn.Linear(1, 1, dtype=F64)
    fit(
        model,
        lambda m, b: seen.append(len(b[0])) or m(b[0]).pow(2).mean(),
        [(y[:3],), (y[3:],)],
        epochs=1,
        progress=False,
    )
    assert seen == [3, 7]


def test_fit_checkpoint_from_main_resumes_where_the_module_is_imported(tmp_path, registry):
    """``fit(checkpoint=...)`` run from ``python3 mymodule.py`` writes ``__main__:MyNet``;
    ``resume=`` in a script that imports ``mymodule`` continues it (it compared the class
    names exactly and refused)."""
    torch.manual_seed(0)
    x = torch.randn(12, 3, dtype=F64)
    data = (x, x.flip(1))

    def loss(model, batch):
        return ((model(batch[0]) - batch[1]) ** 2).mean()

    path = tmp_path / "run.pt"
    as_script = register(_net_class("__main__"))
    fit(as_script(), loss, data, epochs=1, batch_size=4, checkpoint=path, progress=False)
    registry.clear()
    imported = register(_net_class("mymodule_d13"))
    hist = fit(imported(), loss, data, epochs=2, batch_size=4, resume=path, progress=False)
    assert len(hist.train_loss) == 2
    other = register(_net_class("mymodule_d13", "OtherNet"))
    with pytest.raises(ValueError, match="was written for a __main__:MyNet"):
        fit(other(), loss, data, epochs=2, batch_size=4, resume=path, progress=False)
