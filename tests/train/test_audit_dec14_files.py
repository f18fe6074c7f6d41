"""Audit of 14 December (files): a refused ``fit(resume=...)`` leaves the model as it was,
an interrupted atomic write (SIGTERM included) leaves no temporary file, a file name of
4-byte characters can be written, a file where the checkpoint's folder should be is named,
and a checkpoint whose bytes changed is refused instead of loading other weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from unrollsci._io import atomic_write, atomic_write_bytes, atomic_write_text, temp_prefix
from unrollsci.train import fit, load_checkpoint, save_checkpoint
from unrollsci.train._checkpoint import _read_payload
from unrollsci.unrolled import LISTA

# ---------------------------------------------------------------- defect 1: refused resume


def _problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(8, 16, generator=g, dtype=torch.float64)
    x = torch.randn(32, 16, generator=g, dtype=torch.float64)
    x = x * (torch.rand(32, 16, generator=g) < 0.2)
    return a, x @ a.T, x


def _loss(model, batch):
    return (model(batch[0]) - batch[1]).pow(2).mean()


def _checkpoint(tmp_path: Path) -> tuple[Path, torch.Tensor, tuple]:
    a, y, x = _problem()
    path = tmp_path / "run.pt"
    model = LISTA(a, num_layers=2, dtype=torch.float64)
    fit(model, _loss, (y, x), epochs=2, batch_size=8, checkpoint=path, progress=False)
    return path, a, (y, x)


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes()


def _snapshot(model: torch.nn.Module) -> dict:
    """Everything a refused resume must leave as it was, bit for bit."""
    return {
        "state": {k: (v.dtype, tuple(v.shape), _bits(v)) for k, v in model.state_dict().items()},
        "depth": getattr(model, "active_layers", None),
        "modes": [m.training for m in model.modules()],
        "grads": {k: p.requires_grad for k, p in model.named_parameters()},
    }


def _user_model(a: torch.Tensor, layers: int, dtype=torch.float64) -> LISTA:
    """A model the caller has changed: other weights, a smaller depth, eval mode, a frozen
    parameter (so that a partial load or a reset would show)."""
    model = LISTA(a.to(dtype), num_layers=layers, dtype=dtype)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(0.25 * (i + 1))
    model.active_layers = 1
    model.eval()
    next(model.parameters()).requires_grad_(False)
    return model


def test_a_resume_into_another_configuration_leaves_the_model_bit_for_bit(tmp_path):
    path, a, data = _checkpoint(tmp_path)
    model = _user_model(a, 3)
    before = _snapshot(model)
    with pytest.raises(ValueError, match="do not fit this LISTA"):
        fit(model, _loss, data, epochs=3, batch_size=8, resume=path, progress=False)
    assert _snapshot(model) == before


def test_a_resume_with_other_arguments_leaves_the_depth_and_weights(tmp_path):
    path, a, data = _checkpoint(tmp_path)
    model = _user_model(a, 2)
    before = _snapshot(model)
    with pytest.raises(ValueError, match="other training arguments"):
        fit(model, _loss, data, epochs=3, batch_size=8, lr=5e-3, resume=path, progress=False)
    assert _snapshot(model) == before
    with pytest.raises(ValueError, match="Expected epochs >= 2"):
        fit(model, _loss, data, epochs=1, batch_size=8, resume=path, progress=False)
    assert _snapshot(model) == before


def test_a_resume_in_another_dtype_leaves_the_depth(tmp_path):
    path, a, (y, x) = _checkpoint(tmp_path)
    model = _user_model(a, 2, torch.float32)
    before = _snapshot(model)
    with pytest.raises(ValueError, match="would round them"):
        fit(model, _loss, (y.float(), x.float()), epochs=3, batch_size=8, resume=path,
            progress=False)  # fmt: skip
    assert _snapshot(model) == before


def test_a_load_that_fails_after_the_checks_is_undone(tmp_path, monkeypatch):
    """A failure inside load_state_dict itself (after torch copied what fits) restores
    every tensor, the depth, the modes and the flags."""
    path, a, data = _checkpoint(tmp_path)
    model = _user_model(a, 2)
    before = _snapshot(model)
    original = torch.nn.Module.load_state_dict

    def load_then_fail(self, state, *args, **kwargs):
        original(self, state, *args, **kwargs)  # every weight of the checkpoint copied in
        self.train()
        raise RuntimeError("simulated failure after the copy")

    monkeypatch.setattr(model, "load_state_dict", load_then_fail.__get__(model))
    with pytest.raises(ValueError, match="simulated failure"):
        fit(model, _loss, data, epochs=3, batch_size=8, resume=path, progress=False)
    assert _snapshot(model) == before


def test_a_resume_refused_after_the_load_is_undone(tmp_path):
    """distributed=True without a process group is refused after the weights were loaded
    (setup runs after them): the model still comes back as it was."""
    path, a, data = _checkpoint(tmp_path)
    if "MASTER_ADDR" in os.environ or torch.distributed.is_initialized():
        pytest.skip("a process group or a torchrun launch is available here")
    model = _user_model(a, 2)
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="distributed=True"):
        fit(model, _loss, data, epochs=3, batch_size=8, resume=path, distributed=True,
            progress=False)  # fmt: skip
    assert _snapshot(model) == before


def _sparse_lista(a: torch.Tensor, layers: int) -> LISTA:
    from unrollsci.operators import SparseOperator

    return LISTA(SparseOperator(a.to_sparse_csr()), num_layers=layers, dtype=torch.float64)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support")
def test_sparse_models_resume_and_older_key_names_are_still_accepted(tmp_path):
    """load_state_dict stays the judge of the fit: a file whose state holds the key an
    older unrollsci saved (SparseOperator's ``matrix_t``, dropped by its load hook)
    resumes; a refused resume of a sparse model is undone, its CSR buffer included."""
    a, y, x = _problem()
    path = tmp_path / "sparse.pt"
    fit(_sparse_lista(a, 2), _loss, (y, x), epochs=1, batch_size=8, checkpoint=path,
        progress=False)  # fmt: skip
    payload = _read_payload(path, None)  # the library's reader (newer torch's notice muted)
    state = payload["extra"]["fit_state"]
    for weights in (payload["state_dict"], state["weights"]):
        if weights is not None:
            weights["operator.matrix_t"] = weights["operator.matrix"].to_dense().T.to_sparse_csr()
    torch.save(payload, path)
    resumed = _sparse_lista(a, 2)
    fit(resumed, _loss, (y, x), epochs=2, batch_size=8, resume=path, progress=False)
    whole = _sparse_lista(a, 2)
    fit(whole, _loss, (y, x), epochs=2, batch_size=8, progress=False)
    ref = whole.state_dict()
    for k, v in resumed.state_dict().items():
        assert torch.equal(v.to_dense(), ref[k].to_dense()), k
    model = _sparse_lista(a, 3)
    model.active_layers = 1
    dense_before = {k: v.to_dense().clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="do not fit"):
        fit(model, _loss, (y, x), epochs=3, batch_size=8, resume=path, progress=False)
    assert model.active_layers == 1
    after = model.state_dict()
    assert all(_bits(v) == _bits(after[k].to_dense()) for k, v in dense_before.items())


def test_an_accepted_resume_still_continues_the_run(tmp_path):
    """The checks run first, the weights and the depth are applied after: the resumed run
    equals the uninterrupted one (weights bit for bit)."""
    a, y, x = _problem()
    whole = LISTA(a, num_layers=2, dtype=torch.float64)
    fit(whole, _loss, (y, x), epochs=4, batch_size=8, progress=False)
    path = tmp_path / "half.pt"
    first = LISTA(a, num_layers=2, dtype=torch.float64)
    fit(first, _loss, (y, x), epochs=2, batch_size=8, checkpoint=path, progress=False)
    resumed = LISTA(a, num_layers=2, dtype=torch.float64)
    fit(resumed, _loss, (y, x), epochs=4, batch_size=8, resume=path, progress=False)
    ref = whole.state_dict()
    assert all(_bits(v) == _bits(ref[k]) for k, v in resumed.state_dict().items())


# ------------------------------------------------------- defect 2: SIGTERM during a write

_SLOW_WRITE = """
import sys, time
{setup}
def slow(f):
    f.write(b"new" * 1000)
    f.flush()
    print("writing", flush=True)
    end = time.monotonic() + 600  # until the signal comes (the test waits for it)
    while time.monotonic() < end and not stop:
        f.write(b"x")
        time.sleep(0.01)
{call}
print("done", flush=True)
"""


def _run_until_signalled(tmp_path: Path, script: str) -> tuple[int, str]:
    """Start ``script``, wait (without a time limit on the machine's speed, up to 10
    minutes) until it says it is writing, send SIGTERM, return its exit status and output."""
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent(script))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(
        [sys.executable, str(child)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    ) as proc:
        try:
            lines = []
            for line in proc.stdout:  # blocks until the write has started (or the child ended)
                lines.append(line)
                if line.strip() == "writing":
                    break
            assert lines and lines[-1].strip() == "writing", "".join(lines)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode, "".join(lines) + (out or "")


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name == "nt", reason="POSIX signals")
def test_sigterm_during_a_library_write_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    script = _SLOW_WRITE.format(
        setup=f"from unrollsci._io import atomic_save\nstop = False\npath = {str(target)!r}",
        call="atomic_save(path, slow)",
    )
    rc, out = _run_until_signalled(tmp_path, script)
    assert rc == 143, out  # SystemExit(143): unwound, not killed (-15)
    assert "done" not in out and "Traceback" not in out
    assert _temporaries(tmp_path) == []
    assert target.read_bytes() == b"old"


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name == "nt", reason="POSIX signals")
def test_sigterm_during_save_checkpoint_leaves_the_old_checkpoint(tmp_path):
    a, _, _ = _problem()
    target = tmp_path / "model.pt"
    old = LISTA(a, num_layers=2, dtype=torch.float64)
    save_checkpoint(old, target)
    old_bytes = target.read_bytes()
    setup = f"""
import torch
from unrollsci.train import save_checkpoint
from unrollsci.unrolled import LISTA
stop = False
model = LISTA(torch.eye(8, 16, dtype=torch.float64), num_layers=3, dtype=torch.float64)
torch.save = lambda payload, f: slow(f)  # a slow writer: the signal comes mid-write
path = {str(target)!r}
"""
    rc, out = _run_until_signalled(tmp_path, _SLOW_WRITE.format(setup=setup,
                                   call="save_checkpoint(model, path)"))  # fmt: skip
    assert rc == 143, out
    assert _temporaries(tmp_path) == []
    assert target.read_bytes() == old_bytes
    assert load_checkpoint(target).num_layers == 2


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name == "nt", reason="POSIX signals")
def test_a_programs_own_sigterm_handler_is_left_in_place(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    setup = f"""
import signal
from unrollsci._io import atomic_save
stop = []
mine = lambda signum, frame: stop.append(signum)
signal.signal(signal.SIGTERM, mine)
path = {str(target)!r}
"""
    call = "atomic_save(path, slow)\nassert signal.getsignal(signal.SIGTERM) is mine"
    rc, out = _run_until_signalled(tmp_path, _SLOW_WRITE.format(setup=setup, call=call))
    assert rc == 0, out  # the program's handler ran (the write then ended normally)
    assert "done" in out
    assert _temporaries(tmp_path) == []
    assert target.read_bytes().startswith(b"new" * 1000)


def test_the_sigterm_handler_is_restored_after_a_write(tmp_path):
    import threading

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers: main thread only")
    before = signal.getsignal(signal.SIGTERM)
    with atomic_write(tmp_path / "a.txt", "w") as f:
        during = signal.getsignal(signal.SIGTERM)
        f.write("x")
    assert signal.getsignal(signal.SIGTERM) is before
    if before is signal.SIG_DFL:  # a SIGTERM during the write unwinds
        assert during is not signal.SIG_DFL
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "b.txt", "w"):
            raise RuntimeError("fails")
    assert signal.getsignal(signal.SIGTERM) is before
    assert _temporaries(tmp_path) == [] and not (tmp_path / "b.txt").exists()


# --------------------------------------------------- defect 4: names of 4-byte characters


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


@pytest.mark.parametrize("name", ["\U0001f600" * 63, "a" + "\U0001f600" * 20 + ".pt", "b" * 255])
def test_the_temporary_name_is_cut_by_bytes(name):
    prefix = temp_prefix(Path("/some/folder") / name)
    raw = os.fsencode(prefix)
    assert len(raw) <= 66  # "." + at most 64 bytes + "."
    assert prefix.startswith(".") and prefix.endswith(".")
    kept = prefix[1:-1]
    assert name.startswith(kept)  # whole characters only
    assert len(os.fsencode(kept)) > 64 - 4  # cut where the next character would not fit


def test_a_legal_name_of_4_byte_characters_can_be_written(tmp_path):
    name = "\U0001f600" * 63  # 252 bytes: legal
    if len(name.encode("utf-8")) > _name_max(tmp_path):
        pytest.skip("this file system allows shorter names")
    path = tmp_path / name
    atomic_write_text(path, "text")
    assert path.read_text() == "text"
    a, _, _ = _problem()
    model = LISTA(a, num_layers=2, dtype=torch.float64)
    save_checkpoint(model, tmp_path / (name[:62] + ".pt"))
    back = load_checkpoint(tmp_path / (name[:62] + ".pt"))
    ref = model.state_dict()
    assert all(_bits(v) == _bits(ref[k]) for k, v in back.state_dict().items())
    assert _temporaries(tmp_path) == []


# --------------------------------------------- defect 5: a file where a folder should be


@pytest.mark.parametrize("below", ["model.pt", "sub/model.pt"])
def test_save_checkpoint_under_a_file_names_the_file(tmp_path, below):
    blocker = tmp_path / "results"
    blocker.write_text("a file")
    a, _, _ = _problem()
    with pytest.raises(NotADirectoryError, match=r"Expected a folder .*got the file .*results"):
        save_checkpoint(LISTA(a, num_layers=2, dtype=torch.float64), blocker / below)
    assert blocker.read_text() == "a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


# ----------------------------------------------------------- defect 6: corrupted bytes


def _flip_largest_member(src: Path, dst: Path) -> str:
    """Copy ``src`` with one bit flipped in every 4th byte of its largest tensor's data (the
    zip structure intact): the stored CRC-32 no longer matches."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    h = info.header_offset
    start = h + 30 + int.from_bytes(data[h + 26 : h + 28], "little")
    start += int.from_bytes(data[h + 28 : h + 30], "little")
    for i in range(start, start + info.file_size, 4):
        data[i] ^= 0x01
    dst.write_bytes(bytes(data))
    return info.filename


def test_a_checkpoint_with_corrupted_tensor_bytes_is_refused(tmp_path):
    a, y, x = _problem()
    model = LISTA(a, num_layers=2, dtype=torch.float64)
    good = save_checkpoint(model, tmp_path / "good.pt")
    bad = tmp_path / "bad.pt"
    member = _flip_largest_member(good, bad)
    with zipfile.ZipFile(bad) as z:  # the reference: zipfile's own CRC check
        assert z.testzip() == member
    with pytest.raises(ValueError, match=r"bad\.pt could not be read \(corrupted"):
        load_checkpoint(bad)
    with pytest.raises(ValueError, match="corrupted"):  # resume reads it the same way
        path = tmp_path / "run.pt"
        trained = LISTA(a, num_layers=2, dtype=torch.float64)
        fit(trained, _loss, (y, x), epochs=1, batch_size=8, checkpoint=path, progress=False)
        _flip_largest_member(path, path)
        fit(LISTA(a, num_layers=2, dtype=torch.float64), _loss, (y, x), epochs=2,
            batch_size=8, resume=path, progress=False)  # fmt: skip
    back = load_checkpoint(good)  # the intact file loads bit for bit
    ref = model.state_dict()
    assert all(_bits(v) == _bits(ref[k]) for k, v in back.state_dict().items())


def test_checkpoints_without_crc_or_in_the_legacy_format_still_load(tmp_path):
    a, _, _ = _problem()
    model = LISTA(a, num_layers=2, dtype=torch.float64)
    ref = model.state_dict()
    good = save_checkpoint(model, tmp_path / "good.pt")
    payload = torch.load(good, weights_only=True)
    legacy = tmp_path / "legacy.pt"
    torch.save(payload, legacy, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(legacy)
    paths = [legacy]
    config = getattr(getattr(torch.utils, "serialization", None), "config", None)
    if config is not None and hasattr(config.save, "compute_crc32"):
        nocrc = tmp_path / "nocrc.pt"
        previous = config.save.compute_crc32
        config.save.compute_crc32 = False
        try:
            save_checkpoint(model, nocrc)
        finally:
            config.save.compute_crc32 = previous
        with zipfile.ZipFile(nocrc) as z:
            assert all(i.CRC == 0 for i in z.infolist())
        paths.append(nocrc)
    for path in paths:
        back = load_checkpoint(path)
        assert all(_bits(v) == _bits(ref[k]) for k, v in back.state_dict().items())
    atomic_write_bytes(tmp_path / "x.bin", b"")  # (an empty write still works)
