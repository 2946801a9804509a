"""The model sources behind `--model`: each loads stand-in weights the tests write (random
models, no network) through its real code path, and is compared with its library's own
preprocessing and forward pass on the same image file.

Stand-ins: a torchxrayvision DenseNet-121 (random, batch-norm statistics from one batch so its
outputs are not saturated) saved whole with `torch.save(model)`, in the zip format and in
torch's legacy format (as the published files were written by torch < 1.6); a torchvision
ResNet-50 state dict for `resnet50-res512-all`; a two-layer DINOv2 with a RAD-DINO-like
BitImageProcessor, `save_pretrained`; cxr checkpoints of cxr_small and timm's resnet18.
"""

from __future__ import annotations

import copy
import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from cxr.core.errors import CxrError, MissingInput
from cxr.mimic.schema import LABELS
from cxr.pretrained.registry import SOURCE_FORMS, SOURCES_HELP, open_source, parse_spec
from cxr.pretrained.xrv import chexpert_columns
from xray_fixtures import write_dicom, write_jpeg, xray_like

torch = pytest.importorskip("torch")
xrv = pytest.importorskip("torchxrayvision")
transformers = pytest.importorskip("transformers")

SRC = Path(__file__).resolve().parents[1] / "src"
MIMIC_CH = "densenet121-res224-mimic_ch"


def _one_line(message: str) -> str:
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------- stand-ins


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Small models, many forward passes: one thread. With two, a second core busy elsewhere
    stalls every parallel region (seconds per DenseNet forward on a shared two-core machine).
    Each comparison runs both sides in this process, so the thread count cannot hide a
    difference."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _OldThnnBackend:
    """What nn.Module._backend pickled as before torch 1.5."""

    def __reduce__(self):
        from torch.nn.backends.thnn import _get_thnn_function_backend

        return (_get_thnn_function_backend, ())


class _Payload:
    """Runs a shell command when unpickled by a full unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _ExecPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """A non-square 8-bit JPEG (landscape and portrait), a PNG and a DICOM."""
    d = tmp_path_factory.mktemp("images")
    from PIL import Image

    png = d / "portrait.png"
    Image.fromarray(xray_like(150, 110, seed=2)).save(png)
    pixels = (xray_like(120, 96, seed=3).astype(np.uint16) * 16).clip(0, 4095)
    return {
        "jpeg": write_jpeg(d / "landscape.jpg", xray_like(90, 130, seed=1)),
        "png": png,
        "dicom": write_dicom(d / "image.dcm", pixels),
    }


@pytest.fixture(scope="module")
def densenet():
    """A torchxrayvision DenseNet-121 of 18 outputs with realistic activations."""
    torch.manual_seed(0)
    model = xrv.models.DenseNet(num_classes=18, in_channels=1)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = None  # running statistics = this batch's
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 1, 224, 224) * 400)
    for bn in bns:
        bn.momentum = 0.1
    torch.nn.init.normal_(model.classifier.weight, std=0.05)
    return model.eval()


@pytest.fixture(scope="module")
def xrv_files(densenet, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("xrv")
    zipped, legacy, state = d / "whole.pt", d / "legacy.pt", d / "state.pt"
    torch.save(densenet, zipped)
    old = copy.deepcopy(densenet)
    for module in old.modules():  # as torch < 1.5 pickled a module
        module._backend = _OldThnnBackend()
        del module.__dict__["_non_persistent_buffers_set"]
    torch.save(old, legacy, _use_new_zipfile_serialization=False)
    torch.save(densenet.state_dict(), state)
    return {"zip": zipped, "legacy": legacy, "state": state}


def _xrv_reference(model, name: str):
    """The stand-in as torchxrayvision sets a model up when it loads `name`'s weights."""
    ref = copy.deepcopy(model)
    entry = xrv.models.model_urls[name]
    ref.op_threshs = torch.tensor(entry["op_threshs"])
    ref.input_resolution = entry["input_resolution"]
    return ref.eval()


def _xrv_columns(labels) -> list[int]:
    targets = xrv.models.model_urls[MIMIC_CH]["labels"]
    names = {"Pleural Effusion": "Effusion"}
    return [targets.index(names.get(label, label)) for label in labels]


# ----------------------------------------------------------------------------- xrv


def test_xrv_preprocessing_is_the_library_recipe(xrv_files, images):
    """torchxrayvision's README recipe on the same file gives the identical tensor."""
    import skimage.io
    import torchvision

    source = open_source("xrv:mimic_ch", weights=xrv_files["zip"])
    for key in ("jpeg", "png"):
        img = skimage.io.imread(images[key])
        img = xrv.datasets.normalize(img, 255)
        img = (img.mean(2) if img.ndim == 3 else img)[None, ...]
        transform = torchvision.transforms.Compose(
            [xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(224)]
        )
        expected = torch.from_numpy(transform(img))
        got = source.load(images[key])
        assert got.shape == (1, 224, 224) and got.dtype == torch.float32
        assert torch.equal(got, expected), key
    # a DICOM through the library's own reader
    expected = xrv.datasets.XRayResizer(224)(
        xrv.datasets.XRayCenterCrop()(xrv.utils.load_image(str(images["dicom"])))
    )
    assert torch.equal(source.load(images["dicom"]), torch.from_numpy(expected))


def test_xrv_outputs_are_the_library_forward(densenet, xrv_files, images, monkeypatch):
    """classify = the model's own forward (sigmoid, op_norm with the published thresholds),
    restricted to the mapped labels in their order; embed = features2; every file format loads
    the same model; torch.load is only ever called with weights_only=True."""
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    sources = {kind: open_source("xrv:mimic_ch", weights=path) for kind, path in xrv_files.items()}
    assert calls and all(w is True for w in calls)
    source = sources["zip"]
    x = torch.stack([source.load(images["jpeg"]), source.load(images["png"])])
    ref = _xrv_reference(densenet, MIMIC_CH)
    columns = _xrv_columns(source.labels)
    with torch.inference_mode():
        features = ref.features2(x)
        expected = ref(x)[:, columns].numpy()
        sigmoid = torch.sigmoid(ref.classifier(features))[:, columns].numpy()
    got = source.classify(x)
    assert got.shape == (2, 11) and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    # op_norm was applied: not the bare sigmoid
    assert not np.allclose(got, sigmoid)
    embedding = source.embed(x)
    assert source.dim == 1024 and embedding.shape == (2, 1024)
    np.testing.assert_array_equal(embedding, features.numpy())
    for kind in ("legacy", "state"):
        np.testing.assert_array_equal(sources[kind].classify(x), got)


def test_xrv_source_fields(xrv_files, capfd):
    from cxr.core.hashing import file_sha256

    source = open_source("xrv:mimic_ch", weights=xrv_files["zip"])
    # the library's notes (here: an input not at 224 px, not in [-1024, 1024]) go to stderr
    source.classify(torch.zeros(1, 1, 100, 100))
    out, err = capfd.readouterr()
    assert out == "" and "native resolution" in err
    assert source.name == "xrv-densenet121-res224-mimic_ch"
    assert source.spec == "xrv:mimic_ch"
    assert source.reads == "jpeg"
    assert source.missing_labels == ("No Finding", "Pleural Other", "Support Devices")
    assert set(source.labels) | set(source.missing_labels) == set(LABELS)
    assert source.labels == tuple(label for label in LABELS if label in source.labels)
    prov = source.provenance
    assert prov["weights_sha256"] == file_sha256(xrv_files["zip"])
    assert prov["torchxrayvision"] == xrv.__version__
    assert prov["weights"] == MIMIC_CH and "XRayResizer(224)" in prov["preprocessing"]
    assert source.model.training is False
    assert source.to("cpu") is source


def test_label_mapping_by_name():
    """Effusion is Pleural Effusion, other CheXpert names map to themselves, the rest drop."""
    targets = ["Atelectasis", "", "Infiltration", "Effusion", "Mass", "Nodule", "Cardiomegaly"]
    columns, labels, missing = chexpert_columns(targets)
    assert labels == ("Atelectasis", "Cardiomegaly", "Pleural Effusion")
    assert columns == [0, 6, 3]
    assert "Infiltration" not in labels and len(missing) == 11
    # a label with no operating threshold (torchxrayvision would output 0.5) is missing too
    columns, labels, missing = chexpert_columns(targets, usable=[True] * 6 + [False])
    assert "Cardiomegaly" in missing and columns == [0, 3]
    # the published lists
    urls = xrv.models.model_urls
    _, labels, missing = chexpert_columns(urls["mimic_ch"]["labels"])
    assert missing == ("No Finding", "Pleural Other", "Support Devices")
    _, labels, missing = chexpert_columns(urls["all"]["labels"])
    assert "Pleural Effusion" in labels and missing == (
        "No Finding",
        "Pleural Other",
        "Support Devices",
    )
    _, labels, _ = chexpert_columns(urls["nih"]["labels"])
    assert labels == (
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Pleural Effusion",
        "Pneumonia",
        "Pneumothorax",
    )


def test_xrv_resnet_state_dict(tmp_path, images):
    """resnet50-res512-all: a plain state dict; outputs = torchvision ResNet-50 -> sigmoid ->
    op_norm; its two labels without a threshold (constant 0.5 in the library) are missing."""
    import torchvision

    torch.manual_seed(1)
    net = torchvision.models.resnet50(num_classes=18, weights=None)
    net.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    torch.nn.init.normal_(net.fc.weight, std=0.01)
    net.eval()
    path = tmp_path / "resnet.pt"
    torch.save(net.state_dict(), path)
    source = open_source("xrv:resnet50-res512-all", weights=path)
    assert source.name == "xrv-resnet50-res512-all" and source.dim == 2048
    assert {"Lung Lesion", "Enlarged Cardiomediastinum"} <= set(source.missing_labels)
    x = source.load(images["jpeg"])[None]
    assert x.shape == (1, 1, 512, 512)
    entry = xrv.models.model_urls["resnet50-res512-all"]
    targets = entry["labels"]
    names = {"Pleural Effusion": "Effusion"}
    cols = [targets.index(names.get(label, label)) for label in source.labels]
    with torch.inference_mode():
        out = xrv.models.op_norm(torch.sigmoid(net(x)), torch.tensor(entry["op_threshs"]))
    np.testing.assert_allclose(source.classify(x), out[:, cols].numpy(), rtol=0, atol=1e-6)


def test_unreadable_image_is_one_line_with_the_patient_masked(xrv_files, tmp_path):
    from cxr.imaging.images import ImageReadError

    source = open_source("xrv:mimic_ch", weights=xrv_files["zip"])
    bad = tmp_path / "files" / "p10" / "p10000032" / "s50414267" / "abc.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\xff\xd8\xff" + b"not really a jpeg" * 10)
    sixteen = tmp_path / "files" / "p10" / "p10000032" / "s50414267" / "deep.png"
    from PIL import Image

    Image.fromarray(xray_like(40, 30).astype(np.uint16) * 200).save(sixteen)
    for path, words in [
        (bad, "cannot read"),
        (sixteen, "8-bit"),
        (tmp_path / "files/p10/p10000032/s1/none.jpg", "file not found"),
    ]:
        with pytest.raises(ImageReadError) as err:
            source.load(path)
        text = _one_line(str(err.value))
        assert words in text and "p10000032" not in text and "p********" in text


def test_monochrome1_dicom_warns_no_patient_path(xrv_files, tmp_path):
    """torchxrayvision's reader warns about MONOCHROME1 with the file's path; not through cxr."""
    import warnings

    source = open_source("xrv:mimic_ch", weights=xrv_files["zip"])
    path = tmp_path / "files" / "p10" / "p10000032" / "s50414267" / "inverted.dcm"
    path.parent.mkdir(parents=True)
    write_dicom(path, xray_like(64, 48).astype(np.uint16) * 16, photometric="MONOCHROME1")
    with warnings.catch_warnings(record=True) as caught:
        x = source.load(path)
    assert x.shape == (1, 224, 224)
    assert not [w for w in caught if "p10000032" in str(w.message)]


# ----------------------------------------------------------------------------- safe loading


def test_a_payload_in_the_weights_file_is_refused_and_never_runs(densenet, tmp_path):
    """os.system / builtins.exec inside a whole-model file or a state dict, zip or legacy
    format: one line naming the global, and the payload never runs."""
    # The payload is live: a full unpickle runs it (which is why cxr never does one).
    probe = tmp_path / "probe.pt"
    live = tmp_path / "live"
    torch.save({"x": _Payload(live)}, probe)
    torch.load(probe, weights_only=False)
    assert live.exists()

    cases = []
    for n, (payload, name) in enumerate(
        [(_Payload, os.system.__module__ + ".system"), (_ExecPayload, "builtins.exec")]
    ):
        marker = tmp_path / f"pwned{n}"
        model = copy.deepcopy(densenet)
        model.extra = payload(marker)
        whole, legacy, state = (tmp_path / f"{k}{n}.pt" for k in ("whole", "legacy", "state"))
        torch.save(model, whole)
        torch.save(model, legacy, _use_new_zipfile_serialization=False)
        torch.save({**densenet.state_dict(), "extra": payload(marker)}, state)
        cases += [(p, name, marker) for p in (whole, legacy, state)]
    for path, name, marker in cases:
        with pytest.raises(CxrError) as err:
            open_source("xrv:mimic_ch", weights=path)
        text = _one_line(str(err.value))
        assert text.startswith(f"{path}: refused to unpickle {name} "), text
        assert "not a class torchxrayvision's DenseNet is built from" in text
        assert not marker.exists()


def test_other_model_classes_are_refused(tmp_path):
    """A whole pickled torchvision model is not a torchxrayvision DenseNet."""
    import torchvision

    model = torchvision.models.resnet18(num_classes=18)
    for legacy in (False, True):
        path = tmp_path / f"resnet-{legacy}.pt"
        torch.save(model, path, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(CxrError) as err:
            open_source("xrv:mimic_ch", weights=path)
        assert "refused to unpickle torchvision.models.resnet.ResNet " in _one_line(str(err.value))


def test_allowlist_is_exactly_the_densenet_classes():
    from cxr.pretrained.safe_load import densenet_allowlist, qualified_name

    names = {qualified_name(c) for c in densenet_allowlist()}
    assert names == {
        "torchxrayvision.models.DenseNet",
        "torchxrayvision.models._DenseBlock",
        "torchxrayvision.models._DenseLayer",
        "torchxrayvision.models._Transition",
        "torch.nn.modules.container.Sequential",
        "torch.nn.modules.conv.Conv2d",
        "torch.nn.modules.batchnorm.BatchNorm2d",
        "torch.nn.modules.activation.ReLU",
        "torch.nn.modules.pooling.MaxPool2d",
        "torch.nn.modules.pooling.AvgPool2d",
        "torch.nn.modules.linear.Linear",
    }


def test_damaged_or_foreign_weight_files_are_one_line(xrv_files, tmp_path, densenet):
    whole = xrv_files["zip"].read_bytes()
    legacy = xrv_files["legacy"].read_bytes()
    files = {
        "noise.pt": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
        "empty.pt": b"",
        "half-zip.pt": whole[: len(whole) // 2],
        "half-legacy.pt": legacy[: len(legacy) // 2],
        "text.pt": b"hello, I am not a model\n",
    }
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CxrError) as err:
            open_source("xrv:mimic_ch", weights=path)
        text = _one_line(str(err.value))
        assert text.startswith(f"{path}: "), text
        assert "weights_only=False" not in text
    # the right format, the wrong model: 14 outputs, or not tensors
    small = xrv.models.DenseNet(num_classes=14, in_channels=1)
    torch.save(small.state_dict(), tmp_path / "fourteen.pt")
    with pytest.raises(CxrError, match="DenseNet-121 with 18 outputs"):
        open_source("xrv:mimic_ch", weights=tmp_path / "fourteen.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CxrError, match="holds a list"):
        open_source("xrv:mimic_ch", weights=tmp_path / "list.pt")


# ----------------------------------------------------------------------------- weights: where


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_xrv_missing_weights_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    url = f"http://127.0.0.1:{_closed_port()}/mimic_ch-densenet121.pt"
    monkeypatch.setitem(xrv.models.model_urls[MIMIC_CH], "weights_url", url)
    with pytest.raises(CxrError) as err:
        open_source("xrv:mimic_ch")
    text = _one_line(str(err.value))
    cached = tmp_path / ".torchxrayvision" / "models_data" / "mimic_ch-densenet121.pt"
    assert str(cached) in text and url in text and "--weights PATH" in text
    assert not cached.exists()
    with pytest.raises(MissingInput, match="--weights"):
        open_source("xrv:mimic_ch", weights=tmp_path / "nowhere.pt")


def test_xrv_downloads_into_the_library_cache_once(xrv_files, tmp_path, monkeypatch):
    """No cache file: xrv.utils.download fetches it there (a local server); the next open
    reads the cache and fetches nothing."""
    served = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = xrv_files["zip"].read_bytes()
            served.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HOME", str(tmp_path))
        url = f"http://127.0.0.1:{server.server_address[1]}/weights/mimic.pt"
        monkeypatch.setitem(xrv.models.model_urls[MIMIC_CH], "weights_url", url)
        first = open_source("xrv:densenet121-res224-mimic_ch")
        cached = tmp_path / ".torchxrayvision" / "models_data" / "mimic.pt"
        assert cached.read_bytes() == xrv_files["zip"].read_bytes()
        assert first.provenance["weights_file"] == str(cached)
        again = open_source("xrv:mimic_ch")
        assert served == ["/weights/mimic.pt"] and again.provenance["weights_file"] == str(cached)
    finally:
        server.shutdown()
        server.server_close()


def test_raddino_offline_is_one_line_and_reads_the_hub_cache(tmp_path, dino_dir):
    """HF_HUB_OFFLINE=1 (read at import, hence a fresh process): with an empty HF_HOME, one
    line; once the hub cache holds microsoft/rad-dino, it loads from there, and the provenance
    names the cached weight file, its SHA-256 and the revision."""
    from cxr.core.hashing import file_sha256

    hf_home = tmp_path / "hf"
    repo = hf_home / "hub" / "models--microsoft--rad-dino"
    revision = "0123456789abcdef0123456789abcdef01234567"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home), "PYTHONPATH": str(SRC)}
    code = (
        "import json, shutil, sys\n"
        "from pathlib import Path\n"
        "from cxr.core.errors import CxrError\n"
        "from cxr.pretrained.registry import open_source\n"
        "try:\n    open_source('rad-dino')\nexcept CxrError as e:\n    print(e)\n"
        "snap = Path(sys.argv[1]) / 'snapshots' / sys.argv[2]\n"
        "shutil.copytree(sys.argv[3], snap)\n"
        "(Path(sys.argv[1]) / 'refs').mkdir()\n"
        "(Path(sys.argv[1]) / 'refs' / 'main').write_text(sys.argv[2])\n"
        "source = open_source('rad-dino')\n"
        "print(json.dumps([source.name, source.dim, source.provenance]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(repo), revision, str(dino_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    message, loaded = proc.stdout.strip().split("\n")
    _one_line(message)
    assert "microsoft/rad-dino" in message and str(hf_home / "hub") in message
    assert "--weights DIR" in message and "hf download" in message
    assert "Traceback" not in proc.stderr
    import json

    name, dim, provenance = json.loads(loaded)
    assert (name, dim) == ("rad-dino", 32)
    assert provenance["model"] == "microsoft/rad-dino"
    assert provenance["weights_file"].startswith(str(repo / "snapshots" / revision))
    assert provenance["weights_sha256"] == file_sha256(dino_dir / "model.safetensors")


# ----------------------------------------------------------------------------- rad-dino


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory) -> Path:
    """A 2-layer DINOv2 and a BitImageProcessor configured like RAD-DINO's, at 56 px."""
    d = tmp_path_factory.mktemp("rad-dino")
    torch.manual_seed(0)
    config = transformers.Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=56,
        patch_size=14,
    )
    transformers.Dinov2Model(config).save_pretrained(d)
    transformers.BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": 56},
        resample=3,
        do_center_crop=True,
        crop_size={"height": 56, "width": 56},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5307] * 3,
        image_std=[0.2583] * 3,
        do_convert_rgb=True,
    ).save_pretrained(d)
    return d


def test_raddino_preprocessing_and_embedding_are_the_library_calls(dino_dir, images):
    from PIL import Image

    from cxr.imaging.images import load_xray

    source = open_source("rad-dino", weights=dino_dir)
    model = transformers.AutoModel.from_pretrained(dino_dir).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(dino_dir)
    pils = {
        "jpeg": Image.open(images["jpeg"]),
        "png": Image.open(images["png"]),
        "dicom": Image.fromarray(load_xray(images["dicom"])),
    }
    xs = []
    for key, img in pils.items():
        expected = processor(images=img, return_tensors="pt")["pixel_values"][0]
        got = source.load(images[key])
        assert got.shape == (3, 56, 56)
        assert torch.equal(got, expected), key
        xs.append(got)
    x = torch.stack(xs)
    with torch.inference_mode():
        expected = model(**processor(images=list(pils.values()), return_tensors="pt"))
    got = source.embed(x)
    assert got.shape == (3, 32) and got.dtype == np.float32 and source.dim == 32
    np.testing.assert_allclose(got, expected.pooler_output.numpy(), rtol=0, atol=1e-6)
    # pooler_output is the CLS token after the final layer norm
    np.testing.assert_array_equal(got, expected.last_hidden_state[:, 0].numpy())


def test_raddino_fields_and_errors(dino_dir, tmp_path, capfd):
    from cxr.core.hashing import file_sha256
    from cxr.imaging.images import ImageReadError

    capfd.readouterr()
    source = open_source("rad-dino", weights=dino_dir)
    assert capfd.readouterr() == ("", "")  # no progress bars, no advisory warnings
    assert (source.name, source.reads, source.labels) == ("rad-dino", "jpeg", ())
    assert source.provenance["weights_sha256"] == file_sha256(dino_dir / "model.safetensors")
    assert source.provenance["transformers"] == transformers.__version__
    assert "0.5307" in source.provenance["preprocessing"]
    with pytest.raises(CxrError, match="cxr embed"):
        source.classify(torch.zeros(1, 3, 56, 56))
    bad = tmp_path / "files" / "p11" / "p11000001" / "s1" / "x.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)
    with pytest.raises(ImageReadError) as err:
        source.load(bad)
    assert "p11000001" not in _one_line(str(err.value))
    with pytest.raises(MissingInput, match="hf download"):
        open_source("rad-dino", weights=tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CxrError) as err:
        open_source("rad-dino", weights=tmp_path / "empty")
    assert "--weights DIR" in _one_line(str(err.value))


# ----------------------------------------------------------------------------- cxr checkpoints


@pytest.mark.parametrize("arch", ["cxr_small", "resnet18"])
def test_cxr_checkpoint_source(tmp_path, arch):
    """Inputs are what evaluation feeds the model (cache squares through Preprocess.tensor); a
    file reads to the same tensor as its cache square; classify is the model's sigmoid; the
    classifier applied to the embedding gives the model's logits."""
    import polars as pl

    from cxr.imaging.cache import load_cache, rows_for
    from cxr.inference.runtime import load_model, predict_squares
    from train_fixtures import make_fixture, write_checkpoint

    manifest, cache_dir = make_fixture(
        tmp_path / "data", n_studies={"train": 2, "validate": 2, "test": 2}, size=32
    )
    run = tmp_path / "models" / "my run"
    run.mkdir(parents=True)
    ckpt = write_checkpoint(run / "best.pt", arch=arch, image_size=48, source_size=32)
    source = open_source(f"cxr:{ckpt}")
    assert (source.name, source.reads, source.square_size) == ("cxr-my-run", "cache", 32)
    assert source.labels == LABELS and source.missing_labels == ()
    model, _, pre = load_model(ckpt)
    rows = pl.read_parquet(manifest).head(4)
    cache = load_cache(cache_dir)
    squares = np.asarray(cache.images[rows_for(cache, rows["dicom_id"].to_list())])
    fed = pre.tensor(squares)  # what cxr evaluate gives the model
    assert torch.equal(source.from_squares(squares), fed)
    raw = tmp_path / "data" / "raw"
    for i, rel in enumerate(rows["image_path"]):
        assert torch.equal(source.load(raw / rel), fed[i])
    probs = source.classify(fed)
    np.testing.assert_array_equal(probs, next(predict_squares(model, pre, [squares])))
    emb = source.embed(fed)
    head = model.get_classifier() if hasattr(model, "get_classifier") else model.classifier
    assert emb.shape == (4, source.dim) and source.dim == head.in_features
    with torch.inference_mode():
        logits = model(fed)
        from_embedding = head(torch.from_numpy(emb))
    np.testing.assert_allclose(from_embedding.numpy(), logits.numpy(), rtol=1e-5, atol=1e-5)
    assert source.provenance["arch"] == arch
    with pytest.raises(CxrError, match="its own weights"):
        open_source(f"cxr:{ckpt}", weights=ckpt)


def test_small_cnn_pre_logits():
    from cxr.training.models import SmallCNN

    model = SmallCNN(num_classes=3).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.inference_mode():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
        assert pooled.shape == (2, model.classifier.in_features)
        assert torch.equal(model.classifier(pooled), model.forward_head(feats))
        assert torch.equal(model.forward_head(feats), model(x))


# ----------------------------------------------------------------------------- registry


def test_spec_forms():
    assert parse_spec("xrv:mimic_ch") == ("xrv", "mimic_ch")
    assert parse_spec("rad-dino") == ("rad-dino", "")
    assert parse_spec("cxr:models/run/best.pt") == ("cxr", "models/run/best.pt")
    assert parse_spec("cxr:C:/runs/best.pt") == ("cxr", "C:/runs/best.pt")


@pytest.mark.parametrize(
    ("spec", "hint"),
    [
        ("raddino", "rad-dino"),
        ("RAD-DINO", "rad-dino"),
        ("xvr:mimic_ch", "xrv:mimic_ch"),
        ("torchxrayvision:all", "xrv:all"),
        ("densenet121-res224-all", "xrv:densenet121-res224-all"),
        ("models/run/best.pt", "cxr:models/run/best.pt"),
    ],
)
def test_unknown_spec_lists_forms_and_suggests(spec, hint):
    with pytest.raises(CxrError) as err:
        open_source(spec)
    text = _one_line(str(err.value))
    assert "xrv:<weights>" in text and "rad-dino" in text and "cxr:<checkpoint>" in text
    assert text.endswith(f"did you mean {hint}?"), text


def test_unknown_xrv_weights_list_names_and_suggest():
    with pytest.raises(CxrError) as err:
        open_source("xrv:mimic-ch")
    text = _one_line(str(err.value))
    assert "densenet121-res224-mimic_ch" in text and "resnet50-res512-all" in text
    assert text.endswith("did you mean xrv:mimic_ch?")
    with pytest.raises(CxrError, match="needs a name"):
        open_source("xrv:")


def test_sources_help_is_one_line_per_form():
    lines = SOURCES_HELP.splitlines()
    assert len(lines) == len(SOURCE_FORMS) == 3
    for line, (form, _) in zip(lines, SOURCE_FORMS, strict=True):
        assert line.startswith(form)


def test_registry_import_loads_no_model_library():
    code = (
        "import sys\nimport cxr.pretrained.registry, cxr.pretrained.xrv\n"
        "heavy = {'torch', 'torchxrayvision', 'transformers'} & set(sys.modules)\n"
        "print(sorted(heavy))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_torchxrayvision_import_leaves_warnings_alone():
    """torchxrayvision ignores every warning at import; cxr imports it without that leaking."""
    code = (
        "import warnings\nbefore = list(warnings.filters)\n"
        "from cxr.pretrained.common import import_torchxrayvision\nimport_torchxrayvision()\n"
        "print(('ignore', None, Warning, None, 0) in warnings.filters)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_legacy_reader_refuses_to_mutate_an_allowed_class(tmp_path):
    """A legacy file that names only allowed globals but BUILDs state onto a class (which plain
    pickle would setattr process-wide) is refused, and the class is left untouched."""
    import io
    import pickletools

    from cxr.pretrained.safe_load import load_state_dict

    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf, _use_new_zipfile_serialization=False)
    raw, f, offsets = buf.getvalue(), io.BytesIO(buf.getvalue()), []
    for _ in range(5):  # magic, protocol, sys info, the object, the storage keys
        start = f.tell()
        for op, _arg, _pos in pickletools.genops(f):
            if op.name == "STOP":
                break
        offsets.append((start, f.tell()))
    s, e = offsets[3]
    payload = (
        # a module class as a persistent id (torch's weights-only unpickler refuses it, so cxr's
        # legacy reader reads the file), then BUILD {"pwned_": 1} onto torch's UntypedStorage
        b"(X\x06\x00\x00\x00modulectorch.nn.modules.linear\nLinear\nNNtQ0"
        b"ctorch.storage\nUntypedStorage\nN}X\x06\x00\x00\x00pwned_K\x01s\x86b0"
    )
    evil = tmp_path / "evil.pt"
    evil.write_bytes(raw[:s] + raw[s : s + 2] + payload + raw[s + 2 : e] + raw[e:])
    with pytest.raises(CxrError, match="refused to unpickle setting the state of"):
        load_state_dict(evil)
    assert not hasattr(torch.storage.UntypedStorage, "pwned_")
