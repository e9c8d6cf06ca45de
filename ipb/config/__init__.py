"""Configuration: frozen dataclasses, profiles, YAML files and `key.sub=value` overrides.

    ipb config --profile smoke model.arch=hrnet_w18 train.epochs=3   # print the resolved config

Every switch named in shared/PAPER.md is a field with the default named there. A config is
built by `load_config(profile, overrides)`: profile defaults (or a YAML file), then overrides,
each checked against the field's type; an unknown key or a bad value raises `ConfigError` naming
the key and what is allowed. By concern:
  schema.py    the dataclasses (one per section), value RANGES, validate
  settings.py  each method's own keys (`method.<group>.*`) and presets, read from its file
  profiles.py  PROFILES (smoke, paper, study) and PRESETS (from the methods' settings)
  load.py      load_config, apply, parse_overrides, flatten: building a checked config (old
               flat method keys mapped to their keys now)
  identity.py  to_dict, to_yaml, from_dict, config_hash, trial_hash: what a trial is
  paths.py     is_uri, expand_path, expand_location
Import from `ipb.config`; the modules are how it is kept, not separate APIs.
"""
from ipb.config.identity import config_hash, from_dict, identity, to_dict, to_yaml, trial_hash
from ipb.config.load import apply, flatten, load_config, parse_overrides
from ipb.config.paths import expand_location, expand_path, is_uri
from ipb.config.profiles import PRESETS, PROFILES
from ipb.config.schema import (PAPER_CLASSES, RANGES, AugmentConfig, Config, ConfigError,
                               DataConfig, MethodCommon, MethodConfig, ModelConfig, PatchConfig,
                               SegmentationConfig, SplitConfig, SweepConfig, SynthConfig,
                               TrackingConfig, TrainConfig, validate)
from ipb.config.settings import knob, method_settings

__all__ = ["PAPER_CLASSES", "PRESETS", "PROFILES", "RANGES", "AugmentConfig", "Config",
           "ConfigError", "DataConfig", "MethodCommon", "MethodConfig", "ModelConfig",
           "PatchConfig", "SegmentationConfig", "SplitConfig", "SweepConfig", "SynthConfig",
           "TrackingConfig", "TrainConfig", "apply", "config_hash", "expand_location",
           "expand_path", "flatten", "from_dict", "identity", "is_uri", "knob", "load_config",
           "method_settings", "parse_overrides", "to_dict", "to_yaml", "trial_hash", "validate"]
