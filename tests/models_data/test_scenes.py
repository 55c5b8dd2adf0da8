"""Fashion-MNIST scenes (issue 34): deterministic, each split's garments only, labels that
match the pixels, a checksummed cache, and an image and its label map augmented together."""

import json

import pytest
import torch

from smallbatch.data.augment import CropFlipNormalize
from smallbatch.data.scenes import SceneSetting, load_or_make_scenes, make_scenes

SMALL = SceneSetting(canvas=40, garments=(2, 3), scale=(1.0, 1.4), train_scenes=12,
                     test_scenes=6, seed=3)  # fmt: skip


def _garments(value: int, n: int = 20):
    """Garments of one grey value (a 16×16 square in a 28×28 image) and labels 0..n-1 mod 10."""
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    images[:, 6:22, 6:22] = value
    return images, torch.arange(n) % 10


def test_scenes_are_deterministic_and_their_labels_match_the_pixels():
    images, labels = _garments(200)
    a = make_scenes(images, labels, 12, SMALL, stream=0)
    b = make_scenes(images, labels, 12, SMALL, stream=0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    other = make_scenes(images, labels, 12, SMALL, stream=1)
    assert not torch.equal(a[1], other[1])  # the splits draw from separate streams
    scenes, maps = a
    assert scenes.shape == (12, 1, 40, 40) and maps.shape == (12, 40, 40)
    assert torch.equal(maps > 0, scenes[:, 0] > SMALL.threshold)  # labelled = garment pixels
    assert int(maps.max()) <= 10 and (maps > 0).any()


def test_each_split_draws_only_its_own_garments(tmp_path):
    def garments():
        return _garments(100), _garments(250)  # train garments are 100, test ones 250

    s = load_or_make_scenes(tmp_path, SMALL, garments)
    train_values = set(s["train_images"].unique().tolist())
    test_values = set(s["test_images"].unique().tolist())
    assert 250 not in train_values and 100 in train_values
    assert 100 not in test_values and 250 in test_values


def test_the_cache_is_checked_and_made_again_when_it_does_not_match(tmp_path, capsys):
    calls = []

    def garments():
        calls.append(1)
        return _garments(120), _garments(180)

    first = load_or_make_scenes(tmp_path, SMALL, garments)
    again = load_or_make_scenes(tmp_path, SMALL, garments)
    assert len(calls) == 1 and torch.equal(first["train_maps"], again["train_maps"])
    meta_file = next(tmp_path.glob("scenes-*.json"))
    meta = json.loads(meta_file.read_text())
    meta["sha256"] = "0" * 64  # as if the data file had been damaged
    meta_file.write_text(json.dumps(meta))
    remade = load_or_make_scenes(tmp_path, SMALL, garments)
    assert len(calls) == 2 and torch.equal(first["train_maps"], remade["train_maps"])


def test_bad_scene_settings_are_refused():
    with pytest.raises(ValueError, match="28·hi <= canvas"):
        SceneSetting(canvas=40, scale=(1.0, 2.0)).check()
    with pytest.raises(ValueError, match="garments"):
        SceneSetting(garments=(3, 2)).check()


def test_an_image_and_its_label_map_are_augmented_with_the_same_draws():
    # every image's label map is a function of its pixels (label = value // 20): after a
    # crop-and-flip the relation holds only if both moved alike
    g = torch.Generator().manual_seed(0)
    images = (torch.randint(1, 11, (16, 1, 24, 24), generator=g) * 20).to(torch.uint8)
    maps = (images[:, 0] // 20).to(torch.uint8)
    aug = CropFlipNormalize(24, 4, (0.0,), (1.0,))
    torch.manual_seed(1)
    x, y = aug.pair(images, maps, train=True)
    pixels = (x[:, 0] * 255).round().long()
    assert y.dtype == torch.long
    assert torch.equal(pixels // 20, y)  # padding: value 0 and label 0 alike
    assert not torch.equal(y, maps.long())  # it did move them
    # the check catches a pair augmented apart: the label maps with other draws
    _, y_apart = aug.pair(images, maps, train=True)
    assert not torch.equal(pixels // 20, y_apart)


def test_evaluation_leaves_the_pair_in_place():
    images = torch.randint(0, 255, (2, 1, 8, 8), dtype=torch.uint8)
    maps = torch.randint(0, 11, (2, 8, 8), dtype=torch.uint8)
    x, y = CropFlipNormalize(8, 2, (0.5,), (0.25,)).pair(images, maps, train=False)
    assert torch.equal(y, maps.long())
    torch.testing.assert_close(x, (images.float() / 255 - 0.5) / 0.25)
