"""teach.py: normal images taught to a trained model as a new version (``src/training/teach.py``), the versions
listed, and any of them made the active one (``src/inference/versions.py``)."""
from src.app import cli
from src.inference.versions import activate, list_versions, meta_path, parent_number, version_number
from src.utils.errors import InputError
from src.utils.io import read_json


def teach(args):
    if args.versions:
        for entry in list_versions(args.model_dir):
            parent = "trained" if entry["parent"] is None else f"from version {entry['parent']}, " \
                                                                f"{entry['added']} image(s) taught"
            print(f"{'*' if entry['active'] else ' '} version {entry['number']}: {parent} "
                  f"(model.json sha256 {entry['sha256'][:16]}...)")
        return 0
    if args.activate is not None or args.rollback:
        number = args.activate if args.activate is not None else _parent(args.model_dir)
        before = activate(args.model_dir, number)
        print(f"version {number} is active (was version {before})")
        return 0
    from src.inference.predict import list_inputs   # the network's packages only where they are needed
    from src.training.teach import teach_ok
    cli.setup_logging()
    cli.set_device(args.device_target, args.device_id)
    teach_ok(args.model_dir, [sample for _, sample in list_inputs(args.input)], args.pre_ckpt_path,
             activate=not args.keep_active)
    return 0


def _parent(model_dir):
    """The number of the active version's parent (an InputError for a trained model: nothing to roll back to)."""
    meta = read_json(meta_path(model_dir), "model file")
    parent = parent_number(meta)
    if parent is None:
        raise InputError(model_dir, f"version {version_number(meta)} is the trained model: no earlier version to "
                                    "roll back to")
    return parent
