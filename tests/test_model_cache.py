"""The one cache policy of the pack's loader nodes (nodes/model_cache.py)."""

from __future__ import annotations

import os

from test_inpaint_parity import pack_module


def test_one_entry_per_file_version_and_least_recently_used_eviction(comfy_runtime, tmp_path):
    """Mutations caught: a stale entry kept beside its replacement (two copies of one model), a
    changed file served from the cache, eviction of the most recently used entry."""
    ModelCache = pack_module(comfy_runtime, "nodes.model_cache").ModelCache
    files = []
    for name in "abc":
        (tmp_path / name).write_text(name)
        files.append(str(tmp_path / name))
    loads: list[str] = []

    def loader(path: str):
        def load() -> str:
            loads.append(os.path.basename(path))
            return f"model of {os.path.basename(path)} #{len(loads)}"
        return load

    cache = ModelCache(max_entries=2)
    first = cache.get(files[0], loader(files[0]))
    assert cache.get(files[0], loader(files[0])) is first and loads == ["a"]
    assert cache.get(files[0], loader(files[0]), options="fp16") != first  # other options: another source
    assert len(cache.items()) == 2

    # A changed file replaces its entry instead of adding one.
    os.utime(files[0], ns=(1, 1))
    replaced = cache.get(files[0], loader(files[0]))
    assert replaced != first and len(cache.items()) == 2
    assert cache.get(files[0], loader(files[0]), token="v2") != replaced  # a new version token too

    # Two entries at most: b evicts the least recently used one, which is not the last used.
    cache = ModelCache(max_entries=2)
    cache.get(files[0], loader(files[0]))
    cache.get(files[1], loader(files[1]))
    cache.get(files[0], loader(files[0]))  # a is now the most recently used
    cache.get(files[2], loader(files[2]))
    assert sorted(os.path.basename(p) for p, _ in cache.items()) == ["a", "c"]


def test_a_reloaded_entry_is_the_most_recent_and_a_link_is_its_file(comfy_runtime, tmp_path):
    """Mutations caught: the stale entry not popped before reloading (the reloaded model keeps
    the old entry's place and is evicted next, though just used); the source keyed on the path as
    given instead of its real path (a symlink to a cached file loads a second copy)."""
    ModelCache = pack_module(comfy_runtime, "nodes.model_cache").ModelCache
    for name in "abc":
        (tmp_path / name).write_text(name)
    loads: list[str] = []

    def load(name: str):
        return lambda: loads.append(name) or f"{name}#{len(loads)}"

    cache = ModelCache(max_entries=2)
    cache.get(str(tmp_path / "a"), load("a"))
    cache.get(str(tmp_path / "b"), load("b"))
    os.utime(tmp_path / "a", ns=(1, 1))  # a changed: reloaded, and now the most recently used
    assert cache.get(str(tmp_path / "a"), load("a")) == "a#3"
    cache.get(str(tmp_path / "c"), load("c"))  # evicts b, the least recently used
    assert [os.path.basename(p) for p, _ in cache.items()] == ["a", "c"]

    (tmp_path / "link").symlink_to(tmp_path / "c")
    assert cache.get(str(tmp_path / "link"), load("link")) == "c#4"  # c's entry, no new load
    assert loads == ["a", "b", "a", "c"]
