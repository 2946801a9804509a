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
    with pytest.raises(CxrError, match="another manifest"):
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
