"""Batched crop + flip + normalize against torchvision's per-image transforms."""

import torch
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from smallbatch.data import CropFlipNormalize, crop_flip


def test_each_image_is_torchvisions_padded_crop_and_flip():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 10, 10), dtype=torch.uint8)
    top, left = torch.randint(0, 9, (12,)), torch.randint(0, 9, (12,))
    flip = torch.arange(12) % 2 == 0
    out = crop_flip(images, 4, 10, top, left, flip)
    for i in range(12):
        expected = TF.crop(TF.pad(images[i], [4]), int(top[i]), int(left[i]), 10, 10)
        expected = TF.hflip(expected) if flip[i] else expected
        assert torch.equal(out[i], expected), i


def test_normalization_matches_to_tensor_and_normalize_and_eval_does_not_augment():
    mean, std = (0.2, 0.4, 0.6), (0.3, 0.2, 0.1)
    images = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8)
    pipeline = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    expected = torch.stack([pipeline(TF.to_pil_image(img)) for img in images])
    out = CropFlipNormalize(6, 2, mean, std)(images, train=False)
    torch.testing.assert_close(out, expected)


def test_training_draws_every_offset_and_flips_half_the_images():
    torch.manual_seed(1)
    images = torch.zeros(4000, 1, 5, 5, dtype=torch.uint8)
    images[:, :, 0, 0] = 255  # a marker in the top-left corner shows the crop and the flip
    out = CropFlipNormalize(5, 2, (0.0,), (1.0,))(images, train=True)
    assert out.shape == (4000, 1, 5, 5) and out.dtype == torch.float32
    marker = (out[:, 0] > 0.5).flatten(1).float().argmax(1)
    seen = set(zip((marker // 5).tolist(), (marker % 5).tolist(), strict=True))
    # row offset 0..2 and column 0..2 unflipped or 2..4 flipped: each (row, col) in range occurs
    assert {(r, c) for r in range(3) for c in range(5)} <= seen
    visible = (out[:, 0] > 0.5).flatten(1).any(1)
    # the marker stays in the crop when both offsets are at most 2 of 0..4: (3/5)^2 of the time
    assert abs(visible.float().mean().item() - 9 / 25) < 0.03
