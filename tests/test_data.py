"""Dataset contract, batch gathering, sharding, augmentation, config parsing."""

import numpy as np
import pytest
import torch

from cxr.core.errors import CxrError
from cxr.mimic.policy import LabelPolicy
from cxr.mimic.schema import LABELS
from cxr.training.config import AugmentConfig, load_train_config, parse_override
from cxr.training.data import BatchLoader, CxrDataset, open_cache, read_manifest, shard
from train_fixtures import make_fixture


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return make_fixture(tmp_path_factory.mktemp("data"), size=32, failed=3)


def test_dataset_contract_and_no_subject_id(fixture):
    manifest, cache_dir = fixture
    df = read_manifest(manifest)
    cache = open_cache(cache_dir, manifest)
    ds = CxrDataset(df, cache, "train", LABELS, LabelPolicy())
    assert ds.n_excluded == 3
    assert len(ds) == df.filter(df["split"] == "train").height - 3
    item = ds[0]
    assert set(item) == {"img", "labels", "mask", "dicom_id", "study_id"}
    assert item["img"].dtype == torch.uint8 and item["img"].shape == (1, 32, 32)
    assert item["labels"].shape == (14,) and item["mask"].dtype == torch.float32
    assert not hasattr(ds, "subject_ids")
    assert "subject_id" not in repr(vars(ds))
    # the image is the one the cache stores for that dicom_id
    row = cache.index.filter(cache.index["dicom_id"] == item["dicom_id"])["row"][0]
    assert torch.equal(item["img"][0], torch.from_numpy(np.array(cache.images[row])))


def test_negbio_label_source_reads_the_negbio_columns(fixture):
    """label_source="negbio": the targets come from the negbio_<Label> columns; images of
    studies without a NegBio row are left out and counted; the CheXpert columns are not read."""
    import polars as pl

    from cxr.mimic.schema import NEGBIO_LABELLED, label_column

    manifest, cache_dir = fixture
    df = read_manifest(manifest)
    cache = open_cache(cache_dir, manifest)
    train = df.filter(pl.col("split") == "train")
    unlabelled = train["study_id"].sort()[0]
    negbio = {
        label_column(lab, "negbio"): pl.when(pl.col(lab) == 1.0).then(0.0).otherwise(1.0)
        for lab in LABELS
    }
    df = df.with_columns(
        (pl.col("study_id") != unlabelled).alias(NEGBIO_LABELLED),
        *(expr.cast(pl.Float32).alias(name) for name, expr in negbio.items()),
    )
    with pytest.raises(CxrError, match="no NegBio labels"):
        CxrDataset(df.drop(NEGBIO_LABELLED), cache, "train", LABELS, LabelPolicy(), "negbio")
    ds = CxrDataset(df, cache, "train", LABELS, LabelPolicy(), "negbio")
    chex = CxrDataset(df, cache, "train", LABELS, LabelPolicy())
    assert ds.n_unlabelled == train.filter(pl.col("study_id") == unlabelled).height > 0
    assert unlabelled not in ds.study_ids.tolist() and chex.n_unlabelled == 0
    kept = {d: i for i, d in enumerate(chex.dicom_ids)}
    for i, dicom in enumerate(ds.dicom_ids):  # the NegBio values are the flipped CheXpert ones
        raw = chex.raw_labels[kept[dicom]]
        assert np.array_equal(ds.raw_labels[i], np.where(raw == 1.0, 0.0, 1.0))


def test_label_source_is_checked_with_the_other_config_values():
    assert load_train_config(overrides=["label_source=negbio"]).label_source == "negbio"
    with pytest.raises(
        CxrError, match="label_source='radiologist': must be one of chexpert, negbio"
    ):
        load_train_config(overrides=["label_source=radiologist"])


def test_batch_gather_equals_items(fixture):
    manifest, cache_dir = fixture
    ds = CxrDataset(read_manifest(manifest), open_cache(cache_dir), "train", LABELS, LabelPolicy())
    batch = ds.batch(np.array([7, 2, 5, 11]))
    for k, p in enumerate(batch.positions.tolist()):
        item = ds[p]
        assert torch.equal(batch.img[k], item["img"])
        assert torch.equal(batch.labels[k], item["labels"])
        assert torch.equal(batch.mask[k], item["mask"])


def test_loader_epochs_and_shards(fixture):
    manifest, cache_dir = fixture
    ds = CxrDataset(read_manifest(manifest), open_cache(cache_dir), "train", LABELS, LabelPolicy())
    loader = BatchLoader(ds, 8, shuffle=True, seed=1, prefetch=2)
    loader.set_epoch(1)
    a = torch.cat([b.positions for b in loader])
    assert sorted(a.tolist()) == list(range(len(ds)))
    loader.set_epoch(2)
    b = torch.cat([b.positions for b in loader])
    assert a.tolist() != b.tolist()
    loader.set_epoch(1)
    assert torch.equal(torch.cat([b.positions for b in loader]), a)
    # two ranks: equal step counts, together every image
    parts = [BatchLoader(ds, 8, shuffle=True, seed=1, rank=r, world=2) for r in range(2)]
    assert len(parts[0]) == len(parts[1])
    seen = torch.cat([b.positions for p in parts for b in p])
    assert set(seen.tolist()) == set(range(len(ds)))
    # evaluation shards are exact
    assert sorted(np.concatenate([shard(11, r, 3, pad=False) for r in range(3)])) == list(range(11))


def test_cache_from_another_manifest_is_refused(fixture, tmp_path):
    _manifest, cache_dir = fixture
    other, _ = make_fixture(tmp_path / "other", size=32, seed=5)
    with pytest.raises(CxrError, match="another image set"):
        open_cache(cache_dir, other)
    with pytest.raises(CxrError, match="not in the cache"):
        CxrDataset(read_manifest(other), open_cache(cache_dir), "train", LABELS, LabelPolicy())


def test_augmentation_shapes_and_seed():
    from cxr.training.augment import eval_transform, train_transform

    x = torch.randint(0, 256, (4, 1, 40, 40), dtype=torch.uint8)
    cfg = AugmentConfig()
    a = train_transform(x, 32, 0.5, 0.29, cfg, torch.Generator().manual_seed(3))
    b = train_transform(x, 32, 0.5, 0.29, cfg, torch.Generator().manual_seed(3))
    c = train_transform(x, 32, 0.5, 0.29, cfg, torch.Generator().manual_seed(4))
    assert a.shape == (4, 1, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    e = eval_transform(x, 32, 0.5, 0.29)
    assert e.shape == (4, 1, 32, 32)
    # no augmentation at all = the eval view (whole image; bilinear vs antialiased resize aside)
    ident = AugmentConfig(scale_min=1.0, ratio_max=1.0, rotation=0, brightness=0, contrast=0)
    same = train_transform(x, 40, 0.0, 1.0, ident, torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, x.float() / 255, atol=1e-5, rtol=0)


def test_config_overrides_and_errors(tmp_path):
    cfg = load_train_config(
        None,
        [
            "epochs=3",
            "model=resnet18",
            "policy.uncertain=ones",
            "lr=1e-3",
            'policy.overrides."Pleural Effusion".uncertain=zeros',
            "augment.hflip=true",
        ],
    )
    assert cfg.epochs == 3 and cfg.model == "resnet18" and cfg.lr == 1e-3
    assert cfg.policy.rule_for("Pleural Effusion") == ("zeros", "zeros")
    assert cfg.augment.hflip is True
    assert parse_override("out=models/x") == {"out": "models/x"}
    with pytest.raises(CxrError, match="unknown keys"):
        load_train_config(None, ["epoch=3"])
    with pytest.raises(CxrError, match="should be int"):
        load_train_config(None, ["epochs=three"])
    with pytest.raises(CxrError, match="not found"):
        load_train_config(tmp_path / "nope.toml")


# Every bad value is refused by the config itself, in one line naming the key and the range.
BAD_VALUES = [
    ("lr=nan", "lr=nan: must be a finite number > 0"),
    ("lr=inf", "lr=inf: must be a finite number > 0"),
    ("lr=0", "lr=0.0: must be a finite number > 0"),
    ("weight_decay=-1", "weight_decay=-1.0: must be a finite number >= 0"),
    ("threads=-1", "threads=-1: must be an integer >= 0"),
    ("seed=-1", "seed=-1: must be an integer in [0, 4294967295]"),
    ("seed=4294967296", "seed=4294967296: must be an integer in [0, 4294967295]"),
    ("std=-1", "std=-1.0: must be a finite number > 0"),
    ("std=0", "std=0.0: must be a finite number > 0"),
    ("mean=nan", "mean=nan: must be a finite number in [0, 1]"),
    ("grad_clip=-1", "grad_clip=-1.0: must be a finite number >= 0"),
    ("min_lr_ratio=2", "min_lr_ratio=2.0: must be a finite number in [0, 1]"),
    ("patience=-1", "patience=-1: must be an integer >= 0"),
    ("warmup_epochs=-1", "warmup_epochs=-1.0: must be a finite number >= 0"),
    ("epochs=0", "epochs=0: must be an integer >= 1"),
    ("batch_size=0", "batch_size=0: must be an integer >= 1"),
    ("image_size=4", "image_size=4: must be an integer >= 8"),
    ("cache_size=-1", "cache_size=-1: must be 0 (the cache of image_size) or an integer >= 8"),
    ("prefetch=-2", "prefetch=-2: must be an integer >= 0"),
    ("limit_train_batches=-1", "limit_train_batches=-1: must be an integer >= 0"),
    ("stop_after_epochs=-1", "stop_after_epochs=-1: must be an integer >= 0"),
    ("device=gpu", "device='gpu': must be one of auto, cpu, cuda"),
    ("pos_weight=yes", "pos_weight='yes': must be one of none, auto"),
    ("model=vgg", "model='vgg': must be one of densenet121"),
    ("augment.scale_min=2", "augment.scale_min=2.0: must be a finite number in (0, 1]"),
    ("augment.scale_min=0", "augment.scale_min=0.0: must be a finite number in (0, 1]"),
    ("augment.ratio_max=0.5", "augment.ratio_max=0.5: must be a finite number >= 1"),
    ("augment.rotation=-3", "augment.rotation=-3.0: must be a finite number in [0, 180]"),
    ("augment.brightness=nan", "augment.brightness=nan: must be a finite number in [0, 1]"),
    ("augment.contrast=5", "augment.contrast=5.0: must be a finite number in [0, 1]"),
    ("labels=[]", "labels=[]: the label list must not be empty"),
    ("labels=['Edema','Edema']", "['Edema'] listed more than once"),
    ("policy.uncertain=maybe", "policy.uncertain='maybe': must be one of ignore, zeros, ones"),
    ("policy.missing=ones", "policy.missing='ones': must be one of zeros, ignore"),
    ("policy.overrides.Edema=ones", "policy.overrides.Edema='ones': must be a table"),
    (
        "policy.overrides.Edema.uncertain=2",
        "policy.overrides.Edema.uncertain=2: must be one of ignore, zeros, ones",
    ),
    ("amp=1", "amp = 1 should be bool"),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_config_value_is_one_line_exit_1_and_writes_nothing(
    override, message, fixture, tmp_path, capsys
):
    from cxr.cli import main

    manifest, cache = fixture
    run = tmp_path / "run"
    args = ["train", "model=cxr_small", "image_size=32", f"manifest={manifest}", f"cache={cache}"]
    assert main([*args, override, "--out", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("cxr train: error: config: ") and message in err, err
    assert not run.exists()


def test_every_config_key_has_a_range():
    """A key added to TrainConfig or AugmentConfig without a range check fails here."""
    import dataclasses

    from cxr.training import config as c

    checked = set(c._TRAIN_RANGES) | set(c._NESTED)
    assert {f.name for f in dataclasses.fields(c.TrainConfig)} == checked
    assert {f.name for f in dataclasses.fields(AugmentConfig)} == set(c._AUGMENT_RANGES)
    # and the shipped configs pass them
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml")):
        load_train_config(path)


def test_config_that_is_a_directory_is_one_line(tmp_path, capsys):
    from cxr.cli import main

    assert main(["train", "--config", str(tmp_path), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a directory, not a config file" in err
