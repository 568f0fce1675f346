"""Batches of any structure (autolr.batches): moved to the device whole, counted, and a user's own
DataLoader or iterable dataset used as it is."""

from __future__ import annotations

import collections

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from autolr.batches import Batches, LoaderBatches, batch_size, move_to_device

META = torch.device("meta")  # a device every machine has: a tensor that moved is visibly elsewhere

Pair = collections.namedtuple("Pair", ["inputs", "targets"])


def test_move_to_device_reaches_every_tensor_and_keeps_the_structure():
    batch = {
        "x": torch.ones(4, 3),
        "pair": Pair(torch.zeros(4), [torch.ones(4, 2), ("label", 7)]),
        "ids": [1, 2, 3],
        "meta": None,
    }
    moved = move_to_device(batch, META)
    assert moved["x"].device == META and moved["x"].shape == (4, 3)
    assert isinstance(moved["pair"], Pair) and moved["pair"].inputs.device == META
    assert isinstance(moved["pair"].targets, list) and moved["pair"].targets[0].device == META
    assert moved["pair"].targets[1] == ("label", 7)  # non-tensors as they were
    assert moved["ids"] == [1, 2, 3] and moved["meta"] is None
    assert batch["x"].device.type == "cpu"  # the caller's batch is not changed in place


def test_move_to_device_keeps_a_mapping_type():
    moved = move_to_device(collections.OrderedDict(a=torch.ones(2)), META)
    assert type(moved) is collections.OrderedDict and moved["a"].device == META


def test_move_to_device_leaves_a_non_tensor_alone():
    marker = object()
    assert move_to_device(marker, META) is marker


def test_batch_size_is_the_leading_dimension_of_the_first_tensor():
    assert batch_size((torch.zeros(5, 3), torch.zeros(5))) == 5
    assert batch_size({"ids": ["a", "b"], "inputs": {"pixels": torch.zeros(7, 1, 8, 8)}, "y": torch.zeros(3)}) == 7
    assert batch_size(Pair(torch.zeros(2), torch.zeros(9))) == 2


def test_batch_size_of_a_batch_without_tensors_says_what_it_got():
    with pytest.raises(TypeError, match=r"batch: expected a tensor somewhere in it \(to count its samples\), got a dict with keys \['a'\]"):
        batch_size({"a": [1, 2]})
    with pytest.raises(TypeError, match="0-dimensional"):
        batch_size(torch.tensor(3.0))


class Words(Dataset):
    """Samples that default collate cannot stack: a user's own collate pads them."""

    def __init__(self, n: int = 10) -> None:
        self.lengths = [1 + i % 4 for i in range(n)]

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i):
        return torch.arange(self.lengths[i])


def pad(samples):
    tokens = torch.nn.utils.rnn.pad_sequence(samples, batch_first=True)
    return {"tokens": tokens, "lengths": torch.tensor([len(s) for s in samples])}


def test_a_user_loader_is_used_as_it_is():
    loader = DataLoader(Words(10), batch_size=4, collate_fn=pad)
    batches = LoaderBatches(loader, "cpu")
    assert len(batches) == 3
    seen = list(batches)
    assert [batch_size(b) for b in seen] == [4, 4, 2]  # its own batch size, last batch included
    assert seen[0]["tokens"].shape == (4, 4) and seen[0]["lengths"].tolist() == [1, 2, 3, 4]  # its collate
    assert len(list(batches)) == 3  # a second epoch is a second pass


class Counter(IterableDataset):
    """An endless stream of numbered samples, with no length."""

    def __iter__(self):
        i = 0
        while True:
            yield torch.tensor([float(i)])
            i += 1


def test_an_iterable_dataset_runs_steps_per_epoch_and_goes_on_where_it_stopped():
    batches = LoaderBatches(DataLoader(Counter(), batch_size=2), "cpu", steps_per_epoch=3)
    assert len(batches) == 3
    first = [b.flatten().tolist() for b in batches]
    second = [b.flatten().tolist() for b in batches]
    assert first == [[0, 1], [2, 3], [4, 5]]
    assert second == [[6, 7], [8, 9], [10, 11]]  # the stream goes on, it does not restart


def test_a_finite_iterable_restarts_when_it_runs_out():
    batches = LoaderBatches([torch.zeros(2), torch.ones(2)], "cpu", steps_per_epoch=3)
    assert [b[0].item() for b in batches] == [0.0, 1.0, 0.0]


def test_a_one_shot_iterator_ends_the_epoch_when_it_is_spent():
    batches = LoaderBatches(iter([torch.zeros(2)]), "cpu", steps_per_epoch=3)
    assert len(list(batches)) == 1
    assert list(batches) == []


def test_data_without_a_length_needs_steps_per_epoch():
    with pytest.raises(TypeError, match=r"data: DataLoader has no length; pass steps_per_epoch \(batches per epoch\)"):
        LoaderBatches(DataLoader(Counter(), batch_size=2), "cpu")


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_steps_per_epoch_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match=rf"steps_per_epoch: expected an integer >= 1 or None, got {bad}"):
        LoaderBatches([torch.zeros(1)], "cpu", steps_per_epoch=bad)


class Records(Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i):
        return {"x": torch.full((2,), float(i)), "y": torch.tensor(i)}


def test_autolr_batches_of_a_dataset_of_dicts_are_dicts():
    seen = list(Batches(Records(), 4, torch.device("cpu"), seed=0))
    assert [batch_size(b) for b in seen] == [4, 2]
    assert sorted(torch.cat([b["y"] for b in seen]).tolist()) == list(range(6))
