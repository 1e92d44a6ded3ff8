"""src/data/augment.py: the flipped and rotated copies of the training images, and the settings' checks."""
import numpy as np
import pytest

from src.data.augment import augmented, check_augmentations, check_image_shape
from src.utils.errors import InputError


def test_each_copy_is_the_image_flipped_or_rotated():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    copies = augmented(image, ("hflip", "vflip", "rot90", "rot180", "rot270"))
    assert copies[0] is image and len(copies) == 6
    assert (copies[1] == image[:, ::-1]).all() and (copies[2] == image[::-1]).all()
    assert copies[3].shape == (3, 2, 3) and (copies[3] == np.rot90(image)).all()
    assert (copies[4] == image[::-1, ::-1]).all() and (np.rot90(copies[5]) == image).all()
    assert all(copy.flags.c_contiguous for copy in copies)


def test_the_setting_is_a_list_of_distinct_known_names():
    assert check_augmentations(None) == () and check_augmentations([]) == ()
    assert check_augmentations(["rot90", "hflip"]) == ("rot90", "hflip")
    for bad, needle in ((["mirror"], "unknown augmentation 'mirror'"), (["hflip", "hflip"], "distinct"),
                        ("hflip", "list")):
        with pytest.raises(InputError, match=needle) as caught:
            check_augmentations(bad)
        assert str(caught.value).startswith("data.train_augment: ")


def test_a_quarter_turn_needs_square_images():
    check_image_shape(("rot90", "hflip"), (64, 64))
    check_image_shape(("hflip", "rot180"), (64, 32))
    with pytest.raises(InputError, match="rot270 needs square images, the model's are 64x32"):
        check_image_shape(("hflip", "rot270"), (64, 32))
