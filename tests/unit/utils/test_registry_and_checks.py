"""src/utils: the registry of named components and the positive-integer check."""
import pytest

from src.utils.checks import positive_int
from src.utils.errors import InputError
from src.utils.registry import Registry


class Box:
    def __init__(self, side, margin=0):
        self.side, self.margin = side, margin


def test_registry_builds_by_name_or_alias_and_lists_its_names():
    boxes = Registry("shape", "shape", {"box": Box}, {"square": "box"})
    assert boxes.names == ("box",) and list(boxes) == ["box"] and "square" in boxes and "disc" not in boxes
    assert boxes.canonical("square") == "box" and boxes["square"] is Box
    built = boxes.build("square", 3, margin=1)
    assert (type(built), built.side, built.margin) == (Box, 3, 1)


def test_registry_errors_name_the_config_key_the_kind_and_the_known_names():
    boxes = Registry("patch.shape", "shape", {"box": Box}, {"square": "box"})
    with pytest.raises(InputError, match=r"^patch.shape: unknown shape 'disc' \(known: box, square\)$"):
        boxes.build("disc")
    with pytest.raises(InputError, match=r"^patch.shape: bad parameters for shape 'box': .*colour"):
        boxes.build("box", 3, colour="red")


@pytest.mark.parametrize("value", [0, -1, 1.0, "2", True, None])
def test_positive_int_refuses_what_is_not_a_positive_int(value):
    with pytest.raises(InputError, match=r"^batch_size: must be a positive integer, got "):
        positive_int(value, "batch_size")


def test_positive_int_passes_positive_ints_and_optional_none():
    assert positive_int(3, "k") == 3 and positive_int(None, "k", optional=True) is None
    with pytest.raises(InputError, match="must be a positive integer or null, got 0"):
        positive_int(0, "k", optional=True)
