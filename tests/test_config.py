import json
from pathlib import Path

import pytest

from ipb.config import (PROFILES, Config, ConfigError, config_hash, from_dict, load_config,
                        parse_overrides, to_dict, to_yaml, trial_hash)


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
    assert cfg.method.mpl.threshold == 0.65 and cfg.method.mpl.h_sign == "new_minus_old"
    assert cfg.patch.size == 128 and cfg.patch.ms_size == 224 and cfg.patch.min_cover == 0.25
    assert cfg.segmentation.order == "paper" and cfg.train.select_on == "val"
    assert cfg.split.folds == 10 and cfg.model.width == 1.0


def test_overrides_typed():
    cfg = load_config("smoke", ["train.epochs=7", "sweep.folds=[0,2]", "method.mpl.student_mask=false",
                                "augment.blur_sigma=[0.5, 1.5]", "synth.bit_depth=16"])
    assert cfg.train.epochs == 7 and cfg.sweep.folds == (0, 2)
    assert cfg.method.mpl.student_mask is False and cfg.augment.blur_sigma == (0.5, 1.5)
    assert cfg.synth.bit_depth == 16
    cfg = load_config("smoke", ["segmentation.well_mask=off", "train.use_gpu=on"])
    assert cfg.segmentation.well_mask == "off" and cfg.train.use_gpu is True


@pytest.mark.parametrize("item, words", [
    ("train.epochz=3", ["train.epochz", "epochs"]),
    ("nosuch.key=1", ["nosuch.key", "train"]),
    ("train.optimizer=rmsprop", ["train.optimizer", "'sgd'", "'adam'"]),
    ("train.epochs=2.5", ["train.epochs", "int"]),
    ("synth.bit_depth=12", ["synth.bit_depth", "8", "16"]),
    ("method.mpl.student_mask=maybe", ["method.mpl.student_mask", "bool"]),
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


# -- method settings (ipb/config/settings.py) ---------------------------------------------------
OLD_CONFIGS = Path(__file__).parent / "data" / "configs_before_method_settings.json"


def test_configs_of_before_method_settings_load_with_their_hashes():
    """Trial configs stored by ipb before the methods' own keys (flat `method.threshold`,
    `method.fixmatch_threshold`, ...) load, land in `method.<group>.*` and keep their trial
    hash, so a sweep still finds their finished runs."""
    stored = json.loads(OLD_CONFIGS.read_text())
    assert "fixmatch_threshold" in stored[1]["config"]["method"]
    cfgs = [from_dict(s["config"]) for s in stored]
    assert [trial_hash(c) for c in cfgs] == [s["trial_hash"] for s in stored]
    learn, fixmatch, cc, robust, gan = cfgs
    assert learn.method.mpl.student_target == "colony" and learn.method.pseudo_patches == 4
    assert fixmatch.method.fixmatch.threshold == 0.9 and fixmatch.method.lambda_u == 2.0
    assert cc.method.contrastive_clustering.classifier == "hungarian"
    assert (cc.method.pretext.epochs, cc.method.pretext.proj_dim) == (3, 32)
    assert robust.method.mpl.ema == 0.0 and robust.method.mpl.dist_prior == (0.1, 0.2, 0.3, 0.4)
    assert gan.method.gan_balanced.epochs == 2 and gan.method.simclr.temperature == 0.2
    # and the same keys typed today give the same trials
    assert trial_hash(load_config("smoke", [
        "method.name=fixmatch", "method.fixmatch.threshold=0.9", "method.lambda_u=2"])) == \
        stored[1]["trial_hash"]


def test_a_key_given_in_both_spellings_is_refused():
    with pytest.raises(ConfigError, match="method.fixmatch_threshold.*before method settings"):
        load_config("smoke", ["method.fixmatch_threshold=0.9", "method.fixmatch.threshold=0.8"])
    cfg = load_config("smoke", ["method.fixmatch_threshold=0.9"])    # one spelling: fine
    assert cfg.method.fixmatch.threshold == 0.9


def test_every_numeric_method_setting_has_a_range_and_every_old_key_maps():
    from dataclasses import fields

    from ipb.config.settings import legacy_keys, settings_classes
    for group, cls in settings_classes().items():
        for f in fields(cls):
            if f.type in (int, float):
                assert f.metadata.get("range"), f"method.{group}.{f.name} has no range"
    old = legacy_keys()
    assert len(set(old.values())) == len(old)    # one old name per key, none shared
    assert old["method.threshold"] == "method.mpl.threshold"
    assert old["method.simclr_epochs"] == "method.pretext.epochs"
    with pytest.raises(ConfigError, match="method.pretext.epochs"):
        load_config("smoke", ["method.simclr_epochs=-1"])


@pytest.mark.parametrize("body, words", [
    ("@dataclass(frozen=True)\nclass Bad:\n    x: float = knob(torch.pi)\n",
     ["bad_settings.py", "may use only", "torch"]),
    ("@dataclass(frozen=True)\nclass Bad:\n    eval: str = knob('a')\n",
     ["bad_settings.py", "eval", "rename it"]),
    ("class Bad:\n    x: float = knob(1.0)\n", ["bad_settings.py", "frozen"]),
    ("@dataclass\nclass Bad:\n    x: float = knob(1.0)\n", ["bad_settings.py", "frozen"]),
    ("@dataclass(frozen=True)\nclass Bad:\n    x: tuple = knob([1, 2])\n",
     ["bad_settings.py:6", "immutable"]),
    ("@dataclass(frozen=True)\nclass Bad:\n    x: float\n    y: float = knob(1.0)\n",
     ["bad_settings.py:6", "Bad.x", "default"]),
])
def test_a_settings_class_the_config_cannot_read_is_named(tmp_path, body, words):
    from ipb.config import settings
    (tmp_path / "bad_settings.py").write_text("import torch\n\n\n@method_settings('bad')\n" + body)
    with pytest.raises(settings.SettingsError) as e:
        settings.discover(tmp_path)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_a_settings_class_may_use_the_decorator_through_its_module(tmp_path):
    from ipb.config import settings
    (tmp_path / "ok.py").write_text(
        "from ipb.config import settings\n\n\n@settings.method_settings('ok')\n"
        "@dataclass(frozen=True)\nclass Ok:\n    x: float = knob(1.0, '[0, 2]')\n")
    found = settings.discover(tmp_path)
    assert list(found) == ["ok"] and found["ok"]().x == 1.0


def test_a_group_or_old_key_shadowing_a_common_key_and_a_second_paper_preset_are_refused(
        monkeypatch):
    from dataclasses import dataclass

    from ipb.config import profiles, schema

    @dataclass(frozen=True)
    class Shadow:
        x: float = 1.0
    monkeypatch.setattr(schema, "settings_classes", lambda: {"lambda_u": Shadow})
    with pytest.raises(ConfigError, match="'lambda_u' is a common method key"):
        schema._method_sections()
    monkeypatch.setattr(schema, "settings_classes", lambda: {"x": Shadow})
    monkeypatch.setattr(schema, "legacy_keys", lambda: {"method.name": "method.x.x"})
    with pytest.raises(ConfigError, match="common key method.name"):
        schema._method_sections()
    monkeypatch.setattr(profiles, "settings_presets", lambda: {"paper": {}})
    with pytest.raises(ConfigError, match="preset 'paper'"):
        profiles._presets()
