import pytest

from flux158.sharding import combine_shards, seed_for, shard


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_are_disjoint_and_cover(count):
    items = list(range(23))
    parts = [shard(items, i, count) for i in range(count)]
    assert sorted(x for p in parts for x in p) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_combined_job_and_process_shards_partition_the_work():
    items = list(range(50))
    seen = []
    for job in range(3):
        for rank in range(4):
            seen += shard(items, *combine_shards(job, 3, rank, 4))
    assert sorted(seen) == items


def test_seed_depends_only_on_base_prompt_sample():
    assert seed_for(42, 3, 1) == seed_for(42, 3, 1)
    seeds = {seed_for(42, p, s) for p in range(100) for s in range(10)}
    assert len(seeds) == 1000
    assert seed_for(43, 3, 1) != seed_for(42, 3, 1)
    assert 0 <= seed_for(0, 0, 0) < 2**63


def test_bad_shard_index():
    with pytest.raises(ValueError, match="shard.index=2"):  # a ConfigError: both a ValueError and a Flux158Error
        combine_shards(2, 2)
