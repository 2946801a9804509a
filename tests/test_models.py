"""Model factory and checkpoints: every name builds and runs, weights files, clear errors."""

import os
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
from cxr.training.models import MODEL_NAMES, create_model


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_builds_and_runs(name):
    torch.manual_seed(0)
    model = create_model(name, num_labels=5).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 32, 32))
    assert out.shape == (1, 5)


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
        image_size=64,
        mean=0.5,
        std=0.29,
        in_chans=1,
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
        image_size=32,
        mean=0.5,
        std=0.29,
        in_chans=1,
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
    with pytest.raises(CxrError, match="not a loadable weights file") as err:
        create_model("resnet18", pretrained=str(bad))
    assert "\n" not in str(err.value)
