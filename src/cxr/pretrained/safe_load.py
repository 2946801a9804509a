"""torchxrayvision's published weights, read without running their pickles.

torchxrayvision publishes its DenseNet weights as whole pickled models (`torch.save(model)`) and
reads them with `torch.load(..., weights_only=False)`, which executes whatever the file says.
cxr never does that. A file is read with torch's weights_only unpickler,

    torch.load(path, map_location="cpu", weights_only=True)

inside `torch.serialization.safe_globals(densenet_allowlist())`, where the allowlist is exactly
the module classes a torchxrayvision DenseNet is built from (found by walking a freshly built
one: DenseNet, _DenseBlock, _DenseLayer, _Transition and torch's Sequential, Conv2d,
BatchNorm2d, ReLU, MaxPool2d, AvgPool2d, Linear). Beyond those the unpickler admits only what it
admits by default (tensors, storages, OrderedDict and plain values). Any other global a file
names (os.system, builtins.exec, a torchvision model) is refused and named in one line.

Files saved by torch before 1.6 use the legacy (non-zip) format, in which a pickled module
names its class through a `('module', class, source file, source)` persistent id. torch's
weights_only unpickler refuses every persistent id but storages, so it cannot read a whole model
in that format at all. Such a file (and only such a file: the zip format always goes through
torch.load) is read by `_LegacyReader`, a `pickle.Unpickler` whose `find_class` admits the same
globals: torch's weights_only defaults plus the DenseNet classes, plus `LEGACY_STUBS`, torch's
own no-op kept for pickles from torch < 1.5 (their modules carried a `_backend` attribute that
unpickles through it). The class in a module persistent id has already passed `find_class`; its
saved source text is ignored. Storages are read as torch's legacy loader reads them.
"""

from __future__ import annotations

import _compat_pickle
import collections
import functools
import pickle
import re
import zipfile
from pathlib import Path
from typing import ClassVar

from cxr.core.errors import CxrError

# The legacy format's header (torch/serialization.py): magic number, then protocol version.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
# torch < 1.5 pickled nn.Module._backend through this function, which torch keeps (returning
# None) for such pickles only. Admitted by the legacy reader alone; it runs no code.
LEGACY_STUBS = ("torch.nn.backends.thnn._get_thnn_function_backend",)

_WHY = "not a class torchxrayvision's DenseNet is built from"


def qualified_name(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


@functools.cache
def densenet_allowlist() -> tuple[type, ...]:
    """The classes of every module in `xrv.models.DenseNet(num_classes=18, in_channels=1)`."""
    from cxr.pretrained.common import import_torchxrayvision

    xrv = import_torchxrayvision()
    model = xrv.models.DenseNet(num_classes=18, in_channels=1)
    return tuple(sorted({type(m) for m in model.modules()}, key=qualified_name))


class _Refused(pickle.UnpicklingError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _refused_line(path: Path, name: str, how: str) -> CxrError:
    return CxrError(f"{path}: refused to unpickle {name} ({_WHY}); cxr {how}")


_TORCH_HOW = "loads published weights with torch's weights_only unpickler"
_LEGACY_HOW = (
    "reads published weights in torch's legacy format with the globals torch's weights_only "
    "unpickler admits and the DenseNet classes"
)


def load_published(path: str | Path):
    """The object a published weights file holds (a module or a state dict), never unpickling
    anything outside the allowlist. One-line CxrError for a refused global or a damaged file."""
    import torch

    path = Path(path)
    allow = densenet_allowlist()
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Only persistent_load of storage is allowed" in text and not zipfile.is_zipfile(path):
            return _load_legacy(path, allow)
        name = _global_named(text)
        if name:
            raise _refused_line(path, name, _TORCH_HOW) from None
        raise CxrError(f"{path}: not a readable torch weights file ({_detail(text)})") from None
    except Exception as exc:  # zip, EOF, magic-number and storage errors all look different
        from cxr.pretrained.common import first_line

        raise CxrError(
            f"{path}: not a readable torch weights file (damaged or not a torch file: "
            f"{first_line(exc)})"
        ) from None


def _global_named(text: str) -> str | None:
    """The global torch's unpickler refused, as module.name (it writes builtins ones bare)."""
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if not found:
        return None
    name = found.group(1)
    return name if "." in name else f"builtins.{name}"


def _detail(text: str) -> str:
    tail = text.split("WeightsUnpickler error:", 1)[-1]
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    return lines[0] if lines else "unreadable"


def load_state_dict(path: str | Path) -> dict:
    """The tensors of a published weights file: the state dict of the module it holds (after
    torchxrayvision's patch for old pickles) or the plain state dict it is."""
    import torch

    path = Path(path)
    obj = load_published(path)
    if isinstance(obj, torch.nn.Module):
        try:
            # torchxrayvision's patch for modules pickled before torch 1.6 (they lack the set);
            # torch's Module.__setstate__ adds it today, the patch keeps cxr equal to the library.
            for module in obj.modules():
                if not hasattr(module, "_non_persistent_buffers_set"):
                    module._non_persistent_buffers_set = set()
            state = obj.state_dict()
        except Exception as exc:
            from cxr.pretrained.common import first_line

            raise CxrError(f"{path}: a malformed pickled model ({first_line(exc)})") from None
    elif isinstance(obj, dict):
        state = obj
    else:
        raise CxrError(
            f"{path}: holds a {type(obj).__name__}, not a model or a state dict of tensors"
        )
    bad = [k for k, v in state.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise CxrError(f"{path}: not a state dict of tensors (entry {bad[0]!r})")
    return dict(state)


# ----------------------------------------------------------------------------- legacy format


def _load_legacy(path: Path, allow: tuple[type, ...]):
    """A legacy-format torch file (torch < 1.6), through `_LegacyReader`."""
    from cxr.pretrained.common import first_line

    try:
        with open(path, "rb") as f:
            return _read_legacy(f, allow)
    except _Refused as exc:
        raise _refused_line(path, exc.name, _LEGACY_HOW) from None
    except CxrError as exc:
        raise CxrError(f"{path}: {exc}") from None
    except Exception as exc:
        raise CxrError(
            f"{path}: not a readable torch weights file (damaged legacy-format file: "
            f"{first_line(exc)})"
        ) from None


def _allowed_globals(allow: tuple[type, ...]) -> dict[str, object]:
    import importlib

    from torch._weights_only_unpickler import _get_allowed_globals

    allowed = dict(_get_allowed_globals())  # what torch.load(weights_only=True) admits
    allowed.update({qualified_name(cls): cls for cls in allow})
    for name in LEGACY_STUBS:
        module, _, attr = name.rpartition(".")
        allowed[name] = getattr(importlib.import_module(module), attr)
    return allowed


def _read_legacy(f, allow: tuple[type, ...]):
    import torch

    allowed = _allowed_globals(allow)
    storages: dict[str, torch.storage.TypedStorage] = {}

    def reader() -> _LegacyReader:
        return _LegacyReader(f, allowed, frozenset(allow), storages)

    if reader().load() != _LEGACY_MAGIC:
        raise CxrError("not a torch file (no legacy magic number)")
    if reader().load() != _LEGACY_PROTOCOL:
        raise CxrError("unknown legacy protocol version")
    reader().load()  # sys_info: byte order and type sizes of the writer
    result = reader().load()
    keys = reader().load()
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise CxrError("storage list does not match the pickled tensors")
    for key in keys:
        storage = storages[key]
        element = torch._utils._element_size(storage.dtype)
        numel = int.from_bytes(_read_exact(f, 8), "little")
        nbytes = numel * element
        if nbytes != storage._untyped_storage.nbytes():
            raise CxrError(f"storage {key}: {nbytes} bytes written, {storage.nbytes()} expected")
        data = bytearray(_read_exact(f, nbytes))
        if nbytes:
            raw = torch.frombuffer(data, dtype=torch.uint8)
            storage._untyped_storage.copy_(raw.untyped_storage())
    return result


def _read_exact(f, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CxrError("truncated: the file ends inside its tensor data")
    return data


def _name_of(obj) -> str:
    """A class or function by its qualified name; any other object by its type's."""
    named = isinstance(obj, type) or (callable(obj) and hasattr(obj, "__qualname__"))
    return qualified_name(obj if named else type(obj))


class _LegacyReader(pickle._Unpickler):
    """One pickle of a legacy file: globals from `allowed` only; persistent ids for storages
    (allocated here, filled from the file's data section after the pickle) and for module
    classes in `classes`.

    Naming only allowed globals is not enough: plain pickle lets REDUCE call whatever is on the
    stack, BUILD set attributes on any object (a class or function included, process-wide) and
    NEWOBJ instantiate any class. So the opcodes that call or mutate are held to the rules of
    torch's weights-only unpickler, which cannot read these files itself: REDUCE calls only an
    allowed global, NEWOBJ builds only the model's classes, BUILD fills only instances of those
    classes, tensors, parameters and OrderedDicts, and INST / OBJ / NEWOBJ_EX (never written by
    torch.save) are refused. The pure-Python unpickler is used because its opcodes can be
    overridden; the pickle of a model is small (the tensor data is read outside it).
    """

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)

    def __init__(self, f, allowed, classes, storages) -> None:
        super().__init__(f, encoding="utf-8")
        self._allowed = allowed
        self._callables = {id(v) for v in allowed.values()}
        self._classes = classes
        self._storages = storages

    def _load_reduce(self):
        func = self.stack[-2]
        if id(func) not in self._callables:
            raise _Refused(_name_of(func))
        pickle._Unpickler.load_reduce(self)

    dispatch[pickle.REDUCE[0]] = _load_reduce

    def _load_newobj(self):
        cls = self.stack[-2]
        if cls not in self._classes:
            raise _Refused(_name_of(cls))
        pickle._Unpickler.load_newobj(self)

    dispatch[pickle.NEWOBJ[0]] = _load_newobj

    def _load_build(self):
        import torch

        inst = self.stack[-2]
        if type(inst) not in self._classes and type(inst) not in (
            torch.Tensor,
            torch.nn.Parameter,
            collections.OrderedDict,
        ):
            raise _Refused(f"setting the state of {_name_of(inst)}")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _load_build

    def _refuse_opcode(self):
        raise _Refused("an object built by INST, OBJ or NEWOBJ_EX")

    for _op in (pickle.INST, pickle.OBJ, pickle.NEWOBJ_EX):
        dispatch[_op[0]] = _refuse_opcode
    del _op

    def find_class(self, module: str, name: str):
        # Protocol-2 pickles spell Python 3 names the Python 2 way (`__builtin__.set`); map them
        # back first, as pickle's own find_class and torch's unpickler do.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        full = f"{module}.{name}"
        if full in self._allowed:
            return self._allowed[full]
        raise _Refused(full)

    def persistent_load(self, pid):
        import torch
        from torch.serialization import StorageType

        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError("unsupported persistent id")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module" and len(pid) == 4:
            if pid[1] not in self._classes:  # find_class has vetted it; be sure all the same
                raise _Refused(qualified_name(pid[1]))
            return pid[1]
        if kind == "storage" and len(pid) == 6:
            storage_type, key, _location, numel, view = pid[1:]
            if not isinstance(storage_type, StorageType) or not isinstance(numel, int):
                raise pickle.UnpicklingError("malformed storage id")
            if view is not None:
                raise pickle.UnpicklingError("storage views (torch < 0.4) are not supported")
            if key not in self._storages:
                dtype = storage_type.dtype
                nbytes = numel * torch._utils._element_size(dtype)
                self._storages[key] = torch.storage.TypedStorage(
                    wrap_storage=torch.UntypedStorage(nbytes), dtype=dtype, _internal=True
                )
            return self._storages[key]
        raise pickle.UnpicklingError(f"unsupported persistent id {kind!r}")
