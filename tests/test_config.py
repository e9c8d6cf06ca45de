import pytest

from ipb.config import (PROFILES, Config, ConfigError, config_hash, from_dict, load_config,
                        parse_overrides, to_dict, to_yaml)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_profiles_load_and_round_trip(profile):
    cfg = load_config(profile)
    assert cfg.profile == profile
    assert from_dict(to_dict(cfg)) == cfg
    assert to_yaml(cfg).startswith("profile:")


def test_paper_profile_keeps_paper_numbers():
    cfg = load_config("paper")
    assert (cfg.train.lr, cfg.train.momentum, cfg.train.weight_decay) == (0.005, 0.9, 1e-4)
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.lr_step_epoch) == (32, 200, 100)
    assert cfg.method.threshold == 0.65 and cfg.method.h_sign == "new_minus_old"
    assert cfg.patch.size == 128 and cfg.patch.ms_size == 224 and cfg.patch.min_cover == 0.25
    assert cfg.segmentation.order == "paper" and cfg.train.select_on == "val"
    assert cfg.split.folds == 10 and cfg.model.width == 1.0


def test_overrides_typed():
    cfg = load_config("smoke", ["train.epochs=7", "sweep.folds=[0,2]", "method.student_mask=false",
                                "augment.blur_sigma=[0.5, 1.5]", "synth.bit_depth=16"])
    assert cfg.train.epochs == 7 and cfg.sweep.folds == (0, 2)
    assert cfg.method.student_mask is False and cfg.augment.blur_sigma == (0.5, 1.5)
    assert cfg.synth.bit_depth == 16
    cfg = load_config("smoke", ["segmentation.well_mask=off", "train.use_gpu=on"])
    assert cfg.segmentation.well_mask == "off" and cfg.train.use_gpu is True


@pytest.mark.parametrize("item, words", [
    ("train.epochz=3", ["train.epochz", "epochs"]),
    ("nosuch.key=1", ["nosuch.key", "train"]),
    ("train.optimizer=rmsprop", ["train.optimizer", "'sgd'", "'adam'"]),
    ("train.epochs=2.5", ["train.epochs", "int"]),
    ("synth.bit_depth=12", ["synth.bit_depth", "8", "16"]),
    ("method.student_mask=maybe", ["method.student_mask", "bool"]),
])
def test_bad_keys_and_values_name_the_key(item, words):
    with pytest.raises(ConfigError) as e:
        load_config("smoke", [item])
    for w in words:
        assert w in str(e.value)


def test_bad_override_syntax_and_profile(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.epochs"])
    with pytest.raises(ConfigError, match="unknown profile"):
        load_config("nosuch")


def test_yaml_profile(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("base_profile: paper\ntrain:\n  epochs: 3\nmodel:\n  arch: hrnet_w18\n")
    cfg = load_config(str(f), ["train.lr=0.01"])
    assert cfg.profile == "mine" and cfg.train.epochs == 3 and cfg.model.arch == "hrnet_w18"
    assert cfg.train.lr == 0.01 and cfg.split.folds == 10
    f.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match="train.epochz"):
        load_config(str(f))


def test_hash_is_stable_and_sensitive():
    a, b = Config(), load_config("smoke")
    assert config_hash(a, 0, 1) == config_hash(Config(), 0, 1)
    assert config_hash(a, 0, 1) != config_hash(a, 1, 1)
    assert config_hash(a) != config_hash(b)
