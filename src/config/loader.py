"""Configuration files: a YAML file of sections over the defaults of ``configs/patchcore.yaml``, then ``-o key=value``
overrides; the result is parsed once into a typed ``Config`` (``src/config/schema.py``)."""
import copy
import os

import yaml

from src.config.schema import Config, default_policy
from src.utils.errors import InputError

DEFAULT_CONFIG_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                   "configs", "patchcore.yaml")


def _read_yaml(path):
    if not os.path.isfile(path):
        raise InputError(path, "config file not found")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise InputError(path, f"invalid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InputError(path, "a config file must hold a mapping of sections")
    return data


def _merge(base, update, source):
    for key, value in update.items():
        if key not in base:
            raise InputError(source, f"unknown config entry '{key}'")
        if isinstance(base[key], dict):
            if isinstance(value, str) and "name" in base[key]:
                base[key] = {"name": value}   # a named component given by its name alone: its defaults
                continue
            if not isinstance(value, dict):
                raise InputError(source, f"config entry '{key}' must be a mapping")
            _merge(base[key], value, source)
        else:
            base[key] = value


def _find_key(config, dotted):
    """Resolve ``section.key`` (``section.key.option`` inside a mapping entry), a whole section
    (``val_config=null``) or a leaf name that is unique across sections."""
    if dotted in config:
        return config, dotted
    if "." in dotted:
        *path, key = dotted.split(".")
        owner = config
        for part in path:
            owner = owner.get(part) if isinstance(owner, dict) else None
        if isinstance(owner, dict) and key in owner:
            return owner, key
    else:
        owners = [sec for sec in config.values() if isinstance(sec, dict) and dotted in sec]
        if len(owners) == 1:
            return owners[0], dotted
        if len(owners) > 1:
            raise InputError(f"-o {dotted}", "ambiguous config entry: write it as section.key")
    raise InputError(f"-o {dotted}", "unknown config entry")


def apply_overrides(config, overrides):
    """Apply ``key=value`` strings; values are parsed as YAML (``0.01``, ``[layer2, layer3]``, ``true``)."""
    for item in overrides or []:
        if "=" not in item:
            raise InputError(f"-o {item}", "an override must look like key=value")
        dotted, raw = item.split("=", 1)
        section, key = _find_key(config, dotted.strip())
        try:
            section[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise InputError(f"-o {item}", "value is not valid YAML") from None
    return config


def load_config(path=None, overrides=None):
    """Defaults, then the user's file (if any), then overrides; parsed and validated once into a ``Config``."""
    config = _read_yaml(DEFAULT_CONFIG_PATH)
    if path:
        _merge(config, _read_yaml(path), path)
    apply_overrides(config, overrides)
    if not config["hr"]["enabled"]:
        del config["hr"]  # plain mode: the config (and bank.json) look exactly as without the section
    return Config.from_dict(config, path or DEFAULT_CONFIG_PATH)


def hiad_config(config, batch_size):
    """A ``Config`` from HiAD-style ``{"patch": ..., "data": ..., "postprocess": ..., "image_score": ...}`` sections
    over the defaults of configs/patchcore.yaml (HiAD's ``patch_size`` entry is ignored: the tiles come from the
    plan; a ``thumbnail`` section is the caller's), or from a ``Config``, with HiAD's ``batch_size``. HiAD's
    models are tiled: the image score is ``window_max`` unless a policy is given."""
    raw = copy.deepcopy(config.to_dict() if isinstance(config, Config) else load_config(None).to_dict())
    if not isinstance(config, Config):
        given_sections = dict(config or {})
        unknown = set(given_sections) - {"patch", "data", "postprocess", "image_score", "thumbnail"}
        if unknown:
            raise InputError("config", f"unknown sections {sorted(unknown)}")
        for section in ("patch", "data", "postprocess", "image_score"):
            given = {k: v for k, v in (given_sections.get(section) or {}).items() if k != "patch_size"}
            if set(given) - set(raw[section]):
                raise InputError("config", f"unknown {section} entries {sorted(set(given) - set(raw[section]))}")
            raw[section] = {**raw[section], **given}
    raw["image_score"]["policy"] = raw["image_score"]["policy"] or default_policy(tiled=True)
    raw["data"]["batch_size"] = batch_size
    return Config.from_dict(raw, "config")
