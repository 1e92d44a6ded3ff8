"""src/config: defaults, overrides and errors of the config, parsed once into typed settings."""
import pytest

import src  # noqa: F401
from src.config.loader import load_config
from src.utils.errors import InputError


def test_config_defaults_overrides_and_errors(tmp_path):
    config = load_config(None, ["percentage=0.01", "data.batch_size=2", "layers_to_extract_from=[layer2]"])
    assert config.patch.percentage == 0.01 and config.data.batch_size == 2
    assert config.patch.layers_to_extract_from == ("layer2",) and config.hr is None
    assert config.patch.backbone_name == "wideresnet50"
    assert config.to_dict()["patch"]["layers_to_extract_from"] == ["layer2"]   # as stored in model.json
    bad = tmp_path / "bad.yaml"
    bad.write_text("patch: {merge_size: 2}\n")
    with pytest.raises(InputError, match="merge_size"):
        load_config(str(bad))
    with pytest.raises(InputError, match="unknown config entry"):
        load_config(None, ["patch.nope=1"])
    with pytest.raises(InputError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_sampler_config_by_name_or_mapping_recorded_with_every_option(tmp_path):
    sampler = load_config(None, []).to_dict()["patch"]["sampler"]   # as stored in model.json
    assert sampler == {"name": "approx_greedy_coreset", "two_round_above": 400000, "chunk_size": 16384,
                       "oversample": 2.0}
    assert load_config(None, ["patch.sampler.two_round_above=0"]).patch.sampler["two_round_above"] == 0
    assert load_config(None, ["patch.sampler.two_round_above=null"]).patch.sampler["two_round_above"] is None
    named = tmp_path / "named.yaml"
    named.write_text("patch: {sampler: random}\n")   # a name alone: that sampler with its defaults
    assert load_config(str(named)).patch.sampler == {"name": "random"}
    assert load_config(None, ["sampler=identity"]).patch.sampler == {"name": "identity"}
    with pytest.raises(InputError, match="unknown sampler 'kmeans'"):
        load_config(None, ["patch.sampler.name=kmeans"])
    with pytest.raises(InputError, match="bad parameters for sampler"):
        load_config(None, ["patch.sampler={name: random, chunk_size: 3}"])


def test_validation_folds_are_an_entry_of_val_config_checked_when_loaded():
    assert load_config(None, []).val_config.folds is None   # leave-own-out until measured otherwise
    assert load_config(None, ["folds=4"]).val_config.folds == 4
    with pytest.raises(InputError, match="val_config.folds: must be at least 2"):
        load_config(None, ["folds=1"])
    with pytest.raises(InputError, match="val_config.folds: needs val_sample_ratio 0"):
        load_config(None, ["folds=4", "val_sample_ratio=0.2"])


def test_the_search_is_exact_for_the_plain_model_and_pca_refine_for_the_tiled_one():
    assert load_config(None, []).postprocess["search"] == "exact"
    tiled = load_config("configs/hr_patchcore.yaml", []).postprocess["search"]
    assert tiled == {"kind": "pca_refine", "dimension": 128, "candidates": 8}
    chosen = load_config(None, ["postprocess.search={kind: pca_refine, dimension: 96}"]).postprocess["search"]
    assert chosen == {"kind": "pca_refine", "dimension": 96, "candidates": 4}   # every entry recorded
    with pytest.raises(InputError, match="postprocess.search"):
        load_config(None, ["postprocess.search=fast"])
