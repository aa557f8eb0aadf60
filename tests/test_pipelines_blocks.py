"""How the pending inputs are cut into blocks (one block is one unit of work): small blocks for
small jobs, so a lost task redoes little; a bounded number for long listings, so building the
dataset stays cheap on the driver (60,000 blocks of 4 took 67 s and 420 MiB for 240,000 inputs)."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from pipelines.inputs import InputItem  # noqa: E402
from pipelines.job import MAX_PENDING_BLOCKS, pending_block_rows, pending_dataset  # noqa: E402


def listing(count: int) -> list[InputItem]:
    return [InputItem(id=f"class{i % 400:03d}/clip{i:07d}.mp4", path=f"/data/train/class{i % 400:03d}/clip{i:07d}.mp4")
            for i in range(count)]


def test_a_job_keeps_its_own_block_size_while_the_blocks_stay_few():
    assert MAX_PENDING_BLOCKS == 2000
    assert pending_block_rows(10, 4) == 4
    assert pending_block_rows(8000, 4) == 4  # exactly 2000 blocks of 4


def test_a_long_listing_gets_bigger_blocks_rather_than_more_of_them():
    assert pending_block_rows(8001, 4) == 5
    assert pending_block_rows(240_000, 4) == 120
    assert pending_block_rows(240_000, 1) == 120
    assert pending_block_rows(240_000, 500) == 500  # a job asking for bigger blocks gets them


def test_a_short_listing_is_every_input_once_in_blocks_of_the_jobs_size(ray_cluster):
    items = listing(10)
    dataset = pending_dataset(items, 4)
    assert dataset.num_blocks() == 3
    assert dataset.take_all() == [{"id": item.id, "path": item.path} for item in items]


def test_240k_inputs_become_2000_blocks(ray_cluster):
    dataset = pending_dataset(listing(240_000), 4)
    assert dataset.num_blocks() == 2000
    assert dataset.count() == 240_000
