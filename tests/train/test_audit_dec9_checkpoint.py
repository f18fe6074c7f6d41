"""load_checkpoint audit (dec 9): mixed / complex dtypes reload bit for bit, a GPU-saved
checkpoint loads on a CPU-only machine by default, a bad map_location or a non-class
``expected`` gets its own clear error."""

from __future__ import annotations

import pytest
import torch
import torch.serialization as ser
from torch import nn

from unrollsci.train import load_checkpoint, register_checkpoint_class, save_checkpoint

TINY = 1 + 1e-12  # rounds to 1.0 in float32


@register_checkpoint_class
class _AuditMixedDtypes(nn.Module):
    """One float64 and one float32 parameter; the constructor takes no dtype."""

    def __init__(self, n: int = 3) -> None:
        super().__init__()
        self.n = n
        self.a = nn.Parameter(torch.zeros(n))
        self.b = nn.Parameter(torch.zeros(n))

    def get_config(self) -> dict:
        return {"n": self.n}


@register_checkpoint_class
class _AuditComplex(nn.Module):
    """A complex64 parameter in the constructor, saved as complex128; a shared child."""

    def __init__(self, n: int = 3) -> None:
        super().__init__()
        self.n = n
        self.w = nn.Parameter(torch.zeros(n, dtype=torch.complex64))
        self.lin = nn.Linear(n, n)

    def get_config(self) -> dict:
        return {"n": self.n}


@register_checkpoint_class
class _AuditOwnState(nn.Module):
    """Writes a tensor that is neither a parameter nor a buffer into its state dict."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))
        self.scale = torch.ones(())  # float32, kept as a plain attribute

    def get_config(self) -> dict:
        return {}

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "scale"] = self.scale

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, *rest):
        self.scale.copy_(state_dict.pop(prefix + "scale"))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, *rest)


@register_checkpoint_class
class _AuditTied(_AuditMixedDtypes):
    """The same parameter under a second name."""

    def __init__(self, n: int = 3) -> None:
        super().__init__(n)
        self.alias = nn.Module()
        self.alias.a = self.a


def _assert_same_state(model: nn.Module, back: nn.Module) -> None:
    saved, loaded = model.state_dict(), back.state_dict()
    assert list(saved) == list(loaded)
    for k, a in saved.items():
        assert loaded[k].dtype == a.dtype, k
        assert torch.equal(loaded[k], a), k


# -- item 2: every tensor keeps the dtype it was saved in ---------------------------------


def test_mixed_float64_float32_parameters_reload_bit_for_bit(tmp_path):
    model = _AuditMixedDtypes()
    with torch.no_grad():
        model.a.data = torch.full((3,), TINY, dtype=torch.float64)
        model.b.fill_(0.5)
    save_checkpoint(model, tmp_path / "m.pt")
    back = load_checkpoint(tmp_path / "m.pt")
    _assert_same_state(model, back)
    assert back.a[0].item() == TINY
    assert isinstance(back.a, nn.Parameter) and back.a.requires_grad
    assert back.b.dtype == torch.float32


def test_complex128_parameter_reloads_bit_for_bit(tmp_path):
    model = _AuditComplex()
    model.w.data = torch.full((3,), TINY + 1j, dtype=torch.complex128)
    save_checkpoint(model, tmp_path / "c.pt")
    back = load_checkpoint(tmp_path / "c.pt")
    _assert_same_state(model, back)
    assert back.w.dtype == torch.complex128 and back.w[0].item() == TINY + 1j
    assert isinstance(back.w, nn.Parameter)
    assert back.lin.weight.dtype == torch.float32


def test_tied_parameter_keeps_its_stored_dtype_and_stays_tied(tmp_path):
    tied = _AuditTied()
    tied.a.data = torch.full((3,), TINY, dtype=torch.float64)
    save_checkpoint(tied, tmp_path / "t.pt")
    back = load_checkpoint(tmp_path / "t.pt")
    assert back.alias.a is back.a and back.a.dtype == torch.float64
    assert back.a[0].item() == TINY


def test_stored_dtype_the_rebuilt_model_cannot_hold_raises(tmp_path):
    model = _AuditOwnState()
    model.scale = torch.tensor(TINY, dtype=torch.float64)
    save_checkpoint(model, tmp_path / "s.pt")
    with pytest.raises(ValueError, match=r"'scale'.*torch\.float64.*torch\.float32"):
        load_checkpoint(tmp_path / "s.pt")


def test_uniform_float32_and_float64_models_still_follow_the_checkpoint(tmp_path):
    for dtype in (torch.float32, torch.float64):
        model = _AuditMixedDtypes().to(dtype)
        with torch.no_grad():
            model.a.fill_(TINY)
        save_checkpoint(model, tmp_path / "u.pt")
        back = load_checkpoint(tmp_path / "u.pt")
        _assert_same_state(model, back)


# -- item 7: device handling ----------------------------------------------------------------


def _save_as_if_on_gpu(model: nn.Module, path, monkeypatch) -> None:
    # what torch.save writes for tensors on cuda:0, without a GPU
    with monkeypatch.context() as m:
        m.setattr(ser, "location_tag", lambda storage: "cuda:0")
        save_checkpoint(model, path)


def test_gpu_saved_checkpoint_loads_on_cpu_by_default(tmp_path, monkeypatch):
    model = _AuditMixedDtypes()
    with torch.no_grad():
        model.b.fill_(0.25)
    _save_as_if_on_gpu(model, tmp_path / "gpu.pt", monkeypatch)
    back = load_checkpoint(tmp_path / "gpu.pt")
    assert {t.device.type for t in back.state_dict().values()} == {"cpu"}
    _assert_same_state(model, back)


def test_bad_map_location_gets_its_own_error(tmp_path):
    save_checkpoint(_AuditMixedDtypes(), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="map_location") as info:
        load_checkpoint(tmp_path / "m.pt", map_location="bogus")
    assert "truncated" not in str(info.value) and "'bogus'" in str(info.value)
    with pytest.raises(TypeError, match="map_location"):
        load_checkpoint(tmp_path / "m.pt", map_location=1.5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_map_location_cuda_without_cuda_names_the_device(tmp_path):
    save_checkpoint(_AuditMixedDtypes(), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="map_location") as info:
        load_checkpoint(tmp_path / "m.pt", map_location="cuda")
    assert "truncated" not in str(info.value) and "'cuda'" in str(info.value)


def test_device_error_from_a_map_location_dict_is_not_blamed_on_the_file(tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    _save_as_if_on_gpu(_AuditMixedDtypes(), tmp_path / "gpu.pt", monkeypatch)
    with pytest.raises(ValueError, match="map_location") as info:
        load_checkpoint(tmp_path / "gpu.pt", map_location={"cpu": "cpu"})
    assert "truncated" not in str(info.value)


# -- item 9: a non-class ``expected`` ------------------------------------------------------


@pytest.mark.parametrize("bad", [5, "LISTA", [5], ()])
def test_non_class_expected_gets_the_intended_error(tmp_path, bad):
    save_checkpoint(_AuditMixedDtypes(), tmp_path / "m.pt")
    with pytest.raises(TypeError, match=r"Expected 'expected' to be a class or classes \(got"):
        load_checkpoint(tmp_path / "m.pt", expected=bad)


def test_expected_as_a_list_of_classes_still_works(tmp_path):
    save_checkpoint(_AuditMixedDtypes(), tmp_path / "m.pt")
    back = load_checkpoint(tmp_path / "m.pt", expected=[_AuditComplex, _AuditMixedDtypes])
    assert isinstance(back, _AuditMixedDtypes)
