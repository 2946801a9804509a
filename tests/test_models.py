"""Model factory and checkpoints: every name builds and runs, weights files, clear errors."""

import os
import re
import subprocess
import sys

import pytest
import torch

from cxr.core.errors import CxrError
from cxr.training.checkpoint import (
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from cxr.training.models import MODEL_NAMES, TIMM_MODELS, create_model

PRE = {
    "image_size": 32,
    "source_size": 32,
    "mean": 0.5,
    "std": 0.29,
    "in_chans": 1,
    "method": "pillow-draft+test",
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_builds_and_runs(name):
    torch.manual_seed(0)
    model = create_model(name, num_labels=5).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 32, 32))
    assert out.shape == (1, 5)


def test_model_names_are_the_timm_models_and_cxr_small():
    # the config checks names from its own list (no torch import): it must match the factory's
    assert set(MODEL_NAMES) == {*TIMM_MODELS, "cxr_small"}


def test_unknown_model_lists_valid_names():
    with pytest.raises(CxrError, match=r"densenet121.*cxr_small"):
        create_model("vgg99")


def test_weights_file_with_rgb_first_conv(tmp_path):
    rgb = create_model("resnet18", num_labels=1000, in_chans=3)
    path = tmp_path / "rgb.pt"
    torch.save(rgb.state_dict(), path)
    gray = create_model("resnet18", num_labels=14, pretrained=str(path))
    torch.testing.assert_close(gray.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))
    with pytest.raises(CxrError, match="not found"):
        create_model("resnet18", pretrained=str(tmp_path / "missing.pt"))


@pytest.mark.slow
def test_imagenet_offline_is_a_clear_error(tmp_path):
    code = (
        "from cxr.training.models import create_model\n"
        "from cxr.core.errors import CxrError\n"
        "try:\n    create_model('resnet18', pretrained='imagenet')\n"
        "except CxrError as e:\n    print('CXRERROR', e)\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path),
        "TORCH_HOME": str(tmp_path),
    }
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "CXRERROR" in out.stdout and "offline" in out.stdout


def test_checkpoint_round_trip_weights_only(tmp_path):
    model = create_model("cxr_small", num_labels=3)
    ckpt = make_checkpoint(
        model,
        arch="cxr_small",
        labels=["Atelectasis", "Edema", "Fracture"],
        preprocess=PRE | {"image_size": 64, "source_size": 64},
        label_policy={"uncertain": "ignore", "missing": "zeros", "overrides": {}},
        config={"epochs": 1},
        epoch=1,
        val_metrics={"val_macro_auroc": None},
    )
    save_checkpoint(tmp_path / "best.pt", ckpt)
    loaded = torch.load(tmp_path / "best.pt", weights_only=True)
    assert loaded["labels"] == ["Atelectasis", "Edema", "Fracture"]
    rebuilt = model_from_checkpoint(load_checkpoint(tmp_path / "best.pt"))
    assert not rebuilt.training
    x = torch.randn(1, 1, 64, 64)
    torch.testing.assert_close(rebuilt(x), model.eval()(x))
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(CxrError, match="not a loadable"):
        load_checkpoint(tmp_path / "bad.pt")


def _ckpt(model, labels):
    return make_checkpoint(
        model,
        arch="resnet18",
        labels=labels,
        preprocess=PRE,
        label_policy={},
        config={},
        epoch=1,
        val_metrics={},
    )


def test_weights_from_a_checkpoint_of_another_label_set_drop_the_classifier(tmp_path):
    torch.manual_seed(0)
    trained = create_model("resnet18", num_labels=2)
    path = tmp_path / "best.pt"
    save_checkpoint(path, _ckpt(trained, ["Edema", "Atelectasis"]))
    same = create_model("resnet18", 2, pretrained=str(path), labels=["Edema", "Atelectasis"])
    assert torch.equal(same.fc.weight, trained.fc.weight)
    # same number of outputs, other order: the head would silently swap labels; it is not loaded
    swapped = create_model("resnet18", 2, pretrained=str(path), labels=["Atelectasis", "Edema"])
    assert not torch.equal(swapped.fc.weight, trained.fc.weight)
    assert torch.equal(swapped.conv1.weight, trained.conv1.weight)  # the backbone is


def test_a_file_that_is_no_weights_is_a_one_line_error(tmp_path):
    bad = tmp_path / "w.pt"
    torch.save({"fn": print}, bad)  # not weights_only-loadable: torch's message is many lines
    with pytest.raises(CxrError, match="not a plain-weights weights file") as err:
        create_model("resnet18", pretrained=str(bad))
    assert "\n" not in str(err.value)
    _never_advises_unpickling(str(err.value))


def _never_advises_unpickling(message: str) -> None:
    assert "will not unpickle arbitrary objects" in message
    for advice in ("weights_only", "likely succeed", "trusted source"):
        assert advice not in message


def test_a_checkpoint_holding_python_objects_is_refused_without_advice_to_unpickle(tmp_path):
    """torch's own message says weights_only=False "will likely succeed": never pass that on."""
    model = create_model("cxr_small", num_labels=3)
    ckpt = _ckpt(model, ["Atelectasis", "Edema", "Fracture"]) | {"hook": print}
    path = tmp_path / "best.pt"
    torch.save(ckpt, path)
    with pytest.raises(CxrError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: not a plain-weights checkpoint") and "\n" not in message
    assert "(print)" in message  # the object it names
    _never_advises_unpickling(message)
    # a corrupt file is a corrupt file, not a refused object
    (tmp_path / "torn.pt").write_bytes(path.read_bytes()[:200])
    with pytest.raises(CxrError, match="not a loadable checkpoint") as err:
        load_checkpoint(tmp_path / "torn.pt")
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CxrError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_checkpoint_preprocess_block(tmp_path):
    from cxr.inference.runtime import Preprocess

    model = create_model("cxr_small", num_labels=2)
    pre = PRE | {"image_size": 24, "source_size": 48, "mean": 0.4, "std": 0.2}
    ckpt = make_checkpoint(
        model,
        arch="cxr_small",
        labels=["Edema", "Fracture"],
        preprocess=pre,
        label_policy={},
        config={},
        epoch=1,
        val_metrics={},
    )
    save_checkpoint(tmp_path / "best.pt", ckpt)
    loaded = load_checkpoint(tmp_path / "best.pt")
    assert loaded["preprocess"] == pre
    assert sorted(loaded["preprocess"]) == sorted(
        ["image_size", "source_size", "mean", "std", "in_chans", "method"]
    )
    assert Preprocess.from_checkpoint(loaded) == Preprocess(
        image_size=24, mean=0.4, std=0.2, in_chans=1, source_size=48, method=PRE["method"]
    )


def _legacy(model, **fields):
    """A checkpoint as cxr wrote them before the preprocess block existed."""
    return {
        "model": model.state_dict(),
        "arch": "cxr_small",
        "labels": ["Edema", "Fracture"],
        "image_size": 24,
        "normalization": {"mean": 0.4, "std": 0.2},
        "in_chans": 1,
        "label_policy": {"uncertain": "ignore", "missing": "zeros", "overrides": {}},
        "config": {"image_size": 24, "cache_size": 48},
        "epoch": 3,
        "val_metrics": {},
        "cxr_version": "0.1.0",
    } | fields


def test_checkpoint_of_the_older_format_loads_the_same_preprocessing(tmp_path):
    from cxr.inference.runtime import Preprocess

    model = create_model("cxr_small", num_labels=2)
    torch.save(_legacy(model), tmp_path / "old.pt")
    pre = Preprocess.from_checkpoint(load_checkpoint(tmp_path / "old.pt"))
    assert pre == Preprocess(image_size=24, mean=0.4, std=0.2, in_chans=1, source_size=48)
    assert pre.method == "" and pre.decoder_note() is None  # unknown then: nothing to compare
    # cache_size 0 (or absent) meant the cache of image_size
    torch.save(_legacy(model, config={"cache_size": 0}), tmp_path / "old0.pt")
    assert Preprocess.from_checkpoint(load_checkpoint(tmp_path / "old0.pt")).square_size == 24
    rebuilt = model_from_checkpoint(load_checkpoint(tmp_path / "old.pt"))
    x = torch.randn(1, 1, 24, 24)
    torch.testing.assert_close(rebuilt(x), model.eval()(x))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"image_size": -5}, "preprocess.image_size=-5: must be an integer >= 8"),
        ({"normalization": {"mean": 0.5, "std": 0.0}}, "preprocess.std=0.0: must be a finite"),
        ({"normalization": {"mean": float("nan"), "std": 0.2}}, "preprocess.mean=nan"),
        ({"in_chans": 0}, "preprocess.in_chans=0: must be an integer >= 1"),
        ({"config": {"cache_size": 2}}, "preprocess.source_size=2: must be an integer >= 8"),
        ({"labels": []}, "labels must be a non-empty list"),
    ],
)
def test_checkpoint_with_bad_preprocessing_values_is_refused_on_load(tmp_path, fields, message):
    model = create_model("cxr_small", num_labels=2)
    torch.save(_legacy(model, **fields), tmp_path / "old.pt")
    with pytest.raises(CxrError, match=re.escape(message)):
        load_checkpoint(tmp_path / "old.pt")
    # the same values in the new block are refused the same way
    block = {
        "image_size": fields.get("image_size", 24),
        "source_size": fields.get("config", {}).get("cache_size", 48),
        "mean": fields.get("normalization", {}).get("mean", 0.4),
        "std": fields.get("normalization", {}).get("std", 0.2),
        "in_chans": fields.get("in_chans", 1),
        "method": "",
    }
    new = _legacy(model, labels=fields.get("labels", ["Edema", "Fracture"]), preprocess=block)
    torch.save(new, tmp_path / "new.pt")
    with pytest.raises(CxrError, match=re.escape(message)):
        load_checkpoint(tmp_path / "new.pt")
