"""Augmentation (data/augment.py) against hand-computed images, and the epoch's
batches (data/loader.py): the worker/pinned-memory path gives the in-memory path's
batches, ranks share one global batch's augmentation, and a resumed run with
augmentation ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import pytest
import torch

from snn2hw.data.augment import Augment, Draw, apply, check_image_shape, draw, step_generator
from snn2hw.data.loader import EpochBatches, epoch_order, iterate, plan_epoch
from snn2hw.errors import ConfigError
from snn2hw.train.config import build_config
from snn2hw.train.trainer import train

# one 3x3 image, channel 1 the negative of channel 0 (every op acts per channel alike)
IMG = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
IMG2 = torch.cat([IMG, -IMG], 1)


def _one(augment: Augment, offsets=None, flips=None, centres=None) -> torch.Tensor:
    t = lambda v, dt: None if v is None else torch.tensor([v], dtype=dt)  # noqa: E731
    out = apply(augment, IMG2, Draw(t(offsets, torch.long), t(flips, torch.bool), t(centres, torch.long)))
    assert torch.equal(out[:, 1], -out[:, 0])
    return out[0, 0]


@pytest.mark.parametrize("offsets,expected", [
    ((0, 0), [[0, 0, 0], [0, 1, 2], [0, 4, 5]]),
    ((1, 1), [[1, 2, 3], [4, 5, 6], [7, 8, 9]]),
    ((2, 1), [[4, 5, 6], [7, 8, 9], [0, 0, 0]]),
    ((0, 2), [[0, 0, 0], [2, 3, 0], [5, 6, 0]]),
])
def test_crop_after_zero_padding(offsets, expected):
    assert torch.equal(_one(Augment(crop_pad=1), offsets=offsets), torch.tensor(expected, dtype=torch.float))


def test_flip_and_no_flip():
    assert torch.equal(_one(Augment(flip=True), flips=True), torch.tensor([[3., 2, 1], [6, 5, 4], [9, 8, 7]]))
    assert torch.equal(_one(Augment(flip=True), flips=False), IMG[0, 0])


@pytest.mark.parametrize("size,centre,expected", [
    (2, (0, 2), [[1, 0, 0], [4, 5, 6], [7, 8, 9]]),       # rows [-1, 1), cols [1, 3), clipped
    (3, (2, 0), [[1, 2, 3], [0, 0, 6], [0, 0, 9]]),       # rows [1, 4), cols [-1, 2)
    (1, (1, 1), [[1, 2, 3], [4, 0, 6], [7, 8, 9]]),
])
def test_cutout_square_clipped_to_the_image(size, centre, expected):
    assert torch.equal(_one(Augment(cutout=size), centres=centre), torch.tensor(expected, dtype=torch.float))


def test_crop_then_flip_then_cutout():
    out = _one(Augment(crop_pad=1, flip=True, cutout=2), offsets=(2, 1), flips=True, centres=(0, 0))
    assert torch.equal(out, torch.tensor([[0., 5, 4], [9, 8, 7], [0, 0, 0]]))


def test_parse_and_refusals():
    assert Augment.parse("crop,flip,cutout") == Augment(4, True, 16)
    assert Augment.parse(" crop=2 , cutout=8") == Augment(2, False, 8)
    assert Augment.parse("none") is None and Augment.parse(None) is None
    assert Augment.parse("crop,flip,cutout").describe() == "crop=4,flip,cutout=16"
    for bad, words in (("rotate", "unknown"), ("crop=x", "integer"), ("flip=2", "flip takes no size")):
        with pytest.raises(ConfigError, match=words):
            Augment.parse(bad)
    with pytest.raises(ConfigError, match="augment 'rotate' is unknown"):
        build_config({"augment": "crop,rotate"})
    with pytest.raises(ConfigError, match=r"needs static image samples \(C, H, W\).*\(1, 40\)"):
        check_image_shape(Augment(flip=True), (1, 40), False)
    with pytest.raises(ConfigError, match="event sequences"):
        check_image_shape(Augment(flip=True), (2, 8, 8), True)


def test_draws_are_a_function_of_seed_epoch_step():
    aug = Augment(crop_pad=4, flip=True, cutout=16)
    a = draw(aug, 500, 32, 32, step_generator(1, 2, 3))
    b = draw(aug, 500, 32, 32, step_generator(1, 2, 3))
    c = draw(aug, 500, 32, 32, step_generator(1, 2, 4))
    assert all(torch.equal(x, y) for x, y in zip((a.offsets, a.flips, a.centres), (b.offsets, b.flips, b.centres)))
    assert not torch.equal(a.offsets, c.offsets)
    assert a.offsets.min() == 0 and a.offsets.max() == 8 and a.centres.max() == 31
    assert 0.4 < a.flips.float().mean() < 0.6


def _images(n=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 6, 6, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_in_memory_batches_are_the_epoch_order():
    x, y = _images()
    plan = plan_epoch(len(x), 8, seed=3, epoch=2)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(3 * 100_003 + 2))
    assert torch.equal(epoch_order(len(x), 3, 2), order)
    got = list(iterate(EpochBatches(x, y, plan)))
    assert len(got) == 5
    for i, (xb, yb, share) in enumerate(got):
        idx = order[i * 8:(i + 1) * 8]
        assert torch.equal(xb, x[idx]) and torch.equal(yb, y[idx]) and share == 1.0


@pytest.mark.parametrize("augment", [None, Augment(crop_pad=2, flip=True, cutout=3)])
def test_loader_with_workers_gives_the_in_memory_batches(augment):
    x, y = _images()
    batches = EpochBatches(x, y, plan_epoch(len(x), 8, 1, 0), augment, seed=1, epoch=0)
    here = list(iterate(batches))
    before = torch.get_rng_state()
    loaded = list(iterate(batches, workers=2, pin_memory=False))
    assert torch.equal(torch.get_rng_state(), before)  # the global stream is the methods' alone
    assert len(here) == len(loaded) == 5
    for (a, ya, sa), (b, yb, sb) in zip(here, loaded):
        assert torch.equal(a, b) and torch.equal(ya, yb) and float(sa) == float(sb)
    if augment is not None:  # the augmentation did something
        assert not torch.equal(here[0][0], x[epoch_order(len(x), 1, 0)[:8]])


def test_ranks_share_the_global_batch_augmentation():
    """Two ranks' parts of each batch, concatenated, are the one-process batch."""
    x, y = _images()
    aug = Augment(crop_pad=2, flip=True, cutout=3)

    def shard(rank):
        def cut(positions):
            part = torch.tensor_split(positions, 2)[rank]
            return part, len(part) / len(positions)
        return cut

    whole = list(iterate(EpochBatches(x, y, plan_epoch(len(x), 8, 5, 1), aug, 5, 1)))
    parts = [list(iterate(EpochBatches(x, y, plan_epoch(len(x), 8, 5, 1, shard(r)), aug, 5, 1))) for r in (0, 1)]
    for w, p0, p1 in zip(whole, *parts):
        assert torch.equal(torch.cat([p0[0], p1[0]]), w[0]) and torch.equal(torch.cat([p0[1], p1[1]]), w[1])
        assert p0[2] + p1[2] == 1.0


TINY_CONV = dict(dataset="digits", model="conv", channels=[4], epochs=2, timesteps=2, batch_size=256,
                 augment="crop=1,flip,cutout=3")


def test_augmented_run_resumes_bit_identically_and_workers_change_nothing(tmp_path):
    straight = train(build_config(TINY_CONV), tmp_path / "a", progress=False, device="cpu")
    train(build_config({**TINY_CONV, "epochs": 1}), tmp_path / "b", progress=False, device="cpu")
    resumed = train(None, tmp_path / "b", resume=True, epochs=2, progress=False, device="cpu", workers=2)
    plain = train(build_config({**TINY_CONV, "augment": None}), None, progress=False, device="cpu")
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert straight.history[-1]["train_loss"] != plain.history[-1]["train_loss"]
    assert straight.config.augment == "crop=1,flip,cutout=3"
